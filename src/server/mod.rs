//! Client-facing listeners: binding, the accept loop, serving HTTP/1.1 and HTTP/2 (h2c
//! with prior knowledge) on each connection, and graceful drain.
//!
//! On shutdown the accept loops stop first (new connections are refused), then every open
//! connection is asked to finish: HTTP/1.1 connections close after their current
//! response, HTTP/2 connections get GOAWAY. The caller waits for them up to a grace
//! period.

pub mod handler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::runtime::Runtime;
use handler::Conn;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Opens a listening socket with `SO_REUSEADDR` and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The HTTP/1.1 + HTTP/2 connection settings of client listeners.
pub fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    b
}

/// Accepts connections on `listener` until `shutdown` turns true; connections are
/// tracked by `tracker` so that the caller can wait for them to drain.
pub async fn accept_loop(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    index: usize,
    name: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
) {
    let builder = Arc::new(http_builder());
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            runtime: runtime.clone(),
            listener: index,
            listener_name: name.clone(),
            scheme: "http",
            peer,
            peer_text: crate::http::forwarded::ip_text(peer.ip()),
        });
        tracker.spawn(serve(stream, conn, builder.clone(), shutdown.clone()));
    }
}

/// Serves one client connection until it closes, or drains it on shutdown.
async fn serve(
    stream: TcpStream,
    conn: Arc<Conn>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = conn.runtime.metrics.clone();
    metrics.connections_total.fetch_add(1, Relaxed);
    metrics.connections_active.fetch_add(1, Relaxed);
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handler::handle(&conn, req).await) }
        })
    };
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = crate::server::stopped(&mut shutdown) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
    }
    metrics.connections_active.fetch_sub(1, Relaxed);
}
