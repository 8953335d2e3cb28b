// Streaming signatures that break a rule: every error at once, each on its token.
use easyrpc::{Stream, Streaming};

#[easyrpc::register]
async fn two_streams(a: Streaming<i64>, n: u64, b: Streaming<i64>) -> i64 {
    let _ = (a, b);
    n as i64
}

#[easyrpc::register]
async fn async_iterator(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[easyrpc::register]
fn sync_stream(n: u64) -> impl Stream<Item = u64> {
    easyrpc::stream::iter(0..n)
}

#[easyrpc::register(inline, unstable_network)]
fn with_options(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[easyrpc::register]
async fn borrowed(_items: Streaming<&'static str>) -> impl Stream<Item = &'static str> {
    easyrpc::stream::iter(["x"])
}

#[easyrpc::register]
fn not_a_stream(n: u64) -> impl Clone {
    n
}

pub struct Feed;

#[easyrpc::service]
impl Feed {
    #[rpc(unstable_network)]
    pub async fn upload(&self, a: Streaming<u8>, b: Streaming<u8>) -> usize {
        let _ = (a, b);
        0
    }
}

fn main() {}
