//! `TraceIds`: the SDK's id generator, agreeing with the trace layer's head
//! sampling.

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::IdGenerator;

use crate::trace::head::{random_span_id, random_trace_id, take_root_trace_id};

/// Random trace and span ids, except that a new trace the server trace
/// layer has already sampled gets the trace id its
/// [`HeadSampler`](crate::trace::HeadSampler) decided on, so the SDK's
/// sampler, deciding on that id, agrees. [`init`](super::init) installs it;
/// give it to a tracer provider of your own with
/// `SdkTracerProvider::builder().with_id_generator(TraceIds)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceIds;

impl IdGenerator for TraceIds {
    fn new_trace_id(&self) -> TraceId {
        take_root_trace_id().unwrap_or_else(random_trace_id)
    }

    fn new_span_id(&self) -> SpanId {
        random_span_id()
    }
}
