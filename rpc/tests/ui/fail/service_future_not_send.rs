use std::rc::Rc;

pub struct Svc;

#[easyrpc::service]
impl Svc {
    pub async fn held(&self) -> u32 {
        let rc = Rc::new(1);
        tokio::task::yield_now().await;
        *rc
    }
}

fn main() {}
