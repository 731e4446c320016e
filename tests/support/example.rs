//! The crate's examples as child processes: built once per test binary
//! with every feature, started on a free loopback port, and talked to over
//! HTTP.

use std::collections::HashSet;
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

use super::process::{Process, free_port};

/// The example `name`, built with every feature (cargo only needs to link
/// it: the library is already built), once per test binary.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashSet::new);
    if !built.contains(name) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--all-features", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the {name} example failed");
        built.insert(name.to_owned());
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile.join("examples").join(name)
}

/// A running example: killed on drop.
pub struct Example {
    process: Process,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Example {
    /// Starts the example `name` with `BIND` on a free port and only `env`
    /// in its environment (and `PATH`), once it accepts connections; fails
    /// the test if it exits first or does not listen within 20 s.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let binary = example_binary(name);
        let port = free_port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut process = Process::spawn("example", move || {
            let mut cmd = Command::new(&binary);
            cmd.env_clear()
                .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
                .env("BIND", format!("127.0.0.1:{port}"))
                .envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        });
        process.wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            process,
            base: format!("http://127.0.0.1:{port}"),
        }
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
