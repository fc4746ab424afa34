//! Upstream queue benchmark: replay throughput after an outage against a real mosquitto,
//! the queue's cost per message, and disk bytes written per message with the uplink up
//! and down. `cargo bench -p fieldlink-tests --bench upstream` (needs mosquitto).

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use fieldlink::mqtt::Spool;
use fieldlink_tests::{
    eventually, model_from,
    mosquitto::{Broker, BrokerOpts},
    Gateway,
};

const MESSAGES: usize = 50_000;

fn payload(i: usize) -> Vec<u8> {
    format!(
        "{{\"value\":{}.5,\"unit\":\"°C\",\"ts\":\"2026-11-22T10:00:00.000Z\"}}",
        i % 400
    )
    .into_bytes()
}

/// Queue cost per message and bytes written per message, uplink up (acknowledged within
/// the flush interval) or down (everything written).
fn spool_costs(up: bool) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), 256 << 20).expect("open");
    let t = Instant::now();
    for round in 0..(MESSAGES / 500) {
        for i in 0..500 {
            s.push(
                format!("casa/sensor{}/temperatura", i % 100),
                payload(round * 500 + i),
                1,
                true,
            );
            if up {
                if let Some(e) = s.take_next() {
                    s.ack(e.seq);
                }
            }
        }
        s.flush_blocking();
    }
    let ns = t.elapsed().as_nanos() as f64 / MESSAGES as f64;
    (ns, s.counters.disk_bytes_written as f64 / MESSAGES as f64)
}

fn main() {
    println!("# upstream queue benchmark ({MESSAGES} messages of ~70 bytes on ~25-byte topics)");
    for (name, up) in [("uplink up", true), ("uplink down", false)] {
        let mut runs: Vec<(f64, f64)> = (0..3).map(|_| spool_costs(up)).collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ns, bytes) = runs[1];
        println!("queue, {name}: {ns:.0} ns/message (median of 3, fsync included), {bytes:.1} disk bytes/message");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(replay());
}

async fn replay() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        println!("replay: skipped, mosquitto is not installed");
        return;
    };
    for rate in [0u32, 1000] {
        let mut results = Vec::new();
        for _ in 0..3 {
            let state = tempfile::tempdir().expect("tempdir");
            let qdir = state.path().join("upstream-queue");
            {
                let mut s = Spool::open(&qdir, 256 << 20).expect("open");
                for i in 0..MESSAGES {
                    s.push(
                        format!("casa/sensor{}/temperatura", i % 100),
                        payload(i),
                        1,
                        true,
                    );
                }
                s.flush_blocking();
            }
            let gw_yaml = format!(
                "id: bench\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n  embedded:\n    enabled: false\n  upstream:\n    url: mqtt://127.0.0.1:{}\n    queue:\n      replay_rate: {rate}\n",
                state.path().display(),
                broker.port
            );
            let mapping = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 1, timeout: 100ms }\ndevices:\n  - { id: d, bus: b, poll_interval: 1h, points: [ { topic: x, table: holding, address: 0 } ] }\n";
            let t = Instant::now();
            let gw = Gateway::start(model_from(&gw_yaml, mapping)).await;
            let n = if rate == 0 { MESSAGES as u64 } else { 5000 };
            let target = MESSAGES as u64 - n;
            let drained = eventually(Duration::from_secs(120), || {
                gw.stats.upstream.connected.load(Relaxed)
                    && gw.stats.upstream.queue_depth.load(Relaxed) <= target + 2
            })
            .await;
            let secs = t.elapsed().as_secs_f64();
            gw.stop().await;
            assert!(drained, "replay did not finish");
            results.push(n as f64 / secs);
        }
        results.sort_by(f64::total_cmp);
        let label = if rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{rate}/s")
        };
        println!("replay to mosquitto, replay_rate {label}: {:.0} messages/s (median of 3; connect included)", results[1]);
    }
}
