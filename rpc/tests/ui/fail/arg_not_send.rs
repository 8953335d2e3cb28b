use std::rc::Rc;

#[easyrpc::register]
fn count(items: Rc<Vec<i64>>) -> usize {
    items.len()
}

fn main() {}
