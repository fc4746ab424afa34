//! The one Modbus master, for every Modbus bus kind: one request outstanding on a
//! stream ([`Link`]: a serial port or a TCP connection), framed by a [`Framing`] (RTU or
//! MBAP), and every reply checked before its data is used.
//!
//! - Before every request: the line's silence (3.5 character times on a serial line) plus
//!   `frame_delay`, and after every (re)connect `connect_delay`; input waiting then
//!   arrived unasked and is thrown away (counted as stray bytes).
//! - A reply is used only when it is complete and its framing checks pass (CRC; MBAP
//!   transaction id, protocol id and length), it comes from the unit asked, carries the
//!   function asked, and its byte count is exactly what the request asked for. A
//!   well-formed frame for an earlier request (a late reply) is skipped and counted;
//!   anything else fails that request with its reason, never a value.
//! - A timeout around every request. On RTU, which has no request ids, the master then
//!   listens one more timeout for the late reply and throws it away, so it can never be
//!   taken for the answer to the next request; on Modbus TCP the transaction id does that.
//! - A stream that hangs up or fails is dropped and reopened with exponential backoff.
//!
//! Every fault is counted by kind ([`ReplyFault`]) for the device's diagnostics.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    client::{exception_name, DriverError, ModbusTransport},
    frame::{Decoded, Faults, Framing, ReplyFault},
    link::{sleep_precisely_until, Link},
    ReadData, Table,
};
use crate::backoff::Backoff;

/// The master: `framing` on `link`'s stream, one request at a time.
pub struct Master<F: Framing, L: Link> {
    framing: F,
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
    /// Faults since they were last taken ([`ModbusTransport::take_faults`]).
    faults: Faults,
    /// Frames and bytes thrown away in all (late, stray, garbled).
    pub discarded: u64,
}

impl<F: Framing, L: Link> Master<F, L> {
    /// A master framing with `framing` over `link`; the stream is opened on the first
    /// request.
    pub fn over(
        framing: F,
        link: L,
        timeout: Duration,
        frame_delay: Duration,
        connect_delay: Duration,
    ) -> Self {
        Master {
            framing,
            link,
            timeout,
            frame_delay,
            connect_delay,
            port: None,
            last_activity: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            next_open: None,
            was_open: false,
            faults: Faults::default(),
            discarded: 0,
        }
    }

    /// The same master with other pauses.
    pub fn set_pauses(mut self, frame_delay: Duration, connect_delay: Duration) -> Self {
        self.frame_delay = frame_delay;
        self.connect_delay = connect_delay;
        self
    }

    /// The silence kept before every request.
    pub fn gap(&self) -> Duration {
        self.link.inter_frame() + self.frame_delay
    }

    /// Count a fault of `kind` and make the request's error from it.
    fn reject(&mut self, kind: ReplyFault, detail: String) -> DriverError {
        self.faults.add(kind);
        self.discarded += 1;
        DriverError::BadReply {
            fault: kind,
            detail,
        }
    }

    /// Count bytes or frames thrown away without failing a request.
    fn skipped(&mut self, kind: ReplyFault) {
        self.faults.add(kind);
        self.discarded += 1;
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
                info!(endpoint = %endpoint, "Modbus {noun} open.");
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
                    warn!(endpoint = %endpoint, error = %e, retry_in = ?wait, "Cannot open Modbus {noun}.");
                } else {
                    debug!(endpoint = %endpoint, error = %e, retry_in = ?wait, "Cannot open Modbus {noun}.");
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
            warn!(endpoint = %self.link.endpoint(), reason = why, "Modbus {} lost; reopening with backoff.", L::NOUN);
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
            self.skipped(ReplyFault::Late);
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
        let waiting = L::discard_waiting(port);
        match waiting {
            Ok(0) => {}
            Ok(n) => {
                debug!(endpoint = %self.link.endpoint(), bytes = n, "Discarded bytes nobody asked for.");
                self.skipped(ReplyFault::Stray);
            }
            Err(e) => {
                let msg = e.to_string();
                self.drop_port(&msg);
                return Err(DriverError::Io(msg));
            }
        }
        let frame = self.framing.encode(unit, pdu);
        let Some(port) = self.port.as_mut() else {
            return Err(DriverError::NotConnected(format!("{} closed", L::NOUN)));
        };
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
        let function = pdu.first().copied().unwrap_or(0);
        let result = self.read_reply(unit, function, deadline).await;
        match &result {
            Ok(_) => self.last_activity = Instant::now(),
            Err(DriverError::Io(msg)) => {
                let msg = msg.clone();
                self.drop_port(&msg);
            }
            Err(DriverError::Exception { .. }) => self.last_activity = Instant::now(),
            Err(DriverError::Timeout(_)) if F::LISTENS_FOR_LATE => {
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
        let mut buf: Vec<u8> = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        loop {
            let len = match self.framing.frame_len(&buf) {
                Ok(len) => len,
                Err((kind, detail)) => return Err(self.reject(kind, detail)),
            };
            if let Some(len) = len.filter(|l| buf.len() >= *l) {
                match self.framing.decode(&buf[..len], unit, function) {
                    Decoded::Foreign(kind) => {
                        // A complete frame for an earlier request: skip it, keep waiting.
                        self.skipped(kind);
                        buf.drain(..len);
                        continue;
                    }
                    Decoded::Bad(kind, detail) => return Err(self.reject(kind, detail)),
                    Decoded::Ours(pdu) if buf.len() > len => {
                        let _ = pdu;
                        let extra = buf.len() - len;
                        return Err(self.reject(
                            ReplyFault::Stray,
                            format!("{extra} stray bytes after the reply"),
                        ));
                    }
                    Decoded::Ours(pdu) => {
                        if pdu.first() == Some(&(function | 0x80)) {
                            let code = pdu.get(1).copied().unwrap_or(0);
                            return Err(DriverError::Exception {
                                code,
                                name: exception_name(code),
                            });
                        }
                        return Ok(pdu.to_vec());
                    }
                }
            }
            let Some(port) = self.port.as_mut() else {
                return Err(DriverError::NotConnected(format!("{} closed", L::NOUN)));
            };
            match tokio::time::timeout_at(deadline, port.read(&mut chunk)).await {
                Err(_) if buf.is_empty() => return Err(DriverError::Timeout(timeout)),
                Err(_) => {
                    let detail =
                        format!("incomplete reply ({} bytes) within {timeout:?}", buf.len());
                    return Err(self.reject(ReplyFault::Length, detail));
                }
                Ok(Ok(0)) => return Err(DriverError::Io(format!("{} hung up", L::NOUN))),
                Ok(Err(e)) => return Err(DriverError::Io(e.to_string())),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
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

impl<F: Framing, L: Link> ModbusTransport for Master<F, L> {
    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let reply = self.transact(unit, &read_pdu(table, addr, count)).await?;
        let Some((&n, data)) = reply.get(1..).and_then(<[u8]>::split_first) else {
            return Err(self.reject(
                ReplyFault::Length,
                "a read reply without a byte count".into(),
            ));
        };
        let n = usize::from(n);
        if data.len() != n {
            return Err(self.reject(
                ReplyFault::Length,
                format!("byte count {n} with {} data bytes", data.len()),
            ));
        }
        if table.is_bits() {
            let want = usize::from(count);
            if n != want.div_ceil(8) {
                return Err(self.reject(ReplyFault::Length, format!("{n} bytes for {count} bits")));
            }
            Ok(ReadData::Bits(
                (0..want).map(|i| data[i / 8] >> (i % 8) & 1 == 1).collect(),
            ))
        } else {
            if n != usize::from(count) * 2 {
                return Err(self.reject(
                    ReplyFault::Length,
                    format!("{n} bytes for {count} registers"),
                ));
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
        if reply.get(1..5) != pdu.get(1..5) {
            return Err(self.reject(ReplyFault::Protocol, "write echo does not match".into()));
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
        if reply.get(1..5) != pdu.get(1..5) {
            return Err(self.reject(ReplyFault::Protocol, "write echo does not match".into()));
        }
        Ok(())
    }

    async fn read_identification(
        &mut self,
        unit: u8,
    ) -> Result<super::Identification, DriverError> {
        use super::ident;
        let mut id = super::Identification::default();
        let mut next = 0u8;
        // A device lists its basic objects in a page or two; a bound keeps a device that
        // always says "more follows" from holding the line.
        for _ in 0..8 {
            let reply = self
                .transact(unit, &ident::request(ident::BASIC, next))
                .await?;
            let page = match ident::parse(&reply) {
                Ok(p) => p,
                Err(e) => return Err(self.reject(ReplyFault::Protocol, e)),
            };
            id.conformity = page.conformity;
            id.objects.extend(page.objects);
            if !page.more_follows || page.next_object <= next {
                break;
            }
            next = page.next_object;
        }
        Ok(id)
    }

    fn endpoint(&self) -> String {
        self.link.endpoint()
    }

    fn take_faults(&mut self) -> Faults {
        std::mem::take(&mut self.faults)
    }
}
