//! The rejections of the idempotency layer, as problem responses.

use http::{HeaderValue, StatusCode, header::RETRY_AFTER};

use crate::key::KeyError;
use crate::reject::{GrpcCode, Problem};

/// Why a request was not executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// 400: the key is missing where required.
    MissingKey,
    /// 400: the key is malformed.
    BadKey(&'static str),
    /// 400: whose key it is cannot be told (why, from the scope).
    ScopeUnknown(KeyError),
    /// 400: the request body could not be read.
    BadBody(String),
    /// 413: the request body is over the limit.
    TooLarge(usize),
    /// 409: the same key is being executed.
    InFlight,
    /// 422: the key was used for a different request.
    Mismatch,
    /// 503: the store failed and the policy is fail-closed.
    StoreDown,
    /// 410, replayed to duplicates: the request ran but its response was
    /// not kept (over the limit, or its body failed).
    NotKept,
}

const TYPE: &str = "https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/";

impl From<Rejection> for Problem {
    fn from(rejection: Rejection) -> Self {
        let bad = |detail: String| {
            Problem::new(StatusCode::BAD_REQUEST, "Bad Request")
                .detail(detail)
                .grpc_code(GrpcCode::InvalidArgument)
        };
        match rejection {
            Rejection::MissingKey => {
                bad("this endpoint requires an Idempotency-Key header".into()).type_uri(TYPE)
            }
            Rejection::BadKey(why) => bad(why.into()).type_uri(TYPE),
            Rejection::ScopeUnknown(why) => bad(format!(
                "idempotency scope unknown: an Idempotency-Key is kept per client, and this \
                 request does not say which client it is ({why})"
            ))
            .type_uri(TYPE),
            Rejection::BadBody(why) => bad(format!("the request body could not be read: {why}")),
            Rejection::TooLarge(limit) => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "Content Too Large")
                    .detail(format!(
                        "idempotent requests may have at most {limit} bytes of body"
                    ))
                    .grpc_code(GrpcCode::ResourceExhausted)
            }
            Rejection::InFlight => Problem::new(StatusCode::CONFLICT, "Conflict")
                .detail("a request with this Idempotency-Key is being processed; retry later")
                .type_uri(TYPE)
                .grpc_code(GrpcCode::Aborted)
                .header(RETRY_AFTER, HeaderValue::from_static("1")),
            Rejection::Mismatch => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content")
                    .detail("this Idempotency-Key was used for a different request")
                    .type_uri(TYPE)
                    .grpc_code(GrpcCode::FailedPrecondition)
            }
            Rejection::NotKept => Problem::new(StatusCode::GONE, "Gone")
                .detail(
                    "the request with this Idempotency-Key was executed, but its response \
                     was not kept (too large, or it failed); it will not run again",
                )
                .type_uri(TYPE)
                .grpc_code(GrpcCode::FailedPrecondition),
            Rejection::StoreDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .detail("idempotency cannot be guaranteed right now; retry later")
                    .grpc_code(GrpcCode::Unavailable)
                    .header(RETRY_AFTER, HeaderValue::from_static("1"))
            }
        }
    }
}
