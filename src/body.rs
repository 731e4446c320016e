//! `LayerBody`: the body a layer hands on, either the wrapped service's
//! (optionally after bytes the layer already read from it) or bytes the
//! layer produced itself (a rejection, a replayed response, a buffered
//! request), with optional trailers.
//!
//! ```
//! use battlement::body::LayerBody;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let wrapped = LayerBody::inner(Full::new(Bytes::from_static(b"hello")));
//! assert_eq!(wrapped.collect().await.unwrap().to_bytes(), "hello");
//!
//! let mut trailers = http::HeaderMap::new();
//! trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
//! let stored = LayerBody::<Full<Bytes>>::with_trailers(Bytes::from_static(b"msg"), trailers);
//! let collected = stored.collect().await.unwrap();
//! assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
//! # });
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

mod observe;

pub use observe::{BodyEnd, BodyObserver, ObservedBody};

pin_project! {
    /// A body from the wrapped service or from the layer; see the
    /// [module docs](self).
    pub struct LayerBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { prefix: Option<Bytes>, #[pin] body: B },
        // Trailers are rare (stored gRPC responses): boxed, they keep
        // every response that passes through a layer small to move.
        Full { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
    }
}

impl<B> LayerBody<B> {
    /// The wrapped service's body.
    pub fn inner(body: B) -> Self {
        Self::resumed(Bytes::new(), body)
    }

    /// `prefix`, already read from `body`, then the rest of `body`.
    pub fn resumed(prefix: Bytes, body: B) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Self {
            kind: Kind::Inner { prefix, body },
        }
    }

    /// A body of exactly these bytes.
    pub fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full {
                data,
                trailers: None,
            },
        }
    }

    /// These bytes, then these trailers (a stored gRPC response).
    pub fn with_trailers(data: Bytes, trailers: HeaderMap) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full {
                data,
                trailers: Some(Box::new(trailers)),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// `prefix`, already read from this body, put back in front of what is
    /// left of it.
    pub(crate) fn prepend(self, prefix: Bytes) -> Self {
        if prefix.is_empty() {
            return self;
        }
        let join = |rest: Option<Bytes>| match rest {
            Some(rest) => {
                let mut joined = bytes::BytesMut::with_capacity(prefix.len() + rest.len());
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(&rest);
                joined.freeze()
            }
            None => prefix.clone(),
        };
        let kind = match self.kind {
            Kind::Inner { prefix: rest, body } => Kind::Inner {
                prefix: Some(join(rest)),
                body,
            },
            Kind::Full { data, trailers } => Kind::Full {
                data: Some(join(data)),
                trailers,
            },
        };
        Self { kind }
    }
}

impl<B> std::fmt::Debug for LayerBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { prefix, .. } => f
                .debug_struct("LayerBody::Inner")
                .field("prefix", prefix)
                .finish_non_exhaustive(),
            Kind::Full { data, trailers } => f
                .debug_struct("LayerBody::Full")
                .field("data", data)
                .field("trailers", trailers)
                .finish(),
        }
    }
}

impl<B> Default for LayerBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for LayerBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { prefix, body } => match prefix.take() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => body.poll_frame(cx),
            },
            KindProj::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(|t| Frame::trailers(*t)))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A body read up to a limit.
pub(crate) enum Read<B> {
    /// All of it, within the limit.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Not kept whole: over the limit, or (from [`read_ready`]) not all
    /// there yet. What was read, and the rest (send it as
    /// [`LayerBody::resumed`], so nothing is lost).
    Partial { prefix: Bytes, rest: B },
    /// The body failed.
    Failed(String),
}

/// Reads `body` whole if it fits in `limit` bytes.
pub(crate) async fn read_limited<B>(body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    read(body, limit, false).await
}

/// Reads `body` whole if it fits in `limit` bytes and every frame is there
/// already: a stream whose next frame is not ready (a gRPC call that waits
/// for the server before it sends more) is handed back at once, as
/// [`Read::Partial`].
pub(crate) async fn read_ready<B>(body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    read(body, limit, true).await
}

async fn read<B>(mut body: B, limit: usize, ready_only: bool) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    let mut data = bytes::BytesMut::new();
    if body.size_hint().lower() > limit as u64 {
        return Read::Partial {
            prefix: data.freeze(),
            rest: body,
        };
    }
    let mut trailers = None;
    loop {
        let next = if ready_only {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => {
                    return Read::Partial {
                        prefix: data.freeze(),
                        rest: body,
                    };
                }
            }
        } else {
            body.frame().await
        };
        let Some(frame) = next else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Read::Failed(e.to_string()),
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    return Read::Partial {
                        prefix: data.freeze(),
                        rest: body,
                    };
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Read::Whole {
        data: data.freeze(),
        trailers,
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn a_resumed_body_yields_the_prefix_then_the_rest() {
        let body = LayerBody::resumed(
            Bytes::from_static(b"he"),
            Full::new(Bytes::from_static(b"llo")),
        );
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[test]
    fn empty_bodies_end_at_once() {
        assert!(LayerBody::<Full<Bytes>>::empty().is_end_stream());
        assert!(
            !LayerBody::<Full<Bytes>>::with_trailers(Bytes::new(), HeaderMap::new())
                .is_end_stream()
        );
    }
}
