//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, `GET /config`
//! (the active configuration, secrets redacted), `GET /routes`, and `POST /reload`.
//! Keep it on loopback or a private network: it has no authentication of its own.

pub(crate) mod redact;

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::http::error::error_json;
use crate::runtime::Runtime;

type AdminResponse = http::Response<Full<Bytes>>;

/// Serves the admin API on `listener` until `shutdown` turns true. The gateway turns it
/// only after the client listeners have drained, so that readiness probes see `/readyz`
/// answer 503 while in-flight requests finish. Admin connections are tracked by
/// `tracker`, which is the admin's own (the drain does not wait for them).
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let builder = {
        let mut b =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10));
        Arc::new(b)
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let rt = runtime.clone();
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(route(&rt, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = crate::server::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn route(rt: &Arc<Runtime>, req: http::Request<Incoming>) -> AdminResponse {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            rt.metrics.render(),
        ),
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => {
            if rt.ready.load(Relaxed) {
                json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ready", "generation": rt.snapshot().generation}),
                )
            } else {
                let status = if rt.draining.load(Relaxed) {
                    "draining"
                } else {
                    "not ready"
                };
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "status": status }),
                )
            }
        }
        (&Method::GET, "/config") => {
            let snap = rt.snapshot();
            let value = redact::config(&snap.config);
            json(
                StatusCode::OK,
                serde_json::json!({"generation": snap.generation, "config": value}),
            )
        }
        (&Method::GET, "/routes") => {
            let snap = rt.snapshot();
            json(
                StatusCode::OK,
                serde_json::json!({"generation": snap.generation, "routes": snap.routes}),
            )
        }
        (&Method::GET, "/upstreams") => {
            let snap = rt.snapshot();
            let mut clusters: Vec<_> = snap.clusters.iter().collect();
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            let upstreams: Vec<serde_json::Value> = clusters.iter().map(|c| c.state()).collect();
            json(
                StatusCode::OK,
                serde_json::json!({"generation": snap.generation, "upstreams": upstreams}),
            )
        }
        (&Method::POST, "/reload") => match rt.reload().await {
            Ok(generation) => json(
                StatusCode::OK,
                serde_json::json!({"status": "reloaded", "generation": generation}),
            ),
            Err(errors) => {
                let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"error": {"status": 422, "code": "config_invalid", "message": "the new configuration was rejected; the previous one stays active", "problems": problems}}),
                )
            }
        },
        (
            _,
            "/metrics" | "/healthz" | "/readyz" | "/config" | "/routes" | "/upstreams" | "/reload",
        ) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            error_json(405, "method_not_allowed", "method not allowed", ""),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            error_json(404, "not_found", "no such admin endpoint", ""),
        ),
    }
}

fn json(status: StatusCode, mut value: serde_json::Value) -> AdminResponse {
    sort_keys(&mut value);
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    text(status, "application/json", body)
}

/// Object keys in alphabetical order, at every level (the documented admin output).
fn sort_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.sort_keys();
            m.values_mut().for_each(sort_keys);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
