//! UART buses: what a serial port carrying text lines supplies to the device actor.
//!
//! Bytes are cut into lines at the bus `delimiter` (a line split across reads is
//! reassembled; an over-long line is dropped and counted). Each line goes, in this order,
//! to: a command waiting for its acknowledgement (the line matches `ack`); the polled
//! device waiting for its reply (its parser accepts the line and it carries at least one
//! of the device's fields); the first device sending on its own whose parser accepts it.
//! Any other line is garbage: counted and logged at debug level. While a command waits
//! for its acknowledgement, a line nobody takes is the wrong acknowledgement and is
//! reported on `<topic>/set/result`.
//!
//! Only one exchange is outstanding at a time: a command (ahead of polls) or a query; the
//! lines that come meanwhile are still published. The actor takes a polled device that
//! misses `offline_after` replies offline and retries it with backoff; a device sending on
//! its own is `offline` after `offline_after` periods without a line. A lost port
//! (hang-up, unplugged adapter) takes every device offline and is reopened with backoff;
//! an unfinished line left quiet for the bus `timeout` is discarded as partial.
//!
//! A `<topic>/get` of a polled device sends its query and waits for the reply (`query`);
//! a device sending on its own, and a device that only takes commands, are not asked.

mod fields;
mod lines;
mod query;

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use fieldlink_drivers::{
    backoff::Backoff,
    serial::SerialSettings,
    uart::{Frame, LineFramer},
    value::Value,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant as TokioInstant,
};
use tokio_serial::SerialStream;
use tracing::{debug, info, warn};

use super::{actor, BusIo, Cx, Driver, Polled};
use crate::{
    commands::{Command, CommandError, GetError},
    health::SerialStats,
    model::{Bus, BusKind, Model, Point},
    publish::{reading, Reading},
};

/// First wait before reopening a port that failed; doubled up to [`REOPEN_MAX`].
const REOPEN_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two tries to open a port.
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// Run a uart bus until shutdown.
pub async fn run_uart(model: Arc<Model>, bus: Arc<Bus>, first_stats_index: usize, io: BusIo) {
    let BusKind::Uart {
        serial,
        delimiter,
        max_line,
        timeout,
    } = &bus.kind
    else {
        return;
    };
    let now = TokioInstant::now();
    let driver = Uart {
        settings: serial.clone(),
        timeout: *timeout,
        port: None,
        backoff: Backoff::new(REOPEN_FIRST, REOPEN_MAX),
        next_open: now,
        was_open: false,
        framer: LineFramer::new(delimiter.clone(), *max_line),
        strip_cr: delimiter.as_slice() == b"\n",
        last_rx: now,
        last_seen: vec![now; bus.devices.len()],
        chunk: vec![0u8; 1024],
        counters: io.stats.serial_of(&bus.id),
        bus: bus.clone(),
        capture: None,
    };
    actor::run(model, bus, first_stats_index, driver, io).await;
}

/// A serial port carrying lines, and what the task knows of its devices.
struct Uart {
    bus: Arc<Bus>,
    settings: SerialSettings,
    timeout: Duration,
    port: Option<SerialStream>,
    backoff: Backoff,
    next_open: TokioInstant,
    was_open: bool,
    framer: LineFramer,
    strip_cr: bool,
    /// When the last byte came in (an unfinished line is discarded after `timeout`).
    last_rx: TokioInstant,
    /// When each device's last line came in.
    last_seen: Vec<TokioInstant>,
    chunk: Vec<u8>,
    /// This bus's line counters.
    counters: Option<Arc<SerialStats>>,
    // Reads on demand (issue #23).
    /// What a read on demand waits for in the reply it asked for.
    capture: Option<query::Capture>,
}

/// What a wait for a reply or an acknowledgement ended with.
enum Waited {
    /// The polled device's reply, or the acknowledgement, came.
    Done,
    /// A line nobody took while an acknowledgement was awaited (escaped for the result).
    WrongAck(String),
    /// Nothing came in time.
    Timeout,
    /// The port was lost (the reason).
    Lost(String),
    /// Shutdown was requested.
    ShuttingDown,
}

/// What a line is awaited for.
#[derive(Clone, Copy)]
enum Awaited<'a> {
    /// Nothing.
    Nothing,
    /// The reply of polled device `d`.
    Reply(usize),
    /// The acknowledgement of a command (the line matches it).
    Ack(&'a regex::Regex),
}

impl Driver for Uart {
    type Event = std::io::Result<usize>;

    fn endpoint(&self) -> String {
        self.settings.path.clone()
    }

    /// One line, one exchange at a time; every device is polled from the start, and a
    /// polled device that does not answer is retried on its own schedule.
    fn shares_time(&self) -> bool {
        false
    }

    fn start(&mut self, cx: &mut Cx) {
        self.open_if_due(cx);
    }

    fn reconfigure(&mut self, kept: &[Option<usize>], cx: &mut Cx) {
        let now = TokioInstant::now();
        self.last_seen = kept
            .iter()
            .map(|k| {
                k.and_then(|i| self.last_seen.get(i).copied())
                    .unwrap_or(now)
            })
            .collect();
        self.bus = cx.bus.clone();
        if self.port.is_some() {
            for (d, k) in kept.iter().enumerate() {
                if k.is_none() && self.write_only(d) {
                    cx.set_online(d, true, None);
                }
            }
        }
    }

    fn polls(&self, d: usize) -> bool {
        self.port.is_some() && self.polled(d)
    }

    async fn poll(&mut self, d: usize, cx: &mut Cx) -> Polled {
        let Some(query) = self.bus.devices[d].uart().and_then(|u| u.query.clone()) else {
            return Polled::Skipped;
        };
        cx.stats_of(d).requests.fetch_add(1, Relaxed);
        if !self.write_line(&query, cx).await {
            return Polled::Skipped;
        }
        let deadline = TokioInstant::now() + self.timeout;
        match self.wait(Awaited::Reply(d), deadline, cx).await {
            Waited::Done => Polled::Answered,
            Waited::Timeout | Waited::WrongAck(_) => {
                cx.stats_of(d).request_errors.fetch_add(1, Relaxed);
                let t = humantime::format_duration(self.timeout);
                debug!(device = %self.bus.devices[d].id, timeout = %t, "No reply to the query.");
                Polled::Failed(format!("no reply within {t}"))
            }
            Waited::Lost(_) | Waited::ShuttingDown => Polled::Skipped,
        }
    }

    async fn write(&mut self, c: &Command, cx: &mut Cx) -> Result<Reading, CommandError> {
        let bus = self.bus.clone();
        let Some(point) = bus
            .devices
            .get(c.device)
            .and_then(|d| d.points.get(c.point))
        else {
            return Err(CommandError::NotWritable("no such point".into()));
        };
        let Some(cmd) = point.uart().and_then(|u| u.command.as_ref()) else {
            return Err(CommandError::NotWritable("the point has no command".into()));
        };
        if self.port.is_none() {
            return Err(self.unavailable());
        }
        if let Value::Str(text) = &c.value {
            if text.chars().any(char::is_control) {
                return Err(CommandError::ControlCharacters);
            }
        }
        let r = reading(point, &c.value);
        let mut fields: BTreeMap<String, String> = cmd.params.clone();
        fields.insert(
            "value".into(),
            match &r {
                Reading::Bool(b) => u8::from(*b).to_string(),
                other => other.text(),
            },
        );
        fields.insert("raw".into(), fields::raw_text(&c.value));
        let line = cmd.template.render(&fields);
        cx.stats_of(c.device).requests.fetch_add(1, Relaxed);
        if !self.write_line(line.as_bytes(), cx).await {
            return Err(self.unavailable());
        }
        debug!(topic = %point.topic, line = %line.escape_debug(), "Command line written.");
        let Some(ack) = &cmd.ack else {
            return Ok(r);
        };
        let t = ack_timeout(point, self.timeout);
        match self
            .wait(Awaited::Ack(ack), TokioInstant::now() + t, cx)
            .await
        {
            Waited::Done => Ok(r),
            // The actor logs the failure with its text.
            Waited::WrongAck(line) => Err(CommandError::WrongAcknowledgement(line)),
            Waited::Timeout => Err(CommandError::NoAcknowledgement(
                humantime::format_duration(t).to_string(),
            )),
            Waited::Lost(why) => Err(CommandError::PortLost(why)),
            Waited::ShuttingDown => Err(CommandError::ShuttingDownUnacknowledged),
        }
    }

    async fn read(
        &mut self,
        d: usize,
        points: &[usize],
        cx: &mut Cx,
    ) -> Vec<Result<Reading, GetError>> {
        self.read_now(d, points, cx).await
    }

    async fn event(&mut self) -> std::io::Result<usize> {
        match &mut self.port {
            Some(p) => p.read(&mut self.chunk).await,
            None => std::future::pending().await,
        }
    }

    fn on_event(&mut self, read: std::io::Result<usize>, cx: &mut Cx) {
        // Nothing is awaited outside a poll or a command.
        let _ = self.received(read, Awaited::Nothing, cx);
    }

    fn next_timer(&self) -> Option<TokioInstant> {
        let mut t: Option<TokioInstant> = None;
        let mut at = |x: TokioInstant| t = Some(t.map_or(x, |t| t.min(x)));
        if self.port.is_none() {
            at(self.next_open);
        } else {
            for d in 0..self.last_seen.len() {
                if self.listens(d) {
                    at(self.last_seen[d] + self.silence(d));
                }
            }
        }
        if self.framer.pending() > 0 {
            at(self.last_rx + self.timeout);
        }
        t
    }

    fn on_timer(&mut self, now: TokioInstant, cx: &mut Cx) {
        self.open_if_due(cx);
        if self.framer.pending() > 0 && self.last_rx + self.timeout <= now {
            let n = self.framer.discard_partial();
            self.count(|c| &c.partial);
            debug!(bus = %self.bus.id, bytes = n, "Partial line discarded.");
        }
        if self.port.is_some() {
            for d in 0..self.last_seen.len() {
                if self.listens(d) && self.last_seen[d] + self.silence(d) <= now {
                    cx.set_online(d, false, Some("no line in time"));
                    // Checked again one period later.
                    self.last_seen[d] = now - self.silence(d) + self.bus.devices[d].poll_interval;
                }
            }
        }
    }
}

impl Uart {
    /// The result of a command that cannot be written.
    fn unavailable(&self) -> CommandError {
        CommandError::PortUnavailable(self.settings.path.clone())
    }

    fn count(&self, f: impl Fn(&SerialStats) -> &std::sync::atomic::AtomicU64) {
        if let Some(c) = &self.counters {
            f(c).fetch_add(1, Relaxed);
        }
    }

    /// A device sending on its own: it is offline after a silence.
    fn listens(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart()
            .is_some_and(|u| u.query.is_none() && u.parser.is_some())
    }

    /// A device that only takes commands (no parser): online while the port is open.
    fn write_only(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart()
            .is_none_or(|u| u.parser.is_none())
    }

    fn polled(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart()
            .is_some_and(|u| u.query.is_some())
    }

    /// How long a device sending on its own may stay silent before it is offline.
    fn silence(&self, d: usize) -> Duration {
        let dev = &self.bus.devices[d];
        dev.poll_interval.saturating_mul(dev.offline_after)
    }

    /// Open the port when it is closed and its backoff has passed.
    fn open_if_due(&mut self, cx: &mut Cx) {
        if self.port.is_some() || TokioInstant::now() < self.next_open {
            return;
        }
        match self.settings.open() {
            Ok(p) => {
                info!(bus = %self.bus.id, port = %self.settings.path, baud = self.settings.baud, "Serial port open.");
                self.port = Some(p);
                // The backoff is reset by the first byte read, not here: a port that opens
                // and fails at once must not be reopened twice a second forever.
                self.was_open = true;
                self.framer.discard_partial();
                let now = TokioInstant::now();
                self.last_rx = now;
                // A device sending on its own gets its full grace period again.
                self.last_seen.fill(now);
                for d in 0..self.last_seen.len() {
                    if self.write_only(d) {
                        cx.set_online(d, true, None);
                    }
                }
                if let Some(c) = &self.counters {
                    c.opened.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                let wait = self.backoff.next_delay();
                self.next_open = TokioInstant::now() + wait;
                if self.was_open || wait == REOPEN_FIRST {
                    warn!(bus = %self.bus.id, port = %self.settings.path, error = %e, retry_in = ?wait, "Cannot open serial port.");
                } else {
                    debug!(bus = %self.bus.id, port = %self.settings.path, error = %e, retry_in = ?wait, "Cannot open serial port.");
                }
                self.was_open = false;
                self.all_offline(cx, "the port cannot be opened");
            }
        }
    }

    /// The port hung up or failed: every device goes offline, reopen with backoff.
    fn lost(&mut self, why: &str, cx: &mut Cx) {
        if self.port.take().is_some() {
            warn!(bus = %self.bus.id, port = %self.settings.path, reason = why, "Serial port lost; reopening with backoff.");
        }
        let wait = self.backoff.next_delay();
        self.next_open = TokioInstant::now() + wait;
        if self.framer.discard_partial() > 0 {
            self.count(|c| &c.partial);
        }
        self.all_offline(cx, why);
    }

    fn all_offline(&mut self, cx: &mut Cx, why: &str) {
        for d in 0..self.last_seen.len() {
            cx.set_online(d, false, Some(why));
        }
    }

    /// Write bytes; on failure the port is dropped. Returns whether it was written.
    async fn write_line(&mut self, bytes: &[u8], cx: &mut Cx) -> bool {
        let Some(port) = self.port.as_mut() else {
            return false;
        };
        let write = async {
            port.write_all(bytes).await?;
            port.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.lost(&e.to_string(), cx);
                false
            }
            Err(_) => {
                self.lost("write timeout", cx);
                false
            }
        }
    }

    /// Read and dispatch lines until what is `awaited` comes, `deadline` passes, the port
    /// is lost or shutdown is requested. The other lines that come meanwhile are handled
    /// as always (published, counted), and the bus's own timers keep running.
    async fn wait(&mut self, awaited: Awaited<'_>, deadline: TokioInstant, cx: &mut Cx) -> Waited {
        let mut shutdown = cx.shutdown.clone();
        loop {
            let wake = self.next_timer().map_or(deadline, |t| t.min(deadline));
            let read = tokio::select! {
                biased;
                () = shutdown.recv() => return Waited::ShuttingDown,
                () = tokio::time::sleep_until(wake) => {
                    let now = TokioInstant::now();
                    if deadline <= now {
                        return Waited::Timeout;
                    }
                    self.on_timer(now, cx);
                    continue;
                }
                r = self.event() => r,
            };
            let ended = self.received(read, awaited, cx);
            // What came meanwhile goes out now, not when the exchange ends.
            cx.flush().await;
            if let Some(w) = ended {
                return w;
            }
            if deadline <= TokioInstant::now() {
                return Waited::Timeout;
            }
        }
    }

    /// Bytes came in (or the port failed): cut them into lines and dispatch each. Returns
    /// how the wait for `awaited` ended, if it did; the lines after that one in the same
    /// read are dispatched as awaited by nobody.
    fn received(
        &mut self,
        read: std::io::Result<usize>,
        awaited: Awaited<'_>,
        cx: &mut Cx,
    ) -> Option<Waited> {
        let n = match read {
            Ok(0) => {
                self.lost("hang-up", cx);
                return Some(Waited::Lost("hang-up".into()));
            }
            Ok(n) => n,
            Err(e) => {
                let why = e.to_string();
                self.lost(&why, cx);
                return Some(Waited::Lost(why));
            }
        };
        self.last_rx = TokioInstant::now();
        self.backoff.reset();
        let mut frames = Vec::new();
        self.framer.push(&self.chunk[..n], &mut frames);
        let mut ended = None;
        for f in frames {
            let now_awaited = if ended.is_some() {
                Awaited::Nothing
            } else {
                awaited
            };
            if let Some(w) = self.frame(f, now_awaited, cx) {
                ended = Some(w);
            }
        }
        // A line that never stops coming must not starve the deadlines.
        self.on_timer(TokioInstant::now(), cx);
        ended
    }

    fn frame(&mut self, f: Frame, awaited: Awaited<'_>, cx: &mut Cx) -> Option<Waited> {
        match f {
            Frame::Overlong { bytes } => {
                self.count(|c| &c.overlong);
                debug!(bus = %self.bus.id, bytes, "Over-long line dropped.");
                None
            }
            Frame::Line(bytes) => {
                let mut bytes = bytes.as_slice();
                if self.strip_cr {
                    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                }
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                self.count(|c| &c.lines);
                // Invalid UTF-8 (a Latin-1 `°`, line noise) becomes U+FFFD: the parser
                // decides whether the rest of the line is usable.
                let line = String::from_utf8_lossy(bytes);
                self.line(&line, awaited, cx)
            }
        }
    }
}

fn ack_timeout(point: &Point, bus_timeout: Duration) -> Duration {
    point
        .uart()
        .and_then(|u| u.command.as_ref())
        .and_then(|c| c.ack_timeout)
        .unwrap_or(bus_timeout)
}
