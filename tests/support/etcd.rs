//! A single-member `etcd` fixture.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{Process, free_port, on_free_ports, require_binary};

/// One etcd member with a temporary data dir on free loopback ports.
pub struct EtcdServer {
    client_port: u16,
    process: Process,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts a member, again on other ports if it exits at once (a port
    /// taken between `free_port` and etcd's bind), a few times.
    pub fn start() -> Self {
        let binary = require_binary("etcd");
        on_free_ports("etcd", || {
            // tmpfs when there is one: etcd fsyncs every write, and a loaded
            // CI disk can stall an fsync past any sane per-call timeout.
            let dir = tempfile::Builder::new()
                .prefix("battlement-etcd")
                .tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("temp dir");
            let client_port = free_port();
            let peer_port = free_port();
            let data = dir.path().join("data");
            let binary = binary.clone();
            let process = Process::spawn("etcd", move || {
                let client = format!("http://127.0.0.1:{client_port}");
                let peer = format!("http://127.0.0.1:{peer_port}");
                let mut cmd = Command::new(&binary);
                cmd.args(["--name", "test"])
                    .arg("--data-dir")
                    .arg(&data)
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
                    .args(["--initial-cluster", &format!("test={peer}")])
                    .args(["--logger", "zap", "--log-level", "error"]);
                cmd
            });
            let mut server = Self {
                client_port,
                process,
                _dir: dir,
            };
            let ready = server
                .process
                .ready_or_exited(READY_WITHIN, healthy(client_port));
            ready.then_some(server)
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn wait_ready(&mut self) {
        self.process
            .wait_until(READY_WITHIN, healthy(self.client_port));
    }

    /// KV requests (`Range`, `Txn`, `Put`, `DeleteRange`) served so far,
    /// from the member's `/metrics`.
    pub fn kv_requests(&self) -> u64 {
        let metrics = http_get(self.client_port, "/metrics").unwrap_or_default();
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("grpc_server_started_total{")
                    && line.contains("grpc_service=\"etcdserverpb.KV\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum()
    }

    pub fn pause(&self) {
        self.process.pause();
    }

    pub fn resume(&self) {
        self.process.resume();
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts again with the same ports and data.
    pub fn restart(&mut self) {
        self.process.stop();
        self.process.start();
        self.wait_ready();
    }
}

/// How long a member may take to report itself healthy.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Whether the member on `port` reports itself healthy.
fn healthy(port: u16) -> impl FnMut() -> bool {
    move || http_get(port, "/health").is_some_and(|r| r.contains("\"health\":\"true\""))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}
