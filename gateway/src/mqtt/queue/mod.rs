//! The upstream store-and-forward queue: every message for the upstream broker waits here
//! until the broker acknowledged it.
//!
//! Messages are appended in memory and written to disk in one batch per flush interval
//! (one `write` and one `fdatasync`), so a `kill -9` or a power cut loses at most the
//! messages of the last interval that the broker had not acknowledged yet. A message the
//! broker acknowledged before its batch was written never touches the disk: with a healthy
//! uplink the queue costs (almost) no disk writes at all.
//!
//! On disk the queue is a directory of segment files (`<first seq>.seg`), each a sequence of
//! records `len u32 | crc32 u32 | body`, plus a `head` file holding the sequence number below
//! which everything was acknowledged. A torn record at the end of a segment (a crash during
//! a write) fails its length or CRC check and is cut off when the queue is opened; the
//! records before it are kept. Segments whose records are all acknowledged are deleted.
//!
//! The queue is bounded: beyond `max_size` the oldest segment is dropped whole (segments
//! are an eighth of `max_size`) and its unsent messages are counted as dropped.
//!
//! The parts: `format.rs` (records, segments, the `head` file), `recover.rs` (opening),
//! `writer.rs` (the batched disk writes) and `replay.rs` (what to send next).

mod format;
mod recover;
mod replay;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File},
    io,
    path::PathBuf,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::warn;

pub use format::Entry;
pub use writer::FlushDone;

use format::{seg_path, Segment};
use replay::Reader;

/// Why the queue could not be opened.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// The directory could not be created or read.
    #[error("queue directory `{dir}`: {error}")]
    Dir {
        /// Directory.
        dir: PathBuf,
        /// What failed.
        error: io::Error,
    },
}

/// Counters of the queue (also in `<base>/diagnostics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolCounters {
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// Bytes written to disk (records and head updates).
    pub disk_bytes_written: u64,
    /// Disk writes (each followed by an fdatasync).
    pub disk_writes: u64,
    /// Writes that failed (disk full, read-only, removed).
    pub disk_errors: u64,
    /// Messages that reached the disk.
    pub messages_written: u64,
    /// Messages recovered from disk when the queue was opened.
    pub recovered: u64,
    /// Torn or corrupt records cut off when the queue was opened.
    pub torn: u64,
}

/// The queue. One task owns it (the upstream MQTT task).
pub struct Spool {
    dir: PathBuf,
    max_size: u64,
    segment_size: u64,
    /// Segments on disk, oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    /// The open file of the last segment (absent while a flush holds it).
    file: Option<(u64, File)>,
    head_file: Option<File>,
    flushing: bool,
    /// Queued and not yet on disk, in order.
    mem: VecDeque<Arc<Entry>>,
    mem_bytes: u64,
    next_seq: u64,
    /// Every entry below this is on disk or acknowledged.
    flushed_upto: u64,
    /// Entries below this were handed out (or dropped).
    next_send: u64,
    reader: Option<Reader>,
    /// The next record from disk, read ahead.
    peeked: Option<Arc<Entry>>,
    /// Handed out, not acknowledged.
    inflight: BTreeMap<u64, Arc<Entry>>,
    /// Handed out, then the connection was lost: sent again first.
    resend: VecDeque<Arc<Entry>>,
    /// Unacknowledged entries (queued, in flight or to resend).
    depth: u64,
    /// Head as last written to the `head` file.
    head_written: u64,
    /// Counters.
    pub counters: SpoolCounters,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Spool {
    /// Queue a message.
    pub fn push(&mut self, topic: String, payload: Vec<u8>, qos: u8, retain: bool) {
        let e = Entry {
            seq: self.next_seq,
            ts_ms: now_ms(),
            topic,
            payload,
            qos,
            retain,
        };
        self.next_seq += 1;
        self.mem_bytes += e.size();
        self.mem.push_back(Arc::new(e));
        self.depth += 1;
        self.enforce_bound();
    }

    /// Bytes on disk plus bytes waiting in memory.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum::<u64>() + self.mem_bytes
    }

    /// Bytes queued in memory, not yet written.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Messages not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Messages handed out and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Sequence number the next queued message gets.
    pub fn tail(&self) -> u64 {
        self.next_seq
    }

    fn enforce_bound(&mut self) {
        while self.bytes() > self.max_size {
            if self.segments.len() > 1 || (self.segments.len() == 1 && !self.flushing) {
                let Some(seg) = self.segments.pop_front() else {
                    break;
                };
                if self.file.as_ref().is_some_and(|(id, _)| *id == seg.id) {
                    self.file = None;
                }
                let unsent = if self.next_send > seg.last {
                    0
                } else if self.reader.as_ref().is_some_and(|r| r.seg == seg.id) {
                    (seg.count + u64::from(self.peeked.is_some()))
                        .saturating_sub(self.reader.as_ref().map_or(0, |r| r.read))
                } else {
                    seg.count
                };
                if self.reader.as_ref().is_some_and(|r| r.seg == seg.id) {
                    self.reader = None;
                    self.peeked = None;
                }
                // Entries after the dropped segment's records.
                self.next_send = self.next_send.max(seg.last + 1);
                self.counters.dropped += unsent;
                self.depth = self.depth.saturating_sub(unsent);
                if let Err(e) = fs::remove_file(seg_path(&self.dir, seg.id)) {
                    warn!(segment = seg.id, error = %e, "Cannot delete queue segment.");
                }
                warn!(
                    dropped = unsent,
                    "Upstream queue full: oldest messages dropped."
                );
            } else if let Some(e) = self.mem.front() {
                // Older unsent records on disk go first (the segment is dropped when the
                // write under way is done); handed-out ones stay in flight.
                if !self.segments.is_empty() || e.seq < self.next_send {
                    // Handed out already (kept in flight) or being written: stop here.
                    break;
                }
                let e = self.mem.pop_front().expect("front exists");
                self.mem_bytes -= e.size();
                self.next_send = self.next_send.max(e.seq + 1);
                self.flushed_upto = self.flushed_upto.max(e.seq + 1);
                self.counters.dropped += 1;
                self.depth = self.depth.saturating_sub(1);
            } else {
                break;
            }
        }
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        if self.inflight.remove(&seq).is_some() {
            self.depth = self.depth.saturating_sub(1);
        }
    }

    /// The connection was lost: everything in flight is sent again first, in order, except
    /// `keep` (still waiting in the client and sent after the reconnect anyway).
    pub fn rewind(&mut self, keep: &dyn Fn(u64) -> bool) {
        let mut back: Vec<Arc<Entry>> = Vec::new();
        self.inflight.retain(|seq, e| {
            if keep(*seq) {
                true
            } else {
                back.push(e.clone());
                false
            }
        });
        back.extend(self.resend.drain(..));
        back.sort_by_key(|e| e.seq);
        self.resend = back.into();
    }

    /// Every sequence number below this is acknowledged (or dropped).
    pub fn head(&self) -> u64 {
        let mut h = self.next_send;
        if let Some((s, _)) = self.inflight.first_key_value() {
            h = h.min(*s);
        }
        if let Some(e) = self.resend.front() {
            h = h.min(e.seq);
        }
        h
    }

    /// Age of the oldest unacknowledged message, ms.
    pub fn oldest_age_ms(&mut self) -> u64 {
        let now = now_ms();
        let mut oldest = u64::MAX;
        if let Some((_, e)) = self.inflight.first_key_value() {
            oldest = oldest.min(e.ts_ms);
        }
        if let Some(e) = self.resend.front() {
            oldest = oldest.min(e.ts_ms);
        }
        if self.peek().is_some() {
            if let Some(p) = &self.peeked {
                oldest = oldest.min(p.ts_ms);
            } else if let Some(e) = self.mem_unsent() {
                oldest = oldest.min(e.ts_ms);
            }
        }
        if oldest == u64::MAX {
            0
        } else {
            now.saturating_sub(oldest)
        }
    }
}
