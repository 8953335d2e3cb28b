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

fn main() {
    let _ = (waits::method(), once::method(), never_deduped::method());
}
