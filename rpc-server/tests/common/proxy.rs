//! A fault-injecting TCP proxy for the server's integration tests, and the seeded PRNG
//! that drives it.
//!
//! Every connection accepted by [`Proxy`] is piped to the upstream server and cut at a
//! point drawn from the PRNG: after a number of bytes from the client (usually in the
//! middle of a request, so that request never wholly reaches the server), after a number
//! of bytes from the server (usually in the middle of a reply), or right after the
//! server's hello, at the first byte of its first reply (the server ran the call; the
//! client never hears of it). The client's side is closed with a FIN or a reset, also
//! drawn from the PRNG; the server's side always with a FIN after what was forwarded, so
//! that "forwarded" means the server reads it.
//!
//! The cut points are decided per connection, in the order the connections are accepted,
//! from one seed; which calls a cut hits depends on timing, which is the point.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use easyrpc_proto::{Codec, Framer, Hello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// xorshift64*, seeded through splitmix64 so that any seed (0 included) is usable.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for a test (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Length of the hello our clients and server send in unstable-network mode (with a
/// session id).
pub(crate) fn hello_len() -> usize {
    let mut v = Vec::new();
    Hello::new(Codec::Msgpack).with_session(Some(0)).encode(&mut v);
    v.len()
}

/// Where a connection is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// After this many bytes from the client (its hello included).
    Up(usize),
    /// After this many bytes from the server (its hello included).
    Down(usize),
}

/// What the proxy did, for the test's report and its checks that every kind of fault
/// happened.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    /// Cut during the hello exchange (either direction).
    pub(crate) cut_in_hello: AtomicU64,
    /// Cut in the middle of a request: the server got part of it.
    pub(crate) cut_mid_request: AtomicU64,
    /// Cut from the client side between two requests.
    pub(crate) cut_between_requests: AtomicU64,
    /// Cut in the middle of a reply: the client got part of it.
    pub(crate) cut_mid_reply: AtomicU64,
    /// Cut from the server side between two replies.
    pub(crate) cut_between_replies: AtomicU64,
    /// Over all cuts: requests the server got whole whose reply the client never got
    /// whole (at the moment of the cut). Each was run, or is running, and must not run
    /// again on retry.
    pub(crate) unanswered_calls: AtomicU64,
    /// Resets sent to the client instead of a FIN.
    pub(crate) resets: AtomicU64,
}

impl Stats {
    pub(crate) fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }

    pub(crate) fn cuts(&self) -> u64 {
        [
            &self.cut_in_hello,
            &self.cut_mid_request,
            &self.cut_between_requests,
            &self.cut_mid_reply,
            &self.cut_between_replies,
        ]
        .iter()
        .map(|n| Stats::get(n))
        .sum()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections, {} cuts: {} in the hello, {} mid-request, {} between requests, {} mid-reply, \
             {} between replies; {} calls forwarded but unanswered at a cut; {} resets",
            Stats::get(&self.connections),
            self.cuts(),
            Stats::get(&self.cut_in_hello),
            Stats::get(&self.cut_mid_request),
            Stats::get(&self.cut_between_requests),
            Stats::get(&self.cut_mid_reply),
            Stats::get(&self.cut_between_replies),
            Stats::get(&self.unanswered_calls),
            Stats::get(&self.resets),
        )
    }
}

/// The proxy: listens on its own port, stops (aborting every pipe) when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Proxy to `upstream`. Each connection is cut after a number of bytes below
    /// `max_cut`, counted in one direction drawn from `seed`'s PRNG; one in five is cut
    /// right after the server's hello.
    pub(crate) async fn start(upstream: SocketAddr, seed: u64, max_cut: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept(
            listener,
            upstream,
            Rng::new(seed),
            max_cut as u64,
            stats.clone(),
        ));
        Proxy { addr, stats, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The pipes live in the accept task's JoinSet: aborting it aborts them all.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mut rng: Rng, max_cut: u64, stats: Arc<Stats>) {
    let hello = hello_len();
    let mut pipes = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = pipes.join_next(), if !pipes.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                // Drawn in accept order, whatever happens next, so that connection n always
                // gets the same cut for a given seed.
                let cut = match rng.below(5) {
                    0 | 1 => Cut::Up(rng.below(max_cut) as usize),
                    2 | 3 => Cut::Down(rng.below(max_cut) as usize),
                    _ => Cut::Down(hello),
                };
                let reset = rng.below(2) == 0;
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let stats = stats.clone();
                pipes.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pipe(client, server, cut, reset, &stats).await;
                });
            }
        }
    }
}

/// Counts the bytes forwarded in one direction and splits them into messages, to tell
/// where a cut fell.
struct Meter {
    total: usize,
    in_hello: bool,
    buf: BytesMut,
    framer: Framer,
    frames: u64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            total: 0,
            in_hello: true,
            buf: BytesMut::new(),
            framer: Framer::new(Codec::Msgpack, 64 << 20),
            frames: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        self.buf.extend_from_slice(bytes);
        if self.in_hello {
            match Hello::decode(&self.buf) {
                Ok(None) => return,
                Ok(Some((_, n))) => self.buf.advance(n),
                // A plain client: no hello.
                Err(_) => {}
            }
            self.in_hello = false;
        }
        while let Ok(Some(n)) = self.framer.decode(&self.buf) {
            self.buf.advance(n);
            self.frames += 1;
        }
    }
}

/// How much of `n` new bytes to forward, and whether to cut after them.
fn allowance(limit: Option<usize>, total: usize, n: usize) -> (usize, bool) {
    match limit {
        Some(limit) if total + n > limit => (limit.saturating_sub(total), true),
        _ => (n, false),
    }
}

async fn pipe(client: TcpStream, server: TcpStream, cut: Cut, reset: bool, stats: &Stats) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (up_limit, down_limit) = match cut {
        Cut::Up(n) => (Some(n), None),
        Cut::Down(n) => (None, Some(n)),
    };
    let mut up = Meter::new();
    let mut down = Meter::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let cut_here = loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => break None, Ok(n) => n };
                let (take, cut) = allowance(up_limit, up.total, n);
                if sw.write_all(&cbuf[..take]).await.is_err() {
                    break None;
                }
                up.feed(&cbuf[..take]);
                if cut {
                    break Some(true);
                }
            }
            r = sr.read(&mut sbuf) => {
                let n = match r { Ok(0) | Err(_) => break None, Ok(n) => n };
                let (take, cut) = allowance(down_limit, down.total, n);
                if cw.write_all(&sbuf[..take]).await.is_err() {
                    break None;
                }
                down.feed(&sbuf[..take]);
                if cut {
                    break Some(false);
                }
            }
        }
    };
    let Some(upward) = cut_here else { return };
    let hello = hello_len();
    let counter = if upward {
        if up.total < hello {
            &stats.cut_in_hello
        } else if up.buf.is_empty() {
            &stats.cut_between_requests
        } else {
            &stats.cut_mid_request
        }
    } else if down.total < hello {
        &stats.cut_in_hello
    } else if down.buf.is_empty() {
        &stats.cut_between_replies
    } else {
        &stats.cut_mid_reply
    };
    counter.fetch_add(1, Ordering::Relaxed);
    stats
        .unanswered_calls
        .fetch_add(up.frames.saturating_sub(down.frames), Ordering::Relaxed);
    close_client(cr, cw, reset, stats);
    close_server(sr, sw).await;
}

/// Cut the client off: a reset, or a FIN after what was forwarded.
fn close_client(cr: OwnedReadHalf, cw: OwnedWriteHalf, reset: bool, stats: &Stats) {
    if reset {
        stats.resets.fetch_add(1, Ordering::Relaxed);
        let _ = cw.as_ref().set_zero_linger();
    }
    drop((cr, cw));
}

/// Close the server's side gracefully (FIN after what was forwarded) and discard what it
/// still sends until it closes too, so it reads everything forwarded instead of a reset.
async fn close_server(mut sr: OwnedReadHalf, mut sw: OwnedWriteHalf) {
    let _ = sw.shutdown().await;
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = sr.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
