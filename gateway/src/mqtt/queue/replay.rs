//! Replay: what to send next, first the messages whose connection was lost, then the queue
//! in order, read back from the segment files while they hold records no longer in memory.

use std::{fs::File, io::BufReader, sync::Arc};

use super::{
    format::{read_record, seg_path, Entry},
    Spool,
};

/// Reads records of the segments in order, for replay.
pub(super) struct Reader {
    /// The segment being read.
    pub(super) seg: u64,
    file: BufReader<File>,
    /// Records of `seg` read so far.
    pub(super) read: u64,
}

impl Spool {
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
    pub(super) fn mem_unsent(&self) -> Option<&Arc<Entry>> {
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
}
