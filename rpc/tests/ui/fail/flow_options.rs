use easyrpc::register;

#[register(max_flow_wait = "50ms")]
fn no_limit(n: u64) -> u64 {
    n
}

#[register(max_flow = 1, max_flow_wait = "fast")]
fn bad_duration(n: u64) -> u64 {
    n
}

#[register(unstable_network = 1)]
fn bad_flag(n: u64) -> u64 {
    n
}

easyrpc::declare! {
    #[rpc(unstable_network)]
    fn declared(n: u64) -> u64;
}

fn main() {}
