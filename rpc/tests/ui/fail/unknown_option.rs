#[easyrpc::register(foo = 1)]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {
    // The function and its module are still generated.
    let _ = add(1, 2);
    let _ = add::method();
}
