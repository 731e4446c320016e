//! Each breaker key's state, read by the state gauge
//! `battlement.circuit_breaker.state` when the meter provider collects:
//! one series per live key (at most the layer's `max_keys`, plus its
//! overflow key), 1, labelled with the state.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;

use super::registry::Registry;
use crate::events::{Gauge, Source};

/// A layer's breakers, as the gauge sees them.
struct StateGauge(Weak<Registry>);

impl Source for StateGauge {
    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn observe(&self, gauge: Gauge, emit: &mut dyn FnMut(i64, &[KeyValue])) {
        if gauge != Gauge::BreakerState {
            return;
        }
        let Some(registry) = self.0.upgrade() else {
            return;
        };
        for (key, state) in registry.states() {
            emit(
                1,
                &[
                    KeyValue::new("policy", registry.name.clone()),
                    KeyValue::new("key", key),
                    KeyValue::new("state", state.as_str()),
                ],
            );
        }
    }
}

/// Makes `registry`'s breakers read by the gauge while it lives.
pub(crate) fn observed(registry: Registry) -> Arc<Registry> {
    let registry = Arc::new(registry);
    let key = Arc::as_ptr(&registry) as usize;
    crate::events::register_gauges(key, Arc::new(StateGauge(Arc::downgrade(&registry))));
    registry
}
