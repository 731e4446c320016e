//! The backend conformance suite on every backend.
#![cfg(feature = "conformance")]

mod support;

mod memory {
    battlement::backend_suite!(battlement::conformance::MemoryHarness);
    mod rate_limit {
        battlement::rate_limit_suite!(battlement::conformance::MemoryHarness);
    }
    mod rate_limit_leased {
        battlement::rate_limit_leased_suite!(battlement::conformance::MemoryHarness);
    }
    mod circuit_breaker {
        battlement::circuit_breaker_suite!(battlement::conformance::MemoryHarness);
    }
    mod idempotency {
        battlement::idempotency_suite!(battlement::conformance::MemoryHarness);
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::support::RedisHarness;
    battlement::backend_suite!(RedisHarness::start());
    battlement::backend_fault_suite!(RedisHarness::start());
    mod rate_limit {
        use super::RedisHarness;
        battlement::rate_limit_suite!(RedisHarness::start());
    }
    mod rate_limit_leased {
        use super::RedisHarness;
        battlement::rate_limit_leased_suite!(RedisHarness::start());
    }
    mod circuit_breaker {
        use super::RedisHarness;
        battlement::circuit_breaker_suite!(RedisHarness::start());
    }
    mod idempotency {
        use super::RedisHarness;
        battlement::idempotency_suite!(RedisHarness::start());
    }
}

#[cfg(feature = "redis")]
mod redis_cluster {
    use super::support::RedisClusterHarness;
    battlement::backend_suite!(RedisClusterHarness::start());
    battlement::backend_fault_suite!(RedisClusterHarness::start());
    mod rate_limit {
        use super::RedisClusterHarness;
        battlement::rate_limit_suite!(RedisClusterHarness::start());
    }
    mod rate_limit_leased {
        use super::RedisClusterHarness;
        battlement::rate_limit_leased_suite!(RedisClusterHarness::start());
    }
    mod circuit_breaker {
        use super::RedisClusterHarness;
        battlement::circuit_breaker_suite!(RedisClusterHarness::start());
    }
    mod idempotency {
        use super::RedisClusterHarness;
        battlement::idempotency_suite!(RedisClusterHarness::start());
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::support::EtcdHarness;
    battlement::backend_suite!(EtcdHarness::start());
    battlement::backend_fault_suite!(EtcdHarness::start());
    mod rate_limit {
        use super::EtcdHarness;
        battlement::rate_limit_suite!(EtcdHarness::start());
    }
    mod rate_limit_leased {
        use super::EtcdHarness;
        battlement::rate_limit_leased_suite!(EtcdHarness::start());
    }
    mod circuit_breaker {
        use super::EtcdHarness;
        battlement::circuit_breaker_suite!(EtcdHarness::start());
    }
    mod idempotency {
        use super::EtcdHarness;
        battlement::idempotency_suite!(EtcdHarness::start());
    }
}
