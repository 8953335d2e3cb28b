#[easyrpc::register(max_flow = 0)]
async fn work(n: u64) -> u64 {
    n
}

fn main() {
    let _ = work::method();
}
