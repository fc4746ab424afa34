//! Modbus RTU benchmark on a pseudo-terminal: transactions per second, the gateway's
//! added latency per transaction, and at a modelled 9600 baud the share of bus time the
//! gateway leaves idle beyond the required 3.5-character gap.
//!
//! Run: `cargo bench -p fieldlink --bench rtu`
//!
//! The gateway (`fieldlink::run_with`, embedded broker included) polls three unit ids as
//! fast as it may (`poll_interval: 1ms`) through the real RTU master. On the other end of
//! the pty a timed RTU slave (`fieldlink_drivers::sim::TimedRtuSlave`) answers at once
//! and stamps, on the device side, the first byte of every request and the end of every
//! reply. With a modelled baud rate the slave holds each reply back for the time the
//! request and the reply would take on the wire.
//!
//! - "added latency" = silence between the end of a reply and the next request, minus
//!   the required gap: what the gateway itself costs per transaction (decode, publish
//!   hand-off, scheduling, timer granularity, pty hops).
//! - "idle beyond the gap" = that excess summed, over the whole bus time.
//!
//! The last scenario runs the same master as `modbus_rtu_over_tcp` through a simulated
//! serial-to-Ethernet converter (`fieldlink_drivers::sim::converter`: TCP bridged to the
//! pty): the gateway keeps no gap there (a converter keeps the serial line's), so its
//! "added latency" is everything between a reply and the next request, converter hop
//! included.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fieldlink::{config, shutdown};
use fieldlink_drivers::sim::{converter, pty_pair, Exchange, TimedRtuSlave};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Window {
    tps: f64,
    added_p50: Duration,
    added_p99: Duration,
    idle_beyond_gap: f64,
}

fn window(log: &[Exchange], from: Instant, to: Instant, required: Duration) -> Window {
    let ex: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.request_start >= from && e.request_start < to)
        .collect();
    let mut added: Vec<Duration> = ex
        .windows(2)
        .map(|w| {
            w[1].request_start
                .saturating_duration_since(w[0].reply_end)
                .saturating_sub(required)
        })
        .collect();
    added.sort();
    let span = ex
        .last()
        .zip(ex.first())
        .map_or(Duration::ZERO, |(l, f)| l.request_start - f.request_start);
    let idle: Duration = added.iter().sum();
    Window {
        tps: ex.len().saturating_sub(1) as f64 / span.as_secs_f64().max(1e-9),
        added_p50: pct(&added, 0.5),
        added_p99: pct(&added, 0.99),
        idle_beyond_gap: idle.as_secs_f64() / span.as_secs_f64().max(1e-9),
    }
}

async fn scenario(name: &str, baud: u32, modelled: bool, over_tcp: bool) {
    let bits = 10u32; // 8N1
    let char_time = Duration::from_secs_f64(f64::from(bits) / f64::from(baud));
    let (master, _keeper, bus) = if over_tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (line, keeper) = converter(listener).expect("converter");
        let bus = format!("kind: modbus_rtu_over_tcp\n    host: 127.0.0.1\n    port: {port}");
        (line, keeper, bus)
    } else {
        let (master, keeper, path) = pty_pair().expect("pty");
        let bus = format!("kind: modbus_rtu\n    path: {path}\n    baud: {baud}");
        (master, keeper, bus)
    };
    let required = if over_tcp {
        Duration::ZERO
    } else if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        char_time.mul_f64(3.5)
    };
    let slave = TimedRtuSlave::spawn(master, vec![1, 2, 3], modelled.then_some(char_time));
    let mut mapping = format!("buses:\n  - id: rs485\n    {bus}\n    timeout: 500ms\ndevices:\n");
    for u in 1..=3 {
        mapping.push_str(&format!(
            "  - id: d{u}\n    bus: rs485\n    unit: {u}\n    poll_interval: 1ms\n    points:\n      - {{ topic: bench/d{u}, table: holding, address: {u}, publish: every_poll }}\n"
        ));
    }
    // Port 0: nothing here connects to the broker.
    let gateway =
        "id: bench\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n"
            .to_string();
    let model = match config::check_sources(Path::new("gateway.yaml"), &gateway, |_, _| {
        vec![(PathBuf::from("mapping.yaml"), mapping.clone())]
    }) {
        Ok(c) => c.model,
        Err(d) => panic!("{d:?}"),
    };
    let (trigger, sd) = shutdown::channel();
    let run = tokio::spawn(fieldlink::run(model, sd));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut tps = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let w = window(&slave.log(), from, Instant::now(), required);
        tps.push(w.tps);
        p50.push(w.added_p50.as_secs_f64() * 1000.0);
        p99.push(w.added_p99.as_secs_f64() * 1000.0);
        idle.push(w.idle_beyond_gap * 100.0);
    }
    trigger.trigger();
    let _ = run.await;
    let wire = if modelled {
        char_time * (8 + 7)
    } else {
        Duration::ZERO
    };
    let ideal = 1.0 / (wire + required).as_secs_f64();
    println!(
        "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.3} ms | {:.1} % |",
        median(&mut tps),
        ideal,
        median(&mut p50),
        median(&mut p99),
        required.as_secs_f64() * 1000.0,
        median(&mut idle),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("| scenario | transactions/s | ideal/s | added latency p50 | p99 | required gap | bus idle beyond the gap |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    rt.block_on(async {
        scenario(
            "pty, 115200 baud configured (no modelled wire time)",
            115_200,
            false,
            false,
        )
        .await;
        scenario(
            "pty, 9600 baud configured (no modelled wire time)",
            9_600,
            false,
            false,
        )
        .await;
        scenario(
            "modelled 9600 baud 8N1 (request 8 B, reply 7 B)",
            9_600,
            true,
            false,
        )
        .await;
        scenario(
            "RTU over TCP through a simulated converter (no modelled wire time)",
            115_200,
            false,
            true,
        )
        .await;
    });
}
