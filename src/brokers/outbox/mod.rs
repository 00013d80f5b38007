//! The durable outbox: messages the broker could not take, kept on local disk and
//! relayed, in the order they were accepted, when it can.
//!
//! Layout: a folder of segment files (`0000000000000001.log`, ...) of frames
//! `[length u32 LE][crc32 u32 LE][message]`, and `cursor` (the segment and offset of the
//! first message not yet relayed), replaced atomically. One writer thread appends: it
//! takes every message waiting, writes them, calls `fdatasync` once for the batch (group
//! commit), and only then answers their requests, so a 2xx always follows a durable
//! write. A relay task reads from the cursor to the last synced frame, publishes each
//! message with confirms, moves the cursor, and deletes segments it has passed.
//!
//! A crash (SIGKILL, power loss) can leave a torn frame at the end of the last segment:
//! it belongs to a batch whose requests were never answered, and opening the outbox
//! cuts it off. A message published but not yet recorded in `cursor` is published again
//! after a restart: delivery is at least once, under the same `message_id`. A message no
//! queue takes (unroutable) would never leave by waiting: it is appended to
//! `unroutable.log` and logged, never dropped. The folder is locked, so two gateways
//! cannot share it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

mod files;
mod relay;

use files::{first_pos, read_cursor, recover, seg_path};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Link, Message};
use crate::config::brokers::RetrySpec;

/// The largest frame read back (a corrupt length never allocates more).
const MAX_FRAME: u32 = 64 << 20;
/// Messages relayed between two cursor writes.
const RELAY_BATCH: usize = 64;

/// Why a message could not be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxError {
    /// Undelivered messages already take `max_size`.
    Full,
    /// The message is larger than an outbox frame may be.
    TooLarge,
    /// Writing or syncing failed (disk full, I/O error).
    Io(String),
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), OutboxError>>,
}

/// A position in the outbox: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Pos {
    seg: u64,
    off: u64,
}

/// One open outbox folder.
pub struct Outbox {
    dir: PathBuf,
    max_size: AtomicU64,
    tx: mpsc::Sender<Append>,
    /// The end of the last synced frame.
    committed: Mutex<Pos>,
    /// Messages and bytes not yet relayed.
    depth: AtomicU64,
    bytes: AtomicU64,
    link: ArcSwapOption<Link>,
    retry: Mutex<RetrySpec>,
    wake: Notify,
    _lock: File,
}

impl Outbox {
    /// The open outbox of `dir`, or a newly opened one: a reload that keeps the folder
    /// keeps the outbox (its writer, relay and lock).
    pub fn shared(dir: &Path, max_size: u64) -> Result<Arc<Self>, String> {
        static OPEN: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, Weak<Outbox>>>> =
            std::sync::OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(o) = open.get(dir).and_then(Weak::upgrade) {
            return Ok(o);
        }
        let o = Self::open(dir, max_size)?;
        open.insert(dir.to_path_buf(), Arc::downgrade(&o));
        Ok(o)
    }

    /// Opens (or creates) the outbox in `dir`, locks it, recovers from a crash, and
    /// starts its writer and relay. Runs when a snapshot is activated.
    pub fn open(dir: &Path, max_size: u64) -> Result<Arc<Self>, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| format!("cannot open {}/lock: {e}", dir.display()))?;
        lock.try_lock().map_err(|_| {
            format!(
                "{} is in use by another process (each gateway needs its own outbox folder)",
                dir.display()
            )
        })?;
        let cursor = read_cursor(dir);
        let (end, depth, bytes) = recover(dir, cursor)?;
        let (tx, rx) = mpsc::channel(4096);
        let outbox = Arc::new(Self {
            dir: dir.to_path_buf(),
            max_size: AtomicU64::new(max_size),
            tx,
            committed: Mutex::new(end),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            link: ArcSwapOption::empty(),
            retry: Mutex::new(RetrySpec::nack_default()),
            wake: Notify::new(),
            _lock: lock,
        });
        let segment_max = (max_size / 8).clamp(256 << 10, 64 << 20);
        let weak = Arc::downgrade(&outbox);
        std::thread::Builder::new()
            .name("turnpike-outbox".into())
            .spawn(move || writer(weak, rx, end, segment_max))
            .map_err(|e| format!("cannot start the outbox writer: {e}"))?;
        tokio::spawn(relay::relay(
            Arc::downgrade(&outbox),
            cursor.max(first_pos(dir)),
        ));
        if depth > 0 {
            tracing::info!(outbox = %dir.display(), messages = depth, "outbox holds undelivered messages; relaying them");
        }
        Ok(outbox)
    }

    /// Points the relay at `link` (the route's broker in the active snapshot).
    pub fn attach(&self, link: Link, max_size: u64, retry: RetrySpec) {
        // The gauges are per broker, summed over its outboxes: this one's share moves
        // from the broker it was attached to (if another) to the new one.
        let stats = link.stats().clone();
        let before = self.stats();
        if before.as_ref().is_none_or(|b| !Arc::ptr_eq(b, &stats)) {
            let (d, b) = (
                self.depth() as i64,
                self.bytes.load(Ordering::Relaxed) as i64,
            );
            if let Some(old) = before {
                old.outbox_depth.add(-d);
                old.outbox_bytes.add(-b);
            }
            stats.outbox_depth.add(d);
            stats.outbox_bytes.add(b);
        }
        self.link.store(Some(Arc::new(link)));
        self.max_size.store(max_size, Ordering::Relaxed);
        if let Ok(mut r) = self.retry.lock() {
            *r = retry;
        }
        self.wake.notify_one();
    }

    /// Messages not yet relayed.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Acquire)
    }

    /// Keeps `m` durably; returns once it is synced to disk.
    pub async fn append(&self, m: &Message) -> Result<(), OutboxError> {
        let payload = m.encode();
        if payload.len() > MAX_FRAME as usize {
            return Err(OutboxError::TooLarge);
        }
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Append { frame, done })
            .await
            .map_err(|_| OutboxError::Io("the outbox writer stopped".into()))?;
        wait.await
            .unwrap_or_else(|_| Err(OutboxError::Io("the outbox writer stopped".into())))
    }

    fn stats(&self) -> Option<Arc<crate::telemetry::broker_metrics::BrokerStats>> {
        self.link.load().as_ref().map(|l| l.stats().clone())
    }
}

/// Opens segment `seg` for appending; a new one's directory entry is synced too, so that
/// a power loss cannot take the file (and the messages synced into it) away.
fn open_segment(dir: &Path, seg: u64) -> std::io::Result<File> {
    let path = seg_path(dir, seg);
    let existed = path.exists();
    let f = OpenOptions::new().create(true).append(true).open(&path)?;
    if !existed {
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

/// The writer thread: appends batches, syncs once per batch, answers, rotates.
fn writer(weak: Weak<Outbox>, mut rx: mpsc::Receiver<Append>, mut end: Pos, segment_max: u64) {
    let Some(dir) = weak.upgrade().map(|o| o.dir.clone()) else {
        return;
    };
    let mut file: Option<File> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let Some(outbox) = weak.upgrade() else { return };
        if end.off >= segment_max {
            end = Pos {
                seg: end.seg + 1,
                off: 0,
            };
            file = None;
        }
        let f = match file.take() {
            Some(f) => Ok(f),
            None => open_segment(&dir, end.seg),
        };
        let mut f = match f {
            Ok(f) => f,
            Err(e) => {
                for a in batch {
                    let _ = a.done.send(Err(OutboxError::Io(e.to_string())));
                }
                continue;
            }
        };
        let max = outbox.max_size.load(Ordering::Relaxed);
        let mut used = outbox.bytes.load(Ordering::Acquire);
        let mut written = Vec::with_capacity(batch.len());
        let mut failed: Option<String> = None;
        for a in batch {
            let n = a.frame.len() as u64;
            if used + n > max {
                let _ = a.done.send(Err(OutboxError::Full));
                continue;
            }
            if failed.is_none() {
                if let Err(e) = f.write_all(&a.frame) {
                    failed = Some(e.to_string());
                }
            }
            used += n;
            written.push((a, n));
        }
        let synced = match failed {
            Some(e) => Err(e),
            None => f.sync_data().map_err(|e| e.to_string()),
        };
        match synced {
            Ok(()) => {
                let total: u64 = written.iter().map(|(_, n)| n).sum();
                end.off += total;
                outbox.bytes.fetch_add(total, Ordering::AcqRel);
                outbox
                    .depth
                    .fetch_add(written.len() as u64, Ordering::AcqRel);
                if let Ok(mut c) = outbox.committed.lock() {
                    *c = end;
                }
                if let Some(s) = outbox.stats() {
                    s.outbox_written.add(written.len() as u64);
                    s.outbox_depth.add(written.len() as i64);
                    s.outbox_bytes.add(total as i64);
                }
                for (a, _) in written {
                    let _ = a.done.send(Ok(()));
                }
                outbox.wake.notify_one();
                file = Some(f);
            }
            Err(e) => {
                // Nothing of this batch is promised: cut it off again.
                tracing::error!(outbox = %dir.display(), error = %e, "outbox write failed");
                let _ = f.set_len(end.off);
                for (a, _) in written {
                    let _ = a.done.send(Err(OutboxError::Io(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::files::read_batch;
    use super::*;
    use crate::brokers::message::Destination;

    fn msg(i: usize) -> Message {
        Message {
            id: format!("m-{i}"),
            correlation_id: "r".into(),
            content_type: None,
            timestamp: 0,
            headers: vec![],
            to: Destination::Nats {
                subject: "s".into(),
            },
            body: bytes::Bytes::from(vec![b'x'; 100]),
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_rest_is_kept() {
        let dir = std::env::temp_dir().join(format!("tp-outbox-{}", uuid::Uuid::now_v7()));
        {
            let o = Outbox::open(&dir, 1 << 20).unwrap();
            for i in 0..3 {
                o.append(&msg(i)).await.unwrap();
            }
            assert_eq!(o.depth(), 3);
        }
        // The writer thread lets go of the lock when its outbox is gone.
        let seg = seg_path(&dir, 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let o = loop {
            match Outbox::open(&dir, 1 << 20) {
                Ok(o) => break o,
                Err(e) if std::time::Instant::now() < deadline && e.contains("in use") => {
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(o.depth(), 3, "the three synced messages survive");
        let (batch, _) = read_batch(&dir, Pos { seg: 1, off: 0 }, *o.committed.lock().unwrap());
        let ids: Vec<String> = batch.into_iter().map(|(_, _, m)| m.unwrap().id).collect();
        assert_eq!(ids, ["m-0", "m-1", "m-2"]);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            3 * (8 + msg(0).encode().len() as u64),
            "the torn frame was cut off"
        );
        drop(o);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn corrupt_bytes_are_skipped_once_and_never_read_again() {
        let dir = std::env::temp_dir().join(format!("tp-outbox-{}", uuid::Uuid::now_v7()));
        let o = Outbox::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            o.append(&msg(i)).await.unwrap();
        }
        let end = *o.committed.lock().unwrap();
        drop(o);
        // Damage the second frame's payload (its checksum no longer matches).
        let seg = seg_path(&dir, 1);
        let mut bytes = fs::read(&seg).unwrap();
        let frame = bytes.len() / 3;
        bytes[frame + 20] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let (batch, next, skipped) =
            super::files::read_batch_skipping(&dir, Pos { seg: 1, off: 0 }, end);
        let ids: Vec<String> = batch.into_iter().map(|(_, _, m)| m.unwrap().id).collect();
        assert_eq!(ids, ["m-0"], "the good frame before the damage");
        assert_eq!(next, None);
        assert_eq!(
            skipped,
            Some(end),
            "skipped to the committed end, a frame boundary"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_and_a_second_opener_is_refused() {
        let dir = std::env::temp_dir().join(format!("tp-outbox-{}", uuid::Uuid::now_v7()));
        let o = Outbox::open(&dir, 1 << 20).unwrap();
        let err = Outbox::open(&dir, 1 << 20).err().unwrap();
        assert!(err.contains("in use by another process"), "{err}");
        let mut big = msg(0);
        big.body = bytes::Bytes::from(vec![b'y'; 700 << 10]);
        o.append(&big).await.unwrap();
        assert_eq!(o.append(&big).await, Err(OutboxError::Full));
        assert_eq!(o.depth(), 1);
        drop(o);
        let _ = fs::remove_dir_all(&dir);
    }
}
