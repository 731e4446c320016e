//! `ObservedBody`: a body that tells a [`BodyObserver`] what passed
//! through it and, once, how it ended. The layers that act when a response
//! body ends (its span and access log, its duration, the breaker's
//! outcome of a gRPC call, the concurrency slot) each supply an observer.
//!
//! ```
//! use std::sync::mpsc;
//!
//! use battlement::body::{BodyEnd, BodyObserver, ObservedBody};
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//!
//! struct Report(mpsc::Sender<BodyEnd>);
//!
//! impl BodyObserver for Report {
//!     fn on_end(self, end: BodyEnd) {
//!         let _ = self.0.send(end);
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (tx, ends) = mpsc::channel();
//! let body = ObservedBody::new(Full::new(Bytes::from_static(b"hi")), Some(Report(tx)));
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "hi");
//! assert_eq!(ends.try_iter().collect::<Vec<_>>(), [BodyEnd::Complete]);
//! # });
//! ```

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// How an [`ObservedBody`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end: the inner body yielded its last frame, or said it
    /// has no more.
    Complete,
    /// The inner body failed.
    Failed,
    /// Dropped before its end (the peer went away, or stopped reading).
    Dropped,
}

/// Watches an [`ObservedBody`]: every method has a default but
/// [`on_end`](Self::on_end), which is called exactly once.
pub trait BodyObserver {
    /// Runs one poll of the inner body (to enter a span around it, say).
    fn poll_within<R>(&self, poll: impl FnOnce() -> R) -> R {
        poll()
    }

    /// A trailers frame passed, before it is handed on.
    fn on_trailers(&mut self, trailers: &HeaderMap) {
        let _ = trailers;
    }

    /// The body ended; called once, last.
    fn on_end(self, end: BodyEnd);
}

pin_project! {
    /// The inner body, watched by an observer until it ends, fails or is
    /// dropped; see the [module docs](self).
    pub struct ObservedBody<B, O: BodyObserver> {
        #[pin]
        inner: B,
        watch: Watch<O>,
    }
}

/// The observer until the body ends; dropped before that, it reports
/// [`BodyEnd::Dropped`].
struct Watch<O: BodyObserver>(Option<O>);

impl<O: BodyObserver> Watch<O> {
    fn end(&mut self, end: BodyEnd) {
        if let Some(observer) = self.0.take() {
            observer.on_end(end);
        }
    }
}

impl<O: BodyObserver> Drop for Watch<O> {
    fn drop(&mut self) {
        self.end(BodyEnd::Dropped);
    }
}

impl<B, O: BodyObserver> ObservedBody<B, O> {
    /// `inner`, watched by `observer` (`None`: nothing to watch).
    pub fn new(inner: B, observer: Option<O>) -> Self {
        Self {
            inner,
            watch: Watch(observer),
        }
    }
}

impl<B, O: BodyObserver> std::fmt::Debug for ObservedBody<B, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("observed", &self.watch.0.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body, O: BodyObserver> Body for ObservedBody<B, O> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let Some(observer) = this.watch.0.as_mut() else {
            return inner.poll_frame(cx);
        };
        let frame = ready!(observer.poll_within(|| inner.as_mut().poll_frame(cx)));
        let end = match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    observer.on_trailers(trailers);
                }
                inner.is_end_stream().then_some(BodyEnd::Complete)
            }
            Some(Err(_)) => Some(BodyEnd::Failed),
            None => Some(BodyEnd::Complete),
        };
        if let Some(end) = end {
            this.watch.end(end);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    use bytes::Bytes;
    use futures_util::FutureExt;
    use http_body_util::{BodyExt, Full};

    use super::*;

    /// Frames given in advance; `says_end`: tells it has no more as soon
    /// as it has none (else only by yielding `None`).
    struct Script {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        says_end: bool,
    }

    impl Script {
        fn new(frames: Vec<Result<Frame<Bytes>, &'static str>>, says_end: bool) -> Self {
            Self {
                frames: frames.into(),
                says_end,
            }
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.says_end && self.frames.is_empty()
        }
    }

    /// Writes down every call, and how many polls ran within it.
    #[derive(Clone, Default)]
    struct Log {
        calls: Rc<RefCell<Vec<String>>>,
        polls: Rc<Cell<usize>>,
    }

    impl BodyObserver for Log {
        fn poll_within<R>(&self, poll: impl FnOnce() -> R) -> R {
            self.polls.set(self.polls.get() + 1);
            poll()
        }

        fn on_trailers(&mut self, trailers: &HeaderMap) {
            self.calls.borrow_mut().push(format!(
                "trailers {}",
                trailers["grpc-status"].to_str().unwrap()
            ));
        }

        fn on_end(self, end: BodyEnd) {
            self.calls.borrow_mut().push(format!("{end:?}"));
        }
    }

    impl Log {
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, &'static str> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    fn trailers(status: &'static str) -> Result<Frame<Bytes>, &'static str> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(status));
        Ok(Frame::trailers(t))
    }

    /// Polls `body` for its next frame (every test body is always ready).
    fn next<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        body.frame().now_or_never().expect("the test body is ready")
    }

    fn observed(script: Script) -> (ObservedBody<Script, Log>, Log) {
        let log = Log::default();
        (ObservedBody::new(script, Some(log.clone())), log)
    }

    #[test]
    fn ends_once_when_the_inner_body_yields_its_last_frame() {
        let (mut body, log) = observed(Script::new(vec![data("a"), data("b")], false));
        assert!(next(&mut body).is_some());
        assert!(next(&mut body).is_some());
        assert!(log.calls().is_empty(), "not ended before the end");
        assert!(next(&mut body).is_none());
        assert!(next(&mut body).is_none());
        drop(body);
        assert_eq!(log.calls(), ["Complete"]);
        assert_eq!(log.polls.get(), 3, "polls after the end are not watched");
    }

    #[test]
    fn ends_once_when_the_inner_body_says_it_has_no_more() {
        let (mut body, log) = observed(Script::new(vec![data("a")], true));
        assert!(next(&mut body).is_some());
        assert_eq!(log.calls(), ["Complete"], "ended with its last frame");
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(log.calls(), ["Complete"]);
    }

    #[test]
    fn sees_the_trailers_then_ends_once() {
        let (mut body, log) = observed(Script::new(vec![data("a"), trailers("14")], false));
        while next(&mut body).is_some() {}
        drop(body);
        assert_eq!(log.calls(), ["trailers 14", "Complete"]);

        let (mut body, log) = observed(Script::new(vec![trailers("0")], true));
        assert!(next(&mut body).is_some());
        drop(body);
        assert_eq!(log.calls(), ["trailers 0", "Complete"]);
    }

    #[test]
    fn ends_once_when_the_inner_body_fails() {
        let (mut body, log) =
            observed(Script::new(vec![data("a"), Err("reset"), data("b")], false));
        assert!(next(&mut body).is_some());
        assert_eq!(next(&mut body).map(|f| f.err()), Some(Some("reset")));
        assert_eq!(log.calls(), ["Failed"]);
        while next(&mut body).is_some() {}
        drop(body);
        assert_eq!(log.calls(), ["Failed"]);
    }

    #[test]
    fn ends_once_when_dropped_before_the_end() {
        let (mut body, log) = observed(Script::new(vec![data("a"), data("b")], true));
        assert!(next(&mut body).is_some());
        assert!(log.calls().is_empty());
        drop(body);
        assert_eq!(log.calls(), ["Dropped"]);

        let (body, log) = observed(Script::new(vec![], false));
        drop(body);
        assert_eq!(log.calls(), ["Dropped"], "never read");
    }

    #[tokio::test]
    async fn forwards_the_inner_body_and_its_hints() {
        let (body, log) = {
            let log = Log::default();
            let inner = Full::new(Bytes::from_static(b"hello"));
            (ObservedBody::new(inner, Some(log.clone())), log)
        };
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(log.calls(), ["Complete"]);

        let unobserved = ObservedBody::<_, Log>::new(Full::new(Bytes::new()), None);
        assert!(unobserved.is_end_stream());
        assert_eq!(unobserved.size_hint().exact(), Some(0));
    }
}
