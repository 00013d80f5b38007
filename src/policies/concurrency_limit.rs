//! `concurrency_limit`: at most `max` requests of a route (or of a `group` of routes)
//! in flight at once; past that, 503 `concurrency_limited` at once (no queue).
//!
//! A request holds its place from this policy until its response has been sent in full
//! (the place is a guard kept in the request context, which lives as long as the
//! response body), and gives it back when it ends in any way: answered, refused later,
//! failed, or abandoned by the client (the guard's `Drop`, so it is cancel-safe).
//! Counters of a route or group survive a reload that keeps the policy's spec.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: concurrency_limit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Requests in flight at most.
    pub max: usize,
    /// Routes naming the same group share one count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The built policy.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// A place taken; given back on drop.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The places of this request (one per `concurrency_limit` it passed).
#[derive(Debug, Clone, Default)]
struct Places(Vec<Arc<Place>>);

impl ConcurrencyLimit {
    /// Builds the policy from its spec.
    pub fn build(
        path: &str,
        spec: &ConcurrencyLimitSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        if spec.max == 0 {
            p.push(format!("{path}.max"), "must be at least 1");
        }
        // The count is shared by what has the same place (or group); a changed `max`
        // keeps the count of the requests already in flight.
        let identity = match &spec.group {
            Some(g) => format!("concurrency_limit:group:{g}"),
            None => format!("concurrency_limit:route:{}#{path}", cx.route),
        };
        Some(Self {
            max: spec.max,
            in_flight: super::state::shared(identity, || AtomicUsize::new(0)),
        })
    }

    /// Takes a place, or refuses with 503 when all are taken.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        _req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(GatewayError::ConcurrencyLimited);
        }
        let place = Arc::new(Place(self.in_flight.clone()));
        match ctx.extensions.get_mut::<Places>() {
            Some(places) => places.0.push(place),
            None => {
                ctx.extensions.insert(Places(vec![place]));
            }
        }
        Ok(Flow::Continue)
    }

    /// Nothing to do: the place is given back when the request's context is dropped.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}
