use std::rc::Rc;

#[easyrpc::register]
async fn count() -> usize {
    let shared = Rc::new(5);
    tokio::task::yield_now().await;
    *shared
}

fn main() {}
