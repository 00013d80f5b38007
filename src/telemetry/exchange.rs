//! The end of an exchange: the response body the client receives is wrapped so that,
//! when it ends (or the client goes away), the request is counted in the metrics and its
//! access-log line is written, exactly once, with the bytes actually sent.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Version};
use http_body::{Frame, SizeHint};

use super::access_log::{self, AccessLog, Record};
use super::metrics::method_index;
use crate::http::Body;
use crate::pipeline::RequestCtx;
use crate::server::handler::InFlightRequest;

/// How many request body bytes were received.
pub enum BytesIn {
    /// Known from `Content-Length` (or no body).
    Known(u64),
    /// Counted as the body streams.
    Counted(Arc<AtomicU64>),
}

/// What is needed to account for one exchange when its response ends.
pub struct Exchange {
    /// The request's context, moved here after the pipeline ran.
    pub ctx: RequestCtx,
    /// The response status.
    pub status: u16,
    /// Request body size.
    pub bytes_in: BytesIn,
    /// The client's `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// Where the line goes (`None`: access log off).
    pub log: Option<Arc<AccessLog>>,
    /// Lowers the in-flight gauge when the exchange is dropped.
    _in_flight: InFlightRequest,
    bytes_out: u64,
}

impl Exchange {
    /// Starts accounting; `in_flight` was raised when the request arrived.
    pub fn new(
        ctx: RequestCtx,
        status: u16,
        bytes_in: BytesIn,
        user_agent: Option<HeaderValue>,
        log: Option<Arc<AccessLog>>,
        in_flight: InFlightRequest,
    ) -> Self {
        Self {
            ctx,
            status,
            bytes_in,
            user_agent,
            log,
            _in_flight: in_flight,
            bytes_out: 0,
        }
    }

    fn finish(&self, completed: bool) {
        let ctx = &self.ctx;
        let elapsed = ctx.started.elapsed();
        if let Some(stats) = &ctx.stats {
            stats.record(method_index(&ctx.method), self.status, elapsed);
        }
        if let Some(who) = &ctx.identity {
            match &who.consumer {
                Some(c) => c.stats.record(self.status),
                None => self._in_flight.metrics().no_consumer.record(self.status),
            }
        }
        let Some(log) = &self.log else { return };
        let bytes_in = match &self.bytes_in {
            BytesIn::Known(n) => *n,
            BytesIn::Counted(c) => c.load(Relaxed),
        };
        let line = access_log::format(&Record {
            request_id: ctx.request_id_str(),
            listener: &ctx.listener,
            route: ctx.route.as_deref().unwrap_or(""),
            upstream: ctx.upstream.as_deref().unwrap_or(""),
            endpoint: ctx.endpoint,
            method: ctx.method.as_str(),
            host: ctx.host_str(),
            path: ctx.uri.path(),
            protocol: protocol(ctx.version),
            status: self.status,
            bytes_in,
            bytes_out: self.bytes_out,
            duration: elapsed,
            upstream_duration: ctx.upstream_time,
            client_ip: ctx.client_ip,
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            consumer: ctx.consumer_name(),
            error: ctx
                .error
                .unwrap_or(if completed { "" } else { "response_incomplete" }),
            completed,
            calls: ctx
                .extensions
                .get::<access_log::CallTraces>()
                .map_or(&[], |c| &c.0),
        });
        log.write(line);
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The response body sent to the client: counts bytes and closes the exchange.
pub struct ObservedBody {
    inner: Body,
    exchange: Option<Exchange>,
    progress: Option<Arc<StreamProgress>>,
    owed: bool,
}

/// Whether a connection's client takes its HTTP/2 response bodies. hyper polls a
/// response body only while its stream has flow-control window. A body that produced a
/// frame (or has not been polled yet) is owed a poll; one that answered `Pending` is
/// waiting for its upstream and owed nothing. When polls are owed and no body of the
/// connection has been polled for a while, the client has stopped reading.
#[derive(Debug)]
pub struct StreamProgress {
    started: std::time::Instant,
    owed: AtomicU64,
    open: AtomicU64,
    last_polled_ms: AtomicU64,
}

impl Default for StreamProgress {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            owed: AtomicU64::new(0),
            open: AtomicU64::new(0),
            last_polled_ms: AtomicU64::new(0),
        }
    }
}

impl StreamProgress {
    fn touch(&self) {
        self.last_polled_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Response bodies still being sent.
    pub fn open(&self) -> u64 {
        self.open.load(Relaxed)
    }

    /// How long polls have been owed with none made; `None` when none is owed.
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        if self.owed.load(Relaxed) == 0 {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_polled_ms.load(Relaxed));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

impl ObservedBody {
    /// Wraps `inner`; `exchange` is closed when the body ends or is dropped.
    pub fn new(inner: Body, exchange: Exchange) -> Self {
        Self {
            inner,
            exchange: Some(exchange),
            progress: None,
            owed: false,
        }
    }

    /// Reports this body's progress to its connection (HTTP/2 responses).
    pub fn watched(mut self, progress: Arc<StreamProgress>) -> Self {
        progress.touch();
        progress.open.fetch_add(1, Relaxed);
        self.progress = Some(progress);
        self.owe();
        self
    }

    /// Marks this body as owed a poll (once).
    fn owe(&mut self) {
        if let (false, Some(p)) = (self.owed, &self.progress) {
            self.owed = true;
            p.owed.fetch_add(1, Relaxed);
        }
    }

    fn settle(&mut self) {
        if self.owed {
            self.owed = false;
            if let Some(p) = &self.progress {
                p.owed.fetch_sub(1, Relaxed);
            }
        }
    }

    fn close(&mut self, completed: bool) {
        if let Some(ex) = self.exchange.take() {
            ex.finish(completed);
        }
        self.settle();
        if let Some(p) = self.progress.take() {
            p.open.fetch_sub(1, Relaxed);
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(p) = &this.progress {
            p.touch();
        }
        this.settle();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_))))
            && !http_body::Body::is_end_stream(&this.inner)
        {
            this.owe();
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(ex)) = (frame.data_ref(), this.exchange.as_mut()) {
                    ex.bytes_out += data.len() as u64;
                }
                if http_body::Body::is_end_stream(&this.inner) {
                    this.close(true);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(
                    request_id = this.exchange.as_ref().map_or("", |x| x.ctx.request_id_str()),
                    error = %e,
                    "response body failed mid-stream"
                );
                if let Some(ex) = this.exchange.as_mut() {
                    ex.ctx.error.get_or_insert("upstream_body_error");
                }
                this.close(false);
            }
            Poll::Ready(None) => this.close(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        let done = http_body::Body::is_end_stream(&self.inner);
        self.close(done);
    }
}
