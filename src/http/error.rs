//! `GatewayError`: every way a request can fail, in one enum.
//!
//! Each variant knows which side caused it, its HTTP status, a stable code used in logs,
//! metrics and the JSON error body, and whether a retry could help. An error becomes bytes
//! in one place only ([`GatewayError::into_response`]); internal causes are logged, never
//! sent to the client.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;

use super::{Body, Response};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    /// The client sent something the gateway refuses.
    Downstream,
    /// A service behind the gateway failed.
    Upstream,
    /// The gateway itself (configuration or an internal fault).
    Gateway,
}

/// Every failure of a request, as the client and the logs see it.
#[derive(Debug)]
pub enum GatewayError {
    /// No route matches the request.
    RouteNotFound,
    /// A route matches the path but not the method; `allow` lists the methods that would.
    MethodNotAllowed { allow: HeaderValue },
    /// The request is malformed; the text says how (it is sent to the client).
    BadRequest(&'static str),
    /// The body is larger than the route allows.
    PayloadTooLarge,
    /// The request target is longer than the listener allows.
    UriTooLong,
    /// Too many headers, or a header line or the whole head too large.
    HeadersTooLarge,
    /// An HTTP version the listener does not serve (HTTP/1.0 by default).
    VersionNotSupported,
    /// The request names a host this connection was not set up for (TLS SNI).
    Misdirected,
    /// The client stopped sending its body for longer than the idle timeout.
    RequestTimeout,
    /// The client did not send a whole request head within the header timeout.
    HeadTimeout,
    /// The request's `Expect` field asks for something other than `100-continue`.
    ExpectationFailed,
    /// The request already passed through this gateway too many times.
    LoopDetected,
    /// A policy could not authenticate the request: 401, with the `WWW-Authenticate`
    /// challenge of the scheme it expects.
    Unauthorized {
        reason: &'static str,
        challenge: Option<HeaderValue>,
    },
    /// An authentication policy cannot decide: its identity provider's keys could not
    /// be loaded (fail closed).
    AuthUnavailable,
    /// A policy refused the request: 403.
    Forbidden(&'static str),
    /// The bearer token lacks a scope the route requires: 403 with
    /// `WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750 §3.1).
    InsufficientScope,
    /// Over a rate limit: 429 with these headers (`Retry-After`, `RateLimit`, ...).
    RateLimited(Box<http::HeaderMap>),
    /// A `concurrency_limit` is full: 503.
    ConcurrencyLimited,
    /// The shared rate-limit store failed and the policy says `on_store_failure: deny`:
    /// 503 with `Retry-After`.
    RateLimitStoreUnavailable,
    /// No endpoint of the upstream can take the request.
    NoEndpoint { upstream: String },
    /// Every endpoint of the upstream fails its health checks or is ejected.
    NoHealthyEndpoint { upstream: String },
    /// The upstream's circuit breaker is open: 503 with `Retry-After`.
    CircuitOpen { upstream: String, retry_after: u64 },
    /// The upstream's `limits` are reached: 503.
    UpstreamOverloaded { upstream: String },
    /// Connecting to the upstream failed or timed out.
    UpstreamConnect { upstream: String, cause: String },
    /// The upstream did not answer within the request timeout.
    UpstreamTimeout { upstream: String },
    /// The upstream closed or reset the connection before a complete response head.
    UpstreamReset { upstream: String, cause: String },
    /// The upstream sent something that is not valid HTTP.
    UpstreamProtocol { upstream: String, cause: String },
    /// A required call of a `compose` route failed: 504 when it ran out of time, the
    /// call's own 4xx when the service answered one, 503 when the upstream cannot take
    /// calls, 502 otherwise. The body names the call and the failure.
    ComposeCall {
        call: std::sync::Arc<str>,
        cause: &'static str,
        status: StatusCode,
    },
    /// A request a `grpc` route cannot turn into its message (bad JSON, a wrong type,
    /// an unknown field): 400, the text names the place.
    InvalidRequest(String),
    /// A transcoded gRPC call ended with a non-zero `grpc-status`: the HTTP status of
    /// the standard table, the service's message and its `google.rpc.Status` details.
    Grpc {
        code: u32,
        message: String,
        details: Option<serde_json::Value>,
        headers: Box<http::HeaderMap>,
    },
    /// A message a `publish` route could not hand over (broker down, no confirm in
    /// time, blocked, refused, unroutable, outbox full): 503 with `Retry-After`, or 502
    /// for an unroutable message. The codes are the `broker_*` and `outbox_*` ones.
    Publish {
        code: &'static str,
        status: StatusCode,
        retry_after: u64,
        cause: String,
    },
    /// A fault inside the gateway.
    Internal(String),
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::RequestTimeout | Self::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            Self::LoopDetected => StatusCode::LOOP_DETECTED,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NoEndpoint { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. }
            | Self::UpstreamOverloaded { .. }
            | Self::AuthUnavailable
            | Self::ConcurrencyLimited
            | Self::RateLimitStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ComposeCall { status, .. } => *status,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Grpc { code, .. } => {
                StatusCode::from_u16(GRPC_STATUSES[(*code as usize).min(17)].1)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::Publish { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code: part of the public contract (JSON body, logs,
    /// metrics). Never change one; add a new one.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::VersionNotSupported => "http_version_not_supported",
            Self::Misdirected => "misdirected_request",
            Self::RequestTimeout | Self::HeadTimeout => "request_timeout",
            Self::ExpectationFailed => "expectation_failed",
            Self::LoopDetected => "loop_detected",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::InsufficientScope => "insufficient_scope",
            Self::RateLimited(_) => "rate_limited",
            Self::ConcurrencyLimited => "concurrency_limited",
            Self::RateLimitStoreUnavailable => "rate_limit_store_unavailable",
            Self::NoEndpoint { .. } => "no_endpoint",
            Self::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::UpstreamOverloaded { .. } => "upstream_overloaded",
            Self::AuthUnavailable => "auth_unavailable",
            Self::UpstreamConnect { .. } => "upstream_connect_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamReset { .. } => "upstream_reset",
            Self::UpstreamProtocol { .. } => "upstream_protocol_error",
            Self::ComposeCall { status, .. } if *status == StatusCode::GATEWAY_TIMEOUT => {
                "compose_call_timeout"
            }
            Self::ComposeCall { .. } => "compose_call_failed",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Grpc { code, .. } => GRPC_STATUSES[(*code as usize).min(17)].0,
            Self::Publish { code, .. } => code,
            Self::Internal(_) => "internal_error",
        }
    }

    /// Who caused the error.
    pub fn side(&self) -> ErrorSide {
        match self {
            Self::RouteNotFound
            | Self::MethodNotAllowed { .. }
            | Self::BadRequest(_)
            | Self::PayloadTooLarge
            | Self::UriTooLong
            | Self::HeadersTooLarge
            | Self::VersionNotSupported
            | Self::Misdirected
            | Self::RequestTimeout
            | Self::HeadTimeout
            | Self::ExpectationFailed
            | Self::LoopDetected
            | Self::Unauthorized { .. }
            | Self::Forbidden(_)
            | Self::InsufficientScope
            | Self::InvalidRequest(_)
            | Self::RateLimited(_) => ErrorSide::Downstream,
            Self::NoEndpoint { .. }
            | Self::NoHealthyEndpoint { .. }
            | Self::CircuitOpen { .. }
            | Self::UpstreamOverloaded { .. }
            | Self::UpstreamConnect { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. }
            | Self::ComposeCall { .. }
            | Self::Grpc { .. }
            | Self::Publish { .. }
            | Self::AuthUnavailable
            | Self::RateLimitStoreUnavailable => ErrorSide::Upstream,
            Self::Internal(_) | Self::ConcurrencyLimited => ErrorSide::Gateway,
        }
    }

    /// Whether another attempt (on another endpoint) could succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::UpstreamConnect { .. } | Self::UpstreamReset { .. } | Self::NoEndpoint { .. }
        )
    }

    /// The text sent to the client: says what happened, never why inside.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::RouteNotFound => "no route matches this request",
            Self::MethodNotAllowed { .. } => "method not allowed on this route",
            Self::BadRequest(reason) => reason,
            Self::PayloadTooLarge => "request body too large",
            Self::UriTooLong => "request target too long",
            Self::HeadersTooLarge => "request headers too large",
            Self::VersionNotSupported => "HTTP version not supported",
            Self::Misdirected => "this connection does not serve the requested host",
            Self::RequestTimeout => "request body not received in time",
            Self::HeadTimeout => "request head not received in time",
            Self::ExpectationFailed => "only the 100-continue expectation is supported",
            Self::LoopDetected => "request loop detected",
            Self::Unauthorized { reason, .. } | Self::Forbidden(reason) => reason,
            Self::InsufficientScope => "the token lacks a required scope",
            Self::RateLimited(_) => "rate limit exceeded, retry later",
            Self::ConcurrencyLimited => "too many requests in progress, retry later",
            Self::RateLimitStoreUnavailable => "rate limiting is unavailable, try again later",
            Self::NoEndpoint { .. } => "no upstream endpoint available",
            Self::NoHealthyEndpoint { .. } => "no healthy upstream endpoint available",
            Self::CircuitOpen { .. } => "the upstream service is failing; calls are paused",
            Self::UpstreamOverloaded { .. } => "the upstream service is at capacity, retry later",
            Self::AuthUnavailable => "authentication is unavailable, try again later",
            Self::UpstreamConnect { .. } => "could not connect to the upstream service",
            Self::UpstreamTimeout { .. } => "the upstream service did not answer in time",
            Self::UpstreamReset { .. } => "the upstream service closed the connection",
            Self::UpstreamProtocol { .. } => "the upstream service sent an invalid response",
            Self::ComposeCall { status, .. } if *status == StatusCode::GATEWAY_TIMEOUT => {
                "a required call did not answer in time"
            }
            Self::ComposeCall { .. } => "a required call failed",
            Self::InvalidRequest(_) => "invalid request",
            Self::Grpc { .. } => "the service refused the call",
            Self::Publish { status, .. } if *status == StatusCode::BAD_GATEWAY => {
                "the broker has no queue for this message"
            }
            Self::Publish { code, .. } if code.starts_with("outbox") => {
                "the message cannot be kept now, retry later"
            }
            Self::Publish { .. } => "the message broker cannot take messages now, retry later",
            Self::Internal(_) => "internal gateway error",
        }
    }

    /// The internal cause, for the logs only.
    pub fn cause(&self) -> Option<&str> {
        match self {
            Self::UpstreamConnect { cause, .. }
            | Self::UpstreamReset { cause, .. }
            | Self::UpstreamProtocol { cause, .. }
            | Self::Publish { cause, .. }
            | Self::Internal(cause) => Some(cause),
            _ => None,
        }
    }

    /// Renders the error as the client sees it: the status and a JSON body
    /// `{"error":{"status":..,"code":"..","message":"..","request_id":".."}}`.
    pub fn into_response(self, request_id: &str) -> Response {
        let status = self.status();
        let body = match &self {
            Self::InvalidRequest(message) => {
                error_json(status.as_u16(), self.code(), message, request_id)
            }
            Self::Grpc {
                code,
                message,
                details,
                ..
            } => {
                let mut e = serde_json::json!({
                    "status": status.as_u16(),
                    "code": self.code(),
                    "grpc_status": code,
                    "message": message,
                    "request_id": request_id,
                });
                if let Some(d) = details {
                    e["details"] = d.clone();
                }
                Bytes::from(serde_json::json!({ "error": e }).to_string())
            }
            Self::ComposeCall { call, cause, .. } => Bytes::from(
                serde_json::json!({
                    "error": {
                        "status": status.as_u16(),
                        "code": self.code(),
                        "message": self.public_message(),
                        "request_id": request_id,
                        "call": &**call,
                        "cause": cause,
                    }
                })
                .to_string(),
            ),
            _ => error_json(
                status.as_u16(),
                self.code(),
                self.public_message(),
                request_id,
            ),
        };
        let mut resp = http::Response::new(Body::full(body));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Self::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow);
            }
            Self::Unauthorized {
                challenge: Some(c), ..
            } => {
                headers.insert(WWW_AUTHENTICATE, c);
            }
            Self::RateLimited(extra) => headers.extend(*extra),
            Self::ComposeCall { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimitStoreUnavailable | Self::UpstreamOverloaded { .. } => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Publish { retry_after, .. } if retry_after > 0 => {
                headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Self::CircuitOpen { retry_after, .. } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after.max(1)),
                );
            }
            Self::Grpc { headers: extra, .. } => headers.extend(*extra),
            Self::InsufficientScope => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// The code and HTTP status of each gRPC status (index), by the table grpc-gateway and
/// Envoy use; 17 stands for any status past 16.
const GRPC_STATUSES: [(&str, u16); 18] = [
    ("grpc_ok", 200),
    ("grpc_cancelled", 499),
    ("grpc_unknown", 500),
    ("grpc_invalid_argument", 400),
    ("grpc_deadline_exceeded", 504),
    ("grpc_not_found", 404),
    ("grpc_already_exists", 409),
    ("grpc_permission_denied", 403),
    ("grpc_resource_exhausted", 429),
    ("grpc_failed_precondition", 400),
    ("grpc_aborted", 409),
    ("grpc_out_of_range", 400),
    ("grpc_unimplemented", 501),
    ("grpc_internal", 500),
    ("grpc_unavailable", 503),
    ("grpc_data_loss", 500),
    ("grpc_unauthenticated", 401),
    ("grpc_unknown", 500),
];

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())?;
        if let Some(cause) = self.cause() {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}

/// The JSON error body shared by every error response of the gateway.
pub fn error_json(status: u16, code: &str, message: &str, request_id: &str) -> Bytes {
    let value = serde_json::json!({
        "error": {
            "status": status,
            "code": code,
            "message": message,
            "request_id": request_id,
        }
    });
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn renders_stable_json_and_allow_header() {
        let err = GatewayError::MethodNotAllowed {
            allow: HeaderValue::from_static("GET, HEAD"),
        };
        assert_eq!(err.side(), ErrorSide::Downstream);
        let resp = err.into_response("req-1");
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert_eq!(v["error"]["status"], 405);
        assert_eq!(v["error"]["request_id"], "req-1");
    }

    #[test]
    fn internal_causes_stay_out_of_the_public_message() {
        let err = GatewayError::UpstreamConnect {
            upstream: "users".into(),
            cause: "connection refused (os error 111) to 10.0.0.7:80".into(),
        };
        assert_eq!(err.status(), 502);
        assert!(err.retryable());
        assert!(!err.public_message().contains("10.0.0.7"));
        assert!(err.to_string().contains("10.0.0.7"));
    }

    #[test]
    fn grpc_statuses_map_by_the_standard_table() {
        for (code, status, name) in [
            (1, 499, "grpc_cancelled"),
            (2, 500, "grpc_unknown"),
            (3, 400, "grpc_invalid_argument"),
            (4, 504, "grpc_deadline_exceeded"),
            (5, 404, "grpc_not_found"),
            (6, 409, "grpc_already_exists"),
            (7, 403, "grpc_permission_denied"),
            (8, 429, "grpc_resource_exhausted"),
            (9, 400, "grpc_failed_precondition"),
            (10, 409, "grpc_aborted"),
            (11, 400, "grpc_out_of_range"),
            (12, 501, "grpc_unimplemented"),
            (13, 500, "grpc_internal"),
            (14, 503, "grpc_unavailable"),
            (15, 500, "grpc_data_loss"),
            (16, 401, "grpc_unauthenticated"),
            (42, 500, "grpc_unknown"),
        ] {
            let e = GatewayError::Grpc {
                code,
                message: String::new(),
                details: None,
                headers: Box::default(),
            };
            assert_eq!((e.status().as_u16(), e.code()), (status, name), "{code}");
        }
    }

    #[test]
    fn timeouts_are_504_and_not_retryable() {
        let err = GatewayError::UpstreamTimeout {
            upstream: "users".into(),
        };
        assert_eq!(err.status(), 504);
        assert_eq!(err.code(), "upstream_timeout");
        assert!(!err.retryable());
    }
}
