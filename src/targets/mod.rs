//! Targets: what ends a route. `upstream` forwards to a cluster, `split` forwards to one
//! of several clusters by weight, `respond` answers from the gateway, `compose` makes
//! several calls and answers with one JSON document.
//! (gRPC transcoding and publishing will be targets too.)

pub mod compose;
pub mod forward;
pub mod respond;
pub mod split;
pub mod tunnel;

use crate::http::{GatewayError, Request, Response};
use crate::pipeline::RequestCtx;

pub use forward::{Binding, Forward, HostHeader, ProxySettings, Timeouts};

/// What answers a route.
pub enum Target {
    /// Forward to one upstream.
    Upstream {
        /// How requests are forwarded.
        forward: Forward,
        /// The upstream and its call settings.
        binding: Binding,
    },
    /// Forward to one of several upstreams by weight.
    Split {
        /// How requests are forwarded.
        forward: Forward,
        /// The weighted choice.
        split: split::Split,
    },
    /// Answer from the gateway.
    Respond(respond::Respond),
    /// Several calls, one JSON answer.
    Compose(compose::Compose),
}

impl Target {
    /// Produces the response for a request that passed every policy.
    pub async fn call(&self, ctx: &mut RequestCtx, req: Request) -> Result<Response, GatewayError> {
        match self {
            Target::Upstream { forward, binding } => forward.forward(ctx, req, binding).await,
            Target::Split { forward, split } => {
                let binding = split.choose(ctx, req.headers());
                forward.forward(ctx, req, binding).await
            }
            Target::Respond(r) => Ok(r.call(ctx)),
            Target::Compose(c) => c.call(ctx, req).await,
        }
    }

    /// A one-line description, for `turnpike explain` and `GET /routes`.
    pub fn describe(&self) -> String {
        match self {
            Target::Upstream { binding, .. } => format!("upstream `{}`", binding.cluster.name),
            Target::Split { split, .. } => format!("split {}", split.describe()),
            Target::Respond(r) => format!("respond {}", r.status()),
            Target::Compose(c) => c.describe(),
        }
    }

    /// How the path is rewritten, when the target forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match self {
            Target::Upstream { forward, .. } | Target::Split { forward, .. } => Some(forward),
            Target::Respond(_) | Target::Compose(_) => None,
        }
    }
}
