// The path given with `crate = ".."` is the one the generated code uses: a wrong one is an
// error on the path the user wrote.

#[easyrpc::register(crate = "not_a_crate")]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[easyrpc::register(crate = "1 + 2")]
fn sub(a: i64, b: i64) -> i64 {
    a - b
}

fn main() {}
