#[easyrpc::register]
fn add((a, b): (i64, i64)) -> i64 {
    a + b
}

fn main() {
    let _ = add::method();
    let _ = add::NAME;
}
