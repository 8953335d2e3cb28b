easyrpc::declare! {
    #[rpc(max_flow = 4)]
    pub fn add(a: i64, b: i64) -> i64;
}

fn main() {
    let _ = add::NAME;
}
