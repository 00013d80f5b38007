//! Resilience settings: what an upstream does when its endpoints fail (health checks,
//! outlier ejection, circuit breaker, limits, retries) and what a route does on top
//! (hedging, fallbacks). Every field has a safe default, so `retry: {}` or
//! `circuit_breaker: {}` is a complete setting. See docs/upstreams.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::route::RespondSpec;
use super::units::{Dur, Percent, Size, TextOrNumber};

/// `health_check`: active probes and passive outlier ejection.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSpec {
    /// Probes sent by the gateway on its own schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthSpec>,
    /// Ejection of endpoints that fail real traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthSpec>,
}

/// The kind of an active probe.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// An HTTP request; healthy when the status is in `expect`.
    #[default]
    Http,
    /// A TCP connect; healthy when it is accepted.
    Tcp,
    /// `grpc.health.v1.Health/Check` over HTTP/2; healthy when the answer is `SERVING`.
    Grpc,
}

/// `health_check.active`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthSpec {
    /// `http` (default), `tcp` or `grpc`.
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// The path probed (`http`).
    pub path: String,
    /// The method of the probe (`http`).
    pub method: String,
    /// The `Host` of the probe (`http`; default: the endpoint's configured address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Extra request headers of the probe (`http`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The service name asked about (`grpc`; empty: the server as a whole).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Time between probes of one endpoint (each jittered by up to 10%).
    pub interval: Dur,
    /// How long one probe may take.
    pub timeout: Dur,
    /// Consecutive passed probes that make an unhealthy endpoint healthy.
    pub healthy_after: u32,
    /// Consecutive failed probes that make a healthy endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Statuses that pass (`http`): codes (`204`) or ranges (`200-299`).
    pub expect: Vec<StatusRange>,
}

impl Default for ActiveHealthSpec {
    fn default() -> Self {
        Self {
            kind: ProbeKind::Http,
            path: "/".into(),
            method: "GET".into(),
            host: None,
            headers: BTreeMap::new(),
            service: String::new(),
            interval: Dur::secs(5),
            timeout: Dur::secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
            expect: vec![StatusRange(200, 299)],
        }
    }
}

/// A status code or an inclusive range of them, written `204` or `"200-299"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.0..=self.1).contains(&status)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let code = |t: &str| -> Result<u16, String> {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    format!("`{text}` is not a status (100-599) or a range like 200-299")
                })
        };
        match text.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (code(a)?, code(b)?);
                if a > b {
                    return Err(format!("`{text}`: the range is empty"));
                }
                Ok(Self(a, b))
            }
            None => code(text).map(|c| Self(c, c)),
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber(
            StatusRange::parse,
            "a status like 204 or a range like 200-299",
        ))
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == self.1 {
            s.serialize_u16(self.0)
        } else {
            s.serialize_str(&format!("{}-{}", self.0, self.1))
        }
    }
}

/// `health_check.passive`: outlier ejection.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthSpec {
    /// Consecutive failures (connect failures, resets, timeouts, 5xx) that eject an
    /// endpoint.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; the n-th in a row lasts n times as long.
    pub eject_for: Dur,
    /// The longest one ejection lasts; an endpoint not ejected for this long starts
    /// again from `eject_for`.
    pub max_eject_for: Dur,
    /// The largest share of an upstream's endpoints ejected at once.
    pub max_ejected: Percent,
}

impl Default for PassiveHealthSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            eject_for: Dur::secs(30),
            max_eject_for: Dur::secs(300),
            max_ejected: Percent(5000),
        }
    }
}

/// `circuit_breaker`: stop calling an upstream that fails most calls.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// The failure share over `window` that opens the breaker.
    pub failure_rate: Percent,
    /// Calls needed in the window before the rate counts.
    pub min_requests: u32,
    /// The rolling window the rate is measured over.
    pub window: Dur,
    /// How long an open breaker refuses calls before it lets probes through.
    pub open_for: Dur,
    /// Calls let through when half open; all must pass to close the breaker.
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            failure_rate: Percent(5000),
            min_requests: 20,
            window: Dur::secs(10),
            open_for: Dur::secs(15),
            half_open_probes: 3,
        }
    }
}

/// `limits`: bounded concurrency towards one upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamLimitsSpec {
    /// Requests in flight to the upstream at once (counted until the response body
    /// ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Requests that may wait for a free slot when `max_in_flight` is reached; more
    /// are refused at once.
    pub max_pending: u32,
}

/// `retry`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Extra tries after the first.
    pub attempts: u32,
    /// The failures that are retried.
    pub on: Vec<RetryOn>,
    /// The methods retried after the request may have reached the upstream.
    pub methods: RetryMethods,
    /// The pause before each retry.
    pub backoff: BackoffSpec,
    /// The cap on retries across the upstream.
    pub budget: BudgetSpec,
    /// The time one try may take to a response head (within the route's `request`
    /// timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    /// Request bodies with a `Content-Length` up to this size are read before the first
    /// try so that they can be sent again; larger and chunked bodies are streamed.
    pub buffer: Size,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: 1,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::RefusedStream,
            ],
            methods: RetryMethods::default(),
            backoff: BackoffSpec::default(),
            budget: BudgetSpec::default(),
            per_try_timeout: None,
            buffer: Size(64 << 10),
        }
    }
}

/// A failure that a retry may follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// No connection could be opened (nothing reached the upstream).
    ConnectFailure,
    /// The connection closed or reset before a whole response head.
    Reset,
    /// An HTTP/2 upstream refused the stream (nothing was processed).
    RefusedStream,
    /// The try ran out of `per_try_timeout`.
    Timeout,
    /// The upstream answered this status.
    Status(u16),
    /// The upstream answered any 5xx status.
    AnyServerError,
}

impl RetryOn {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text.trim() {
            "connect_failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "refused_stream" => Self::RefusedStream,
            "timeout" => Self::Timeout,
            "5xx" => Self::AnyServerError,
            t => match t.parse::<u16>() {
                Ok(s) if (500..=599).contains(&s) || s == 429 || s == 408 => Self::Status(s),
                _ => {
                    return Err(format!(
                        "`{text}`: use connect_failure, reset, refused_stream, timeout, 5xx, 408, 429 or a 5xx status like \"503\""
                    ))
                }
            },
        })
    }

    fn text(&self) -> String {
        match self {
            Self::ConnectFailure => "connect_failure".into(),
            Self::Reset => "reset".into(),
            Self::RefusedStream => "refused_stream".into(),
            Self::Timeout => "timeout".into(),
            Self::AnyServerError => "5xx".into(),
            Self::Status(s) => s.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber(
            RetryOn::parse,
            "a retry condition like reset or \"503\"",
        ))
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

/// Which methods are retried once a request may have reached the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RetryMethods {
    /// `idempotent`: GET, HEAD, OPTIONS, TRACE, PUT and DELETE, and any request with an
    /// `Idempotency-Key` header.
    Keyword(String),
    /// These methods only (upper case), and any request with an `Idempotency-Key`.
    List(Vec<String>),
}

impl Default for RetryMethods {
    fn default() -> Self {
        Self::Keyword("idempotent".into())
    }
}

/// `retry.backoff`: jittered exponential backoff.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffSpec {
    /// The pause before the first retry is drawn from [base/2, base]; each later one
    /// doubles, up to `max`.
    pub base: Dur,
    /// The longest pause.
    pub max: Dur,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            base: Dur::ms(25),
            max: Dur::ms(250),
        }
    }
}

impl BackoffSpec {
    /// The wait before try `n + 1` after `n` failures (n ≥ 1), without jitter:
    /// `base * 2^(n-1)`, at most `max`.
    pub fn delay(&self, n: u32) -> std::time::Duration {
        let shift = n.saturating_sub(1).min(30);
        self.base
            .0
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max.0)
            .min(self.max.0)
    }
}

/// `retry.budget`: retries across the upstream over a 10 s window may be at most
/// `ratio` of its requests, plus `min_per_second` (Finagle's retry budget).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSpec {
    /// Retries as a share of requests.
    pub ratio: Percent,
    /// Retries always allowed per second, whatever the traffic.
    pub min_per_second: u32,
}

impl Default for BudgetSpec {
    fn default() -> Self {
        Self {
            ratio: Percent(2000),
            min_per_second: 10,
        }
    }
}

/// A route's `hedge`: a second copy of a slow idempotent request.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HedgeSpec {
    /// Send another copy when no response head arrived after this long.
    pub after: Dur,
    /// Copies sent in addition to the first.
    #[serde(default = "one")]
    pub max: u32,
}

fn one() -> u32 {
    1
}

/// A route's `fallback`: what answers when the upstream cannot.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// The failures that use the fallback (default: every upstream failure).
    #[serde(default = "all_failures")]
    pub on: Vec<FallbackOn>,
    /// A response from the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    /// Another upstream that gets the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

fn all_failures() -> Vec<FallbackOn> {
    vec![FallbackOn("upstream_error".into())]
}

/// A failure name (`circuit_open`) or a status (`503`, `"5xx"`) in a fallback's `on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackOn(pub String);

impl<'de> Deserialize<'de> for FallbackOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber(
            |t| Ok(FallbackOn(t.to_string())),
            "a failure name like circuit_open or a status like \"503\"",
        ))
    }
}

impl Serialize for FallbackOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The failure names a fallback's `on` accepts, besides statuses (`"503"`) and `5xx`.
pub const FALLBACK_ON: &[&str] = &[
    "circuit_open",
    "no_healthy_endpoint",
    "no_endpoint",
    "upstream_overloaded",
    "upstream_timeout",
    "connect_failure",
    "upstream_connect_failed",
    "reset",
    "upstream_reset",
    "upstream_protocol_error",
    "upstream_error",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_and_retry_conditions_parse() {
        assert_eq!(
            StatusRange::parse("200-299").unwrap(),
            StatusRange(200, 299)
        );
        assert_eq!(StatusRange::parse("204").unwrap(), StatusRange(204, 204));
        assert!(StatusRange::parse("299-200").is_err());
        assert!(StatusRange::parse("700").is_err());
        assert_eq!(RetryOn::parse("503").unwrap(), RetryOn::Status(503));
        assert_eq!(RetryOn::parse("5xx").unwrap(), RetryOn::AnyServerError);
        assert!(
            RetryOn::parse("404").is_err(),
            "a 404 is an answer, not a failure"
        );
        assert!(RetryOn::parse("sometimes").is_err());
    }
}
