//! The real-server fixtures themselves: they start, stop, restart and
//! freeze real processes (used by every backend and fault test). They run
//! with the server backends enabled (`--features redis,etcd`).
#![cfg(all(feature = "redis", feature = "etcd"))]

mod support;

use std::time::Duration;

use support::{EtcdServer, RedisCluster, RedisServer};

#[test]
fn redis_restarts_on_the_same_port_mid_run() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["set", "k", "v"]).trim(), "OK");
    let port = redis.port();
    redis.stop();
    assert!(
        redis.cli(&["ping"]).trim().is_empty(),
        "stopped server answered"
    );
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["ping"]).trim(), "PONG");
    // --save '' --appendonly no: nothing survives a restart.
    assert_eq!(redis.cli(&["exists", "k"]).trim(), "0");
}

#[test]
fn paused_redis_accepts_but_does_not_answer() {
    let redis = RedisServer::start();
    redis.pause();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(
        std::io::Read::read(&mut stream, &mut buf).is_err(),
        "frozen server replied"
    );
    redis.resume();
    assert_eq!(redis.cli(&["ping"]).trim(), "PONG");
}

#[test]
fn cluster_has_three_masters_covering_every_slot() {
    let cluster = RedisCluster::start();
    let info = cluster.nodes()[0].cli(&["cluster", "info"]);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");
    assert_eq!(cluster.urls().len(), 3);
}

#[test]
fn etcd_restarts_on_the_same_endpoint() {
    let mut etcd = EtcdServer::start();
    let endpoint = etcd.endpoint();
    etcd.stop();
    assert!(std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).is_err());
    etcd.restart();
    assert_eq!(etcd.endpoint(), endpoint);
    assert!(std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).is_ok());
}
