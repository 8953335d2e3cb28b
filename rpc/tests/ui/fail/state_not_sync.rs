use std::cell::Cell;

use rpc::State;

#[rpc::register]
fn count(counter: State<Cell<u64>>) -> u64 {
    counter.get()
}

fn main() {}
