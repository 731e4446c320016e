//! Conformance harnesses over the real-server fixtures.
#![cfg_attr(not(feature = "conformance"), allow(unused_imports))]

use std::time::Duration;

#[cfg(feature = "etcd")]
use super::EtcdServer;
#[cfg(feature = "redis")]
use super::{RedisCluster, RedisServer};

/// Per-call timeout for stores in tests: generous, so a loaded 2-core CI
/// machine does not turn a slow answer into a failure.
pub const TEST_TIMEOUT: Duration = Duration::from_millis(500);

#[cfg(all(feature = "redis", feature = "conformance"))]
mod redis_harness {
    use battlement::StoreError;
    use battlement::backends::{RedisConfig, RedisStore};
    use battlement::conformance::{FaultHarness, Harness};

    use super::*;

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
    }

    impl FaultHarness for RedisHarness {
        fn pause(&mut self) {
            self.server.pause();
        }
        fn resume(&mut self) {
            self.server.resume();
        }
        fn stop(&mut self) {
            self.server.stop();
        }
        async fn restart(&mut self) {
            self.server.restart();
        }
    }

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
    }

    impl FaultHarness for RedisClusterHarness {
        fn pause(&mut self) {
            self.cluster.pause();
        }
        fn resume(&mut self) {
            self.cluster.resume();
        }
        fn stop(&mut self) {
            self.cluster.stop();
        }
        async fn restart(&mut self) {
            self.cluster.restart();
        }
    }
}
#[cfg(all(feature = "redis", feature = "conformance"))]
pub use redis_harness::*;

#[cfg(all(feature = "etcd", feature = "conformance"))]
mod etcd_harness {
    use battlement::StoreError;
    use battlement::backends::{EtcdConfig, EtcdStore};
    use battlement::conformance::{FaultHarness, Harness};

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
                .with_timeout(TEST_TIMEOUT);
            EtcdStore::from_config(config).await
        }
    }

    impl FaultHarness for EtcdHarness {
        fn pause(&mut self) {
            self.server.pause();
        }
        fn resume(&mut self) {
            self.server.resume();
        }
        fn stop(&mut self) {
            self.server.stop();
        }
        async fn restart(&mut self) {
            self.server.restart();
        }
    }
}
#[cfg(all(feature = "etcd", feature = "conformance"))]
pub use etcd_harness::*;
