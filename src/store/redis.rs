//! The shared Redis connection: one per `redis:` block, kept across reloads that do not
//! change it, used by every Redis-backed feature.
//!
//! A dead or slow Redis must cost the request path almost nothing, so:
//! - connecting happens in a background task (never cancelled by an impatient caller);
//!   callers wait for it only within their own deadline;
//! - every call has the `redis.timeout` deadline, connecting included;
//! - a breaker: after `breaker.failures` consecutive transport failures (refused, reset,
//!   past the deadline), Redis is not asked for `breaker.open_for`, and calls fail at once
//!   (no I/O, no wait); then a single call probes it, and success closes the breaker.
//!   While open, the connection is dropped, so the probe reconnects from scratch (and, with
//!   Sentinel, asks the sentinels for the current primary);
//! - an error *answer* (a wrong-type value at a key, a script error) fails that call but
//!   says nothing about Redis's health, so it does not count towards the breaker;
//! - each change of state is logged once (warn when Redis is given up on, info when it
//!   is back) and counted (`turnpike_redis_breaker_open`, `turnpike_ratelimit_store_failures_total`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult, Script,
    ServerErrorKind, TlsCertificates,
};
use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::config::redis::RedisSpec;
use crate::telemetry::metrics::Metrics;

/// Why a call did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The breaker is open: Redis was not asked.
    BreakerOpen,
    /// No answer within `redis.timeout`.
    Timeout,
    /// Redis could not be reached (refused, reset, not connected).
    Unreachable(String),
    /// Redis answered with an error.
    Answer(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BreakerOpen => f.write_str("redis breaker open"),
            Self::Timeout => f.write_str("redis did not answer in time"),
            Self::Unreachable(e) => write!(f, "redis unreachable: {e}"),
            Self::Answer(e) => write!(f, "redis error: {e}"),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Connecting state, published to callers waiting for a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Connecting {
    Idle,
    Busy,
    Failed,
}

/// The shared connection to Redis (single server, Cluster or Sentinel).
pub struct RedisLink {
    spec: RedisSpec,
    /// Where it connects, passwords hidden: written once, for logs.
    target: String,
    base: Option<PathBuf>,
    conn: ArcSwapOption<Conn>,
    state: watch::Sender<Connecting>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("target", &self.describe())
            .finish()
    }
}

/// Milliseconds on a monotonic clock (tokio's, so tests may pause it).
fn now_ms() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    (tokio::time::Instant::now() - start).as_millis() as u64 + 1
}

struct Breaker {
    threshold: u32,
    open_for: u64,
    failures: AtomicU32,
    /// 0: closed; else the time (ms) from which one probe may go.
    open_until: AtomicU64,
    probing: AtomicBool,
}

enum Gate {
    Closed,
    Probe,
    Open,
}

impl Breaker {
    fn gate(&self) -> Gate {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Gate::Closed;
        }
        if now_ms() < until {
            return Gate::Open;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Gate::Probe,
            Err(_) => Gate::Open,
        }
    }
}

impl RedisLink {
    /// The link for `spec` (nothing is connected until the first call). `base` is the
    /// configuration's folder, where a relative `tls.ca` starts.
    pub fn new(spec: RedisSpec, base: Option<&Path>, metrics: Arc<Metrics>) -> Self {
        let hide =
            |u: &String| crate::admin::redact::url_without_password(u).unwrap_or_else(|| u.clone());
        let list = |nodes: &[String]| nodes.iter().map(hide).collect::<Vec<_>>().join(",");
        let target = if let Some(u) = &spec.url {
            hide(u)
        } else if let Some(c) = &spec.cluster {
            format!("cluster {}", list(&c.nodes))
        } else if let Some(s) = &spec.sentinel {
            format!("sentinel {} via {}", s.master, list(&s.nodes))
        } else {
            String::new()
        };
        Self {
            target,
            breaker: Breaker {
                threshold: spec.breaker.failures.max(1),
                open_for: spec.breaker.open_for.0.as_millis() as u64,
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                probing: AtomicBool::new(false),
            },
            spec,
            base: base.map(Path::to_path_buf),
            conn: ArcSwapOption::empty(),
            state: watch::channel(Connecting::Idle).0,
            metrics,
        }
    }

    /// The prefix of every key written.
    pub fn key_prefix(&self) -> &str {
        &self.spec.key_prefix
    }

    /// Where it connects, without passwords (for logs).
    pub fn describe(&self) -> &str {
        &self.target
    }

    /// Runs `script` with `keys` and `args` within the deadline, through the breaker.
    pub async fn eval<T: FromRedisValue>(
        self: &Arc<Self>,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let probe = match self.breaker.gate() {
            Gate::Closed => false,
            Gate::Probe => true,
            Gate::Open => return Err(self.count(StoreError::BreakerOpen)),
        };
        self.metrics.redis.calls.fetch_add(1, Ordering::Relaxed);
        let call = async {
            let conn = self.connection().await?;
            let mut inv = script.prepare_invoke();
            for k in keys {
                inv.key(*k);
            }
            for a in args {
                inv.arg(*a);
            }
            let r: RedisResult<T> = match conn {
                Conn::Single(mut c) => invoke(&inv, &mut c).await,
                Conn::Cluster(mut c) => invoke(&inv, &mut c).await,
            };
            r.map_err(classify)
        };
        let r = match tokio::time::timeout(self.spec.timeout.0, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout),
        };
        match &r {
            Ok(_) | Err(StoreError::Answer(_)) => self.healthy(probe),
            Err(_) => self.failed(probe),
        }
        r.map_err(|e| self.count(e))
    }

    fn count(&self, e: StoreError) -> StoreError {
        let s = &self.metrics.redis;
        match &e {
            StoreError::BreakerOpen => &s.failure_breaker_open,
            StoreError::Timeout => &s.failure_timeout,
            StoreError::Unreachable(_) => &s.failure_unreachable,
            StoreError::Answer(_) => &s.failure_error,
        }
        .fetch_add(1, Ordering::Relaxed);
        e
    }

    fn healthy(&self, probe: bool) {
        self.breaker.failures.store(0, Ordering::Relaxed);
        if probe || self.breaker.open_until.load(Ordering::Acquire) != 0 {
            self.breaker.open_until.store(0, Ordering::Release);
            self.breaker.probing.store(false, Ordering::Release);
            self.metrics.redis.breaker_open.store(0, Ordering::Relaxed);
            tracing::info!(redis = %self.describe(), "redis is answering again; shared limits are back");
        }
    }

    fn failed(&self, probe: bool) {
        let b = &self.breaker;
        if probe {
            // Still down: stay open for another period, silently (no state change).
            b.open_until.store(now_ms() + b.open_for, Ordering::Release);
            b.probing.store(false, Ordering::Release);
            self.conn.store(None);
            return;
        }
        let n = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= b.threshold
            && b.open_until
                .compare_exchange(
                    0,
                    now_ms() + b.open_for,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.conn.store(None);
            self.metrics.redis.breaker_open.store(1, Ordering::Relaxed);
            self.metrics
                .redis
                .breaker_opened
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                redis = %self.describe(),
                failures = n,
                open_for_ms = b.open_for,
                "redis is failing; not asking it for a while (rate limits follow on_store_failure)"
            );
        }
    }

    /// The live connection, or one made now (in the background: a caller that gives up
    /// does not cancel it).
    async fn connection(self: &Arc<Self>) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let mut rx = self.state.subscribe();
        let started = self.state.send_if_modified(|s| {
            if *s == Connecting::Busy {
                return false;
            }
            *s = Connecting::Busy;
            true
        });
        if started {
            self.spawn_connect();
        }
        rx.borrow_and_update();
        loop {
            if let Some(c) = self.conn.load_full() {
                return Ok((*c).clone());
            }
            if *rx.borrow() == Connecting::Failed {
                return Err(StoreError::Unreachable("could not connect".into()));
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Unreachable("closed".into()));
            }
        }
    }

    fn spawn_connect(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let r = match tokio::time::timeout(me.spec.connect_timeout.0, me.connect()).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::from((ErrorKind::Io, "connect timed out"))),
            };
            match r {
                Ok(c) => {
                    me.conn.store(Some(Arc::new(c)));
                    me.state.send_replace(Connecting::Idle);
                }
                Err(e) => {
                    tracing::debug!(redis = %me.describe(), error = %e, "redis connect failed");
                    me.state.send_replace(Connecting::Failed);
                }
            }
        });
    }

    fn certificates(&self) -> RedisResult<Option<TlsCertificates>> {
        let Some(tls) = &self.spec.tls else {
            return Ok(None);
        };
        let path = match &self.base {
            Some(b) => b.join(&tls.ca),
            None => PathBuf::from(&tls.ca),
        };
        let pem = std::fs::read(&path).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis.tls.ca unreadable",
                format!("{}: {e}", path.display()),
            ))
        })?;
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    fn info(&self, url: &str) -> RedisResult<::redis::ConnectionInfo> {
        let info = url.into_connection_info()?;
        let mut r = info.redis_settings().clone();
        if let Some(u) = &self.spec.username {
            r = r.set_username(u);
        }
        if let Some(p) = &self.spec.password {
            r = r.set_password(p);
        }
        Ok(info.set_redis_settings(r))
    }

    async fn connect(&self) -> RedisResult<Conn> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.spec.connect_timeout.0))
            .set_response_timeout(Some(self.spec.timeout.0))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let certs = self.certificates()?;
        if let Some(url) = &self.spec.url {
            let info = self.info(url)?;
            let client = match certs {
                Some(c) => Client::build_with_tls(info, c)?,
                None => Client::open(info)?,
            };
            return Ok(Conn::Single(
                ConnectionManager::new_with_config(client, manager_config).await?,
            ));
        }
        if let Some(c) = &self.spec.cluster {
            let mut b = ::redis::cluster::ClusterClientBuilder::new(c.nodes.clone())
                .connection_timeout(self.spec.connect_timeout.0)
                .response_timeout(self.spec.timeout.0)
                .retries(1);
            if let Some(u) = &self.spec.username {
                b = b.username(u);
            }
            if let Some(p) = &self.spec.password {
                b = b.password(p);
            }
            if let Some(c) = certs {
                b = b.certs(c);
            }
            return Ok(Conn::Cluster(b.build()?.get_async_connection().await?));
        }
        if let Some(s) = &self.spec.sentinel {
            let mut addrs = Vec::new();
            for u in &s.nodes {
                addrs.push(u.as_str().into_connection_info()?.addr().clone());
            }
            let mut b = ::redis::sentinel::SentinelClientBuilder::new(
                addrs,
                &s.master,
                ::redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_db(s.db);
            if let Some(u) = &self.spec.username {
                b = b.set_client_to_redis_username(u);
            }
            if let Some(p) = &self.spec.password {
                b = b.set_client_to_redis_password(p);
            }
            if let Some(c) = certs {
                b = b.set_client_to_redis_certificates(c);
            }
            let client = b.build()?.async_get_client().await?;
            return Ok(Conn::Single(
                ConnectionManager::new_with_config(client, manager_config).await?,
            ));
        }
        Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "no redis url, cluster or sentinel",
        )))
    }
}

async fn invoke<T: FromRedisValue, C: ConnectionLike>(
    inv: &::redis::ScriptInvocation<'_>,
    c: &mut C,
) -> RedisResult<T> {
    inv.invoke_async(c).await
}

/// An error answer (the key holds another type, the script refused its state) says
/// nothing about Redis's health; anything else is a transport failure.
fn classify(e: RedisError) -> StoreError {
    let answer = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::NoPerm
                | ServerErrorKind::NotBusy
                | ServerErrorKind::NoSub
        ) | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
            | ErrorKind::Extension
    );
    if answer {
        StoreError::Answer(e.to_string())
    } else if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unreachable(e.to_string())
    }
}
