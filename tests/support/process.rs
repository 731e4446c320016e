//! Child-process plumbing shared by the server fixtures.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1, taken below the
/// kernel's ephemeral range when there is room: an outgoing connection can
/// then never take it while a test has its server down for a restart.
/// Each call in a process gets the next port from a per-process start, so
/// test binaries running side by side rarely even probe the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if let Some(span) = ephemeral_low.checked_sub(LOW).filter(|span| *span >= 1_000) {
        let start = std::process::id().wrapping_mul(7_919);
        for _ in 0..span {
            let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = u16::try_from(LOW + offset).expect("below the ephemeral range");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Starts a server with `attempt` on fresh free ports, up to five times:
/// `attempt` gives `None` when the server exited before it was ready (a
/// port taken between `free_port` and its bind); then it fails the test.
pub fn on_free_ports<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    for _ in 0..5 {
        if let Some(server) = attempt() {
            return server;
        }
    }
    panic!("{what} exited at once on 5 sets of free ports in a row");
}

/// The path of `name` on PATH, or a test failure that says how to get it.
pub fn require_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH: run scripts/test.sh, which installs it{}",
                if std::env::var_os("CI").is_some() {
                    " (CI must have it)"
                } else {
                    ""
                }
            )
        })
}

/// A server process that can be killed, restarted, frozen and thawed.
pub struct Process {
    name: &'static str,
    command: Box<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(
        name: &'static str,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Self {
        let mut p = Self {
            name,
            command: Box::new(command),
            child: None,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let (stdout, stderr) = self.output();
        let child = (self.command)()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Where the child writes: nowhere, or with `TEST_CHILD_LOGS=<dir>`
    /// both streams to `<dir>/<name>-<pid of the test>-<n>.log`, a file
    /// per start.
    fn output(&self) -> (Stdio, Stdio) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let file = std::env::var_os("TEST_CHILD_LOGS").and_then(|dir| {
            let n = STARTS.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{}-{n}.log", self.name, std::process::id());
            std::fs::File::create(std::path::Path::new(&dir).join(name)).ok()
        });
        match file.and_then(|f| Some((f.try_clone().ok()?, f))) {
            Some((out, err)) => (Stdio::from(out), Stdio::from(err)),
            None => (Stdio::null(), Stdio::null()),
        }
    }

    /// Kills the process and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, signal: i32) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // SAFETY-free: libc::kill is a plain syscall wrapper; tests only.
        let rc = unsafe_free_kill(pid, signal);
        assert_eq!(rc, 0, "signal {signal} to {} failed", self.name);
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits up to `limit` for `ready` to hold; fails the test otherwise.
    pub fn wait_until(&mut self, limit: Duration, ready: impl FnMut() -> bool) {
        if !self.ready_or_exited(limit, ready) {
            panic!("{} exited before it was ready", self.name);
        }
    }

    /// Waits up to `limit` for `ready` to hold (true) or the process to
    /// exit (false); fails the test if neither happens in time.
    pub fn ready_or_exited(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if ready() {
                return true;
            }
            if !self.is_running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not ready after {limit:?}", self.name);
    }
}

fn unsafe_free_kill(pid: i32, signal: i32) -> i32 {
    // `kill(1)` keeps the crate's `unsafe_code = "forbid"` spirit in tests.
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    if status.success() { 0 } else { 1 }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
