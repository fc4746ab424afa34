//! Request PDUs checked the way the Modbus Application Protocol (V1.1b3, §6) asks, and
//! the reply PDUs, each written with its MBAP header.
//!
//! The order of the checks is the specification's: the function code (01 when this
//! server does not do it), then the quantity and byte count (03), then the address range
//! (02); the backend's own answer comes last. A PDU whose length does not match its
//! function's layout gets exception 03: the MBAP length field has already told where the
//! frame ends, so the connection stays in step and is kept.
//!
//! Writes (FC05/06/15/16) when the server takes none (`writes: false`): exception 01,
//! "illegal function", since for this server they are functions it does not offer.

use super::{Exception, ReadData, Table, Write};

/// Function codes this server knows.
pub(crate) const READ_COILS: u8 = 0x01;
pub(crate) const READ_DISCRETE: u8 = 0x02;
pub(crate) const READ_HOLDING: u8 = 0x03;
pub(crate) const READ_INPUT: u8 = 0x04;
pub(crate) const WRITE_COIL: u8 = 0x05;
pub(crate) const WRITE_REGISTER: u8 = 0x06;
pub(crate) const WRITE_COILS: u8 = 0x0F;
pub(crate) const WRITE_REGISTERS: u8 = 0x10;

/// Largest quantity of FC15 (0x07B0) and FC16 (0x7B).
const MAX_WRITE_BITS: u16 = 1968;
const MAX_WRITE_REGISTERS: u16 = 123;

/// A request that passed the protocol checks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// FC01/02/03/04.
    Read {
        /// Its table.
        table: Table,
        /// First address.
        start: u16,
        /// Bits or registers.
        count: u16,
    },
    /// FC05/06/15/16.
    Write {
        /// What to write.
        write: Write,
        /// The four bytes after the function code the reply echoes: address and value
        /// (FC05/06), or address and quantity (FC15/16).
        echo: [u8; 4],
    },
}

fn word(pdu: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([pdu[at], pdu[at + 1]])
}

/// `start + count` past the last address (65535) is exception 02.
fn in_range(start: u16, count: u16) -> Result<(), Exception> {
    if u32::from(start) + u32::from(count) > 0x1_0000 {
        return Err(Exception::ILLEGAL_DATA_ADDRESS);
    }
    Ok(())
}

/// Check request PDU `pdu` (function code first; never empty). `writes`: whether the
/// server takes writes at all.
pub(crate) fn parse(pdu: &[u8], writes: bool) -> Result<Request, Exception> {
    let fc = pdu.first().copied().unwrap_or(0);
    let table = match fc {
        READ_COILS => Table::Coil,
        READ_DISCRETE => Table::Discrete,
        READ_HOLDING => Table::Holding,
        READ_INPUT => Table::Input,
        WRITE_COIL | WRITE_REGISTER | WRITE_COILS | WRITE_REGISTERS if writes => {
            return parse_write(pdu)
        }
        _ => return Err(Exception::ILLEGAL_FUNCTION),
    };
    if pdu.len() != 5 {
        return Err(Exception::ILLEGAL_DATA_VALUE);
    }
    let (start, count) = (word(pdu, 1), word(pdu, 3));
    if count == 0 || count > table.max_read() {
        return Err(Exception::ILLEGAL_DATA_VALUE);
    }
    in_range(start, count)?;
    Ok(Request::Read {
        table,
        start,
        count,
    })
}

/// FC05/06/15/16 (`pdu[0]` is one of them).
fn parse_write(pdu: &[u8]) -> Result<Request, Exception> {
    let fc = pdu[0];
    if pdu.len() < 5 {
        return Err(Exception::ILLEGAL_DATA_VALUE);
    }
    let echo = [pdu[1], pdu[2], pdu[3], pdu[4]];
    let (start, n) = (word(pdu, 1), word(pdu, 3));
    let (table, data) = match fc {
        WRITE_COIL => {
            let on = match n {
                0xFF00 => true,
                0x0000 => false,
                _ => return Err(Exception::ILLEGAL_DATA_VALUE),
            };
            if pdu.len() != 5 {
                return Err(Exception::ILLEGAL_DATA_VALUE);
            }
            (Table::Coil, ReadData::Bits(vec![on]))
        }
        WRITE_REGISTER => {
            if pdu.len() != 5 {
                return Err(Exception::ILLEGAL_DATA_VALUE);
            }
            (Table::Holding, ReadData::Registers(vec![n]))
        }
        WRITE_COILS => {
            let bytes = multiple(pdu, n, MAX_WRITE_BITS, usize::from(n).div_ceil(8))?;
            let bits = (0..usize::from(n))
                .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            in_range(start, n)?;
            (Table::Coil, ReadData::Bits(bits))
        }
        _ => {
            let bytes = multiple(pdu, n, MAX_WRITE_REGISTERS, usize::from(n) * 2)?;
            let regs = bytes
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            in_range(start, n)?;
            (Table::Holding, ReadData::Registers(regs))
        }
    };
    Ok(Request::Write {
        write: Write { table, start, data },
        echo,
    })
}

/// The value bytes of FC15/16 once quantity `n` (1..=`max`), the byte count (must be
/// `bytes`) and the PDU's length agree; exception 03 otherwise.
fn multiple(pdu: &[u8], n: u16, max: u16, bytes: usize) -> Result<&[u8], Exception> {
    if n == 0 || n > max || pdu.len() < 6 || usize::from(pdu[5]) != bytes {
        return Err(Exception::ILLEGAL_DATA_VALUE);
    }
    pdu.get(6..)
        .filter(|v| v.len() == bytes)
        .ok_or(Exception::ILLEGAL_DATA_VALUE)
}

/// Appends one reply ADU to a connection's output: the MBAP header, then the PDU.
pub(crate) struct Reply<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
}

impl<'a> Reply<'a> {
    /// Begin a reply to transaction `tid` of unit `unit` with function code `fc`.
    pub(crate) fn begin(out: &'a mut Vec<u8>, tid: [u8; 2], unit: u8, fc: u8) -> Reply<'a> {
        let at = out.len();
        out.extend_from_slice(&[tid[0], tid[1], 0, 0, 0, 0, unit, fc]);
        Reply { out, at }
    }

    /// Exception reply: function code | 0x80, then the code.
    pub(crate) fn exception(out: &mut Vec<u8>, tid: [u8; 2], unit: u8, fc: u8, e: Exception) {
        Reply::begin(out, tid, unit, fc | 0x80).bytes(&[e.0]).end();
    }

    /// Append PDU bytes.
    pub(crate) fn bytes(self, b: &[u8]) -> Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A read's data after its byte count: bits packed LSB first and padded with zeros,
    /// registers big-endian.
    pub(crate) fn data(self, data: &ReadData) -> Self {
        match data {
            ReadData::Bits(bits) => {
                let n = bits.len().div_ceil(8);
                self.out.push(n as u8);
                let at = self.out.len();
                self.out.resize(at + n, 0);
                for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
                    self.out[at + i / 8] |= 1 << (i % 8);
                }
            }
            ReadData::Registers(regs) => {
                self.out.push((regs.len() * 2) as u8);
                for r in regs {
                    self.out.extend_from_slice(&r.to_be_bytes());
                }
            }
        }
        self
    }

    /// Fill in the MBAP length (unit id and PDU).
    pub(crate) fn end(self) {
        let len = (self.out.len() - self.at - 6) as u16;
        self.out[self.at + 4..self.at + 6].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fc: u8, start: u16, count: u16) -> Vec<u8> {
        let mut v = vec![fc];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&count.to_be_bytes());
        v
    }

    #[test]
    fn read_quantities_follow_the_specification() {
        let e3 = Err(Exception::ILLEGAL_DATA_VALUE);
        let e2 = Err(Exception::ILLEGAL_DATA_ADDRESS);
        for (fc, max) in [(1, 2000), (2, 2000), (3, 125), (4, 125)] {
            assert!(parse(&read(fc, 0, 1), false).is_ok());
            assert!(parse(&read(fc, 0, max), false).is_ok());
            assert_eq!(parse(&read(fc, 0, 0), false), e3);
            assert_eq!(parse(&read(fc, 0, max + 1), false), e3);
            assert!(parse(&read(fc, 65535 - max + 1, max), false).is_ok());
            assert_eq!(parse(&read(fc, 65535 - max + 2, max), false), e2);
            // Quantity is checked before the address.
            assert_eq!(parse(&read(fc, 65535, max + 1), false), e3);
            let mut long = read(fc, 0, 1);
            long.push(0);
            assert_eq!(parse(&long, false), e3);
            assert_eq!(parse(&long[..3], false), e3);
        }
    }

    #[test]
    fn writes_are_an_illegal_function_unless_enabled() {
        for fc in [5, 6, 15, 16] {
            assert_eq!(
                parse(&read(fc, 0, 0xFF00), false),
                Err(Exception::ILLEGAL_FUNCTION)
            );
        }
        for fc in [0, 7, 8, 0x11, 0x14, 0x16, 0x17, 0x2B, 0x80, 0x83, 0xFF] {
            assert_eq!(
                parse(&[fc, 0, 0, 0, 1], true),
                Err(Exception::ILLEGAL_FUNCTION)
            );
        }
    }

    #[test]
    fn single_writes() {
        let w = |fc, a, v| parse(&read(fc, a, v), true);
        let coil = |on| Request::Write {
            write: Write {
                table: Table::Coil,
                start: 9,
                data: ReadData::Bits(vec![on]),
            },
            echo: [0, 9, if on { 0xFF } else { 0 }, 0],
        };
        assert_eq!(w(5, 9, 0xFF00), Ok(coil(true)));
        assert_eq!(w(5, 9, 0), Ok(coil(false)));
        assert_eq!(w(5, 9, 1), Err(Exception::ILLEGAL_DATA_VALUE));
        assert_eq!(
            w(6, 65535, 0xBEEF),
            Ok(Request::Write {
                write: Write {
                    table: Table::Holding,
                    start: 65535,
                    data: ReadData::Registers(vec![0xBEEF]),
                },
                echo: [0xFF, 0xFF, 0xBE, 0xEF],
            })
        );
        assert_eq!(
            parse(&[6, 0, 1, 0], true),
            Err(Exception::ILLEGAL_DATA_VALUE)
        );
    }

    #[test]
    fn multiple_writes() {
        // 10 coils at 20: 1,0,1,1,0,0,0,0 | 1,1 (padding bits ignored).
        let pdu = [15, 0, 20, 0, 10, 2, 0b0000_1101, 0b1111_1111];
        let Ok(Request::Write { write, echo }) = parse(&pdu, true) else {
            panic!("refused");
        };
        assert_eq!(echo, [0, 20, 0, 10]);
        assert_eq!(
            write.data,
            ReadData::Bits(vec![
                true, false, true, true, false, false, false, false, true, true
            ])
        );
        let e3 = Err(Exception::ILLEGAL_DATA_VALUE);
        assert_eq!(parse(&[15, 0, 20, 0, 10, 1, 0xFF], true), e3);
        assert_eq!(parse(&[15, 0, 20, 0, 10, 2, 0xFF], true), e3);
        assert_eq!(parse(&[15, 0, 20, 0, 0, 0], true), e3);
        assert_eq!(
            parse(&[15, 0xFF, 0xFF, 0, 2, 1, 3], true),
            Err(Exception::ILLEGAL_DATA_ADDRESS)
        );
        let pdu = [16, 0, 1, 0, 2, 4, 0x12, 0x34, 0xAB, 0xCD];
        let Ok(Request::Write { write, echo }) = parse(&pdu, true) else {
            panic!("refused");
        };
        assert_eq!(echo, [0, 1, 0, 2]);
        assert_eq!(write.data, ReadData::Registers(vec![0x1234, 0xABCD]));
        assert_eq!(parse(&[16, 0, 1, 0, 2, 3, 1, 2, 3], true), e3);
        assert_eq!(parse(&[16, 0, 1, 0, 2, 4, 1, 2, 3], true), e3);
        let mut big = vec![16, 0, 0, 0, 124, 248];
        big.resize(6 + 248, 0);
        assert_eq!(parse(&big, true), e3);
    }

    #[test]
    fn replies_carry_their_header_and_packed_bits() {
        let mut out = Vec::new();
        let bits = ReadData::Bits(vec![
            true, false, false, true, false, false, false, false, true,
        ]);
        Reply::begin(&mut out, [1, 2], 7, 1).data(&bits).end();
        assert_eq!(out, [1, 2, 0, 0, 0, 5, 7, 1, 2, 0b0000_1001, 0b0000_0001]);
        out.clear();
        Reply::exception(&mut out, [0, 9], 3, 4, Exception::GATEWAY_TARGET_FAILED);
        assert_eq!(out, [0, 9, 0, 0, 0, 3, 3, 0x84, 0x0B]);
    }
}
