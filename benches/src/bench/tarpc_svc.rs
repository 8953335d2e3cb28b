//! The tarpc system: tarpc 0.38, its serde transport over TCP with the bincode format of
//! tokio-serde, as tarpc's examples set it up.

use bytes::Bytes;
use tarpc::context::Context;

/// The same two functions as the other systems.
#[tarpc::service]
pub(crate) trait Bench {
    /// a + b (wrapping).
    async fn add(a: i64, b: i64) -> i64;
    /// Returns its argument.
    async fn echo(data: Bytes) -> Bytes;
}

/// The implementation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Service;

impl Bench for Service {
    async fn add(self, _: Context, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    async fn echo(self, _: Context, data: Bytes) -> Bytes {
        data
    }
}
