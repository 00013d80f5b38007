//! Keep-alive connections to one endpoint: a stack of idle HTTP/1.1 connections, or one
//! shared HTTP/2 connection.
//!
//! HTTP/1.1 runs on turnpike's own client ([`super::h1`]): a connection goes back to the
//! stack only when its response body ended exactly where its framing said, so a
//! connection whose exchange broke (client gone, body error, timeout, protocol error) is
//! never reused. Idle connections older than the pool's idle timeout, or closed by the
//! upstream (a peek when taken), are not reused. A request whose pooled connection turns
//! out closed before it answered is sent once more on a fresh one when that is safe:
//! nothing was written, or it is idempotent with an empty or in-memory body. HTTP/2 and
//! WebSocket handshakes use hyper's client.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::upstream::UpstreamProtocol;
use crate::http::Body;
use crate::telemetry::metrics::UpstreamStats;

/// Why a request to an endpoint failed.
#[derive(Debug)]
pub enum SendError {
    /// No TCP connection (refused, unreachable, or the connect timeout passed).
    Connect(String),
    /// The connection failed during the exchange, before a complete response head.
    Exchange(hyper::Error),
    /// The client's request body failed while it was sent (own HTTP/1.1 client).
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
    /// The upstream's answer is invalid or ambiguous (own HTTP/1.1 client).
    Protocol(String),
    /// The connection failed before a complete response head (own HTTP/1.1 client).
    Reset(String),
}

/// A response head from an endpoint, with its body still on the connection.
pub enum Sent {
    /// From hyper's client (HTTP/2, WebSocket handshakes): nothing is pooled by the
    /// body.
    Hyper(http::Response<Incoming>),
    /// From turnpike's own HTTP/1.1 client: the body gives its connection back itself.
    Own(http::response::Parts, super::h1::ResponseBody),
}

impl Sent {
    /// The response status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Hyper(r) => r.status().as_u16(),
            Self::Own(p, _) => p.status.as_u16(),
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// HTTP/1.1, h2c or h2.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoint, with the name to verify.
    pub tls: Option<Arc<PoolTls>>,
    /// Idle connections kept.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// TLS settings of one endpoint's connections.
#[derive(Debug)]
pub struct PoolTls {
    /// The upstream's client config.
    pub tls: crate::tls::client::UpstreamTls,
    /// SNI and the name verified in the certificate.
    pub name: rustls::pki_types::ServerName<'static>,
}

struct IdleConn {
    conn: super::h1::Conn,
    since: Instant,
}

/// The connections to one endpoint.
pub struct Pool {
    addr: SocketAddr,
    config: PoolConfig,
    idle_own: Mutex<VecDeque<IdleConn>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    stats: Arc<UpstreamStats>,
}

impl Pool {
    /// An empty pool for the endpoint at `addr`.
    pub fn new(addr: SocketAddr, config: PoolConfig, stats: Arc<UpstreamStats>) -> Arc<Self> {
        Arc::new(Self {
            addr,
            config,
            idle_own: Mutex::new(VecDeque::new()),
            h2: tokio::sync::Mutex::new(None),
            stats,
        })
    }

    /// Idle HTTP/1.1 connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle_own.lock().map_or(0, |v| v.len())
    }

    /// Sends `req`: HTTP/1.1 (plain or TLS) on turnpike's own client, HTTP/2 on hyper's.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Sent, SendError> {
        match self.config.protocol {
            UpstreamProtocol::Http1 => self.send_own(req, connect_timeout).await,
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                Box::pin(self.send_h2(req, connect_timeout))
                    .await
                    .map(Sent::Hyper)
            }
        }
    }

    /// Whether the endpoint speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(
            self.config.protocol,
            UpstreamProtocol::H2c | UpstreamProtocol::H2
        )
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.config.tls.is_some()
    }

    /// Sends the request `parts` with `body`, leaving both with the caller, so that a
    /// failed try can be sent again: the own HTTP/1.1 client reads `parts` in place and
    /// leaves an in-memory body as it was; for HTTP/2 the head is copied and the body
    /// taken (an in-memory one cloned).
    pub async fn send_parts(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: &mut Body,
        connect_timeout: Duration,
    ) -> Result<Sent, SendError> {
        match self.config.protocol {
            UpstreamProtocol::Http1 => self.send_own_parts(parts, body, connect_timeout).await,
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                // Connected first: a body is taken only once it can be sent.
                let mut tx = Box::pin(self.h2_sender(connect_timeout)).await?;
                let body = match body {
                    Body::Full(Some(b)) => Body::Full(Some(b.clone())),
                    other => std::mem::replace(other, Body::Empty),
                };
                let mut req = http::Request::new(body);
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                tx.send_request(req)
                    .await
                    .map(Sent::Hyper)
                    .map_err(SendError::Exchange)
            }
        }
    }

    async fn send_own(
        self: &Arc<Self>,
        req: http::Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Sent, SendError> {
        let (parts, mut body) = req.into_parts();
        self.send_own_parts(&parts, &mut body, connect_timeout)
            .await
    }

    async fn send_own_parts(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: &mut Body,
        connect_timeout: Duration,
    ) -> Result<Sent, SendError> {
        use super::h1::{exchange, replayable, Conn, ExchangeError};
        let mut first_try = true;
        loop {
            let idle = if first_try { self.take_own() } else { None };
            let (conn, reused) = match idle {
                Some(c) => (c, true),
                None => (
                    Conn::new(Box::pin(self.connect_own(connect_timeout)).await?),
                    false,
                ),
            };
            match exchange(conn, parts, body, Arc::downgrade(self)).await {
                Ok((head, body)) => return Ok(Sent::Own(head, body)),
                // A pooled connection the upstream had closed: once more on a new one,
                // when nothing was written or the request can be sent again.
                Err(ExchangeError::Closed { unsent, .. })
                    if reused && (unsent || replayable(&parts.method, body)) =>
                {
                    self.stats.stale_retries.fetch_add(1, Relaxed);
                    first_try = false;
                }
                Err(ExchangeError::Closed { cause, .. } | ExchangeError::Reset(cause)) => {
                    return Err(SendError::Reset(cause))
                }
                Err(ExchangeError::Protocol(cause)) => return Err(SendError::Protocol(cause)),
                Err(ExchangeError::RequestBody(e)) => return Err(SendError::RequestBody(e)),
            }
        }
    }

    /// The most recent idle connection that is still open and not too old; a pooled
    /// connection found closed counts as a stale one.
    fn take_own(&self) -> Option<super::h1::Conn> {
        loop {
            let entry = self.idle_own.lock().ok()?.pop_back()?;
            if entry.since.elapsed() > self.config.idle_timeout {
                continue;
            }
            if entry.conn.is_usable() {
                return Some(entry.conn);
            }
            self.stats.stale_retries.fetch_add(1, Relaxed);
        }
    }

    /// Takes back a connection whose exchange ended cleanly.
    pub(super) fn put_h1(&self, conn: super::h1::Conn) {
        let now = Instant::now();
        let Ok(mut idle) = self.idle_own.lock() else {
            return;
        };
        if idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) > self.config.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.config.max_idle {
            idle.push_back(IdleConn { conn, since: now });
        }
    }

    /// Sends a WebSocket handshake on a connection of its own (never pooled), with
    /// upgrades enabled.
    pub async fn send_upgrade(
        &self,
        req: http::Request<Body>,
        connect_timeout: Duration,
    ) -> Result<http::Response<Incoming>, SendError> {
        let mut tx = Box::pin(self.connect_h1(connect_timeout, true)).await?;
        tx.send_request(req).await.map_err(SendError::Exchange)
    }

    async fn connect_tcp(&self, connect_timeout: Duration) -> Result<TcpStream, SendError> {
        let result = tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr)).await;
        let stream = match result {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats.connect_errors.fetch_add(1, Relaxed);
                return Err(SendError::Connect(format!("{}: {e}", self.addr)));
            }
            Err(_) => {
                self.stats.connect_errors.fetch_add(1, Relaxed);
                return Err(SendError::Connect(format!(
                    "{}: connect timeout after {} ms",
                    self.addr,
                    connect_timeout.as_millis()
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        self.stats.connections_opened.fetch_add(1, Relaxed);
        Ok(stream)
    }

    /// A connection for the own HTTP/1.1 client: TCP, then TLS when configured.
    async fn connect_own(&self, connect_timeout: Duration) -> Result<super::h1::Io, SendError> {
        Ok(match self.connect_io(connect_timeout).await? {
            Io::Plain(io) => super::h1::Io::Plain(io.into_inner()),
            Io::Tls(io) => super::h1::Io::Tls(io.into_inner()),
        })
    }

    /// TCP, then TLS when configured, all within `connect_timeout`.
    async fn connect_io(&self, connect_timeout: Duration) -> Result<Io, SendError> {
        let started = tokio::time::Instant::now();
        let stream = self.connect_tcp(connect_timeout).await?;
        let Some(tls) = &self.config.tls else {
            return Ok(Io::Plain(TokioIo::new(stream)));
        };
        let left = connect_timeout.saturating_sub(started.elapsed());
        let handshake = tls.tls.connect(tls.name.clone(), stream);
        match tokio::time::timeout(left, handshake).await {
            Ok(Ok(s)) => Ok(Io::Tls(TokioIo::new(Box::new(s)))),
            Ok(Err(e)) => {
                self.stats.connect_errors.fetch_add(1, Relaxed);
                Err(SendError::Connect(format!("{}: {e}", self.addr)))
            }
            Err(_) => {
                self.stats.connect_errors.fetch_add(1, Relaxed);
                Err(SendError::Connect(format!(
                    "{}: TLS handshake not done within the connect timeout ({} ms)",
                    self.addr,
                    connect_timeout.as_millis()
                )))
            }
        }
    }

    async fn connect_h1(
        &self,
        connect_timeout: Duration,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        match self.connect_io(connect_timeout).await? {
            Io::Plain(io) => self.handshake_h1(io, upgrades).await,
            Io::Tls(io) => self.handshake_h1(io, upgrades).await,
        }
    }

    async fn handshake_h1<I>(
        &self,
        io: I,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, SendError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Exchange)?;
        let addr = self.addr;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        }
        Ok(tx)
    }

    async fn send_h2(
        &self,
        req: http::Request<Body>,
        connect_timeout: Duration,
    ) -> Result<http::Response<Incoming>, SendError> {
        let mut tx = self.h2_sender(connect_timeout).await?;
        tx.send_request(req).await.map_err(SendError::Exchange)
    }

    /// The shared HTTP/2 connection, opened when there is none, ready for a stream.
    async fn h2_sender(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let mut tx = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let tx = Box::pin(self.connect_h2(connect_timeout)).await?;
                    *slot = Some(tx.clone());
                    tx
                }
            }
        };
        tx.ready().await.map_err(SendError::Exchange)?;
        Ok(tx)
    }

    async fn connect_h2(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        match self.connect_io(connect_timeout).await? {
            Io::Plain(io) => self.handshake_h2(io).await,
            Io::Tls(io) => self.handshake_h2(io).await,
        }
    }

    async fn handshake_h2<I>(&self, io: I) -> Result<http2::SendRequest<Body>, SendError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(io)
            .await
            .map_err(SendError::Exchange)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        Ok(tx)
    }
}

/// Whether an HTTP/2 failure is the upstream refusing the stream (`REFUSED_STREAM`,
/// or a GOAWAY that did not cover it): nothing was processed, any method may be retried.
pub fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // A stream above a graceful GOAWAY's last stream id was never processed.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        source = s.source();
    }
    false
}

/// A connection to an endpoint, plain or TLS.
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(TokioIo<Box<tokio_rustls::client::TlsStream<TcpStream>>>),
}
