//! Turn plain Rust functions into MessagePack-RPC services, and call them from anywhere.
//!
//! Annotate functions with [`register`], serve them with one builder call, and call them
//! through the typed stubs the macro generates, from an async [`Client`] or a
//! [`BlockingClient`], or by name with any serde arguments. The wire is plain
//! [MessagePack-RPC](https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md), so a
//! stock client in any language calls the same server.
//!
//! ```no_run
//! use easyrpc::{register, Server};
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
//!     let client = easyrpc::Client::connect(addr).await?;
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
//!   stubs with the function's own argument types, returning `Result<T, easyrpc::Error>`, or
//!   `Result<T, easyrpc::CallError<E>>` for a function returning `Result<T, E>` (see
//!   [Typed errors](#typed-errors)).
//!
//! A crate that only calls the service gets the same stubs from [`declare!`] with the
//! signatures alone.
//!
//! Arguments and the return type must be `serde::Serialize + serde::de::DeserializeOwned +
//! Send + 'static`, since one side encodes what the other decodes: derive both, and use owned
//! types (`String`, not `&str`). A function may also return `Result<T, E>` with
//! `E: Display`: the error reaches the caller as [`ErrorCode::HandlerError`] carrying `E`'s
//! message, and `E` itself when it is `Serialize` (below). A return type whose last path
//! segment is `Result` (`Result`, `io::Result`, `anyhow::Result`) is treated this way. An
//! async function's future must be `Send`.
//!
//! Options: `name = "..."`, `max_flow = N`. Register functions at module level: the
//! generated module refers to the function through `super::`. A signature that breaks a
//! rule is a compile error on the token at fault, and a type that does not qualify is one
//! on the type as written.
//!
//! # State, context and impl-block services
//!
//! An argument of type [`State<T>`] is the server's state of type `T`, given once to
//! [`Builder::state`]; one of type [`Context`] is the call's facts (peer, metadata,
//! deadline, cancellation). Neither is on the wire: the stubs take the other arguments only.
//! `#[service]` on an impl block serves every `pub` method taking `&self`, the instance
//! shared by all calls, and generates `{Type}Client` and `{Type}BlockingClient`:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use easyrpc::{register, Context, Server, State};
//!
//! #[derive(Default)]
//! pub struct Hits(AtomicU64);
//!
//! #[register]
//! fn hit(hits: State<Hits>, ctx: Context) -> u64 {
//!     let _caller = ctx.peer();
//!     hits.0.fetch_add(1, Ordering::SeqCst) + 1
//! }
//!
//! #[derive(Default)]
//! pub struct Counter(AtomicU64);
//!
//! #[easyrpc::service(prefix = "counter")]
//! impl Counter {
//!     /// Served as "counter.bump"; `CounterClient::bump(&self, by)` calls it.
//!     pub fn bump(&self, by: u64) -> u64 {
//!         self.0.fetch_add(by, Ordering::SeqCst) + by
//!     }
//! }
//!
//! fn main() {
//!     let server = Server::builder()
//!         .state(Hits::default())
//!         .register(hit::method())
//!         .service(Counter::default())
//!         .build()
//!         .unwrap();
//! }
//! ```
//!
//! Call metadata ([`Metadata`], [`Client::with_metadata`]) and tower layers around dispatch
//! ([`Builder::layer`], [`layers`]) complete the picture; see the README.
//!
//! # Typed errors
//!
//! When a function's error type is `Serialize` (as well as `Display`), the server sends the
//! error itself along with its message, as `[3, message, data]` with `data` encoded in the
//! connection's codec, and the stubs decode it back: they return
//! `Result<T, `[`CallError<E>`]`>`, whose [`CallError::Handler`] holds the function's own
//! error and [`CallError::Rpc`] everything else. No bound is added: an `E` that is only
//! `Display` is sent as its message, as before, and then never comes back as `Handler`.
//!
//! ```no_run
//! use easyrpc::{register, CallError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub enum TodoError {
//!     NotFound(u64),
//! }
//!
//! impl std::fmt::Display for TodoError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         match self {
//!             TodoError::NotFound(id) => write!(f, "todo {id} not found"),
//!         }
//!     }
//! }
//!
//! #[register]
//! fn get(id: u64) -> Result<String, TodoError> {
//!     Err(TodoError::NotFound(id))
//! }
//!
//! # async fn demo(client: easyrpc::Client) -> Result<(), easyrpc::Error> {
//! match get::call(&client, 42).await {
//!     Ok(title) => println!("{title}"),
//!     Err(CallError::Handler(TodoError::NotFound(id))) => println!("no todo {id}"),
//!     Err(CallError::Rpc(e)) => return Err(e), // transport, timeout, overloaded...
//! }
//! // `?` still converts to `easyrpc::Error` (the function's error as a `Remote` handler error).
//! let title: String = get::call(&client, 1).await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! A plain MessagePack-RPC peer reads the code and the message as the first two elements,
//! as it always has; the shapes for peers that read no array
//! ([`ErrorShape::Message`], [`ErrorShape::TypeAndMessage`]) never carry the data. Callers
//! by name get it from the remote error: [`ServerError::decode_data`] into a type, or
//! [`ServerError::data_value`] as a dynamic value (msgpack), and [`CallError::from_error`]
//! turns any [`Error`] into a `CallError<E>`. A one-parameter alias such as
//! `app::Result<T>` does not name `E`: its stubs return `easyrpc::Error` (the data is still
//! sent). `declare!` keeps the error type it is given. Without the macro,
//! [`Method::typed_sync_fn`] and [`Method::typed_async_fn`] send the error's data; the
//! `try_` forms send its message only.
//!
//! # Without the macro
//!
//! [`Method::sync_fn`], [`Method::async_fn`] (and their `try_` forms) build the same thing
//! from a name and a closure taking its arguments as one tuple, for services built at run
//! time.
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

pub use easyrpc_client::{
    BalancedBlockingClient, BlockingClient, CallError, CallOptions, Client, ClientTls,
    Config as ClientConfig, Error, ForeignError, InstanceState, TlsCause,
};
pub use easyrpc_macros::{declare, register, service};
pub use easyrpc_proto::reserved::MethodDescription;
pub use easyrpc_proto::{Codec, ErrorCode, ErrorShape, Metadata, ServerError};
pub use easyrpc_server::{
    layers, rules, shutdown_signal, BoxError, BuildError, Builder, CallRequest, Config as ServerConfig,
    Context, DedupConfig, Endpoint, Error as ServeError, Listening, LocalAddr, Method, Peer, Reply,
    RpcService, Rules, Server, Service, State, TlsConfig, TlsConfigError, TlsIdentity, Transport,
    WorkerRuntime,
};

/// The key layout and what each instance's key holds.
pub use easyrpc_proto::discovery;
/// Service discovery on etcd (feature `etcd`): the server's registration and its errors.
#[cfg(feature = "etcd")]
pub use easyrpc_server::{DiscoveryError, Registration};

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
    use core::marker::PhantomData;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub use easyrpc_proto::{Args, EncodeError, Params, ParamsEncoder};
    pub use easyrpc_server::{BuildError, Call, Method, Reply, Service, State, States};

    use crate::{BlockingClient, CallError, Client, Error, ServerError};

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
                caller as an `ErrorCode::HandlerError` (with the error itself as data when `E` is also \
                `Serialize`)"
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

    /// A type a function takes as `State<T>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a server state",
        label = "not `Send + Sync + 'static`",
        note = "a `State<T>` is shared by every call, on every thread: `T` must be `Send + Sync + 'static` \
                (wrap what changes in a `Mutex` or an atomic)"
    )]
    pub trait RpcState: Send + Sync + 'static {}
    #[diagnostic::do_not_recommend]
    impl<T: Send + Sync + 'static> RpcState for T {}

    /// Compile-time check of a state type.
    pub const fn assert_state<T: RpcState>() {}

    /// The framework's `Context`, as an argument.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not `easyrpc::Context`",
        label = "an argument of a type named `Context` is taken as the call's context",
        note = "use `easyrpc::Context`, or rename your own type: it cannot travel on the wire under this name"
    )]
    pub trait IsContext {}
    impl IsContext for easyrpc_server::Context {}

    /// Compile-time check of a context argument.
    pub const fn assert_context<T: IsContext>() {}

    /// The state of type `T` of the server being built, for the function `name`.
    ///
    /// # Errors
    ///
    /// [`BuildError::MissingState`] when the server has none.
    pub fn get_state<T: RpcState>(states: &States, name: &str) -> Result<State<T>, BuildError> {
        states.get::<T>(name)
    }

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

    /// Picks how a function's `Err(e)` is sent, by autoref specialization on the concrete
    /// `E` (`(&ErrorReply::of(&e)).reply_error(e)` with [`TypedReply`] and [`DisplayReply`]
    /// in scope): with `e` as the error's data when `E` is `Serialize` ([`TypedReply`], found
    /// without an autoref), with its message alone otherwise ([`DisplayReply`], on
    /// `&ErrorReply`). Users' `E` never needs `Serialize`.
    #[derive(Debug)]
    pub struct ErrorReply<E>(PhantomData<fn(E)>);

    impl<E> ErrorReply<E> {
        /// The selector for `error`'s type.
        pub fn of(_error: &E) -> ErrorReply<E> {
            ErrorReply(PhantomData)
        }
    }

    /// The typed half of [`ErrorReply`]: `E` is also sent as the error's data.
    pub trait TypedReply<E> {
        /// `Reply::typed_err(error)`.
        fn reply_error(&self, error: E) -> Reply;
    }

    impl<E: Serialize + Display + Send + 'static> TypedReply<E> for ErrorReply<E> {
        fn reply_error(&self, error: E) -> Reply {
            Reply::typed_err(error)
        }
    }

    /// The `Display`-only half of [`ErrorReply`]: today's `[code, message]`.
    pub trait DisplayReply<E> {
        /// [`reply_error`]`(error)`. The bound sits on the method, not the impl, so that an
        /// `E` that is not `Display` fails it with [`RpcError`]'s message, as
        /// [`assert_error`] does (and rustc shows the two as one).
        fn reply_error(&self, error: E) -> Reply
        where
            E: RpcError;
    }

    impl<E> DisplayReply<E> for &ErrorReply<E> {
        fn reply_error(&self, error: E) -> Reply
        where
            E: RpcError,
        {
            reply_error(error)
        }
    }

    /// Picks what a stub's error becomes, by autoref specialization on the concrete `E` as
    /// [`ErrorReply`] does: [`CallError::from_error`] when `E` is `DeserializeOwned`
    /// ([`TypedStub`]), always [`CallError::Rpc`] otherwise ([`UntypedStub`]).
    #[derive(Debug)]
    pub struct StubError<E>(PhantomData<fn() -> E>);

    impl<E> StubError<E> {
        /// The selector for `E`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> StubError<E> {
            StubError(PhantomData)
        }
    }

    /// The typed half of [`StubError`].
    pub trait TypedStub<E> {
        /// `CallError::from_error(error)`.
        fn call_error(&self, error: Error) -> CallError<E>;
    }

    impl<E: DeserializeOwned> TypedStub<E> for StubError<E> {
        fn call_error(&self, error: Error) -> CallError<E> {
            CallError::from_error(error)
        }
    }

    /// The untyped half of [`StubError`]: the data cannot become an `E`.
    pub trait UntypedStub<E> {
        /// `CallError::Rpc(error)`.
        fn call_error(&self, error: Error) -> CallError<E>;
    }

    impl<E> UntypedStub<E> for &StubError<E> {
        fn call_error(&self, error: Error) -> CallError<E> {
            CallError::Rpc(error)
        }
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
