//! Modbus TCP server benchmark (issue #26): the real `fieldlink run` binary polls ten
//! simulated Modbus TCP devices every second and serves their registers on its
//! `modbus_server:`; clients in this process hammer it with FC03 reads. The reference is
//! the same load against a pymodbus 3.8 server holding the same registers, and the real
//! `mbpoll` against both.
//!
//! Run: `bash gateway/benches/modbus_server/setup.sh` (mbpoll, pymodbus venv), then
//! `cargo bench -p fieldlink --bench modbus_server`.
//!
//! Reported: requests/s answered (median of 5 s windows) with `BENCH_CLIENTS` connections
//! (default 4), each sending one request after the other; the gateway's CPU share; and the
//! polls the devices received while hammered against the polls due (no poll may be
//! missed). mbpoll: the median wall time of one `mbpoll -1` run (a process start, a
//! connection and one read) against each server.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use tokio_modbus::{client::Reader, Slave};

#[path = "../tests/support/mod.rs"]
mod support;

const DEVICES: usize = 10;
const REGISTERS: u16 = 100;
const WINDOWS: usize = 3;
const WINDOW: Duration = Duration::from_secs(5);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// utime + stime of `pid`, seconds (clock ticks are 100 Hz on every Linux we target).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `clients` connections reading 10 holding registers each, one request after the other,
/// at a unit and address that move with every request; counts answered requests (a
/// wrong value or an exception panics: the benchmark measures correct answers only).
async fn hammer(addr: SocketAddr, clients: usize, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (count, stop) = (count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
                .await
                .expect("connect");
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                let unit = (n % DEVICES) as u8 + 1;
                let start = (n * 7 % 90) as u16;
                tokio_modbus::slave::SlaveContext::set_slave(&mut ctx, Slave(unit));
                let regs = ctx
                    .read_holding_registers(start, 10)
                    .await
                    .expect("transport")
                    .unwrap_or_else(|e| panic!("unit {unit} at {start}: exception {e:?}"));
                assert_eq!(regs[0], start + 1, "unit {unit} register {start}");
                count.fetch_add(1, Ordering::Relaxed);
                n += clients;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
}

struct Figures {
    per_s: f64,
    cpu: Option<f64>,
}

/// Hammer `addr` for [`WINDOWS`] windows; `pid`: the server process, for its CPU share.
async fn measure(addr: SocketAddr, clients: usize, pid: Option<u32>) -> Figures {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(hammer(addr, clients, count.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..WINDOWS {
        let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
        let cpu0 = pid.map(cpu_seconds);
        tokio::time::sleep(WINDOW).await;
        let dt = t0.elapsed().as_secs_f64();
        rates.push((count.load(Ordering::Relaxed) - c0) as f64 / dt);
        if let (Some(p), Some(c0)) = (pid, cpu0) {
            cpus.push((cpu_seconds(p) - c0) / dt);
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    Figures {
        per_s: median(rates),
        cpu: pid.map(|_| median(cpus)),
    }
}

/// Median wall time (ms) of `runs` one-shot `mbpoll` reads of 10 registers at `port`.
fn mbpoll_ms(port: u16, runs: usize) -> Option<f64> {
    let mut times = Vec::new();
    for i in 0..runs {
        let unit = (i % DEVICES + 1).to_string();
        let t = Instant::now();
        let out = Command::new("mbpoll")
            .args(["-m", "tcp", "-p", &port.to_string(), "-a", &unit])
            .args(["-0", "-r", "0", "-c", "10", "-1", "127.0.0.1"])
            .output()
            .ok()?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("[9]: \t10"),
            "mbpoll read wrong values at port {port}:\n{text}"
        );
        times.push(ms);
    }
    Some(median(times))
}

/// Start `fieldlink run` on the devices at `ports`, serving them at `server_port`.
fn start_gateway(dir: &std::path::Path, ports: &[u16], server_port: u16) -> Child {
    let mut mapping = String::from("buses:\n");
    for (i, p) in ports.iter().enumerate() {
        writeln!(
            mapping,
            "  - {{ id: b{i}, kind: modbus_tcp, host: 127.0.0.1, port: {p} }}"
        )
        .expect("fmt");
    }
    mapping.push_str("devices:\n");
    for i in 0..ports.len() {
        writeln!(
            mapping,
            "  - id: d{i}\n    bus: b{i}\n    unit: {}\n    poll_interval: 1s\n    points:",
            i + 1
        )
        .expect("fmt");
        for j in 0..REGISTERS {
            writeln!(
                mapping,
                "      - {{ topic: bench/d{i}/p{j}, table: holding, address: {j} }}"
            )
            .expect("fmt");
        }
    }
    std::fs::write(dir.join("mapping.yaml"), mapping).expect("write mapping");
    std::fs::write(
        dir.join("gateway.yaml"),
        format!(
            "id: bench\nmappings: mapping.yaml\nstate_dir: {}\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\nhomeassistant: {{ enabled: false }}\nmodbus_server:\n  listen: \"127.0.0.1:{server_port}\"\n  max_connections: 64\n",
            dir.display()
        ),
    )
    .expect("write gateway");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["run", "--config"])
        .arg(dir.join("gateway.yaml"))
        .env("RUST_LOG", "warn,fieldlink::broker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldlink");
    let stderr = child.stderr.take().expect("stderr");
    support::broker_addr(stderr, Duration::from_secs(60));
    child
}

/// Wait until every device's registers are served (the first polls are in).
async fn wait_served(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    'units: for unit in 1..=DEVICES as u8 {
        while Instant::now() < deadline {
            if let Ok(mut ctx) = tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)).await {
                if let Ok(Ok(_)) = ctx.read_holding_registers(0, REGISTERS).await {
                    continue 'units;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("unit {unit} not served at {addr} within 30 s");
    }
}

/// The pymodbus reference server, when its venv is there.
fn start_pymodbus(port: u16) -> Option<Child> {
    let venv = std::env::var("FIELDLINK_PYMODBUS_VENV")
        .unwrap_or_else(|_| "/opt/fieldlink-pymodbus".into());
    let python = format!("{venv}/bin/python");
    if !std::path::Path::new(&python).exists() {
        eprintln!("No pymodbus venv at {venv}: run gateway/benches/modbus_server/setup.sh.");
        return None;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/modbus_server/pymodbus_server.py"
    );
    let mut child = Command::new(python)
        .args([
            script,
            &port.to_string(),
            &DEVICES.to_string(),
            &REGISTERS.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    let stdout = child.stdout.take()?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).ok()?;
    line.starts_with("listening").then_some(child)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut ports = Vec::new();
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        let server = SimServer::new();
        let dev = server.add(d as u8 + 1, SimDevice::new());
        dev.set_logging(false);
        let regs: Vec<u16> = (0..REGISTERS).map(|a| a + 1).collect();
        dev.set_registers(Table::Holding, 0, &regs);
        ports.push(server.spawn_local().await.expect("sim"));
        devices.push(dev);
    }
    let polls = |devices: &[Arc<SimDevice>]| devices.iter().map(|d| d.request_count()).sum::<u64>();

    let dir = tempfile::tempdir().expect("tempdir");
    let server_port = free_port();
    let mut gateway = start_gateway(dir.path(), &ports, server_port);
    let addr: SocketAddr = ([127, 0, 0, 1], server_port).into();
    wait_served(addr).await;

    // Polls in a quiet window, then while hammered: one read per device per second.
    let (p0, t0) = (polls(&devices), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let quiet = (polls(&devices) - p0) as f64 / t0.elapsed().as_secs_f64();
    let (p1, t1) = (polls(&devices), Instant::now());
    let ours = measure(addr, clients, Some(gateway.id())).await;
    let loaded = (polls(&devices) - p1) as f64 / t1.elapsed().as_secs_f64();
    let ours_mbpoll = mbpoll_ms(server_port, 30);
    let _ = gateway.kill();
    let _ = gateway.wait();

    let py_port = free_port();
    let reference = match start_pymodbus(py_port) {
        Some(mut py) => {
            let pid = py.id();
            let addr: SocketAddr = ([127, 0, 0, 1], py_port).into();
            let f = measure(addr, clients, Some(pid)).await;
            let m = mbpoll_ms(py_port, 30);
            let _ = py.kill();
            let _ = py.wait();
            Some((f, m))
        }
        None => None,
    };

    let ms = |m: Option<f64>| m.map_or("—".into(), |v| format!("{v:.1} ms"));
    let cpu = |c: Option<f64>| c.map_or("—".into(), |v| format!("{:.0} %", v * 100.0));
    println!("fieldlink Modbus TCP server benchmark — {DEVICES} devices × {REGISTERS} holding registers polled every 1 s, {clients} client connections reading 10 registers each\n");
    println!("| server | requests/s (median) | server CPU, share of one core | one `mbpoll -1` run (median of 30) |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| fieldlink (serving its snapshot while polling) | {:.0} | {} | {} |",
        ours.per_s,
        cpu(ours.cpu),
        ms(ours_mbpoll)
    );
    if let Some((f, m)) = &reference {
        println!(
            "| pymodbus 3.8.6 (reference, static registers) | {:.0} | {} | {} |",
            f.per_s,
            cpu(f.cpu),
            ms(*m)
        );
        println!("\nratio fieldlink / pymodbus: {:.1}×", ours.per_s / f.per_s);
    }
    println!(
        "\ndevice reads per second: {quiet:.2} quiet, {loaded:.2} while hammered (due: {DEVICES}.00)"
    );
}
