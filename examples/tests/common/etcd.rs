//! A real etcd for the tests (Debian's `etcd-server`; `scripts/ensure-etcd.sh` installs
//! it), started on free loopback ports with a temporary data directory. It is killed when
//! its guard drops, and its data directory removed. Shared by examples/tests/etcd.rs and
//! rpc-cli/tests/etcd.rs.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `etcd` binary on PATH, installed by `scripts/ensure-etcd.sh` (once per test binary)
/// when absent, or a panic saying how to install it.
fn etcd_binary() -> PathBuf {
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    };
    static INSTALL: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Some(found) = find() {
        return found;
    }
    let installed = INSTALL.get_or_init(|| {
        let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-etcd.sh"));
        match Command::new("sh").arg(&script).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        }
    });
    find().unwrap_or_else(|| {
        panic!(
            "etcd is not installed, and these tests need a real one; scripts/ensure-etcd.sh \
             (as root it runs `apt-get install -y etcd-server`) did not install it: {installed:?}. \
             Put an etcd 3.4+ on PATH."
        )
    })
}

/// A port free now (bound, then released): etcd takes fixed ports.
fn free_port() -> u16 {
    // Unwrap: binding port 0 on loopback only fails when the machine is out of ports.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member on loopback, with a data directory of its own.
pub(crate) struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

impl Etcd {
    /// Start etcd and wait (at most 15 s) until it answers.
    pub(crate) fn start() -> Etcd {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("easyrpc-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.run();
        etcd
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn run(&mut self) {
        let (client, peer) = (
            format!("http://127.0.0.1:{}", self.client_port),
            format!("http://127.0.0.1:{}", self.peer_port),
        );
        let child = Command::new(etcd_binary())
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer on {} within 15 s",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// etcd's `/health` (HTTP on the client port) says it serves.
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Kill etcd (its data stays, for [`Etcd::restart`]).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// The instances registered under `service`: key → value.
    pub(crate) async fn instances(&self, service: &str) -> Vec<(String, String)> {
        let mut c = etcd_client::Client::connect([self.url()], None)
            .await
            .expect("connect to etcd");
        let prefix = format!("rpc/services/{service}/");
        let resp = c
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("read etcd");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_owned(),
                    kv.value_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
