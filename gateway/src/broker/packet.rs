//! Just enough MQTT (3.1, 3.1.1 and 5) for the connection front (`front.rs`) to check
//! what a client sends before rmqtt sees it: packet framing with one reusable buffer,
//! the fields of CONNECT, the topic (and Topic Alias) of PUBLISH, the outcome of
//! CONNACK, and the few packets the front answers itself. Nothing here allocates per
//! packet.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Packet types (the high nibble of the first byte).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;

/// MQTT 5 reason codes the front sends.
pub(crate) mod reason {
    /// Malformed Packet.
    pub(crate) const MALFORMED: u8 = 0x81;
    /// Protocol Error.
    pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
    /// Client Identifier not valid (CONNACK).
    pub(crate) const CLIENT_ID_INVALID: u8 = 0x85;
    /// Bad User Name or Password (CONNACK).
    pub(crate) const BAD_USER_NAME: u8 = 0x86;
    /// Topic Name invalid.
    pub(crate) const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Topic Alias invalid.
    pub(crate) const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub(crate) const PACKET_TOO_LARGE: u8 = 0x95;
}

/// MQTT 3.1 / 3.1.1 CONNACK return codes the front sends.
pub(crate) mod v3 {
    /// Connection Refused, unacceptable protocol version.
    pub(crate) const UNACCEPTABLE_PROTOCOL: u8 = 0x01;
    /// Connection Refused, identifier rejected.
    pub(crate) const IDENTIFIER_REJECTED: u8 = 0x02;
    /// Connection Refused, bad user name or password.
    pub(crate) const BAD_USER_NAME: u8 = 0x04;
}

/// Why a packet cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not well formed (a length beyond the packet, a varint of five bytes, ...).
    Malformed,
    /// Bigger than `max_packet_size` (its size).
    TooLarge(usize),
}

/// The fixed header at the start of `buf`: (first byte, remaining length, header
/// length), or `None` when more bytes are needed.
pub(crate) fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, Bad> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, len, 2 + i)));
        }
    }
    Err(Bad::Malformed)
}

/// One complete packet in a [`Reader`]'s buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    /// The first byte (type and flags).
    pub first: u8,
    /// The variable header and payload.
    pub body: &'a [u8],
    /// Bytes of the whole packet, fixed header included.
    pub len: usize,
}

impl Frame<'_> {
    /// The packet type.
    pub(crate) fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// Smallest buffer a reader keeps; a bigger one (grown for a big packet) is given back
/// once it is empty.
const SMALL: usize = 2048;

/// Reads MQTT packets from a stream into one reusable buffer, never more than
/// `max` bytes of one packet: a bigger packet is refused from its fixed header, before
/// its body is read.
pub(crate) struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl Reader {
    /// A reader that takes packets of at most `max` bytes (fixed header included).
    pub(crate) fn new(max: u32) -> Reader {
        Reader {
            buf: vec![0; SMALL],
            start: 0,
            end: 0,
            max: max as usize,
        }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The complete packet `at` bytes into the pending bytes, `None` if it is not all
    /// here yet.
    pub(crate) fn frame(&self, at: usize) -> Result<Option<Frame<'_>>, Bad> {
        let data = self.pending().get(at..).unwrap_or_default();
        let Some((first, rem, head)) = fixed_header(data)? else {
            return Ok(None);
        };
        let len = head + rem;
        if len > self.max {
            return Err(Bad::TooLarge(len));
        }
        Ok(data.get(head..len).map(|body| Frame { first, body, len }))
    }

    /// Drop `n` pending bytes (forwarded or refused).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SMALL {
                self.buf = vec![0; SMALL];
            }
        }
    }

    /// Read more bytes from `r` (room is made for the packet that starts `at` bytes
    /// into the pending ones); how many, 0 at the end of the stream.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        at: usize,
    ) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            let need = match fixed_header(self.pending().get(at..).unwrap_or_default()) {
                Ok(Some((_, rem, head))) => at + head + rem,
                _ => at + 5,
            };
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                // `frame` refuses a packet above `max` before it is read: this grows
                // to at most `max` (and the pending packets before it).
                let size = need.max(self.buf.len() * 2).min(need.max(self.max));
                self.buf.resize(size.max(self.end + 1), 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// A cursor over a packet body.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let s = self.buf.get(self.pos..self.pos + n).ok_or(Bad::Malformed)?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Bad> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Bad> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A two-byte length and that many bytes.
    fn field(&mut self) -> Result<&'a [u8], Bad> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn varint(&mut self) -> Result<usize, Bad> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Bad::Malformed)
    }

    /// An MQTT 5 property list; `f` sees each property's id and, for the integer ones,
    /// its value.
    fn properties(&mut self, mut f: impl FnMut(u8, u32)) -> Result<(), Bad> {
        let len = self.varint()?;
        let mut p = Cursor {
            buf: self.take(len)?,
            pos: 0,
        };
        while p.pos < p.buf.len() {
            let id = p.u8()?;
            match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => f(id, p.u8()?.into()),
                0x13 | 0x21 | 0x22 | 0x23 => f(id, p.u16()?.into()),
                0x02 | 0x11 | 0x18 | 0x27 => f(id, p.u32()?),
                0x0B => f(id, u32::try_from(p.varint()?).unwrap_or(u32::MAX)),
                0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                    p.field()?;
                }
                0x26 => {
                    p.field()?;
                    p.field()?;
                }
                _ => return Err(Bad::Malformed),
            }
        }
        Ok(())
    }
}

/// The parts of a CONNECT the front checks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Connect<'a> {
    /// Protocol level: 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    /// Offset of the connect flags byte in the body.
    pub flags_at: usize,
    /// Clean session (3.1.x) / clean start (5).
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval (0 when absent; 3.1.x: 0).
    pub session_expiry: u32,
    pub client_id: &'a [u8],
    pub will_topic: Option<&'a [u8]>,
    pub user: Option<&'a [u8]>,
}

/// What the first packet of a connection is, when it is not a CONNECT the front can
/// read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotConnect {
    /// Another packet type, or a malformed CONNECT.
    Malformed,
    /// A protocol name or level the broker does not speak.
    Protocol,
}

/// Parse a CONNECT's body.
pub(crate) fn connect(body: &[u8]) -> Result<Connect<'_>, NotConnect> {
    let mut c = Cursor { buf: body, pos: 0 };
    let name = c.field().map_err(|_| NotConnect::Malformed)?;
    let level = c.u8().map_err(|_| NotConnect::Malformed)?;
    match (name, level) {
        (b"MQIsdp", 3) | (b"MQTT", 4 | 5) => {}
        (b"MQIsdp" | b"MQTT", _) => return Err(NotConnect::Protocol),
        _ => return Err(NotConnect::Malformed),
    }
    connect_rest(c, level).map_err(|_| NotConnect::Malformed)
}

fn connect_rest(mut c: Cursor<'_>, level: u8) -> Result<Connect<'_>, Bad> {
    let flags_at = c.pos;
    let flags = c.u8()?;
    if flags & 1 != 0 {
        return Err(Bad::Malformed);
    }
    c.u16()?; // keepalive
    let mut session_expiry = 0;
    if level == 5 {
        c.properties(|id, v| {
            if id == 0x11 {
                session_expiry = v;
            }
        })?;
    }
    let client_id = c.field()?;
    let will_topic = if flags & 0x04 != 0 {
        if level == 5 {
            c.properties(|_, _| {})?;
        }
        let topic = c.field()?;
        c.field()?; // the Will's payload
        Some(topic)
    } else {
        None
    };
    let user = if flags & 0x80 != 0 {
        Some(c.field()?)
    } else {
        None
    };
    Ok(Connect {
        level,
        flags_at,
        clean: flags & 0x02 != 0,
        session_expiry,
        client_id,
        will_topic,
        user,
    })
}

/// The topic and Topic Alias of a PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Publish<'a> {
    pub topic: &'a [u8],
    /// MQTT 5 Topic Alias property.
    pub alias: Option<u16>,
}

/// Parse the topic (and for MQTT 5 the Topic Alias) of a PUBLISH.
pub(crate) fn publish(first: u8, body: &[u8], v5: bool) -> Result<Publish<'_>, Bad> {
    let qos = (first >> 1) & 3;
    if qos == 3 {
        return Err(Bad::Malformed);
    }
    let mut c = Cursor { buf: body, pos: 0 };
    let topic = c.field()?;
    let mut alias = None;
    if v5 {
        if qos > 0 {
            c.u16()?;
        }
        c.properties(|id, v| {
            if id == 0x23 {
                alias = Some(u16::try_from(v).unwrap_or(0));
            }
        })?;
    }
    Ok(Publish { topic, alias })
}

/// The outcome of a CONNACK: accepted, and (MQTT 5) the Topic Alias Maximum the broker
/// announced (0: none).
pub(crate) fn connack(body: &[u8], v5: bool) -> Result<(bool, u16), Bad> {
    let mut c = Cursor { buf: body, pos: 0 };
    c.u8()?; // acknowledge flags
    let code = c.u8()?;
    let mut alias_max = 0;
    if v5 && c.pos < body.len() {
        c.properties(|id, v| {
            if id == 0x22 {
                alias_max = u16::try_from(v).unwrap_or(0);
            }
        })?;
    }
    Ok((code == 0, alias_max))
}

/// A UTF-8 string as MQTT allows it: valid UTF-8 without U+0000.
pub(crate) fn text_ok(s: &[u8]) -> bool {
    !s.contains(&0) && std::str::from_utf8(s).is_ok()
}

/// A topic name a PUBLISH or Will may carry: not empty, valid UTF-8, no U+0000 and no
/// wildcard (`+`, `#`).
pub(crate) fn topic_name_ok(t: &[u8]) -> bool {
    !t.is_empty() && !t.iter().any(|b| matches!(b, 0 | b'+' | b'#')) && text_ok(t)
}

/// Append the remaining-length varint of `n`.
pub(crate) fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// A CONNACK refusing the connection with `code` (a 3.1.x return code or an MQTT 5
/// reason code, for `level`).
pub(crate) fn connack_refusal(level: u8, code: u8) -> Vec<u8> {
    if level == 5 {
        // Flags, reason code, no properties.
        vec![0x20, 3, 0, code, 0]
    } else {
        vec![0x20, 2, 0, code]
    }
}

/// An MQTT 5 DISCONNECT with `reason` (no properties).
pub(crate) fn disconnect(reason: u8) -> [u8; 3] {
    [0xE0, 1, reason]
}

/// Where packets start and end in a byte stream that is copied without being
/// parsed (broker → client): only fixed headers are read, bodies are skipped.
#[derive(Debug, Default)]
pub(crate) struct Boundaries {
    /// Body bytes still to come of the current packet.
    body: usize,
    /// Fixed-header bytes seen of the next packet (0: at a boundary).
    head: usize,
    /// The remaining length read so far from them.
    len: usize,
}

impl Boundaries {
    /// Whether the stream is between two packets.
    pub(crate) fn at_boundary(&self) -> bool {
        self.body == 0 && self.head == 0
    }

    /// Follow `data`; with `stop`, only up to the first packet boundary (returned:
    /// how many bytes of `data` belong to packets already begun).
    pub(crate) fn feed(&mut self, data: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if stop && self.at_boundary() {
                return i;
            }
            if self.body > 0 {
                let n = self.body.min(data.len() - i);
                self.body -= n;
                i += n;
                continue;
            }
            let b = data[i];
            i += 1;
            if self.head == 0 {
                self.head = 1;
                self.len = 0;
                continue;
            }
            self.len |= usize::from(b & 0x7F) << (7 * (self.head - 1));
            self.head += 1;
            if b & 0x80 == 0 || self.head > 4 {
                self.body = self.len;
                self.head = 0;
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, f: &[u8]) {
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }

    #[test]
    fn fixed_headers() {
        assert_eq!(fixed_header(&[]), Ok(None));
        assert_eq!(fixed_header(&[0x30]), Ok(None));
        assert_eq!(fixed_header(&[0x30, 0x80]), Ok(None));
        assert_eq!(fixed_header(&[0x30, 5]), Ok(Some((0x30, 5, 2))));
        assert_eq!(
            fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some((0x30, 268_435_455, 5)))
        );
        assert_eq!(
            fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(Bad::Malformed)
        );
    }

    #[tokio::test]
    async fn reader_frames_and_refuses_big_packets_from_the_header() {
        let mut data = vec![0xC0, 0, 0x30, 3, 0, 1, b'a'];
        data.extend_from_slice(&[0x30, 0x80, 0x80, 0x01]); // 16 384 bytes announced
        let mut r = Reader::new(1000);
        let mut src = &data[..];
        while r.fill(&mut src, 0).await.expect("read") > 0 {}
        let f = r.frame(0).expect("ok").expect("whole");
        assert_eq!((f.kind(), f.len), (12, 2));
        let f = r.frame(2).expect("ok").expect("whole");
        assert_eq!((f.kind(), f.body, f.len), (3, &[0, 1, b'a'][..], 5));
        assert_eq!(r.frame(7).map(|_| ()), Err(Bad::TooLarge(16_388)));
        r.consume(7);
        assert_eq!(r.pending().len(), 4);
    }

    #[tokio::test]
    async fn reader_grows_for_a_big_packet_and_shrinks_after() {
        let mut data = vec![0x30, 0x90, 0x4E]; // 10 000 bytes
        data.resize(3 + 10_000, 7);
        data.extend_from_slice(&[0xC0, 0]);
        let mut r = Reader::new(20_000);
        let mut src = &data[..];
        loop {
            if r.frame(0).expect("ok").is_some() {
                break;
            }
            assert!(r.fill(&mut src, 0).await.expect("read") > 0);
        }
        assert_eq!(r.frame(0).expect("ok").map(|f| f.len), Some(10_003));
        r.consume(10_003);
        while r.frame(0).expect("ok").is_none() {
            assert!(r.fill(&mut src, 0).await.expect("read") > 0);
        }
        r.consume(2);
        assert_eq!(r.buf.len(), SMALL);
    }

    fn connect_body(level: u8, flags: u8, props: &[u8], id: &[u8], will: Option<&[u8]>) -> Vec<u8> {
        let mut b = Vec::new();
        field(&mut b, if level == 3 { b"MQIsdp" } else { b"MQTT" });
        b.extend_from_slice(&[level, flags, 0, 30]);
        if level == 5 {
            b.push(props.len() as u8);
            b.extend_from_slice(props);
        }
        field(&mut b, id);
        if let Some(t) = will {
            if level == 5 {
                b.push(0);
            }
            field(&mut b, t);
            field(&mut b, b"bye");
        }
        if flags & 0x80 != 0 {
            field(&mut b, b"user");
        }
        if flags & 0x40 != 0 {
            field(&mut b, b"pw");
        }
        b
    }

    #[test]
    fn connect_fields() {
        let b = connect_body(4, 0b1100_0110, &[], b"ha", Some(b"ha/lwt"));
        let c = connect(&b).expect("connect");
        assert_eq!(c.level, 4);
        assert_eq!(b[c.flags_at], 0b1100_0110);
        assert!(c.clean);
        assert_eq!(c.client_id, b"ha");
        assert_eq!(c.will_topic, Some(&b"ha/lwt"[..]));
        assert_eq!(c.user, Some(&b"user"[..]));
        // MQTT 5: session expiry 3600, Will properties.
        let b = connect_body(5, 0b1000_0100, &[0x11, 0, 0, 0x0E, 0x10], b"x", Some(b"#"));
        let c = connect(&b).expect("connect");
        assert_eq!((c.level, c.clean, c.session_expiry), (5, false, 3600));
        assert_eq!(c.will_topic, Some(&b"#"[..]));
        let b = connect_body(3, 0, &[], b"old", None);
        assert_eq!(connect(&b).map(|c| c.level), Ok(3));
        let b = connect_body(6, 0, &[], b"new", None);
        assert_eq!(connect(&b), Err(NotConnect::Protocol));
        let b = connect_body(4, 0, &[], b"id", None);
        assert_eq!(connect(&b[..11]), Err(NotConnect::Malformed), "truncated");
        let mut b = connect_body(4, 0, &[], b"id", None);
        b[7] |= 1; // reserved flag
        assert_eq!(connect(&b), Err(NotConnect::Malformed));
    }

    #[test]
    fn publish_topics_and_aliases() {
        let mut b = Vec::new();
        field(&mut b, b"a/b");
        b.extend_from_slice(b"payload");
        assert_eq!(
            publish(0x31, &b, false),
            Ok(Publish {
                topic: b"a/b",
                alias: None
            })
        );
        // MQTT 5, QoS 1: packet id, then the Topic Alias property among others.
        let mut b = Vec::new();
        field(&mut b, b"");
        b.extend_from_slice(&[0, 9, 7, 0x01, 1, 0x23, 0, 3, 0x0B, 0x05]);
        b.extend_from_slice(b"x");
        assert_eq!(
            publish(0x32, &b, true),
            Ok(Publish {
                topic: b"",
                alias: Some(3)
            })
        );
        assert_eq!(publish(0x36, &b, true), Err(Bad::Malformed), "QoS 3");
        assert_eq!(publish(0x30, &[0, 9, b'a'], false), Err(Bad::Malformed));
    }

    #[test]
    fn connacks() {
        assert_eq!(connack(&[0, 0], false), Ok((true, 0)));
        assert_eq!(connack(&[0, 5], false), Ok((false, 0)));
        assert_eq!(
            connack(&[1, 0, 6, 0x22, 0, 10, 0x27, 0, 4], true),
            Err(Bad::Malformed)
        );
        assert_eq!(
            connack(&[1, 0, 8, 0x22, 0, 10, 0x27, 0, 4, 0, 0], true),
            Ok((true, 10))
        );
        assert_eq!(connack(&[0, 0x87, 0], true), Ok((false, 0)));
    }

    #[test]
    fn names() {
        assert!(topic_name_ok(b"casa/sala/temp"));
        assert!(topic_name_ok("casa/säla".as_bytes()));
        for bad in [
            &b""[..],
            b"homeassistant/#",
            b"a/+/b",
            b"fieldlink/t/status\0",
            b"\xff\xfe",
        ] {
            assert!(!topic_name_ok(bad), "{bad:?}");
        }
        assert!(text_ok(b"ha-1") && text_ok(b""));
        assert!(!text_ok(b"a\0b") && !text_ok(b"\xc3"));
    }

    #[test]
    fn boundaries_in_a_copied_stream() {
        // Two packets: 3 body bytes, then 200 (two-byte length).
        let mut s = vec![0x30, 3, 1, 2, 3, 0x30, 0xC8, 0x01];
        s.resize(8 + 200, 0);
        let mut b = Boundaries::default();
        assert!(b.at_boundary());
        assert_eq!(b.feed(&s[..4], false), 4);
        assert!(!b.at_boundary());
        // Stop at the end of the first packet.
        assert_eq!(b.feed(&s[4..], true), 1);
        assert!(b.at_boundary());
        // Header split across reads.
        assert_eq!(b.feed(&s[5..7], false), 2);
        assert!(!b.at_boundary());
        assert_eq!(b.feed(&s[7..100], true), 93);
        assert_eq!(b.feed(&s[100..], true), 108);
        assert!(b.at_boundary());
    }
}
