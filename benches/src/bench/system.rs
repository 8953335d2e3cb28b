//! What is compared: the systems, the clients of each, the workloads and the modes.

use std::fmt;
use std::sync::Arc;

use benches::{Record, RECORDS_PER_CALL};
use bytes::Bytes;

/// A server implementation, run as its own process by `bench server --system X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum ServerKind {
    /// Our server (rpc-server), one process, one worker.
    Ours,
    /// Our server through rpc-server's prefork supervisor: `--prefork-workers` worker
    /// processes sharing the port with `SO_REUSEPORT`.
    OursPrefork,
    /// The prefork supervisor with one worker, whatever `--prefork-workers` says: the
    /// baseline `ours-prefork` scales from, in the same run.
    #[value(name = "ours-prefork-1")]
    OursPrefork1,
    /// gRPC through tonic 0.14 (HTTP/2, protobuf).
    Tonic,
    /// tarpc 0.38 with its serde transport over TCP (bincode).
    Tarpc,
    /// Length-prefixed echo on blocking std sockets, a thread per connection.
    RawStd,
    /// Length-prefixed echo on tokio, a task per connection.
    RawTokio,
    /// Our server (as `ours`) over TLS, with the run's certificate (see `secure`).
    OursTls,
    /// Our server (as `ours`) on a Unix-domain socket.
    OursUnix,
    /// tonic (as `tonic`) over TLS, with the same certificate as `ours-tls`.
    TonicTls,
}

impl ServerKind {
    pub(crate) const ALL: [ServerKind; 10] = [
        ServerKind::Ours,
        ServerKind::OursPrefork,
        ServerKind::OursPrefork1,
        ServerKind::Tonic,
        ServerKind::Tarpc,
        ServerKind::RawStd,
        ServerKind::RawTokio,
        ServerKind::OursTls,
        ServerKind::OursUnix,
        ServerKind::TonicTls,
    ];

    /// The name on the command line.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            ServerKind::Ours => "ours",
            ServerKind::OursPrefork => "ours-prefork",
            ServerKind::OursPrefork1 => "ours-prefork-1",
            ServerKind::Tonic => "tonic",
            ServerKind::Tarpc => "tarpc",
            ServerKind::RawStd => "raw-std",
            ServerKind::RawTokio => "raw-tokio",
            ServerKind::OursTls => "ours-tls",
            ServerKind::OursUnix => "ours-unix",
            ServerKind::TonicTls => "tonic-tls",
        }
    }

    /// Our server, in any of its forms.
    pub(crate) fn is_ours(self) -> bool {
        matches!(
            self,
            ServerKind::Ours
                | ServerKind::OursPrefork
                | ServerKind::OursPrefork1
                | ServerKind::OursTls
                | ServerKind::OursUnix
        )
    }

    /// Served over TLS (with the run's certificate).
    pub(crate) fn is_tls(self) -> bool {
        matches!(self, ServerKind::OursTls | ServerKind::TonicTls)
    }
}

/// Our codec choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum OurCodec {
    Msgpack,
    Bincode,
}

impl OurCodec {
    pub(crate) fn codec(self) -> easyrpc_client::Codec {
        match self {
            OurCodec::Msgpack => easyrpc_client::Codec::Msgpack,
            OurCodec::Bincode => easyrpc_client::Codec::Bincode,
        }
    }
}

/// One client of one system: a row in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Variant {
    /// Our async `Client`.
    OursAsync(OurCodec),
    /// Our std `BlockingClient`.
    OursBlocking(OurCodec),
    /// Our async `Client` (msgpack) against the prefork server.
    OursPrefork,
    /// Our async `Client` (msgpack) against the one-worker prefork server.
    OursPrefork1,
    Tonic,
    Tarpc,
    RawStd,
    RawTokio,
    /// Our async `Client` (msgpack) over TLS.
    OursTls,
    /// Our async `Client` (msgpack) over a Unix-domain socket.
    OursUnix,
    /// tonic over TLS.
    TonicTls,
}

impl Variant {
    pub(crate) const ALL: [Variant; 13] = [
        Variant::OursAsync(OurCodec::Msgpack),
        Variant::OursAsync(OurCodec::Bincode),
        Variant::OursBlocking(OurCodec::Msgpack),
        Variant::OursBlocking(OurCodec::Bincode),
        Variant::OursPrefork,
        Variant::OursPrefork1,
        Variant::Tonic,
        Variant::Tarpc,
        Variant::RawStd,
        Variant::RawTokio,
        Variant::OursTls,
        Variant::OursUnix,
        Variant::TonicTls,
    ];

    pub(crate) fn server(self) -> ServerKind {
        match self {
            Variant::OursAsync(_) | Variant::OursBlocking(_) => ServerKind::Ours,
            Variant::OursPrefork => ServerKind::OursPrefork,
            Variant::OursPrefork1 => ServerKind::OursPrefork1,
            Variant::Tonic => ServerKind::Tonic,
            Variant::Tarpc => ServerKind::Tarpc,
            Variant::RawStd => ServerKind::RawStd,
            Variant::RawTokio => ServerKind::RawTokio,
            Variant::OursTls => ServerKind::OursTls,
            Variant::OursUnix => ServerKind::OursUnix,
            Variant::TonicTls => ServerKind::TonicTls,
        }
    }

    /// A thread blocks on each call (no runtime on the client side).
    pub(crate) fn is_blocking(self) -> bool {
        matches!(self, Variant::OursBlocking(_) | Variant::RawStd)
    }

    /// The raw floor this client is compared with: std for blocking clients, tokio for
    /// async ones.
    pub(crate) fn floor(self) -> Variant {
        if self.is_blocking() {
            Variant::RawStd
        } else {
            Variant::RawTokio
        }
    }

    /// Whether this client can run `mode` with `workload`.
    pub(crate) fn supports(self, mode: Mode, workload: Workload) -> bool {
        // The records echo compares our two codecs on one server: the prefork server, with
        // its one codec, would only repeat the msgpack row.
        // So does the compressed echo: compression is ours alone (on by default in our
        // server, asked for by the `-zstd` workload's client).
        let ours_only = matches!(
            workload,
            Workload::Records | Workload::EchoText { .. } | Workload::EchoBlob(_)
        );
        if ours_only && !matches!(self, Variant::OursAsync(_) | Variant::OursBlocking(_)) {
            return false;
        }
        // Connection churn: async clients (a task per connection) and the raw tokio floor.
        if mode.accept {
            return matches!(
                self,
                Variant::OursAsync(_) | Variant::OursPrefork | Variant::OursPrefork1 | Variant::RawTokio
            );
        }
        if workload.is_big()
            && !matches!(
                self,
                Variant::OursAsync(_) | Variant::OursBlocking(_) | Variant::RawStd | Variant::RawTokio
            )
        {
            return false;
        }
        match self {
            // One call at a time per client: sequential, or one thread per connection.
            Variant::OursBlocking(_) => mode.in_flight == 1,
            // What a transport adds to a call: `add`, sequential and 1 × 64.
            Variant::OursTls | Variant::OursUnix | Variant::TonicTls => {
                workload == Workload::Add
                    && (mode.sequential || (mode.connections, mode.in_flight) == (1, 64))
            }
            _ => true,
        }
    }

    /// The name on the command line (`--clients`).
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Variant::OursAsync(OurCodec::Msgpack) => "ours-async-msgpack",
            Variant::OursAsync(OurCodec::Bincode) => "ours-async-bincode",
            Variant::OursBlocking(OurCodec::Msgpack) => "ours-blocking-msgpack",
            Variant::OursBlocking(OurCodec::Bincode) => "ours-blocking-bincode",
            Variant::OursPrefork => "ours-prefork-async-msgpack",
            Variant::OursPrefork1 => "ours-prefork-1-async-msgpack",
            Variant::Tonic => "tonic",
            Variant::Tarpc => "tarpc",
            Variant::RawStd => "raw-std",
            Variant::RawTokio => "raw-tokio",
            Variant::OursTls => "ours-tls",
            Variant::OursUnix => "ours-unix",
            Variant::TonicTls => "tonic-tls",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Variant::OursAsync(OurCodec::Msgpack) => "ours async msgpack",
            Variant::OursAsync(OurCodec::Bincode) => "ours async bincode",
            Variant::OursBlocking(OurCodec::Msgpack) => "ours blocking msgpack",
            Variant::OursBlocking(OurCodec::Bincode) => "ours blocking bincode",
            Variant::OursPrefork => "ours prefork async msgpack",
            Variant::OursPrefork1 => "ours prefork, 1 worker, async msgpack",
            Variant::Tonic => "tonic (gRPC)",
            Variant::Tarpc => "tarpc (bincode)",
            Variant::RawStd => "raw TCP std",
            Variant::RawTokio => "raw TCP tokio",
            Variant::OursTls => "ours async msgpack, TLS",
            Variant::OursUnix => "ours async msgpack, Unix socket",
            Variant::TonicTls => "tonic (gRPC), TLS",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What each call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Workload {
    /// `add(i64, i64) -> i64`. The raw floors echo a 16-byte frame instead.
    Add,
    /// Echo of this many bytes.
    Echo(usize),
    /// Echo of [`RECORDS_PER_CALL`] [`Record`]s (ours only: the codec comparison).
    Records,
    /// Echo of 1 MiB of text ([`benches::text`], which zstd shrinks about fivefold), ours
    /// only: with `compress`, the client turns zstd compression on (4 KiB threshold, level
    /// 3) and the server, on by default, compresses its replies to it.
    EchoText { compress: bool },
    /// Echo of this many bytes as an `easyrpc::Blob` (`echo_blob`), ours only: large blobs
    /// are neither copied out of the message they came in nor into the write buffer.
    EchoBlob(usize),
}

impl Workload {
    /// Every workload, with its name on the command line (`--workloads`).
    pub(crate) fn all() -> Vec<(&'static str, Workload)> {
        let mut v = vec![("add", Workload::Add)];
        for (name, n) in ["16b", "1k", "64k", "1m"].into_iter().zip(benches::ECHO_SIZES) {
            v.push((name, Workload::Echo(n)));
        }
        v.push(("records", Workload::Records));
        v.push(("1m-text", Workload::EchoText { compress: false }));
        v.push(("1m-text-zstd", Workload::EchoText { compress: true }));
        v
    }

    /// Big messages (issue 14): echo of 16 MiB and 64 MiB, run only when named in
    /// `--workloads`, by our clients and the raw floors (tonic's and tarpc's frame limits
    /// are lower). A 64 MiB echo is over our default message size limit: the harness
    /// raises it on both sides (`bench server --max-message-size`).
    pub(crate) fn big() -> Vec<(&'static str, Workload)> {
        vec![
            ("16m", Workload::Echo(16 << 20)),
            ("64m", Workload::Echo(64 << 20)),
            ("1m-blob", Workload::EchoBlob(1 << 20)),
            ("16m-blob", Workload::EchoBlob(16 << 20)),
            ("64m-blob", Workload::EchoBlob(64 << 20)),
        ]
    }

    /// An echo larger than the 1 MiB of the default set.
    pub(crate) fn is_big(self) -> bool {
        matches!(self, Workload::Echo(n) | Workload::EchoBlob(n) if n > 1 << 20)
    }

    /// The client compresses (and the server then compresses its replies to it).
    pub(crate) fn compress(self) -> bool {
        matches!(self, Workload::EchoText { compress: true })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Add => f.write_str("add"),
            Workload::Echo(n) => write!(f, "echo {}", benches::size_label(*n)),
            Workload::Records => write!(f, "echo {RECORDS_PER_CALL} records"),
            Workload::EchoText { compress: false } => f.write_str("echo 1 MiB text"),
            Workload::EchoText { compress: true } => f.write_str("echo 1 MiB text, zstd"),
            Workload::EchoBlob(n) => write!(f, "echo {} as Blob", benches::size_label(*n)),
        }
    }
}

/// How calls are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Mode {
    /// Connections.
    pub(crate) connections: usize,
    /// Calls in flight on each connection.
    pub(crate) in_flight: usize,
    /// Sequential latency: one connection, one call at a time, a fixed number of calls.
    pub(crate) sequential: bool,
    /// Connection churn (issue 14): `connections` new connections, each making one call
    /// (`in_flight` of them being opened at a time), timed from the first connect to the
    /// last answer.
    pub(crate) accept: bool,
}

impl Mode {
    pub(crate) const SEQUENTIAL: Mode = Mode {
        connections: 1,
        in_flight: 1,
        sequential: true,
        accept: false,
    };

    pub(crate) fn load(connections: usize, in_flight: usize) -> Mode {
        Mode {
            connections,
            in_flight,
            sequential: false,
            accept: false,
        }
    }

    /// `connections` new connections, one call each, `opening` of them at a time.
    pub(crate) fn accept(connections: usize, opening: usize) -> Mode {
        Mode {
            connections,
            in_flight: opening,
            sequential: false,
            accept: true,
        }
    }
}

/// Sequential first, then the most calls in flight per connection first: 1 × 64, 16 × 16,
/// 256 × 1, as the issue lists them.
impl Ord for Mode {
    fn cmp(&self, other: &Mode) -> std::cmp::Ordering {
        let key = |m: &Mode| {
            (
                !m.sequential,
                m.accept,
                std::cmp::Reverse(m.in_flight),
                m.connections,
            )
        };
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for Mode {
    fn partial_cmp(&self, other: &Mode) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sequential {
            f.write_str("sequential")
        } else if self.accept {
            write!(
                f,
                "{} new connections, one call each ({} opening at a time)",
                self.connections, self.in_flight
            )
        } else {
            write!(f, "{} conn × {} in flight", self.connections, self.in_flight)
        }
    }
}

/// The size of the text echoed by [`Workload::EchoText`].
pub(crate) const TEXT_SIZE: usize = 1 << 20;

/// The data of one workload, built once and shared by every call.
#[derive(Debug)]
pub(crate) struct Payload {
    pub(crate) workload: Workload,
    /// The bytes to echo (for `Add`, the 16 bytes the raw floors echo).
    pub(crate) blob: Bytes,
    pub(crate) records: Vec<Record>,
}

impl Payload {
    pub(crate) fn new(workload: Workload) -> Arc<Payload> {
        let blob = match workload {
            Workload::Add => {
                let mut b = 1i64.to_le_bytes().to_vec();
                b.extend_from_slice(&2i64.to_le_bytes());
                b
            }
            Workload::Echo(n) | Workload::EchoBlob(n) => benches::blob(n),
            Workload::EchoText { .. } => benches::text(TEXT_SIZE),
            Workload::Records => Vec::new(),
        };
        let records = match workload {
            Workload::Records => benches::records(RECORDS_PER_CALL),
            _ => Vec::new(),
        };
        Arc::new(Payload {
            workload,
            blob: Bytes::from(blob),
            records,
        })
    }
}
