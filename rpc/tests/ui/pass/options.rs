#[easyrpc::register(name = "math.add")]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[easyrpc::register(max_flow = 8)]
async fn slow(n: u64) -> u64 {
    n
}

#[easyrpc::register(name = "fast", max_flow = 1_000,)]
fn quick() -> u64 {
    1
}

easyrpc::declare! {
    #[rpc(name = "math.add")]
    fn remote_add(a: i64, b: i64) -> i64;
}

fn main() {
    assert_eq!(add::NAME, "math.add");
    assert_eq!(add::method().name(), "math.add");
    assert_eq!(slow::NAME, "slow");
    assert_eq!(quick::NAME, "fast");
    assert_eq!(remote_add::NAME, "math.add");
    let _ = slow::method();
    let _ = quick::method();
}
