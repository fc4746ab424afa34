//! The UART bus task: one task owns a serial port carrying text lines (the actor).
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
//! Only one exchange is outstanding at a time: a command (ahead of polls) or a query. A
//! polled device that misses `offline_after` replies is `offline` and is retried with
//! backoff up to its `max_backoff`; a device sending on its own is `offline` after
//! `offline_after` periods without a line. A lost port (hang-up, unplugged adapter) takes
//! every device offline and is reopened with backoff; an unfinished line left quiet for
//! the bus `timeout` is discarded as partial.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant, SystemTime},
};

use fieldlink_drivers::{
    backoff::Backoff,
    modbus::{codec, Value},
    serial::SerialSettings,
    uart::{FieldValue, Frame, LineFramer, Parsed},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant as TokioInstant,
};
use tokio_serial::SerialStream;
use tracing::{debug, info, warn};

use crate::commands::CommandError;
use crate::{
    bus::{availability, BusIo},
    commands::{self, Command},
    gpio::Out,
    health::{Availability, SerialStats, Stats},
    model::{Bus, BusKind, Device, Model, Point, ValueType},
    publish::{payload, reading, Outgoing, PointState, Reading},
};

struct Dev {
    states: Vec<PointState>,
    failures: u32,
    next_due: TokioInstant,
    last_seen: TokioInstant,
    availability_topic: String,
}

enum Pending {
    Idle,
    Poll {
        device: usize,
        deadline: TokioInstant,
    },
    Ack {
        command: Command,
        reading: Reading,
        deadline: TokioInstant,
    },
}

/// Everything the task owns besides the channels.
struct Uart<'a> {
    bus: &'a Bus,
    settings: SerialSettings,
    timeout: Duration,
    port: Option<SerialStream>,
    backoff: Backoff,
    next_open: TokioInstant,
    was_open: bool,
    framer: LineFramer,
    strip_cr: bool,
    last_rx: TokioInstant,
    devs: Vec<Dev>,
    pending: Pending,
    queue: VecDeque<Command>,
    stats: &'a Stats,
    counters: Option<&'a SerialStats>,
    first: usize,
}

/// Run a uart bus until shutdown.
pub async fn run_uart(model: Arc<Model>, bus: Arc<Bus>, first_stats_index: usize, io: BusIo) {
    let BusIo {
        out: tx,
        mut commands,
        stats,
        mut shutdown,
    } = io;
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
    let mut u = Uart {
        bus: &bus,
        settings: serial.clone(),
        timeout: *timeout,
        port: None,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        next_open: now,
        was_open: false,
        framer: LineFramer::new(delimiter.clone(), *max_line),
        strip_cr: delimiter.as_slice() == b"\n",
        last_rx: now,
        devs: bus
            .devices
            .iter()
            .map(|d| Dev {
                states: vec![PointState::default(); d.points.len()],
                failures: 0,
                next_due: now,
                last_seen: now,
                availability_topic: model.availability_topic(&d.id),
            })
            .collect(),
        pending: Pending::Idle,
        queue: VecDeque::new(),
        stats: &stats,
        counters: stats.serial.iter().find(|s| s.bus == bus.id),
        first: first_stats_index,
    };
    let mut out = Out {
        messages: Vec::new(),
        stats: &stats,
        first: first_stats_index,
    };
    info!(bus = %bus.id, port = %serial.path, devices = bus.devices.len(), "UART bus started.");
    let mut chunk = vec![0u8; 1024];
    loop {
        u.open_if_due(&mut out);
        u.start_next(&mut out).await;
        let wake = u.next_wake();
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            Some(first) = commands.recv() => {
                let batch = commands::drain(first, &mut commands);
                let batch = commands::collapse(
                    batch,
                    |c| bus.devices.get(c.device).and_then(|d| d.points.get(c.point)),
                    &mut out.messages,
                );
                u.queue.extend(batch);
            }
            r = read_port(&mut u.port, &mut chunk) => match r {
                Ok(n) if n > 0 => {
                    u.last_rx = TokioInstant::now();
                    u.backoff.reset();
                    let mut frames = Vec::new();
                    u.framer.push(&chunk[..n], &mut frames);
                    for f in frames {
                        u.frame(f, &mut out);
                    }
                    // A line that never stops coming must not starve the deadlines.
                    u.timers(&mut out);
                }
                Ok(_) => u.lost("hang-up", &mut out),
                Err(e) => u.lost(&e.to_string(), &mut out),
            },
            () = tokio::time::sleep_until(wake) => u.timers(&mut out),
        }
        out.send(&tx).await;
    }
    if let Pending::Ack { command, .. } = std::mem::replace(&mut u.pending, Pending::Idle) {
        if let Some(point) = u.point(&command) {
            out.messages.push(commands::result(
                point,
                Err(CommandError::ShuttingDownUnacknowledged),
                command.id.as_ref(),
            ));
        }
    }
    // Commands not written yet are answered too: nobody is left waiting.
    while let Ok(c) = commands.try_recv() {
        u.queue.push_back(c);
    }
    for c in std::mem::take(&mut u.queue) {
        if let Some(point) = u.point(&c) {
            out.messages.push(commands::result(
                point,
                Err(CommandError::ShuttingDown),
                c.id.as_ref(),
            ));
        }
    }
    out.send(&tx).await;
    debug!(bus = %bus.id, "UART bus stopped.");
}

async fn read_port(port: &mut Option<SerialStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match port {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

impl Uart<'_> {
    fn point(&self, c: &Command) -> Option<&Point> {
        self.bus.devices.get(c.device)?.points.get(c.point)
    }

    /// The result text of a command that cannot be written.
    fn unavailable(&self) -> CommandError {
        CommandError::PortUnavailable(self.settings.path.clone())
    }

    fn count(&self, f: impl Fn(&SerialStats) -> &std::sync::atomic::AtomicU64) {
        if let Some(c) = self.counters {
            f(c).fetch_add(1, Relaxed);
        }
    }

    /// A device sending on its own: it is offline after a silence.
    fn listens(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart
            .as_ref()
            .is_some_and(|u| u.query.is_none() && u.parser.is_some())
    }

    /// A device that only takes commands (no parser): online while the port is open.
    fn write_only(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart
            .as_ref()
            .is_none_or(|u| u.parser.is_none())
    }

    fn polled(&self, d: usize) -> bool {
        self.bus.devices[d]
            .uart
            .as_ref()
            .is_some_and(|u| u.query.is_some())
    }

    /// Open the port when it is closed and its backoff has passed.
    fn open_if_due(&mut self, out: &mut Out<'_>) {
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
                for d in &mut self.devs {
                    // A device sending on its own gets its full grace period again.
                    d.last_seen = now;
                }
                for d in 0..self.devs.len() {
                    if self.write_only(d) {
                        self.set_availability(d, true, out);
                    }
                }
            }
            Err(e) => {
                let wait = self.backoff.next_delay();
                self.next_open = TokioInstant::now() + wait;
                if self.was_open || wait == Duration::from_millis(500) {
                    warn!(bus = %self.bus.id, port = %self.settings.path, error = %e, retry_in = ?wait, "Cannot open serial port.");
                } else {
                    debug!(bus = %self.bus.id, port = %self.settings.path, error = %e, retry_in = ?wait, "Cannot open serial port.");
                }
                self.was_open = false;
                self.all_offline(out);
            }
        }
    }

    /// The port hung up or failed: every device goes offline, reopen with backoff.
    fn lost(&mut self, why: &str, out: &mut Out<'_>) {
        if self.port.take().is_some() {
            warn!(bus = %self.bus.id, port = %self.settings.path, reason = why, "Serial port lost; reopening with backoff.");
        }
        let wait = self.backoff.next_delay();
        self.next_open = TokioInstant::now() + wait;
        let partial = self.framer.discard_partial();
        if partial > 0 {
            self.count(|c| &c.partial);
        }
        match std::mem::replace(&mut self.pending, Pending::Idle) {
            Pending::Ack { command, .. } => {
                if let Some(point) = self.point(&command) {
                    out.messages.push(commands::result(
                        point,
                        Err(CommandError::PortLost(why.to_string())),
                        command.id.as_ref(),
                    ));
                }
            }
            Pending::Poll { .. } | Pending::Idle => {}
        }
        self.all_offline(out);
    }

    fn all_offline(&mut self, out: &mut Out<'_>) {
        for d in 0..self.devs.len() {
            self.set_availability(d, false, out);
        }
        for c in std::mem::take(&mut self.queue) {
            if let Some(point) = self.point(&c) {
                out.messages.push(commands::result(
                    point,
                    Err(self.unavailable()),
                    c.id.as_ref(),
                ));
            }
        }
    }

    fn set_availability(&mut self, d: usize, online: bool, out: &mut Out<'_>) {
        let st = &self.stats.devices[self.first + d];
        let want = if online {
            Availability::Online
        } else {
            Availability::Offline
        };
        if st.availability() == want {
            return;
        }
        let id = &self.bus.devices[d].id;
        if online {
            info!(device = %id, bus = %self.bus.id, "Device online.");
        } else {
            warn!(device = %id, bus = %self.bus.id, "Device offline.");
        }
        st.set_availability(want);
        out.messages
            .push(availability(&self.devs[d].availability_topic, online));
    }

    /// When the loop must wake up for a timer.
    fn next_wake(&self) -> TokioInstant {
        let far = TokioInstant::now() + Duration::from_secs(3600);
        let mut t = far;
        if self.port.is_none() {
            t = t.min(self.next_open);
        }
        match &self.pending {
            Pending::Poll { deadline, .. } | Pending::Ack { deadline, .. } => {
                t = t.min(*deadline);
            }
            Pending::Idle if self.port.is_some() => {
                for (i, d) in self.devs.iter().enumerate() {
                    if self.polled(i) {
                        t = t.min(d.next_due);
                    }
                }
            }
            Pending::Idle => {}
        }
        for (i, d) in self.devs.iter().enumerate() {
            if self.listens(i) && self.port.is_some() {
                t = t.min(d.last_seen + self.silence(i));
            }
        }
        if self.framer.pending() > 0 {
            t = t.min(self.last_rx + self.timeout);
        }
        t
    }

    /// How long a device sending on its own may stay silent before it is offline.
    fn silence(&self, d: usize) -> Duration {
        let dev = &self.bus.devices[d];
        dev.poll_interval.saturating_mul(dev.offline_after)
    }

    fn timers(&mut self, out: &mut Out<'_>) {
        let now = TokioInstant::now();
        match &self.pending {
            Pending::Poll { device, deadline } if *deadline <= now => {
                let d = *device;
                self.pending = Pending::Idle;
                self.poll_failed(d, out);
            }
            Pending::Ack { deadline, .. } if *deadline <= now => {
                if let Pending::Ack { command, .. } =
                    std::mem::replace(&mut self.pending, Pending::Idle)
                {
                    if let Some(point) = self.point(&command) {
                        let t = ack_timeout(point, self.timeout);
                        warn!(topic = %point.topic, timeout = ?t, "No acknowledgement.");
                        out.messages.push(commands::result(
                            point,
                            Err(CommandError::NoAcknowledgement(
                                humantime::format_duration(t).to_string(),
                            )),
                            command.id.as_ref(),
                        ));
                    }
                }
            }
            _ => {}
        }
        if self.framer.pending() > 0 && self.last_rx + self.timeout <= now {
            let n = self.framer.discard_partial();
            self.count(|c| &c.partial);
            debug!(bus = %self.bus.id, bytes = n, "Partial line discarded.");
        }
        if self.port.is_some() {
            for d in 0..self.devs.len() {
                if self.listens(d) && self.devs[d].last_seen + self.silence(d) <= now {
                    self.set_availability(d, false, out);
                    // Checked again one period later.
                    self.devs[d].last_seen =
                        now - self.silence(d) + self.bus.devices[d].poll_interval;
                }
            }
        }
    }

    fn poll_failed(&mut self, d: usize, out: &mut Out<'_>) {
        let dev = &self.bus.devices[d];
        let st = &self.stats.devices[self.first + d];
        st.failed_polls.fetch_add(1, Relaxed);
        st.request_errors.fetch_add(1, Relaxed);
        debug!(device = %dev.id, timeout = ?self.timeout, "No reply to the query.");
        let run = &mut self.devs[d];
        run.failures += 1;
        let failures = run.failures;
        if failures >= dev.offline_after {
            self.set_availability(d, false, out);
        }
        self.schedule(d);
    }

    /// The next poll of a polled device, with backoff while it keeps failing.
    fn schedule(&mut self, d: usize) {
        let dev: &Device = &self.bus.devices[d];
        let run = &mut self.devs[d];
        let now = TokioInstant::now();
        let interval = dev.poll_interval;
        run.next_due = if run.failures < dev.offline_after {
            (run.next_due + interval).max(now)
        } else {
            let k = (run.failures - dev.offline_after).min(16);
            now + interval
                .saturating_mul(1 << k)
                .min(dev.max_backoff.max(interval))
        };
    }

    /// Start the next exchange when the line is free: a queued command, else a due query.
    async fn start_next(&mut self, out: &mut Out<'_>) {
        if self.port.is_none() || !matches!(self.pending, Pending::Idle) {
            return;
        }
        if let Some(c) = self.queue.pop_front() {
            self.start_command(c, out).await;
            return;
        }
        let now = TokioInstant::now();
        let due = (0..self.devs.len())
            .filter(|&d| self.polled(d) && self.devs[d].next_due <= now)
            .min_by_key(|&d| self.devs[d].next_due);
        let Some(d) = due else { return };
        let Some(query) = self.bus.devices[d]
            .uart
            .as_ref()
            .and_then(|u| u.query.clone())
        else {
            return;
        };
        let st = &self.stats.devices[self.first + d];
        st.polls.fetch_add(1, Relaxed);
        st.requests.fetch_add(1, Relaxed);
        if self.write(&query, out).await {
            self.pending = Pending::Poll {
                device: d,
                deadline: TokioInstant::now() + self.timeout,
            };
        }
    }

    /// Write bytes; on failure the port is dropped. Returns whether it was written.
    async fn write(&mut self, bytes: &[u8], out: &mut Out<'_>) -> bool {
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
                self.lost(&e.to_string(), out);
                false
            }
            Err(_) => {
                self.lost("write timeout", out);
                false
            }
        }
    }

    async fn start_command(&mut self, c: Command, out: &mut Out<'_>) {
        let Some(point) = self.point(&c).cloned() else {
            return;
        };
        let Some(cmd) = point.uart.as_ref().and_then(|u| u.command.as_ref()) else {
            return;
        };
        let r = reading(&point, &c.value);
        let mut fields: BTreeMap<String, String> = cmd.params.clone();
        fields.insert(
            "value".into(),
            match &r {
                Reading::Bool(b) => u8::from(*b).to_string(),
                other => other.text(),
            },
        );
        fields.insert("raw".into(), raw_text(&c.value));
        if let Value::Str(text) = &c.value {
            if text.chars().any(char::is_control) {
                out.messages.push(commands::result(
                    &point,
                    Err(CommandError::ControlCharacters),
                    c.id.as_ref(),
                ));
                return;
            }
        }
        let line = cmd.template.render(&fields);
        self.stats.devices[self.first + c.device]
            .requests
            .fetch_add(1, Relaxed);
        if !self.write(line.as_bytes(), out).await {
            out.messages.push(commands::result(
                &point,
                Err(self.unavailable()),
                c.id.as_ref(),
            ));
            return;
        }
        debug!(topic = %point.topic, line = %line.escape_debug(), "Command line written.");
        if cmd.ack.is_some() {
            self.pending = Pending::Ack {
                deadline: TokioInstant::now() + ack_timeout(&point, self.timeout),
                command: c,
                reading: r,
            };
        } else {
            self.command_done(&point, c.device, c.point, &r, c.id.as_ref(), out);
        }
    }

    /// The command took effect: publish the state and the result.
    fn command_done(
        &mut self,
        point: &Point,
        d: usize,
        p: usize,
        r: &Reading,
        id: Option<&serde_json::Value>,
        out: &mut Out<'_>,
    ) {
        self.devs[d].states[p].force(r, Instant::now());
        out.count(d);
        out.messages.push(Outgoing::value(
            point,
            payload(point, r.clone(), SystemTime::now()),
        ));
        out.messages.push(commands::result(point, Ok(r.json()), id));
        info!(topic = %point.topic, value = %r.text(), "Command written.");
    }

    fn frame(&mut self, f: Frame, out: &mut Out<'_>) {
        match f {
            Frame::Overlong { bytes } => {
                self.count(|c| &c.overlong);
                debug!(bus = %self.bus.id, bytes, "Over-long line dropped.");
            }
            Frame::Line(bytes) => {
                let mut bytes = bytes.as_slice();
                if self.strip_cr {
                    bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                }
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return;
                }
                self.count(|c| &c.lines);
                // Invalid UTF-8 (a Latin-1 `°`, line noise) becomes U+FFFD: the parser
                // decides whether the rest of the line is usable.
                let line = String::from_utf8_lossy(bytes);
                self.line(&line, out);
            }
        }
    }

    fn line(&mut self, line: &str, out: &mut Out<'_>) {
        // 1. The acknowledgement a command waits for.
        if let Pending::Ack { command, .. } = &self.pending {
            let acked = self
                .point(command)
                .and_then(|p| p.uart.as_ref())
                .and_then(|u| u.command.as_ref())
                .and_then(|c| c.ack.as_ref())
                .is_some_and(|re| re.is_match(line));
            if acked {
                if let Pending::Ack {
                    command, reading, ..
                } = std::mem::replace(&mut self.pending, Pending::Idle)
                {
                    if let Some(point) = self.point(&command).cloned() {
                        self.command_done(
                            &point,
                            command.device,
                            command.point,
                            &reading,
                            command.id.as_ref(),
                            out,
                        );
                    }
                }
                return;
            }
        }
        // 2. The reply a polled device waits for.
        if let Pending::Poll { device, .. } = self.pending {
            if self.accept(device, line, out) {
                self.pending = Pending::Idle;
                self.devs[device].failures = 0;
                self.schedule(device);
                return;
            }
        }
        // 3. A device sending on its own.
        for d in 0..self.devs.len() {
            if self.listens(d) && self.accept(d, line, out) {
                self.stats.devices[self.first + d]
                    .polls
                    .fetch_add(1, Relaxed);
                return;
            }
        }
        // 4. A reply of a polled device that came too late (its poll timed out): not ours
        // to publish, and not the acknowledgement either.
        if (0..self.devs.len()).any(|d| self.polled(d) && self.parses(d, line)) {
            self.count(|c| &c.garbage);
            debug!(bus = %self.bus.id, line = %line.escape_debug(), "Late or unsolicited reply dropped.");
            return;
        }
        // 5. Nobody's: the wrong acknowledgement, or garbage.
        if let Pending::Ack { .. } = self.pending {
            if let Pending::Ack { command, .. } =
                std::mem::replace(&mut self.pending, Pending::Idle)
            {
                if let Some(point) = self.point(&command) {
                    warn!(topic = %point.topic, line = %line.escape_debug(), "Wrong acknowledgement.");
                    out.messages.push(commands::result(
                        point,
                        Err(CommandError::WrongAcknowledgement(
                            line.escape_debug().to_string(),
                        )),
                        command.id.as_ref(),
                    ));
                }
            }
            return;
        }
        self.count(|c| &c.garbage);
        debug!(bus = %self.bus.id, line = %line.escape_debug(), "Garbage line.");
    }

    /// Whether device `d`'s parser accepts `line` and finds one of its fields.
    fn parses(&self, d: usize, line: &str) -> bool {
        let dev = &self.bus.devices[d];
        dev.uart
            .as_ref()
            .and_then(|u| u.parser.as_ref())
            .and_then(|p| p.parse(line))
            .is_some_and(|parsed| !fields_of(dev, &parsed).is_empty())
    }

    /// Offer a line to device `d`: taken when its parser accepts the line and it carries
    /// at least one of the device's fields. Publishes what changed.
    fn accept(&mut self, d: usize, line: &str, out: &mut Out<'_>) -> bool {
        let dev = &self.bus.devices[d];
        let Some(parser) = dev.uart.as_ref().and_then(|u| u.parser.as_ref()) else {
            return false;
        };
        let Some(parsed) = parser.parse(line) else {
            return false;
        };
        let found = fields_of(dev, &parsed);
        if found.is_empty() {
            return false;
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        for (p, fv) in found {
            let point = &dev.points[p];
            match to_value(point, &fv) {
                Ok(v) => {
                    let r = reading(point, &v);
                    if self.devs[d].states[p].should_publish(point, &r, now) {
                        out.count(d);
                        out.messages
                            .push(Outgoing::value(point, payload(point, r, wall)));
                    }
                }
                Err(e) => {
                    self.count(|c| &c.bad_values);
                    debug!(topic = %point.topic, error = %e, "Bad value in line.");
                }
            }
        }
        self.devs[d].last_seen = TokioInstant::now();
        self.set_availability(d, true, out);
        true
    }
}

fn ack_timeout(point: &Point, bus_timeout: Duration) -> Duration {
    point
        .uart
        .as_ref()
        .and_then(|u| u.command.as_ref())
        .and_then(|c| c.ack_timeout)
        .unwrap_or(bus_timeout)
}

/// The points of `dev` whose field is in the parsed line, with the field's value.
fn fields_of(dev: &Device, parsed: &Parsed<'_>) -> Vec<(usize, FieldValue)> {
    dev.points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let f = p.uart.as_ref()?.field.as_ref()?;
            parsed.get(f).map(|v| (i, v))
        })
        .collect()
}

fn raw_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Int(i) => i.to_string(),
        Value::U64(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
    }
}

/// A field's text or JSON value as the point's type (named values first).
pub fn to_value(point: &Point, fv: &FieldValue) -> Result<Value, String> {
    let named = match fv {
        FieldValue::Text(t) => point
            .value_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(t.trim()))
            .map(|(_, v)| *v),
        _ => None,
    };
    match point.ty {
        ValueType::Bool => {
            let b = match (named, fv) {
                (Some(n), _) => n != 0.0,
                (None, FieldValue::Bool(b)) => *b,
                (None, FieldValue::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
                (None, FieldValue::Text(t)) => commands::parse_bool(t)
                    .ok_or_else(|| format!("`{}` is not a boolean", t.trim()))?,
            };
            Ok(Value::Bool(b))
        }
        ValueType::String { len } => {
            let s = fv.to_string();
            if s.len() > usize::from(len) {
                Err(format!("text of {} bytes is longer than {len}", s.len()))
            } else {
                Ok(Value::Str(s))
            }
        }
        ty => {
            let v = match (named, fv) {
                (Some(n), _) => Value::Float(n),
                (None, FieldValue::Bool(b)) => Value::Int(i64::from(*b)),
                (None, FieldValue::Number(n)) => number(&n.to_string(), ty)?,
                (None, FieldValue::Text(t)) => number(t.trim(), ty)?,
            };
            let v = match (ty, v) {
                (ValueType::F32 | ValueType::F64, v) => {
                    Value::Float(v.as_f64().unwrap_or(f64::NAN))
                }
                (_, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Value::Int(f as i64)
                }
                (_, Value::Float(f)) => {
                    return Err(format!("{f} is not a whole number for `{ty}`"))
                }
                (_, v) => v,
            };
            if !matches!(ty, ValueType::F32 | ValueType::F64) {
                codec::encode(&v, ty, point.order)
                    .map_err(|e| format!("{} does not fit `{ty}` ({e})", raw_text(&v)))?;
            }
            Ok(v)
        }
    }
}

fn number(t: &str, ty: ValueType) -> Result<Value, String> {
    if let Ok(i) = t.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    if ty == ValueType::U64 {
        if let Ok(u) = t.parse::<u64>() {
            return Ok(Value::U64(u));
        }
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::Float(f)),
        _ => Err(format!("`{t}` is not a number")),
    }
}
