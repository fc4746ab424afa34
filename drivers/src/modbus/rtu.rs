//! Modbus RTU master over any byte stream, written for a shared bus: a serial port
//! (RS-485, [`RtuTransport`]) or a TCP connection to a serial-to-Ethernet converter in
//! transparent mode ([`RtuOverTcpTransport`]: the same frames, unit + PDU + CRC, no MBAP
//! header). One master, [`RtuMaster`], frames every request; a link ([`RtuLink`]) only
//! opens the stream and knows its timing.
//!
//! tokio-modbus's RTU client keeps no silence between frames and can match a late reply to
//! the next request, so this master frames requests itself:
//!
//! - At least 3.5 character times of silence before every request, computed from baud rate
//!   and framing (1.75 ms fixed above 19 200 baud, as the Modbus spec says), plus an
//!   optional extra `frame_delay`.
//! - A timeout around every request. After a timeout or a bad reply, the master waits for
//!   the line to go quiet and flushes the serial input, so a late reply is discarded and
//!   can never be taken for the answer to another request.
//! - A reply must come from the unit asked, carry the function asked, and pass its CRC;
//!   anything else is an error for that request, never a value.
//! - An unplugged adapter or a dropped connection (hang-up, I/O error) drops the stream;
//!   it is reopened with exponential backoff, and stale input is flushed after every open.
//!
//! A serial port is opened exclusively (TIOCEXCL). Behind a TCP converter the converter
//! keeps the serial line's silences; the master keeps `frame_delay` between a reply and
//! the next request, and `connect_delay` after every (re)connect.

use std::{future::Future, io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_serial::{SerialPort, SerialStream};
use tracing::{debug, info, warn};

use super::{
    client::{exception_name, DriverError, ModbusTransport},
    ReadData, Table,
};
use crate::backoff::Backoff;

pub use crate::serial::{Parity, SerialSettings};

/// Sleep until `t` with sub-millisecond precision: tokio's timer wheel ticks in whole
/// milliseconds (and rounds up), which alone would add 1–2 ms of dead bus time to every
/// transaction. The last stretch is slept on a blocking-pool thread (`nanosleep`, precise
/// to tens of microseconds) instead of spinning.
pub async fn sleep_precisely_until(t: Instant) {
    let coarse = Duration::from_millis(2);
    if t.saturating_duration_since(Instant::now()) > coarse {
        tokio::time::sleep_until(t - coarse).await;
    }
    let rest = t.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
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

/// What an RTU master needs of the byte stream its frames travel on.
pub trait RtuLink: Send + 'static {
    /// The open stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// What it is, in logs and errors: "serial port", "connection".
    const NOUN: &'static str;
    /// Open it.
    fn open(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Where it leads: `/dev/ttyUSB0`, `192.168.1.7:8899`.
    fn endpoint(&self) -> String;
    /// The silence the line needs between frames (3.5 character times on a serial line;
    /// none over TCP, where the converter keeps it).
    fn inter_frame(&self) -> Duration;
    /// One character's time on the line (a request's bytes take that long each before a
    /// reply can start); none over TCP.
    fn char_time(&self) -> Duration;
    /// Throw away the input waiting now; how many bytes. An error: the stream is gone.
    fn discard_waiting(stream: &mut Self::Stream) -> io::Result<usize>;
}

/// A serial port (RS-485 adapter).
pub struct SerialLink(pub SerialSettings);

impl RtuLink for SerialLink {
    type Stream = SerialStream;
    const NOUN: &'static str = "serial port";

    async fn open(&mut self) -> io::Result<SerialStream> {
        self.0.open().map_err(io::Error::other)
    }

    fn endpoint(&self) -> String {
        self.0.path.clone()
    }

    fn inter_frame(&self) -> Duration {
        self.0.inter_frame()
    }

    fn char_time(&self) -> Duration {
        self.0.char_time()
    }

    fn discard_waiting(port: &mut SerialStream) -> io::Result<usize> {
        let n = port.bytes_to_read().map_err(io::Error::other)? as usize;
        if n > 0 {
            port.clear(tokio_serial::ClearBuffer::Input)
                .map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// A TCP connection to a serial-to-Ethernet converter in transparent mode.
pub struct TcpLink {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
}

impl RtuLink for TcpLink {
    type Stream = TcpStream;
    const NOUN: &'static str = "connection";

    async fn open(&mut self) -> io::Result<TcpStream> {
        let addr = (self.host.as_str(), self.port);
        let s = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn inter_frame(&self) -> Duration {
        Duration::ZERO
    }

    fn char_time(&self) -> Duration {
        Duration::ZERO
    }

    fn discard_waiting(s: &mut TcpStream) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        let mut n = 0;
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A Modbus RTU bus on a serial port: any number of unit ids on it.
pub type RtuTransport = RtuMaster<SerialLink>;

/// Modbus RTU frames through a TCP converter: any number of unit ids behind it.
pub type RtuOverTcpTransport = RtuMaster<TcpLink>;

impl RtuTransport {
    /// A transport for `settings`; the port is opened on the first request.
    pub fn new(settings: SerialSettings, timeout: Duration, frame_delay: Duration) -> Self {
        RtuMaster::over(SerialLink(settings), timeout, frame_delay, Duration::ZERO)
    }
}

impl RtuOverTcpTransport {
    /// A transport to the converter at `host:port`; connected on the first request,
    /// waiting `connect_delay` after every (re)connect before the first request.
    pub fn tcp(
        host: String,
        port: u16,
        timeout: Duration,
        frame_delay: Duration,
        connect_delay: Duration,
    ) -> Self {
        let link = TcpLink {
            host,
            port,
            connect_timeout: timeout,
        };
        RtuMaster::over(link, timeout, frame_delay, connect_delay)
    }
}

/// The one RTU master: one request outstanding on `L`'s stream, every reply checked.
pub struct RtuMaster<L: RtuLink> {
    link: L,
    timeout: Duration,
    frame_delay: Duration,
    connect_delay: Duration,
    port: Option<L::Stream>,
    /// When the line was last busy (our request sent or a reply received); after a
    /// (re)connect, the end of `connect_delay`.
    last_activity: Instant,
    backoff: Backoff,
    next_open: Option<Instant>,
    was_open: bool,
    /// Counters: frames discarded as late, garbled or from the wrong unit.
    pub discarded: u64,
}

impl<L: RtuLink> RtuMaster<L> {
    /// A master over `link`; the stream is opened on the first request.
    pub fn over(
        link: L,
        timeout: Duration,
        frame_delay: Duration,
        connect_delay: Duration,
    ) -> Self {
        RtuMaster {
            link,
            timeout,
            frame_delay,
            connect_delay,
            port: None,
            last_activity: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            next_open: None,
            was_open: false,
            discarded: 0,
        }
    }

    /// The silence kept before every request.
    pub fn gap(&self) -> Duration {
        self.link.inter_frame() + self.frame_delay
    }

    async fn open(&mut self) -> Result<(), DriverError> {
        if self.port.is_some() {
            return Ok(());
        }
        let (noun, endpoint) = (L::NOUN, self.link.endpoint());
        if let Some(at) = self.next_open {
            if Instant::now() < at {
                return Err(DriverError::NotConnected(format!(
                    "{noun} {endpoint} unavailable, reopening in {:?}",
                    at - Instant::now()
                )));
            }
        }
        match self.link.open().await {
            Ok(mut p) => {
                info!(endpoint = %endpoint, "Modbus RTU {noun} open.");
                // Whatever waits already is from before us.
                let _ = L::discard_waiting(&mut p);
                self.port = Some(p);
                self.backoff.reset();
                self.next_open = None;
                self.was_open = true;
                // The first request waits `connect_delay` (a gap is added on top).
                self.last_activity = Instant::now() + self.connect_delay;
                Ok(())
            }
            Err(e) => {
                let wait = self.backoff.next_delay();
                self.next_open = Some(Instant::now() + wait);
                if self.was_open || wait == Duration::from_millis(500) {
                    warn!(endpoint = %endpoint, error = %e, retry_in = ?wait, "Cannot open Modbus RTU {noun}.");
                } else {
                    debug!(endpoint = %endpoint, error = %e, retry_in = ?wait, "Cannot open Modbus RTU {noun}.");
                }
                self.was_open = false;
                Err(DriverError::NotConnected(format!(
                    "cannot open {endpoint}: {e}"
                )))
            }
        }
    }

    fn drop_port(&mut self, why: &str) {
        if self.port.take().is_some() {
            warn!(endpoint = %self.link.endpoint(), reason = why, "Modbus RTU {} lost; reopening with backoff.", L::NOUN);
            let wait = self.backoff.next_delay();
            self.next_open = Some(Instant::now() + wait);
        }
    }

    /// Make the line clean before the next request: wait up to `first` for stray bytes to
    /// start (a late reply after a timeout), then until the line has been quiet for one
    /// inter-frame gap, throwing everything away, and flush the input.
    async fn settle(&mut self, first: Duration) {
        let gap = self.link.inter_frame().max(Duration::from_millis(2));
        let hard_stop = Instant::now() + first + self.timeout.max(Duration::from_millis(50));
        let Some(port) = self.port.as_mut() else {
            return;
        };
        let mut buf = [0u8; 256];
        let mut dropped = 0usize;
        let mut hung_up = false;
        let mut wait = first.max(gap);
        while Instant::now() < hard_stop {
            match tokio::time::timeout(wait, port.read(&mut buf)).await {
                Err(_) => break, // quiet
                Ok(Ok(0)) | Ok(Err(_)) => {
                    hung_up = true;
                    break;
                }
                Ok(Ok(n)) => {
                    dropped += n;
                    wait = gap;
                }
            }
        }
        if hung_up || L::discard_waiting(port).is_err() {
            self.drop_port("hang-up");
            return;
        }
        if dropped > 0 {
            self.discarded += 1;
            debug!(endpoint = %self.link.endpoint(), bytes = dropped, "Discarded late or stray bytes.");
        }
        self.last_activity = Instant::now();
    }

    /// Send one request PDU to `unit` and return the reply PDU (function code first).
    async fn transact(&mut self, unit: u8, pdu: &[u8]) -> Result<Vec<u8>, DriverError> {
        self.open().await?;
        let gap = self.gap();
        sleep_precisely_until(self.last_activity + gap).await;
        let Some(port) = self.port.as_mut() else {
            return Err(DriverError::NotConnected(format!("{} closed", L::NOUN)));
        };
        // Bytes waiting now arrived during the silence: nobody asked for them.
        match L::discard_waiting(port) {
            Ok(0) => {}
            Ok(_) => self.discarded += 1,
            Err(e) => {
                let msg = e.to_string();
                self.drop_port(&msg);
                return Err(DriverError::Io(msg));
            }
        }
        let mut frame = Vec::with_capacity(pdu.len() + 3);
        frame.push(unit);
        frame.extend_from_slice(pdu);
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        let write = async {
            port.write_all(&frame).await?;
            port.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let msg = e.to_string();
                self.drop_port(&msg);
                return Err(DriverError::Io(msg));
            }
            Err(_) => {
                self.drop_port("write timeout");
                return Err(DriverError::Timeout(self.timeout));
            }
        }
        // The request takes this long on the wire before the device can start answering.
        let on_wire = self.link.char_time() * frame.len() as u32;
        let deadline = Instant::now() + on_wire + self.timeout;
        let result = self.read_reply(unit, pdu[0], deadline).await;
        match &result {
            Ok(_) => self.last_activity = Instant::now(),
            Err(DriverError::Io(msg)) => {
                let msg = msg.clone();
                self.drop_port(&msg);
            }
            Err(DriverError::Exception { .. }) => self.last_activity = Instant::now(),
            Err(DriverError::Timeout(_)) => {
                // The device may still answer: give it one more timeout to do so.
                let t = self.timeout;
                self.settle(t).await;
            }
            Err(_) => self.settle(Duration::ZERO).await,
        }
        result
    }

    async fn read_reply(
        &mut self,
        unit: u8,
        function: u8,
        deadline: Instant,
    ) -> Result<Vec<u8>, DriverError> {
        let timeout = self.timeout;
        let Some(port) = self.port.as_mut() else {
            return Err(DriverError::NotConnected(format!("{} closed", L::NOUN)));
        };
        let mut buf: Vec<u8> = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        let mut foreign = 0u64;
        loop {
            if let Some(len) = expected_len(&buf) {
                if buf.len() >= len {
                    let frame = &buf[..len];
                    let (body, crc) = frame.split_at(len - 2);
                    let valid = crc16(body) == u16::from_le_bytes([crc[0], crc[1]]);
                    let ours = body[0] == unit && body[1] & 0x7F == function;
                    if valid && !ours {
                        // A complete frame for another request (a late reply): drop it
                        // and keep waiting for ours.
                        foreign += 1;
                        buf.drain(..len);
                        continue;
                    }
                    if buf.len() > len {
                        return Err(DriverError::Protocol(format!(
                            "{} stray bytes after the reply",
                            buf.len() - len
                        )));
                    }
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, port.read(&mut chunk)).await {
                Err(_) if buf.is_empty() => return Err(DriverError::Timeout(timeout)),
                Err(_) => {
                    return Err(DriverError::Protocol(format!(
                        "incomplete reply ({} bytes) within {timeout:?}",
                        buf.len()
                    )))
                }
                Ok(Ok(0)) => return Err(DriverError::Io(format!("{} hung up", L::NOUN))),
                Ok(Err(e)) => return Err(DriverError::Io(e.to_string())),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.discarded += foreign;
        let (body, crc) = buf.split_at(buf.len() - 2);
        if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
            return Err(DriverError::Protocol("CRC error in the reply".into()));
        }
        if body[0] != unit {
            return Err(DriverError::Protocol(format!(
                "reply from unit {}, expected unit {unit}",
                body[0]
            )));
        }
        if body[1] == function | 0x80 {
            let code = body[2];
            return Err(DriverError::Exception {
                code,
                name: exception_name(code),
            });
        }
        if body[1] != function {
            return Err(DriverError::Protocol(format!(
                "reply for function {:#04x}, expected {function:#04x}",
                body[1]
            )));
        }
        Ok(body[1..].to_vec())
    }
}

/// The full length of an RTU reply (address … CRC), once enough of it is there to tell.
fn expected_len(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    if function & 0x80 != 0 {
        return Some(5);
    }
    match function {
        1..=4 => buf.get(2).map(|&n| 3 + usize::from(n) + 2),
        5 | 6 | 15 | 16 => Some(8),
        // Unknown function: take what a read would be, the CRC check decides.
        _ => Some(buf.len().max(4)),
    }
}

fn read_pdu(table: Table, addr: u16, count: u16) -> [u8; 5] {
    let fc = match table {
        Table::Coil => 1,
        Table::Discrete => 2,
        Table::Holding => 3,
        Table::Input => 4,
    };
    let a = addr.to_be_bytes();
    let c = count.to_be_bytes();
    [fc, a[0], a[1], c[0], c[1]]
}

impl<L: RtuLink> ModbusTransport for RtuMaster<L> {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let reply = self.transact(unit, &read_pdu(table, addr, count)).await?;
        let n = usize::from(reply[1]);
        let data = &reply[2..];
        if data.len() != n {
            return Err(DriverError::Protocol("byte count does not match".into()));
        }
        if table.is_bits() {
            let want = usize::from(count);
            if n != want.div_ceil(8) {
                return Err(DriverError::Protocol(format!("{n} bytes for {count} bits")));
            }
            Ok(ReadData::Bits(
                (0..want).map(|i| data[i / 8] >> (i % 8) & 1 == 1).collect(),
            ))
        } else {
            if n != usize::from(count) * 2 {
                return Err(DriverError::Protocol(format!(
                    "{n} bytes for {count} registers"
                )));
            }
            Ok(ReadData::Registers(
                data.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            ))
        }
    }

    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let a = addr.to_be_bytes();
        let pdu: Vec<u8> = if values.len() == 1 && !multiple {
            let v = values[0].to_be_bytes();
            vec![6, a[0], a[1], v[0], v[1]]
        } else {
            let n = values.len() as u16;
            let mut p = vec![16, a[0], a[1], (n >> 8) as u8, n as u8, (n * 2) as u8];
            for v in values {
                p.extend_from_slice(&v.to_be_bytes());
            }
            p
        };
        let reply = self.transact(unit, &pdu).await?;
        if reply[1..5] != pdu[1..5] {
            return Err(DriverError::Protocol("write echo does not match".into()));
        }
        Ok(())
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let a = addr.to_be_bytes();
        let pdu: Vec<u8> = if values.len() == 1 && !multiple {
            vec![5, a[0], a[1], if values[0] { 0xFF } else { 0 }, 0]
        } else {
            let n = values.len() as u16;
            let bytes = values.len().div_ceil(8);
            let mut p = vec![15, a[0], a[1], (n >> 8) as u8, n as u8, bytes as u8];
            let mut packed = vec![0u8; bytes];
            for (i, b) in values.iter().enumerate() {
                if *b {
                    packed[i / 8] |= 1 << (i % 8);
                }
            }
            p.extend_from_slice(&packed);
            p
        };
        let reply = self.transact(unit, &pdu).await?;
        if reply[1..5] != pdu[1..5] {
            return Err(DriverError::Protocol("write echo does not match".into()));
        }
        Ok(())
    }

    fn endpoint(&self) -> String {
        self.link.endpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over serial line, appendix B: 01 03 00 00 00 0A → CRC C5 CD.
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 0x0A]).to_le_bytes(), [0xC5, 0xCD]);
    }

    #[test]
    fn inter_frame_gap_follows_baud_and_framing() {
        let mut s = SerialSettings {
            path: String::new(),
            baud: 9600,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        };
        // 11 bits per char at 9600 baud: 1.146 ms per char, 4.01 ms for 3.5 chars.
        assert_eq!(s.bits_per_char(), 11);
        assert!((s.inter_frame().as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-7);
        s.baud = 115_200;
        assert_eq!(s.inter_frame(), Duration::from_micros(1750));
    }

    #[test]
    fn reply_length_is_known_from_the_header() {
        assert_eq!(expected_len(&[1]), None);
        assert_eq!(expected_len(&[1, 3]), None);
        assert_eq!(expected_len(&[1, 3, 4]), Some(9));
        assert_eq!(expected_len(&[1, 0x83]), Some(5));
        assert_eq!(expected_len(&[1, 6]), Some(8));
    }
}
