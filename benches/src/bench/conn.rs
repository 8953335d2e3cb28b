//! One client connection of each system, and one call of each workload through it.

use std::net::SocketAddr;

use benches::Record;
use easyrpc_proto::Blob;
use serde_bytes::ByteBuf;
use tarpc::tokio_serde::formats::Bincode;

use crate::grpc;
use crate::raw;
use crate::secure;
use crate::system::{OurCodec, Payload, Variant, Workload, TEXT_SIZE};
use crate::tarpc_svc::BenchClient as TarpcClient;
use crate::Result;

/// Largest frame the tarpc transport accepts, both sides (its default is 8 MiB).
pub(crate) const TARPC_MAX_FRAME: usize = 16 << 20;

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("wrong answer: {what}").into())
    }
}

/// Our clients' message size limit, when a run raises it (the 64 MiB echo).
static MAX_MESSAGE_SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Raise our clients' message size limit to `n` bytes (for the rest of the process), as
/// the harness raises our servers' (`bench server --max-message-size`).
pub(crate) fn set_max_message_size(n: usize) {
    let _ = MAX_MESSAGE_SIZE.set(n);
}

fn our_config(codec: OurCodec, workload: Workload) -> easyrpc_client::Config {
    let mut cfg = easyrpc_client::Config::default();
    cfg.codec = codec.codec();
    if let Some(&n) = MAX_MESSAGE_SIZE.get() {
        cfg.max_message_size = n;
    }
    if workload.compress() {
        cfg.compression(easyrpc_client::Compression::default().threshold);
    }
    cfg
}

/// An async client connection.
#[derive(Debug)]
pub(crate) enum AsyncConn {
    Ours(easyrpc_client::Client),
    Tonic(grpc::BenchClient<tonic::transport::Channel>),
    Tarpc(TarpcClient),
    RawTokio(raw::TokioConn),
}

impl AsyncConn {
    /// Open a new connection (each call of this opens its own).
    pub(crate) async fn connect(variant: Variant, addr: SocketAddr, payload: &Payload) -> Result<AsyncConn> {
        Ok(match variant {
            Variant::OursAsync(codec) => {
                let config = our_config(codec, payload.workload);
                AsyncConn::Ours(easyrpc_client::Client::connect_with(addr, config).await?)
            }
            Variant::OursPrefork | Variant::OursPrefork1 => AsyncConn::Ours(
                easyrpc_client::Client::connect_with(addr, our_config(OurCodec::Msgpack, payload.workload))
                    .await?,
            ),
            Variant::Tonic => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                AsyncConn::Tonic(grpc::BenchClient::new(channel))
            }
            Variant::TonicTls => {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(secure::ca_pem()?))
                    .domain_name("localhost");
                let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                    .tls_config(tls)?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                AsyncConn::Tonic(grpc::BenchClient::new(channel))
            }
            Variant::OursTls => {
                let tls =
                    easyrpc_client::ClientTls::from_ca_pem(&secure::ca_pem()?)?.server_name("localhost");
                AsyncConn::Ours(
                    easyrpc_client::Client::connect_tls_with(
                        &addr.to_string(),
                        tls,
                        our_config(OurCodec::Msgpack, payload.workload),
                    )
                    .await?,
                )
            }
            Variant::OursUnix => AsyncConn::Ours(
                easyrpc_client::Client::connect_unix_with(
                    secure::unix_path(),
                    our_config(OurCodec::Msgpack, payload.workload),
                )
                .await?,
            ),
            Variant::Tarpc => {
                let mut connect = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
                connect.config_mut().max_frame_length(TARPC_MAX_FRAME);
                let transport = connect.await?;
                transport.get_ref().set_nodelay(true)?;
                AsyncConn::Tarpc(TarpcClient::new(tarpc::client::Config::default(), transport).spawn())
            }
            Variant::RawTokio => AsyncConn::RawTokio(raw::TokioConn::connect(addr, payload).await?),
            Variant::OursBlocking(_) | Variant::RawStd => {
                return Err(format!("{variant} is not an async client").into())
            }
        })
    }

    /// As [`AsyncConn::connect`], for connection churn ([`Mode::accept`]): the raw tokio
    /// floor reads through a 1 KiB buffer instead of 64 KiB, as a client making one small
    /// call would (our client sizes its buffers itself).
    ///
    /// [`Mode::accept`]: crate::system::Mode::accept
    pub(crate) async fn connect_small(
        variant: Variant,
        addr: SocketAddr,
        payload: &Payload,
    ) -> Result<AsyncConn> {
        match variant {
            Variant::RawTokio => Ok(AsyncConn::RawTokio(
                raw::TokioConn::connect_with_buffer(addr, payload, 1024).await?,
            )),
            _ => AsyncConn::connect(variant, addr, payload).await,
        }
    }

    /// Another handle on the same connection, for another task.
    pub(crate) fn share(&self) -> Result<AsyncConn> {
        Ok(match self {
            AsyncConn::Ours(c) => AsyncConn::Ours(c.clone()),
            AsyncConn::Tonic(c) => AsyncConn::Tonic(c.clone()),
            AsyncConn::Tarpc(c) => AsyncConn::Tarpc(c.clone()),
            AsyncConn::RawTokio(_) => return Err("a raw connection has no shared handles".into()),
        })
    }

    /// One call of `p`'s workload; checks the answer.
    pub(crate) async fn call(&mut self, p: &Payload) -> Result<()> {
        match self {
            AsyncConn::Ours(c) => call_ours(c, p).await,
            AsyncConn::Tonic(c) => call_tonic(c, p).await,
            AsyncConn::Tarpc(c) => call_tarpc(c, p).await,
            AsyncConn::RawTokio(c) => call_raw_tokio(c, p).await,
        }
    }
}

// One function per system rather than one `match` over them: the future of a `match`
// is as large as its largest arm (tonic's), and the load loops, 256 of them at 16 × 16,
// each keep one. Each system's loop holds only its own.

/// One call of `p`'s workload through our async client.
pub(crate) async fn call_ours(c: &easyrpc_client::Client, p: &Payload) -> Result<()> {
    match p.workload {
        Workload::Add => {
            let v: i64 = c.call("add", (1i64, 2i64)).await?;
            check(v == 3, "add")
        }
        Workload::Echo(n) => {
            let v: ByteBuf = c.call("echo", (serde_bytes::Bytes::new(&p.blob),)).await?;
            check(v.len() == n, "echo")
        }
        Workload::EchoText { .. } => {
            let v: ByteBuf = c.call("echo", (serde_bytes::Bytes::new(&p.blob),)).await?;
            check(v.len() == TEXT_SIZE, "echo")
        }
        Workload::EchoBlob(n) => {
            let v: Blob = c.call("echo_blob", (Blob::from(p.blob.clone()),)).await?;
            check(v.len() == n, "echo_blob")
        }
        Workload::Records => {
            let v: Vec<Record> = c.call("echo_records", (&p.records,)).await?;
            check(v.len() == p.records.len(), "echo_records")
        }
    }
}

/// One call of `p`'s workload through tonic.
pub(crate) async fn call_tonic(
    c: &mut grpc::BenchClient<tonic::transport::Channel>,
    p: &Payload,
) -> Result<()> {
    match p.workload {
        Workload::Add => {
            let v = c.add(grpc::AddRequest { a: 1, b: 2 }).await?.into_inner();
            check(v.sum == 3, "add")
        }
        Workload::Echo(n) => {
            let v = c.echo(grpc::Blob { data: p.blob.clone() }).await?.into_inner();
            check(v.data.len() == n, "echo")
        }
        w => Err(format!("{w} is only served by ours").into()),
    }
}

/// One call of `p`'s workload through tarpc.
pub(crate) async fn call_tarpc(c: &TarpcClient, p: &Payload) -> Result<()> {
    match p.workload {
        Workload::Add => {
            let v = c.add(tarpc::context::current(), 1, 2).await?;
            check(v == 3, "add")
        }
        Workload::Echo(n) => {
            let v = c.echo(tarpc::context::current(), p.blob.clone()).await?;
            check(v.len() == n, "echo")
        }
        w => Err(format!("{w} is only served by ours").into()),
    }
}

async fn call_raw_tokio(c: &mut raw::TokioConn, p: &Payload) -> Result<()> {
    match p.workload {
        Workload::Add | Workload::Echo(_) => c.call().await,
        w => Err(format!("{w} is only served by ours").into()),
    }
}

/// A blocking client connection.
#[derive(Debug)]
pub(crate) enum BlockingConn {
    Ours(Box<easyrpc_client::BlockingClient>),
    Raw(raw::StdConn),
}

impl BlockingConn {
    pub(crate) fn connect(variant: Variant, addr: SocketAddr, payload: &Payload) -> Result<BlockingConn> {
        Ok(match variant {
            Variant::OursBlocking(codec) => BlockingConn::Ours(Box::new(
                easyrpc_client::BlockingClient::connect_with(addr, our_config(codec, payload.workload))?,
            )),
            Variant::RawStd => BlockingConn::Raw(raw::StdConn::connect(addr, payload)?),
            _ => return Err(format!("{variant} is not a blocking client").into()),
        })
    }

    pub(crate) fn call(&mut self, p: &Payload) -> Result<()> {
        match (self, p.workload) {
            (BlockingConn::Ours(c), Workload::Add) => {
                let v: i64 = c.call("add", (1i64, 2i64))?;
                check(v == 3, "add")
            }
            (BlockingConn::Ours(c), Workload::Echo(n)) => {
                let v: ByteBuf = c.call("echo", (serde_bytes::Bytes::new(&p.blob),))?;
                check(v.len() == n, "echo")
            }
            (BlockingConn::Ours(c), Workload::EchoText { .. }) => {
                let v: ByteBuf = c.call("echo", (serde_bytes::Bytes::new(&p.blob),))?;
                check(v.len() == TEXT_SIZE, "echo")
            }
            (BlockingConn::Ours(c), Workload::EchoBlob(n)) => {
                let v: Blob = c.call("echo_blob", (Blob::from(p.blob.clone()),))?;
                check(v.len() == n, "echo_blob")
            }
            (BlockingConn::Ours(c), Workload::Records) => {
                let v: Vec<Record> = c.call("echo_records", (&p.records,))?;
                check(v.len() == p.records.len(), "echo_records")
            }
            (BlockingConn::Raw(c), Workload::Add | Workload::Echo(_)) => c.call(),
            (_, w) => Err(format!("{w} is only served by ours").into()),
        }
    }

    pub(crate) fn into_raw(self) -> Result<raw::StdConn> {
        match self {
            BlockingConn::Raw(c) => Ok(c),
            BlockingConn::Ours(_) => Err("not a raw connection".into()),
        }
    }
}
