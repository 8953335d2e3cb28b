use std::cell::Cell;

use easyrpc::State;

#[easyrpc::register]
fn count(counter: State<Cell<u64>>) -> u64 {
    counter.get()
}

fn main() {}
