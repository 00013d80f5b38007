//! The body type that travels through the pipeline.
//!
//! One enum instead of a boxed trait object: the proxy fast path (a request body read
//! from the client, a response body read from an upstream) runs without an allocation
//! per request. Streaming bodies carry an idle timer that is only allocated when a read
//! actually has to wait, and may hold an upstream lease (the endpoint's in-flight count)
//! until the stream ends; an upstream HTTP/1.1 body gives its connection back to the pool
//! itself, only after its response was read whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::upstream::h1::ResponseBody;
use crate::upstream::Lease;

/// The error a body stream ends with. Carried as the boxed error hyper wants.
#[derive(Debug)]
pub enum BodyError {
    /// No frame arrived within the idle timeout (`side` says whose body it was).
    Idle { side: Side, after: Duration },
    /// The body grew past its limit.
    TooLarge { limit: u64 },
    /// The stream broke: connection reset, bad chunk framing, and so on.
    Broken { side: Side, cause: BoxError },
    /// Any other error from a boxed body.
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Which peer a body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Downstream,
    /// A service behind the gateway.
    Upstream,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idle { side, after } => {
                write!(f, "{side:?} body idle for {} ms", after.as_millis())
            }
            Self::TooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Self::Broken { side, cause } => write!(f, "{side:?} body broken: {cause}"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BodyError {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
pub enum Body {
    /// No body at all.
    Empty,
    /// A body already in memory (sent as one frame).
    Full(Option<Bytes>),
    /// A body streamed from a peer, with an idle timeout and an optional end hook.
    Stream(Box<StreamBody>),
    /// Anything else (transformed bodies, tests).
    Boxed(BoxBody<Bytes, BoxError>),
}

impl Body {
    /// A body holding `bytes`; an empty slice gives [`Body::Empty`].
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Self::Empty
        } else {
            Self::Full(Some(bytes))
        }
    }

    /// Streams `inner` from `side`, failing when no frame arrives within `idle`.
    pub fn stream(inner: Incoming, side: Side, idle: Duration) -> Self {
        Self::Stream(Box::new(StreamBody::new(Source::Hyper(inner), side, idle)))
    }

    /// Like [`Body::stream`], holding `lease` until the stream ends. A stream that has
    /// already ended releases the lease now and gives an empty body.
    pub fn stream_with_lease(inner: Incoming, side: Side, idle: Duration, lease: Lease) -> Self {
        Self::leased(Source::Hyper(inner), side, idle, lease)
    }

    /// A client's request body read by turnpike's own HTTP/1.1 server.
    pub fn client_h1(inner: crate::server::h1::ClientBody, idle: Duration) -> Self {
        if inner.is_end_stream() {
            return Self::Empty;
        }
        Self::Stream(Box::new(StreamBody::new(
            Source::Client(inner),
            Side::Downstream,
            idle,
        )))
    }

    /// An upstream response body of turnpike's own HTTP/1.1 client, holding `lease`
    /// (its in-flight count) until it ends; the body gives its connection back itself.
    pub fn upstream_h1(inner: ResponseBody, idle: Duration, lease: Lease) -> Self {
        Self::leased(Source::Own(inner), Side::Upstream, idle, lease)
    }

    fn leased(inner: Source, side: Side, idle: Duration, lease: Lease) -> Self {
        if inner.is_end_stream() {
            drop(lease);
            return Self::Empty;
        }
        let mut s = StreamBody::new(inner, side, idle);
        s.lease = Some(lease);
        Self::Stream(Box::new(s))
    }

    /// The streamed body, to adjust its counter, hook or limit.
    pub fn as_stream_mut(&mut self) -> Option<&mut StreamBody> {
        match self {
            Self::Stream(s) => Some(s),
            _ => None,
        }
    }
}

/// Removes from a client's trailers the fields that frame, route or authenticate a
/// request (RFC 9110 §6.5.1): a trailer must not change what was already decided.
fn sanitize_trailers(trailers: &mut http::HeaderMap) {
    use http::header::{
        AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, TE, TRAILER,
        TRANSFER_ENCODING,
    };
    for name in [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        AUTHORIZATION,
        COOKIE,
        CONTENT_TYPE,
        CONNECTION,
        TE,
        TRAILER,
    ] {
        trailers.remove(name);
    }
}

/// What a client's trailers lose before they are forwarded: the framing, routing and
/// authentication fields, and the internal identity headers (`internal`).
fn filter_client_trailers(
    trailers: &mut http::HeaderMap,
    internal: Option<&crate::http::internal::InternalHeaders>,
) {
    sanitize_trailers(trailers);
    if let Some(internal) = internal {
        internal.strip(trailers);
    }
}

/// Where a streamed body's bytes come from.
enum Source {
    /// hyper's server (client bodies) or client (HTTP/2 and TLS upstreams).
    Hyper(Incoming),
    /// turnpike's own HTTP/1.1 client.
    Own(ResponseBody),
    /// turnpike's own HTTP/1.1 server (client bodies).
    Client(crate::server::h1::ClientBody),
}

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Self::Hyper(i) => Pin::new(i)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            Self::Own(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            Self::Client(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(i) => i.is_end_stream(),
            Self::Own(b) => b.is_end_stream(),
            Self::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(i) => i.size_hint(),
            Self::Own(b) => b.size_hint(),
            Self::Client(b) => b.size_hint(),
        }
    }
}

/// A body streamed from a peer: hyper's `Incoming`, our client's or our server's body, plus an idle
/// timer, optional byte counter and optional end-of-stream hook.
pub struct StreamBody {
    inner: Source,
    side: Side,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    counter: Option<Arc<AtomicU64>>,
    lease: Option<Lease>,
    limit: Option<u64>,
    seen: u64,
    internal: Option<Arc<crate::http::internal::InternalHeaders>>,
}

impl StreamBody {
    fn new(inner: Source, side: Side, idle: Duration) -> Self {
        Self {
            inner,
            side,
            idle,
            timer: None,
            counter: None,
            lease: None,
            limit: None,
            seen: 0,
            internal: None,
        }
    }

    /// Adds every data byte read to `counter`.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.counter = Some(counter);
    }

    /// Changes the idle timeout (a route's own `timeouts.idle`).
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// Removes these internal headers from the client's trailers too.
    pub fn strip_from_trailers(&mut self, internal: Arc<crate::http::internal::InternalHeaders>) {
        self.internal = Some(internal);
    }

    /// Fails the stream once more than `limit` data bytes were read.
    pub fn limit(&mut self, limit: u64) {
        self.limit = Some(limit);
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(BodyError::Idle {
                side: self.side,
                after: idle,
            }),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(&mut self, len: usize) -> Result<(), BodyError> {
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(Instant::now() + self.idle);
        }
        self.seen += len as u64;
        if let Some(counter) = &self.counter {
            counter.fetch_add(len as u64, Ordering::Relaxed);
        }
        match self.limit {
            Some(limit) if self.seen > limit => Err(BodyError::TooLarge { limit }),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) {
        self.lease = None;
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len());
                if let Some(trailers) = frame.trailers_mut() {
                    if self.side == Side::Downstream {
                        filter_client_trailers(trailers, self.internal.as_deref());
                    }
                }
                if let Err(e) = self.progressed(len) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(cause))) => {
                self.lease = None;
                let side = self.side;
                Poll::Ready(Some(Err(Box::new(BodyError::Broken { side, cause }))))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match self.poll_timer(cx) {
                Poll::Ready(e) => {
                    self.lease = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Stream(s) => s.poll_frame(cx),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(data) => data.is_none(),
            Body::Stream(s) => s.inner.is_end_stream(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Stream(s) => s.inner.size_hint(),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::full(b)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::full(s)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::full(Bytes::from_static(s.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_body_yields_one_frame_then_ends() {
        let mut b = Body::full("hello");
        assert!(!http_body::Body::is_end_stream(&b));
        assert_eq!(http_body::Body::size_hint(&b).exact(), Some(5));
        let bytes = (&mut b).collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(http_body::Body::is_end_stream(&b));
    }

    #[test]
    fn client_trailers_lose_framing_routing_auth_and_internal_fields() {
        let mut t = http::HeaderMap::new();
        for (k, v) in [
            ("content-length", "99"),
            ("transfer-encoding", "chunked"),
            ("host", "evil"),
            ("authorization", "Bearer x"),
            ("cookie", "a=b"),
            ("content-type", "text/evil"),
            ("connection", "close"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("x-consumer-id", "spoofed"),
            ("x_consumer_id", "spoofed"),
            ("x-checksum", "1"),
            ("grpc-status", "0"),
        ] {
            t.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_static(v),
            );
        }
        let internal = crate::http::internal::InternalHeaders::new(&["x-consumer-id"]);
        filter_client_trailers(&mut t, Some(&internal));
        let mut left: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn without_internal_names_only_the_fixed_fields_go() {
        let mut t = http::HeaderMap::new();
        t.insert("x-consumer-id", http::HeaderValue::from_static("kept"));
        t.insert("host", http::HeaderValue::from_static("evil"));
        filter_client_trailers(&mut t, None);
        assert_eq!(t.len(), 1);
        assert!(t.contains_key("x-consumer-id"));
    }

    #[test]
    fn empty_bytes_make_an_empty_body() {
        assert!(matches!(Body::full(""), Body::Empty));
    }
}
