//! The limit and the requests in flight, read by the state gauges
//! (`battlement.concurrency_limit.limit` and `.in_flight`) when the
//! meter provider collects.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;

use super::limit::Limiter;
use crate::events::{Gauge, Source};

/// A limiter, as the gauges see it.
struct LimitGauge(Weak<Limiter>);

impl Source for LimitGauge {
    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn observe(&self, gauge: Gauge, emit: &mut dyn FnMut(i64, &[KeyValue])) {
        let Some(limiter) = self.0.upgrade() else {
            return;
        };
        let value = match gauge {
            Gauge::ConcurrencyLimit => limiter.limit(),
            Gauge::ConcurrencyInFlight => limiter.in_flight(),
            _ => return,
        };
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        emit(value, &[KeyValue::new("policy", limiter.name.clone())]);
    }
}

/// Makes `limiter` read by the gauges while it lives.
pub(crate) fn observed(limiter: Limiter) -> Arc<Limiter> {
    let limiter = Arc::new(limiter);
    let key = Arc::as_ptr(&limiter) as usize;
    crate::events::register_gauges(key, Arc::new(LimitGauge(Arc::downgrade(&limiter))));
    limiter
}
