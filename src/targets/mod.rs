//! Targets: what ends a route. `upstream` forwards to a cluster, `split` forwards to one
//! of several clusters by weight, `respond` answers from the gateway, `compose` makes
//! several calls and answers with one JSON document.
//! `grpc` transcodes REST/JSON to gRPC, `publish` turns the request into a message on a
//! broker.

pub mod compose;
pub mod forward;
pub mod grpc;
pub mod publish;
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
    /// REST/JSON transcoded to gRPC.
    Grpc(grpc::Grpc),
    /// The request published as a message.
    Publish(publish::Publish),
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
            Target::Grpc(g) => g.call(ctx, req).await,
            Target::Publish(p) => p.call(ctx, req).await,
        }
    }

    /// A one-line description, for `turnpike explain` and `GET /routes`.
    pub fn describe(&self) -> String {
        match self {
            Target::Upstream { binding, .. } => format!("upstream `{}`", binding.cluster.name),
            Target::Split { split, .. } => format!("split {}", split.describe()),
            Target::Respond(r) => format!("respond {}", r.status()),
            Target::Compose(c) => c.describe(),
            Target::Grpc(g) => g.describe(),
            Target::Publish(p) => p.describe(),
        }
    }

    /// The generated bindings of a `grpc` target (`GET /routes`).
    pub fn bindings(&self) -> Vec<String> {
        match self {
            Target::Grpc(g) => g.rules().iter().map(|r| r.describe()).collect(),
            _ => Vec::new(),
        }
    }

    /// How the path is rewritten, when the target forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match self {
            Target::Upstream { forward, .. } | Target::Split { forward, .. } => Some(forward),
            Target::Respond(_) | Target::Compose(_) | Target::Grpc(_) | Target::Publish(_) => None,
        }
    }
}
