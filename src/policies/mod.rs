//! The policy registry: one variant per policy, in the spec enum (what YAML says) and in
//! the runtime enum (what runs). The YAML `type`, the module name, `kind()` and the metric
//! label are the same word.
//!
//! Adding a policy: `NAME.rs` with its `Spec` (serde, unknown keys refused), its build
//! step (every problem with its field path) and its `on_request`/`on_response`; one
//! variant and one arm each below; an end-to-end test in `tests/it/`; `docs/policies/NAME.md`.

pub mod headers;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// A policy as written in the config: `{type: headers, ...}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicySpec {
    /// Set, append and remove request and response headers.
    Headers(headers::HeadersSpec),
}

/// What a policy may know when it is built for one route.
pub struct BuildCx<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The route's path parameter names.
    pub params: &'a [String],
}

impl PolicySpec {
    /// The policy type, as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Headers(_) => "headers",
        }
    }

    /// The optional `name` given to this instance (used by `skip_policies`).
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Headers(s) => s.name.as_deref(),
        }
    }

    /// Builds the runtime policy for one route; problems go to `p` under `path`.
    pub fn build(&self, path: &str, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Policy> {
        match self {
            Self::Headers(s) => headers::Headers::build(path, s, cx, p).map(Policy::Headers),
        }
    }
}

/// A built policy, shared by every request of a snapshot.
pub enum Policy {
    /// See [`headers`].
    Headers(headers::Headers),
    /// Records calls and answers as told: for the pipeline's own tests.
    #[cfg(test)]
    Probe(crate::pipeline::tests::Probe),
}

impl Policy {
    /// The policy type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Headers(_) => "headers",
            #[cfg(test)]
            Self::Probe(_) => "probe",
        }
    }

    /// The request phase: `Continue`, answer (`Respond`), or refuse (`Err`).
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        match self {
            Self::Headers(p) => p.on_request(ctx, req),
            #[cfg(test)]
            Self::Probe(p) => p.on_request(),
        }
    }

    /// The response phase, for every response (errors and local answers included).
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        match self {
            Self::Headers(p) => p.on_response(ctx, resp),
            #[cfg(test)]
            Self::Probe(p) => p.on_response(resp),
        }
    }
}
