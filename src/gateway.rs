//! A whole gateway in one value: runtime, listeners, admin API, reload triggers and
//! drain. `turnpike run` uses it, and so do the integration tests (in-process, on port 0).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::validate::parse_bind;
use crate::config::{ConfigErrors, LoadedConfig};
use crate::runtime::{reload, Runtime};
use crate::server::signal::{Registry, GRACEFUL};
use crate::server::Shared;
use crate::upstream::dns::{Resolve, SystemResolver};

/// How to start a gateway.
pub struct Options {
    /// Name resolution for upstream endpoints.
    pub resolver: Arc<dyn Resolve>,
    /// Reload on SIGHUP.
    pub reload_on_sighup: bool,
    /// Reload when the config file changes (also needs `server.watch_config`).
    pub watch_config: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resolver: Arc::new(SystemResolver),
            reload_on_sighup: true,
            watch_config: true,
        }
    }
}

/// Why a gateway did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigErrors),
    /// A socket could not be bound.
    Bind {
        /// `listeners[0]` or `admin`.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::Bind { what, addr, error } => write!(f, "{what}: cannot bind {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running gateway.
pub struct Gateway {
    runtime: Arc<Runtime>,
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    tracker: TaskTracker,
    connections: Arc<Registry>,
}

impl Gateway {
    /// Compiles `config`, binds every listener and starts serving.
    pub async fn start(config: LoadedConfig, options: Options) -> Result<Self, StartError> {
        let spec = config.spec.clone();
        let runtime = Runtime::new(config, options.resolver)
            .await
            .map_err(StartError::Config)?;
        let (shutdown, _) = watch::channel(false);
        let (admin_stop, _) = watch::channel(false);
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            runtime: runtime.clone(),
            connections: Arc::new(Registry::default()),
            tracker: tracker.clone(),
        });
        let mut listeners = Vec::new();
        for (i, l) in spec.listeners.iter().enumerate() {
            let what = format!("listeners[{i}] ({})", l.name);
            let addr = parse_bind(&l.address)
                .map_err(|e| StartError::Config(ConfigErrors::one(&what, e)))?;
            let socket = crate::server::bind(addr).map_err(|error| StartError::Bind {
                what: what.clone(),
                addr,
                error,
            })?;
            let bound = socket.local_addr().unwrap_or(addr);
            listeners.push((l.name.clone(), bound));
            tokio::spawn(crate::server::accept_loop(
                socket,
                shared.clone(),
                i,
                Arc::from(l.name.as_str()),
                shutdown.subscribe(),
            ));
        }
        let admin = match &spec.admin {
            None => None,
            Some(a) => {
                let addr = parse_bind(&a.address)
                    .map_err(|e| StartError::Config(ConfigErrors::one("admin.address", e)))?;
                let socket = crate::server::bind(addr).map_err(|error| StartError::Bind {
                    what: "admin".into(),
                    addr,
                    error,
                })?;
                let bound = socket.local_addr().unwrap_or(addr);
                tokio::spawn(crate::admin::serve(
                    socket,
                    runtime.clone(),
                    admin_stop.subscribe(),
                    TaskTracker::new(),
                ));
                Some(bound)
            }
        };
        if options.reload_on_sighup {
            if let Err(e) = reload::on_sighup(&runtime) {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
            }
        }
        if options.watch_config && spec.server.watch_config {
            if let Err(e) = reload::watch_file(&runtime) {
                tracing::warn!(error = %e, "cannot watch the configuration file");
            }
        }
        runtime.ready.store(true, Relaxed);
        Ok(Self {
            runtime,
            listeners,
            admin,
            shutdown,
            admin_stop,
            tracker,
            connections: shared.connections.clone(),
        })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Every listener with its bound address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The runtime (snapshots, reload, metrics).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Stops accepting, asks every connection to finish, and waits up to `grace`.
    /// Returns whether every connection finished in time. The admin listener stays up
    /// (with `/readyz` at 503 `draining`) until the client connections are done.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.runtime.draining.store(true, Relaxed);
        self.runtime.ready.store(false, Relaxed);
        let _ = self.shutdown.send(true);
        self.connections.raise_all(GRACEFUL);
        self.tracker.close();
        let snapshot = self.runtime.snapshot();
        let subscriptions = crate::runtime::messaging::stop_subscriptions(&snapshot, grace);
        let connections = tokio::time::timeout(grace, self.tracker.wait());
        let (drained, ()) = tokio::join!(connections, subscriptions);
        let drained = drained.is_ok();
        if !drained {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period over; closing remaining connections"
            );
        }
        let _ = self.admin_stop.send(true);
        drained
    }
}
