//! The network side of the Modbus TCP server: the accept loop (`allow`,
//! `max_connections`), MBAP framing with idle and frame timeouts, and one task per
//! connection that answers its requests in order from a [`Backend`].
//!
//! # What closes a connection
//!
//! A frame is taken only when its MBAP header is sound: protocol id 0 and a length field
//! of 2..=254 (an ADU of at most 260 bytes). Anything else cannot be framed with
//! confidence, so the connection is closed without a reply (`closed_malformed`), as it is
//! when the client closes mid-frame. A connection with no request begun for
//! `idle_timeout` is closed (`closed_idle`); one whose begun request is not complete
//! within `frame_timeout`, or that reads no reply for `idle_timeout`, too
//! (`closed_stalled`). A well-framed PDU the server does not take is answered with an
//! exception and the connection is kept ([`super::pdu`]).
//!
//! # Order and batching
//!
//! Requests are answered in order, one at a time. Replies to requests that arrived
//! together (pipelined) are written together; a write's reply waits for the device, and
//! the replies before it are sent first.

use std::{
    io,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinError, JoinSet},
    time::{timeout_at, Instant},
};
use tracing::{debug, error, warn};

use super::{
    clients::{ClientStats, Closed, ServerStats},
    pdu::{self, Reply, Request},
    Backend, Exception, ReadData, Table,
};
use crate::{model::ModbusServer, Shutdown};

/// The MBAP header: transaction id, protocol id, length, unit id.
const HEADER: usize = 7;
/// The largest length field: unit id and a PDU of 253 bytes (an ADU of 260).
const MAX_LENGTH: usize = 254;
/// Bytes asked of the socket at once.
const READ_SIZE: usize = 4096;
/// Replies gathered before they are written even if more requests are waiting.
const FLUSH_AT: usize = 8192;
/// The pause after a failed accept that is not about one connection (out of file
/// descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per kind this often (a hostile client must not flood the log).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// At most one debug line per kind this often, for what a client can repeat at will.
const DEBUG_EVERY: Duration = Duration::from_secs(1);

/// Why a connection ended, for the log.
type End = (Closed, &'static str);

/// Lets a log line through once per period; counts the ones it held back.
#[derive(Default)]
struct Limiter {
    next: Option<Instant>,
    held: u64,
}

impl Limiter {
    /// `Some(lines held back since the last one)` when this one may be logged.
    fn pass(&mut self, every: Duration) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|n| now < n) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + every);
        Some(std::mem::take(&mut self.held))
    }
}

#[derive(Default)]
struct Logs {
    not_allowed: Limiter,
    full: Limiter,
    accept: Limiter,
    malformed: Limiter,
    backend: Limiter,
}

/// What every connection task shares.
struct Front {
    settings: Arc<ModbusServer>,
    backend: Arc<dyn Backend>,
    stats: Arc<ServerStats>,
    logs: Mutex<Logs>,
}

impl Front {
    fn limit(&self, every: Duration, kind: impl FnOnce(&mut Logs) -> &mut Limiter) -> Option<u64> {
        self.logs
            .lock()
            .ok()
            .and_then(|mut l| kind(&mut l).pass(every))
    }
}

/// Serve Modbus TCP on `listener` until `shutdown`: connections from outside
/// `settings.allow`, and past `settings.max_connections` open, are closed at once;
/// every other one is served by its own task, which asks `backend`. Counts in `stats`.
///
/// On shutdown it stops accepting and closes every connection: one waiting for a
/// request at once; one whose write is with the device once the device has answered and
/// the reply is sent. It returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    settings: Arc<ModbusServer>,
    backend: Arc<dyn Backend>,
    stats: Arc<ServerStats>,
    mut shutdown: Shutdown,
) {
    let front = Arc::new(Front {
        settings,
        backend,
        stats,
        logs: Mutex::default(),
    });
    let for_connections = shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            Some(done) = connections.join_next() => reaped(done),
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => front.admit(tcp, peer, &mut connections, &for_connections),
                Err(e) if per_connection(&e) => {}
                Err(e) => {
                    if let Some(held) = front.limit(WARN_EVERY, |l| &mut l.accept) {
                        warn!(error = %e, held, "Modbus server: accept failed.");
                    }
                    tokio::select! {
                        () = shutdown.recv() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    while let Some(done) = connections.join_next().await {
        reaped(done);
    }
}

/// An accept error about one connection only (the next accept may succeed at once).
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn reaped(done: Result<(), JoinError>) {
    if let Err(e) = done {
        error!(error = %e, "Modbus connection task failed.");
    }
}

impl Front {
    /// A connection just accepted: refused at once, or served by a task of its own.
    fn admit(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        connections: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) {
        if !self.settings.allow.permits(peer.ip()) {
            self.stats.refused_not_allowed(peer.ip());
            let _ = tcp.set_zero_linger();
            if let Some(held) = self.limit(WARN_EVERY, |l| &mut l.not_allowed) {
                warn!(client = %peer, held, "Modbus connection refused: address not in allow.");
            }
            return;
        }
        if self.stats.open.load(Relaxed) >= self.settings.max_connections as u64 {
            self.stats.refused_full.fetch_add(1, Relaxed);
            let _ = tcp.set_zero_linger();
            if let Some(held) = self.limit(WARN_EVERY, |l| &mut l.full) {
                warn!(
                    client = %peer,
                    max_connections = self.settings.max_connections,
                    held,
                    "Modbus connection refused: max_connections open."
                );
            }
            return;
        }
        let _ = tcp.set_nodelay(true);
        let client = self.stats.opened(peer.ip());
        debug!(client = %peer, "Modbus connection accepted.");
        let conn = Conn {
            front: self.clone(),
            tcp,
            peer,
            client,
            input: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(512),
            shutdown: shutdown.clone(),
        };
        connections.spawn(conn.run());
    }
}

/// Counts a connection as closed when its task ends, however it ends.
struct Open {
    front: Arc<Front>,
    client: Arc<ClientStats>,
    why: Closed,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.front.stats.closed(&self.client, self.why);
    }
}

/// One client connection.
struct Conn {
    front: Arc<Front>,
    tcp: TcpStream,
    peer: SocketAddr,
    client: Arc<ClientStats>,
    /// Bytes received and not yet answered: at most one incomplete frame after each
    /// round of answers, plus one read.
    input: BytesMut,
    /// Replies not yet written.
    out: Vec<u8>,
    shutdown: Shutdown,
}

/// What the MBAP header at the start of `input` says: `Ok(Some(frame length))`,
/// `Ok(None)` while incomplete, `Err` when it cannot be a Modbus TCP frame (checked as
/// soon as the bytes that show it are in).
fn frame_len(input: &[u8]) -> Result<Option<usize>, &'static str> {
    if input.len() >= 4 && input[2..4] != [0, 0] {
        return Err("protocol id not 0");
    }
    if input.len() < 6 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([input[4], input[5]]));
    if !(2..=MAX_LENGTH).contains(&len) {
        return Err("length field outside 2..=254");
    }
    Ok((input.len() >= 6 + len).then_some(6 + len))
}

impl Conn {
    async fn run(mut self) {
        let mut open = Open {
            front: self.front.clone(),
            client: self.client.clone(),
            why: Closed::Normally,
        };
        let (why, reason) = self.serve().await;
        open.why = why;
        // Counted as closed before the socket closes (when `self` goes).
        drop(open);
        if why != Closed::Malformed {
            debug!(client = %self.peer, reason, "Modbus connection closed.");
        } else if let Some(held) = self.front.limit(DEBUG_EVERY, |l| &mut l.malformed) {
            debug!(client = %self.peer, reason, held, "Modbus connection closed: malformed frame.");
        }
    }

    /// Answer requests until the connection ends; why it did.
    async fn serve(&mut self) -> End {
        let settings = self.front.settings.clone();
        // When the frame begun must be complete.
        let mut frame_deadline = None;
        loop {
            if let Err(end) = self.answer_received(&mut frame_deadline).await {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if self.shutdown.is_shutdown() {
                return (Closed::Normally, "gateway stopping");
            }
            let idle = self.input.is_empty();
            let deadline = if idle {
                Instant::now() + settings.idle_timeout
            } else {
                *frame_deadline.get_or_insert_with(|| Instant::now() + settings.frame_timeout)
            };
            self.input.reserve(READ_SIZE);
            tokio::select! {
                biased;
                () = self.shutdown.recv() => return (Closed::Normally, "gateway stopping"),
                read = timeout_at(deadline, self.tcp.read_buf(&mut self.input)) => match read {
                    Err(_) if idle => return (Closed::Idle, "idle_timeout"),
                    Err(_) => return (Closed::Stalled, "frame_timeout"),
                    Ok(Ok(0)) if self.input.is_empty() => return (Closed::Normally, "closed by client"),
                    Ok(Ok(0)) => return (Closed::Malformed, "closed mid-frame"),
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return (Closed::Normally, "connection error"),
                },
            }
        }
    }

    /// Answer every complete request in `input`, in order.
    async fn answer_received(&mut self, frame_deadline: &mut Option<Instant>) -> Result<(), End> {
        loop {
            let len = match frame_len(&self.input) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(()),
                Err(what) => {
                    // What was answered before still goes out.
                    let _ = self.flush().await;
                    return Err((Closed::Malformed, what));
                }
            };
            let frame = self.input.split_to(len);
            *frame_deadline = None;
            self.answer(&frame).await?;
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
    }

    /// Answer one framed request.
    async fn answer(&mut self, frame: &[u8]) -> Result<(), End> {
        let (tid, unit, pdu) = ([frame[0], frame[1]], frame[6], &frame[HEADER..]);
        let fc = pdu[0];
        self.front.stats.request(&self.client);
        let failed = match pdu::parse(pdu, self.front.settings.writes) {
            Ok(Request::Read {
                table,
                start,
                count,
            }) => match self.read(unit, table, start, count) {
                Ok(data) => {
                    Reply::begin(&mut self.out, tid, unit, fc).data(&data).end();
                    return Ok(());
                }
                Err(e) => e,
            },
            Ok(Request::Write { write, echo }) => {
                // The replies before it go out now: this one waits for the device.
                self.flush().await?;
                match self.front.backend.write(unit, write, self.peer).await {
                    Ok(()) => {
                        self.front.stats.write(&self.client);
                        Reply::begin(&mut self.out, tid, unit, fc)
                            .bytes(&echo)
                            .end();
                        return Ok(());
                    }
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        self.front.stats.exception(&self.client, failed);
        Reply::exception(&mut self.out, tid, unit, fc, failed);
        Ok(())
    }

    /// A read from the backend, checked: data of another kind or quantity than asked for
    /// is exception 04 (and a warning), never a reply that does not match its request.
    fn read(&self, unit: u8, table: Table, start: u16, count: u16) -> Result<ReadData, Exception> {
        let data = self.front.backend.read(unit, table, start, count)?;
        let n = usize::from(count);
        let fits = match &data {
            ReadData::Bits(b) => table.is_bits() && b.len() == n,
            ReadData::Registers(r) => !table.is_bits() && r.len() == n,
        };
        if fits {
            return Ok(data);
        }
        if let Some(held) = self.front.limit(WARN_EVERY, |l| &mut l.backend) {
            warn!(unit, %table, start, count, held, "Modbus server: the backend answered a read with other data than asked for.");
        }
        Err(Exception::SERVER_DEVICE_FAILURE)
    }

    /// Write the replies gathered, in one write; a client that reads none of it for
    /// `idle_timeout` is closed.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.front.settings.idle_timeout;
        match timeout_at(deadline, self.tcp.write_all(&self.out)).await {
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
            Ok(Err(_)) => Err((Closed::Normally, "connection error")),
            Err(_) => Err((Closed::Stalled, "replies not read")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_and_checked_early() {
        assert_eq!(frame_len(&[0, 1, 0]), Ok(None));
        assert_eq!(frame_len(&[0, 1, 0, 1]), Err("protocol id not 0"));
        assert_eq!(frame_len(&[0, 1, 0, 0, 0]), Ok(None));
        for bad in [0u16, 1, 255, 65535] {
            let [h, l] = bad.to_be_bytes();
            assert!(frame_len(&[0, 1, 0, 0, h, l]).is_err(), "{bad}");
        }
        assert_eq!(frame_len(&[0, 1, 0, 0, 0, 2, 1]), Ok(None));
        assert_eq!(frame_len(&[0, 1, 0, 0, 0, 2, 1, 3]), Ok(Some(8)));
        assert_eq!(frame_len(&[0, 1, 0, 0, 0, 2, 1, 3, 9, 9]), Ok(Some(8)));
        let mut max = vec![0, 1, 0, 0, 0, 254];
        max.resize(260, 0);
        assert_eq!(frame_len(&max), Ok(Some(260)));
    }

    #[test]
    fn limiter_lets_one_through_per_period() {
        let mut l = Limiter::default();
        assert_eq!(l.pass(Duration::from_secs(60)), Some(0));
        assert_eq!(l.pass(Duration::from_secs(60)), None);
        assert_eq!(l.pass(Duration::from_secs(60)), None);
        assert_eq!(l.pass(Duration::ZERO), None);
        l.next = Some(Instant::now());
        assert_eq!(l.pass(Duration::ZERO), Some(3));
    }
}
