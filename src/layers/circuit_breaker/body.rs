//! `ClassifiedBody`: a response body that records the call's outcome when
//! it ends, for gRPC statuses that arrive in trailers.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::classify::ClassifyResponse;
use super::registry::Permit;
use super::state::Outcome;
use crate::body::{BodyEnd, BodyObserver, ObservedBody};

/// The inner response body; when the outcome waits for the trailers,
/// it is recorded as they pass, or as the body ends without them
/// (dropped before the end: cancelled, not counted).
pub type ClassifiedBody<B> = ObservedBody<B, PendingOutcome>;

/// A call whose outcome its response's trailers tell.
// Boxed: only streamed (gRPC) calls have one, and every response moves
// the body a few times on its way out.
pub struct PendingOutcome(Box<Pending>);

struct Pending {
    /// Taken when the outcome is recorded.
    permit: Option<Permit>,
    classifier: Arc<dyn ClassifyResponse>,
    /// The call's time until its head arrived.
    elapsed: Duration,
}

impl<B> ClassifiedBody<B> {
    /// A body whose call is already recorded.
    pub(crate) fn settled(inner: B) -> Self {
        Self::new(inner, None)
    }

    /// A body whose outcome comes from its trailers; the call is timed
    /// to now, when its head arrived.
    pub(crate) fn pending(inner: B, permit: Permit, classifier: Arc<dyn ClassifyResponse>) -> Self {
        let elapsed = permit.elapsed();
        let pending = Pending {
            permit: Some(permit),
            classifier,
            elapsed,
        };
        Self::new(inner, Some(PendingOutcome(Box::new(pending))))
    }
}

impl PendingOutcome {
    /// Records the outcome `classify` gives, unless already recorded.
    fn record(&mut self, classify: impl FnOnce(&dyn ClassifyResponse) -> Outcome) {
        let pending = &mut *self.0;
        if let Some(permit) = pending.permit.take() {
            permit.record_timed(classify(&*pending.classifier), pending.elapsed);
        }
    }
}

impl BodyObserver for PendingOutcome {
    fn on_trailers(&mut self, trailers: &HeaderMap) {
        self.record(|c| c.classify_trailers(Some(trailers)));
    }

    fn on_end(mut self, end: BodyEnd) {
        match end {
            BodyEnd::Complete => self.record(|c| c.classify_trailers(None)),
            BodyEnd::Failed => self.record(|_| Outcome::Failure),
            // The permit, dropped, counts the call as cancelled.
            BodyEnd::Dropped => {}
        }
    }
}
