//! `rpc`, a command line for MessagePack-RPC servers: call a method, send a notification,
//! list and describe a server's methods, load-test one.
//!
//! ```text
//! rpc call 127.0.0.1:25000 add '[1, 2]'          # 3
//! rpc call 127.0.0.1:25000 echo @photo.jpg       # {"$bin": "..."}
//! rpc notify unix:/run/app.sock reload
//! rpc list 127.0.0.1:25000                       # add(a: i64, b: i64) -> i64 ...
//! rpc describe 127.0.0.1:25000 fib_sync
//! rpc load 127.0.0.1:25000 add '[1, 2]' --concurrency 64 --connections 4 --duration 10
//! ```
//!
//! Install with `cargo install --path rpc-cli`. `call`, `notify` and `load` work against
//! any MessagePack-RPC server; `list` and `describe` need a server that answers the
//! reserved call `rpc.methods` (this framework's). The global flags (`--json`, `--timeout`,
//! `--codec`, the TLS options) go before or after the subcommand.
//!
//! This library is the binary's insides, public so that it can be tested and reused:
//!
//! - [`json`]: JSON ⇄ MessagePack, with the `{"$bin": "<base64>"}` form for bytes and
//!   `{"$map": [[key, value], ...]}` for maps with keys that are not strings;
//! - [`args`]: the words after the method name as arguments (one JSON array, or one JSON
//!   value or `@FILE` per argument);
//! - [`connect`]: addresses (`host:port`, `unix:/path`) and the clients opened on them;
//! - [`introspect`]: the answer to `rpc.methods` and how it is printed;
//! - [`typed`]: bincode calls, encoded and decoded by the method's signature;
//! - [`load`]: the load generator;
//! - [`Cli`] and [`run`]: the command line itself; [`exit`]: its exit codes.
//!
//! ```
//! use easyrpc_cli::json::{to_json, to_msgpack};
//!
//! let args = easyrpc_cli::args::parse(&["[1, {\"$bin\": \"aGk=\"}]".to_owned()])?;
//! let params: Vec<rmpv::Value> = args.iter().map(to_msgpack).collect::<Result<_, _>>()?;
//! assert_eq!(params, vec![rmpv::Value::from(1), rmpv::Value::Binary(b"hi".to_vec())]);
//! assert_eq!(to_json(&params[1]), serde_json::json!({"$bin": "aGk="}));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

pub mod args;
mod cli;
pub mod connect;
pub mod introspect;
pub mod json;
pub mod load;
pub mod typed;

pub use cli::{discovery_args, run, CallArgs, Cli, CodecArg, Command, GlobalArgs, LoadArgs};

/// The exit codes of `rpc`.
///
/// `load` exits with [`REMOTE`](crate::exit::REMOTE) when some calls got an error reply and
/// with [`TRANSPORT`](crate::exit::TRANSPORT)
/// when some got no reply at all, after printing its report.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The server answered with an error (`error CODE: MESSAGE` on stderr), or answered
    /// something else than what was needed: it does not support introspection, it has no
    /// such method.
    pub const REMOTE: u8 = 1;
    /// No answer: the connection was refused, the timeout passed, TLS failed, the
    /// connection was lost.
    pub const TRANSPORT: u8 = 2;
    /// The command line or its input is wrong: a bad flag, arguments that are not JSON, a
    /// file that cannot be read (sysexits' `EX_USAGE`).
    pub const USAGE: u8 = 64;
}
