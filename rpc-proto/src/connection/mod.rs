//! Connection state machines: what a connection's bytes mean, on each side, with no I/O.
//!
//! In the style of quinn-proto: bytes and the time go in, events, bytes to write and the
//! next timer come out. The server's connection task and both clients are loops that move
//! bytes between a transport and these.

pub(crate) mod client;
pub(crate) mod server;
