// `inline` is for sync functions: an async one already runs in the connection's task.
#[easyrpc::register(inline)]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {}
