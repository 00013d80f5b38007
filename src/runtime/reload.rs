//! What triggers a reload: SIGHUP, a change of the configuration file on disk, and
//! `POST /reload` on the admin listener (which calls [`Runtime::reload`] directly).
//!
//! The file is watched through its folder, because editors and config managers replace
//! files by renaming a new one over the old. Events are debounced, and a write that leaves
//! the text unchanged does not reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Runtime;
use crate::upstream::hash::hash64;

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads on SIGHUP until the runtime is dropped.
pub fn on_sighup(runtime: &Arc<Runtime>) -> std::io::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(rt) = weak.upgrade() else { break };
            tracing::info!("SIGHUP: reloading configuration");
            let _ = rt.reload().await;
        }
    });
    Ok(())
}

/// The folders of the TLS files (certificates, keys, CAs, CRLs) the active snapshot
/// read: each as configured and as resolved through symlinks, so that both a file
/// replaced in place and a symlink swapped to a new target (certbot's `live/`,
/// Kubernetes secret volumes) are seen.
fn tls_folders(runtime: &Runtime) -> Vec<PathBuf> {
    let snap = runtime.snapshot();
    let mut folders: Vec<PathBuf> = snap
        .listeners
        .iter()
        .filter_map(|l| l.settings.tls.as_ref())
        .flat_map(|t| t.files.iter())
        .flat_map(|f| {
            let real = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            let raw = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            [folder(&raw), folder(&real)]
        })
        .collect();
    folders.sort();
    folders.dedup();
    folders
}

/// The key files (JWKS, PEM) the active snapshot's policies read, as configured and as
/// resolved through symlinks.
fn key_files(runtime: &Runtime) -> Vec<PathBuf> {
    let snap = runtime.snapshot();
    let mut files: Vec<PathBuf> = snap
        .key_files
        .iter()
        .flat_map(|f| {
            let real = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            let raw = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            [raw, real]
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

fn folder(path: &std::path::Path) -> PathBuf {
    path.parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Reloads when the configuration file, a TLS file it names, or a key file a policy
/// reads (a JWKS or PEM file of `jwt`) changes, until the runtime is dropped. A changed certificate reloads even though the configuration text
/// is the same: new handshakes get the new certificate, open connections keep theirs.
pub fn watch_file(runtime: &Arc<Runtime>) -> notify::Result<()> {
    let Some(path) = runtime.config_path().cloned() else {
        return Ok(());
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let watched = Arc::new(std::sync::Mutex::new(tls_folders(runtime)));
    let keys = Arc::new(std::sync::Mutex::new(key_files(runtime)));
    let seen_keys = keys.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let config_path = path.clone();
    let seen = watched.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a == b || (folder(a) == folder(b) && a.file_name() == b.file_name())
        };
        let config = event.paths.iter().any(|p| same(p, &config_path));
        // Any change in a folder holding TLS files: certificate folders hold little
        // else, and a reload that changes nothing is cheap.
        let tls = seen
            .lock()
            .map(|folders| {
                event
                    .paths
                    .iter()
                    .any(|p| folders.iter().any(|f| *f == folder(p)))
            })
            .unwrap_or(false);
        // A key file (JWKS, PEM) named by a policy: that file only, since it may sit
        // in a folder with much else (the config's own).
        let key = seen_keys
            .lock()
            .map(|files| event.paths.iter().any(|p| files.iter().any(|f| same(p, f))))
            .unwrap_or(false);
        if config || tls || key {
            let _ = tx.send(tls || key);
        }
    })?;
    let mut folders: Vec<PathBuf> = vec![folder(&path)];
    folders.extend(watched.lock().map(|f| f.clone()).unwrap_or_default());
    folders.extend(
        keys.lock()
            .map(|f| f.iter().map(|k| folder(k)).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    folders.sort();
    folders.dedup();
    for f in &folders {
        if let Err(e) = watcher.watch(f, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %f.display(), error = %e, "cannot watch");
        }
    }
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut watcher = watcher;
        while let Some(mut tls_changed) = rx.recv().await {
            while let Ok(Some(more)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                tls_changed |= more;
            }
            let Some(rt) = weak.upgrade() else { break };
            if !tls_changed {
                let Ok(text) = tokio::fs::read_to_string(&path).await else {
                    continue;
                };
                if hash64(text.as_bytes()) == rt.snapshot().config.digest {
                    rt.metrics
                        .reloads_unchanged
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(path = %path.display(), "configuration file unchanged: not reloading");
                    continue;
                }
            }
            let what = if tls_changed {
                "a TLS or key file"
            } else {
                "configuration file"
            };
            tracing::info!(path = %path.display(), "{what} changed: reloading");
            let _ = rt.reload().await;
            // The new configuration may name other TLS and key files.
            let tls = tls_folders(&rt);
            let key_list = key_files(&rt);
            for dir in tls
                .iter()
                .cloned()
                .chain(key_list.iter().map(|k| folder(k)))
            {
                if !folders.contains(&dir) {
                    let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
                    folders.push(dir);
                }
            }
            if let Ok(mut w) = watched.lock() {
                *w = tls;
            }
            if let Ok(mut k) = keys.lock() {
                *k = key_list;
            }
        }
    });
    Ok(())
}
