//! The broker store's file format.
//!
//! A file is the 12-byte header `FLBROKER | version u32`, then records
//! `len u32 | crc32 u32 | kind u8 | body`, little-endian, where `len` counts `kind` and
//! `body` and the CRC covers them. Kinds: a client's retained message, a persistent
//! session (without its messages), one message queued for the session before it, and the
//! end record (`records u64 | saved at i64`), always last. A file that stops before its
//! end record was torn; a record whose CRC does not match was damaged: reading keeps
//! every record before the first bad one and says what was wrong.
//!
//! Strings and byte strings are `len u32 | bytes`; an optional value is a `0`/`1` byte
//! and the value.

use std::io::{self, Read, Write};

use bytes::Bytes;
use thiserror::Error;

/// The first bytes of a store file.
const MAGIC: &[u8; 8] = b"FLBROKER";
/// The format written here.
const VERSION: u32 = 1;
/// Longest record accepted when reading (anything longer is damage).
const MAX_RECORD: u32 = 64 << 20;

const RETAINED: u8 = 1;
const SESSION: u8 = 2;
const QUEUED: u8 = 3;
const END: u8 = 0xFF;

/// MQTT 5 properties of a message that are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Props {
    /// Message expiry interval, seconds.
    pub(crate) expiry_s: Option<u32>,
    pub(crate) content_type: Option<String>,
    pub(crate) response_topic: Option<String>,
    pub(crate) correlation: Option<Bytes>,
    pub(crate) utf8: bool,
    pub(crate) user: Vec<(String, String)>,
}

/// Who published a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    /// 0: a client's PUBLISH, 1: a Last Will, 2: anything else.
    pub(crate) kind: u8,
    /// UTF-8 (checked when read); shared with the broker's copy, not copied.
    pub(crate) client_id: Bytes,
    pub(crate) user: Option<Bytes>,
}

/// A message: retained, or queued for a session. A snapshot shares the broker's topic,
/// ids and payload (reference counts, not copies): taking one with every queue full
/// costs about 100 bytes a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    /// UTF-8 (checked when read).
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) origin: Origin,
    /// When it was published, ms since the Unix epoch.
    pub(crate) created_ms: i64,
    pub(crate) props: Option<Box<Props>>,
}

/// MQTT 5 subscription options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubV5 {
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) retain_handling: u8,
    pub(crate) id: Option<u32>,
}

/// One subscription of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sub {
    pub(crate) filter: String,
    pub(crate) qos: u8,
    /// Present for a subscription made with MQTT 5.
    pub(crate) v5: Option<SubV5>,
}

/// A persistent session: its client, owner, subscriptions and queued messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionRec {
    pub(crate) client_id: String,
    /// The user who owns it (logged in when it was made).
    pub(crate) user: Option<String>,
    pub(crate) created_ms: i64,
    /// When it expires unless its client comes back, ms since the Unix epoch.
    pub(crate) expires_ms: i64,
    pub(crate) subs: Vec<Sub>,
    /// Oldest first.
    pub(crate) messages: Vec<Message>,
}

/// Everything a store file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// When it was taken, ms since the Unix epoch.
    pub(crate) saved_ms: i64,
    pub(crate) retained: Vec<Message>,
    pub(crate) sessions: Vec<SessionRec>,
}

impl Snapshot {
    /// Nothing to keep.
    pub(crate) fn is_empty(&self) -> bool {
        self.retained.is_empty() && self.sessions.is_empty()
    }
}

/// A file that is not a store at all (nothing in it can be used).
#[derive(Debug, Error)]
pub(crate) enum FormatError {
    /// Reading failed.
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    /// Not our header.
    #[error("not a fieldlink broker store (bad header)")]
    Header,
    /// Written by a newer fieldlink.
    #[error("store format version {0}, this fieldlink reads version {VERSION}")]
    Version(u32),
}

/// What reading a file gave: the records up to the first bad one, and what was bad.
#[derive(Debug)]
pub(crate) struct Contents {
    pub(crate) snapshot: Snapshot,
    /// Why the rest was not read (a torn or damaged file); `None` for a whole file.
    pub(crate) damage: Option<String>,
}

/// Write `s` as a whole store file; returns the bytes written.
pub(crate) fn write(w: &mut impl Write, s: &Snapshot) -> io::Result<u64> {
    let mut n = 12u64;
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    let mut rec = Enc::default();
    let mut records = 0u64;
    let mut put = |w: &mut dyn Write, rec: &mut Enc| -> io::Result<()> {
        let len = u32::try_from(rec.0.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other("record too large"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&crc32fast::hash(&rec.0).to_le_bytes())?;
        w.write_all(&rec.0)?;
        n += 8 + u64::from(len);
        rec.0.clear();
        Ok(())
    };
    for m in &s.retained {
        rec.u8(RETAINED);
        rec.message(m);
        put(w, &mut rec)?;
        records += 1;
    }
    for session in &s.sessions {
        rec.u8(SESSION);
        rec.session(session);
        put(w, &mut rec)?;
        records += 1;
        for m in &session.messages {
            rec.u8(QUEUED);
            rec.message(m);
            put(w, &mut rec)?;
            records += 1;
        }
    }
    rec.u8(END);
    rec.u64(records);
    rec.i64(s.saved_ms);
    put(w, &mut rec)?;
    Ok(n)
}

/// Read a store file. A bad header is an error; a torn or damaged record ends the reading
/// with what came before it.
pub(crate) fn read(r: &mut impl Read) -> Result<Contents, FormatError> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FormatError::Header,
        _ => FormatError::Io(e),
    })?;
    if &head[..8] != MAGIC {
        return Err(FormatError::Header);
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let mut out = Contents {
        snapshot: Snapshot::default(),
        damage: None,
    };
    let mut records = 0u64;
    let mut offset = 12u64;
    let mut body = Vec::new();
    loop {
        match next_record(r, &mut body) {
            Ok(Some(())) => {}
            Ok(None) => {
                out.damage = Some(format!(
                    "it ends at byte {offset} without its end record (a torn write)"
                ));
                return Ok(out);
            }
            Err(why) => {
                out.damage = Some(format!("record at byte {offset}: {why}"));
                return Ok(out);
            }
        }
        let at = offset;
        offset += 8 + body.len() as u64;
        let mut d = Dec(&body[1..]);
        let s = &mut out.snapshot;
        let ok = match body[0] {
            RETAINED => d.message().map(|m| s.retained.push(m)).is_some(),
            SESSION => d.session().map(|x| s.sessions.push(x)).is_some(),
            QUEUED => match (d.message(), s.sessions.last_mut()) {
                (Some(m), Some(session)) => {
                    session.messages.push(m);
                    true
                }
                _ => false,
            },
            END => {
                let (count, saved) = (d.u64(), d.i64());
                if count != Some(records) {
                    out.damage = Some(format!(
                        "its end record counts {} records, {records} were read",
                        count.unwrap_or_default()
                    ));
                }
                s.saved_ms = saved.unwrap_or_default();
                return Ok(out);
            }
            _ => false,
        };
        if !ok || !d.0.is_empty() {
            out.damage = Some(format!("record at byte {at} cannot be decoded"));
            return Ok(out);
        }
        records += 1;
    }
}

/// Read the next record into `body`: `Ok(None)` at the end of the file (before any byte
/// of a record), `Err` with the reason for a torn or damaged one.
fn next_record(r: &mut impl Read, body: &mut Vec<u8>) -> Result<Option<()>, String> {
    let mut frame = [0u8; 8];
    let got = read_full(r, &mut frame).map_err(|e| e.to_string())?;
    if got == 0 {
        return Ok(None);
    }
    if got < frame.len() {
        return Err("cut off inside its header (a torn write)".into());
    }
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_RECORD {
        return Err(format!("impossible length {len}"));
    }
    body.clear();
    body.resize(len as usize, 0);
    let got = read_full(r, body).map_err(|e| e.to_string())?;
    if got < body.len() {
        return Err(format!("cut off after {got} of {len} bytes (a torn write)"));
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(Some(()))
}

/// Read until `buf` is full or the file ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A record being encoded.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Every length fits: a record longer than MAX_RECORD is refused as a whole.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt<T: ?Sized>(&mut self, v: Option<&T>, put: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
        }
    }

    fn message(&mut self, m: &Message) {
        self.bytes(&m.topic);
        self.bytes(&m.payload);
        self.u8(m.qos | (u8::from(m.retain) << 2));
        self.u8(m.origin.kind);
        self.bytes(&m.origin.client_id);
        self.opt(m.origin.user.as_deref(), Self::bytes);
        self.i64(m.created_ms);
        self.opt(m.props.as_deref(), Self::props);
    }

    fn props(&mut self, p: &Props) {
        self.opt(p.expiry_s.as_ref(), |e, v| e.u32(*v));
        self.opt(p.content_type.as_deref(), Self::str);
        self.opt(p.response_topic.as_deref(), Self::str);
        self.opt(p.correlation.as_deref(), Self::bytes);
        self.u8(u8::from(p.utf8));
        self.u32(u32::try_from(p.user.len()).unwrap_or(u32::MAX));
        for (k, v) in &p.user {
            self.str(k);
            self.str(v);
        }
    }

    fn session(&mut self, s: &SessionRec) {
        self.str(&s.client_id);
        self.opt(s.user.as_deref(), Self::str);
        self.i64(s.created_ms);
        self.i64(s.expires_ms);
        self.u32(u32::try_from(s.subs.len()).unwrap_or(u32::MAX));
        for sub in &s.subs {
            self.str(&sub.filter);
            self.u8(sub.qos);
            self.opt(sub.v5.as_ref(), |e, v| {
                e.u8(u8::from(v.no_local) | u8::from(v.retain_as_published) << 1);
                e.u8(v.retain_handling);
                e.opt(v.id.as_ref(), |e, id| e.u32(*id));
            });
        }
    }
}

/// A record being decoded; every getter is `None` when the record is too short or wrong.
struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n).map(Bytes::copy_from_slice)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
    /// A string kept as bytes (UTF-8 checked).
    fn text(&mut self) -> Option<Bytes> {
        let b = self.bytes()?;
        std::str::from_utf8(&b).is_ok().then_some(b)
    }
    fn opt<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => get(self).map(Some),
            _ => None,
        }
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn message(&mut self) -> Option<Message> {
        let topic = self.text()?;
        let payload = self.bytes()?;
        let flags = self.u8()?;
        if flags & 3 == 3 || flags > 7 {
            return None;
        }
        let origin = Origin {
            kind: self.u8()?,
            client_id: self.text()?,
            user: self.opt(Self::text)?,
        };
        Some(Message {
            topic,
            payload,
            qos: flags & 3,
            retain: flags & 4 != 0,
            origin,
            created_ms: self.i64()?,
            props: self.opt(Self::props)?.map(Box::new),
        })
    }

    fn props(&mut self) -> Option<Props> {
        let mut p = Props {
            expiry_s: self.opt(Self::u32)?,
            content_type: self.opt(Self::str)?,
            response_topic: self.opt(Self::str)?,
            correlation: self.opt(Self::bytes)?,
            utf8: self.bool()?,
            user: Vec::new(),
        };
        let n = self.u32()?;
        for _ in 0..n {
            p.user.push((self.str()?, self.str()?));
        }
        Some(p)
    }

    fn session(&mut self) -> Option<SessionRec> {
        let mut s = SessionRec {
            client_id: self.str()?,
            user: self.opt(Self::str)?,
            created_ms: self.i64()?,
            expires_ms: self.i64()?,
            subs: Vec::new(),
            messages: Vec::new(),
        };
        let n = self.u32()?;
        for _ in 0..n {
            let filter = self.str()?;
            let qos = self.u8().filter(|q| *q <= 2)?;
            let v5 = self.opt(|d| {
                let flags = d.u8()?;
                Some(SubV5 {
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling: d.u8().filter(|r| *r <= 2)?,
                    id: d.opt(Self::u32)?,
                })
            })?;
            s.subs.push(Sub { filter, qos, v5 });
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str, qos: u8) -> Message {
        Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain: false,
            origin: Origin {
                kind: 0,
                client_id: Bytes::from_static(b"esp-1"),
                user: Some(Bytes::from_static(b"esp")),
            },
            created_ms: 1_700_000_000_123,
            props: None,
        }
    }

    fn sample() -> Snapshot {
        let mut retained = message("casa/termostato/alvo", "21.5", 1);
        retained.retain = true;
        retained.props = Some(Box::new(Props {
            expiry_s: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/1".into()),
            correlation: Some(Bytes::from_static(b"\x00\x01")),
            utf8: true,
            user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        }));
        Snapshot {
            saved_ms: 1_700_000_001_000,
            retained: vec![retained, message("empty/payload", "", 0)],
            sessions: vec![
                SessionRec {
                    client_id: "homeassistant".into(),
                    user: Some("ha".into()),
                    created_ms: 1,
                    expires_ms: 2,
                    subs: vec![
                        Sub {
                            filter: "casa/#".into(),
                            qos: 1,
                            v5: None,
                        },
                        Sub {
                            filter: "homeassistant/+/x".into(),
                            qos: 2,
                            v5: Some(SubV5 {
                                no_local: true,
                                retain_as_published: false,
                                retain_handling: 2,
                                id: Some(7),
                            }),
                        },
                    ],
                    messages: (0..5)
                        .map(|i| message("casa/x", &i.to_string(), 1))
                        .collect(),
                },
                SessionRec {
                    client_id: "no-user".into(),
                    ..SessionRec::default()
                },
            ],
        }
    }

    fn encoded(s: &Snapshot) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write(&mut out, s).expect("write");
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let r = read(&mut &encoded(&s)[..]).expect("read");
        assert_eq!(r.damage, None);
        assert_eq!(r.snapshot, s);
        let empty = Snapshot::default();
        let r = read(&mut &encoded(&empty)[..]).expect("read");
        assert_eq!((r.snapshot, r.damage), (empty, None));
    }

    /// A file cut anywhere keeps every whole record before the cut and says it is torn.
    #[test]
    fn torn_tail_keeps_the_records_before_it() {
        let s = sample();
        let bytes = encoded(&s);
        for cut in 12..bytes.len() {
            let r = read(&mut &bytes[..cut]).expect("header is whole");
            let why = r
                .damage
                .unwrap_or_else(|| panic!("cut at {cut} not noticed"));
            assert!(why.contains("torn"), "cut at {cut}: {why}");
            // What was read is a prefix of the whole, in order.
            let got = &r.snapshot;
            assert!(got.retained.len() <= s.retained.len());
            assert_eq!(got.retained[..], s.retained[..got.retained.len()]);
            for (g, w) in got.sessions.iter().zip(&s.sessions) {
                assert_eq!(g.client_id, w.client_id);
                assert_eq!(g.subs, w.subs);
                assert_eq!(g.messages[..], w.messages[..g.messages.len()]);
            }
        }
    }

    #[test]
    fn bad_checksum_stops_at_the_damaged_record() {
        let s = sample();
        let mut bytes = encoded(&s);
        // Flip a byte inside the second retained message's payload area: the first
        // record (the first retained message) is kept, nothing after the damage.
        let first_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
        let second = 12 + 8 + first_len;
        bytes[second + 8 + 3] ^= 0x55;
        let r = read(&mut &bytes[..]).expect("read");
        let why = r.damage.expect("damage found");
        assert!(why.contains("checksum"), "{why}");
        assert!(why.contains(&format!("byte {second}")), "{why}");
        assert_eq!(r.snapshot.retained, s.retained[..1]);
        assert!(r.snapshot.sessions.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_store_is_an_error() {
        assert!(matches!(
            read(&mut &b"hello world, this is text"[..]),
            Err(FormatError::Header)
        ));
        assert!(matches!(read(&mut &b"FLB"[..]), Err(FormatError::Header)));
        let mut v = encoded(&Snapshot::default());
        v[8] = 9;
        assert!(matches!(read(&mut &v[..]), Err(FormatError::Version(9))));
    }

    #[test]
    fn an_end_record_with_the_wrong_count_is_damage() {
        let mut bytes = encoded(&sample());
        // Drop the first record (the whole retained message): the rest still parses,
        // the end record's count no longer matches.
        let first_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
        bytes.drain(12..12 + 8 + first_len);
        let r = read(&mut &bytes[..]).expect("read");
        assert!(r.damage.expect("damage").contains("counts"));
    }
}
