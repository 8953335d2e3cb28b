#[derive(Debug)]
struct Oops;

#[easyrpc::register]
fn fallible() -> Result<i64, Oops> {
    Err(Oops)
}

fn main() {}
