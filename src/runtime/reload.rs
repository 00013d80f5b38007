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

/// Reloads when the configuration file changes, until the runtime is dropped.
pub fn watch_file(runtime: &Arc<Runtime>) -> notify::Result<()> {
    let Some(path) = runtime.config_path().cloned() else {
        return Ok(());
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let dir = path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
            if ours && !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let Some(rt) = weak.upgrade() else { break };
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue;
            };
            if hash64(text.as_bytes()) == rt.snapshot().config.digest {
                continue;
            }
            tracing::info!(path = %path.display(), "configuration file changed: reloading");
            let _ = rt.reload().await;
        }
    });
    Ok(())
}
