#[derive(Debug)]
struct Oops;

#[rpc::register]
fn fallible() -> Result<i64, Oops> {
    Err(Oops)
}

fn main() {}
