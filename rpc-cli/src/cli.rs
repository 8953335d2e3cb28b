//! The command line: clap's description of it ([`Cli`]) and what each subcommand does
//! ([`run`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use easyrpc_client::{ClientTls, Codec, Config, TlsCause};
use serde_json::{json, Value as Json};

use crate::connect::{Connection, Target};
use crate::introspect::{MethodInfo, METHODS};
use crate::load::{LoadOptions, Report};
use crate::typed::{Ty, TypedArg, TypedResult};
use crate::{args, exit, json};

const AFTER_HELP: &str = "\
Addresses: host:port (TCP, or TLS with --tls-ca), unix:/path (a Unix-domain socket);
--etcd URL --service NAME in place of the address: the instances of NAME registered in etcd
(`rpc load` balances over them, other commands call one), also written etcd:NAME@URL.

Arguments: one JSON array ('[1, \"two\"]'), or one word per argument, each JSON ('1' '\"two\"')
or @FILE (the file's bytes as one bin argument; @- reads stdin). Bytes are written and
printed as {\"$bin\": \"<base64>\"}; a map with keys that are not strings as
{\"$map\": [[key, value], ...]}.

Exit codes: 0 success; 1 the server answered with an error (or cannot be introspected);
2 transport error (refused, timeout, TLS, connection lost); 64 bad command line or input.";

/// `rpc`: call, list and load-test MessagePack-RPC servers.
///
/// ```
/// use clap::Parser;
/// use easyrpc_cli::{Cli, Command};
///
/// let cli = Cli::try_parse_from(["rpc", "call", "127.0.0.1:25000", "add", "[1, 2]", "--json"])?;
/// assert!(cli.global.json);
/// let Command::Call(call) = &cli.command else { unreachable!() };
/// assert_eq!((call.method.as_str(), call.args.as_slice()), ("add", &["[1, 2]".to_owned()][..]));
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Debug, Parser)]
#[command(
    name = "rpc",
    version,
    about = "Call, list and load-test MessagePack-RPC servers",
    long_about = None,
    after_help = AFTER_HELP
)]
#[non_exhaustive]
pub struct Cli {
    /// Flags of every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every subcommand takes, before or after its name.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct GlobalArgs {
    /// Machine-readable output: one JSON object on stdout, errors included.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, global = true, value_name = "SECS", default_value = "10", value_parser = seconds)]
    pub timeout: Duration,
    /// The codec: msgpack (any server) or bincode (servers of this framework that answer
    /// rpc.methods: the arguments' and result's types come from there).
    #[arg(long, global = true, value_enum, default_value_t = CodecArg::Msgpack)]
    pub codec: CodecArg,
    /// Connect with TLS, trusting this CA (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// With --tls-ca: the name the server's certificate must be valid for (default: the
    /// host of the address).
    #[arg(long, global = true, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// With --tls-ca: present this client certificate chain (PEM; needs --tls-key).
    #[arg(long, global = true, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --service, in place of the address: the instances registered in etcd at this
    /// URL (comma-separated for several). See [`discovery_args`].
    #[arg(long, global = true, value_name = "URL", requires = "service")]
    pub etcd: Option<String>,
    /// With --etcd: the service whose instances to call.
    #[arg(long, global = true, value_name = "NAME", requires = "etcd")]
    pub service: Option<String>,
}

/// The command line with `--etcd URL --service NAME` standing for the address: puts the
/// address `etcd:NAME@URL` right after the subcommand, where clap expects the address
/// (`main` parses what this returns). Anything else is returned as it is.
///
/// ```
/// use clap::Parser;
/// use easyrpc_cli::connect::Target;
/// use easyrpc_cli::{discovery_args, Cli, Command};
///
/// let args = ["rpc", "call", "--etcd", "http://127.0.0.1:2379", "--service", "calc", "add", "1", "2"];
/// let cli = Cli::try_parse_from(discovery_args(args.map(Into::into)))?;
/// let Command::Call(call) = &cli.command else { unreachable!() };
/// assert_eq!(call.addr, "etcd:calc@http://127.0.0.1:2379".parse::<Target>().unwrap());
/// assert_eq!((call.method.as_str(), call.args.len()), ("add", 2));
/// # Ok::<(), clap::Error>(())
/// ```
pub fn discovery_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const TAKE_VALUE: &[&str] = &[
        "--timeout",
        "--codec",
        "--tls-ca",
        "--tls-server-name",
        "--tls-cert",
        "--tls-key",
        "--etcd",
        "--service",
    ];
    const SUBCOMMANDS: &[&str] = &["call", "notify", "list", "describe", "load"];
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let (mut etcd, mut service, mut sub) = (None, None, None);
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        let value = |name: &str| -> Option<(String, bool)> {
            if arg == name {
                args.get(i + 1).map(|v| (v.to_string_lossy().into_owned(), true))
            } else {
                arg.strip_prefix(name)?
                    .strip_prefix('=')
                    .map(|v| (v.to_owned(), false))
            }
        };
        if let Some((v, skip)) = value("--etcd") {
            etcd = Some(v);
            i += usize::from(skip);
        } else if let Some((v, skip)) = value("--service") {
            service = Some(v);
            i += usize::from(skip);
        } else if TAKE_VALUE.contains(&arg.as_str()) {
            i += 1;
        } else if sub.is_none() && SUBCOMMANDS.contains(&arg.as_str()) {
            sub = Some(i);
        }
        i += 1;
    }
    if let (Some(etcd), Some(service), Some(sub)) = (etcd, service, sub) {
        args.insert(sub + 1, format!("etcd:{service}@{etcd}").into());
    }
    args
}

/// `--codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum CodecArg {
    /// MessagePack: any MessagePack-RPC server.
    Msgpack,
    /// bincode 2: servers of this framework only.
    Bincode,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Call METHOD and print its result as JSON.
    Call(CallArgs),
    /// Send METHOD as a notification (no reply).
    Notify(CallArgs),
    /// List the server's methods, one signature per line (from rpc.methods).
    List {
        /// The server: host:port or unix:/path.
        addr: Target,
    },
    /// Describe one method: signature, sync or async, max_flow, doc (from rpc.methods).
    Describe {
        /// The server: host:port or unix:/path.
        addr: Target,
        /// The method.
        method: String,
    },
    /// Keep calls of METHOD in flight for a while; report calls/s, errors and latency.
    Load(LoadArgs),
}

/// The operands of `call` and `notify`.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct CallArgs {
    /// The server: host:port or unix:/path.
    pub addr: Target,
    /// The method.
    pub method: String,
    /// The arguments: one JSON array, or one JSON value or @FILE per argument.
    #[arg(value_name = "ARGS", allow_negative_numbers = true)]
    pub args: Vec<String>,
    /// `call` only: call the method as a streaming one straight away (without it, `rpc`
    /// finds out from the server's answer). Result items are printed as JSON lines as they
    /// come; a method taking a stream reads its items from stdin, one JSON value per line.
    #[arg(long)]
    pub stream: bool,
}

/// The operands and flags of `load`.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct LoadArgs {
    /// The method, its server and its arguments, as for `call`.
    #[command(flatten)]
    pub call: CallArgs,
    /// Calls kept in flight in all.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Connections the calls are spread over (at most --concurrency).
    #[arg(long, value_name = "C", default_value_t = 1)]
    pub connections: usize,
    /// Seconds measured.
    #[arg(long, value_name = "S", default_value = "10", value_parser = seconds)]
    pub duration: Duration,
    /// Seconds of calls before measuring starts.
    #[arg(long, value_name = "S", default_value = "0", value_parser = seconds)]
    pub warmup: Duration,
}

/// A number of seconds, fractions allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?} seconds: {e}"))
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error.
    Remote(Box<RemoteError>),
    /// The server answered, not with what was needed (no introspection, no such method).
    Server(String),
    /// No answer: refused, timeout, TLS, connection lost.
    Transport(String),
    /// The command line or its input is wrong.
    Usage(String),
}

impl Failure {
    /// A client error, with what was being done.
    fn client(e: easyrpc_client::Error, doing: &str) -> Failure {
        use easyrpc_client::Error as E;
        let mut msg = format!("{doing}: {e}");
        if let E::Tls { source, .. } = &e {
            msg.push_str(&format!(" ({source})"));
        }
        match e {
            E::Remote(_) | E::Foreign(_) => match RemoteError::of(&e) {
                Some(r) => Failure::Remote(Box::new(r)),
                None => Failure::Transport(msg),
            },
            E::Tls {
                cause: TlsCause::Config,
                ..
            }
            | E::Encode(_)
            | E::NeedsExtensions(_) => Failure::Usage(msg),
            // The server answered, with something that is not the value expected.
            E::Decode(_) => Failure::Server(msg),
            _ => Failure::Transport(msg),
        }
    }

    fn exit_code(&self) -> u8 {
        match self {
            Failure::Remote(_) | Failure::Server(_) => exit::REMOTE,
            Failure::Transport(_) => exit::TRANSPORT,
            Failure::Usage(_) => exit::USAGE,
        }
    }

    /// Say it: on stderr, or as JSON on stdout.
    fn report(&self, as_json: bool) {
        if as_json {
            let error = match self {
                Failure::Remote(e) => e.to_json(),
                Failure::Server(m) => json!({"kind": "server", "message": m}),
                Failure::Transport(m) => json!({"kind": "transport", "message": m}),
                Failure::Usage(m) => json!({"kind": "usage", "message": m}),
            };
            print_json(&json!({ "error": error }));
        } else {
            match self {
                Failure::Remote(e) => {
                    eprintln!("{e}");
                    if let Some(data) = &e.data {
                        eprintln!("data: {data}");
                    }
                }
                Failure::Server(m) | Failure::Transport(m) | Failure::Usage(m) => eprintln!("rpc: {m}"),
            }
        }
    }
}

/// An error reply, from a server of ours (one that answered the hello: bincode) or any
/// other (MessagePack, where `rpc` sends no hello, so that any server understands it).
#[derive(Debug)]
struct RemoteError {
    /// The code: `[code, message, ...]`'s first element; none for another shape.
    code: Option<i64>,
    message: String,
    /// The code's name, for a server of ours: another server's codes are its own.
    name: Option<&'static str>,
    /// `[code, message, data]`'s third element.
    data: Option<Json>,
    /// The whole error value, when it does not have the `[code, message]` shape.
    value: Option<Json>,
}

impl RemoteError {
    fn of(e: &easyrpc_client::Error) -> Option<RemoteError> {
        if let Some(ours) = e.remote() {
            return Some(RemoteError {
                code: Some(ours.code),
                message: ours.message.clone(),
                name: easyrpc_client::ErrorCode::from_i64(ours.code).map(easyrpc_client::ErrorCode::name),
                // bincode data cannot be read without its type, which `rpc.methods` does
                // not give: it is left out.
                data: ours.data_value().and_then(Result::ok).map(|v| json::to_json(&v)),
                value: None,
            });
        }
        let foreign = e.foreign()?;
        let data = match &foreign.value {
            rmpv::Value::Array(items) if foreign.code.is_some() => items.get(2).map(json::to_json),
            _ => None,
        };
        Some(RemoteError {
            code: foreign.code,
            message: foreign.message.clone(),
            name: None,
            data,
            value: foreign.code.is_none().then(|| json::to_json(&foreign.value)),
        })
    }

    fn to_json(&self) -> Json {
        let mut j = json!({"kind": "remote", "code": self.code, "message": self.message});
        for (key, v) in [
            ("name", self.name.map(Json::from)),
            ("data", self.data.clone()),
            ("value", self.value.clone()),
        ] {
            if let Some(v) = v {
                j[key] = v;
            }
        }
        j
    }
}

impl std::fmt::Display for RemoteError {
    /// `error CODE: MESSAGE`, or `error: MESSAGE` for an error without a code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "error {code}: {}", self.message),
            None => write!(f, "error: {}", self.message),
        }
    }
}

/// One compact JSON line on stdout.
fn print_json(v: &Json) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`rpc ... | head -0`) is not worth a panic.
    let _ = writeln!(out, "{v}");
}

/// Run a parsed command line: print what it asks for and return the exit code (see
/// [`exit`]).
pub fn run(cli: &Cli) -> ExitCode {
    let g = &cli.global;
    let outcome = match &cli.command {
        Command::Call(a) => call(g, a),
        Command::Notify(a) => notify(g, a),
        Command::List { addr } => list(g, addr),
        Command::Describe { addr, method } => describe(g, addr, method),
        Command::Load(a) => load(g, a),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            f.report(g.json);
            ExitCode::from(f.exit_code())
        }
    }
}

impl GlobalArgs {
    /// How to reach `addr` with these flags.
    fn connection(&self, addr: &Target) -> Result<Connection, Failure> {
        let tls =
            match &self.tls_ca {
                None => None,
                Some(_) if !matches!(addr, Target::Tcp(_)) => return Err(Failure::Usage(
                    "the TLS options apply to host:port addresses, not to unix: sockets nor etcd: services"
                        .into(),
                )),
                Some(ca) => {
                    let usage = |e| Failure::client(e, "TLS settings");
                    let mut tls = ClientTls::from_ca_file(ca).map_err(usage)?;
                    if let Some(name) = &self.tls_server_name {
                        tls = tls.server_name(name.as_str());
                    }
                    if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                        tls = tls.client_cert(cert, key).map_err(usage)?;
                    }
                    Some(tls)
                }
            };
        let mut config = Config::default();
        config.timeout = self.timeout;
        config.connect_timeout = self.timeout;
        // `rpc` cannot tell a server of ours from any other without the hello, which only
        // bincode sends: error codes are read as the server's own (no names, and code 9 is
        // not taken for our "shutting down" and resent to a server that may have run it).
        config.our_server = false;
        config.codec = match self.codec {
            CodecArg::Msgpack => Codec::Msgpack,
            CodecArg::Bincode => Codec::Bincode,
        };
        Ok(Connection {
            target: addr.clone(),
            tls,
            config,
        })
    }
}

fn connect_error(conn: &Connection) -> impl Fn(easyrpc_client::Error) -> Failure + '_ {
    move |e| Failure::client(e, &format!("cannot connect to {}", conn.target))
}

/// The arguments as MessagePack values.
fn msgpack_args(words: &[String]) -> Result<Vec<rmpv::Value>, Failure> {
    args::parse(words)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .iter()
        .map(|j| json::to_msgpack(j).map_err(|e| Failure::Usage(format!("arguments: {e}"))))
        .collect()
}

/// The server's methods, from `rpc.methods` (always in MessagePack).
fn methods(conn: &Connection) -> Result<Vec<MethodInfo>, Failure> {
    let conn = conn.with_codec(Codec::Msgpack);
    let client = conn.blocking().map_err(connect_error(&conn))?;
    match client.call_value(METHODS, Vec::new()) {
        Ok(v) => MethodInfo::parse_all(&v).map_err(|e| Failure::Server(e.to_string())),
        Err(e) if RemoteError::of(&e).is_some() => Err(Failure::Server(format!(
            "{} does not support introspection: it answered {METHODS} with {}",
            conn.target,
            RemoteError::of(&e).map(|r| r.to_string()).unwrap_or_default()
        ))),
        Err(e) => Err(Failure::client(e, &format!("{METHODS} failed"))),
    }
}

/// One method's description, from `rpc.methods`.
fn method_info(conn: &Connection, name: &str) -> Result<MethodInfo, Failure> {
    methods(conn)?
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Failure::Server(format!("{} has no method {name:?} (see `rpc list`)", conn.target)))
}

/// For bincode: the arguments typed by the method's signature, and its result type (checked
/// to be one this crate can decode `with_result`).
fn typed_args(
    conn: &Connection,
    method: &str,
    words: &[String],
    with_result: bool,
) -> Result<(Vec<TypedArg>, Ty), Failure> {
    let values = args::parse(words).map_err(|e| Failure::Usage(e.to_string()))?;
    let info = method_info(conn, method)?;
    if info.args.len() != values.len() {
        return Err(Failure::Usage(format!(
            "{} takes {} argument(s), {} given",
            info.signature(),
            info.args.len(),
            values.len()
        )));
    }
    let unknown = |what: &str, written: &str, ty: &Ty| match ty.unknown() {
        Some(u) => Err(Failure::Usage(format!(
            "{what} of {}: {written}: bincode needs every type, and {u} is not one rpc knows \
             (std types only); use --codec msgpack",
            info.name
        ))),
        None => Ok(()),
    };
    let mut typed = Vec::with_capacity(values.len());
    for ((name, written), value) in info.args.iter().zip(values) {
        let ty = Ty::parse(written);
        unknown(&format!("argument {name}"), written, &ty)?;
        crate::typed::Typed {
            ty: &ty,
            value: &value,
        }
        .check()
        .map_err(|e| Failure::Usage(format!("argument {name} of {}: {e}", info.signature())))?;
        typed.push(TypedArg { ty, value });
    }
    let ret = Ty::parse_return(&info.returns);
    if with_result {
        unknown("the result", &info.returns, &ret)?;
    }
    Ok((typed, ret))
}

fn call(g: &GlobalArgs, a: &CallArgs) -> Result<u8, Failure> {
    let conn = g.connection(&a.addr)?;
    let result = match g.codec {
        CodecArg::Msgpack => {
            let params = msgpack_args(&a.args)?;
            if a.stream {
                return call_stream(g, &conn, a, params, None);
            }
            let client = conn.blocking().map_err(connect_error(&conn))?;
            let v = match client.call_value(&a.method, params.clone()) {
                Ok(v) => v,
                // A streaming method, called plainly: call it again as one (it did not run).
                Err(e) if is_streaming_method(&e) => return call_stream(g, &conn, a, params, None),
                Err(e) => return Err(Failure::client(e, "the call failed")),
            };
            json::to_json(&v)
        }
        CodecArg::Bincode => {
            let (params, ret) = typed_args(&conn, &a.method, &a.args, true)?;
            let info = method_info(&conn, &a.method)?;
            if a.stream || !info.streaming.is_empty() {
                return call_stream(g, &conn, a, params, Some((info, ret)));
            }
            let client = conn.blocking().map_err(connect_error(&conn))?;
            // The blocking client decodes on this thread.
            crate::typed::set_result_type(Some(ret));
            let TypedResult(v) = client
                .call(&a.method, params)
                .map_err(|e| Failure::client(e, "the call failed"))?;
            v
        }
    };
    if g.json {
        print_json(&json!({ "result": result }));
    } else {
        let pretty = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
        let _ = writeln!(std::io::stdout().lock(), "{pretty}");
    }
    Ok(exit::OK)
}

/// Whether `e` is a server of ours saying that the method streams
/// ([`ErrorCode::StreamingMethod`](easyrpc_client::ErrorCode::StreamingMethod)).
fn is_streaming_method(e: &easyrpc_client::Error) -> bool {
    RemoteError::of(e).is_some_and(|r| {
        r.code == Some(easyrpc_client::ErrorCode::StreamingMethod.as_i64())
            && r.message.contains("streaming method")
    })
}

/// `rpc call` of a streaming method: with the extensions on, result items printed as JSON
/// lines as they come, argument items read from stdin (one JSON value per line). `typed`
/// is the method's description and its item (or result) type, for bincode; MessagePack
/// asks `rpc.methods` how the method streams, and takes a result stream when it cannot
/// tell.
fn call_stream<P>(
    g: &GlobalArgs,
    conn: &Connection,
    a: &CallArgs,
    params: P,
    typed: Option<(MethodInfo, Ty)>,
) -> Result<u8, Failure>
where
    P: easyrpc_client::Params + Send + 'static,
{
    let streaming = match &typed {
        Some((info, _)) => info.streaming.clone(),
        None => methods(conn)
            .ok()
            .and_then(|all| all.into_iter().find(|m| m.name == a.method))
            .map(|m| m.streaming)
            .unwrap_or_default(),
    };
    let sends = matches!(streaming.as_str(), "args" | "both");
    let receives = !matches!(streaming.as_str(), "args");
    if sends && typed.is_some() {
        return Err(Failure::Usage(format!(
            "{} takes a stream, whose item type rpc.methods does not give: bincode cannot \
             encode its items; use --codec msgpack",
            a.method
        )));
    }
    let mut conn = conn.clone();
    conn.config.extensions = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Transport(format!("cannot start the runtime: {e}")))?;
    // Bincode items decode by the type on this thread (a current-thread runtime polls the
    // stream here).
    if let Some((_, ret)) = typed {
        crate::typed::set_result_type(Some(ret));
    }
    let as_json = g.json;
    rt.block_on(async move {
        let client = conn.client().await.map_err(connect_error(&conn))?;
        let failed = |e| Failure::client(e, "the streaming call failed");
        if !receives {
            let result: rmpv::Value = client
                .call_upload(&a.method, params, stdin_items())
                .await
                .map_err(failed)?;
            print_result(as_json, json::to_json(&result));
            return Ok(exit::OK);
        }
        let mut items = if sends {
            client
                .call_bidi::<_, rmpv::Value, _, StreamItem>(&a.method, params, stdin_items())
                .await
        } else {
            client.call_stream::<_, StreamItem>(&a.method, params).await
        }
        .map_err(failed)?;
        while let Some(item) = futures_util::StreamExt::next(&mut items).await {
            let StreamItem(v) = item.map_err(failed)?;
            let mut out = std::io::stdout().lock();
            // One line per item, written as it comes (stdout flushes at each newline).
            let _ = if as_json {
                writeln!(out, "{}", json!({ "item": v }))
            } else {
                writeln!(out, "{v}")
            };
        }
        Ok(exit::OK)
    })
}

/// A stream item as JSON: decoded as a MessagePack value, or as the type set for bincode.
struct StreamItem(Json);

impl<'de> serde::Deserialize<'de> for StreamItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StreamItem, D::Error> {
        // Bincode is not self-describing: its items can only be read by their type.
        if !crate::typed::has_result_type() {
            return rmpv::Value::deserialize(d).map(|v| StreamItem(json::to_json(&v)));
        }
        TypedResult::deserialize(d).map(|TypedResult(v)| StreamItem(v))
    }
}

/// The items of an argument stream: stdin's lines, each one JSON value (blank lines
/// skipped), read on a thread of their own as they come. A line that is not JSON ends the
/// stream early, with a message on stderr.
fn stdin_items() -> impl futures_util::Stream<Item = rmpv::Value> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<rmpv::Value>(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            let item = serde_json::from_str::<Json>(&line)
                .map_err(|e| e.to_string())
                .and_then(|j| json::to_msgpack(&j).map_err(|e| e.to_string()));
            match item {
                Ok(v) => {
                    if tx.blocking_send(v).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("stdin: an item is not JSON ({e}): the stream ends here");
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

fn print_result(as_json: bool, result: Json) {
    if as_json {
        print_json(&json!({ "result": result }));
    } else {
        let pretty = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
        let _ = writeln!(std::io::stdout().lock(), "{pretty}");
    }
}

fn notify(g: &GlobalArgs, a: &CallArgs) -> Result<u8, Failure> {
    let conn = g.connection(&a.addr)?;
    let sent = match g.codec {
        CodecArg::Msgpack => {
            let params = msgpack_args(&a.args)?;
            conn.blocking()
                .map_err(connect_error(&conn))?
                .notify(&a.method, params)
        }
        CodecArg::Bincode => {
            let (params, _) = typed_args(&conn, &a.method, &a.args, false)?;
            conn.blocking()
                .map_err(connect_error(&conn))?
                .notify(&a.method, params)
        }
    };
    // The blocking client has written the notification when `notify` returns.
    sent.map_err(|e| Failure::client(e, "the notification failed"))?;
    if g.json {
        print_json(&json!({ "sent": true }));
    }
    Ok(exit::OK)
}

fn list(g: &GlobalArgs, addr: &Target) -> Result<u8, Failure> {
    let methods = methods(&g.connection(addr)?)?;
    if g.json {
        let all: Vec<Json> = methods.iter().map(MethodInfo::to_json).collect();
        print_json(&json!({ "methods": all }));
    } else {
        let mut out = std::io::stdout().lock();
        for m in &methods {
            let _ = writeln!(out, "{}", m.signature());
        }
    }
    Ok(exit::OK)
}

fn describe(g: &GlobalArgs, addr: &Target, method: &str) -> Result<u8, Failure> {
    let info = method_info(&g.connection(addr)?, method)?;
    if g.json {
        print_json(&info.to_json());
    } else {
        let _ = write!(std::io::stdout().lock(), "{}", info.description());
    }
    Ok(exit::OK)
}

fn load(g: &GlobalArgs, a: &LoadArgs) -> Result<u8, Failure> {
    let conn = g.connection(&a.call.addr)?;
    let mut opts = LoadOptions::new(a.call.method.as_str());
    opts.concurrency = a.concurrency;
    opts.connections = a.connections;
    opts.duration = a.duration;
    opts.warmup = a.warmup;
    opts.progress = true;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    let report = match g.codec {
        CodecArg::Msgpack => {
            let params = msgpack_args(&a.call.args)?;
            let rt = runtime
                .build()
                .map_err(|e| Failure::Usage(format!("tokio runtime: {e}")))?;
            // Results are skipped, not kept: the load measures the server, not this tool.
            rt.block_on(crate::load::run::<_, serde::de::IgnoredAny>(&conn, &opts, params))
        }
        CodecArg::Bincode => {
            let (params, ret) = typed_args(&conn, &a.call.method, &a.call.args, true)?;
            // The async client decodes on whichever worker polls the call: each needs the
            // result type.
            let ret_each = ret.clone();
            runtime.on_thread_start(move || crate::typed::set_result_type(Some(ret_each.clone())));
            let rt = runtime
                .build()
                .map_err(|e| Failure::Usage(format!("tokio runtime: {e}")))?;
            crate::typed::set_result_type(Some(ret));
            rt.block_on(crate::load::run::<_, TypedResult>(&conn, &opts, params))
        }
    }
    .map_err(connect_error(&conn))?;
    print_report(g, a, &conn, &report);
    Ok(if report.transport_errors {
        exit::TRANSPORT
    } else if report.error_count() > 0 {
        exit::REMOTE
    } else {
        exit::OK
    })
}

fn print_report(g: &GlobalArgs, a: &LoadArgs, conn: &Connection, report: &Report) {
    if g.json {
        let mut j = report.to_json();
        j["method"] = a.call.method.clone().into();
        j["addr"] = conn.target.to_string().into();
        print_json(&j);
    } else {
        let _ = write!(
            std::io::stdout().lock(),
            "{} {} on {}: {} in flight over {} connection(s)\n{}",
            a.call.method,
            a.call.args.join(" "),
            conn.target,
            report.concurrency,
            report.connections,
            report.summary()
        );
    }
}
