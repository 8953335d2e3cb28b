struct Counter;

impl Counter {
    #[rpc::register]
    fn get(&self) -> i64 {
        0
    }
}

fn main() {}
