//! `Hedge`: the first attempt, and a second one if the first is slow.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::ServiceExt;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower_service::Service;

use super::config::{HedgeConfig, HedgeDelay};
use super::latency::Latencies;
use crate::BoxError;
use crate::body::{LayerBody, Read, read_limited};
use crate::events::{Events, HedgeEvent};
use crate::key::{HostKey, KeyExtractor, RequestHead};
use crate::retry::{ResendCount, body_fits, is_idempotent};

/// In a response's extensions when the hedge's response won.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedged;

/// One hedge, in millionths.
const UNIT: u64 = 1_000_000;
/// The most hedges saved up for a burst.
const BURST: u64 = 10 * UNIT;

/// What every clone of the service shares.
pub(crate) struct Shared {
    pub config: HedgeConfig,
    pub budget: Option<Arc<TpsBudget>>,
    pub events: Events,
    pub latencies: Latencies,
    /// Hedges allowed now, in millionths: every request adds
    /// `max_hedged_fraction`, every hedge takes one.
    pub credit: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: HedgeConfig, budget: Option<Arc<TpsBudget>>, events: Events) -> Self {
        let latencies = Latencies::new(config.max_hosts);
        // Full: a burst of hedges may go out from the start (none when no
        // share of requests may be hedged).
        let credit = if config.max_hedged_fraction > 0.0 {
            BURST
        } else {
            0
        };
        Self {
            config,
            budget,
            events,
            latencies,
            credit: AtomicU64::new(credit),
        }
    }

    fn deposit(&self) {
        let add = (self.config.max_hedged_fraction * UNIT as f64) as u64;
        if add == 0 {
            return;
        }
        // Saturated most of the time under steady traffic: a load, no
        // write.
        if self.credit.load(Ordering::Relaxed) >= BURST {
            return;
        }
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some((c + add).min(BURST))
            });
    }

    /// Takes one hedge from the fraction and the retry budget.
    fn withdraw(&self, host: &str) -> bool {
        let took = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_sub(UNIT)
            })
            .is_ok();
        if !took {
            self.note(HedgeEvent::MaxFraction, host);
            return false;
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            self.credit.fetch_add(UNIT, Ordering::Relaxed);
            self.note(HedgeEvent::BudgetExhausted, host);
            return false;
        }
        true
    }

    fn records(&self) -> bool {
        matches!(self.config.delay, HedgeDelay::Percentile { .. })
    }

    fn record(&self, host: &str, latency: Duration) {
        if self.records() {
            self.latencies.record(host, latency);
        }
    }

    fn delay(&self, host: &str) -> Option<Duration> {
        match self.config.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile {
                percentile,
                fallback,
            } => self
                .latencies
                .percentile(host, percentile, self.config.min_samples)
                .or(fallback),
        }
    }

    fn note(&self, event: HedgeEvent, host: &str) {
        self.events.report(event, None, || Some(host.to_owned()));
    }
}

/// The service made by [`HedgeLayer`](super::HedgeLayer).
#[derive(Clone)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Hedge<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for Hedge<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, B, R> Service<Request<LayerBody<B>>> for Hedge<S>
where
    S: Service<Request<LayerBody<B>>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: fmt::Display,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<R>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<LayerBody<B>>) -> Self::Future {
        let shared = self.shared.clone();
        shared.deposit();
        // An idempotent method only: a keyed POST's hedge would meet the
        // server's 409 for its own key within a millisecond, win, and drop
        // the first attempt that the server completes.
        let safe = is_idempotent(req.method()) && body_fits(req.body(), shared.config.max_body);
        if !safe {
            // Sent once, as it is.
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let host = match HostKey.extract(&RequestHead::of(&req)) {
            Ok(key) => Box::<str>::from(key.as_str()),
            Err(_) => Box::from("unknown"),
        };
        let Some(delay) = shared.delay(&host) else {
            // Too few samples yet: sent once, its latency recorded.
            let started = Instant::now();
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let out = fut.await.map_err(Into::into);
                if out.is_ok() {
                    shared.record(&host, started.elapsed());
                }
                out
            });
        };
        // The readied service goes into the future; a clone stays, and
        // another one sends the hedge.
        let spare = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, spare.clone());
        Box::pin(run(inner, spare, shared, req, host, delay))
    }
}

/// A copy of a kept body.
fn copy<B>(data: &Bytes, trailers: &Option<HeaderMap>) -> LayerBody<B> {
    match trailers {
        Some(t) => LayerBody::with_trailers(data.clone(), t.clone()),
        None => LayerBody::full(data.clone()),
    }
}

async fn run<S, B, R>(
    mut inner: S,
    mut spare: S,
    shared: Arc<Shared>,
    req: Request<LayerBody<B>>,
    host: Box<str>,
    delay: Duration,
) -> Result<Response<R>, BoxError>
where
    S: Service<Request<LayerBody<B>>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    let (parts, body) = req.into_parts();
    let (data, trailers) = if body.is_end_stream() {
        (Bytes::new(), None)
    } else {
        match Box::pin(read_limited(body, shared.config.max_body)).await {
            Read::Whole { data, trailers } => (data, trailers),
            // Larger than it said: sent once, whole.
            Read::Partial { prefix, rest } => {
                let req = Request::from_parts(parts, rest.prepend(prefix));
                return inner.call(req).await.map_err(Into::into);
            }
            Read::Failed(e) => return Err(format!("request body: {e}").into()),
        }
    };
    let started = Instant::now();
    let first = inner.call(Request::from_parts(parts.clone(), copy(&data, &trailers)));
    let mut first = pin!(async move { first.await.map_err(Into::<BoxError>::into) });
    tokio::select! {
        biased;
        out = &mut first => {
            if out.is_ok() {
                shared.record(&host, started.elapsed());
            }
            return out;
        }
        () = tokio::time::sleep(delay) => {}
    }
    if !shared.withdraw(&host) {
        let out = first.await;
        if out.is_ok() {
            shared.record(&host, started.elapsed());
        }
        return out;
    }
    shared.note(HedgeEvent::Hedged, &host);
    let mut req = Request::from_parts(parts, copy(&data, &trailers));
    let resent = req.extensions().get::<ResendCount>().map_or(0, |r| r.0);
    req.extensions_mut().insert(ResendCount(resent + 1));
    let hedge_started = Instant::now();
    let mut hedge = pin!(async move {
        spare.ready().await.map_err(Into::<BoxError>::into)?;
        let fut = spare.call(req);
        fut.await.map_err(Into::<BoxError>::into)
    });
    tokio::select! {
        biased;
        out = &mut first => match out {
            Ok(res) => {
                // The hedge is dropped: cancelled.
                shared.record(&host, started.elapsed());
                Ok(res)
            }
            Err(e) => match hedge.await {
                Ok(mut res) => {
                    shared.record(&host, hedge_started.elapsed());
                    shared.note(HedgeEvent::HedgeWon, &host);
                    res.extensions_mut().insert(Hedged);
                    Ok(res)
                }
                Err(_) => Err(e),
            },
        },
        out = &mut hedge => match out {
            Ok(mut res) => {
                // The first attempt is dropped: cancelled. It took at
                // least this long, which is what the percentile learns
                // (its full latency is never known).
                shared.record(&host, started.elapsed());
                shared.record(&host, hedge_started.elapsed());
                shared.note(HedgeEvent::HedgeWon, &host);
                res.extensions_mut().insert(Hedged);
                Ok(res)
            }
            Err(_) => {
                let out = first.await;
                if out.is_ok() {
                    shared.record(&host, started.elapsed());
                }
                out
            }
        },
    }
}
