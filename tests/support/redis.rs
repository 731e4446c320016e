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

/// Three masters, slots split evenly, `cluster_state:ok` before use;
/// with [`start_with_replicas`](Self::start_with_replicas), a replica of
/// each.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_nodes(3, 0, "2000")
    }

    /// Three masters and three replicas, one of each master, in sync
    /// before use. A master unreachable for 1 s is failed over to its
    /// replica.
    pub fn start_with_replicas() -> Self {
        let mut cluster = Self::start_nodes(6, 1, "1000");
        for i in 0..cluster.nodes.len() {
            let node = &cluster.nodes[i];
            if node.cli(&["role"]).starts_with("slave") {
                let started = std::time::Instant::now();
                while !node
                    .cli(&["info", "replication"])
                    .contains("master_link_status:up")
                {
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "replica not in sync"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        cluster.wait_ok();
        cluster
    }

    fn start_nodes(count: usize, replicas: usize, node_timeout: &str) -> Self {
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            node_timeout,
        ];
        let nodes: Vec<RedisServer> = (0..count)
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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

    /// The node serving `key` as master now and its replica, as the
    /// running node `asked` sees them (`CLUSTER NODES`).
    pub fn master_and_replica_of(&self, key: &str, asked: usize) -> (usize, Option<usize>) {
        let node = &self.nodes[asked];
        let slot: u16 = node
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT reply");
        let table = node.cli(&["cluster", "nodes"]);
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split(' ').collect()).collect();
        let index_of = |row: &[&str]| {
            let port = row[1].split(['@', ':']).nth(1).unwrap_or("");
            self.nodes
                .iter()
                .position(|n| n.port.to_string() == port)
                .expect("a node of this cluster")
        };
        let serves = |row: &&Vec<&str>| {
            row[2].contains("master")
                && !row[2].contains("fail")
                && row[8..].iter().any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                })
        };
        let master = rows
            .iter()
            .find(serves)
            .expect("a master serves every slot");
        let replica = rows
            .iter()
            .find(|row| row[2].contains("slave") && row[3] == master[0]);
        (index_of(master), replica.map(|r| index_of(r)))
    }

    /// The replica of the master `master` (asked of `master`).
    pub fn replica_of(&self, master: usize) -> usize {
        let node = &self.nodes[master];
        let id = node.cli(&["cluster", "myid"]).trim().to_owned();
        let table = node.cli(&["cluster", "nodes"]);
        let port = table
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|row| row.len() > 3 && row[2].contains("slave") && row[3] == id)
            .and_then(|row| row[1].split(['@', ':']).nth(1).map(str::to_owned))
            .expect("a replica of this master");
        self.nodes
            .iter()
            .position(|n| n.port.to_string() == port)
            .expect("a node of this cluster")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
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
