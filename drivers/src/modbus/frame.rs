//! How a Modbus request and its reply are framed on the stream, and every check a reply
//! must pass before its PDU is used: RTU (unit, PDU, CRC) on serial lines and through
//! converters, MBAP (transaction id, protocol id, length, unit, PDU) on Modbus TCP.

use std::fmt;

/// Why a reply, or bytes on the line, were not used. Counted per device in diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFault {
    /// A byte count or length that does not match the request or the frame.
    Length,
    /// A bad CRC (RTU).
    Crc,
    /// A transaction id other than the request's (Modbus TCP): an old reply.
    TransactionId,
    /// A reply from another unit than the one asked.
    Unit,
    /// A reply for another function than the one asked.
    Function,
    /// Bytes nobody asked for: waiting before a request, or after a reply.
    Stray,
    /// A reply that came after its request had timed out.
    Late,
    /// A malformed header (Modbus TCP protocol id, impossible length) or a write echo
    /// that does not repeat the request.
    Protocol,
}

impl ReplyFault {
    /// Every kind, in the order of [`Faults`]'s counters.
    pub const ALL: [ReplyFault; 8] = [
        ReplyFault::Length,
        ReplyFault::Crc,
        ReplyFault::TransactionId,
        ReplyFault::Unit,
        ReplyFault::Function,
        ReplyFault::Stray,
        ReplyFault::Late,
        ReplyFault::Protocol,
    ];

    /// Its name in diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            ReplyFault::Length => "length",
            ReplyFault::Crc => "crc",
            ReplyFault::TransactionId => "transaction_id",
            ReplyFault::Unit => "unit",
            ReplyFault::Function => "function",
            ReplyFault::Stray => "stray_bytes",
            ReplyFault::Late => "late",
            ReplyFault::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ReplyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Faults seen by a transport since they were last taken, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults(pub [u64; 8]);

impl Faults {
    /// Count one fault of `kind`.
    pub fn add(&mut self, kind: ReplyFault) {
        if let Some(i) = ReplyFault::ALL.iter().position(|k| *k == kind) {
            self.0[i] += 1;
        }
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    /// The counts with their kinds.
    pub fn iter(&self) -> impl Iterator<Item = (ReplyFault, u64)> + '_ {
        ReplyFault::ALL.iter().copied().zip(self.0.iter().copied())
    }
}

/// What a complete frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The reply to the request: its PDU, function code first.
    Ours(&'a [u8]),
    /// A well-formed frame for an earlier request (a late reply): skipped, counted.
    Foreign(ReplyFault),
    /// A frame that fails the checks: the request fails with this.
    Bad(ReplyFault, String),
}

/// A request's framing and its reply's checks.
pub trait Framing: Send + 'static {
    /// Whether a request that timed out may still be answered on the same stream and the
    /// master should listen one more timeout for that late reply before the next request
    /// (RTU: the line has no request ids). With transaction ids a late reply is simply
    /// recognised and skipped.
    const LISTENS_FOR_LATE: bool;
    /// Frame `pdu` (function code first) for `unit`; what the reply must match is kept.
    fn encode(&mut self, unit: u8, pdu: &[u8]) -> Vec<u8>;
    /// The full length of the frame at the start of `buf` once enough of it is there; an
    /// error when its header cannot be a frame at all.
    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, (ReplyFault, String)>;
    /// Check the complete frame `frame` against the request for `unit` and `function`.
    fn decode<'a>(&self, frame: &'a [u8], unit: u8, function: u8) -> Decoded<'a>;
}

/// CRC-16/MODBUS of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// RTU framing: unit, PDU, CRC (little-endian).
#[derive(Debug, Default)]
pub struct Rtu;

impl Framing for Rtu {
    const LISTENS_FOR_LATE: bool = true;

    fn encode(&mut self, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(pdu.len() + 3);
        frame.push(unit);
        frame.extend_from_slice(pdu);
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame
    }

    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, (ReplyFault, String)> {
        let Some(&function) = buf.get(1) else {
            return Ok(None);
        };
        if function & 0x80 != 0 {
            return Ok(Some(5));
        }
        Ok(match function {
            1..=4 => buf.get(2).map(|&n| 3 + usize::from(n) + 2),
            5 | 6 | 15 | 16 => Some(8),
            super::ident::FUNCTION if buf.get(2) == Some(&super::ident::MEI_READ_DEVICE_ID) => {
                super::ident::reply_len(&buf[1..])
                    .map_err(|e| (ReplyFault::Length, e))?
                    .map(|n| 1 + n + 2)
            }
            // Unknown function: take what a read would be, the CRC check decides.
            _ => Some(buf.len().max(4)),
        })
    }

    fn decode<'a>(&self, frame: &'a [u8], unit: u8, function: u8) -> Decoded<'a> {
        let (body, crc) = frame.split_at(frame.len() - 2);
        if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
            return Decoded::Bad(ReplyFault::Crc, "CRC error in the reply".into());
        }
        if body[0] != unit || body[1] & 0x7F != function {
            // A complete, valid frame for another request: a late reply.
            return Decoded::Foreign(ReplyFault::Late);
        }
        Decoded::Ours(&body[1..])
    }
}

/// MBAP framing (Modbus TCP): transaction id, protocol id 0, length, unit, PDU.
#[derive(Debug, Default)]
pub struct Mbap {
    /// The transaction id of the request in flight.
    transaction: u16,
}

/// Longest MBAP length field: unit id and a PDU of at most 253 bytes.
const MBAP_MAX_LEN: usize = 254;

impl Framing for Mbap {
    const LISTENS_FOR_LATE: bool = false;

    fn encode(&mut self, unit: u8, pdu: &[u8]) -> Vec<u8> {
        self.transaction = self.transaction.wrapping_add(1);
        let mut frame = Vec::with_capacity(pdu.len() + 7);
        frame.extend_from_slice(&self.transaction.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        frame.push(unit);
        frame.extend_from_slice(pdu);
        frame
    }

    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, (ReplyFault, String)> {
        if buf.len() < 6 {
            return Ok(None);
        }
        let protocol = u16::from_be_bytes([buf[2], buf[3]]);
        if protocol != 0 {
            return Err((
                ReplyFault::Protocol,
                format!("protocol id {protocol} in the reply, expected 0 (Modbus)"),
            ));
        }
        let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
        if !(2..=MBAP_MAX_LEN).contains(&len) {
            return Err((
                ReplyFault::Length,
                format!("MBAP length {len} in the reply is impossible"),
            ));
        }
        Ok(Some(6 + len))
    }

    fn decode<'a>(&self, frame: &'a [u8], unit: u8, function: u8) -> Decoded<'a> {
        let transaction = u16::from_be_bytes([frame[0], frame[1]]);
        if transaction != self.transaction {
            return Decoded::Foreign(ReplyFault::TransactionId);
        }
        if frame[6] != unit {
            return Decoded::Bad(
                ReplyFault::Unit,
                format!("reply from unit {}, expected unit {unit}", frame[6]),
            );
        }
        let pdu = &frame[7..];
        if pdu[0] & 0x7F != function {
            return Decoded::Bad(
                ReplyFault::Function,
                format!(
                    "reply for function {:#04x}, expected {function:#04x}",
                    pdu[0]
                ),
            );
        }
        if let Some(len) = pdu_len(pdu) {
            if len != pdu.len() {
                return Decoded::Bad(
                    ReplyFault::Length,
                    format!("a {} byte reply PDU framed as {} bytes", len, pdu.len()),
                );
            }
        }
        Decoded::Ours(pdu)
    }
}

/// The length a reply PDU must have, from its own header, where the function says.
fn pdu_len(pdu: &[u8]) -> Option<usize> {
    let function = *pdu.first()?;
    if function & 0x80 != 0 {
        return Some(2);
    }
    match function {
        1..=4 => pdu.get(1).map(|&n| 2 + usize::from(n)),
        5 | 6 | 15 | 16 => Some(5),
        super::ident::FUNCTION if pdu.get(1) == Some(&super::ident::MEI_READ_DEVICE_ID) => {
            super::ident::reply_len(pdu).ok().flatten()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Read 10 holding registers from 0x006B of unit 0x11: CRC 0x8776 (76 87 on the
        // wire).
        assert_eq!(crc16(&[0x11, 0x03, 0x00, 0x6B, 0x00, 0x03]), 0x8776);
    }

    #[test]
    fn mbap_checks_every_field() {
        let mut m = Mbap::default();
        let req = m.encode(5, &[3, 0, 0, 0, 2]);
        assert_eq!(req, vec![0, 1, 0, 0, 0, 6, 5, 3, 0, 0, 0, 2]);
        let ok = [0, 1, 0, 0, 0, 7, 5, 3, 4, 0, 1, 0, 2];
        assert_eq!(m.frame_len(&ok), Ok(Some(13)));
        assert_eq!(m.decode(&ok, 5, 3), Decoded::Ours(&ok[7..]));
        let old = [0, 0, 0, 0, 0, 7, 5, 3, 4, 0, 1, 0, 2];
        assert_eq!(
            m.decode(&old, 5, 3),
            Decoded::Foreign(ReplyFault::TransactionId)
        );
        let unit = [0, 1, 0, 0, 0, 7, 6, 3, 4, 0, 1, 0, 2];
        assert!(matches!(
            m.decode(&unit, 5, 3),
            Decoded::Bad(ReplyFault::Unit, _)
        ));
        let func = [0, 1, 0, 0, 0, 7, 5, 4, 4, 0, 1, 0, 2];
        assert!(matches!(
            m.decode(&func, 5, 3),
            Decoded::Bad(ReplyFault::Function, _)
        ));
        // A byte count that disagrees with the frame's length.
        let count = [0, 1, 0, 0, 0, 7, 5, 3, 6, 0, 1, 0, 2];
        assert!(matches!(
            m.decode(&count, 5, 3),
            Decoded::Bad(ReplyFault::Length, _)
        ));
        assert!(matches!(
            m.frame_len(&[0, 1, 0, 9, 0, 7]),
            Err((ReplyFault::Protocol, _))
        ));
        assert!(matches!(
            m.frame_len(&[0, 1, 0, 0, 1, 7]),
            Err((ReplyFault::Length, _))
        ));
        let exception = [0, 1, 0, 0, 0, 3, 5, 0x83, 2];
        assert_eq!(m.decode(&exception, 5, 3), Decoded::Ours(&exception[7..]));
    }

    #[test]
    fn rtu_checks_crc_and_skips_late_frames() {
        let mut r = Rtu;
        let reply = r.encode(1, &[3, 2, 0, 7]);
        assert_eq!(r.frame_len(&reply), Ok(Some(7)));
        assert_eq!(r.decode(&reply, 1, 3), Decoded::Ours(&reply[1..5]));
        assert_eq!(r.decode(&reply, 2, 3), Decoded::Foreign(ReplyFault::Late));
        let mut bad = reply.clone();
        bad[3] ^= 1;
        assert!(matches!(
            r.decode(&bad, 1, 3),
            Decoded::Bad(ReplyFault::Crc, _)
        ));
    }
}
