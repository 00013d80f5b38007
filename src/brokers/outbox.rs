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
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Link, Message, PublishError};
use crate::config::brokers::{BackoffSpec, RetrySpec};
use crate::config::Dur;

/// The largest frame read back (a corrupt length never allocates more).
const MAX_FRAME: u32 = 64 << 20;
/// Messages relayed between two cursor writes.
const RELAY_BATCH: usize = 64;

/// Why a message could not be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxError {
    /// Undelivered messages already take `max_size`.
    Full,
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

/// Segment file name of `seg`.
fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.log"))
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
            retry: Mutex::new(RetrySpec {
                attempts: 3,
                backoff: BackoffSpec {
                    base: Dur(Duration::from_millis(50)),
                    max: Dur(Duration::from_millis(500)),
                },
            }),
            wake: Notify::new(),
            _lock: lock,
        });
        let segment_max = (max_size / 8).clamp(256 << 10, 64 << 20);
        let weak = Arc::downgrade(&outbox);
        std::thread::Builder::new()
            .name("turnpike-outbox".into())
            .spawn(move || writer(weak, rx, end, segment_max))
            .map_err(|e| format!("cannot start the outbox writer: {e}"))?;
        tokio::spawn(relay(Arc::downgrade(&outbox), cursor.max(first_pos(dir))));
        if depth > 0 {
            tracing::info!(outbox = %dir.display(), messages = depth, "outbox holds undelivered messages; relaying them");
        }
        Ok(outbox)
    }

    /// Points the relay at `link` (the route's broker in the active snapshot).
    pub fn attach(&self, link: Link, max_size: u64, retry: RetrySpec) {
        let stats = link.stats().clone();
        stats.outbox_depth.set(self.depth() as i64);
        stats
            .outbox_bytes
            .set(self.bytes.load(Ordering::Relaxed) as i64);
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

fn read_cursor(dir: &Path) -> Pos {
    let text = fs::read_to_string(dir.join("cursor")).unwrap_or_default();
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(seg), Some(off)) => Pos { seg, off },
        _ => Pos::default(),
    }
}

fn write_cursor(dir: &Path, pos: Pos) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", pos.seg, pos.off)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    File::open(dir)?.sync_all()
}

fn segments(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

fn first_pos(dir: &Path) -> Pos {
    Pos {
        seg: segments(dir).first().copied().unwrap_or(1),
        off: 0,
    }
}

/// Reads the frame at the reader's position: `None` at a clean end or a torn or
/// corrupt frame.
fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).ok()?;
    (crc32fast::hash(&payload) == crc).then_some(payload)
}

/// Scans from `cursor` to the end: cuts a torn tail off the last segment and counts
/// what is left to relay. Returns the end position, messages and bytes.
fn recover(dir: &Path, cursor: Pos) -> Result<(Pos, u64, u64), String> {
    let segs = segments(dir);
    let Some(&last) = segs.last() else {
        return Ok((Pos { seg: 1, off: 0 }, 0, 0));
    };
    let (mut depth, mut bytes) = (0u64, 0u64);
    let mut end = Pos { seg: last, off: 0 };
    for &seg in &segs {
        if seg < cursor.seg {
            // Relayed before the crash, not yet deleted.
            let _ = fs::remove_file(seg_path(dir, seg));
            continue;
        }
        let path = seg_path(dir, seg);
        let mut f =
            File::open(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = if seg == cursor.seg {
            cursor.off.min(len)
        } else {
            0
        };
        let mut reader = std::io::BufReader::new(&mut f);
        let _ = reader.seek(SeekFrom::Start(start));
        let mut off = start;
        while let Some(payload) = read_frame(&mut reader) {
            off += 8 + payload.len() as u64;
            depth += 1;
            bytes += 8 + payload.len() as u64;
        }
        if off < len {
            if seg == last {
                tracing::warn!(outbox = %dir.display(), segment = seg, "cutting a torn write off the outbox (its request was never answered)");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("cannot repair {}: {e}", path.display()))?;
                f.set_len(off).map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
            } else {
                tracing::error!(outbox = %dir.display(), segment = seg, offset = off, "corrupt outbox segment; the rest of it is skipped");
            }
        }
        if seg == last {
            end = Pos { seg, off };
        }
    }
    Ok((end, depth, bytes))
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
            None => OpenOptions::new()
                .create(true)
                .append(true)
                .open(seg_path(&dir, end.seg)),
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

/// The relay task: publishes what the writer synced, in order, until the outbox closes.
async fn relay(weak: Weak<Outbox>, mut cursor: Pos) {
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
        let read = tokio::task::spawn_blocking(move || read_batch(&dir, from, committed)).await;
        let Ok((messages, next_seg)) = read else {
            return;
        };
        let retry = outbox.retry.lock().map(|r| *r).unwrap_or(RetrySpec {
            attempts: 1,
            backoff: BackoffSpec {
                base: Dur::secs(1),
                max: Dur::secs(1),
            },
        });
        let mut relayed = 0u64;
        let mut relayed_bytes = 0u64;
        let mut stalled = false;
        for (pos_after, n, m) in &messages {
            let result = match m {
                Ok(m) => link.publish(m, &retry).await,
                Err(e) => {
                    tracing::error!(outbox = %outbox.dir.display(), error = %e, "unreadable outbox record skipped");
                    Ok(())
                }
            };
            match result {
                Ok(()) => {}
                Err(PublishError::Unroutable(reason)) => {
                    if let Ok(m) = m {
                        park_unroutable(&outbox.dir, m, &reason);
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
        if messages.is_empty() {
            if let Some(seg) = next_seg {
                cursor = Pos { seg, off: 0 };
            }
        }
        if relayed > 0 || messages.is_empty() {
            let dir = outbox.dir.clone();
            let at = cursor;
            let _ = tokio::task::spawn_blocking(move || {
                if write_cursor(&dir, at).is_ok() {
                    for seg in segments(&dir) {
                        if seg < at.seg {
                            let _ = fs::remove_file(seg_path(&dir, seg));
                        }
                    }
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
                base: Dur(Duration::from_millis(100)),
                max: Dur::secs(5),
            }
            .delay(failures);
            drop(outbox);
            tokio::time::sleep(super::jitter(wait)).await;
        } else {
            if failures > 0 {
                tracing::info!(outbox = %outbox.dir.display(), "relaying outbox messages again");
            }
            failures = 0;
        }
    }
}

type Read3 = (Pos, u64, Result<Message, String>);

/// Up to [`RELAY_BATCH`] messages from `from` (not past `end`), each with the position
/// after it and its size; at the end of a segment that is not the last, the next one.
fn read_batch(dir: &Path, from: Pos, end: Pos) -> (Vec<Read3>, Option<u64>) {
    let mut out = Vec::new();
    let Ok(mut f) = File::open(seg_path(dir, from.seg)) else {
        // A missing segment: go on with the next one that exists.
        let next = segments(dir).into_iter().find(|&s| s > from.seg);
        return (out, next.or((from.seg < end.seg).then_some(end.seg)));
    };
    let limit = if from.seg == end.seg {
        end.off
    } else {
        f.metadata().map(|m| m.len()).unwrap_or(0)
    };
    if f.seek(SeekFrom::Start(from.off)).is_err() {
        return (out, None);
    }
    let mut reader = std::io::BufReader::new(f);
    let mut off = from.off;
    while out.len() < RELAY_BATCH && off < limit {
        let Some(payload) = read_frame(&mut reader) else {
            // Corrupt in a finished segment: skip to its end.
            off = limit;
            break;
        };
        let n = 8 + payload.len() as u64;
        off += n;
        out.push((Pos { seg: from.seg, off }, n, Message::decode(&payload)));
    }
    let next = (off >= limit && from.seg < end.seg).then_some(from.seg + 1);
    (out, next)
}

/// Keeps a message no queue takes, for an operator to look at.
fn park_unroutable(dir: &Path, m: &Message, reason: &str) {
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
    }
}

#[cfg(test)]
mod tests {
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
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
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
