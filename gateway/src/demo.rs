//! `fieldlink demo`: the example house (`mappings/casa.yaml`) against simulated devices and
//! the embedded broker, so a newcomer sees readings flowing with no hardware.
//!
//! The Modbus simulators are real tokio-modbus servers: on 127.0.0.1 (free ports) for TCP
//! buses, and on the far end of a pseudo-terminal pair for RTU buses. A UART bus gets a
//! pseudo-terminal too, with an emulated CO₂ sensor answering its query. Every point gets a
//! value that moves like a real sensor (slow waves plus noise, counters that only grow,
//! contacts that open and close).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    gpio::SimGpio,
    modbus::{codec, Table, Value, ValueType},
    sim::{SimDevice, SimServer},
};
use thiserror::Error;

use crate::{
    config::{check_sources, Diagnostic},
    model::{BusKind, GpioBackendKind, GpioMode, Model, Point},
    shutdown::Shutdown,
    Hooks,
};

/// The example mapping shipped in `mappings/casa.yaml`, compiled in.
pub const CASA_YAML: &str = include_str!("../../mappings/casa.yaml");

/// Why the demo could not start.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The built-in mapping is invalid (a bug).
    #[error("built-in mapping is invalid: {0}")]
    Mapping(String),
    /// A simulator could not bind.
    #[error("cannot start a simulated device: {0}")]
    Sim(#[from] std::io::Error),
    /// The gateway failed.
    #[error(transparent)]
    Run(#[from] crate::RunError),
}

/// The demo's model: `mappings/casa.yaml` with the embedded broker on `listen`.
pub fn model(listen: SocketAddr) -> Result<Model, DemoError> {
    let gateway = format!(
        // No broker store: a demo keeps nothing and writes nothing under /var/lib.
        "id: casa\nmappings: casa.yaml\nmqtt:\n  embedded:\n    listen: \"{listen}\"\n    persistence: false\ndiagnostics_interval: 10s\n"
    );
    check_sources(Path::new("demo-gateway.yaml"), &gateway, |_, _| {
        vec![(PathBuf::from("mappings/casa.yaml"), CASA_YAML.to_string())]
    })
    .map(|c| c.model)
    .map_err(|d: Vec<Diagnostic>| {
        DemoError::Mapping(
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// Start one simulator per bus of `model` (each answering for that bus's unit ids),
/// point the buses at them, and animate the values. GPIO buses get a simulated board whose
/// inputs (door contacts) open and close with some contact bounce; outputs follow
/// commands. Returns the rewritten model and the hooks that carry the boards.
pub async fn simulate(mut model: Model) -> Result<(Model, Hooks), DemoError> {
    let mut animated = Vec::new();
    let mut hooks = Hooks::default();
    let mut contacts = Vec::new();
    for bus in &mut model.buses {
        // Not shared yet: the model is still being built.
        let bus = std::sync::Arc::make_mut(bus);
        if let BusKind::Gpio { backend } = &mut bus.kind {
            *backend = GpioBackendKind::Simulated;
            let board = SimGpio::default();
            for (i, p) in bus.devices.iter().flat_map(|d| d.points.iter()).enumerate() {
                if let Some(g) = p
                    .gpio()
                    .filter(|g| matches!(g.mode, GpioMode::Input { .. }))
                {
                    contacts.push((board.clone(), g.pin, g.active_low, 20 + 7 * i as u64));
                }
            }
            hooks.gpio.insert(bus.id.clone(), board);
            continue;
        }
        if let BusKind::Uart { serial, .. } = &mut bus.kind {
            let (port, keeper, path) = fieldlink_drivers::sim::pty_pair()?;
            serial.path = path;
            tokio::spawn(co2_sensor(port, keeper));
            continue;
        }
        let server = SimServer::new();
        for d in &bus.devices {
            let unit = d.modbus().map_or(1, |m| m.unit);
            let dev = server.add(unit, SimDevice::new());
            dev.set_logging(false);
            animated.push((dev, d.points.clone()));
        }
        match &mut bus.kind {
            BusKind::ModbusTcp { host, port, .. } => {
                *port = server.spawn_local().await?;
                *host = "127.0.0.1".into();
            }
            BusKind::ModbusRtu { serial, .. } => {
                let (port, keeper, path) = fieldlink_drivers::sim::pty_pair()?;
                serial.path = path;
                tokio::spawn(async move {
                    // The keeper holds the gateway's end open until the simulator stops.
                    let _keeper = keeper;
                    let _ = server.serve_rtu(port).await;
                });
            }
            BusKind::ModbusRtuOverTcp { host, port, .. } => {
                *port = server.spawn_rtu_over_tcp().await?;
                *host = "127.0.0.1".into();
            }
            BusKind::Uart { .. } | BusKind::Gpio { .. } => {}
        }
    }
    for (board, pin, active_low, period) in contacts {
        tokio::spawn(async move {
            // Closed (ON) at start; every `period` seconds the contact changes, bouncing.
            let mut on = true;
            board.drive(pin, Some(on != active_low));
            loop {
                tokio::time::sleep(Duration::from_secs(period)).await;
                on = !on;
                for _ in 0..3 {
                    board.drive(pin, Some(on != active_low));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    board.drive(pin, Some(on == active_low));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                board.drive(pin, Some(on != active_low));
            }
        });
    }
    let start = Instant::now();
    for (dev, points) in &animated {
        animate(dev, points, 0.0);
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let t = start.elapsed().as_secs_f64();
            for (dev, points) in &animated {
                animate(dev, points, t);
            }
        }
    });
    Ok((model, hooks))
}

/// An emulated UART CO₂ sensor: answers `Q` with ` H 00345 T 01225 Z 00612` (humidity
/// × 10, temperature × 10 + 1000, CO₂ in ppm), CRLF-terminated, like the `co2-sala` device
/// of `mappings/casa.yaml` expects.
async fn co2_sensor(mut port: tokio_serial::SerialStream, keeper: std::fs::File) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _keeper = keeper;
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64];
    loop {
        let n = match port.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if line.trim_ascii() != b"Q" {
                continue;
            }
            let t = start.elapsed().as_secs_f64();
            let slow = (t / 300.0 * std::f64::consts::TAU).sin();
            let n = noise(t as u64);
            let co2 = 650.0 + 150.0 * slow + 10.0 * n;
            let temp = 23.0 + slow + 0.1 * n;
            let reply = format!(
                " H {:05} T {:05} Z {:05}\r\n",
                (480.0 + 40.0 * slow) as u32,
                (temp * 10.0 + 1000.0) as u32,
                co2 as u32
            );
            if port.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Run the demo until shutdown; the broker's addresses as bound (with `listen` on port 0,
/// the port the system chose) are sent on `bound` once it accepts clients.
pub async fn run(
    listen: SocketAddr,
    shutdown: Shutdown,
    bound: Option<tokio::sync::watch::Sender<Option<crate::broker::Bound>>>,
) -> Result<(), DemoError> {
    let (model, mut hooks) = simulate(model(listen)?).await?;
    hooks.bound = bound;
    crate::run_with(model, shutdown, hooks).await?;
    Ok(())
}

fn noise(seed: u64) -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % 10_000) as f64 / 10_000.0 - 0.5
}

/// The engineering value of a point at time `t` seconds.
fn wave(p: &Point, i: usize, t: f64) -> f64 {
    let phase = i as f64 * 1.7;
    let slow = (t / 60.0 * std::f64::consts::TAU + phase).sin();
    let n = noise((t * 2.0) as u64 ^ (i as u64) << 32);
    match p.unit.as_deref() {
        Some("°C") if p.writable => 21.0,
        Some("°C") => 22.0 + 2.0 * slow + 0.2 * n,
        Some("%") => 55.0 + 8.0 * slow + 0.5 * n,
        Some("V") => 229.0 + 2.0 * slow + 0.4 * n,
        Some("A") => 4.0 + 2.0 * slow + 0.2 * n,
        Some("W") => 900.0 + 400.0 * slow + 20.0 * n,
        Some("Hz") => 50.0 + 0.05 * slow + 0.01 * n,
        Some("kWh") => 1234.5 + t * 0.001,
        _ => 100.0 + 10.0 * slow,
    }
}

fn animate(dev: &Arc<SimDevice>, points: &[Point], t: f64) {
    for (i, p) in points.iter().enumerate() {
        // Writable points keep what a command wrote; they only get a starting value.
        let Some(m) = p.modbus() else { continue };
        if p.writable && t > 0.0 {
            continue;
        }
        if p.ty == ValueType::Bool {
            let period = 10.0 + 5.0 * (i % 4) as f64;
            let on = ((t / period) as u64 + i as u64) % 2 == 1;
            match (m.table, m.bit) {
                (Table::Coil | Table::Discrete, _) => dev.set_bit(m.table, m.address, on),
                (table, Some(bit)) => {
                    let cur = dev.registers(table, m.address, 1)[0];
                    let v = if on {
                        cur | 1 << bit
                    } else {
                        cur & !(1 << bit)
                    };
                    dev.set_registers(table, m.address, &[v]);
                }
                (table, None) => dev.set_registers(table, m.address, &[u16::from(on)]),
            }
            continue;
        }
        let value = match p.ty {
            ValueType::String { .. } => Value::Str("FL-DEMO1".into()),
            ValueType::F32 | ValueType::F64 => Value::Float((wave(p, i, t) - p.offset) / p.scale),
            _ => Value::Int(((wave(p, i, t) - p.offset) / p.scale).round() as i64),
        };
        if let Ok(regs) = codec::encode(&value, p.ty, m.order) {
            dev.set_registers(m.table, m.address, &regs);
        }
    }
}
