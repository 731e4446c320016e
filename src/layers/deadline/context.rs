//! `Deadline`: the inbound deadline, in the request's extensions and in a
//! task-local while the inner service runs.

use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Deadline;
}

/// When the request being served must have its response head ready.
///
/// The [`DeadlineLayer`](super::DeadlineLayer) puts it in the request's
/// extensions (axum: `Extension<Deadline>`), and makes it readable with
/// [`Deadline::current`] / [`inbound_deadline`] from the inner service's
/// future, on the same task: a task the handler spawns does not see it
/// (run it inside [`Deadline::scope`] to pass it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The instant (on tokio's clock).
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// The time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The deadline of the request served on this task, if any.
    pub fn current() -> Option<Self> {
        DEADLINE.try_with(|d| *d).ok()
    }

    /// Runs `fut` with `self` as its [`Deadline::current`] (e.g. a task
    /// spawned by a handler that calls upstreams).
    pub fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        DEADLINE.scope(self, fut)
    }

    pub(crate) fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        DEADLINE.sync_scope(self, f)
    }
}

/// The deadline of the inbound request served on this task, if any: what
/// the retry layer bounds its own deadline by, and what the client stack
/// sends on as `grpc-timeout`.
pub fn inbound_deadline() -> Option<Instant> {
    Deadline::current().map(|d| d.0)
}
