//! The units an instance holds in leases, read by the state gauge
//! `battlement.rate_limit.leased_units` when the meter provider collects:
//! one series per policy in the leased mode.

use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use opentelemetry::KeyValue;

use super::SyncMode;
use super::leased::{Leased, Shared};
use crate::events::{Gauge, Source};
use crate::layers::rate_limit::Policy;

/// A layer's leases and policies, as the gauge sees them.
struct LeaseGauge<S> {
    leases: Weak<Shared<S>>,
    policies: Weak<ArcSwap<Vec<Policy>>>,
}

impl<S: Send + Sync + 'static> Source for LeaseGauge<S> {
    fn alive(&self) -> bool {
        self.leases.strong_count() > 0 && self.policies.strong_count() > 0
    }

    fn observe(&self, gauge: Gauge, emit: &mut dyn FnMut(i64, &[KeyValue])) {
        if gauge != Gauge::LeasedUnits {
            return;
        }
        let (Some(leases), Some(policies)) = (self.leases.upgrade(), self.policies.upgrade())
        else {
            return;
        };
        let policies = policies.load();
        let mut held: Vec<(&Policy, u64)> = policies
            .iter()
            .filter(|p| p.mode == SyncMode::Leased)
            .map(|p| (p, 0))
            .collect();
        if held.is_empty() {
            return;
        }
        for entry in leases.entries.iter().filter(|e| e.units > 0) {
            let policy = entry.key().split('/').next().unwrap_or_default();
            if let Some((_, units)) = held.iter_mut().find(|(p, _)| &*p.name == policy) {
                *units = units.saturating_add(entry.units);
            }
        }
        for (policy, units) in held {
            let units = i64::try_from(units).unwrap_or(i64::MAX);
            emit(units, &[KeyValue::new("policy", policy.name.clone())]);
        }
    }
}

impl<S: Send + Sync + 'static> Leased<S> {
    /// Makes the units held for `policies` read by the gauge while both
    /// live (once per pair of leases, however many services share them).
    pub(crate) fn observe(&self, policies: &Arc<ArcSwap<Vec<Policy>>>) {
        let key = Arc::as_ptr(&self.shared) as usize;
        let gauge = LeaseGauge {
            leases: Arc::downgrade(&self.shared),
            policies: Arc::downgrade(policies),
        };
        crate::events::register_gauges(key, Arc::new(gauge));
    }
}
