//! The WebSocket tunnel: after the upstream answered 101, bytes are copied both ways
//! until either side closes or nothing moves for the route's idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::upstream::InFlight;

/// Starts the tunnel in the background; `held` (the upstream's in-flight count and the
/// client connection's slot) is kept until it closes.
pub fn spawn(
    client: crate::server::h1::OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    held: (InFlight, Option<crate::server::OpenGuard>),
) {
    tokio::spawn(async move {
        let _held = held;
        let (client, upstream) = match tokio::join!(client.connection(), upstream) {
            (Some(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client_ok = c.is_some(),
                    upstream_ok = u.is_ok(),
                    "websocket upgrade failed"
                );
                return;
            }
        };
        let origin = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut a = Watched {
            io: client,
            last: last.clone(),
            origin,
        };
        let mut b = Watched {
            io: TokioIo::new(upstream),
            last: last.clone(),
            origin,
        };
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        loop {
            let since = Duration::from_millis(last.load(Relaxed));
            let deadline = origin + since + idle;
            tokio::select! {
                _ = &mut copy => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let now_ms = origin.elapsed().as_millis() as u64;
                    if now_ms.saturating_sub(last.load(Relaxed)) >= idle.as_millis() as u64 {
                        tracing::debug!("websocket tunnel idle; closing");
                        break;
                    }
                }
            }
        }
    });
}

/// An IO object that notes the time of its last read or write.
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
    origin: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
