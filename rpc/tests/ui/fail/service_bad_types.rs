pub struct Svc;

#[easyrpc::service(prefix = "svc")]
impl Svc {
    pub fn name(&self, who: &str) -> String {
        who.to_owned()
    }

    #[rpc(max_flow = 0)]
    pub fn limited(&self) -> u8 {
        0
    }

    #[rpc(name = "x")]
    fn private(&self) -> u8 {
        0
    }
}

fn main() {}
