//! The example server binary, run as a (registered) instance, with its log kept. Killed
//! when its guard drops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bins::example;
use crate::etcd::Etcd;

/// The example server, registered in etcd (or not), with its log kept.
pub(crate) struct Server {
    child: Child,
    /// The address it listens on.
    pub(crate) addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Start the example server on port 0 with `args` and wait (at most 30 s) until it
    /// listens (when registered in etcd, it registers before it listens).
    pub(crate) fn start(args: &[&str]) -> Server {
        let mut child = Command::new(example("server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "easyrpc_server=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server example");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed its address");
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(addr) => addr.to_owned(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("unexpected first line {line:?}; log: {:?}", log.lock().unwrap())
            }
        };
        Server { child, addr, log }
    }

    /// Start it registered as an instance of `service` in `etcd` with lease `ttl` seconds.
    pub(crate) fn registered(etcd: &Etcd, service: &str, ttl: u64) -> Server {
        Server::start(&[
            "--etcd",
            &etcd.url(),
            "--service",
            service,
            "--lease-ttl",
            &ttl.to_string(),
        ])
    }

    /// kill -9.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send TERM.
    pub(crate) fn term(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Wait (at most `limit`) for the process to end; whether it did.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The index of the first log line containing `needle`.
    pub(crate) fn log_line(&self, needle: &str) -> Option<usize> {
        self.log.lock().unwrap().iter().position(|l| l.contains(needle))
    }

    /// Its log so far, for a failure message.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
