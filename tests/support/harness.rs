//! Conformance harnesses over the real-server fixtures.
#![cfg_attr(not(feature = "conformance"), allow(unused_imports))]

use std::time::Duration;

#[cfg(feature = "etcd")]
use super::EtcdServer;
#[cfg(feature = "redis")]
use super::{RedisCluster, RedisServer};

/// Forwards the fault controls of a harness to its server fixture.
#[cfg(feature = "conformance")]
macro_rules! fault_harness {
    ($harness:ty, $field:ident) => {
        impl FaultHarness for $harness {
            fn pause(&mut self) {
                self.$field.pause();
            }
            fn resume(&mut self) {
                self.$field.resume();
            }
            fn stop(&mut self) {
                self.$field.stop();
            }
            async fn restart(&mut self) {
                self.$field.restart();
            }
        }
    };
}

/// Per-call timeout for stores in tests: generous, so a loaded 2-core CI
/// machine does not turn a slow answer into a failure.
pub const TEST_TIMEOUT: Duration = Duration::from_millis(500);

/// etcd commits every write through Raft and its WAL: give it more.
pub const ETCD_TEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A store on `server` with [`ETCD_TEST_TIMEOUT`].
#[cfg(feature = "etcd")]
pub async fn etcd_store(server: &EtcdServer) -> battlement::backends::EtcdStore {
    let config =
        battlement::backends::EtcdConfig::new([server.endpoint()]).with_timeout(ETCD_TEST_TIMEOUT);
    battlement::backends::EtcdStore::from_config(config)
        .await
        .expect("an etcd store")
}

#[cfg(all(feature = "redis", feature = "conformance"))]
mod redis_harness {
    use battlement::StoreError;
    use battlement::backends::{Backend, RedisConfig, RedisStore};
    use battlement::clock::SharedClock;
    use battlement::conformance::{FaultHarness, Harness, StoredKey, unique_prefix};

    use super::*;

    /// Keys under the store's prefix on these nodes, with `PTTL`.
    fn scan(nodes: &[&RedisServer], store: &RedisStore) -> Vec<StoredKey> {
        let pattern = format!("{}:*", store.keyspace().prefix());
        let mut keys = Vec::new();
        for node in nodes {
            for key in node.cli(&["--scan", "--pattern", &pattern]).lines() {
                let pttl: i64 = node.cli(&["pttl", key]).trim().parse().expect("PTTL reply");
                let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
                keys.push(StoredKey {
                    key: key.to_owned(),
                    ttl,
                });
            }
        }
        keys
    }

    /// Scripts run on these nodes (`EVALSHA`, `EVAL`, `SCRIPT`), from
    /// `INFO commandstats`: every rate-limit store call is one.
    pub fn script_calls(nodes: &[&RedisServer]) -> u64 {
        nodes
            .iter()
            .map(|node| node.command_calls(&["evalsha", "eval", "script"]))
            .sum()
    }

    pub struct RedisHarness {
        pub server: RedisServer,
    }

    impl RedisHarness {
        pub fn start() -> Self {
            Self {
                server: RedisServer::start(),
            }
        }
    }

    impl Harness for RedisHarness {
        type Store = RedisStore;

        async fn store_with_prefix(&self, prefix: &str) -> Result<RedisStore, StoreError> {
            let config = RedisConfig::standalone(self.server.url())
                .prefix(prefix)
                .with_timeout(TEST_TIMEOUT);
            RedisStore::from_config(config).await
        }

        async fn store_with_clock(&self, clock: SharedClock) -> RedisStore {
            let store = self.store_with_prefix(&unique_prefix()).await;
            store.expect("redis store").with_clock(clock)
        }

        async fn stored_keys(&self, store: &RedisStore) -> Vec<StoredKey> {
            scan(&[&self.server], store)
        }

        async fn store_calls(&self) -> Option<u64> {
            Some(script_calls(&[&self.server]))
        }
    }

    fault_harness!(RedisHarness, server);

    pub struct RedisClusterHarness {
        pub cluster: RedisCluster,
    }

    impl RedisClusterHarness {
        pub fn start() -> Self {
            Self {
                cluster: RedisCluster::start(),
            }
        }
    }

    impl Harness for RedisClusterHarness {
        type Store = RedisStore;

        async fn store_with_prefix(&self, prefix: &str) -> Result<RedisStore, StoreError> {
            let config = RedisConfig::cluster(self.cluster.urls())
                .prefix(prefix)
                .with_timeout(TEST_TIMEOUT);
            RedisStore::from_config(config).await
        }

        async fn store_with_clock(&self, clock: SharedClock) -> RedisStore {
            let store = self.store_with_prefix(&unique_prefix()).await;
            store.expect("redis cluster store").with_clock(clock)
        }

        async fn stored_keys(&self, store: &RedisStore) -> Vec<StoredKey> {
            let nodes: Vec<&RedisServer> = self.cluster.nodes().iter().collect();
            scan(&nodes, store)
        }

        async fn store_calls(&self) -> Option<u64> {
            let nodes: Vec<&RedisServer> = self.cluster.nodes().iter().collect();
            Some(script_calls(&nodes))
        }
    }

    fault_harness!(RedisClusterHarness, cluster);
}
#[cfg(all(feature = "redis", feature = "conformance"))]
pub use redis_harness::*;

#[cfg(all(feature = "etcd", feature = "conformance"))]
mod etcd_harness {
    use battlement::StoreError;
    use battlement::backends::{Backend, EtcdConfig, EtcdStore};
    use battlement::clock::SharedClock;
    use battlement::conformance::{FaultHarness, Harness, StoredKey, unique_prefix};
    use etcd_client::{Client, GetOptions};

    use super::*;

    pub struct EtcdHarness {
        pub server: EtcdServer,
    }

    impl EtcdHarness {
        pub fn start() -> Self {
            Self {
                server: EtcdServer::start(),
            }
        }
    }

    impl Harness for EtcdHarness {
        type Store = EtcdStore;

        async fn store_with_prefix(&self, prefix: &str) -> Result<EtcdStore, StoreError> {
            let config = EtcdConfig::new([self.server.endpoint()])
                .prefix(prefix)
                .with_timeout(ETCD_TEST_TIMEOUT);
            EtcdStore::from_config(config).await
        }

        async fn store_with_clock(&self, clock: SharedClock) -> EtcdStore {
            let store = self.store_with_prefix(&unique_prefix()).await;
            store.expect("etcd store").with_clock(clock)
        }

        async fn store_calls(&self) -> Option<u64> {
            Some(self.server.kv_requests())
        }

        /// Keys under the store's prefix with their lease's remaining TTL.
        async fn stored_keys(&self, store: &EtcdStore) -> Vec<StoredKey> {
            let mut client = Client::connect([self.server.endpoint()], None)
                .await
                .expect("etcd client");
            let prefix = format!("{}:", store.keyspace().prefix());
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .expect("etcd get");
            let mut keys = Vec::new();
            for kv in resp.kvs() {
                let ttl = if kv.lease() == 0 {
                    None
                } else {
                    let live = client
                        .lease_time_to_live(kv.lease(), None)
                        .await
                        .expect("lease ttl");
                    u64::try_from(live.ttl()).ok().map(Duration::from_secs)
                };
                keys.push(StoredKey {
                    key: kv.key_str().expect("utf-8 key").to_owned(),
                    ttl,
                });
            }
            keys
        }
    }

    fault_harness!(EtcdHarness, server);
}
#[cfg(all(feature = "etcd", feature = "conformance"))]
pub use etcd_harness::*;
