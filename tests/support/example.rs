//! The axum example as a child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{Process, free_port};

/// The axum example, built with every feature (cargo only needs to link
/// it when the library is already built).
pub fn axum_example_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", "axum"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the axum example failed");
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    profile.join("examples").join("axum")
}

/// The axum example at `binary` with `env` (and no Redis, etcd or OTLP
/// from the caller's environment), once `/livez` answers: its process and
/// base URL.
pub async fn start_axum_example(binary: &Path, env: &[(&str, &str)]) -> (Process, String) {
    let port = free_port();
    let binary = binary.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let app = Process::spawn("axum example", move || {
        let mut cmd = Command::new(&binary);
        cmd.env("BIND", format!("127.0.0.1:{port}"))
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("ETCD_ENDPOINTS")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("RATE_LIMIT_MODE")
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    });
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while get_status(&base, "/livez").await != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the example never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (app, base)
}

/// The status of `GET path` on `base` (`http://host:port`), over a
/// connection of its own; `None` if nothing answers.
pub async fn get_status(base: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://")?;
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    // "HTTP/1.x NNN"
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
