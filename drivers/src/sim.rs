//! Modbus device simulators: real tokio-modbus servers whose register maps tests and
//! `fieldlink demo` can change while they run.
//!
//! A [`SimServer`] answers for any number of unit ids ([`SimDevice`]s) on one TCP listener.
//! Every request is counted and (optionally) logged so tests can assert what the gateway
//! asked for; a device can be told to stop answering, or that some addresses do not exist
//! (answered with exception 02, illegal data address). A device can identify itself
//! (function 43, Read Device Identification); a server can play a TCP gateway that answers
//! for absent unit ids with exception 0x0A/0x0B; an RTU line can hear only frames sent at
//! its devices' baud rate ([`SimServer::serve_rtu_at`]).

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Instant,
};

use tokio::net::TcpListener;
use tokio_modbus::prelude::{
    ConformityLevel, DeviceIdObject, ReadCode, ReadDeviceIdentificationResponse,
};
use tokio_modbus::{
    server::{
        tcp::{accept_tcp_connection, Server},
        Service,
    },
    ExceptionCode, Request, Response, SlaveRequest,
};

use crate::modbus::Table;

/// One request as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRequest {
    /// Unit id addressed.
    pub unit: u8,
    /// Modbus function code.
    pub function: u8,
    /// Table touched.
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Quantity read or written.
    pub count: u16,
    /// Values written (registers, or bits as 0/1), empty for reads.
    pub written: Vec<u16>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Tables {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    coils: HashMap<u16, bool>,
    discrete: HashMap<u16, bool>,
    holes: BTreeSet<(Table, u16)>,
}

/// A simulated Modbus device: four tables, holes, a request log, an on/off switch.
pub struct SimDevice {
    tables: Mutex<Tables>,
    log: Mutex<Vec<SimRequest>>,
    log_enabled: AtomicBool,
    requests: AtomicU64,
    responding: AtomicBool,
    delay_us: AtomicU64,
    /// Longest read answered (registers or bits); longer ones get exception 03.
    max_read: AtomicU64,
    /// What it answers to function 43 (object id, text); `None`: exception 01.
    identification: Mutex<Option<Vec<(u8, String)>>>,
}

impl Default for SimDevice {
    fn default() -> Self {
        SimDevice {
            tables: Mutex::default(),
            log: Mutex::default(),
            log_enabled: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            responding: AtomicBool::new(true),
            delay_us: AtomicU64::new(0),
            max_read: AtomicU64::new(u64::MAX),
            identification: Mutex::new(None),
        }
    }
}

const LOG_CAP: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimDevice {
    /// A new device with all registers reading 0.
    pub fn new() -> Arc<Self> {
        Arc::new(SimDevice::default())
    }

    /// Set registers of a register table starting at `address`.
    pub fn set_registers(&self, table: Table, address: u16, values: &[u16]) {
        let mut t = lock(&self.tables);
        let map = match table {
            Table::Input => &mut t.input,
            _ => &mut t.holding,
        };
        for (i, v) in values.iter().enumerate() {
            map.insert(address.wrapping_add(i as u16), *v);
        }
    }

    /// Set one bit of a bit table.
    pub fn set_bit(&self, table: Table, address: u16, value: bool) {
        let mut t = lock(&self.tables);
        match table {
            Table::Discrete => t.discrete.insert(address, value),
            _ => t.coils.insert(address, value),
        };
    }

    /// Read back one bit of a bit table (coils, discrete inputs).
    pub fn bit(&self, table: Table, address: u16) -> bool {
        let t = lock(&self.tables);
        let map = match table {
            Table::Discrete => &t.discrete,
            _ => &t.coils,
        };
        map.get(&address).copied().unwrap_or(false)
    }

    /// Read back registers of a register table.
    pub fn registers(&self, table: Table, address: u16, count: u16) -> Vec<u16> {
        let t = lock(&self.tables);
        let map = match table {
            Table::Input => &t.input,
            _ => &t.holding,
        };
        (0..count)
            .map(|i| map.get(&address.wrapping_add(i)).copied().unwrap_or(0))
            .collect()
    }

    /// Mark addresses as non-existent: reads touching them get exception 02.
    pub fn add_holes(&self, table: Table, addresses: impl IntoIterator<Item = u16>) {
        lock(&self.tables)
            .holes
            .extend(addresses.into_iter().map(|a| (table, a)));
    }

    /// Stop or resume answering (a stopped device stays silent: the master times out).
    pub fn set_responding(&self, on: bool) {
        self.responding.store(on, Ordering::SeqCst);
    }

    /// Answer every request this late (a slow device; on RTU, a reply after the master's
    /// timeout arrives while the master already waits for its next request).
    pub fn set_reply_delay(&self, delay: std::time::Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Turn the request log on or off (counters always run).
    pub fn set_logging(&self, on: bool) {
        self.log_enabled.store(on, Ordering::Relaxed);
    }

    /// Number of requests received (answered or not).
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A copy of the request log (at most the last 100 000 requests).
    pub fn log(&self) -> Vec<SimRequest> {
        lock(&self.log).clone()
    }

    /// Empty the request log.
    pub fn clear_log(&self) {
        lock(&self.log).clear();
    }

    fn record(&self, req: SimRequest) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.log_enabled.load(Ordering::Relaxed) {
            let mut log = lock(&self.log);
            if log.len() >= LOG_CAP {
                log.drain(..LOG_CAP / 2);
            }
            log.push(req);
        }
    }

    /// Refuse reads of more than `n` registers or bits with exception 03 (illegal data
    /// value), as devices with a short read buffer do.
    pub fn set_max_read(&self, n: u16) {
        self.max_read.store(u64::from(n), Ordering::SeqCst);
    }

    /// Answer Read Device Identification (function 43, MEI type 14) with these objects
    /// (object id, text: 0 vendor name, 1 product code, 2 revision...). Without them the
    /// device answers exception 01, illegal function, as many do.
    pub fn set_identification(&self, objects: &[(u8, &str)]) {
        *lock(&self.identification) =
            Some(objects.iter().map(|(i, t)| (*i, t.to_string())).collect());
    }

    /// Function 43: the objects of the category asked for, from `object` on.
    fn identify(
        &self,
        unit: u8,
        code: ReadCode,
        object: u8,
    ) -> Result<Option<Response>, ExceptionCode> {
        // Logged as function 43 with the object id asked for as its address (it touches
        // no table; `table` is only a placeholder there).
        self.record(SimRequest {
            unit,
            function: 43,
            table: Table::Holding,
            address: u16::from(object),
            count: 0,
            written: vec![],
            at: Instant::now(),
        });
        if !self.responding.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let Some(all) = lock(&self.identification).clone() else {
            return Err(ExceptionCode::IllegalFunction);
        };
        let last = match code {
            ReadCode::Basic => 0x02,
            ReadCode::Regular => 0x7F,
            ReadCode::Extended | ReadCode::Specific => 0xFF,
        };
        let objects: Vec<DeviceIdObject> = all
            .into_iter()
            .filter(|(i, _)| match code {
                ReadCode::Specific => *i == object,
                _ => (object..=last).contains(i),
            })
            .map(|(id, text)| DeviceIdObject {
                id,
                value: text.into_bytes().into(),
            })
            .collect();
        if code == ReadCode::Specific && objects.is_empty() {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(Some(Response::ReadDeviceIdentification(
            ReadDeviceIdentificationResponse {
                read_code: code,
                conformity_level: ConformityLevel::BasicIdentification,
                more_follows: false,
                next_object_id: 0,
                device_id_objects: objects,
            },
        )))
    }

    /// Handle one request as the device would.
    pub fn handle(&self, unit: u8, req: &Request<'_>) -> Result<Option<Response>, ExceptionCode> {
        if let Request::ReadDeviceIdentification(code, object) = req {
            return self.identify(unit, *code, *object);
        }
        let (function, table, address, count, written): (u8, Table, u16, u16, Vec<u16>) = match req
        {
            Request::ReadCoils(a, n) => (1, Table::Coil, *a, *n, vec![]),
            Request::ReadDiscreteInputs(a, n) => (2, Table::Discrete, *a, *n, vec![]),
            Request::ReadHoldingRegisters(a, n) => (3, Table::Holding, *a, *n, vec![]),
            Request::ReadInputRegisters(a, n) => (4, Table::Input, *a, *n, vec![]),
            Request::WriteSingleCoil(a, v) => (5, Table::Coil, *a, 1, vec![u16::from(*v)]),
            Request::WriteSingleRegister(a, v) => (6, Table::Holding, *a, 1, vec![*v]),
            Request::WriteMultipleCoils(a, v) => (
                15,
                Table::Coil,
                *a,
                v.len() as u16,
                v.iter().map(|b| u16::from(*b)).collect(),
            ),
            Request::WriteMultipleRegisters(a, v) => {
                (16, Table::Holding, *a, v.len() as u16, v.to_vec())
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        self.record(SimRequest {
            unit,
            function,
            table,
            address,
            count,
            written: written.clone(),
            at: Instant::now(),
        });
        if !self.responding.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut t = lock(&self.tables);
        let end = u32::from(address) + u32::from(count);
        if count == 0 || end > 65536 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        if function <= 4 && u64::from(count) > self.max_read.load(Ordering::SeqCst) {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if (u32::from(address)..end).any(|a| t.holes.contains(&(table, a as u16))) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let addrs = (0..count).map(|i| address.wrapping_add(i));
        let rsp = match function {
            1 => Response::ReadCoils(addrs.map(|a| *t.coils.get(&a).unwrap_or(&false)).collect()),
            2 => Response::ReadDiscreteInputs(
                addrs
                    .map(|a| *t.discrete.get(&a).unwrap_or(&false))
                    .collect(),
            ),
            3 => Response::ReadHoldingRegisters(
                addrs.map(|a| *t.holding.get(&a).unwrap_or(&0)).collect(),
            ),
            4 => Response::ReadInputRegisters(
                addrs.map(|a| *t.input.get(&a).unwrap_or(&0)).collect(),
            ),
            5 | 15 => {
                for (a, v) in addrs.zip(&written) {
                    t.coils.insert(a, *v != 0);
                }
                if function == 5 {
                    Response::WriteSingleCoil(address, written[0] != 0)
                } else {
                    Response::WriteMultipleCoils(address, count)
                }
            }
            _ => {
                for (a, v) in addrs.zip(&written) {
                    t.holding.insert(a, *v);
                }
                if function == 6 {
                    Response::WriteSingleRegister(address, written[0])
                } else {
                    Response::WriteMultipleRegisters(address, count)
                }
            }
        };
        Ok(Some(rsp))
    }
}

/// A simulated Modbus TCP server: unit id → device. Unknown unit ids get no reply, or the
/// exception a TCP gateway answers for them ([`SimServer::answer_absent_units`]).
#[derive(Clone, Default)]
pub struct SimServer {
    units: Arc<Mutex<HashMap<u8, Arc<SimDevice>>>>,
    /// The exception answered for unknown unit ids (0: none, silence).
    absent: Arc<AtomicU8>,
}

impl SimServer {
    /// An empty server.
    pub fn new() -> Self {
        SimServer::default()
    }

    /// Add (or replace) the device answering for `unit`; returns it.
    pub fn add(&self, unit: u8, device: Arc<SimDevice>) -> Arc<SimDevice> {
        lock(&self.units).insert(unit, device.clone());
        device
    }

    /// Answer requests for unit ids that have no device with exception `code`, as a
    /// Modbus TCP gateway does (0x0A gateway path unavailable, 0x0B gateway target device
    /// failed to respond); 0: stay silent (the default).
    pub fn answer_absent_units(&self, code: u8) {
        self.absent.store(code, Ordering::SeqCst);
    }

    /// Serve Modbus RTU on a serial stream whose devices run at `baud`: a request sent
    /// while the master's end of the line is set to another baud rate is noise to them
    /// and goes unanswered, as on a real RS-485 line. `serial` is the device end of a
    /// pseudo-terminal pair ([`pty_pair`]): termios requests on it read the settings the
    /// master set on its end. (Only the baud rate: Linux's pty driver clears the parity
    /// bit and forces 8 data bits, so a pty cannot tell parities apart.) The devices sit
    /// behind a relay that passes on only what was sent at their baud rate (on a second
    /// pty pair, to the tokio-modbus RTU server).
    #[cfg(unix)]
    pub async fn serve_rtu_at(
        self,
        serial: tokio_serial::SerialStream,
        baud: u32,
    ) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_serial::{SerialPort, SerialPortBuilderExt};
        let (devices, keeper, path) = pty_pair()?;
        let mut relay = tokio_serial::new(&path, 115_200)
            .open_native_async()
            .map_err(io::Error::other)?;
        let server = tokio::spawn(self.serve_rtu(devices));
        let mut line = serial;
        let hears = |line: &tokio_serial::SerialStream| line.baud_rate().ok() == Some(baud);
        let (mut from_line, mut from_devices) = ([0u8; 256], [0u8; 256]);
        let result = loop {
            tokio::select! {
                n = line.read(&mut from_line) => match n {
                    Ok(0) => break Ok(()),
                    Ok(n) if hears(&line) => {
                        if let Err(e) = relay.write_all(&from_line[..n]).await {
                            break Err(e);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(e),
                },
                n = relay.read(&mut from_devices) => match n {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = line.write_all(&from_devices[..n]).await {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                },
            }
        };
        server.abort();
        drop(keeper);
        result
    }

    /// The device for `unit`.
    pub fn device(&self, unit: u8) -> Option<Arc<SimDevice>> {
        lock(&self.units).get(&unit).cloned()
    }

    /// Serve Modbus TCP on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let server = Server::new(listener);
        let this = self;
        let on_connected = move |stream, addr| {
            let svc = this.clone();
            async move { accept_tcp_connection(stream, addr, |_| Ok(Some(svc.clone()))) }
        };
        server.serve(&on_connected, |_err| {}).await
    }

    /// Serve Modbus RTU on a serial stream (one end of a pseudo-terminal pair in the
    /// tests) until it fails or is closed.
    pub async fn serve_rtu(self, serial: tokio_serial::SerialStream) -> io::Result<()> {
        tokio_modbus::server::rtu::Server::new(serial)
            .serve_forever(self)
            .await
    }

    /// Serve as the devices behind a serial-to-Ethernet converter in transparent mode:
    /// the tokio-modbus RTU server on the device end of a [`converter`]'s serial line.
    #[cfg(unix)]
    pub async fn serve_rtu_over_tcp(self, listener: TcpListener) -> io::Result<()> {
        let (device_end, keeper) = converter(listener)?;
        let _keeper = keeper;
        self.serve_rtu(device_end).await
    }

    /// [`SimServer::serve_rtu_over_tcp`] on 127.0.0.1 and a free port, in the background;
    /// returns the port.
    #[cfg(unix)]
    pub async fn spawn_rtu_over_tcp(self) -> io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(self.serve_rtu_over_tcp(listener));
        Ok(port)
    }

    /// Bind 127.0.0.1 on a free port, serve in the background, return the port.
    pub async fn spawn_local(self) -> io::Result<u16> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(self.serve(listener));
        Ok(port)
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for SimServer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Fut;

    fn call(&self, req: Self::Request) -> Self::Future {
        let device = lock(&self.units).get(&req.slave).cloned();
        let delay = device
            .as_ref()
            .map_or(0, |d| d.delay_us.load(Ordering::SeqCst));
        let result = match device {
            Some(d) => d.handle(req.slave, &req.request),
            None => match self.absent.load(Ordering::SeqCst) {
                0 => Ok(None),
                code => Err(ExceptionCode::new(code)),
            },
        };
        if delay == 0 {
            Box::pin(std::future::ready(result))
        } else {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
                result
            })
        }
    }
}

/// A simulated serial-to-Ethernet converter in transparent mode: a pseudo-terminal pair
/// is the serial line, and every TCP connection on `listener` is bridged byte for byte to
/// it, in the background, as a converter does. One connection at a time: a new one
/// replaces the old (bytes in flight then reach whichever client is connected, as on a
/// real one). Returns the device end of the line, for any RTU slave, and the handle that
/// keeps the line open.
#[cfg(unix)]
pub fn converter(listener: TcpListener) -> io::Result<(tokio_serial::SerialStream, std::fs::File)> {
    use tokio_serial::SerialPortBuilderExt;
    let (device_end, keeper, path) = pty_pair()?;
    let mut line = tokio_serial::new(&path, 115_200)
        .open_native_async()
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let mut current: Option<tokio::net::TcpStream> = None;
        loop {
            let Some(mut tcp) = current.take() else {
                match listener.accept().await {
                    Ok((s, _)) => current = Some(s),
                    Err(_) => return,
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (mut from_client, mut to_client) = tcp.split();
            let (mut from_line, mut to_line) = tokio::io::split(&mut line);
            tokio::select! {
                next = listener.accept() => current = next.ok().map(|(s, _)| s),
                _ = tokio::io::copy(&mut from_client, &mut to_line) => {}
                _ = tokio::io::copy(&mut from_line, &mut to_client) => {}
            }
        }
    });
    Ok((device_end, keeper))
}

/// A pseudo-terminal pair for RTU tests: the master end (the device side, for
/// [`SimServer::serve_rtu`]), a plain handle that keeps the slave side open without locking
/// it (so the master never sees a hang-up before the gateway opens the port, and the
/// gateway's exclusive open still succeeds), and the slave's path for the gateway.
#[cfg(unix)]
pub fn pty_pair() -> io::Result<(tokio_serial::SerialStream, std::fs::File, String)> {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(io::Error::other)?;
    let path = slave
        .name()
        .ok_or_else(|| io::Error::other("pty slave has no path"))?;
    let keeper = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    drop(slave);
    Ok((master, keeper, path))
}

/// One exchange seen by a [`TimedRtuSlave`], timed on the device side of the line.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// Unit id asked.
    pub unit: u8,
    /// First byte of the request read.
    pub request_start: Instant,
    /// Reply written (the end of its last byte, with the modelled wire time).
    pub reply_end: Instant,
    /// Request length in bytes.
    pub request_len: usize,
    /// Reply length in bytes.
    pub reply_len: usize,
}

/// A minimal Modbus RTU slave that times the line from the device's side: it answers
/// FC03/FC04 reads for its unit ids (register `a` holds `a`, so every value is checkable),
/// records when each request started and each reply ended, and can model a real baud
/// rate by holding each reply back for the request's and the reply's time on the wire.
/// Used by the inter-frame gap test and the RTU benchmark; the tokio-modbus RTU server is
/// the simulator everywhere else.
#[derive(Clone, Debug, Default)]
pub struct TimedRtuSlave {
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl TimedRtuSlave {
    /// Serve `port` for `units`; with `char_time`, every reply is delayed by the wire time
    /// of request and reply at that time per character.
    pub fn spawn(
        port: tokio_serial::SerialStream,
        units: Vec<u8>,
        char_time: Option<std::time::Duration>,
    ) -> TimedRtuSlave {
        let slave = TimedRtuSlave::default();
        let log = slave.log.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut port = port;
            let mut buf: Vec<u8> = Vec::with_capacity(64);
            let mut chunk = [0u8; 64];
            let mut start = Instant::now();
            loop {
                let n = match port.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if buf.is_empty() {
                    start = Instant::now();
                }
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 8 {
                    let req: Vec<u8> = buf.drain(..8).collect();
                    let crc_ok = crate::modbus::rtu::crc16(&req[..6])
                        == u16::from_le_bytes([req[6], req[7]]);
                    if !crc_ok || !units.contains(&req[0]) || !matches!(req[1], 3 | 4) {
                        buf.clear();
                        continue;
                    }
                    let addr = u16::from_be_bytes([req[2], req[3]]);
                    let count = u16::from_be_bytes([req[4], req[5]]).min(125);
                    let mut reply = vec![req[0], req[1], (count * 2) as u8];
                    for a in addr..addr.saturating_add(count) {
                        reply.extend_from_slice(&a.to_be_bytes());
                    }
                    let crc = crate::modbus::rtu::crc16(&reply);
                    reply.extend_from_slice(&crc.to_le_bytes());
                    if let Some(ct) = char_time {
                        let wire = ct * (req.len() + reply.len()) as u32;
                        tokio::time::sleep_until((start + wire).into()).await;
                    }
                    // On a pty the bytes are there as soon as the write starts: stamp the
                    // reply's end before writing, so a task switch after the write cannot
                    // make the next gap look shorter than it was.
                    let reply_end = Instant::now();
                    if port.write_all(&reply).await.is_err() || port.flush().await.is_err() {
                        return;
                    }
                    lock(&log).push(Exchange {
                        unit: req[0],
                        request_start: start,
                        reply_end,
                        request_len: req.len(),
                        reply_len: reply.len(),
                    });
                    start = Instant::now();
                }
            }
        });
        slave
    }

    /// Every exchange so far.
    pub fn log(&self) -> Vec<Exchange> {
        lock(&self.log).clone()
    }

    /// Silence before each request after the first: from the end of the previous reply
    /// to the first byte of the request.
    pub fn gaps(&self) -> Vec<std::time::Duration> {
        let log = self.log();
        log.windows(2)
            .map(|w| w[1].request_start.saturating_duration_since(w[0].reply_end))
            .collect()
    }
}
