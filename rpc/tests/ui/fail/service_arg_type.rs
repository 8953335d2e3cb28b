pub struct Svc;

pub struct NotSerde;

#[easyrpc::service]
impl Svc {
    pub fn opaque(&self, x: NotSerde) -> u8 {
        let _ = x;
        0
    }
}

fn main() {}
