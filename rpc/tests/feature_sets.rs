//! What `#[register]`, `#[easyrpc::service]` and `declare!` generate compiles with every
//! feature set of the facade (issue 16): the stubs of a client exist when the client is
//! built, and the server side whatever the clients. `scripts/features.sh` (run by
//! `.ci/run`) checks this test with each client alone and with neither; the other tests of
//! this crate need the default features.

use std::sync::atomic::{AtomicU64, Ordering};

use easyrpc::{register, Server};

#[register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[register]
async fn checked_div(a: i64, b: i64) -> Result<i64, String> {
    a.checked_div(b).ok_or_else(|| "division by zero".to_string())
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
    }
}

#[test]
fn the_server_builds_whatever_clients_are_built() {
    Server::builder()
        .register(add::method())
        .register(checked_div::method())
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
    let _ = CounterClient::new;
}

#[cfg(feature = "blocking")]
#[test]
fn the_blocking_stubs_exist_with_the_blocking_client() {
    let _ = add::call_blocking;
    let _ = checked_div::call_blocking;
    let _ = remote::checked_div::call_blocking;
    let _ = CounterBlockingClient::new;
}
