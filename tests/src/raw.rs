//! Raw MQTT bytes for tests that act as a misbehaving client: CONNECT packets built by
//! hand, CONNACK read back, resets instead of a clean close.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The remaining-length varint of MQTT.
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// A CONNECT for protocol `level` (3 = MQTT 3.1, 4 = 3.1.1, 5), clean session,
/// keepalive 30 s, with an optional user name and password.
pub fn connect(client_id: &str, level: u8, login: Option<(&str, &str)>) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    let mut flags = 0b0000_0010;
    if login.is_some() {
        flags |= 0b1100_0000;
    }
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 30]);
    if level == 5 {
        body.push(0); // no properties
    }
    let mut field = |f: &[u8]| {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
    };
    field(client_id.as_bytes());
    if let Some((u, p)) = login {
        field(u.as_bytes());
        field(p.as_bytes());
    }
    let mut pkt = vec![0x10];
    varint(body.len(), &mut pkt);
    pkt.extend_from_slice(&body);
    pkt
}

/// Open a connection to the broker on 127.0.0.1:`port`.
pub async fn open(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).await
}

/// Send a CONNECT and return the CONNACK's return (reason) code, or `None` when the
/// broker closed the connection or sent no CONNACK within 5 s.
pub async fn handshake(s: &mut TcpStream, pkt: &[u8]) -> Option<u8> {
    s.write_all(pkt).await.ok()?;
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    if head[0] != 0x20 {
        return None;
    }
    let mut rest = vec![0u8; usize::from(head[1])];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut rest))
        .await
        .ok()?
        .ok()?;
    rest.get(1).copied()
}

/// Close with a TCP reset (SO_LINGER 0), as a client that crashes or loses Wi-Fi.
pub fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Connect as `client_id` and report the CONNACK code (0 = accepted).
pub async fn try_login(
    port: u16,
    client_id: &str,
    level: u8,
    login: Option<(&str, &str)>,
) -> Option<u8> {
    let mut s = open(port).await.ok()?;
    let rc = handshake(&mut s, &connect(client_id, level, login)).await;
    let _ = s.write_all(&[0xE0, 0]).await;
    rc
}

/// Resident memory of this process in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
