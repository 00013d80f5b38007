//! The HTTP/1.1 client on turnpike's own codec ([`crate::h1`]), for HTTP/1.1 upstreams,
//! plain or over TLS.
//!
//! One exchange runs in the request's own task: the head is encoded into the
//! connection's reused buffer and written with the first body bytes, the body follows,
//! then the response head is read and parsed into the same connection's read buffer.
//! There is no connection task, channel, oneshot or wake-up per request (hyper's client
//! has all four). The response body reads from the connection as the client consumes it
//! ([`ResponseBody`]), and gives the connection back to its pool when, and only when,
//! the body ended exactly where its framing said, with nothing after it.
//!
//! Never reused: a connection after a protocol error, a timeout, a broken or unfinished
//! body (the body is dropped with it), a close-delimited or `Connection: close` response,
//! an HTTP/1.0 response, bytes beyond the response, or an answer that came before the
//! request body was sent (that answer is forwarded and the rest of the body is not sent:
//! catalogue item 85).

use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::pool::Pool;
use crate::h1::{self, ChunkedDecoder, Decoded, Framing, RequestFraming};
use crate::http::Body;

/// Read-buffer size: grown only when a head or a chunk line needs more.
const READ_CHUNK: usize = 8 * 1024;
/// Full bodies up to this size are written with the head, in one write.
const COALESCE: usize = 16 * 1024;

/// A connection's transport: plain TCP or TLS.
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    /// Reads what is there without waiting: `Ok(None)` when nothing is.
    fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match tokio_util::io::poll_read_buf(Pin::new(self), &mut cx, buf) {
            Poll::Ready(r) => r.map(Some),
            Poll::Pending => Ok(None),
        }
    }
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Writes all of `bytes` and flushes (TLS keeps records until flushed).
async fn send(io: &mut Io, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    if matches!(io, Io::Tls(_)) {
        io.flush().await?;
    }
    Ok(())
}

/// One connection to an upstream endpoint.
pub struct Conn {
    io: Io,
    /// Bytes read and not consumed yet (empty between exchanges).
    buf: BytesMut,
    /// The head write buffer, kept for the next request.
    wbuf: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection failed before any byte of a response arrived; `unsent`: nothing of
    /// the request could be written either.
    Closed { cause: String, unsent: bool },
    /// The client's request body failed (its error, as the body gave it).
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
    /// The upstream's answer is not a valid or unambiguous HTTP/1.1 response.
    Protocol(String),
    /// The connection failed while the response head was being read.
    Reset(String),
}

impl Conn {
    /// A connection over `io`.
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing to read, no EOF seen
    /// (a peek at the socket: nothing is consumed, so a TLS stream stays intact).
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        // Ready means EOF, stray bytes (a TLS alert, an unasked answer) or an error.
        self.io.tcp().poll_peek(&mut cx, &mut rb).is_pending()
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

/// Sends the request (`parts`, `body`) on `conn` and reads the response head. `pool`
/// takes the connection back when the exchange ends cleanly. An empty or small in-memory
/// body is left as it was, so that the caller can send the request again.
pub async fn exchange(
    mut conn: Conn,
    parts: &http::request::Parts,
    body: &mut Body,
    pool: Weak<Pool>,
) -> Result<(http::response::Parts, ResponseBody), ExchangeError> {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let had_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let framing = h1::request_framing(&parts.method, body.size_hint().exact(), had_length);
    let mut wbuf = std::mem::take(&mut conn.wbuf);
    wbuf.clear();
    h1::encode_request(&parts.method, target, &parts.headers, framing, &mut wbuf);
    // A body in memory goes with the head, in one write.
    let streaming = match &*body {
        Body::Empty | Body::Full(None) => false,
        Body::Full(Some(d)) if d.len() <= COALESCE => {
            wbuf.extend_from_slice(d);
            false
        }
        _ => true,
    };
    if let Err(e) = send(&mut conn.io, &wbuf).await {
        return Err(ExchangeError::Closed {
            cause: e.to_string(),
            unsent: true,
        });
    }
    conn.wbuf = wbuf;
    // An upstream may answer before it read the whole body (a 413, a 401): the answer
    // is forwarded, the rest of the body is not sent, and the connection is not reused
    // (catalogue item 85).
    let early = streaming && send_body(&mut conn, body, framing).await? == Sent::Early;
    let method = &parts.method;
    loop {
        match h1::parse_response(&mut conn.buf, method) {
            Ok(Some(head)) => {
                if head.status.is_informational() {
                    // 100 Continue (we send no Expect) and 103 Early Hints: not forwarded.
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ExchangeError::Protocol(
                            "101 to a request that asked for no upgrade".into(),
                        ));
                    }
                    continue;
                }
                let mut head = head;
                if early {
                    head.keep_alive = false;
                }
                return Ok(into_response(conn, head, pool));
            }
            Ok(None) => {}
            Err(e) => return Err(ExchangeError::Protocol(e.to_string())),
        }
        match conn.read_more().await {
            Ok(0) if conn.buf.is_empty() => {
                return Err(ExchangeError::Closed {
                    cause: "closed before a response".into(),
                    unsent: false,
                })
            }
            Ok(0) => return Err(ExchangeError::Reset("closed in the response head".into())),
            Ok(_) => {}
            Err(e) if conn.buf.is_empty() => {
                return Err(ExchangeError::Closed {
                    cause: e.to_string(),
                    unsent: false,
                })
            }
            Err(e) => return Err(ExchangeError::Reset(e.to_string())),
        }
    }
}

fn into_response(
    conn: Conn,
    head: h1::ResponseHead,
    pool: Weak<Pool>,
) -> (http::response::Parts, ResponseBody) {
    let mut resp = http::Response::new(());
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    let (parts, ()) = resp.into_parts();
    let state = match head.framing {
        Framing::None => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Box::default()),
        Framing::Close => State::Close,
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        state,
        keep_alive: head.keep_alive,
        pool,
    };
    if matches!(body.state, State::Done) {
        body.finish();
    }
    (parts, body)
}

/// How sending a request body ended.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Every byte was sent.
    Whole,
    /// The upstream began to answer first; its bytes are in the read buffer.
    Early,
}

/// Writes a streamed request body, watching the connection for an early answer.
async fn send_body(
    conn: &mut Conn,
    body: &mut Body,
    framing: RequestFraming,
) -> Result<Sent, ExchangeError> {
    let mut sent: u64 = 0;
    let broken = |e: io::Error| ExchangeError::Reset(format!("writing the request body: {e}"));
    loop {
        let frame = tokio::select! {
            biased;
            ready = conn.io.tcp().readable() => {
                let _ = ready;
                if conn.buf.capacity() - conn.buf.len() < 1024 {
                    conn.buf.reserve(READ_CHUNK);
                }
                // Through TLS when there is TLS: a record that is not data (a session
                // ticket) reads as nothing yet.
                match conn.io.read_now(&mut conn.buf) {
                    Ok(Some(0)) => return Err(ExchangeError::Reset("closed while the request body was sent".into())),
                    Ok(Some(_)) => return Ok(Sent::Early),
                    // Nothing yet (the read that said so cleared the readiness), or
                    // a TLS record that was no data: wait again.
                    Ok(None) => continue,
                    Err(e) => return Err(broken(e)),
                }
            }
            frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)) => frame,
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(ExchangeError::RequestBody(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if let RequestFraming::Length(n) = framing {
                        if sent > n {
                            return Err(ExchangeError::RequestBody(
                                "the request body is longer than its length".into(),
                            ));
                        }
                    }
                    if framing == RequestFraming::Chunked {
                        let line = format!("{:x}\r\n", data.len());
                        write_parts(&mut conn.io, &[line.as_bytes(), &data, b"\r\n"])
                            .await
                            .map_err(broken)?;
                    } else {
                        send(&mut conn.io, &data).await.map_err(broken)?;
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), RequestFraming::Chunked) =
                        (frame.into_trailers(), framing)
                    {
                        let mut out = b"0\r\n".to_vec();
                        write_fields(&trailers, &mut out);
                        out.extend_from_slice(b"\r\n");
                        send(&mut conn.io, &out).await.map_err(broken)?;
                        return Ok(Sent::Whole);
                    }
                }
            },
        }
    }
    match framing {
        RequestFraming::Chunked => send(&mut conn.io, b"0\r\n\r\n").await.map_err(broken)?,
        RequestFraming::Length(n) if sent != n => {
            return Err(ExchangeError::RequestBody(
                "the request body is shorter than its length".into(),
            ))
        }
        _ => {}
    }
    Ok(Sent::Whole)
}

async fn write_parts(io: &mut Io, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total);
    for p in parts {
        out.extend_from_slice(p);
    }
    send(io, &out).await
}

fn write_fields(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Close,
    Done,
    Failed,
}

/// An upstream response body, read from its connection as it is polled.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    pool: Weak<Pool>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("state", &self.state)
            .finish()
    }
}

/// Why a response body failed.
#[derive(Debug)]
pub struct ResponseBodyError(pub String);

impl std::fmt::Display for ResponseBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResponseBodyError {}

impl ResponseBody {
    /// The body ended where its framing said: the connection goes back to the pool
    /// when it may carry another exchange (nothing left over, keep-alive).
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                if let Some(pool) = self.pool.upgrade() {
                    pool.put_h1(conn);
                }
            }
        }
    }

    fn fail(
        &mut self,
        why: impl Into<String>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        self.state = State::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(ResponseBodyError(why.into()))))
    }

    /// Reads more bytes into the buffer: `Ok(0)` at EOF.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done | State::Failed => return Poll::Ready(None),
                State::Length(left) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(*left) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match decoder.decode(&mut conn.buf) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::End(trailers)) => {
                            this.finish();
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => return this.fail(e.to_string()),
                    }
                }
                State::Close => {
                    let Some(conn) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match this.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(format!("upstream body: {e}")),
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, State::Close) {
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("the upstream closed before the end of the body");
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Length(n) => SizeHint::with_exact(*n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Whether a request may be sent again after a reused connection closed before any
/// byte of a response: idempotent, with a body that is empty or in memory.
pub(super) fn replayable(method: &Method, body: &Body) -> bool {
    super::retry::idempotent(method) && matches!(body, Body::Empty | Body::Full(Some(_)))
}
