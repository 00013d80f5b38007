//! The listener's HTTP/1.1 server, on turnpike's own codec ([`crate::h1`]).
//!
//! One task per connection runs [`serve`]: read a head, hand the request to
//! [`handler::handle`] in the same task, write the response, and again. Nothing is
//! spawned, sent over a channel or woken per request.
//!
//! Memory: while a connection waits for its next request it holds its socket, an empty
//! read buffer (none allocated), its timer and the small state of this loop. The read
//! buffer is allocated when bytes are ready to be read (plain TCP: readiness first, then
//! the buffer) and freed when the connection goes idle with nothing left in it; the
//! per-request state (the handler's future) is boxed, so it is not part of the idle
//! task either.
//!
//! A request body is read by the body itself ([`ClientBody`]) as the pipeline consumes
//! it: it takes the connection's read half and buffer with it, and gives them back when
//! it ends exactly where its framing said. A body that did not end (refused before it was
//! read, broken, too large) means the connection closes after the response, with a short
//! lingering read so that the client's unread bytes do not turn the close into a reset
//! that destroys the response.
//!
//! Refusals of the head (400, 414, 431, 417, 505) and the header timeout (408) get the
//! JSON error body, an access-log line and a metric ([`super::refusals`]). While a request
//! is handled, the connection keeps reading (up to one head's worth of pipelined bytes):
//! a client that closes its side has gone, and its request is cancelled, upstream call
//! included, as hyper and nginx do.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::handler::{self, ClientIn, Conn};
use super::io::WriteTimeout;
use super::signal;
use crate::h1::{self, ChunkedDecoder, Decoded, HeadLimits, RequestFraming};
use crate::http::GatewayError;
use crate::runtime::snapshot::ListenerSettings;
use crate::telemetry::exchange::ObservedBody;

/// The first read buffer of a request: enough for most heads, and small enough for the
/// allocator's per-thread cache (glibc's tcache ends at 1032 bytes).
const HEAD_CHUNK: usize = 1024;
/// Read-buffer growth once a head or a body needs more.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before a write.
const COALESCE: usize = 64 * 1024;
/// What the write buffer starts with: a response head and a small body (in the
/// allocator's per-thread cache, as `HEAD_CHUNK`).
const HEAD_RESERVE: usize = 1024;
/// How long, and how much, a closing connection reads and drops of what its client
/// still sends.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// A client connection's transport.
pub enum ClientStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    fn split(self) -> (Reader, Writer) {
        match self {
            Self::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Reader::Tls(r), Writer::Tls(w))
            }
        }
    }

    fn unsplit(r: Reader, w: Writer) -> Option<Self> {
        match (r, w) {
            (Reader::Tcp(r), Writer::Tcp(w)) => r.reunite(w).ok().map(Self::Tcp),
            (Reader::Tls(r), Writer::Tls(w)) => Some(Self::Tls(Box::new(r.unsplit(w)))),
            _ => None,
        }
    }
}

macro_rules! delegate_io {
    ($t:ident, $($v:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$v(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
    };
}

macro_rules! delegate_write {
    ($t:ident, $($v:ident),+) => {
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $(Self::$v(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$v(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$v(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
        }
    };
}

/// The read half of a client connection.
pub enum Reader {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}
delegate_io!(Reader, Tcp, Tls);

/// The write half of a client connection.
pub enum Writer {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    /// Handed over (to a WebSocket tunnel): writes fail.
    Gone,
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::Gone => Poll::Ready(Ok(())),
        }
    }
}
delegate_io!(ClientStream, Tcp, Tls);
delegate_write!(ClientStream, Tcp, Tls);

/// A connection's read side: the read half and the bytes read and not consumed yet.
pub struct Inbound {
    reader: Reader,
    buf: BytesMut,
}

impl Inbound {
    /// Reads more bytes into the buffer (`Ok(0)`: EOF). On plain TCP no buffer is
    /// allocated until the socket is readable, and an empty buffer is freed when
    /// nothing is, so that a waiting connection holds none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            if let Reader::Tcp(r) = &self.reader {
                if let Err(e) = ready!(r.as_ref().poll_read_ready(cx)) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(HEAD_CHUNK);
        } else if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_CHUNK);
        }
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.reader), cx, &mut self.buf);
        if polled.is_pending() {
            self.release();
        }
        polled
    }

    /// Frees the buffer when it holds nothing.
    fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// Where a request body leaves the connection's read side when it is done with it:
/// the read side, and whether the body ended where its framing said.
type Home = Arc<Mutex<Option<(Inbound, bool)>>>;

/// A request body read from the client connection as it is polled.
pub struct ClientBody {
    inbound: Option<Inbound>,
    state: BodyState,
    home: Home,
    /// Asks the connection to send `100 Continue` (on the first poll).
    expect: Option<Arc<Notify>>,
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Done,
    Failed,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub struct ClientBodyError(pub &'static str);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ClientBodyError {}

impl ClientBody {
    fn new(
        inbound: Inbound,
        framing: RequestFraming,
        home: Home,
        expect: Option<Arc<Notify>>,
    ) -> Self {
        let state = match framing {
            RequestFraming::None | RequestFraming::Length(0) => BodyState::Done,
            RequestFraming::Length(n) => BodyState::Length(n),
            RequestFraming::Chunked => BodyState::Chunked(Box::default()),
        };
        let mut body = Self {
            inbound: Some(inbound),
            state,
            home,
            expect,
        };
        if matches!(body.state, BodyState::Done) {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.state = BodyState::Done;
        self.give_back(true);
    }

    fn give_back(&mut self, whole: bool) {
        if let Some(inbound) = self.inbound.take() {
            if let Ok(mut home) = self.home.lock() {
                *home = Some((inbound, whole));
            }
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.state = BodyState::Failed;
        self.give_back(false);
        Poll::Ready(Some(Err(ClientBodyError(why))))
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        if let Some(ask) = this.expect.take() {
            ask.notify_one();
        }
        loop {
            let Some(inbound) = this.inbound.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyState::Done | BodyState::Failed => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !inbound.buf.is_empty() {
                        let n = (inbound.buf.len() as u64).min(*left) as usize;
                        let data = inbound.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut inbound.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        this.finish();
                        if trailers.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(_) => return this.fail("malformed chunked request body"),
                },
            }
            match inbound.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return this.fail("the client connection failed"),
                Poll::Ready(Ok(0)) => {
                    return this.fail("the client closed the connection before the end of its body")
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Length(n) => SizeHint::with_exact(*n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A client connection after `101 Switching Protocols`: its transport, with the bytes
/// the client sent after its request head read first.
pub type Upgraded = Prefixed<ClientStream>;

/// In a request's extensions when it asks for an upgrade: resolves to the client's
/// connection once the `101` was written (the connection's loop hands it over).
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// Waits for the connection; `None` when the response was not a `101` or the
    /// connection failed first.
    pub async fn connection(self) -> Option<Upgraded> {
        let rx = self.0.lock().ok()?.take()?;
        rx.await.ok()
    }
}

/// The response writer: the write half with its stall timeout, and a reused buffer.
struct Out {
    io: WriteTimeout<Writer>,
    buf: Vec<u8>,
    tls: bool,
}

impl Out {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        if self.tls {
            self.io.flush().await?;
        }
        Ok(())
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.send(&buf).await;
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Frees the buffer (the connection goes idle).
    fn release(&mut self) {
        if self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }
}

/// A connection's state between requests: everything [`serve`] keeps, in one value that
/// the connection's future holds in place (an async fn's arguments stay in its future
/// for its whole life, so the state is passed in, not rebuilt from them).
pub struct Session {
    inbound: Option<Inbound>,
    out: Out,
    limits: HeadLimits,
    home: Option<Home>,
    seen: u8,
}

impl Session {
    /// A session on `stream`, whose first bytes `first` were already read from it.
    pub fn new(stream: ClientStream, first: BytesMut, settings: &ListenerSettings) -> Self {
        let tls = matches!(stream, ClientStream::Tls(_));
        let (reader, writer) = stream.split();
        Self {
            inbound: Some(Inbound { reader, buf: first }),
            out: Out {
                io: WriteTimeout::new(writer, settings.write_idle),
                buf: Vec::new(),
                tls,
            },
            limits: HeadLimits {
                head: settings.max_header_bytes,
                target: settings.max_uri,
                fields: settings.max_header_count.min(h1::request::MAX_FIELDS),
            },
            home: None,
            seen: 0,
        }
    }
}

/// Serves HTTP/1.1 on a session until the connection closes, is drained or goes idle.
pub async fn serve(s: &mut Session, conn: &Arc<Conn>, settings: &ListenerSettings) {
    // One timer for the connection's life, armed for the earliest deadline it may have
    // and moved only when it fires early (see `read_head`): no timer-wheel work per
    // request.
    let timer = tokio::time::sleep(settings.header_read.min(settings.keep_alive));
    tokio::pin!(timer);
    // What ends the loop is acted on after it: nothing matched in it stays alive across
    // an await, so the connection's future keeps no request head while it waits.
    let end = loop {
        let Some(inb) = s.inbound.as_mut() else {
            break Next::Drop;
        };
        let head = match read_head(
            inb,
            &mut s.out,
            conn,
            settings,
            s.limits,
            &mut s.seen,
            timer.as_mut(),
        )
        .await
        {
            Ok(head) => head,
            Err(Close::Quiet) => break Next::Drop,
            Err(Close::Linger) => match s.inbound.take() {
                Some(inb) => break Next::Linger(inb),
                None => break Next::Drop,
            },
        };
        let Some(inb) = s.inbound.take() else {
            break Next::Drop;
        };
        // The request's state, boxed: the connection's task stays small while it waits
        // for the next request.
        match Box::pin(exchange(head, inb, s, conn)).await {
            Next::Keep(mut inb) => {
                inb.release();
                s.out.release();
                s.inbound = Some(inb);
            }
            other => break other,
        }
    };
    match end {
        Next::Upgrade(inb, tx) => {
            let early = inb.buf.freeze();
            let writer = std::mem::replace(
                &mut s.out.io,
                WriteTimeout::new(Writer::Gone, Duration::ZERO),
            );
            if let Some(stream) = ClientStream::unsplit(inb.reader, writer.into_inner()) {
                let _ = tx.send(Prefixed {
                    inner: stream,
                    prefix: early,
                });
            }
        }
        Next::Linger(inb) => Box::pin(linger(inb, &mut s.out)).await,
        Next::Close => {
            let _ = s.out.io.shutdown().await;
        }
        Next::Keep(_) | Next::Drop => {}
    }
}

/// What a connection does after an exchange.
enum Next {
    /// Read the next request.
    Keep(Inbound),
    /// Hand the connection to the tunnel (a `101` was written).
    Upgrade(Inbound, oneshot::Sender<Upgraded>),
    /// Close, reading for a moment what the client still sends.
    Linger(Inbound),
    /// Close (FIN).
    Close,
    /// Drop the connection now (the client left, the write failed, abort).
    Drop,
}

/// One exchange: the request handed to the handler, the response written.
async fn exchange(head: h1::RequestHead, inb: Inbound, s: &mut Session, conn: &Arc<Conn>) -> Next {
    let Session {
        out,
        home,
        seen,
        limits,
        ..
    } = s;
    let method = head.method.clone();
    let version = head.version;
    let asked_close = !head.keep_alive;
    let (upgrade_tx, on_upgrade) = if head.headers.contains_key(UPGRADE) {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(OnUpgrade(Arc::new(Mutex::new(Some(rx))))))
    } else {
        (None, None)
    };
    let expect = (head.expect_continue && head.framing != RequestFraming::None)
        .then(|| Arc::new(Notify::new()));
    let mut request = http::Request::new(());
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    if let Some(u) = on_upgrade {
        request.extensions_mut().insert(u);
    }
    let (parts, ()) = request.into_parts();
    // The read side stays here (no body) or goes with the body.
    let (mut here, body) = match head.framing {
        RequestFraming::None => (Some(inb), ClientIn::Empty),
        framing => {
            let home = home.get_or_insert_with(Default::default).clone();
            (
                None,
                ClientIn::Own(ClientBody::new(inb, framing, home, expect.clone())),
            )
        }
    };
    // Pinned here, once: passed on by reference, the handler's future is not stored twice.
    let handling = handler::handle(conn, parts, body);
    tokio::pin!(handling);
    let Some(resp) =
        await_response(handling, &mut here, out, conn, &expect, seen, limits.head).await
    else {
        return Next::Drop;
    };
    // The read side, back: a body that did not end where its framing said leaves
    // bytes of the client's that must never be read as the next request.
    let (inb, whole) = match here.take() {
        Some(inb) => (Some(inb), true),
        None => match home.as_ref().and_then(|h| h.lock().ok()?.take()) {
            Some((inb, whole)) => (Some(inb), whole),
            None => (None, false),
        },
    };
    let (parts, body) = resp.into_parts();
    let upgrading = upgrade_tx.is_some() && parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let keep = whole
        && !asked_close
        && *seen < signal::GRACEFUL
        && !closes(&parts.headers)
        && inb.is_some();
    let written = write_response(
        out, parts, body, &method, version, keep, upgrading, conn, seen,
    )
    .await;
    match (written, inb, upgrade_tx) {
        (Ok(true), Some(inb), Some(tx)) if upgrading => Next::Upgrade(inb, tx),
        (Ok(true), Some(inb), _) if keep && conn.signal.level() < signal::GRACEFUL => {
            Next::Keep(inb)
        }
        (Ok(_), Some(inb), _) if !whole => Next::Linger(inb),
        (Ok(_), _, _) => Next::Close,
        (Err(_), _, _) => Next::Drop,
    }
}

/// How a connection ends without another request.
enum Close {
    /// Nothing more to say (EOF, idle, drained, a failed socket).
    Quiet,
    /// A refusal was written; the client may still be sending.
    Linger,
}

/// Reads the next request head: parsed, refused (answered), or the connection ends
/// (EOF, the keep-alive or header timeout, the drain signal).
#[allow(clippy::too_many_arguments)]
async fn read_head(
    inb: &mut Inbound,
    out: &mut Out,
    conn: &Conn,
    settings: &ListenerSettings,
    limits: HeadLimits,
    seen: &mut u8,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Result<h1::RequestHead, Close> {
    let waiting_from = Instant::now();
    // The first head's time counts from the accept; later ones from their first byte.
    let mut head_from = if conn.stats.requests() == 0 {
        Some(
            waiting_from
                .checked_sub(conn.stats.age())
                .unwrap_or(waiting_from),
        )
    } else {
        None
    };
    loop {
        if !inb.buf.is_empty() {
            let refused = match h1::parse_request(&mut inb.buf, limits) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {
                    head_from.get_or_insert_with(Instant::now);
                    None
                }
                Err(refusal) => Some(match refusal.status.as_u16() {
                    414 => GatewayError::UriTooLong,
                    431 => GatewayError::HeadersTooLarge,
                    505 => GatewayError::VersionNotSupported,
                    417 => GatewayError::ExpectationFailed,
                    _ => GatewayError::BadRequest(refusal.reason),
                }),
            };
            // Refusals are rare: their state is boxed, not part of every connection's.
            if let Some(e) = refused {
                Box::pin(refuse(out, conn, e)).await;
                return Err(Close::Linger);
            }
        }
        if *seen >= signal::GRACEFUL && inb.buf.is_empty() {
            return Err(Close::Quiet);
        }
        let deadline = match head_from {
            Some(t) => t + settings.header_read,
            None => waiting_from + settings.keep_alive,
        };
        // The timer may fire early (it is not moved per request): it is moved then, to
        // the deadline that holds now. One that would fire late is moved earlier.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            level = conn.signal.above(*seen) => {
                *seen = level;
                if level >= signal::ABORT {
                    return Err(Close::Quiet);
                }
            }
            read = std::future::poll_fn(|cx| inb.poll_fill(cx)) => match read {
                Ok(0) | Err(_) => return Err(Close::Quiet),
                Ok(_) => {}
            },
            () = timer.as_mut() => {
                if Instant::now() < deadline {
                    timer.as_mut().reset(deadline);
                    continue;
                }
                if inb.buf.is_empty() {
                    return Err(Close::Quiet);
                }
                Box::pin(refuse(out, conn, GatewayError::HeadTimeout)).await;
                return Err(Close::Linger);
            }
        }
    }
}

/// Answers a refused head with its JSON error, logs and counts it.
async fn refuse(out: &mut Out, conn: &Conn, e: GatewayError) {
    let status = e.status();
    let code = e.code();
    let id = crate::telemetry::request_id::generate();
    let resp = e.into_response(id.to_str().unwrap_or(""));
    let (mut parts, body) = resp.into_parts();
    parts.headers.insert(
        conn.runtime.snapshot().settings.request_id_header.clone(),
        id,
    );
    let body = match body {
        crate::http::Body::Full(Some(b)) => b,
        _ => Bytes::new(),
    };
    out.buf.clear();
    encode_head(
        &mut out.buf,
        status,
        &parts.headers,
        ResponseFraming::Length(body.len() as u64),
        Version::HTTP_11,
        false,
        false,
    );
    out.buf.extend_from_slice(&body);
    let _ = out.flush_buf().await;
    super::refusals::record(conn, status.as_u16(), code, conn.stats.age());
}

/// Waits for the handler's response while watching the connection: the drain signal,
/// `100 Continue` owed to the body, and (the read side being here) the client's close.
async fn await_response<F>(
    mut handling: Pin<&mut F>,
    here: &mut Option<Inbound>,
    out: &mut Out,
    conn: &Conn,
    expect: &Option<Arc<Notify>>,
    seen: &mut u8,
    max_buffered: usize,
) -> Option<http::Response<ObservedBody>>
where
    F: std::future::Future<Output = http::Response<ObservedBody>>,
{
    let mut continued = false;
    loop {
        let watch_client = here.as_ref().is_some_and(|i| i.buf.len() < max_buffered);
        tokio::select! {
            biased;
            resp = handling.as_mut() => return Some(resp),
            level = conn.signal.above(*seen) => {
                *seen = level;
                if level >= signal::ABORT {
                    return None;
                }
            }
            () = async { expect.as_ref().expect("guarded").notified().await }, if expect.is_some() && !continued => {
                continued = true;
                if out.send(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                    return None;
                }
            }
            read = std::future::poll_fn(|cx| match here.as_mut() {
                Some(i) => i.poll_fill(cx),
                None => Poll::Pending,
            }), if watch_client => match read {
                // The client is gone: its request is cancelled (the handler's future,
                // its upstream call with it, is dropped).
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Whether the response's own `Connection` field says close (the handler sets it).
fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes the status line and fields. Framing fields and `Connection` are the writer's:
/// those in `headers` are left out, except on a `101` (its `Connection: upgrade`) and
/// a `Content-Length` on responses that never have a body (HEAD, 304).
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    version: Version,
    keep: bool,
    upgrading: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_length = framing == ResponseFraming::None && status != StatusCode::NO_CONTENT;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING
            || (name == CONTENT_LENGTH && !keep_length)
            || (name == CONNECTION && !upgrading)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::None | ResponseFraming::Close => {}
    }
    if !upgrading {
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once per second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                c.1.copy_from_slice(text.as_bytes());
                c.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&c.1);
    });
}

/// Writes the response: the head (with the first body bytes when they are ready), then
/// the body as it comes. `Ok(true)`: written whole, as framed.
#[allow(clippy::too_many_arguments)]
async fn write_response(
    out: &mut Out,
    parts: http::response::Parts,
    mut body: ObservedBody,
    method: &Method,
    version: Version,
    keep: bool,
    upgrading: bool,
    conn: &Conn,
    seen: &mut u8,
) -> io::Result<bool> {
    let status = parts.status;
    let bodyless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        ResponseFraming::None
    } else if let Some(n) = body.size_hint().exact() {
        ResponseFraming::Length(n)
    } else if version == Version::HTTP_11 {
        ResponseFraming::Chunked
    } else {
        ResponseFraming::Close
    };
    let keep = keep && framing != ResponseFraming::Close;
    out.buf.clear();
    // One allocation for a head and a small body (the buffer was freed while idle).
    out.buf.reserve(HEAD_RESERVE);
    encode_head(
        &mut out.buf,
        status,
        &parts.headers,
        framing,
        version,
        keep,
        upgrading,
    );
    drop(parts);
    if bodyless {
        // Whatever a bodyless response's body holds is not sent (RFC 9110 §6.4.1); it
        // is polled out so that the exchange is accounted as complete.
        while let Some(Some(Ok(_))) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).now_or_never()
        {}
        drop(body);
        out.flush_buf().await?;
        return Ok(true);
    }
    let mut sent: u64 = 0;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .now_or_never()
        {
            Some(frame) => frame,
            None => {
                // Not ready: what is gathered goes out first (a streamed response's
                // head and first bytes reach the client now, not with the next chunk).
                out.flush_buf().await?;
                tokio::select! {
                    biased;
                    level = conn.signal.above(*seen) => {
                        *seen = level;
                        if level >= signal::ABORT {
                            return Ok(false);
                        }
                        continue;
                    }
                    frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame,
                }
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(_)) => {
                // The body failed mid-stream: what was sent stays unterminated, so the
                // client sees an incomplete response, never a complete wrong one.
                out.flush_buf().await?;
                return Ok(false);
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            ResponseFraming::Length(n) if sent > n => {
                out.flush_buf().await?;
                return Ok(false);
            }
            ResponseFraming::Chunked => {
                out.buf
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                put(out, &data).await?;
                out.buf.extend_from_slice(b"\r\n");
            }
            _ => put(out, &data).await?,
        }
        if out.buf.len() >= COALESCE {
            out.flush_buf().await?;
        }
    }
    let whole = match framing {
        ResponseFraming::Chunked => {
            out.buf.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                for (name, value) in t {
                    out.buf.extend_from_slice(name.as_str().as_bytes());
                    out.buf.extend_from_slice(b": ");
                    out.buf.extend_from_slice(value.as_bytes());
                    out.buf.extend_from_slice(b"\r\n");
                }
            }
            out.buf.extend_from_slice(b"\r\n");
            true
        }
        ResponseFraming::Length(n) => sent == n,
        _ => true,
    };
    out.flush_buf().await?;
    Ok(whole)
}

/// Adds `data` to what is written next: copied when small, written directly (after
/// what is gathered) when large.
async fn put(out: &mut Out, data: &Bytes) -> io::Result<()> {
    if out.buf.len() + data.len() <= COALESCE {
        out.buf.extend_from_slice(data);
        return Ok(());
    }
    out.flush_buf().await?;
    out.send(data).await
}

/// Closes a connection whose client may still be sending: the write side first (the
/// client sees the end of the response), then what still arrives is read and dropped
/// for a moment, so that the close is not a reset that destroys the response.
async fn linger(mut inb: Inbound, out: &mut Out) {
    let _ = out.io.shutdown().await;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match inb.reader.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// The bytes that start an HTTP/2 connection with prior knowledge.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a connection until it is clear whether they start the
/// HTTP/2 preface; returns them and whether they do.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(BytesMut, bool)> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((buf, false));
        }
        if n == H2_PREFACE.len() {
            return Ok((buf, true));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((buf, false));
        }
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    /// The stream.
    pub inner: S,
    /// What is read first.
    pub prefix: Bytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(status: u16, headers: &[(&str, &str)], framing: ResponseFraming, keep: bool) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            framing,
            Version::HTTP_11,
            keep,
            status == 101,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_writer_owns_the_framing_fields() {
        let h = head(
            200,
            &[
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("connection", "keep-alive"),
                ("x-a", "1"),
            ],
            ResponseFraming::Length(5),
            true,
        );
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(
            h.contains("content-length: 5\r\n") && !h.contains("99"),
            "{h}"
        );
        assert!(
            !h.contains("transfer-encoding") && !h.contains("connection"),
            "{h}"
        );
        assert!(
            h.contains("x-a: 1\r\n") && h.contains("date: ") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
        let h = head(200, &[], ResponseFraming::Chunked, false);
        assert!(
            h.contains("transfer-encoding: chunked\r\n") && h.contains("connection: close\r\n"),
            "{h}"
        );
        // A HEAD or 304 keeps the representation's length; a 204 has none.
        let h = head(304, &[("content-length", "7")], ResponseFraming::None, true);
        assert!(h.contains("content-length: 7\r\n"), "{h}");
        let h = head(204, &[("content-length", "0")], ResponseFraming::None, true);
        assert!(!h.contains("content-length"), "{h}");
        let h = head(
            101,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            ResponseFraming::None,
            true,
        );
        assert!(
            h.contains("connection: upgrade\r\n") && !h.contains("close"),
            "{h}"
        );
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }

    #[tokio::test]
    async fn sniffing_tells_the_h2_preface_from_a_request() {
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (buf, h2) = sniff(&mut a).await.unwrap();
        assert!(!h2 && buf.starts_with(b"GET"));
        let (mut a, mut b) = tokio::io::duplex(64);
        // Sent in pieces: the sniffer waits for the whole preface.
        tokio::spawn(async move {
            for piece in H2_PREFACE.chunks(5) {
                b.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            b
        });
        let (buf, h2) = sniff(&mut a).await.unwrap();
        assert!(h2 && &buf[..] == H2_PREFACE);
    }
}
