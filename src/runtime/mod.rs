//! The running configuration: compiles specs into snapshots, publishes them with one
//! atomic swap, and keeps long-lived state (clusters, access log, metrics) across
//! reloads.
//!
//! Reload is parse, validate, compile, activate, then swap. A failure at any step
//! changes nothing: the old snapshot keeps serving, the error is logged and counted.
//! Requests hold the snapshot they started with, so none fails because of a reload.

pub mod compile;
pub mod messaging;
pub mod reload;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{load_file, ConfigErrors, LoadedConfig};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::upstream::dns::Resolve;
use crate::upstream::Cluster;
use compile::{compile, CompileEnv};
pub use snapshot::Snapshot;

/// How long new clusters may take to resolve their DNS names before a (re)load goes on
/// without them (they keep resolving in the background).
const FIRST_RESOLVE: Duration = Duration::from_secs(5);

/// The live configuration and the state that outlives snapshots.
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// Every metric of the process.
    pub metrics: Arc<Metrics>,
    resolver: Arc<dyn Resolve>,
    clusters: Mutex<HashMap<String, Weak<Cluster>>>,
    access_log: Mutex<Option<Weak<AccessLog>>>,
    config_path: Option<PathBuf>,
    reload_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// False until listeners are bound, and again once shutdown begins.
    pub ready: AtomicBool,
    /// True from the moment shutdown begins (`/readyz` says `draining`).
    pub draining: AtomicBool,
}

impl Runtime {
    /// Compiles and activates the first configuration.
    pub async fn new(
        loaded: LoadedConfig,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let metrics = Arc::new(Metrics::default());
        let config = Arc::new(loaded);
        let config_path = config.path.clone();
        let env = CompileEnv {
            metrics: &metrics,
            resolver: &resolver,
            clusters: &HashMap::new(),
        };
        let snapshot = compile(config, 1, &env)?;
        let runtime = Arc::new(Self {
            current: ArcSwap::from_pointee(snapshot),
            metrics,
            resolver,
            clusters: Mutex::new(HashMap::new()),
            access_log: Mutex::new(None),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        runtime.activate(&runtime.snapshot()).await?;
        runtime.note_loaded();
        Ok(runtime)
    }

    fn env_clusters<R>(&self, f: impl FnOnce(CompileEnv<'_>) -> R) -> R {
        let clusters = self.clusters.lock().map(|c| c.clone()).unwrap_or_default();
        f(CompileEnv {
            metrics: &self.metrics,
            resolver: &self.resolver,
            clusters: &clusters,
        })
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The configuration file, if the config came from one.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    /// Reloads from the configuration file.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let Some(path) = self.config_path.clone() else {
            return Err(ConfigErrors::one(
                "",
                "this gateway was not started from a file",
            ));
        };
        let result = match load_file(&path) {
            Ok(loaded) => self.apply(loaded).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.metrics.reloads_failure.fetch_add(1, Relaxed);
            tracing::error!(errors = %e, "configuration reload rejected; the previous configuration stays active");
        }
        result
    }

    /// Activates an already loaded configuration (reloads and tests).
    pub async fn apply(&self, loaded: LoadedConfig) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = self.snapshot();
        check_static_parts(&old.config, &loaded)?;
        let generation = self.generation.load(Relaxed) + 1;
        let next = self.env_clusters(|env| compile(Arc::new(loaded), generation, &env))?;
        self.activate(&next).await?;
        self.current.store(Arc::new(next));
        self.generation.store(generation, Relaxed);
        self.metrics.reloads_success.fetch_add(1, Relaxed);
        self.note_loaded();
        drop(old);
        self.metrics.prune();
        tracing::info!(generation, "configuration loaded");
        Ok(generation)
    }

    /// Opens the access log (or reuses the open one) and starts new clusters.
    async fn activate(&self, snap: &Snapshot) -> Result<(), ConfigErrors> {
        let log_spec = &snap.config.spec.access_log;
        if log_spec.enabled {
            let existing = self
                .access_log
                .lock()
                .ok()
                .and_then(|l| l.as_ref().and_then(Weak::upgrade));
            let log = match existing.filter(|l| l.output() == log_spec.output) {
                Some(l) => l,
                None => {
                    let l = AccessLog::open(&log_spec.output, self.metrics.clone())
                        .map(Arc::new)
                        .map_err(|e| {
                            ConfigErrors::one(
                                "access_log.output",
                                format!("cannot open {}: {e}", log_spec.output),
                            )
                        })?;
                    if let Ok(mut slot) = self.access_log.lock() {
                        *slot = Some(Arc::downgrade(&l));
                    }
                    l
                }
            };
            let _ = snap.access_log.set(log);
        }
        let fresh: Vec<Arc<Cluster>> = {
            let known = self.clusters.lock().map(|c| c.clone()).unwrap_or_default();
            snap.clusters
                .iter()
                .filter(|c| {
                    !known
                        .get(&*c.name)
                        .and_then(Weak::upgrade)
                        .is_some_and(|k| Arc::ptr_eq(&k, c))
                })
                .cloned()
                .collect()
        };
        let resolving = futures_util::future::join_all(
            fresh
                .iter()
                .filter(|c| c.uses_dns())
                .map(|c| c.resolve_now()),
        );
        let _ = tokio::time::timeout(FIRST_RESOLVE, resolving).await;
        for c in &fresh {
            c.start_refresh();
            c.start_health_checks();
        }
        if let Ok(mut known) = self.clusters.lock() {
            known.retain(|_, w| w.strong_count() > 0);
            for c in &snap.clusters {
                known.insert(c.name.to_string(), Arc::downgrade(c));
            }
        }
        messaging::activate(snap)
    }

    fn note_loaded(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.last_reload_success.store(now, Relaxed);
    }
}

/// Listeners and the admin listener are bound once per process; a reload may not move
/// them.
fn check_static_parts(old: &LoadedConfig, new: &LoadedConfig) -> Result<(), ConfigErrors> {
    let sockets = |c: &LoadedConfig| -> Vec<(String, String)> {
        c.spec
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address.clone()))
            .collect()
    };
    if sockets(old) != sockets(new) {
        return Err(ConfigErrors::one(
            "listeners",
            "listener names and addresses cannot change on reload; restart turnpike to change them",
        ));
    }
    let admin = |c: &LoadedConfig| c.spec.admin.as_ref().map(|a| a.address.clone());
    if admin(old) != admin(new) {
        return Err(ConfigErrors::one(
            "admin.address",
            "the admin address cannot change on reload; restart turnpike to change it",
        ));
    }
    Ok(())
}
