//! A per-connection stop signal that costs one atomic load when polled.
//!
//! Each client connection's task waits on its connection future and on this signal. A
//! watch channel or `Notify` would take a lock on every wake-up of the connection (that
//! is, several times per request); this is a flag and an `AtomicWaker`. The listener
//! keeps a registry of live signals so that shutdown can raise them all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Finish the current requests, then close (GOAWAY on HTTP/2).
pub const GRACEFUL: u8 = 1;
/// Close now (abuse).
pub const ABORT: u8 = 2;

/// One connection's signal.
#[derive(Default)]
pub struct Signal {
    raised: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises `level` (the stronger of two raises wins) and wakes the connection.
    pub fn raise(&self, level: u8) {
        self.raised.fetch_max(level, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The level raised so far (0: none).
    pub fn level(&self) -> u8 {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves to the level once one above `seen` is raised.
    pub fn above(&self, seen: u8) -> Above<'_> {
        Above { signal: self, seen }
    }
}

/// See [`Signal::above`].
pub struct Above<'a> {
    signal: &'a Signal,
    seen: u8,
}

impl Future for Above<'_> {
    type Output = u8;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
        let level = self.signal.level();
        if level > self.seen {
            return Poll::Ready(level);
        }
        self.signal.waker.register(cx.waker());
        let level = self.signal.level();
        if level > self.seen {
            Poll::Ready(level)
        } else {
            Poll::Pending
        }
    }
}

/// The live connections of a gateway, for shutdown.
#[derive(Default)]
pub struct Registry {
    live: Mutex<Vec<Weak<Signal>>>,
    closing: AtomicU8,
}

impl Registry {
    /// Registers a new connection's signal (raised at once if shutdown already began).
    pub fn register(&self) -> Arc<Signal> {
        let signal = Arc::new(Signal::default());
        if let Ok(mut live) = self.live.lock() {
            if live.len() >= 64 && live.len().is_power_of_two() {
                live.retain(|w| w.strong_count() > 0);
            }
            live.push(Arc::downgrade(&signal));
        }
        let closing = self.closing.load(Ordering::Acquire);
        if closing > 0 {
            signal.raise(closing);
        }
        signal
    }

    /// Raises `level` on every live connection.
    pub fn raise_all(&self, level: u8) {
        self.closing.fetch_max(level, Ordering::AcqRel);
        let live: Vec<Arc<Signal>> = self
            .live
            .lock()
            .map(|l| l.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for s in live {
            s.raise(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn raise_wakes_the_waiter_and_late_registrations_see_shutdown() {
        let reg = Arc::new(Registry::default());
        let s = reg.register();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.above(0).await }
        });
        tokio::task::yield_now().await;
        reg.raise_all(GRACEFUL);
        assert_eq!(waiter.await.unwrap(), GRACEFUL);
        let late = reg.register();
        assert_eq!(late.level(), GRACEFUL);
        s.raise(ABORT);
        assert_eq!(s.above(GRACEFUL).await, ABORT);
    }
}
