//! `RequestIdLayer` and its configuration.

use std::sync::Arc;

use http::HeaderName;
use serde::Deserialize;
use tower_layer::Layer;

use super::id::{DefaultMakeRequestId, MakeRequestId, SharedMakeRequestId};
use super::service::RequestIdService;
use crate::error::ConfigError;

/// The default header: `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serde form of the request-id settings.
///
/// ```
/// let config: battlement::request_id::RequestIdConfig =
///     serde_json::from_str(r#"{"header": "x-correlation-id", "trust_incoming": false}"#).unwrap();
/// let layer = battlement::RequestIdLayer::from_config(&config).unwrap();
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Header carrying the id (default `x-request-id`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Keep valid incoming ids (default true).
    #[serde(default = "yes")]
    pub trust_incoming: bool,
    /// Open a `request` span holding the id around the inner service.
    #[serde(default = "yes")]
    pub span: bool,
}

fn default_header() -> String {
    X_REQUEST_ID.as_str().to_owned()
}

fn yes() -> bool {
    true
}

/// Gives every request an id.
///
/// A valid incoming id is kept (unless trust is switched off); otherwise a
/// UUIDv7 is generated. The id is set as a header and a [`RequestId`]
/// extension on the request, echoed on the response, recorded in a
/// `request` span (field `request_id`) around the inner service so every log
/// line of the request carries it, recorded on the current span's
/// `request.id` field when it has one, and available to outbound calls
/// through [`RequestId::current`].
///
/// [`RequestId`]: super::RequestId
/// [`RequestId::current`]: super::RequestId::current
#[derive(Clone)]
pub struct RequestIdLayer {
    pub(crate) header: HeaderName,
    pub(crate) trust_incoming: bool,
    pub(crate) span: bool,
    pub(crate) make: SharedMakeRequestId,
}

impl RequestIdLayer {
    /// `x-request-id`, trusting valid incoming ids, UUIDv7 otherwise.
    pub fn new() -> Self {
        Self {
            header: X_REQUEST_ID,
            trust_incoming: true,
            span: true,
            make: Arc::new(DefaultMakeRequestId),
        }
    }

    /// Builds the layer from its serde form.
    pub fn from_config(config: &RequestIdConfig) -> Result<Self, ConfigError> {
        let header = HeaderName::try_from(config.header.as_str()).map_err(|_| {
            ConfigError::new(format!(
                "request id header {:?} is not a header name",
                config.header
            ))
        })?;
        Ok(Self::new()
            .header(header)
            .trust_incoming(config.trust_incoming)
            .span(config.span))
    }

    /// Uses `header` instead of `x-request-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Whether valid incoming ids are kept (default true). Switch off at
    /// the edge of a system whose clients are not trusted.
    pub fn trust_incoming(mut self, trust: bool) -> Self {
        self.trust_incoming = trust;
        self
    }

    /// Whether to open a `request` span with the id (default true).
    pub fn span(mut self, span: bool) -> Self {
        self.span = span;
        self
    }

    /// Generates ids with `make` instead of UUIDv7.
    pub fn make_request_id(mut self, make: impl MakeRequestId) -> Self {
        self.make = Arc::new(make);
        self
    }
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RequestIdLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdLayer")
            .field("header", &self.header)
            .field("trust_incoming", &self.trust_incoming)
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService::new(inner, self.clone())
    }
}
