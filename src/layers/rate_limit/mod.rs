//! Rate limiting: keyed integer GCRA with shared state.

pub(crate) mod gcra;
mod quota;
pub(crate) mod store;

pub use quota::Quota;
pub use store::{Decision, RateLimitStore};
