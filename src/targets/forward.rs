//! Forwarding one request to one endpoint of a cluster: the proxy's hot path.
//!
//! In order: hop-by-hop headers go, an endpoint is picked, the path is rewritten, `Host`
//! is chosen, `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `Via` and the request id are
//! set, and the request is sent on a pooled connection within the connect and request
//! timeouts. The response streams back with an idle timeout; its connection returns to
//! the pool only once the body was read whole. WebSocket upgrades get a connection of
//! their own and become a tunnel only after the upstream answered 101.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION, EXPECT, HOST, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{StatusCode, Version};
use tokio::time::Instant;

use crate::config::upstream::UpstreamProtocol;
use crate::config::validate::KeySource;
use crate::http::body::Side;
use crate::http::forwarded::{self, Hop, TrustedProxies};
use crate::http::{hop, Body, BodyError, GatewayError, Request, Response};
use crate::pipeline::RequestCtx;
use crate::router::rewrite::Rewrite;
use crate::telemetry::metrics::RouteStats;
use crate::upstream::balancer::PickInput;
use crate::upstream::hash::{hash64, request_key};
use crate::upstream::pool::{SendError, Sent};
use crate::upstream::{Cluster, Lease};

/// Settings shared by every forward of a snapshot.
pub struct ProxySettings {
    /// Proxies whose forwarding headers are believed.
    pub trusted: TrustedProxies,
    /// `Via` values for HTTP/1.0, HTTP/1.1 and HTTP/2 clients (`None`: no `Via`).
    pub via: Option<[HeaderValue; 3]>,
    /// Our `Via` pseudonym, for loop detection.
    pub pseudonym: String,
    /// Refuse requests already carrying our pseudonym this many times.
    pub max_hops: usize,
    /// The correlation-id header.
    pub request_id_header: HeaderName,
    /// Headers removed from every client request.
    pub internal: Arc<crate::http::internal::InternalHeaders>,
}

/// The resolved timeouts of calls from one route to one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Sending the request until the response head.
    pub request: Duration,
    /// Longest pause between reads of the upstream's response body.
    pub idle: Duration,
    /// Longest pause between reads of the client's request body, when the route, its
    /// upstream or `defaults` set `idle`; otherwise the listener's `timeouts.body_idle`.
    pub request_idle: Option<Duration>,
}

impl Timeouts {
    /// The built-in defaults: 1 s connect, 15 s request, 30 s idle.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(15),
        idle: Duration::from_secs(30),
        request_idle: None,
    };
}

/// A route's link to one upstream.
pub struct Binding {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Timeouts of calls to it from this route.
    pub timeouts: Timeouts,
    /// The route's counters for this upstream.
    pub stats: Arc<RouteStats>,
}

/// The `Host` sent upstream.
pub enum HostHeader {
    /// The client's.
    Preserve,
    /// The endpoint's configured `host:port`.
    Upstream,
    /// A fixed value.
    Fixed(HeaderValue),
}

/// How one route forwards requests.
pub struct Forward {
    /// The path rewrite.
    pub rewrite: Rewrite,
    /// The `Host` rule.
    pub host_header: HostHeader,
    /// Whether WebSocket upgrades are allowed.
    pub websocket: bool,
    /// Shared settings.
    pub settings: Arc<ProxySettings>,
}

struct Keys<'a> {
    headers: &'a http::HeaderMap,
    ctx: &'a RequestCtx,
}

impl PickInput for Keys<'_> {
    fn key(&self, source: &KeySource) -> Option<u64> {
        request_key(source, self.headers, self.ctx.client_ip).map(|k| hash64(&k))
    }
}

impl Forward {
    /// Forwards `req` to an endpoint of `to`.
    pub async fn forward(
        &self,
        ctx: &mut RequestCtx,
        req: Request,
        to: &Binding,
    ) -> Result<Response, GatewayError> {
        let (mut parts, mut body) = req.into_parts();
        let upgrade = ctx.websocket && self.websocket;
        if let (Some(stream), Some(idle)) = (body.as_stream_mut(), to.timeouts.request_idle) {
            stream.set_idle(idle);
        }
        let cluster = &to.cluster;
        ctx.upstream = Some(cluster.name.clone());
        ctx.stats = Some(to.stats.clone());
        let in_flight = cluster
            .pick(&Keys {
                headers: &parts.headers,
                ctx,
            })
            .ok_or_else(|| GatewayError::NoEndpoint {
                upstream: cluster.name.to_string(),
            })?;
        let ep = in_flight.0.clone();
        ctx.endpoint = Some(ep.addr);

        let host = match &self.host_header {
            HostHeader::Preserve => ctx.host.clone(),
            HostHeader::Upstream => {
                HeaderValue::from_str(&ep.host).unwrap_or_else(|_| ctx.host.clone())
            }
            HostHeader::Fixed(v) => v.clone(),
        };
        let path_and_query = self.path_and_query(ctx)?;
        let protocol = cluster.protocol();
        let h2 = matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2) && !upgrade;
        parts.uri = if h2 {
            Uri::builder()
                .scheme(if protocol == UpstreamProtocol::H2 {
                    "https"
                } else {
                    "http"
                })
                .authority(host.as_bytes())
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| GatewayError::BadRequest("invalid host"))?
        } else {
            Uri::from(path_and_query)
        };
        parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        self.set_headers(ctx, &mut parts.headers, host, h2, upgrade);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<crate::server::h1::OnUpgrade>()
        } else {
            None
        };
        let req = http::Request::from_parts(parts, body);

        let started = Instant::now();
        let pool = &ep.pool;
        let sent = tokio::time::timeout(to.timeouts.request, async {
            if upgrade {
                Box::pin(pool.send_upgrade(req, to.timeouts.connect))
                    .await
                    .map(Sent::Hyper)
            } else {
                pool.send(req, to.timeouts.connect).await
            }
        })
        .await;
        ctx.upstream_time = Some(started.elapsed());
        let sent = match sent {
            Err(_) => {
                cluster
                    .stats
                    .timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(GatewayError::UpstreamTimeout {
                    upstream: cluster.name.to_string(),
                });
            }
            Ok(Err(e)) => return Err(self.send_error(cluster, e)),
            Ok(Ok(r)) => r,
        };
        let mut resp = match sent {
            Sent::Own(mut parts, body) => {
                hop::strip_response(&mut parts.headers);
                let lease = Lease { in_flight };
                let body = Body::upstream_h1(body, to.timeouts.idle, lease);
                return Ok(http::Response::from_parts(parts, body));
            }
            Sent::Hyper(resp) => resp,
        };

        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut resp);
                let slot = ctx.extensions.remove::<crate::server::OpenGuard>();
                super::tunnel::spawn(client, upstream, to.timeouts.idle, (in_flight, slot));
                let (parts, _) = resp.into_parts();
                return Ok(http::Response::from_parts(parts, Body::Empty));
            }
        }
        let (mut parts, body) = resp.into_parts();
        hop::strip_response(&mut parts.headers);
        let lease = Lease { in_flight };
        let body = Body::stream_with_lease(body, Side::Upstream, to.timeouts.idle, lease);
        Ok(http::Response::from_parts(parts, body))
    }

    /// The rewritten path with the original query.
    pub fn path_and_query(&self, ctx: &RequestCtx) -> Result<PathAndQuery, GatewayError> {
        if let Rewrite::None = self.rewrite {
            if let Some(pq) = ctx.uri.path_and_query() {
                return Ok(pq.clone());
            }
        }
        let path = self.rewrite.apply(ctx.uri.path(), &ctx.params);
        let text = match ctx.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        PathAndQuery::try_from(text).map_err(|_| GatewayError::BadRequest("invalid path"))
    }

    fn set_headers(
        &self,
        ctx: &RequestCtx,
        headers: &mut http::HeaderMap,
        host: HeaderValue,
        h2: bool,
        upgrade: bool,
    ) {
        let s = &self.settings;
        if h2 {
            headers.remove(HOST);
        } else {
            headers.insert(HOST, host);
        }
        headers.remove(EXPECT);
        headers.reserve(8);
        let hop = Hop {
            peer: ctx.peer.ip(),
            peer_text: &ctx.peer_text,
            peer_trusted: ctx.peer_trusted,
            client: ctx.client_ip,
            proto: ctx.scheme,
            host: &ctx.host,
        };
        forwarded::set_forwarding_headers(headers, &hop);
        if let Some([v10, v11, v2]) = &s.via {
            let via = match ctx.version {
                Version::HTTP_2 => v2,
                Version::HTTP_10 | Version::HTTP_09 => v10,
                _ => v11,
            };
            forwarded::append_via(headers, via);
        }
        headers.insert(s.request_id_header.clone(), ctx.request_id.clone());
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
    }

    fn send_error(&self, cluster: &Cluster, e: SendError) -> GatewayError {
        use std::sync::atomic::Ordering::Relaxed;
        let upstream = cluster.name.to_string();
        let e = match e {
            SendError::Connect(cause) => return GatewayError::UpstreamConnect { upstream, cause },
            SendError::Exchange(e) => e,
            SendError::RequestBody(e) => {
                return match e.downcast_ref::<BodyError>() {
                    Some(b) => request_body_error(b),
                    None => GatewayError::BadRequest("request body could not be read"),
                }
            }
            SendError::Protocol(cause) => {
                return GatewayError::UpstreamProtocol { upstream, cause }
            }
            SendError::Reset(cause) => {
                cluster.stats.resets.fetch_add(1, Relaxed);
                return GatewayError::UpstreamReset { upstream, cause };
            }
        };
        if let Some(body) = find_body_error(&e) {
            return request_body_error(body);
        }
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            return GatewayError::UpstreamProtocol {
                upstream,
                cause: e.to_string(),
            };
        }
        cluster.stats.resets.fetch_add(1, Relaxed);
        GatewayError::UpstreamReset {
            upstream,
            cause: e.to_string(),
        }
    }
}

fn request_body_error(body: &BodyError) -> GatewayError {
    match body {
        BodyError::Idle {
            side: Side::Downstream,
            ..
        } => GatewayError::RequestTimeout,
        BodyError::TooLarge { .. } => GatewayError::PayloadTooLarge,
        _ => GatewayError::BadRequest("request body could not be read"),
    }
}

fn find_body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

/// `Via` values for a pseudonym: `1.0 name`, `1.1 name`, `2 name`.
pub fn via_values(pseudonym: &str) -> Option<[HeaderValue; 3]> {
    if pseudonym.is_empty() {
        return None;
    }
    let v = |version: &str| HeaderValue::from_str(&format!("{version} {pseudonym}")).ok();
    Some([v("1.0")?, v("1.1")?, v("2")?])
}
