#[easyrpc::register]
struct Add {
    a: i64,
}

fn main() {}
