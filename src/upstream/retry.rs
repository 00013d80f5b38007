//! Retry policy, retry budget and concurrency limits of an upstream.
//!
//! A retry is allowed when the failure is one the policy lists, tries are left, the
//! request can be sent again, and the budget has room. What "can be sent again" means:
//! - a failure where nothing reached the upstream (`connect_failure`, `refused_stream`)
//!   may be retried for any method;
//! - any other failure (a reset after the request was written, a timeout, a 5xx answer)
//!   only for the policy's `methods` (by default the idempotent ones), or a request with
//!   an `Idempotency-Key` header;
//! - and only when the body is still at hand: empty, in memory, or read whole before the
//!   first try (a `Content-Length` up to `retry.buffer`), or never sent.
//!
//! The budget (Finagle's): over a rolling 10 s window, retries (and hedges) may be at
//! most `ratio` of the upstream's requests, plus `min_per_second` for each second of
//! the window, so a failing upstream gets a bounded extra load, not a retry storm.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use tokio::sync::Notify;

use super::breaker::Window;
use crate::config::{BudgetSpec, RetryMethods, RetryOn, RetrySpec, UpstreamLimitsSpec};

/// Why a try failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection.
    Connect,
    /// Closed or reset after the request may have been written.
    Reset,
    /// An HTTP/2 upstream refused the stream.
    RefusedStream,
    /// `per_try_timeout` ran out.
    Timeout,
    /// The upstream answered this status.
    Status(u16),
}

impl Failure {
    /// Whether nothing of the request reached the upstream's application.
    pub fn never_processed(self) -> bool {
        matches!(self, Self::Connect | Self::RefusedStream)
    }

    /// The index of the reason in `turnpike_upstream_retries_total`.
    pub fn reason_index(self) -> usize {
        match self {
            Self::Connect => 0,
            Self::Reset => 1,
            Self::RefusedStream => 2,
            Self::Timeout => 3,
            Self::Status(_) => 4,
        }
    }
}

/// A compiled `retry`.
pub struct RetryPolicy {
    /// Extra tries after the first.
    pub attempts: u32,
    on: Vec<RetryOn>,
    methods: Option<Vec<Method>>,
    base: Duration,
    max: Duration,
    /// The time one try may take.
    pub per_try_timeout: Option<Duration>,
    /// The largest request body read whole for replay.
    pub buffer: u64,
}

const BUDGET_WINDOW_MS: u64 = 10_000;

impl RetryPolicy {
    /// Compiles `spec`.
    pub fn new(spec: &RetrySpec) -> Self {
        Self {
            attempts: spec.attempts,
            on: spec.on.clone(),
            methods: match &spec.methods {
                RetryMethods::Keyword(_) => None,
                RetryMethods::List(list) => Some(
                    list.iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                ),
            },
            base: spec.backoff.base.0,
            max: spec.backoff.max.0,
            per_try_timeout: spec.per_try_timeout.map(|d| d.0),
            buffer: spec.buffer.0,
        }
    }

    /// Whether a request may be sent again after it may have reached the upstream.
    pub fn repeatable(&self, method: &Method, headers: &HeaderMap) -> bool {
        let listed = match &self.methods {
            None => idempotent(method),
            Some(list) => list.contains(method),
        };
        listed || headers.contains_key(&IDEMPOTENCY_KEY)
    }

    /// Whether the policy lists `failure`.
    pub fn covers(&self, failure: Failure) -> bool {
        self.on.iter().any(|on| match (on, failure) {
            (RetryOn::ConnectFailure, Failure::Connect)
            | (RetryOn::Reset, Failure::Reset)
            | (RetryOn::RefusedStream, Failure::RefusedStream)
            | (RetryOn::Timeout, Failure::Timeout)
            // The gateway would answer 504 for a timed-out try.
            | (RetryOn::Status(504), Failure::Timeout) => true,
            (RetryOn::Status(s), Failure::Status(f)) => *s == f,
            (RetryOn::AnyServerError, Failure::Status(f)) => (500..=599).contains(&f),
            (RetryOn::AnyServerError, Failure::Timeout) => true,
            _ => false,
        })
    }

    /// The status answers the policy retries.
    pub fn retries_status(&self, status: u16) -> bool {
        self.covers(Failure::Status(status))
    }

    /// The pause before retry number `n` (1 for the first): drawn from
    /// [d/2, d] where d = base × 2^(n-1), at most `max`.
    pub fn backoff(&self, n: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.max);
        let half = d / 2;
        half + Duration::from_micros(fastrand::u64(..=(d - half).as_micros() as u64))
    }
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The retry budget of an upstream.
pub struct Budget {
    window: Window,
    ratio: u64,
    reserve: u64,
}

impl Budget {
    /// A budget of `spec`.
    pub fn new(spec: &BudgetSpec) -> Self {
        Self {
            window: Window::new(BUDGET_WINDOW_MS),
            ratio: u64::from(spec.ratio.0),
            reserve: u64::from(spec.min_per_second) * BUDGET_WINDOW_MS / 1000,
        }
    }

    /// Counts one request.
    pub fn deposit(&self, now: u64) {
        self.window.add(now, 1, 0);
    }

    /// Takes leave for one retry or hedge; false when the budget is spent.
    pub fn withdraw(&self, now: u64) -> bool {
        let (requests, retries) = self.window.sums(now);
        if (retries + 1) * 10_000 <= self.reserve * 10_000 + requests * self.ratio {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }
}

/// The header by which a client says a request may be sent twice.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// A compiled `limits`: a counter of requests in flight (one atomic add on the fast
/// path) and a wait list for at most `max_pending` requests.
pub struct Limits {
    inner: Arc<LimitsInner>,
}

struct LimitsInner {
    in_flight: AtomicUsize,
    max: usize,
    waiting: AtomicUsize,
    max_pending: usize,
    freed: Notify,
}

/// A request's slot under `limits`, given back when dropped.
pub struct Slot(Arc<LimitsInner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        if self.0.waiting.load(Relaxed) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Refused by `limits`.
pub struct Overloaded;

impl LimitsInner {
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Limits {
    /// Compiles `spec`; `None` when it caps nothing.
    pub fn new(spec: &UpstreamLimitsSpec) -> Option<Self> {
        let max = spec.max_in_flight?;
        Some(Self {
            inner: Arc::new(LimitsInner {
                in_flight: AtomicUsize::new(0),
                max: max as usize,
                waiting: AtomicUsize::new(0),
                max_pending: spec.max_pending as usize,
                freed: Notify::new(),
            }),
        })
    }

    /// A slot for one request if one is free now.
    pub fn try_now(&self) -> Option<Slot> {
        self.inner.try_take()
    }

    /// A slot for one request: at once, or after waiting at most `wait` when fewer than
    /// `max_pending` requests are waiting already.
    pub async fn acquire(&self, wait: Duration) -> Result<Slot, Overloaded> {
        let inner = &self.inner;
        if let Some(s) = inner.try_take() {
            return Ok(s);
        }
        if inner.waiting.fetch_add(1, Relaxed) >= inner.max_pending {
            inner.waiting.fetch_sub(1, Relaxed);
            return Err(Overloaded);
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        let _w = Waiting(&inner.waiting);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(s) = inner.try_take() {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Overloaded);
            }
        }
    }

    /// Requests in flight now, and waiting now.
    pub fn load(&self) -> (usize, usize) {
        (
            self.inner.in_flight.load(Relaxed),
            self.inner.waiting.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Percent;

    fn policy(yaml: &str) -> RetryPolicy {
        RetryPolicy::new(&serde_saphyr::from_str::<RetrySpec>(yaml).unwrap())
    }

    #[test]
    fn the_budget_caps_retries_at_the_ratio_plus_the_reserve() {
        let budget = Budget::new(&BudgetSpec {
            ratio: Percent(2000),
            min_per_second: 1,
        });
        for _ in 0..100 {
            budget.deposit(5);
        }
        // 20% of 100 requests plus 1/s over 10 s.
        let granted = (0..100).filter(|_| budget.withdraw(5)).count();
        assert_eq!(granted, 30);
    }

    #[test]
    fn conditions_methods_and_backoff() {
        let p = policy(
            r#"{on: [reset, "503"], methods: [GET, POST], backoff: {base: 100ms, max: 300ms}}"#,
        );
        assert!(p.covers(Failure::Reset));
        assert!(p.covers(Failure::Status(503)));
        assert!(!p.covers(Failure::Status(502)));
        assert!(!p.covers(Failure::Connect));
        assert!(p.repeatable(&Method::POST, &HeaderMap::new()));
        assert!(!p.repeatable(&Method::PUT, &HeaderMap::new()));
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert!(p.repeatable(&Method::PATCH, &h));
        for n in 1..6 {
            let d = p.backoff(n);
            let cap = Duration::from_millis((100u64 << (n - 1)).min(300));
            assert!(d >= cap / 2 && d <= cap, "try {n}: {d:?}");
        }
        let p = policy("{on: [\"504\"]}");
        assert!(p.covers(Failure::Timeout), "a timed-out try is a 504");
        let d = policy("{}");
        assert!(!d.repeatable(&Method::POST, &HeaderMap::new()));
        assert!(Failure::Connect.never_processed());
    }
}
