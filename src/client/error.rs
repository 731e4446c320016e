//! `ClientError`: the client stack's errors as one typed enum.

use crate::BoxError;
use crate::circuit_breaker::CircuitOpen;
use crate::deadline::DeadlineExceeded;
use crate::rate_limit::RateLimited;
use crate::retry::AttemptTimedOut;

/// Why a call through the client stack failed, whichever way it was
/// sent: the tower stack's `BoxError` ([`ClientError::from_box`]) or the
/// reqwest-middleware adapter's `reqwest_middleware::Error`
/// (`ClientError::from` it, or [`ClientError::of`] to borrow it).
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::client::{ClientError, ClientStack};
/// use http::Request;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let stack = ClientStack::new("upstream", MemoryStore::new()).build().unwrap();
/// stack.breakers().force_open("example.com");
/// let client = ServiceBuilder::new().layer(stack).service(service_fn(|_req: Request<_>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// }));
/// let req = Request::get("http://example.com/").body(String::new()).unwrap();
/// let err = client.oneshot(req).await.unwrap_err();
/// match ClientError::from_box(err) {
///     ClientError::CircuitOpen(open) => assert_eq!(open.key(), "example.com"),
///     other => panic!("{other}"),
/// }
/// # });
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream host's breaker is open: the call was not sent.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// The client-side quota is spent: the call was not sent.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// The last attempt ran past the per-try timeout.
    #[error(transparent)]
    AttemptTimedOut(AttemptTimedOut),
    /// The retry's deadline, or the deadline of the inbound request this
    /// call serves, passed.
    #[error(transparent)]
    DeadlineExceeded(DeadlineExceeded),
    /// The transport failed (connect, reset, TLS, a malformed response),
    /// or a layer below failed in a way not listed here.
    #[error("transport: {0}")]
    Transport(#[source] BoxError),
}

impl ClientError {
    /// Sorts an error of the client stack (or of any tower service over
    /// it) into its kind, keeping the original as the variant's value.
    pub fn from_box(error: BoxError) -> Self {
        let error = match error.downcast::<Self>() {
            Ok(this) => return *this,
            Err(e) => e,
        };
        let error = match error.downcast::<CircuitOpen>() {
            Ok(open) => return Self::CircuitOpen(*open),
            Err(e) => e,
        };
        let error = match error.downcast::<RateLimited>() {
            Ok(limited) => return Self::RateLimited(*limited),
            Err(e) => e,
        };
        let error = match error.downcast::<AttemptTimedOut>() {
            Ok(timeout) => return Self::AttemptTimedOut(*timeout),
            Err(e) => e,
        };
        match error.downcast::<DeadlineExceeded>() {
            Ok(deadline) => Self::DeadlineExceeded(*deadline),
            Err(e) => Self::Transport(e),
        }
    }

    /// Whether the call was refused before it was sent (breaker open or
    /// quota spent).
    pub fn is_rejected_locally(&self) -> bool {
        matches!(self, Self::CircuitOpen(_) | Self::RateLimited(_))
    }
}

impl From<BoxError> for ClientError {
    fn from(error: BoxError) -> Self {
        Self::from_box(error)
    }
}

#[cfg(feature = "reqwest-middleware")]
impl ClientError {
    /// The `ClientError` inside a `reqwest_middleware::Error` that the
    /// battlement middleware returned (`None` for reqwest's own errors:
    /// `ClientError::from` sorts those as `Transport`).
    pub fn of(error: &reqwest_middleware::Error) -> Option<&Self> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Self>(),
            _ => None,
        }
    }
}

#[cfg(feature = "reqwest-middleware")]
impl From<reqwest_middleware::Error> for ClientError {
    fn from(error: reqwest_middleware::Error) -> Self {
        match error {
            reqwest_middleware::Error::Middleware(e) => match e.downcast::<Self>() {
                Ok(this) => this,
                Err(e) => Self::Transport(e.into()),
            },
            reqwest_middleware::Error::Reqwest(e) => Self::Transport(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_kind_is_sorted_and_the_rest_is_transport() {
        let timeout: BoxError = Box::new(AttemptTimedOut(Duration::from_secs(1)));
        assert!(matches!(
            ClientError::from_box(timeout),
            ClientError::AttemptTimedOut(AttemptTimedOut(d)) if d == Duration::from_secs(1)
        ));
        let deadline: BoxError =
            Box::new(DeadlineExceeded::client(Duration::from_secs(2), "retry"));
        assert!(matches!(
            ClientError::from_box(deadline),
            ClientError::DeadlineExceeded(d) if d.source() == "retry"
        ));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let ClientError::Transport(source) = ClientError::from_box(reset) else {
            panic!("not transport");
        };
        assert!(source.is::<std::io::Error>());
        // Sorting twice keeps the kind.
        let again: BoxError = Box::new(ClientError::from_box(Box::new(AttemptTimedOut(
            Duration::ZERO,
        ))));
        assert!(matches!(
            ClientError::from(again),
            ClientError::AttemptTimedOut(_)
        ));
    }
}
