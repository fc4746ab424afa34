//! The queue's file format: records `len u32 | crc32 u32 | body` in segment files named
//! `<first seq>.seg`, and the 12-byte `head` file (`seq u64 | crc32 u32`).
//!
//! A record's body is `seq u64 | time u64 | flags u8 | topic length u16 | topic | payload`,
//! little-endian; flags hold the QoS (bits 0–1) and the retain flag (bit 2).

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use tracing::warn;

/// Bytes of a record's frame (`len`, `crc`) and fixed body fields.
const RECORD_OVERHEAD: u64 = 8 + 8 + 8 + 1 + 2;

/// Longest record accepted when reading (anything longer is corruption).
const MAX_RECORD: u32 = 64 << 20;

/// Bytes of the `head` file.
pub(super) const HEAD_BYTES: u64 = 12;

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
    pub(super) fn size(&self) -> u64 {
        RECORD_OVERHEAD + self.topic.len() as u64 + self.payload.len() as u64
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
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

    pub(super) fn decode(body: &[u8]) -> Option<Entry> {
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
pub(super) fn read_record(r: &mut impl Read) -> Result<Option<(Entry, u64)>, &'static str> {
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
pub(super) struct Segment {
    /// First sequence number that may be in it (its file name).
    pub(super) id: u64,
    /// Highest sequence number in it (0 when empty).
    pub(super) last: u64,
    /// Records in it.
    pub(super) count: u64,
    /// Bytes in it.
    pub(super) bytes: u64,
}

pub(super) fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

pub(super) fn read_head(dir: &Path) -> u64 {
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

/// The `head` file's content for `head`: the sequence number and its CRC-32.
pub(super) fn encode_head(head: u64) -> [u8; 12] {
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&head.to_le_bytes());
    let crc = crc32fast::hash(&buf[..8]);
    buf[8..].copy_from_slice(&crc.to_le_bytes());
    buf
}
