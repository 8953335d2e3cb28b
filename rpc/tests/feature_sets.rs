//! What `#[register]`, `#[easyrpc::service]` and `declare!` generate compiles with every
//! feature set of the facade (issue 16): the stubs of a client exist when the client is
//! built, and the server side whatever the clients. `scripts/features.sh` (run by
//! `.ci/run`) checks this test with each client alone and with neither; the other tests of
//! this crate need the default features.

use std::sync::atomic::{AtomicU64, Ordering};

use easyrpc::{register, Server, Stream, Streaming};

#[register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[register]
async fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    a.checked_div(b).ok_or_else(|| "division by zero".to_string())
}

#[register]
async fn countdown(n: u64) -> impl Stream<Item = u64> {
    easyrpc::stream::iter((0..n).rev())
}

#[register]
fn lines(n: u32) -> impl Iterator<Item = String> {
    (0..n).map(|i| i.to_string())
}

#[register]
async fn sum(mut numbers: Streaming<i64>) -> i64 {
    use easyrpc::StreamExt;
    let mut total = 0;
    while let Some(Ok(n)) = numbers.next().await {
        total += n;
    }
    total
}

/// A counter served as an impl block.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

#[easyrpc::service(prefix = "counter")]
impl Counter {
    /// Add `by`; the new count.
    pub fn bump(&self, by: u64) -> u64 {
        self.0.fetch_add(by, Ordering::SeqCst) + by
    }
}

mod remote {
    easyrpc::declare! {
        pub fn add(a: i64, b: i64) -> i64;
        pub fn checked_div(a: i64, b: i64) -> Result<i64, String>;
        pub async fn countdown(n: u64) -> impl easyrpc::Stream<Item = u64>;
    }
}

#[test]
fn the_server_builds_whatever_clients_are_built() {
    Server::builder()
        .register(add::method())
        .register(checked_div::method())
        .register(countdown::method())
        .register(lines::method())
        .register(sum::method())
        .service(Counter::default())
        .build()
        .unwrap();
}

#[cfg(feature = "async")]
#[test]
fn the_async_stubs_exist_with_the_async_client() {
    let _ = add::call;
    let _ = checked_div::call;
    let _ = remote::add::call;
    let _ = countdown::call;
    let _ = lines::call;
    let _ = |c: easyrpc::Client| async move { sum::call(&c, easyrpc::stream::iter(vec![1i64])).await };
    let _ = remote::countdown::call;
    let _ = CounterClient::new;
}

#[cfg(feature = "blocking")]
#[test]
fn the_blocking_stubs_exist_with_the_blocking_client() {
    let _ = add::call_blocking;
    let _ = checked_div::call_blocking;
    let _ = remote::checked_div::call_blocking;
    let _ = countdown::call_blocking;
    let _ = lines::call_blocking;
    let _ = |c: &easyrpc::BlockingClient| sum::call_blocking(c, vec![1i64]);
    let _ = CounterBlockingClient::new;
}
