//! The relay: publishes what the writer synced, in order, with confirms; moves the
//! cursor and deletes passed segments; parks unroutable messages; backs off while the
//! broker cannot take messages.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::files::{read_batch_skipping, seg_path, segments, write_cursor};
use super::{Outbox, Pos};
use crate::brokers::{Message, PublishError};
use crate::config::brokers::BackoffSpec;
use crate::config::Dur;

/// The relay task: publishes what the writer synced, in order, until the outbox closes.
pub(super) async fn relay(weak: Weak<Outbox>, mut cursor: Pos) {
    let mut failures = 0u32;
    loop {
        let Some(outbox) = weak.upgrade() else { return };
        let committed = outbox.committed.lock().map(|c| *c).unwrap_or(cursor);
        let link = outbox.link.load_full();
        let (Some(link), true) = (link, cursor < committed) else {
            // Also wakes now and then, so a dropped outbox ends its relay.
            let _ = tokio::time::timeout(Duration::from_secs(1), outbox.wake.notified()).await;
            drop(outbox);
            continue;
        };
        let dir = outbox.dir.clone();
        let from = cursor;
        let read =
            tokio::task::spawn_blocking(move || read_batch_skipping(&dir, from, committed)).await;
        let Ok((messages, next_seg, skipped)) = read else {
            return;
        };
        let retry = *outbox.retry.lock().unwrap_or_else(|e| e.into_inner());
        let mut relayed = 0u64;
        let mut relayed_bytes = 0u64;
        let mut stalled = false;
        let readable: Vec<&Message> = messages
            .iter()
            .filter_map(|(_, _, m)| m.as_ref().ok())
            .collect();
        let mut outcomes = link.publish_all(&readable, &retry).await.into_iter();
        for (pos_after, n, m) in &messages {
            let result = match m {
                Ok(_) => outcomes
                    .next()
                    .unwrap_or_else(|| Err(PublishError::Unavailable("not sent".into()))),
                Err(e) => {
                    tracing::error!(outbox = %outbox.dir.display(), error = %e, "unreadable outbox record skipped");
                    Ok(())
                }
            };
            match result {
                Ok(()) => {}
                Err(PublishError::Unroutable(reason)) => {
                    let kept = match m {
                        Ok(m) => park_unroutable(&outbox.dir, m, &reason),
                        Err(_) => true,
                    };
                    if !kept {
                        // Not written anywhere yet: it stays in the outbox.
                        stalled = true;
                        break;
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(outbox = %outbox.dir.display(), error = %e, "cannot relay outbox messages yet; retrying with backoff");
                    }
                    stalled = true;
                    break;
                }
            }
            cursor = *pos_after;
            relayed += 1;
            relayed_bytes += n;
        }
        if let (Some(to), false) = (skipped, stalled) {
            // Corrupt bytes were passed over (only a damaged disk gets here): move past
            // them rather than reading them again. Their bytes are counted out; how many
            // messages they held is unknown, so the depth stays above zero and the route
            // keeps queueing behind the outbox, which is slower but loses nothing.
            tracing::error!(outbox = %outbox.dir.display(), segment = to.seg, offset = to.off, "corrupt outbox frames skipped");
            if to > cursor {
                if to.seg == cursor.seg {
                    relayed_bytes += to.off - cursor.off;
                }
                cursor = to;
            }
        }
        if messages.is_empty() && skipped.is_none() {
            match next_seg {
                Some(seg) => cursor = Pos { seg, off: 0 },
                // Nothing readable before the committed end (a failed read): wait, then
                // look again, rather than spinning.
                None => stalled = true,
            }
        }
        if relayed > 0 || skipped.is_some() || (messages.is_empty() && next_seg.is_some()) {
            let dir = outbox.dir.clone();
            let at = cursor;
            let _ = tokio::task::spawn_blocking(move || {
                // Passed segments first: on a full disk that frees the room the cursor
                // file needs (opening recovers from a cursor whose segment is gone).
                for seg in segments(&dir) {
                    if seg < at.seg {
                        let _ = fs::remove_file(seg_path(&dir, seg));
                    }
                }
                if let Err(e) = write_cursor(&dir, at) {
                    tracing::warn!(outbox = %dir.display(), error = %e, "cannot write the outbox cursor; relayed messages may be relayed again after a restart");
                }
            })
            .await;
            outbox.depth.fetch_sub(relayed, Ordering::AcqRel);
            outbox.bytes.fetch_sub(relayed_bytes, Ordering::AcqRel);
            let s = link.stats();
            s.outbox_relayed.add(relayed);
            s.outbox_depth.add(-(relayed as i64));
            s.outbox_bytes.add(-(relayed_bytes as i64));
        }
        if stalled {
            failures += 1;
            let wait = BackoffSpec {
                base: Dur::ms(100),
                max: Dur::secs(5),
            }
            .delay(failures);
            drop(outbox);
            tokio::time::sleep(crate::brokers::jitter(wait)).await;
        } else {
            if failures > 0 {
                tracing::info!(outbox = %outbox.dir.display(), "relaying outbox messages again");
            }
            failures = 0;
        }
    }
}

/// Keeps a message no queue takes, for an operator to look at; `false` when it could not
/// be written (then it must stay in the outbox).
fn park_unroutable(dir: &Path, m: &Message, reason: &str) -> bool {
    tracing::error!(outbox = %dir.display(), message_id = %m.id, key = %m.key(), %reason, "outbox message is unroutable; kept in unroutable.log");
    let line = serde_json::json!({"reason": reason, "message": m});
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("unroutable.log"))
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
    if let Err(e) = written {
        tracing::error!(outbox = %dir.display(), error = %e, "cannot write unroutable.log");
        return false;
    }
    true
}
