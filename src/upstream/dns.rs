//! Name resolution for endpoints given by DNS name. The system resolver is used by
//! default; the trait lets embedders (and tests) supply another source of addresses.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// The future a resolver returns.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a host name to addresses.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a>;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool), bounded by
/// a 5 s timeout.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        Box::pin(async move {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(addrs) => Ok(addrs?.collect()),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "DNS lookup timed out",
                )),
            }
        })
    }
}
