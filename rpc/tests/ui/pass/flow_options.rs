use easyrpc::register;

#[register(max_flow = 10, max_flow_wait = "50ms")]
async fn waits(n: u64) -> u64 {
    n
}

#[register(unstable_network)]
fn once(n: u64) -> u64 {
    n
}

#[register(unstable_network = false, max_flow = 2, max_flow_wait = "2s")]
fn never_deduped(n: u64) -> u64 {
    n
}

#[register(inline, max_flow = 4)]
fn quick(n: u64) -> u64 {
    n + 1
}

#[register(inline = false)]
fn pooled(n: u64) -> u64 {
    n
}

pub struct Svc;

#[easyrpc::service]
impl Svc {
    #[rpc(inline)]
    pub fn quick(&self, n: u64) -> u64 {
        n
    }
}

fn main() {
    let _ = (waits::method(), once::method(), never_deduped::method(), quick::method(), pooled::method());
}
