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

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::warn;

/// Bytes of a record's frame (`len`, `crc`) and fixed body fields.
const RECORD_OVERHEAD: u64 = 8 + 8 + 8 + 1 + 2;

/// Longest record accepted when reading (anything longer is corruption).
const MAX_RECORD: u32 = 64 << 20;

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

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the queue (increasing, never reused).
    pub seq: u64,
    /// When it was queued, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Topic, prefix included.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS 0–2.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
}

impl Entry {
    fn size(&self) -> u64 {
        RECORD_OVERHEAD + self.topic.len() as u64 + self.payload.len() as u64
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let body_len = self.size() - 8;
        let start = out.len();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        out.push(self.qos | (u8::from(self.retain) << 2));
        out.extend_from_slice(&(self.topic.len() as u16).to_le_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Option<Entry> {
        if body.len() < 19 {
            return None;
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
        let ts_ms = u64::from_le_bytes(body[8..16].try_into().ok()?);
        let flags = body[16];
        let tlen = usize::from(u16::from_le_bytes(body[17..19].try_into().ok()?));
        let topic = body.get(19..19 + tlen)?;
        let payload = body.get(19 + tlen..)?;
        Some(Entry {
            seq,
            ts_ms,
            topic: String::from_utf8(topic.to_vec()).ok()?,
            payload: payload.to_vec(),
            qos: flags & 3,
            retain: flags & 4 != 0,
        })
    }
}

/// Read one record; `Ok(None)` at a clean end, `Err` on a torn or corrupt record.
fn read_record(r: &mut impl Read) -> Result<Option<(Entry, u64)>, &'static str> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("torn record header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err("read error"),
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(19..=MAX_RECORD).contains(&len) {
        return Err("bad record length");
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|_| "torn record")?;
    if crc32fast::hash(&body) != crc {
        return Err("record checksum mismatch");
    }
    let e = Entry::decode(&body).ok_or("undecodable record")?;
    Ok(Some((e, 8 + u64::from(len))))
}

/// A segment file on disk.
#[derive(Clone, Debug)]
struct Segment {
    /// First sequence number that may be in it (its file name).
    id: u64,
    /// Highest sequence number in it (0 when empty).
    last: u64,
    /// Records in it.
    count: u64,
    /// Bytes in it.
    bytes: u64,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Reads records of the segments in order, for replay.
struct Reader {
    seg: u64,
    file: BufReader<File>,
    /// Records of `seg` read so far.
    read: u64,
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

/// What one flush writes: built under the queue's ownership, run on a blocking thread.
pub struct FlushJob {
    dir: PathBuf,
    file: Option<(u64, File)>,
    new_segment: Option<u64>,
    records: Vec<u8>,
    count: u64,
    last_seq: u64,
    head: Option<u64>,
    head_file: Option<File>,
    delete: Vec<u64>,
}

/// The outcome of a [`FlushJob`].
pub struct FlushDone {
    file: Option<(u64, File)>,
    head_file: Option<File>,
    written: Result<u64, io::Error>,
    count: u64,
    last_seq: u64,
    head: Option<u64>,
    deleted: Vec<u64>,
}

impl FlushJob {
    /// Do the writes (blocking).
    pub fn run(mut self) -> FlushDone {
        let written = self.write();
        let mut deleted = Vec::new();
        for id in &self.delete {
            match fs::remove_file(seg_path(&self.dir, *id)) {
                Ok(()) => deleted.push(*id),
                Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(*id),
                Err(e) => warn!(segment = id, error = %e, "Cannot delete queue segment."),
            }
        }
        FlushDone {
            file: self.file,
            head_file: self.head_file,
            written,
            count: self.count,
            last_seq: self.last_seq,
            head: self.head,
            deleted,
        }
    }

    fn write(&mut self) -> io::Result<u64> {
        let mut bytes = 0;
        if !self.records.is_empty() {
            if let Some(id) = self.new_segment {
                // Truncate: a segment id is only reused after a failed write, whose torn
                // bytes must not stay in front of the records written now.
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(seg_path(&self.dir, id))?;
                self.file = Some((id, f));
            }
            if let Some((_, f)) = &mut self.file {
                f.write_all(&self.records)?;
                f.sync_data()?;
                bytes += self.records.len() as u64;
            }
            if self.new_segment.is_some() {
                // The new file's directory entry must survive a power cut too.
                File::open(&self.dir)?.sync_all()?;
            }
        }
        if let Some(h) = self.head {
            let f = match &mut self.head_file {
                Some(f) => f,
                None => self.head_file.insert(
                    OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .read(true)
                        .write(true)
                        .open(self.dir.join("head"))?,
                ),
            };
            let mut buf = [0u8; 12];
            buf[..8].copy_from_slice(&h.to_le_bytes());
            let crc = crc32fast::hash(&buf[..8]);
            buf[8..].copy_from_slice(&crc.to_le_bytes());
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&buf)?;
            f.sync_data()?;
            bytes += 12;
        }
        Ok(bytes)
    }
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
    /// Open (or create) the queue in `dir`, recovering what a previous run left.
    pub fn open(dir: &Path, max_size: u64) -> Result<Spool, SpoolError> {
        let err = |error| SpoolError::Dir {
            dir: dir.to_path_buf(),
            error,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let head = read_head(dir);
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(err)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
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
        };
        for id in ids {
            let path = seg_path(dir, id);
            let mut seg = Segment {
                id,
                last: 0,
                count: 0,
                bytes: 0,
            };
            let mut live = 0;
            let mut torn = None;
            match File::open(&path) {
                Ok(f) => {
                    let mut r = BufReader::new(f);
                    loop {
                        match read_record(&mut r) {
                            Ok(Some((e, n))) => {
                                seg.count += 1;
                                seg.bytes += n;
                                seg.last = seg.last.max(e.seq);
                                spool.next_seq = spool.next_seq.max(e.seq + 1);
                                if e.seq >= head {
                                    live += 1;
                                }
                            }
                            Ok(None) => break,
                            Err(why) => {
                                torn = Some(why);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "Cannot read queue segment.");
                    continue;
                }
            }
            if let Some(why) = torn {
                // A crash in the middle of a write: keep the records before it.
                warn!(file = %path.display(), kept = seg.count, reason = why, "Queue segment cut at a torn record.");
                spool.counters.torn += 1;
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(seg.bytes);
                    let _ = f.sync_all();
                }
            }
            if live == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            spool.counters.recovered += live;
            spool.depth += live;
            spool.segments.push_back(seg);
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

    /// The next message to send: first those whose connection was lost, then the queue in
    /// order. `None` when everything was handed out.
    pub fn take_next(&mut self) -> Option<Arc<Entry>> {
        if let Some(e) = self.resend.pop_front() {
            self.inflight.insert(e.seq, e.clone());
            return Some(e);
        }
        let e = self.next_unsent()?;
        self.next_send = e.seq + 1;
        self.inflight.insert(e.seq, e.clone());
        Some(e)
    }

    /// Sequence number of the next message [`take_next`](Self::take_next) returns.
    pub fn peek(&mut self) -> Option<u64> {
        if let Some(e) = self.resend.front() {
            return Some(e.seq);
        }
        if self.peeked.is_none() {
            self.peeked = self.read_ahead();
        }
        if let Some(p) = &self.peeked {
            return Some(p.seq);
        }
        self.mem_unsent().map(|e| e.seq)
    }

    /// The first entry in memory not handed out (memory holds consecutive sequence numbers).
    fn mem_unsent(&self) -> Option<&Arc<Entry>> {
        let front = self.mem.front()?.seq;
        let i = self.next_send.saturating_sub(front);
        self.mem.get(usize::try_from(i).ok()?)
    }

    fn next_unsent(&mut self) -> Option<Arc<Entry>> {
        if self.peeked.is_none() {
            self.peeked = self.read_ahead();
        }
        if let Some(p) = self.peeked.take() {
            return Some(p);
        }
        self.mem_unsent().cloned()
    }

    /// Read the next record at or after `next_send` from disk, if it is still only there.
    fn read_ahead(&mut self) -> Option<Arc<Entry>> {
        let mem_front = self.mem.front().map_or(self.flushed_upto, |e| e.seq);
        while self.next_send < mem_front.min(self.flushed_upto) {
            if self.reader.is_none() {
                let seg = self
                    .segments
                    .iter()
                    .find(|s| s.last >= self.next_send && s.count > 0)?
                    .id;
                let f = File::open(seg_path(&self.dir, seg)).ok()?;
                self.reader = Some(Reader {
                    seg,
                    file: BufReader::new(f),
                    read: 0,
                });
            }
            let r = self.reader.as_mut()?;
            match read_record(&mut r.file) {
                Ok(Some((e, _))) => {
                    r.read += 1;
                    if e.seq >= self.next_send {
                        return Some(Arc::new(e));
                    }
                }
                Ok(None) | Err(_) => {
                    // End of this segment: go on with the next one, or with memory.
                    let seg = r.seg;
                    self.reader = None;
                    match self.segments.iter().find(|s| s.id > seg) {
                        Some(next) => self.next_send = self.next_send.max(next.id),
                        None => self.next_send = self.next_send.max(mem_front),
                    }
                }
            }
        }
        None
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

    /// Prepare the next disk write: unacknowledged messages still only in memory, the
    /// `head` file when it moved, and segments fully acknowledged. `None` when there is
    /// nothing to do (or a write is under way).
    pub fn flush_job(&mut self) -> Option<FlushJob> {
        if self.flushing {
            return None;
        }
        let head = self.head();
        // Messages acknowledged before their batch was written never touch the disk.
        let resend: std::collections::HashSet<u64> = self.resend.iter().map(|e| e.seq).collect();
        let acked = |seq: u64| {
            seq < head
                || (seq < self.next_send
                    && !self.inflight.contains_key(&seq)
                    && !resend.contains(&seq))
        };
        let mut records = Vec::new();
        let mut count = 0;
        let upto = self.next_seq;
        for e in &self.mem {
            if !acked(e.seq) {
                e.encode(&mut records);
                count += 1;
            }
        }
        // Segments whose every record is acknowledged (the appended one included, which
        // then starts afresh).
        let mut delete = Vec::new();
        for s in &self.segments {
            if s.last < head {
                delete.push(s.id);
            }
        }
        let active = self.segments.back().map(|s| (s.id, s.bytes));
        let new_segment = if records.is_empty() {
            None
        } else {
            match active {
                Some((id, bytes))
                    if !delete.contains(&id)
                        && bytes + records.len() as u64 <= self.segment_size
                        && self.file.as_ref().is_some_and(|(f, _)| *f == id) =>
                {
                    None
                }
                _ => Some(self.mem.front().map_or(self.next_seq, |e| e.seq)),
            }
        };
        let remaining_on_disk = self.segments.iter().any(|s| s.last >= head);
        let head_update =
            (head != self.head_written && (remaining_on_disk || count > 0)).then_some(head);
        if records.is_empty() && delete.is_empty() && head_update.is_none() {
            // Nothing to write; memory entries handed out and acknowledged can go.
            self.flushed_upto = upto;
            self.drop_written(upto);
            return None;
        }
        let file = if new_segment.is_some() {
            None
        } else {
            self.file.take()
        };
        self.flushing = true;
        tracing::debug!(
            count,
            head,
            upto,
            next_send = self.next_send,
            in_flight = self.inflight.len(),
            resend = self.resend.len(),
            "Queue flush."
        );
        Some(FlushJob {
            dir: self.dir.clone(),
            file,
            new_segment,
            records,
            count,
            last_seq: upto.saturating_sub(1),
            head: head_update,
            head_file: self.head_file.take(),
            delete,
        })
    }

    fn drop_written(&mut self, upto: u64) {
        while let Some(e) = self.mem.front() {
            if e.seq >= upto {
                break;
            }
            self.mem_bytes -= e.size();
            self.mem.pop_front();
        }
    }

    /// Record the outcome of a [`FlushJob`].
    pub fn flush_done(&mut self, done: FlushDone) {
        self.flushing = false;
        self.head_file = done.head_file;
        for id in &done.deleted {
            if let Some(i) = self.segments.iter().position(|s| s.id == *id) {
                self.segments.remove(i);
            }
            if self.file.as_ref().is_some_and(|(f, _)| f == id) {
                self.file = None;
            }
            if self.reader.as_ref().is_some_and(|r| r.seg == *id) {
                self.reader = None;
            }
        }
        match done.written {
            Ok(bytes) => {
                self.counters.disk_bytes_written += bytes;
                if bytes > 0 {
                    self.counters.disk_writes += 1;
                }
                self.counters.messages_written += done.count;
                if let Some(h) = done.head {
                    self.head_written = h;
                }
                if done.count > 0 {
                    if let Some((id, f)) = done.file {
                        let record_bytes = bytes - if done.head.is_some() { 12 } else { 0 };
                        match self.segments.back_mut() {
                            Some(s) if s.id == id => {
                                s.bytes += record_bytes;
                                s.count += done.count;
                                s.last = s.last.max(done.last_seq);
                            }
                            _ => self.segments.push_back(Segment {
                                id,
                                last: done.last_seq,
                                count: done.count,
                                bytes: record_bytes,
                            }),
                        }
                        self.file = Some((id, f));
                    }
                } else if let Some(f) = done.file {
                    self.file = Some(f);
                }
                let upto = done.last_seq + 1;
                self.flushed_upto = self.flushed_upto.max(upto);
                self.drop_written(upto);
            }
            Err(e) => {
                // Keep everything in memory and try again next interval; the size bound
                // still holds (drop-oldest).
                self.counters.disk_errors += 1;
                warn!(dir = %self.dir.display(), error = %e, "Cannot write the upstream queue.");
                self.file = None;
            }
        }
        self.enforce_bound();
    }

    /// Write everything now (blocking): used at shutdown.
    pub fn flush_blocking(&mut self) {
        while let Some(job) = self.flush_job() {
            let done = job.run();
            // Stop on an error, and when nothing could be written or deleted (a read-only
            // file system): the next start tries again.
            let stuck = done.written.as_ref().map_or(true, |b| *b == 0) && done.deleted.is_empty();
            self.flush_done(done);
            if stuck {
                break;
            }
        }
    }
}

fn read_head(dir: &Path) -> u64 {
    let Ok(b) = fs::read(dir.join("head")) else {
        return 0;
    };
    if b.len() < 12 {
        return 0;
    }
    let crc = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if crc32fast::hash(&b[..8]) != crc {
        // A torn head: replay everything on disk (duplicates, never a loss).
        warn!(dir = %dir.display(), "Queue head unreadable: replaying the whole queue.");
        return 0;
    }
    u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_n(s: &mut Spool, from: usize, n: usize) {
        for i in from..from + n {
            s.push(
                format!("t/{}", i % 3),
                format!("{i:06}").into_bytes(),
                1,
                true,
            );
        }
    }

    fn drain(s: &mut Spool) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = s.take_next() {
            out.push(String::from_utf8_lossy(&e.payload).into_owned());
            s.ack(e.seq);
        }
        out
    }

    fn segment_file(dir: &Path) -> PathBuf {
        fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok())
            .find(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .expect("a segment")
            .path()
    }

    fn numbers(v: &[String]) -> Vec<usize> {
        v.iter().filter_map(|x| x.parse().ok()).collect()
    }

    #[test]
    fn survives_a_restart_and_replays_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        push_n(&mut s, 0, 100);
        s.flush_blocking();
        assert_eq!(s.counters.messages_written, 100);
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.counters.recovered, 100);
        assert_eq!(s.depth(), 100);
        push_n(&mut s, 100, 10);
        let got = numbers(&drain(&mut s));
        assert_eq!(got, (0..110).collect::<Vec<_>>());
        assert_eq!(s.depth(), 0);
    }

    #[test]
    fn acknowledged_before_the_flush_never_touches_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        push_n(&mut s, 0, 50);
        assert_eq!(drain(&mut s).len(), 50);
        s.flush_blocking();
        assert_eq!(s.counters.disk_bytes_written, 0);
        assert_eq!(s.bytes(), 0);
        let files = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(files, 0);
    }

    #[test]
    fn a_torn_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        push_n(&mut s, 0, 10);
        s.flush_blocking();
        drop(s);
        // A crash in the middle of the next write: half a record at the end.
        let seg = segment_file(dir.path());
        let good = fs::metadata(&seg).expect("meta").len();
        let mut partial = Vec::new();
        Entry {
            seq: 10,
            ts_ms: 0,
            topic: "t/x".into(),
            payload: b"lost".to_vec(),
            qos: 1,
            retain: false,
        }
        .encode(&mut partial);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        f.write_all(&partial[..partial.len() / 2]).expect("write");
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(s.counters.torn, 1);
        assert_eq!(s.counters.recovered, 10);
        assert_eq!(fs::metadata(&seg).expect("meta").len(), good);
        push_n(&mut s, 10, 5);
        s.flush_blocking();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen 2");
        assert_eq!(numbers(&drain(&mut s)), (0..15).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_bit_is_never_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        push_n(&mut s, 0, 4);
        s.flush_blocking();
        drop(s);
        let seg = segment_file(dir.path());
        let mut b = fs::read(&seg).expect("read");
        let last = b.len() - 1;
        b[last] ^= 0x01;
        fs::write(&seg, b).expect("write");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(numbers(&drain(&mut s)), vec![0, 1, 2]);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 64 << 10;
        let mut s = Spool::open(dir.path(), max).expect("open");
        for round in 0..20 {
            push_n(&mut s, round * 100, 100);
            s.flush_blocking();
            assert!(s.bytes() <= max, "{} > {max}", s.bytes());
        }
        let dropped = s.counters.dropped;
        assert!(dropped > 0);
        let got = numbers(&drain(&mut s));
        assert_eq!(got.len() as u64 + dropped, 2000);
        assert_eq!(got.last(), Some(&1999));
        assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept");
    }

    #[test]
    fn lost_connection_resends_in_order_and_head_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        push_n(&mut s, 0, 10);
        s.flush_blocking();
        let sent: Vec<u64> = (0..6)
            .filter_map(|_| s.take_next().map(|e| e.seq))
            .collect();
        assert_eq!(sent, vec![0, 1, 2, 3, 4, 5]);
        s.ack(0);
        s.ack(1);
        s.ack(3);
        s.rewind(&|_| false);
        assert_eq!(s.head(), 2);
        let again: Vec<u64> = (0..3)
            .filter_map(|_| s.take_next().map(|e| e.seq))
            .collect();
        assert_eq!(again, vec![2, 4, 5]);
        s.ack(2);
        s.flush_blocking();
        drop(s);
        // 0–3 acknowledged, 4 and 5 in flight: a restart replays from 4.
        let mut s = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(numbers(&drain(&mut s)), (4..10).collect::<Vec<_>>());
    }
}
