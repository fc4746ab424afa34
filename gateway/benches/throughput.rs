//! End-to-end throughput benchmark: the real `fieldlink run` binary (gateway + embedded
//! broker in one process) polls in-process tokio-modbus simulators and publishes to its
//! embedded broker, where a subscriber in this process counts every message.
//!
//! Run: `cargo bench -p fieldlink --bench throughput`
//!
//! Reported for the gateway process only (the simulators and the subscriber live in the
//! benchmark process): points/s received by the subscriber, CPU seconds per 10 000 points
//! and share of one core (from /proc/<pid>/stat), and peak RSS (VmHWM).

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[path = "../tests/support/mod.rs"]
mod support;

const DEVICES: usize = 100;
const POINTS: usize = 100;

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux we target.
    100.0
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / clock_ticks()
}

/// A `VmXXX:` line of /proc/<pid>/status in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Scenario {
    name: &'static str,
    poll: &'static str,
}

struct Result {
    points_per_s: f64,
    core_share: f64,
    cpu_per_10k: f64,
    peak_rss: f64,
    rss: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run(s: &Scenario, ports: &[u16], windows: usize, window: Duration) -> Result {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mapping = String::from("buses:\n");
    for (i, p) in ports.iter().enumerate() {
        writeln!(
            mapping,
            "  - {{ id: b{i}, kind: modbus_tcp, host: 127.0.0.1, port: {p} }}"
        )
        .expect("fmt");
    }
    mapping.push_str("devices:\n");
    // BENCH_RETAIN=false measures the cost of the broker's retained store.
    let retain = std::env::var("BENCH_RETAIN").unwrap_or_else(|_| "true".into());
    for i in 0..ports.len() {
        writeln!(
            mapping,
            "  - id: d{i}\n    bus: b{i}\n    poll_interval: {}\n    points:",
            s.poll
        )
        .expect("fmt");
        // 60 u16 registers then 40 f32 (CDAB): 140 registers, 2 reads per poll.
        for j in 0..POINTS {
            if j < 60 {
                writeln!(mapping, "      - {{ topic: bench/d{i}/p{j}, table: holding, address: {j}, publish: every_poll, retain: {retain} }}").expect("fmt");
            } else {
                let a = 60 + 2 * (j - 60);
                writeln!(mapping, "      - {{ topic: bench/d{i}/p{j}, table: holding, address: {a}, type: f32, word_order: CDAB, precision: 2, publish: every_poll, retain: {retain} }}").expect("fmt");
            }
        }
    }
    std::fs::write(dir.path().join("mapping.yaml"), mapping).expect("write mapping");
    // BENCH_HA=0: without Home Assistant discovery (on by default, as for a user: every
    // point is also an entity, 10 000 retained configs).
    let ha = if std::env::var("BENCH_HA").is_ok_and(|v| v == "0") {
        "homeassistant: { enabled: false }\n"
    } else {
        ""
    };
    std::fs::write(
        dir.path().join("gateway.yaml"),
        // The state (the broker's store) in the benchmark's own directory; BENCH_EMBEDDED
        // adds lines under `mqtt.embedded` (e.g. "    persistence: false\n").
        format!(
            "id: bench\nmappings: mapping.yaml\nstate_dir: {}\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n{}diagnostics_interval: 10s\n{ha}",
            dir.path().display(),
            std::env::var("BENCH_EMBEDDED").unwrap_or_default()
        ),
    )
    .expect("write gateway");
    // BENCH_WRAP="heaptrack" (or "perf record -g -o FILE", ...) runs the gateway under a
    // profiler; the figures then include the profiler's overhead.
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut argv: Vec<String> = wrap.split_whitespace().map(String::from).collect();
    argv.push(env!("CARGO_BIN_EXE_fieldlink").into());
    let mut child: Child = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["run", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        // The broker's INFO line tells the port the system picked.
        .env("RUST_LOG", "warn,fieldlink::broker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldlink");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let mqtt_port = support::broker_addr(stderr, Duration::from_secs(60)).port();

    let count = Arc::new(AtomicU64::new(0));
    let mut o = MqttOptions::new("bench-sub", "127.0.0.1", mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 64);
    let c2 = count.clone();
    let sub = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe("bench/#", QoS::AtMostOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    c2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    // Warm up: every device connected and polling.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut pps, mut share, mut per10k) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..windows {
        let (c0, cpu0, t0) = (
            count.load(Ordering::Relaxed),
            cpu_seconds(pid),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (c1, cpu1, dt) = (
            count.load(Ordering::Relaxed),
            cpu_seconds(pid),
            t0.elapsed().as_secs_f64(),
        );
        let points = (c1 - c0) as f64;
        let cpu = cpu1 - cpu0;
        pps.push(points / dt);
        share.push(cpu / dt);
        per10k.push(if points > 0.0 {
            cpu / (points / 10_000.0)
        } else {
            f64::NAN
        });
    }
    let r = Result {
        points_per_s: median(pps),
        core_share: median(share),
        cpu_per_10k: median(per10k),
        peak_rss: status_mib(pid, "VmHWM:"),
        rss: status_mib(pid, "VmRSS:"),
    };
    sub.abort();
    // SIGTERM to the gateway itself (not a wrapper), so a profiler writes its file.
    let _ = Command::new("pkill")
        .args(["-TERM", "-f"])
        .arg(format!(
            "^{} run --config {}",
            env!("CARGO_BIN_EXE_fieldlink"),
            dir.path().join("gateway.yaml").display()
        ))
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    r
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // One simulated Modbus TCP device per endpoint, like a fleet of TCP meters.
    let mut ports = Vec::new();
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        let server = SimServer::new();
        let dev = server.add(1, SimDevice::new());
        dev.set_logging(false);
        let regs: Vec<u16> = (0..60).map(|j| (d * 100 + j) as u16).collect();
        dev.set_registers(Table::Holding, 0, &regs);
        for k in 0..40u16 {
            let v = codec::encode(
                &Value::Float(230.0 + f64::from(k) / 10.0),
                ValueType::F32,
                WordOrder::Cdab,
            )
            .expect("encode");
            dev.set_registers(Table::Holding, 60 + 2 * k, &v);
        }
        ports.push(server.spawn_local().await.expect("sim"));
        devices.push(dev);
    }
    // BENCH_CHANGING=1: every register changes four times a second, so every reading
    // differs from the last one (the retained store is rewritten for every message).
    if std::env::var("BENCH_CHANGING").is_ok_and(|v| v == "1") {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            for n in 0u16.. {
                tick.tick().await;
                for (d, dev) in devices.iter().enumerate() {
                    let regs: Vec<u16> = (0..140)
                        .map(|j| (d as u16).wrapping_mul(100).wrapping_add(j).wrapping_add(n))
                        .collect();
                    dev.set_registers(Table::Holding, 0, &regs);
                }
            }
        });
    }
    let only = std::env::var("BENCH_ONLY").ok();
    let scenarios = [
        Scenario {
            name: "100 devices × 100 points, every 1 s (target 10 000 points/s)",
            poll: "1s",
        },
        Scenario {
            name: "100 devices × 100 points, saturated (poll_interval 1ms)",
            poll: "1ms",
        },
    ];
    println!("fieldlink throughput benchmark — {DEVICES} Modbus TCP simulators, every_poll, embedded broker, one subscriber\n");
    println!("| scenario | points/s (median) | gateway CPU, share of one core | CPU s per 10 000 points | peak RSS | RSS at end |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, s) in scenarios.iter().enumerate() {
        if only.as_ref().is_some_and(|o| *o != (i + 1).to_string()) {
            continue;
        }
        let r = run(s, &ports, 3, Duration::from_secs(5)).await;
        println!(
            "| {} | {:.0} | {:.1} % | {:.4} | {:.1} MiB | {:.1} MiB |",
            s.name,
            r.points_per_s,
            r.core_share * 100.0,
            r.cpu_per_10k,
            r.peak_rss,
            r.rss
        );
    }
}
