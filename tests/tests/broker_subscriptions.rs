//! What subscriptions cost the `fieldlink` process, and that the bound keeps it small:
//! one client subscribes to as many filters as it can (Home Assistant-like topics, 500
//! per SUBSCRIBE), the resident set (`VmRSS` of the process) is read before, with them
//! and after the client left.
//!
//! `subscriptions_at_the_default_bound_cost_little_and_are_given_back` runs with every
//! test; `subscription_memory_unbounded` (ignored: run it with `--ignored --nocapture`)
//! measures the cost per subscription for the README without a practical bound.

use std::{path::Path, time::Duration};

use fieldlink_drivers::sim::{SimDevice, SimServer};
use fieldlink_tests::{mosquitto, process::Fieldlink, raw};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A packet from the broker: its first byte and its body.
async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let head = s.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// Connect as `id` (MQTT 3.1.1, clean session) and subscribe to `n` distinct filters,
/// 500 per SUBSCRIBE; the connection and how many were granted and refused.
async fn subscribe_many(port: u16, id: &str, n: usize) -> (TcpStream, usize, usize) {
    let mut s = raw::open(port).await.expect("connect");
    assert_eq!(
        raw::handshake(&mut s, &raw::connect(id, 4, None)).await,
        Some(0)
    );
    let (mut granted, mut refused) = (0, 0);
    for (k, start) in (0..n).step_by(500).enumerate() {
        let pid = (k % 65_535 + 1) as u16;
        let mut body = pid.to_be_bytes().to_vec();
        for i in start..(start + 500).min(n) {
            let f = format!("casa/comodo{i:06}/temperatura");
            body.extend_from_slice(&(f.len() as u16).to_be_bytes());
            body.extend_from_slice(f.as_bytes());
            body.push(1);
        }
        let mut pkt = vec![0x82];
        raw::varint(body.len(), &mut pkt);
        pkt.extend_from_slice(&body);
        s.write_all(&pkt).await.expect("SUBSCRIBE");
        loop {
            let (head, body) = read_packet(&mut s).await.expect("SUBACK");
            if head == 0x90 {
                let codes = body.get(2..).unwrap_or_default();
                granted += codes.iter().filter(|c| **c < 0x80).count();
                refused += codes.iter().filter(|c| **c >= 0x80).count();
                break;
            }
        }
    }
    (s, granted, refused)
}

/// `fieldlink run` with an anonymous loopback broker; `embedded` goes under
/// `mqtt.embedded`.
async fn gateway(dir: &Path, embedded: &str) -> (Fieldlink, u16) {
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    let sim = server.spawn_local().await.expect("sim");
    std::fs::write(
        dir.join("mapping.yaml"),
        format!(
            "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim} }}\n\
             devices:\n  - id: d\n    bus: b\n    points:\n\
             \x20     - {{ topic: casa/temp, table: holding, address: 0 }}\n"
        ),
    )
    .expect("mapping");
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "id: t\nmappings: mapping.yaml\nstate_dir: {}\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n    sys_interval: 1s\n{embedded}",
            dir.display()
        ),
    )
    .expect("config");
    let gw = Fieldlink::run(&config);
    let port = gw.broker_port(Duration::from_secs(60)).await;
    (gw, port)
}

/// RSS of `pid` once it stopped falling (read every 200 ms, not falling for 2.4 s: two
/// of the broker's 1 s heap-trim checks), KiB.
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    let mut stable = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(pid);
        stable = if now + 64 >= last { stable + 1 } else { 0 };
        last = now;
        if stable >= 12 {
            break;
        }
    }
    last
}

/// Whether, within 30 s, `$SYS/broker/subscriptions/count` (refreshed every second)
/// says no client holds a subscription but the one that asks.
async fn subscriptions_gone(port: u16) -> bool {
    let Some(sub) = mosquitto::tool("mosquitto_sub") else {
        return true;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let out = std::process::Command::new(&sub)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-t",
                "$SYS/broker/subscriptions/count",
                "-C",
                "1",
                "-W",
                "5",
            ])
            .output()
            .expect("mosquitto_sub");
        let n: Option<u64> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        if n.is_some_and(|n| n <= 1) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Subscribe `n` filters as one client, leave, and report (start, with them, after,
/// granted, refused), RSS in KiB.
async fn measure(gw: &Fieldlink, port: u16, n: usize) -> (u64, u64, u64, usize, usize) {
    let pid = gw.pid();
    // The broker's own start-up allocations settle first.
    let (warm, _, _) = subscribe_many(port, "warm-up", 10).await;
    drop(warm);
    let start = settled_rss(pid).await;
    let (mut s, granted, refused) = subscribe_many(port, "hoarder", n).await;
    let with = rss_kib(pid);
    let _ = s.write_all(&[0xE0, 0]).await;
    drop(s);
    let mark = gw.log_len();
    gw.expect_log(mark, "Client disconnected.", Duration::from_secs(10))
        .await;
    assert!(
        subscriptions_gone(port).await,
        "the client's subscriptions are released"
    );
    let after = settled_rss(pid).await;
    (start, with, after, granted, refused)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_at_the_default_bound_cost_little_and_are_given_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, port) = gateway(dir.path(), "").await;
    let (start, with, after, granted, refused) = measure(&gw, port, 100_000).await;
    eprintln!(
        "default bound: RSS {:.1} MiB at start, {:.1} MiB with {granted} subscriptions ({refused} refused), {:.1} MiB after the client left",
        mib(start),
        mib(with),
        mib(after)
    );
    assert_eq!((granted, refused), (10_000, 90_000), "max_subscriptions");
    assert!(
        after <= start + 5 * 1024,
        "RSS returns to within 5 MiB of the start: {:.1} → {:.1} MiB",
        mib(start),
        mib(after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for the README: --ignored --nocapture"]
async fn subscription_memory_unbounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, port) = gateway(
        dir.path(),
        "    max_subscriptions: 1000000\n    max_subscriptions_total: 1000000\n",
    )
    .await;
    for n in [10_000, 100_000] {
        let (start, with, after, granted, _) = measure(&gw, port, n).await;
        assert_eq!(granted, n);
        let per = (with.saturating_sub(start)) as f64 * 1024.0 / n as f64;
        eprintln!(
            "{n} subscriptions: RSS {:.1} MiB at start, {:.1} MiB with them ({per:.0} bytes each), {:.1} MiB after the client left",
            mib(start),
            mib(with),
            mib(after)
        );
    }
}
