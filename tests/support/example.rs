//! The crate's examples as child processes: built once per test binary
//! with every feature, started on a free loopback port, and talked to over
//! HTTP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::process::{Process, free_port, on_free_ports};

/// The example `name`, built with every feature (cargo only needs to link
/// it: the library is already built), once per test binary.
///
/// The path is this build's own binary, `examples/<name>-<hash>`, not the
/// shared `examples/<name>` that a build in another checkout on the same
/// target directory overwrites: cargo hard-links the one to the other, so
/// it is the file with the same inode.
pub fn example_binary(name: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the {name} example failed");
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let examples = profile.join("examples");
    let shared = examples.join(name);
    let inode = std::fs::metadata(&shared).expect("the built example").ino();
    let prefix = format!("{name}-");
    let own = std::fs::read_dir(&examples)
        .expect("target/<profile>/examples")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            file.strip_prefix(&prefix)
                .is_some_and(|hash| !hash.contains('.'))
                && std::fs::metadata(path).is_ok_and(|m| m.ino() == inode)
        })
        .unwrap_or(shared);
    built.insert(name.to_owned(), own.clone());
    own
}

/// A running example: killed on drop.
pub struct Example {
    process: Process,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Example {
    /// Starts the example `name` with `BIND` on a free port and only `env`
    /// in its environment (and `PATH`), once it answers HTTP; on another
    /// port if it exits at once. Fails the test if it does not answer
    /// within 20 s.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let binary = example_binary(name);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        on_free_ports(&format!("the {name} example"), || {
            let port = free_port();
            let (binary, env) = (binary.clone(), env.clone());
            let mut process = Process::spawn("example", move || {
                let mut cmd = Command::new(&binary);
                cmd.env_clear()
                    .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
                    .env("BIND", format!("127.0.0.1:{port}"))
                    .envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            });
            let ready = process.ready_or_exited(Duration::from_secs(20), || answers_http(port));
            (ready && process.is_running()).then(|| Self {
                process,
                base: format!("http://127.0.0.1:{port}"),
            })
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// Whether an HTTP server answers on `port`: a line that no router sees
/// (hyper answers it with 400 itself, so no rate limit quota is spent).
///
/// A bare connect is not enough: a child that another test forks while
/// `free_port` holds its probe listener keeps a copy of that listener until
/// it execs, and the kernel completes a connect to it that nobody answers.
fn answers_http(port: u16) -> bool {
    let answer = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"x\r\n\r\n")?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head)?;
        Ok(&head == b"HTTP/")
    };
    answer().unwrap_or(false)
}

/// A response as a test reads it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The header `name` as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` over a new HTTP/1.1 connection; the whole body is read.
pub async fn send(req: Request<String>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client
        .request(req.map(|b| Full::new(Bytes::from(b))))
        .await
        .expect("send the request");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("read the body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    send(
        Request::get(url)
            .body(String::new())
            .expect("a GET request"),
    )
    .await
}
