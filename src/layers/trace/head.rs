//! Head sampling: whether a server request is traced, decided before its
//! span exists, so that an unsampled request builds no OpenTelemetry span.
//!
//! The decision is the one the OpenTelemetry SDK's built-in samplers take
//! (`OTEL_TRACES_SAMPLER`), on the same trace id: a sampled root span gets
//! the id its decision was taken on through the SDK's id generator
//! ([`telemetry::TraceIds`](crate::telemetry::TraceIds)), so the SDK decides
//! the same way again and a ratio is applied once, not twice.
//!
//! ```
//! use battlement::trace::{HeadSampler, TraceLayer};
//!
//! // 10 % of new traces; a caller's sampled flag is followed.
//! let sampler = HeadSampler::ratio(0.1).parent_based();
//! let layer = TraceLayer::server().head_sampler(Some(sampler));
//! # let _ = layer;
//! ```

use std::cell::Cell;
use std::sync::RwLock;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};

use crate::error::ConfigError;

/// Which requests are traced: one of the OpenTelemetry SDK's built-in
/// samplers, applied by [`TraceLayer::server`](super::TraceLayer::server)
/// before the request's span is built.
///
/// [`telemetry::init`](crate::telemetry::init) reads it from
/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, gives the SDK the
/// same sampler and id generator, and installs it for every server trace
/// layer that has not served a request yet, built before or after. With a
/// tracer provider of your own, give the
/// provider [`sdk_sampler`](Self::sdk_sampler) and
/// [`TraceIds`](crate::telemetry::TraceIds), and the layer
/// [`head_sampler`](super::TraceLayer::head_sampler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadSampler {
    root: Root,
    parent_based: bool,
}

/// The rule for a request without a caller's sampled flag to follow.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl HeadSampler {
    /// Every request (`always_on`).
    pub fn always_on() -> Self {
        Self {
            root: Root::AlwaysOn,
            parent_based: false,
        }
    }

    /// No request (`always_off`).
    pub fn always_off() -> Self {
        Self {
            root: Root::AlwaysOff,
            parent_based: false,
        }
    }

    /// A share of traces, decided on the trace id (`traceidratio`): the
    /// same trace gets the same decision in every service with the same
    /// ratio. `ratio` is clamped to `0.0..=1.0`.
    pub fn ratio(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Self {
            root: Root::Ratio(ratio),
            parent_based: false,
        }
    }

    /// Follows the caller's sampled flag when the request carries a trace
    /// context, and applies `self` only to new traces (`parentbased_*`).
    pub fn parent_based(self) -> Self {
        Self {
            parent_based: true,
            ..self
        }
    }

    /// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
    /// name; `parentbased_always_on` when unset (the SDK's default).
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self::parse(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )
    }

    /// A sampler name and argument as the OpenTelemetry environment
    /// variables spell them. Unlike the SDK, which falls back to
    /// `parentbased_always_on` with a warning, a name it cannot honour or a
    /// ratio that is not a number in `0..=1` is an error.
    fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, ConfigError> {
        let ratio = || -> Result<Self, ConfigError> {
            let Some(arg) = arg else {
                return Ok(Self::ratio(1.0));
            };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(Self::ratio(r)),
                _ => Err(ConfigError::new(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?}: a ratio is a number from 0 to 1"
                ))),
            }
        };
        match name.map(str::trim) {
            None | Some("parentbased_always_on") => Ok(Self::always_on().parent_based()),
            Some("always_on") => Ok(Self::always_on()),
            Some("always_off") => Ok(Self::always_off()),
            Some("parentbased_always_off") => Ok(Self::always_off().parent_based()),
            Some("traceidratio") => ratio(),
            Some("parentbased_traceidratio") => Ok(ratio()?.parent_based()),
            Some(other) => Err(ConfigError::new(format!(
                "OTEL_TRACES_SAMPLER={other:?}: supported are always_on, always_off, \
                 traceidratio and their parentbased_ forms"
            ))),
        }
    }

    /// The same sampler for the SDK's tracer provider.
    #[cfg(any(feature = "prometheus", feature = "_otlp"))]
    pub fn sdk_sampler(&self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        let root = match self.root {
            Root::AlwaysOn => Sampler::AlwaysOn,
            Root::AlwaysOff => Sampler::AlwaysOff,
            Root::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }

    /// Whether a span under `parent` in trace `trace_id` is sampled, as the
    /// SDK decides it.
    fn samples(&self, parent: &Context, trace_id: TraceId) -> bool {
        if self.parent_based && parent.has_active_span() {
            return parent.span().span_context().is_sampled();
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(r) if r >= 1.0 => true,
            Root::Ratio(r) => {
                // The SDK's rule: the trace id's low 64 bits, shifted to 63,
                // under the ratio.
                let bound = (r * (1u64 << 63) as f64) as u64;
                let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
                (low >> 1) < bound
            }
        }
    }

    /// The decision for a server request whose caller sent `parent`.
    pub(crate) fn decide(&self, parent: &Context) -> Head {
        let span = parent.span();
        let caller = span.span_context();
        let trace_id = if caller.is_valid() {
            caller.trace_id()
        } else {
            random_trace_id()
        };
        if self.samples(parent, trace_id) {
            return Head::Sampled {
                root: (!caller.is_valid()).then_some(trace_id),
            };
        }
        // What the SDK would make of a dropped span: a fresh span id in the
        // same trace, not sampled, the caller's trace state kept.
        let unsampled = SpanContext::new(
            trace_id,
            random_span_id(),
            TraceFlags::default(),
            false,
            caller.trace_state().clone(),
        );
        Head::Unsampled(parent.with_remote_span_context(unsampled))
    }
}

/// What [`HeadSampler::decide`] found.
pub(crate) enum Head {
    /// Build the span; a new trace (`root`) must get this trace id.
    Sampled { root: Option<TraceId> },
    /// No span; this context (the request's, not sampled) is current while
    /// the request runs, so its children and outbound calls are not
    /// sampled either.
    Unsampled(Context),
}

/// A random, valid trace id.
pub(crate) fn random_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

/// A random, valid span id.
pub(crate) fn random_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

thread_local! {
    /// The trace id of the sampled root span being started on this thread.
    static ROOT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Runs `build` (which starts a root span) with `id` as the trace id the
/// SDK's [`TraceIds`](crate::telemetry::TraceIds) hands out next.
pub(crate) fn with_root_trace_id<R>(id: TraceId, build: impl FnOnce() -> R) -> R {
    ROOT_TRACE_ID.set(Some(id));
    let built = build();
    ROOT_TRACE_ID.set(None);
    built
}

/// The trace id [`with_root_trace_id`] set, once.
#[cfg_attr(not(any(feature = "prometheus", feature = "_otlp")), allow(dead_code))]
pub(crate) fn take_root_trace_id() -> Option<TraceId> {
    ROOT_TRACE_ID.take()
}

/// The sampler [`telemetry::init`](crate::telemetry::init) installed.
static INSTALLED: RwLock<Option<HeadSampler>> = RwLock::new(None);

/// Makes `sampler` the one server trace layers take at their first
/// request.
#[cfg_attr(not(any(feature = "prometheus", feature = "_otlp")), allow(dead_code))]
pub(crate) fn install(sampler: Option<HeadSampler>) {
    if let Ok(mut installed) = INSTALLED.write() {
        *installed = sampler;
    }
}

/// The installed sampler, if any.
pub(crate) fn installed() -> Option<HeadSampler> {
    INSTALLED.read().ok().and_then(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_to_samplers_and_bad_ones_are_errors() {
        let parse = HeadSampler::parse;
        assert_eq!(
            parse(None, None).unwrap(),
            HeadSampler::always_on().parent_based()
        );
        assert_eq!(
            parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap(),
            HeadSampler::ratio(0.25).parent_based()
        );
        assert_eq!(
            parse(Some("traceidratio"), None).unwrap(),
            HeadSampler::ratio(1.0)
        );
        assert_eq!(
            parse(Some("always_off"), None).unwrap(),
            HeadSampler::always_off()
        );
        let err = parse(Some("traceidratoi"), None).unwrap_err().to_string();
        assert!(err.contains("traceidratoi"), "{err}");
        let err = parse(Some("traceidratio"), Some("10%"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("10%"), "{err}");
        assert!(parse(Some("traceidratio"), Some("1.5")).is_err());
    }

    fn caller(sampled: bool) -> Context {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            random_trace_id(),
            random_span_id(),
            flags,
            true,
            Default::default(),
        ))
    }

    #[cfg(any(feature = "prometheus", feature = "_otlp"))]
    #[test]
    fn decisions_agree_with_the_sdk_sampler() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let samplers = [
            HeadSampler::ratio(0.1),
            HeadSampler::ratio(0.5).parent_based(),
            HeadSampler::ratio(0.0),
            HeadSampler::always_on(),
            HeadSampler::always_off().parent_based(),
        ];
        let mut sampled = 0;
        for sampler in samplers {
            let sdk = sampler.sdk_sampler();
            for i in 0..2_000 {
                let parent = match i % 3 {
                    0 => Context::new(),
                    1 => caller(true),
                    _ => caller(false),
                };
                let trace_id = random_trace_id();
                let ours = sampler.samples(&parent, trace_id);
                let theirs = sdk
                    .should_sample(Some(&parent), trace_id, "x", &SpanKind::Server, &[], &[])
                    .decision;
                assert_eq!(ours, theirs == SamplingDecision::RecordAndSample);
                sampled += usize::from(ours);
            }
        }
        // Neither all nor none: the comparison saw both outcomes.
        assert!(sampled > 2_000 && sampled < 8_000, "{sampled}");
    }

    #[test]
    fn an_unsampled_request_keeps_the_callers_trace() {
        let parent = caller(false);
        let trace_id = parent.span().span_context().trace_id();
        let Head::Unsampled(cx) = HeadSampler::always_on().parent_based().decide(&parent) else {
            panic!("the caller's unsampled flag is followed")
        };
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_id(), trace_id);
        assert!(sc.is_valid() && !sc.is_sampled());
        assert_ne!(sc.span_id(), parent.span().span_context().span_id());
        let Head::Sampled { root } = HeadSampler::always_on().decide(&Context::new()) else {
            panic!("always_on samples")
        };
        assert!(root.is_some_and(|id| id != TraceId::INVALID));
    }
}
