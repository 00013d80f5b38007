//! Client-facing listeners: binding, the accept loop, serving HTTP/1.1 (turnpike's own
//! server, [`h1`]) and HTTP/2 (hyper's; h2 by ALPN, h2c with prior knowledge told apart
//! by the connection's first bytes) on each connection, and graceful drain.
//!
//! On shutdown the accept loops stop first (new connections are refused), then every open
//! connection is asked to finish: HTTP/1.1 connections close after their current
//! response, HTTP/2 connections get GOAWAY. The caller waits for them up to a grace
//! period.

pub mod checks;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod handler;
pub mod io;
pub mod normalize;
pub mod refusals;
pub mod signal;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::runtime::snapshot::ListenerSettings;
use crate::runtime::Runtime;
use handler::{Conn, ConnStats};
use signal::Registry;

/// How long an abusive connection may take to read its GOAWAY before it is dropped.
const ABUSE_GRACE: Duration = Duration::from_millis(250);

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

/// The request head limit given to hyper's HTTP/2 server (its header list).
fn head_limit(l: &crate::config::ListenerSpec) -> usize {
    (l.limits.max_header_bytes.0 as usize).max(8192)
}

/// The HTTP/2 connection settings of a listener (limits, timeouts), for h2 chosen by
/// ALPN and h2c with prior knowledge. HTTP/1.1 is served by [`h1`].
pub fn http2_builder(l: &crate::config::ListenerSpec) -> auto::Builder<TokioExecutor> {
    let lim = &l.limits;
    let mut b = auto::Builder::new(TokioExecutor::new()).http2_only();
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(lim.h2_max_concurrent_streams)
        .initial_stream_window_size(lim.h2_stream_window.0 as u32)
        .initial_connection_window_size(lim.h2_connection_window.0 as u32)
        .max_send_buf_size(lim.h2_max_send_buffer.0 as usize)
        .max_header_list_size(head_limit(l) as u32)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Runs a served connection until it ends, the connection's signal closes it, or its
/// periodic checks do.
async fn drive<F, E>(
    conn: &Conn,
    settings: &ListenerSettings,
    mut served: Pin<&mut F>,
    drain: fn(Pin<&mut F>),
) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let first = settings
        .keep_alive
        .min(settings.write_idle)
        .min(settings.header_read);
    let idle = tokio::time::sleep(first);
    tokio::pin!(idle);
    let mut seen = 0;
    loop {
        tokio::select! {
            biased;
            r = served.as_mut() => return r,
            level = conn.signal.above(seen) => {
                seen = level;
                drain(served.as_mut());
                if level >= signal::ABORT {
                    // GOAWAY first (RFC 9113 §5.4.1 asks for it), then a short grace
                    // before the connection and its streams are dropped.
                    let _ = tokio::time::timeout(ABUSE_GRACE, served.as_mut()).await;
                    return Ok(());
                }
            }
            () = &mut idle, if seen < signal::ABORT => {
                let next = housekeeping(conn, settings, seen);
                idle.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
}

/// The connection's periodic checks; returns when to run them next.
///
/// - no request yet after `header_read` (a partial HTTP/2 preface, a TLS client that
///   says nothing after its handshake): closed;
/// - HTTP/2 response bodies owed a poll for `write_idle` (the client opens no window):
///   closed;
/// - nothing in flight for `keep_alive`: drained (HTTP/2 GOAWAY).
fn housekeeping(conn: &Conn, settings: &ListenerSettings, seen: u8) -> Duration {
    let stalled = conn.progress.stalled_for();
    let mut next = settings
        .write_idle
        .saturating_sub(stalled.unwrap_or_default())
        .max(Duration::from_millis(50));
    if stalled.is_some_and(|s| s >= settings.write_idle) {
        tracing::info!(peer = %conn.peer, "closing a connection whose client stopped reading its responses");
        conn.signal.raise(signal::ABORT);
    } else if conn.stats.requests() == 0 {
        let waited = conn.stats.age();
        if waited >= settings.header_read {
            tracing::debug!(peer = %conn.peer, "closing a connection that sent no request");
            conn.signal.raise(signal::ABORT);
        } else {
            next = next.min(settings.header_read - waited);
        }
    } else if seen == 0 {
        if conn.progress.open() > 0 {
            // A response still streaming (HTTP/2) keeps the connection busy.
            next = next.min(settings.keep_alive);
        } else {
            match conn.stats.idle_for(settings.keep_alive) {
                None => conn.signal.raise(signal::GRACEFUL),
                Some(left) => next = next.min(left),
            }
        }
    }
    next
}

/// What every accept loop shares with the gateway.
pub struct Shared {
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// Every live client connection, for shutdown.
    pub connections: Arc<Registry>,
    /// Where connection tasks are tracked, for drain.
    pub tracker: TaskTracker,
}

/// Accepts connections on `listener` until `shutdown` turns true. At most
/// `limits.max_connections` are open at once: past it, the loop stops accepting and new
/// connections wait in the kernel's backlog (accept backpressure).
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    index: usize,
    name: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(OpenCount::default());
    loop {
        let settings = shared.runtime.snapshot().listeners[index].settings.clone();
        while open.count.load(Relaxed) >= settings.max_connections {
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = open.freed.notified() => {}
            }
        }
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => break,
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
        open.count.fetch_add(1, Relaxed);
        let guard = OpenGuard {
            _slot: Arc::new(OpenSlot(open.clone())),
        };
        let tracker = shared.tracker.clone();
        if settings.tls.is_none() {
            // The common case, spawned with as little state as it needs.
            let conn = new_conn(&shared, index, &name, peer, "http", None, guard);
            tracker.spawn(serve_plain(stream, conn, settings));
        } else {
            let shared = shared.clone();
            let name = name.clone();
            tracker.spawn(async move {
                serve_tls_conn(stream, peer, &shared, index, name, settings, guard).await;
            });
        }
    }
}

/// A client connection's shared state.
fn new_conn(
    shared: &Shared,
    index: usize,
    name: &Arc<str>,
    peer: SocketAddr,
    scheme: &'static str,
    tls: Option<Arc<crate::tls::server::TlsInfo>>,
    slot: OpenGuard,
) -> Arc<Conn> {
    Arc::new(Conn {
        runtime: shared.runtime.clone(),
        listener: index,
        listener_name: name.clone(),
        scheme,
        peer,
        peer_text: crate::http::forwarded::ip_text(peer.ip()),
        signal: shared.connections.register(),
        stats: ConnStats::default(),
        tls,
        progress: Default::default(),
        slot,
    })
}

/// Open connections of one listener, and a wake-up when one closes.
#[derive(Default)]
struct OpenCount {
    count: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// One of a listener's open-connection slots, freed when the last holder (the
/// connection, or a WebSocket tunnel it became) lets go.
#[derive(Clone)]
pub struct OpenGuard {
    _slot: Arc<OpenSlot>,
}

struct OpenSlot(Arc<OpenCount>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Relaxed);
        self.0.freed.notify_one();
    }
}

/// Serves one TLS client connection until it closes, is drained, or goes idle.
async fn serve_tls_conn(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    index: usize,
    name: Arc<str>,
    settings: Arc<ListenerSettings>,
    slot: OpenGuard,
) {
    let metrics = shared.runtime.metrics.clone();
    metrics.connections_total.fetch_add(1, Relaxed);
    metrics.connections_active.fetch_add(1, Relaxed);
    if let Some(tls) = settings.tls.clone() {
        let made = |info| new_conn(shared, index, &name, peer, "https", Some(info), slot);
        accept_tls(stream, tls, &settings, &metrics, made).await;
    }
    metrics.connections_active.fetch_sub(1, Relaxed);
}

/// Serves a plain connection until it closes, is drained, or goes idle: HTTP/2 when its
/// first bytes are the h2 preface (prior knowledge), HTTP/1.1 otherwise. A connection
/// that sends nothing is closed at the first-byte timeout.
async fn serve_plain(mut stream: TcpStream, conn: Arc<Conn>, settings: Arc<ListenerSettings>) {
    let metrics = &conn.runtime.metrics;
    metrics.connections_total.fetch_add(1, Relaxed);
    metrics.connections_active.fetch_add(1, Relaxed);
    // Silent past the first-byte timeout, closed, or failed: `None`.
    let sniffed = match tokio::time::timeout(settings.first_byte, h1::sniff(&mut stream)).await {
        Ok(Ok((first, h2))) if !first.is_empty() => Some((first, h2)),
        _ => None,
    };
    if let Some((first, h2)) = sniffed {
        if h2 {
            Box::pin(serve_h2(stream, first, &conn, &settings)).await;
        } else {
            let mut session = h1::Session::new(h1::ClientStream::Tcp(stream), first, &settings);
            h1::serve(&mut session, &conn, &settings).await;
        }
    }
    conn.runtime
        .metrics
        .connections_active
        .fetch_sub(1, Relaxed);
}

/// The TLS handshake (after a first byte within the first-byte timeout), then
/// [`serve_tls`].
async fn accept_tls(
    stream: TcpStream,
    tls: Arc<crate::tls::server::ServerTls>,
    settings: &ListenerSettings,
    metrics: &crate::telemetry::metrics::Metrics,
    conn: impl FnOnce(Arc<crate::tls::server::TlsInfo>) -> Arc<Conn>,
) {
    let mut first = [0u8; 1];
    let first_byte = tokio::time::timeout(settings.first_byte, stream.peek(&mut first)).await;
    if !matches!(first_byte, Ok(Ok(n)) if n > 0) {
        return;
    }
    let peer = stream.peer_addr().ok();
    match tls.accept(stream, settings.handshake).await {
        Ok((stream, info)) => {
            let conn = conn(Arc::new(info));
            serve_tls(stream, &conn, settings).await;
        }
        Err(e) => {
            metrics.tls_handshake_errors.fetch_add(1, Relaxed);
            tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
        }
    }
}

/// Serves a TLS connection: HTTP/2 when ALPN chose `h2`, HTTP/1.1 when it chose
/// `http/1.1`, and either (by the first bytes) when the client named no protocol.
async fn serve_tls(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
    conn: &Arc<Conn>,
    settings: &ListenerSettings,
) {
    let (first, h2) = match conn.tls.as_ref().and_then(|t| t.alpn.as_deref()) {
        Some(b"h2") => (bytes::BytesMut::new(), true),
        Some(b"http/1.1") => (bytes::BytesMut::new(), false),
        _ => match tokio::time::timeout(settings.first_byte, h1::sniff(&mut stream)).await {
            Ok(Ok((first, h2))) if !first.is_empty() => (first, h2),
            _ => return,
        },
    };
    if h2 {
        serve_h2(stream, first, conn, settings).await;
    } else {
        let mut session =
            h1::Session::new(h1::ClientStream::Tls(Box::new(stream)), first, settings);
        h1::serve(&mut session, conn, settings).await;
    }
}

/// Serves HTTP/2 (hyper's server) on `stream`, whose first bytes `first` were already
/// read from it.
async fn serve_h2<S>(
    stream: S,
    first: bytes::BytesMut,
    conn: &Arc<Conn>,
    settings: &ListenerSettings,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(handler::handle_hyper(&conn, req).await) }
        })
    };
    let stream = h1::Prefixed {
        inner: stream,
        prefix: first.freeze(),
    };
    let io = io::WriteTimeout::new(TokioIo::new(stream), settings.write_idle);
    let served = settings.builder_h2.serve_connection(io, svc);
    tokio::pin!(served);
    if let Err(e) = drive(conn, settings, served, |c| c.graceful_shutdown()).await {
        tracing::debug!(peer = %conn.peer, error = %e, "client connection ended with an error");
    }
}
