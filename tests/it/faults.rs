//! A TCP proxy that sits between the gateway and a real service (Redis, a broker) and
//! makes the faults a network makes: pass, delay every chunk, stall (hold every byte
//! until the stall ends), drop (close every connection and refuse new ones) and reset
//! (close with RST). The service itself is never stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    Pass,
    /// Forward every chunk after this delay.
    Delay(Duration),
    /// Hold every byte (connections stay open) until the fault changes.
    Stall,
    /// Close every connection, and close new ones at once.
    Drop,
    /// Close every connection with a TCP reset, and reset new ones.
    Reset,
}

/// A running fault proxy.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `target`, passing traffic.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(watch::channel(Fault::Pass).0);
        let f = fault.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let rx = f.subscribe();
                tokio::spawn(serve(client, target, rx));
            }
        });
        Self {
            addr,
            fault,
            accepted,
            _task: task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes the fault, for connections open now and later.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

async fn serve(client: TcpStream, target: SocketAddr, rx: watch::Receiver<Fault>) {
    let now = *rx.borrow();
    if matches!(now, Fault::Drop | Fault::Reset) {
        close(client, now);
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, rx.clone()));
    let down = tokio::spawn(pump(sr, cw, rx.clone()));
    let _ = (up.await, down.await);
}

fn close(s: TcpStream, fault: Fault) {
    if fault == Fault::Reset {
        let _ = s.set_zero_linger();
    }
    drop(s);
}

/// Copies `from` to `to` under the fault, until either side closes or the fault drops
/// the connection.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = rx.changed() => {
                let f = *rx.borrow();
                if matches!(f, Fault::Drop | Fault::Reset) {
                    kill(from, to, f);
                    return;
                }
                continue;
            }
        };
        loop {
            let f = *rx.borrow_and_update();
            match f {
                Fault::Pass => break,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Stall => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Drop | Fault::Reset => {
                    kill(from, to, f);
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Closes both sockets of a pump (the other pump closes their other halves).
fn kill(from: tokio::net::tcp::OwnedReadHalf, to: tokio::net::tcp::OwnedWriteHalf, f: Fault) {
    if f == Fault::Reset {
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
    }
    drop((from, to));
}
