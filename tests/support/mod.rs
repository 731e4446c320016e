//! Real servers for tests: `redis-server` (standalone and a 3-master
//! cluster) and `etcd`, each a child process on free loopback ports with a
//! temporary data dir, killed on drop. A missing binary or a server that
//! does not come up fails the test (never a silent skip). The crate's
//! examples run the same way, as child processes on free ports.
//! `TEST_CHILD_LOGS=<dir>` keeps every child's output there, a file per
//! start.
#![allow(dead_code, unused_imports)]

mod etcd;
mod example;
mod fault_proxy;
mod handlers;
mod harness;
mod lines;
pub mod load;
mod process;
mod proxy;
mod redis;
mod spans;

pub use etcd::EtcdServer;
pub use example::{Example, Reply, example_binary, get, send};
pub use fault_proxy::{Fault, FaultProxy};
pub use handlers::{counting, env_number};
pub use harness::*;
pub use lines::{Lines, capture_logs};
pub use process::{Process, free_port, require_binary};
pub use proxy::{LossyProxy, TcpProxy};
pub use redis::{RedisCluster, RedisServer};
pub use spans::{global_spans, record_spans_with, spans_in, traced};
