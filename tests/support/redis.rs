//! `redis-server` fixtures: standalone and a 3-master cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{Process, free_port, on_free_ports, require_binary};

/// One `redis-server --save '' --appendonly no` on a free loopback port.
pub struct RedisServer {
    port: u16,
    process: Process,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts on a free port. Another test may take the port between
    /// `free_port` and the server's bind, and a cluster node also needs
    /// port + 10000 (at most 65535) for its bus: a server that exits at
    /// once is started again on another port, a few times.
    fn start_with(extra: &[&str]) -> Self {
        let binary = require_binary("redis-server");
        let cluster = extra.contains(&"--cluster-enabled");
        on_free_ports("redis-server", || {
            let port = loop {
                let port = free_port();
                if !cluster || port <= 55535 {
                    break port;
                }
            };
            let dir = tempfile::tempdir().expect("temp dir");
            let dir_path = dir.path().to_owned();
            let (binary, extra) = (
                binary.clone(),
                extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            let process = Process::spawn("redis-server", move || {
                let mut cmd = Command::new(&binary);
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .args(["--loglevel", "warning"])
                    .arg("--dir")
                    .arg(&dir_path)
                    .args(&extra);
                cmd
            });
            let mut server = Self {
                port,
                process,
                _dir: dir,
            };
            let ready = server.process.ready_or_exited(Duration::from_secs(10), || {
                ping(port).is_some_and(|r| r.starts_with("+PONG"))
            });
            ready.then_some(server)
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) {
        let port = self.port;
        self.process.wait_until(Duration::from_secs(10), || {
            ping(port).is_some_and(|r| r.starts_with("+PONG"))
        });
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

    /// Starts again on the same port and data dir.
    pub fn restart(&mut self) {
        self.process.stop();
        self.process.start();
        self.wait_ready();
    }

    /// Calls of `commands` served so far, from `INFO commandstats`.
    pub fn command_calls(&self, commands: &[&str]) -> u64 {
        self.cli(&["info", "commandstats"])
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                commands.contains(&name).then_some(())?;
                let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
                calls.parse::<u64>().ok()
            })
            .sum()
    }

    /// Runs `redis-cli -p PORT args...` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require_binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Sends a RESP `PING`, returns the first reply line.
fn ping(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Three masters, slots split evenly, `cluster_state:ok` before use.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(&cluster_args))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(require_binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&mut self) {
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].port;
            let node = &self.nodes[i];
            let check = || node.cli(&["cluster", "info"]).contains("cluster_state:ok");
            let started = std::time::Instant::now();
            while !check() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "cluster node {port} not ok after 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn pause(&self) {
        self.nodes.iter().for_each(RedisServer::pause);
    }

    pub fn resume(&self) {
        self.nodes.iter().for_each(RedisServer::resume);
    }

    pub fn stop(&mut self) {
        self.nodes.iter_mut().for_each(RedisServer::stop);
    }

    /// Restarts every node (they keep their `nodes.conf`) and waits for
    /// the cluster to be ok again.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.process.stop();
            node.process.start();
        }
        for node in &mut self.nodes {
            node.wait_ready();
        }
        self.wait_ok();
    }
}
