//! Turn plain Rust functions into MessagePack-RPC services, and call them from anywhere.
//!
//! Annotate functions with [`register`], serve them with one builder call, and call them
//! through the typed stubs the macro generates, from an async [`Client`] or a
//! [`BlockingClient`], or by name with any serde arguments. The wire is plain
//! [MessagePack-RPC](https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md), so a
//! stock client in any language calls the same server.
//!
//! ```no_run
//! use rpc::{register, Server};
//!
//! /// Sync: runs on the blocking pool, never on the reactor.
//! #[register]
//! fn add(a: i64, b: i64) -> i64 {
//!     a + b
//! }
//!
//! /// Async: at most 100 running at once; the 101st gets an Overloaded error.
//! #[register(max_flow = 100)]
//! async fn fib(n: u64) -> u64 {
//!     (0..n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let server = Server::builder().register(add::method()).register(fib::method()).build()?;
//!     tokio::spawn(async move { server.run(listener, std::future::pending()).await });
//!
//!     let client = rpc::Client::connect(addr).await?;
//!     assert_eq!(add::call(&client, 2, 3).await?, 5);           // typed stub
//!     assert_eq!(client.call::<_, u64>("fib", (10,)).await?, 55); // by name
//!     Ok(())
//! }
//! ```
//!
//! # What `#[register]` generates
//!
//! Next to `fn add`, which stays an ordinary function, a module `add` holds:
//!
//! - `add::NAME`: the name it is served under (the function's, or `#[register(name = "..")]`);
//! - `add::method()`: the [`Method`] to pass to [`Builder::register`];
//! - `add::call(&Client, a, b).await` and `add::call_blocking(&BlockingClient, a, b)`: typed
//!   stubs with the function's own argument types, returning `Result<T, rpc::Error>`.
//!
//! A crate that only calls the service gets the same stubs from [`declare!`] with the
//! signatures alone.
//!
//! Arguments must be `serde::de::DeserializeOwned + Send + 'static`; the return type
//! `serde::Serialize + Send + 'static` (and `DeserializeOwned` for the stubs), or
//! `Result<T, E>` with `E: Display`: the error reaches the caller as
//! [`ErrorCode::HandlerError`] carrying `E`'s message. A return type whose last path segment
//! is `Result` (`Result`, `io::Result`, `anyhow::Result`) is treated this way.
//!
//! Options: `name = "..."`, `max_flow = N`. Register functions at module level: the
//! generated module refers to the function through `super::`.
//!
//! # Without the macro
//!
//! [`Method::sync_fn`], [`Method::async_fn`] (and their `try_` forms) build the same thing
//! from a name and a closure taking its arguments as one tuple, for services built at run
//! time.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

pub use rpc_client::{BlockingClient, CallOptions, Client, Config as ClientConfig, Error};
pub use rpc_macros::{declare, register};
pub use rpc_proto::{Codec, ErrorCode, ServerError};
pub use rpc_server::{
    BuildError, Builder, Config as ServerConfig, Error as ServeError, Method, Reply, Server,
};

/// The dynamic value type for calls by name: `rmpv::Value`.
pub use rmpv::Value;

/// Items used by the code that `#[register]` and `declare!` generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use rpc_proto::{Args, EncodeError, Params, ParamsEncoder};
    pub use rpc_server::{Method, Reply};

    /// An argument type of a registered function.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument of a registered function",
        label = "not an owned, deserializable type",
        note = "arguments must implement `serde::de::DeserializeOwned + Send + 'static`: use owned types such as `String` and `Vec<u8>`, not references"
    )]
    pub trait RpcArg {}
    impl<T: serde::de::DeserializeOwned + Send + 'static> RpcArg for T {}

    /// A return type of a registered function.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be returned by a registered function",
        label = "not a serializable type",
        note = "the return type (or the `T` of `Result<T, E>`) must implement `serde::Serialize + serde::de::DeserializeOwned + Send + 'static`"
    )]
    pub trait RpcReturn {}
    impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> RpcReturn for T {}

    /// The future of a registered async function.
    #[diagnostic::on_unimplemented(
        message = "the future of a registered async function must be `Send`",
        label = "this future is not `Send`",
        note = "the server may run it on any worker thread: do not hold a non-`Send` value (`Rc`, a `RefCell` borrow, a `std::sync::MutexGuard`) across an `.await`"
    )]
    pub trait RpcFuture {}
    impl<F: core::future::Future + Send + 'static> RpcFuture for F {}

    /// Compile-time check of an argument type.
    pub const fn assert_arg<T: RpcArg>() {}

    /// Compile-time check of a return type.
    pub const fn assert_return<T: RpcReturn>() {}

    /// Compile-time check that an async function's future is `Send`.
    pub fn assert_send_future<F: RpcFuture>(f: F) -> F {
        f
    }
}
