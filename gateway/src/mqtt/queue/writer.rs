//! Writing: one batch per flush interval, built while the upstream task owns the queue
//! ([`Spool::flush_job`]), written on a blocking thread ([`FlushJob::run`]) and recorded
//! back ([`Spool::flush_done`]).

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Seek, SeekFrom, Write},
    path::PathBuf,
};

use tracing::warn;

use super::{
    format::{encode_head, seg_path, Segment, HEAD_BYTES},
    Spool,
};

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
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&encode_head(h))?;
            f.sync_data()?;
            bytes += HEAD_BYTES;
        }
        Ok(bytes)
    }
}

impl Spool {
    /// Prepare the next disk write: unacknowledged messages still only in memory, the
    /// `head` file when it moved, and segments fully acknowledged. `None` when there is
    /// nothing to do (or a write is under way).
    pub fn flush_job(&mut self) -> Option<FlushJob> {
        if self.flushing {
            return None;
        }
        let head = self.head();
        // Messages acknowledged before their batch was written never touch the disk.
        let resend: HashSet<u64> = self.resend.iter().map(|e| e.seq).collect();
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

    /// Record the outcome of a `FlushJob`.
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
                        let record_bytes = bytes - if done.head.is_some() { HEAD_BYTES } else { 0 };
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
