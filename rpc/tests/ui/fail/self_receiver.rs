struct Counter;

impl Counter {
    #[easyrpc::register]
    fn get(&self) -> i64 {
        0
    }
}

fn main() {}
