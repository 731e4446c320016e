//! Every event the layers report, typed: a layer names its events
//! through its enum, so a misspelled name does not compile. The strings
//! are the `layer` and `event` labels of `battlement.events` and what
//! [`Event::layer`](super::Event::layer) and
//! [`Event::event`](super::Event::event) return.

/// An event's layer and name, as `battlement.events` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Name {
    pub(crate) layer: &'static str,
    pub(crate) event: &'static str,
}

/// Declares one enum a layer, its variants the layer's events.
macro_rules! event_names {
    ($(
        $(#[$doc:meta])*
        $kind:ident = $layer:literal {
            $( $(#[$variant_meta:meta])* $variant:ident = $event:literal, )+
        }
    )+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $kind {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $kind {
            #[cfg(test)]
            const ALL: &[Self] = &[$(Self::$variant),+];

            /// The event's label.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $event, )+
                }
            }
        }

        impl From<$kind> for Name {
            fn from(event: $kind) -> Self {
                Name {
                    layer: $layer,
                    event: event.as_str(),
                }
            }
        }
    )+

        #[cfg(test)]
        fn all() -> Vec<Name> {
            let mut all = Vec::new();
            $( all.extend($kind::ALL.iter().map(|&e| Name::from(e))); )+
            all
        }
    };
}

event_names! {
    /// The rate limiter's decisions and store failures.
    RateLimitEvent = "rate_limit" {
        Allowed = "allowed",
        Denied = "denied",
        ShadowDenied = "shadow_denied",
        ShadowBadKey = "shadow_bad_key",
        StoreFailure = "store_failure",
        FailOpen = "fail_open",
        FailClosed = "fail_closed",
        LocalFallback = "local_fallback",
        /// The in-memory store had no room for a new key.
        Overflow = "overflow",
    }

    /// What the retry layer did after an attempt.
    RetryEvent = "retry" {
        Retry = "retry",
        /// A keyed request in flight on the server (409): asked again
        /// after its `Retry-After`, for the stored response.
        InFlight = "in_flight",
        Exhausted = "exhausted",
        GaveUp = "gave_up",
        BudgetExhausted = "budget_exhausted",
    }

    /// Hedges sent, won, or held back.
    HedgeEvent = "hedge" {
        Hedged = "hedged",
        HedgeWon = "hedge_won",
        MaxFraction = "max_fraction",
        BudgetExhausted = "budget_exhausted",
    }

    /// A breaker's calls, rejections and transitions.
    CircuitBreakerEvent = "circuit_breaker" {
        Success = "success",
        Failure = "failure",
        Ignored = "ignored",
        Rejected = "rejected",
        Transition = "transition",
        StoreError = "store_error",
    }

    /// Requests shed, and the adaptive limit's changes.
    ConcurrencyLimitEvent = "concurrency_limit" {
        ShedCritical = "shed_critical",
        ShedNormal = "shed_normal",
        ShedBatch = "shed_batch",
        MinRttMeasured = "min_rtt_measured",
        MinRttProbe = "min_rtt_probe",
        LimitIncreased = "limit_increased",
        LimitDecreased = "limit_decreased",
    }

    /// Deadlines that ran out or could not be read.
    DeadlineEvent = "deadline" {
        TimedOut = "timed_out",
        MalformedGrpcTimeout = "malformed_grpc_timeout",
    }

    /// How the idempotency layer handled a keyed request, and its store.
    IdempotencyEvent = "idempotency" {
        Executed = "executed",
        Replayed = "replayed",
        Conflict = "conflict",
        Mismatch = "mismatch",
        NotKept = "not_kept",
        LockLost = "lock_lost",
        /// A handler ran past the execution bound: cancelled, key released.
        Abandoned = "abandoned",
        /// A response said the request was turned away: key released.
        Released = "released",
        ScopeUnknown = "scope_unknown",
        StoreError = "store_error",
        /// The in-memory store evicted a record to make room.
        Evicted = "evicted",
        StoreFull = "store_full",
    }

    /// Config documents applied, and the watch on their source.
    ConfigEvent = "config" {
        Applied = "applied",
        Rejected = "rejected",
        Reverted = "reverted",
        #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
        Loaded = "loaded",
        #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
        Resumed = "resumed",
        #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
        Compacted = "compacted",
        #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
        ClusterChanged = "cluster_changed",
        #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
        WatchError = "watch_error",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_snake_case_labels() {
        let all = all();
        let unique: HashSet<_> = all.iter().map(|n| (n.layer, n.event)).collect();
        assert_eq!(unique.len(), all.len(), "a name is declared twice");
        for name in &all {
            for label in [name.layer, name.event] {
                assert!(
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{label:?}"
                );
            }
        }
        assert_eq!(
            Name::from(RateLimitEvent::Denied),
            Name {
                layer: "rate_limit",
                event: "denied"
            }
        );
    }

    // The metric reference lists every event of every layer, and no other.
    #[test]
    fn the_metric_reference_lists_every_event() {
        let doc = include_str!("../../docs/metrics.md");
        let events = doc.split("## Events").nth(1).unwrap_or_default();
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut documented = HashSet::new();
        for row in events.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').collect();
            let layer = ticked(cells[1]).pop().unwrap_or_default();
            for event in ticked(cells[2]) {
                documented.insert((layer.clone(), event));
            }
        }
        let code: HashSet<(String, String)> = all()
            .iter()
            .map(|n| (n.layer.to_owned(), n.event.to_owned()))
            .collect();
        let missing: Vec<_> = code.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "not in docs/metrics.md: {missing:?}; not in the code: {stale:?}"
        );
    }
}
