//! MQTT packets by hand for the tests of the broker's connection front (issue #21):
//! CONNECT with a Will and a login, PUBLISH with a Topic Alias (MQTT 5), packets read
//! back, a connection from a chosen loopback address, and the limits a CONNACK
//! announces. Mosquitto's clients refuse to send most of what these tests need.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::raw;

/// A CONNECT: protocol `level`, client id, clean session, a retained Will (topic), a
/// login, and (MQTT 5) no properties.
pub fn connect(
    level: u8,
    id: &[u8],
    clean: bool,
    will: Option<&[u8]>,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04 | 0x20;
    }
    if login.is_some() {
        flags |= 0xC0;
    }
    let mut b = Vec::new();
    field(&mut b, b"MQTT");
    b.extend_from_slice(&[level, flags, 0, 30]);
    if level == 5 {
        b.push(0);
    }
    field(&mut b, id);
    if let Some(t) = will {
        if level == 5 {
            b.push(0);
        }
        field(&mut b, t);
        field(&mut b, b"gone");
    }
    if let Some((u, p)) = login {
        field(&mut b, u.as_bytes());
        field(&mut b, p.as_bytes());
    }
    packet(0x10, &b)
}

/// Append a two-byte length and `f`.
fn field(out: &mut Vec<u8>, f: &[u8]) {
    out.extend_from_slice(&(f.len() as u16).to_be_bytes());
    out.extend_from_slice(f);
}

/// A packet: first byte, remaining length, `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    raw::varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

/// A PUBLISH (QoS 0, or QoS 1 with packet id 1); for MQTT 5 with an optional Topic Alias.
pub fn publish(
    v5: bool,
    topic: &[u8],
    payload: &[u8],
    retain: bool,
    qos1: bool,
    alias: Option<u16>,
) -> Vec<u8> {
    let mut b = Vec::new();
    field(&mut b, topic);
    if qos1 {
        b.extend_from_slice(&[0, 1]);
    }
    if v5 {
        match alias {
            Some(a) => {
                b.push(3);
                b.push(0x23);
                b.extend_from_slice(&a.to_be_bytes());
            }
            None => b.push(0),
        }
    }
    b.extend_from_slice(payload);
    let first = 0x30 | u8::from(retain) | if qos1 { 0x02 } else { 0 };
    packet(first, &b)
}

/// A packet as read: first byte and body.
pub type Packet = (u8, Vec<u8>);

/// The next packet (first byte, body), `None` when the connection ended or nothing came
/// within `within`.
pub async fn next_packet<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Option<Packet> {
    tokio::time::timeout(within, async {
        let first = s.read_u8().await.ok()?;
        let mut len = 0usize;
        for i in 0..4 {
            let b = s.read_u8().await.ok()?;
            len |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.ok()?;
        Some((first, body))
    })
    .await
    .ok()
    .flatten()
}

/// Read until the connection ends: the packets the broker sent before it closed, or
/// `None` when it is still open after `within`.
pub async fn closed_within<S: AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<Vec<Packet>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut at = &buf[..];
    while let Some((p, rest)) = split_packet(at) {
        seen.push(p);
        at = rest;
    }
    Some(seen)
}

/// The first whole packet in `b` and what follows it.
fn split_packet(b: &[u8]) -> Option<(Packet, &[u8])> {
    let first = *b.first()?;
    let (mut len, mut i) = (0usize, 1);
    loop {
        let x = *b.get(i)?;
        len |= usize::from(x & 0x7F) << (7 * (i - 1));
        i += 1;
        if x & 0x80 == 0 {
            break;
        }
    }
    let body = b.get(i..i + len)?;
    Some(((first, body.to_vec()), &b[i + len..]))
}

/// A connection from `source` (an address in 127.0.0.0/8) to the broker's `port`
/// (`None`: refused at once).
pub async fn open_from(source: [u8; 4], port: u16) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((source, 0))).expect("bind source");
    s.connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .ok()
}

/// How many of `socks` are still open (nothing closed them within a moment).
pub async fn still_open<S: AsyncRead + Unpin>(socks: &mut [S]) -> usize {
    let mut n = 0;
    for s in socks {
        if closed_within(s, Duration::from_millis(20)).await.is_none() {
            n += 1;
        }
    }
    n
}

/// Log in on a new connection; the CONNACK (first byte, body).
pub async fn login(port: u16, hello: &[u8]) -> (TcpStream, Option<Packet>) {
    let mut s = raw::open(port).await.expect("connect");
    s.write_all(hello).await.expect("send CONNECT");
    let ack = next_packet(&mut s, Duration::from_secs(5)).await;
    (s, ack)
}

/// MQTT 5 properties of a CONNACK body: (Topic Alias Maximum, Maximum Packet Size).
pub fn connack_limits(body: &[u8]) -> (Option<u16>, Option<u32>) {
    let (mut alias, mut size) = (None, None);
    let Some(&len) = body.get(2) else {
        return (None, None);
    };
    let props = &body[3..3 + usize::from(len)];
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        let n = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x1A | 0x1C | 0x1F => {
                2 + usize::from(u16::from_be_bytes([props[i], props[i + 1]]))
            }
            other => panic!("unexpected CONNACK property {other:#x}"),
        };
        match id {
            0x22 => alias = Some(u16::from_be_bytes([props[i], props[i + 1]])),
            0x27 => {
                size = Some(u32::from_be_bytes([
                    props[i],
                    props[i + 1],
                    props[i + 2],
                    props[i + 3],
                ]))
            }
            _ => {}
        }
        i += n;
    }
    (alias, size)
}
