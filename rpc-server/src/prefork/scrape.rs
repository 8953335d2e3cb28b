//! The metrics endpoint under prefork: one endpoint for the whole server, served by the
//! supervisor.
//!
//! Why the supervisor, not a worker: it is the one process that lives as long as the
//! server. A worker that serves the endpoint can die, be rolled by HUP or removed by TTOU,
//! and the endpoint would go with it (or move to a socket another worker must bind). The
//! supervisor still holds no request logic: it relays.
//!
//! Each worker records its own calls in its own recorder (no shared memory on the
//! per-call path: the atomics stay in the worker's cache). Before each fork the supervisor
//! makes a socket pair for that worker; the worker answers on its end with its metrics in
//! the text format. On a scrape, the supervisor (which never runs a runtime or a thread)
//! accepts on its own non-blocking socket, woken by the same `poll` as its signals, asks
//! every worker, and writes one text: each family's HELP and TYPE once, then every
//! worker's samples, each labelled `worker="i"` (the worker's index).
//!
//! Why a `worker` label rather than sums: a worker that dies and is restarted starts its
//! counters again from zero. With a label, that is a counter reset of its own series,
//! which Prometheus's `rate()` and `increase()` handle exactly; a sum would go down by the
//! dead worker's counts, which they would read as a reset of the whole sum. Sum in the
//! query instead: `sum without (worker) (rate(rpc_calls_total[1m]))`.
//!
//! One worker per index is asked (during a rolling restart, the one of the current
//! generation once it listens): the series of an index carry on across restarts, with a
//! reset. A worker that does not answer within [`ASK`] is left out of that scrape; its late
//! answer is recognised by its sequence number and dropped at the next one.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{head_complete, response, Metrics, MAX_HEAD};

/// How long the supervisor waits for each worker's answer, and for each read and write
/// of the scraper's connection.
pub(super) const ASK: Duration = Duration::from_secs(1);
/// The largest answer a worker may give.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Answer the supervisor's requests on `stream`, in a worker, until it closes: each
/// request is a sequence number (u32 LE); each answer the same number, the length of the
/// text (u32 LE) and the text.
pub(super) async fn answer_supervisor(stream: UnixStream, metrics: Arc<Metrics>) {
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream));
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer the supervisor's metrics requests");
            return;
        }
    };
    let mut seq = [0u8; 4];
    while stream.read_exact(&mut seq).await.is_ok() {
        let text = metrics.render();
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes();
        let mut out = Vec::with_capacity(8 + text.len());
        out.extend_from_slice(&seq);
        out.extend_from_slice(&len);
        out.extend_from_slice(text.as_bytes());
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Ask a worker for its metrics over `stream` (the supervisor's end), within [`ASK`].
pub(super) fn ask(stream: &UnixStream, seq: u32) -> io::Result<String> {
    let deadline = Instant::now() + ASK;
    let mut stream = stream;
    stream.set_write_timeout(Some(ASK))?;
    stream.write_all(&seq.to_le_bytes())?;
    loop {
        let mut head = [0u8; 8];
        read_exact_by(stream, &mut head, deadline)?;
        let got = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > MAX_ANSWER {
            return Err(io::Error::other("a worker's metrics are too large"));
        }
        let mut text = vec![0u8; len];
        read_exact_by(stream, &mut text, deadline)?;
        // An older answer, late for its own scrape: dropped.
        if got == seq {
            return String::from_utf8(text).map_err(io::Error::other);
        }
    }
}

fn read_exact_by(mut stream: &UnixStream, mut buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Answer one scraper's HTTP request on `stream`, blocking, with [`ASK`] for each read
/// and write; `render` makes the body of `GET /metrics`.
pub(super) fn answer_http(
    mut stream: std::net::TcpStream,
    render: impl FnOnce() -> String,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(ASK))?;
    stream.set_write_timeout(Some(ASK))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head_complete(&head) {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    stream.write_all(&response(&head, render))?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// One family of the merged text: its HELP and TYPE lines, then its samples.
#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merge the workers' texts (worker index, text) into one: each family once, with its
/// HELP and TYPE lines, then the samples of every worker, each with a `worker` label.
pub(super) fn merge(texts: &[(usize, String)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (worker, text) in texts {
        let mut current: Option<String> = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let comment = line
                .strip_prefix("# HELP ")
                .map(|r| (true, r))
                .or_else(|| line.strip_prefix("# TYPE ").map(|r| (false, r)));
            if let Some((help, rest)) = comment {
                let name = family(rest.split(' ').next().unwrap_or(rest), &mut order);
                let f = families.entry(name.clone()).or_default();
                let slot = if help { &mut f.help } else { &mut f.kind };
                slot.get_or_insert_with(|| line.to_string());
                current = Some(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            // The metric name ends at its labels or at the space before the value.
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(end);
            // A histogram's `_bucket`, `_sum` and `_count` belong to the family above.
            let owner = match &current {
                Some(c) if name.starts_with(c.as_str()) => c.clone(),
                _ => family(name, &mut order),
            };
            let sample = match rest.strip_prefix('{') {
                Some(labels) => format!("{name}{{worker=\"{worker}\",{labels}"),
                None => format!("{name}{{worker=\"{worker}\"}}{rest}"),
            };
            families.entry(owner).or_default().samples.push(sample);
        }
    }
    let mut out = String::new();
    for name in order {
        let Some(f) = families.remove(&name) else { continue };
        for line in f.help.iter().chain(&f.kind).chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// `name`, added to the families in `order` if it is new.
fn family(name: &str, order: &mut Vec<String>) -> String {
    if !order.iter().any(|n| n == name) {
        order.push(name.to_string());
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_and_samples_get_their_worker() {
        let a = "# HELP rpc_calls_total Calls.\n# TYPE rpc_calls_total counter\nrpc_calls_total{method=\"add\",code=\"ok\"} 3\n\n\
                 # TYPE rpc_call_duration_seconds histogram\nrpc_call_duration_seconds_bucket{method=\"add\",le=\"+Inf\"} 3\nrpc_call_duration_seconds_sum{method=\"add\"} 0.1\nrpc_call_duration_seconds_count{method=\"add\"} 3\n\n\
                 # TYPE rpc_dedup_hits_total counter\nrpc_dedup_hits_total 0\n";
        let b = "# HELP rpc_calls_total Calls.\n# TYPE rpc_calls_total counter\nrpc_calls_total{method=\"add\",code=\"ok\"} 4\n\n\
                 # TYPE rpc_dedup_hits_total counter\nrpc_dedup_hits_total 2\n";
        let merged = merge(&[(0, a.to_string()), (1, b.to_string())]);
        assert_eq!(
            merged,
            "# HELP rpc_calls_total Calls.\n# TYPE rpc_calls_total counter\n\
             rpc_calls_total{worker=\"0\",method=\"add\",code=\"ok\"} 3\n\
             rpc_calls_total{worker=\"1\",method=\"add\",code=\"ok\"} 4\n\n\
             # TYPE rpc_call_duration_seconds histogram\n\
             rpc_call_duration_seconds_bucket{worker=\"0\",method=\"add\",le=\"+Inf\"} 3\n\
             rpc_call_duration_seconds_sum{worker=\"0\",method=\"add\"} 0.1\n\
             rpc_call_duration_seconds_count{worker=\"0\",method=\"add\"} 3\n\n\
             # TYPE rpc_dedup_hits_total counter\n\
             rpc_dedup_hits_total{worker=\"0\"} 0\n\
             rpc_dedup_hits_total{worker=\"1\"} 2\n\n"
        );
    }

    #[test]
    fn a_worker_answers_its_supervisor_by_sequence_number() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let metrics = Arc::new(Metrics::new([(0, "add")].into_iter(), None));
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(answer_supervisor(theirs, metrics));
        });
        for seq in 1..=2 {
            let text = ask(&ours, seq).unwrap();
            assert!(text.contains("rpc_dedup_hits_total 0"), "{text}");
        }
        drop(ours);
        worker.join().unwrap();
    }
}
