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

/// The TLS files (certificates, keys, CAs, CRLs) the active snapshot read.
fn tls_files(runtime: &Runtime) -> Vec<PathBuf> {
    let snap = runtime.snapshot();
    let mut files: Vec<PathBuf> = snap
        .listeners
        .iter()
        .filter_map(|l| l.settings.tls.as_ref())
        .flat_map(|t| {
            t.files
                .iter()
                .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
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

/// Reloads when the configuration file, or a TLS file it names, changes, until the
/// runtime is dropped. A changed certificate reloads even though the configuration text
/// is the same: new handshakes get the new certificate, open connections keep theirs.
pub fn watch_file(runtime: &Arc<Runtime>) -> notify::Result<()> {
    let Some(path) = runtime.config_path().cloned() else {
        return Ok(());
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let watched = Arc::new(std::sync::Mutex::new(tls_files(runtime)));
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
        let tls = seen
            .lock()
            .map(|files| event.paths.iter().any(|p| files.iter().any(|f| same(p, f))))
            .unwrap_or(false);
        if config || tls {
            let _ = tx.send(tls);
        }
    })?;
    let mut folders: Vec<PathBuf> = vec![folder(&path)];
    for f in watched.lock().map(|f| f.clone()).unwrap_or_default() {
        folders.push(folder(&f));
    }
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
                    continue;
                }
            }
            let what = if tls_changed {
                "a TLS file"
            } else {
                "configuration file"
            };
            tracing::info!(path = %path.display(), "{what} changed: reloading");
            let _ = rt.reload().await;
            // The new configuration may name other TLS files.
            let files = tls_files(&rt);
            for f in &files {
                let dir = folder(f);
                if !folders.contains(&dir) {
                    let _ = watcher.watch(&dir, RecursiveMode::NonRecursive);
                    folders.push(dir);
                }
            }
            if let Ok(mut w) = watched.lock() {
                *w = files;
            }
        }
    });
    Ok(())
}
