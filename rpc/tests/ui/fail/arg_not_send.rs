use std::rc::Rc;

#[rpc::register]
fn count(items: Rc<Vec<i64>>) -> usize {
    items.len()
}

fn main() {}
