//! Issue 17: the listener's backlog. std's `TcpListener::bind` listens with a backlog of
//! 128; a burst of 2 000 connects (a reconnect storm after a restart) left 1 371 of them
//! waiting 1–2 s for a SYN retransmission. `Builder::run` now listens with
//! `Config::backlog` (default 1024), as `Builder::serve` and prefork's workers do.
//!
//! Deterministic: the connects happen in `run_with`'s callback, before the server's
//! runtime exists, so nothing is accepted while they queue. With a backlog of 128 the
//! kernel drops the SYN of connect 130 (the queue is full) and that connect times out;
//! with 1024, every one completes at once. No timing is measured: the bound on each
//! connect only turns a hang into a failure.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use easyrpc_proto::{encode_request, reserved, Codec};
use easyrpc_server::{Method, Server};

/// More than std's 128, less than the default 1024 (and `net.core.somaxconn`, 4096 on
/// current kernels).
const BURST: usize = 600;
/// The bound on each wait.
const WAIT: Duration = Duration::from_secs(5);

/// Once `rpc.ping` is answered on a new connection, the accept loop runs, and so does
/// the server's TERM handler (polled before the first accept): TERM then stops it.
fn stop_once_serving(addr: SocketAddr) {
    let mut conn = TcpStream::connect_timeout(&addr, WAIT).expect("connect to stop the server");
    conn.set_read_timeout(Some(WAIT * 4)).unwrap();
    let mut ping = Vec::new();
    encode_request(Codec::Msgpack, &mut ping, 1, reserved::PING, &(), None).unwrap();
    conn.write_all(&ping).unwrap();
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply).expect("the rpc.ping reply");
    // [1, 1, nil, nil]
    assert_eq!(reply, [0x94, 0x01, 0x01, 0xc0, 0xc0]);
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[test]
fn issue17_a_burst_of_connects_queues_in_the_backlog_of_builder_run() {
    let mut queued = Vec::new();
    let mut stopper = None;
    Server::builder()
        .register(Method::sync_fn("add", |(a, b): (i64, i64)| a + b))
        .run_with("127.0.0.1:0", |addr| {
            // The socket listens; no runtime accepts yet.
            for i in 0..BURST {
                match TcpStream::connect_timeout(&addr, WAIT) {
                    Ok(conn) => queued.push(conn),
                    Err(e) => {
                        panic!("connect {i} of {BURST} did not complete ({e}): the backlog is too small")
                    }
                }
            }
            stopper = Some(std::thread::spawn(move || stop_once_serving(addr)));
        })
        .expect("the server runs and stops on TERM");
    stopper.expect("the callback ran").join().expect("the stopper");
    assert_eq!(queued.len(), BURST);
}
