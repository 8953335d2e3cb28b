//! Benchmarks of the framework: what the criterion micro-benchmarks and the `bench` binary
//! share.
//!
//! This crate is not published and no other crate depends on it: it is where the heavy
//! comparison dependencies (tonic, prost, tarpc, criterion, plotters, hdrhistogram) live.
//!
//! # Layout
//!
//! - `benches/codec.rs`: encode and decode of requests and responses (16 B, 1 KiB, 64 KiB,
//!   and a struct-heavy payload), both codecs.
//! - `benches/dispatch.rs`: the server's per-call work without I/O (frame, parse, decode
//!   the arguments, encode the reply), and one round trip through a real server.
//! - `src/bench/`: the `bench` binary: the load generator, the servers of every compared
//!   system (each run as its own process), and the report. See `benches/RESULTS.md`.
//!
//! Run with
//!
//! ```not_rust
//! cargo bench -p benches                                  # micro-benchmarks
//! cargo run --release -p benches --bin bench -- --out benches/results
//! cargo run --release -p benches --bin bench -- load --addr 127.0.0.1:25000 \
//!     --method add --args '[1, 2]' --concurrency 64 --duration 10
//! ```
#![doc(test(attr(deny(warnings, rust_2018_idioms), allow(dead_code, unused_variables))))]

use serde::{Deserialize, Serialize};

/// The echo payload sizes every system is measured with: 16 B, 1 KiB, 64 KiB, 1 MiB.
pub const ECHO_SIZES: [usize; 4] = [16, 1024, 64 * 1024, 1024 * 1024];

/// Records in one call of the struct-heavy payload.
pub const RECORDS_PER_CALL: usize = 64;

/// One element of the struct-heavy payload: nested structs, strings, a vector, an option.
///
/// With the msgpack codec structs travel as maps (field names included, so that peers in
/// other languages can read them); with bincode as bare fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// A key.
    pub id: u64,
    /// A short name.
    pub name: String,
    /// A measurement.
    pub score: f64,
    /// A flag.
    pub active: bool,
    /// A few labels.
    pub tags: Vec<String>,
    /// A nested struct.
    pub position: Point,
    /// An optional reference to another record.
    pub parent: Option<u64>,
}

/// A point in space, nested in [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// x.
    pub x: i32,
    /// y.
    pub y: i32,
    /// z.
    pub z: i32,
}

/// `n` deterministic records (about 90 bytes each in bincode, 150 in msgpack).
///
/// ```
/// let r = benches::records(3);
/// assert_eq!(r.len(), 3);
/// assert_eq!(r[2].id, 2);
/// ```
pub fn records(n: usize) -> Vec<Record> {
    (0..n as u64)
        .map(|i| Record {
            id: i,
            name: format!("record-{i:04}"),
            score: i as f64 * 1.5,
            active: i % 2 == 0,
            tags: vec!["alpha".into(), "beta".into(), format!("t{}", i % 7)],
            position: Point {
                x: i as i32,
                y: -(i as i32),
                z: (i * 3) as i32,
            },
            parent: i.checked_sub(1),
        })
        .collect()
}

/// A deterministic byte payload of `size` bytes.
///
/// ```
/// assert_eq!(benches::blob(1024).len(), 1024);
/// ```
pub fn blob(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

/// `size` bytes of English-like text (words from a small vocabulary, in an irregular
/// order): what zstd shrinks about fivefold (1 MiB to 198 KiB at level 3), as it would a
/// JSON or log payload.
///
/// ```
/// let t = benches::text(1000);
/// assert_eq!(t.len(), 1000);
/// assert!(t.starts_with(b"alpha "));
/// ```
pub fn text(size: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta ", "theta ", "iota ", "kappa ",
        "lambda ", "mu ", "nu ", "xi ", "omicron ", "pi ",
    ];
    let mut out = Vec::with_capacity(size + 16);
    // A xorshift over the vocabulary: no period short enough for zstd to take whole.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    out.extend_from_slice(WORDS[0].as_bytes());
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
    }
    out.truncate(size);
    out
}

/// A size as people write it: `16 B`, `1 KiB`, `64 KiB`, `1 MiB`.
///
/// ```
/// assert_eq!(benches::size_label(64 * 1024), "64 KiB");
/// ```
pub fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}
