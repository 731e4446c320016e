//! `LimitedBody`: a response body that holds its request's slot until it
//! ends.

use super::limit::Slot;
use crate::body::{BodyEnd, BodyObserver, ObservedBody};

/// The inner response body; the request's slot is given back when the
/// body ends, fails, or is dropped.
pub type LimitedBody<B> = ObservedBody<B, HeldSlot>;

/// The request's slot, held until its response body ends.
pub struct HeldSlot(Slot);

impl<B> LimitedBody<B> {
    pub(crate) fn holding(inner: B, slot: Slot) -> Self {
        Self::new(inner, Some(HeldSlot(slot)))
    }
}

impl BodyObserver for HeldSlot {
    fn on_end(self, _: BodyEnd) {
        drop(self.0);
    }
}
