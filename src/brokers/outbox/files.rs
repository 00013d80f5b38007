//! The outbox's files: segment names, the cursor (replaced atomically), frames
//! (`[length][crc32][message]`), crash recovery (a torn tail cut off), and reading a
//! batch for the relay.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Pos, MAX_FRAME, RELAY_BATCH};
use crate::brokers::Message;

/// Segment file name of `seg`.
pub(super) fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016}.log"))
}

pub(super) fn read_cursor(dir: &Path) -> Pos {
    let text = fs::read_to_string(dir.join("cursor")).unwrap_or_default();
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(seg), Some(off)) => Pos { seg, off },
        _ => Pos::default(),
    }
}

pub(super) fn write_cursor(dir: &Path, pos: Pos) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", pos.seg, pos.off)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join("cursor"))?;
    File::open(dir)?.sync_all()
}

pub(super) fn segments(dir: &Path) -> Vec<u64> {
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

pub(super) fn first_pos(dir: &Path) -> Pos {
    Pos {
        seg: segments(dir).first().copied().unwrap_or(1),
        off: 0,
    }
}

/// Reads the frame at the reader's position: `None` at a clean end or a torn or
/// corrupt frame.
pub(super) fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
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
pub(super) fn recover(dir: &Path, cursor: Pos) -> Result<(Pos, u64, u64), String> {
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

pub(super) type Read3 = (Pos, u64, Result<Message, String>);

/// Up to [`RELAY_BATCH`] messages from `from` (not past `end`), each with the position
/// after it and its size; at the end of a segment that is not the last, the next one.
#[cfg(test)]
pub(super) fn read_batch(dir: &Path, from: Pos, end: Pos) -> (Vec<Read3>, Option<u64>) {
    let (out, next, _) = read_batch_skipping(dir, from, end);
    (out, next)
}

/// [`read_batch`], and where a corrupt frame made it skip to (the end of the committed
/// part of that segment), if one did.
pub(super) fn read_batch_skipping(
    dir: &Path,
    from: Pos,
    end: Pos,
) -> (Vec<Read3>, Option<u64>, Option<Pos>) {
    let mut out = Vec::new();
    let mut skipped = None;
    let Ok(mut f) = File::open(seg_path(dir, from.seg)) else {
        // A missing segment: go on with the next one that exists.
        let next = segments(dir).into_iter().find(|&s| s > from.seg);
        return (out, next.or((from.seg < end.seg).then_some(end.seg)), None);
    };
    let limit = if from.seg == end.seg {
        end.off
    } else {
        f.metadata().map(|m| m.len()).unwrap_or(0)
    };
    if f.seek(SeekFrom::Start(from.off)).is_err() {
        return (out, None, None);
    }
    let mut reader = std::io::BufReader::new(f);
    let mut off = from.off;
    while out.len() < RELAY_BATCH && off < limit {
        let Some(payload) = read_frame(&mut reader) else {
            // Corrupt: skip to the end of what is committed in this segment (a frame
            // boundary), never reading the same bad bytes again.
            off = limit;
            skipped = Some(Pos {
                seg: from.seg,
                off: limit,
            });
            break;
        };
        let n = 8 + payload.len() as u64;
        off += n;
        out.push((Pos { seg: from.seg, off }, n, Message::decode(&payload)));
    }
    let next = (off >= limit && from.seg < end.seg).then_some(from.seg + 1);
    (out, next, skipped)
}
