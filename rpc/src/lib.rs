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
//! Arguments and the return type must be `serde::Serialize + serde::de::DeserializeOwned +
//! Send + 'static`, since one side encodes what the other decodes: derive both, and use owned
//! types (`String`, not `&str`). A function may also return `Result<T, E>` with
//! `E: Display`: the error reaches the caller as [`ErrorCode::HandlerError`] carrying `E`'s
//! message. A return type whose last path segment is `Result` (`Result`, `io::Result`,
//! `anyhow::Result`) is treated this way. An async function's future must be `Send`.
//!
//! Options: `name = "..."`, `max_flow = N`. Register functions at module level: the
//! generated module refers to the function through `super::`. A signature that breaks a
//! rule is a compile error on the token at fault, and a type that does not qualify is one
//! on the type as written.
//!
//! # Without the macro
//!
//! [`Method::sync_fn`], [`Method::async_fn`] (and their `try_` forms) build the same thing
//! from a name and a closure taking its arguments as one tuple, for services built at run
//! time.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

pub use rpc_client::{BlockingClient, CallOptions, Client, Config as ClientConfig, Error, ForeignError};
pub use rpc_macros::{declare, register};
pub use rpc_proto::{Codec, ErrorCode, ErrorShape, ServerError};
pub use rpc_server::{
    BuildError, Builder, Config as ServerConfig, Error as ServeError, Method, Reply, Server, WorkerRuntime,
};

/// The dynamic value type for calls by name: `rmpv::Value`.
pub use rmpv::Value;

/// Items used by the code that `#[register]` and `declare!` generate. Not a public API.
///
/// The generated code checks each type the user wrote with an `assert_*` function, spanned
/// on that type, and then uses it only through the functions below, bounded by the same
/// trait: a type that does not qualify gets one error, on the type, worded by the trait's
/// `on_unimplemented`.
#[doc(hidden)]
pub mod __private {
    use core::fmt::Display;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub use rpc_proto::{Args, EncodeError, Params, ParamsEncoder};
    pub use rpc_server::{Method, Reply};

    use crate::{BlockingClient, Client, Error, ServerError};

    /// An argument type of a registered or declared function.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument of an RPC function",
        label = "not `Serialize + DeserializeOwned + Send + 'static`",
        note = "the stubs encode the arguments and the server decodes them: derive `serde::Serialize` and \
                `serde::Deserialize` for your own types, and use owned, `Send` types such as `String`, \
                `Vec<u8>` or `Box<T>`, not `&str` or `Rc<T>`"
    )]
    pub trait RpcArg: Serialize + DeserializeOwned + Send + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> RpcArg for T {}

    /// A return type of a registered or declared function (the `T` of a `Result<T, E>`).
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be returned by an RPC function",
        label = "not `Serialize + DeserializeOwned + Send + 'static`",
        note = "the server encodes the result and the stubs decode it: derive `serde::Serialize` and \
                `serde::Deserialize` for your own types, and use owned, `Send` types; a `Result<T, E>` \
                needs this of `T`"
    )]
    pub trait RpcReturn: Serialize + DeserializeOwned + Send + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned + Send + 'static> RpcReturn for T {}

    /// The `E` of a registered function returning `Result<T, E>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error type of an RPC function",
        label = "does not implement `Display`",
        note = "the `E` of `Result<T, E>` must implement `std::fmt::Display`: its message reaches the \
                caller as an `ErrorCode::HandlerError`"
    )]
    pub trait RpcError: Display {}
    #[diagnostic::do_not_recommend]
    impl<E: Display> RpcError for E {}

    /// Compile-time check of an argument type.
    pub const fn assert_arg<T: RpcArg>() {}

    /// Compile-time check of a return type.
    pub const fn assert_return<T: RpcReturn>() {}

    /// Compile-time check of an error type.
    pub const fn assert_error<E: RpcError>() {}

    /// Decode the next argument.
    ///
    /// # Errors
    ///
    /// `InvalidParams` when it does not decode as a `T`.
    pub fn next_arg<T: RpcArg>(args: &mut Args<'_>, name: &str) -> Result<T, ServerError> {
        args.next(name)
    }

    /// Encode the next argument.
    ///
    /// # Errors
    ///
    /// When `T`'s `Serialize` fails.
    pub fn push_arg<T: RpcArg>(enc: &mut ParamsEncoder<'_>, value: &T) -> Result<(), EncodeError> {
        enc.push(value)
    }

    /// A successful result.
    pub fn reply<T: RpcReturn>(value: T) -> Reply {
        Reply::ok(value)
    }

    /// A function's `Err(e)`, as an `ErrorCode::HandlerError` with `e`'s message.
    pub fn reply_error<E: RpcError>(error: E) -> Reply {
        Reply::from_result::<(), E>(Err(error))
    }

    /// The async stub's call.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn call<P: Params, R: RpcReturn>(client: &Client, name: &str, params: P) -> Result<R, Error> {
        client.call(name, params).await
    }

    /// The blocking stub's call.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call`].
    pub fn call_blocking<P: Params, R: RpcReturn>(
        client: &BlockingClient,
        name: &str,
        params: P,
    ) -> Result<R, Error> {
        client.call(name, params)
    }
}
