//! The floor: length-prefixed echo over TCP with nothing else, on blocking std sockets and
//! on tokio.
//!
//! A frame is a 4-byte little-endian length and that many bytes; the server sends every
//! frame back as it came. Both servers read through a 64 KiB buffer and flush only when
//! no complete request is left in it, so pipelined requests are answered with one write.
//! For `add` the clients echo a 16-byte frame (the two `i64`s).

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::driver::{Phase, Step};
use crate::system::Payload;
use crate::Result;

const BUF: usize = 64 * 1024;

/// The request frame for `payload`.
pub(crate) fn frame(payload: &Payload) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + payload.blob.len());
    f.extend_from_slice(&(payload.blob.len() as u32).to_le_bytes());
    f.extend_from_slice(&payload.blob);
    f
}

fn check_len(got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("echo returned {got} bytes instead of {want}").into())
    }
}

/// Serve on blocking sockets, a thread per connection, forever.
pub(crate) fn serve_std(listener: TcpListener) -> Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                s.set_nodelay(true)?;
                std::thread::spawn(move || {
                    // A client that goes away mid-frame ends its connection, nothing more.
                    let _ = echo_std(s);
                });
            }
            Err(e) => eprintln!("raw-std accept: {e}"),
        }
    }
    Ok(())
}

fn echo_std(stream: TcpStream) -> io::Result<()> {
    let mut rd = BufReader::with_capacity(BUF, stream.try_clone()?);
    let mut wr = BufWriter::with_capacity(BUF, stream);
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 4];
        if let Err(e) = rd.read_exact(&mut head) {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        body.resize(u32::from_le_bytes(head) as usize, 0);
        rd.read_exact(&mut body)?;
        wr.write_all(&head)?;
        wr.write_all(&body)?;
        if rd.buffer().is_empty() {
            wr.flush()?;
        }
    }
}

/// Serve on tokio, a task per connection, forever.
pub(crate) async fn serve_tokio(listener: tokio::net::TcpListener) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                s.set_nodelay(true)?;
                tokio::spawn(async move {
                    let _ = echo_tokio(s).await;
                });
            }
            Err(e) => eprintln!("raw-tokio accept: {e}"),
        }
    }
}

/// The length of the frame at the start of `buf` (header included), once its header is in.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(4 + u32::from_le_bytes(head) as usize)
}

/// Echo every frame. Reads go into a `BytesMut`, not tokio's `BufReader`, which zeroes its
/// 64 KiB when a connection starts: some 40 µs a connection that the `accept` mode (10 000
/// new connections) would charge to the floor. Pages are touched as bytes arrive.
async fn echo_tokio(mut stream: tokio::net::TcpStream) -> io::Result<()> {
    use bytes::Buf;
    let (mut rd, wr) = stream.split();
    let mut wr = tokio::io::BufWriter::with_capacity(BUF, wr);
    let mut buf = bytes::BytesMut::new();
    loop {
        // Every complete frame read is answered, and flushed once none is left.
        while let Some(n) = frame_len(&buf).filter(|&n| n <= buf.len()) {
            wr.write_all(&buf[..n]).await?;
            buf.advance(n);
        }
        wr.flush().await?;
        // Room for the rest of a frame begun, or for a batch of small ones.
        let want = frame_len(&buf).map_or(BUF, |n| (n - buf.len()).max(BUF / 4));
        buf.reserve(want);
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// A sequential client on blocking sockets.
#[derive(Debug)]
pub(crate) struct StdConn {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
    req: Vec<u8>,
    body: Vec<u8>,
}

impl StdConn {
    pub(crate) fn connect(addr: SocketAddr, payload: &Payload) -> Result<StdConn> {
        let wr = TcpStream::connect(addr)?;
        wr.set_nodelay(true)?;
        Ok(StdConn {
            rd: BufReader::with_capacity(BUF, wr.try_clone()?),
            wr,
            req: frame(payload),
            body: Vec::new(),
        })
    }

    pub(crate) fn call(&mut self) -> Result<()> {
        self.wr.write_all(&self.req)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<()> {
        let mut head = [0u8; 4];
        self.rd.read_exact(&mut head)?;
        self.body.resize(u32::from_le_bytes(head) as usize, 0);
        self.rd.read_exact(&mut self.body)?;
        check_len(self.body.len() + 4, self.req.len())
    }

    /// Keep `in_flight` requests outstanding until `phase` says stop: after each batch of
    /// replies that arrived together, send as many requests in one write. At the stop,
    /// read the replies still due, so the connection can be used again.
    pub(crate) fn pipelined(
        &mut self,
        in_flight: usize,
        phase: &Phase,
        hist: &mut Histogram<u64>,
    ) -> Result<()> {
        let batch = self.req.repeat(in_flight);
        let len = self.req.len();
        let mut sent = VecDeque::with_capacity(in_flight);
        self.wr.write_all(&batch)?;
        sent.extend(std::iter::repeat_n(Instant::now(), in_flight));
        let mut owed = 0;
        while let Some(t) = sent.pop_front() {
            self.read_reply()?;
            match phase.step() {
                Step::Stop => continue,
                Step::Record => crate::driver::record(hist, t.elapsed()),
                Step::Warmup => {}
            }
            owed += 1;
            if self.rd.buffer().is_empty() {
                self.wr.write_all(&batch[..owed * len])?;
                sent.extend(std::iter::repeat_n(Instant::now(), owed));
                owed = 0;
            }
        }
        Ok(())
    }
}

/// A client on tokio.
#[derive(Debug)]
pub(crate) struct TokioConn {
    rd: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    req: Vec<u8>,
    body: Vec<u8>,
}

impl TokioConn {
    pub(crate) async fn connect(addr: SocketAddr, payload: &Payload) -> Result<TokioConn> {
        TokioConn::connect_with_buffer(addr, payload, BUF).await
    }

    /// As [`TokioConn::connect`], reading through a buffer of `buf` bytes.
    pub(crate) async fn connect_with_buffer(
        addr: SocketAddr,
        payload: &Payload,
        buf: usize,
    ) -> Result<TokioConn> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(TokioConn {
            rd: tokio::io::BufReader::with_capacity(buf, rd),
            wr,
            req: frame(payload),
            body: Vec::new(),
        })
    }

    async fn read_reply(&mut self) -> Result<()> {
        let mut head = [0u8; 4];
        self.rd.read_exact(&mut head).await?;
        self.body.resize(u32::from_le_bytes(head) as usize, 0);
        self.rd.read_exact(&mut self.body).await?;
        check_len(self.body.len() + 4, self.req.len())
    }

    pub(crate) async fn call(&mut self) -> Result<()> {
        self.wr.write_all(&self.req).await?;
        self.read_reply().await
    }

    /// As [`StdConn::pipelined`], on tokio.
    pub(crate) async fn pipelined(
        &mut self,
        in_flight: usize,
        phase: &Phase,
        hist: &mut Histogram<u64>,
    ) -> Result<()> {
        let batch = self.req.repeat(in_flight);
        let len = self.req.len();
        let mut sent = VecDeque::with_capacity(in_flight);
        self.wr.write_all(&batch).await?;
        sent.extend(std::iter::repeat_n(Instant::now(), in_flight));
        let mut owed = 0;
        while let Some(t) = sent.pop_front() {
            self.read_reply().await?;
            match phase.step() {
                Step::Stop => continue,
                Step::Record => crate::driver::record(hist, t.elapsed()),
                Step::Warmup => {}
            }
            owed += 1;
            if self.rd.buffer().is_empty() {
                self.wr.write_all(&batch[..owed * len]).await?;
                sent.extend(std::iter::repeat_n(Instant::now(), owed));
                owed = 0;
            }
        }
        Ok(())
    }
}
