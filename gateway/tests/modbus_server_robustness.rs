//! The Modbus server against clients it must not serve or must not let hold it: `allow`
//! (a client on 127.0.0.2 against one on 127.0.0.1), `max_connections`, idle and frame
//! timeouts on tokio's paused clock, and thousands of malformed frames after which reads
//! still work and nothing panicked.

mod modbus_front;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use fieldlink::model::Allow;
use modbus_front::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

async fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((ip, 0)))?;
    sock.connect(to).await
}

/// The server closed the connection at once, without a reply: reset (the connect may
/// already report it), or the end of the stream. Sends a request first when it can.
async fn refused(conn: std::io::Result<TcpStream>) -> bool {
    match conn {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(mut c) => {
            let _ = c.write_all(&adu(1, UNIT, &pdu(3, 5, 1))).await;
            closed_without_reply(&mut c).await
        }
    }
}

/// A read that must be answered with the right values.
async fn read_works(c: &mut TcpStream) {
    let [a, b] = holding(5).to_be_bytes();
    assert_eq!(ask(c, 77, UNIT, &pdu(3, 5, 1)).await, vec![3, 2, a, b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_outside_allow_are_closed_at_once() {
    let mut only = settings();
    only.allow = Allow(vec!["127.0.0.1/32".parse().expect("net")]);
    let s = Server::start(only).await;
    assert!(refused(connect_from([127, 0, 0, 2], s.addr).await).await);
    assert_eq!(s.stats.refused_not_allowed.load(Relaxed), 1);
    let mut me = connect_from([127, 0, 0, 1], s.addr).await.expect("connect");
    read_works(&mut me).await;
    let doc = s.stats.json();
    assert_eq!(doc["last_refused"]["client"], "127.0.0.2");
    assert_eq!(doc["accepted"], 1);
    assert!(doc["clients"].get("127.0.0.2").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed() {
    let mut two = settings();
    two.max_connections = 2;
    let s = Server::start(two).await;
    let mut first = s.connect().await;
    read_works(&mut first).await;
    let mut second = s.connect().await;
    read_works(&mut second).await;
    assert!(refused(TcpStream::connect(s.addr).await).await);
    assert_eq!(s.stats.refused_full.load(Relaxed), 1);
    read_works(&mut first).await;
    read_works(&mut second).await;
    // The server closes one (a bad protocol id): then a new one is served.
    first.write_all(&[0, 0, 9, 9]).await.expect("send");
    assert!(closed_without_reply(&mut first).await);
    assert_eq!(s.stats.open.load(Relaxed), 1);
    let mut fourth = s.connect().await;
    read_works(&mut fourth).await;
    assert_eq!(s.stats.refused_full.load(Relaxed), 1);
}

/// Settings with `idle_timeout` 10 s and `frame_timeout` 2 s.
fn timeouts() -> fieldlink::model::ModbusServer {
    let mut t = settings();
    t.idle_timeout = Duration::from_secs(10);
    t.frame_timeout = Duration::from_secs(2);
    t
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_mid_frame_is_closed_after_frame_timeout() {
    let s = Server::start(timeouts()).await;
    let mut c = s.connect().await;
    let t0 = Instant::now();
    c.write_all(&[0, 1, 0]).await.expect("send");
    assert!(closed_without_reply(&mut c).await);
    assert_eq!(t0.elapsed().as_secs(), 2);
    assert_eq!(s.stats.closed_stalled.load(Relaxed), 1);

    // A frame that trickles in (a byte every 0.9 s) gets no more time than one that
    // stops: frame_timeout runs from its first byte.
    let mut c = s.connect().await;
    read_works(&mut c).await;
    let t0 = Instant::now();
    let frame = adu(9, UNIT, &pdu(3, 0, 1));
    for b in &frame[..3] {
        c.write_all(&[*b]).await.expect("send");
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert!(closed_without_reply(&mut c).await);
    assert_eq!(t0.elapsed().as_secs(), 2);
    assert_eq!(s.stats.closed_stalled.load(Relaxed), 2);
    assert_eq!(s.stats.closed_idle.load(Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_closed_after_idle_timeout() {
    let s = Server::start(timeouts()).await;
    let mut c = s.connect().await;
    let t0 = Instant::now();
    // A request at 9 s starts the wait anew.
    tokio::time::sleep(Duration::from_secs(9)).await;
    read_works(&mut c).await;
    assert!(closed_without_reply(&mut c).await);
    assert_eq!(t0.elapsed().as_secs(), 19);
    assert_eq!(s.stats.closed_idle.load(Relaxed), 1);
    assert_eq!(s.stats.closed_stalled.load(Relaxed), 0);
    assert_eq!(s.stats.open.load(Relaxed), 0);
}

/// xorshift64*: the same frames on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One piece of input: a random PDU well framed (3 in 10), a plausible request with
/// random fields (3 in 10), a bad protocol id, a bad length field, a truncated frame, or
/// garbage (1 in 10 each).
fn piece(r: &mut Rng, tid: u16) -> Vec<u8> {
    let unit = [UNIT, UNIT, OFFLINE, r.next() as u8][r.below(4) as usize];
    match [0, 0, 0, 1, 1, 1, 2, 3, 4, 5][r.below(10) as usize] {
        0 => {
            let n = 1 + r.below(253) as usize;
            adu(tid, unit, &r.bytes(n))
        }
        1 => {
            let fc = [1, 2, 3, 4, 5, 6, 15, 16][r.below(8) as usize];
            let mut p = pdu(fc, r.below(400) as u16, r.below(2100) as u16);
            if fc >= 15 {
                let n = r.below(260) as usize;
                p.push(n as u8);
                p.extend(r.bytes(n.min(240)));
            }
            if r.below(4) == 0 {
                p.truncate(r.below(p.len() as u64) as usize + 1);
            }
            adu(tid, unit, &p)
        }
        2 => {
            let mut a = adu(tid, unit, &pdu(3, 0, 1));
            a[2..4].copy_from_slice(&(1 + r.below(65535) as u16).to_be_bytes());
            a
        }
        3 => {
            let len = [0u16, 1, 255, 256, 65535, r.next() as u16 | 0x0100][r.below(6) as usize];
            let mut a = adu(tid, unit, &pdu(3, 0, 1));
            a[4..6].copy_from_slice(&len.to_be_bytes());
            a
        }
        4 => {
            let n = 1 + r.below(253) as usize;
            let a = adu(tid, unit, &r.bytes(n));
            a[..r.below(a.len() as u64) as usize].to_vec()
        }
        _ => {
            let n = 1 + r.below(600) as usize;
            r.bytes(n)
        }
    }
}

/// The transaction ids a server must answer for `input`, in order: each well-framed
/// frame's (MBAP: protocol id 0, length 2..=254), up to the first that is not.
fn answerable(input: &[u8]) -> Vec<u16> {
    let mut tids = Vec::new();
    let mut at = input;
    while at.len() >= 7 && at[2..4] == [0, 0] {
        let len = usize::from(u16::from_be_bytes([at[4], at[5]]));
        if !(2..=254).contains(&len) || at.len() < 6 + len {
            break;
        }
        tids.push(u16::from_be_bytes([at[0], at[1]]));
        at = &at[6 + len..];
    }
    tids
}

/// Send `input`, close our side, read every reply until the server closes; check that
/// exactly the answerable frames were answered, in order.
async fn fuzz_connection(addr: SocketAddr, input: Vec<u8>) {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let want = answerable(&input);
    let sent = c.write_all(&input).await.and(c.shutdown().await);
    let mut got = Vec::new();
    let mut reset = sent.is_err();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut h = [0u8; 7];
            match c.read_exact(&mut h).await {
                Ok(_) => {}
                Err(e) => {
                    reset |= e.kind() != std::io::ErrorKind::UnexpectedEof;
                    return;
                }
            }
            assert_eq!(h[2..4], [0, 0]);
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            assert!((3..=254).contains(&len), "reply length {len}");
            let mut p = vec![0; len - 1];
            if c.read_exact(&mut p).await.is_err() {
                reset = true;
                return;
            }
            got.push(u16::from_be_bytes([h[0], h[1]]));
        }
    })
    .await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    if reset {
        // Closed with our bytes unread: a reset may discard replies in flight.
        assert!(
            want.starts_with(&got),
            "{got:?} is not a prefix of {want:?}"
        );
    } else {
        assert_eq!(got, want, "input {input:02x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let panicked = Arc::new(AtomicBool::new(false));
    let hook = std::panic::take_hook();
    let flag = panicked.clone();
    std::panic::set_hook(Box::new(move |info| {
        flag.store(true, Relaxed);
        hook(info);
    }));
    let mut on = settings();
    on.writes = true;
    on.max_connections = 64;
    let s = Server::start(on).await;
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut frames = 0;
    let mut tid = 0u16;
    for _ in 0..80 {
        // 50 connections at once, each with 1..8 pieces.
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let mut input = Vec::new();
            for _ in 0..1 + r.below(8) {
                tid = tid.wrapping_add(1);
                input.extend(piece(&mut r, tid));
                frames += 1;
            }
            batch.spawn(fuzz_connection(s.addr, input));
        }
        while let Some(done) = batch.join_next().await {
            done.expect("a fuzz connection's checks");
        }
    }
    assert!(frames > 10_000, "{frames}");
    let mut c = s.connect().await;
    read_works(&mut c).await;
    assert!(!s.task.is_finished(), "serve ended");
    assert!(!panicked.load(Relaxed), "something panicked");
    let st = &s.stats;
    assert!(st.closed_malformed.load(Relaxed) > 1000);
    assert!(st.requests.load(Relaxed) > 4000);
    assert_eq!(st.open.load(Relaxed), 1);
    assert_eq!(st.refused_full.load(Relaxed), 0);
    eprintln!("{}", st.json());
}
