//! For the Modbus server's network-side tests: a backend over fixed tables (the seam the
//! network side is built against, standing in for the gateway's snapshot), the server
//! started on 127.0.0.1 port 0, and raw MBAP helpers.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink::{
    modbus_server::{serve, Backend, Exception, ReadData, ServerStats, Table, Write, WriteFuture},
    model::{Allow, ModbusServer},
    shutdown::{self, ShutdownTrigger},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinHandle,
};

/// The unit the tables are served at.
pub const UNIT: u8 = 1;
/// A unit whose device is offline: 0x0B.
pub const OFFLINE: u8 = 2;
/// Registers 0..REGS and bits 0..BITS are served; past them, exception 02.
pub const REGS: u16 = 300;
pub const BITS: u16 = 2500;
/// A holding register whose writes the point's checks refuse: exception 03.
pub const REFUSED: u16 = 99;
/// A holding register whose write waits for [`Tables::release`].
pub const SLOW: u16 = 0xFE00;

pub fn holding(a: u16) -> u16 {
    0x1000u16.wrapping_add(a.wrapping_mul(7))
}
pub fn input(a: u16) -> u16 {
    0xA000 ^ a.rotate_left(3)
}
pub fn coil(a: u16) -> bool {
    a.is_multiple_of(3)
}
pub fn discrete(a: u16) -> bool {
    a % 5 == 1 || a.is_multiple_of(7)
}

/// The expected data of a read.
pub fn expected(table: Table, start: u16, count: u16) -> ReadData {
    let r = start..start + count;
    match table {
        Table::Holding => ReadData::Registers(r.map(holding).collect()),
        Table::Input => ReadData::Registers(r.map(input).collect()),
        Table::Coil => ReadData::Bits(r.map(coil).collect()),
        Table::Discrete => ReadData::Bits(r.map(discrete).collect()),
    }
}

/// Fixed tables at [`UNIT`]; every write is recorded.
#[derive(Default)]
pub struct Tables {
    pub writes: Mutex<Vec<(u8, Write, SocketAddr)>>,
    /// Notified when a write to [`SLOW`] has arrived.
    pub slow_arrived: Arc<Notify>,
    /// Lets a write to [`SLOW`] complete.
    pub release: Arc<Notify>,
}

impl Backend for Tables {
    fn read(&self, unit: u8, table: Table, start: u16, count: u16) -> Result<ReadData, Exception> {
        match unit {
            UNIT => {}
            OFFLINE => return Err(Exception::GATEWAY_TARGET_FAILED),
            _ => return Err(Exception::GATEWAY_PATH_UNAVAILABLE),
        }
        let end = if table.is_bits() { BITS } else { REGS };
        if u32::from(start) + u32::from(count) > u32::from(end) {
            return Err(Exception::ILLEGAL_DATA_ADDRESS);
        }
        Ok(expected(table, start, count))
    }

    fn write(&self, unit: u8, write: Write, client: SocketAddr) -> WriteFuture {
        let start = write.start;
        let holding = write.table == Table::Holding;
        if let Ok(mut w) = self.writes.lock() {
            w.push((unit, write, client));
        }
        let (arrived, release) = (self.slow_arrived.clone(), self.release.clone());
        Box::pin(async move {
            match (unit, holding, start) {
                (UNIT, true, REFUSED) => Err(Exception::ILLEGAL_DATA_VALUE),
                (UNIT, true, SLOW) => {
                    arrived.notify_one();
                    release.notified().await;
                    Ok(())
                }
                (UNIT, _, _) => Ok(()),
                _ => Err(Exception::GATEWAY_PATH_UNAVAILABLE),
            }
        })
    }
}

/// Settings for a test: loopback, 8 connections, no writes, long timeouts.
pub fn settings() -> ModbusServer {
    ModbusServer {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        allow: Allow::loopback(),
        max_age: None,
        max_connections: 8,
        writes: false,
        units: vec![(UNIT, "d".into())],
        idle_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(10),
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    pub tables: Arc<Tables>,
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<()>,
}

impl Server {
    pub async fn start(settings: ModbusServer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(ServerStats::new());
        let tables = Arc::new(Tables::default());
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(settings),
            tables.clone(),
            stats.clone(),
            shutdown,
        ));
        Server {
            addr,
            stats,
            tables,
            trigger,
            task,
        }
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }
}

/// One ADU.
pub fn adu(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = tid.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

/// A request PDU of two 16-bit fields (FC01..06).
pub fn pdu(fc: u8, a: u16, b: u16) -> Vec<u8> {
    let mut v = vec![fc];
    v.extend_from_slice(&a.to_be_bytes());
    v.extend_from_slice(&b.to_be_bytes());
    v
}

/// Read one reply ADU: (transaction id, unit, PDU); `None` when the server closed.
pub async fn reply(s: &mut TcpStream) -> Option<(u16, u8, Vec<u8>)> {
    let mut h = [0u8; 7];
    s.read_exact(&mut h).await.ok()?;
    assert_eq!(h[2..4], [0, 0], "protocol id of a reply");
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    assert!((2..=254).contains(&len), "reply length {len}");
    let mut pdu = vec![0; len - 1];
    s.read_exact(&mut pdu).await.ok()?;
    Some((u16::from_be_bytes([h[0], h[1]]), h[6], pdu))
}

/// Send one request and read its reply PDU (checking the echoed transaction and unit).
pub async fn ask(s: &mut TcpStream, tid: u16, unit: u8, req: &[u8]) -> Vec<u8> {
    s.write_all(&adu(tid, unit, req)).await.expect("send");
    let (t, u, pdu) = reply(s).await.expect("a reply");
    assert_eq!((t, u), (tid, unit), "transaction and unit echoed");
    pdu
}

/// The server closed `s` without a reply: end of stream or reset.
pub async fn closed_without_reply(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b).await, Ok(0) | Err(_))
}

/// Find mbpoll, or decide the test cannot run: `None` skips (off CI), CI panics.
pub fn mbpoll() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mbpoll"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "mbpoll is not installed, and CI is set: the Modbus server's interop tests must \
             run (apt-get install -y mbpoll)"
        );
        eprintln!("SKIPPED: mbpoll is not installed (apt-get install -y mbpoll)");
    }
    found
}
