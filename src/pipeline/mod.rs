//! The policy pipeline of a route, and the contract every policy relies on:
//!
//! 1. `on_request` runs in config order; the first `Flow::Respond` or `Err` ends the
//!    request phase; later policies and the target are skipped.
//! 2. `on_response` runs for every policy whose `on_request` ran (the one that stopped the
//!    walk included), in reverse order, for local replies and errors too.
//! 3. The target is not in the policy list, so "a policy after the target" cannot be
//!    written.
//! 4. An error becomes a response in one place only ([`GatewayError::into_response`]);
//!    its code is recorded in the context for the access log and metrics.
//! 5. Built policies are immutable and shared by every request; per-request data lives
//!    in [`RequestCtx`].
//! 6. Policies are cancel-safe: when the client goes away the request future is dropped,
//!    so anything counted on entry must be released by a guard's `Drop`.
//! 7. Refusals with a standard status (401, 403, 413, 429) are errors; `Flow::Respond`
//!    is for real answers (cache hit, preflight, redirect, mock).
//!
//! Dispatch is static: policies are a closed enum (`policies::Policy`), so running a
//! pipeline allocates nothing per policy.

pub mod ctx;
pub mod template;

pub use ctx::RequestCtx;

use std::sync::Arc;

use crate::http::{GatewayError, Request, Response};
use crate::policies::Policy;
use crate::targets::Target;

/// What a policy's request phase decided.
pub enum Flow {
    /// Go on to the next policy, then the target.
    Continue,
    /// Answer with this response; later policies and the target are skipped.
    Respond(Response),
}

/// The policies and the target of one route, compiled once per snapshot.
pub struct Pipeline {
    policies: Box<[Policy]>,
    target: Arc<Target>,
}

impl Pipeline {
    /// A pipeline running `policies`, then `target`.
    pub fn new(policies: Vec<Policy>, target: Arc<Target>) -> Self {
        Self {
            policies: policies.into_boxed_slice(),
            target,
        }
    }

    /// The policies, in request order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs the request through the policies and the target, then the response back
    /// through the policies that ran. Never fails: errors become their responses here.
    pub async fn run(&self, ctx: &mut RequestCtx, mut req: Request) -> Response {
        let mut entered = 0;
        let mut outcome = None;
        for policy in self.policies.iter() {
            entered += 1;
            match policy.on_request(ctx, &mut req).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(resp)) => {
                    outcome = Some(Ok(resp));
                    break;
                }
                Err(e) => {
                    outcome = Some(Err(e));
                    break;
                }
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => self.target.call(ctx, req).await,
        };
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err(e) => error_response(ctx, e),
        };
        for policy in self.policies[..entered].iter().rev() {
            policy.on_response(ctx, &mut resp);
        }
        resp
    }
}

/// Turns an error into its response, logging the internal cause with the request id.
pub fn error_response(ctx: &mut RequestCtx, e: GatewayError) -> Response {
    ctx.error = Some(e.code());
    if let Some(cause) = e.cause() {
        tracing::warn!(
            request_id = ctx.request_id_str(),
            route = ctx.route.as_deref().unwrap_or(""),
            code = e.code(),
            cause,
            "request failed"
        );
    }
    e.into_response(ctx.request_id_str())
}

#[cfg(test)]
pub mod tests;
