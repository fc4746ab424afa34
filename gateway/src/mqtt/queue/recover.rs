//! Opening the queue: the segments a previous run left are read through, a torn record at
//! the end of one is cut off, and segments with nothing unacknowledged are deleted.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::BufReader,
    path::{Path, PathBuf},
};

use tracing::warn;

use super::{
    format::{read_head, read_record, seg_path, Segment},
    Spool, SpoolCounters, SpoolError,
};

/// What reading one segment file through found.
struct Scanned {
    seg: Segment,
    /// Records at or above the head (not acknowledged).
    live: u64,
    /// Highest sequence number in it, plus one (0 when empty).
    next_seq: u64,
    /// Why reading stopped before the end of the file.
    torn: Option<&'static str>,
}

impl Spool {
    /// Open (or create) the queue in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_size: u64) -> Result<Spool, SpoolError> {
        let err = |error| SpoolError::Dir {
            dir: dir.to_path_buf(),
            error,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let head = read_head(dir);
        let ids = segment_ids(dir).map_err(err)?;
        let mut spool = Spool::empty(dir.to_path_buf(), max_size, head);
        for id in ids {
            let path = seg_path(dir, id);
            let s = match scan(&path, id, head) {
                Ok(s) => s,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "Cannot read queue segment.");
                    continue;
                }
            };
            spool.next_seq = spool.next_seq.max(s.next_seq);
            if let Some(why) = s.torn {
                // A crash in the middle of a write: keep the records before it.
                warn!(file = %path.display(), kept = s.seg.count, reason = why, "Queue segment cut at a torn record.");
                spool.counters.torn += 1;
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(s.seg.bytes);
                    let _ = f.sync_all();
                }
            }
            if s.live == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            spool.counters.recovered += s.live;
            spool.depth += s.live;
            spool.segments.push_back(s.seg);
        }
        spool.flushed_upto = spool.next_seq;
        tracing::debug!(
            head,
            next_seq = spool.next_seq,
            segments = spool.segments.len(),
            "Queue opened."
        );
        // Append to a fresh segment: the recovered ones stay as they are.
        Ok(spool)
    }

    /// A queue with nothing in it, whose next sequence number is `head`.
    fn empty(dir: PathBuf, max_size: u64, head: u64) -> Spool {
        Spool {
            dir,
            max_size,
            segment_size: (max_size / 8).max(16 << 10),
            segments: VecDeque::new(),
            file: None,
            head_file: None,
            flushing: false,
            mem: VecDeque::new(),
            mem_bytes: 0,
            next_seq: head,
            flushed_upto: head,
            next_send: head,
            reader: None,
            peeked: None,
            inflight: BTreeMap::new(),
            resend: VecDeque::new(),
            depth: 0,
            head_written: head,
            counters: SpoolCounters::default(),
        }
    }
}

/// The ids of the segment files in `dir`, oldest first.
fn segment_ids(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".seg")?.parse::<u64>().ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Read segment `id` through, up to its end or its first torn record.
fn scan(path: &Path, id: u64, head: u64) -> std::io::Result<Scanned> {
    let mut r = BufReader::new(File::open(path)?);
    let mut s = Scanned {
        seg: Segment {
            id,
            last: 0,
            count: 0,
            bytes: 0,
        },
        live: 0,
        next_seq: 0,
        torn: None,
    };
    loop {
        match read_record(&mut r) {
            Ok(Some((e, n))) => {
                s.seg.count += 1;
                s.seg.bytes += n;
                s.seg.last = s.seg.last.max(e.seq);
                s.next_seq = s.next_seq.max(e.seq + 1);
                if e.seq >= head {
                    s.live += 1;
                }
            }
            Ok(None) => break,
            Err(why) => {
                s.torn = Some(why);
                break;
            }
        }
    }
    Ok(s)
}
