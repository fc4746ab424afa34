//! Command latency benchmark: time from the MQTT PUBLISH on `<topic>/set` to the write
//! arriving at the simulated device, over 1000 commands, with the bus idle and with the
//! bus busy polling 100 points every 100 ms.
//!
//! Run: `cargo bench -p fieldlink --bench commands`
//!
//! The real `fieldlink run` binary (gateway + embedded broker) runs as a child process;
//! the tokio-modbus simulator and the MQTT client live in this process, so the publish
//! instant and the simulator's arrival instant come from the same clock.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fieldlink_drivers::sim::{SimDevice, SimServer};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

const COMMANDS: usize = 1000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn scenario(busy: bool) -> (Vec<Duration>, Vec<Duration>) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: {}\n    points:\n      - {{ topic: bench/sp, table: holding, address: 0, writable: true }}\n",
        if busy { "100ms" } else { "1h" }
    );
    if busy {
        for i in 0..100 {
            writeln!(
                mapping,
                "      - {{ topic: bench/v{i}, table: holding, address: {}, publish: every_poll }}",
                10 + i
            )
            .expect("fmt");
        }
    }
    std::fs::write(dir.path().join("mapping.yaml"), mapping).expect("write");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "id: bench\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["run", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        // The broker's INFO line tells the port the system picked.
        .env("RUST_LOG", "warn,fieldlink::broker=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldlink");
    let stderr = child.stderr.take().expect("stderr");
    let mqtt_port = support::broker_addr(stderr, Duration::from_secs(20)).port();

    let mut o = MqttOptions::new("bench-cmd", "127.0.0.1", mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 64);
    el.network_options.set_tcp_nodelay(true);
    let (tx, mut results) = mpsc::unbounded_channel();
    let c2 = client.clone();
    let pump = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c2.subscribe("bench/sp/set/result", QoS::AtMostOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).to_string());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Vec::with_capacity(COMMANDS);
    let mut round_trip = Vec::with_capacity(COMMANDS);
    for i in 0..COMMANDS {
        dev.clear_log();
        let value = (i % 60_000) as u16 + 1;
        let sent = Instant::now();
        client
            .publish("bench/sp/set", QoS::AtMostOnce, false, value.to_string())
            .await
            .expect("publish");
        let r = tokio::time::timeout(Duration::from_secs(5), results.recv())
            .await
            .expect("result within 5 s")
            .expect("result");
        round_trip.push(sent.elapsed());
        assert!(r.contains("\"ok\":true"), "{r}");
        let write = dev
            .log()
            .into_iter()
            .find(|q| q.function == 6 && q.written == [value])
            .expect("the write reached the device");
        lat.push(write.at.duration_since(sent));
        if (i + 1) % 250 == 0 {
            eprintln!("  {} commands", i + 1);
        }
    }
    pump.abort();
    let _ = child.kill();
    let _ = child.wait();
    lat.sort();
    round_trip.sort();
    (lat, round_trip)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    println!(
        "fieldlink command latency — /set PUBLISH → write at the simulator, {COMMANDS} commands\n"
    );
    println!("| bus | p50 | p99 | max | /set → /set/result p50 | p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for busy in [false, true] {
        let (lat, rt) = scenario(busy).await;
        let name = if busy {
            "busy: 100 points polled every 100 ms"
        } else {
            "idle"
        };
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            ms(pct(&rt, 0.5)),
            ms(pct(&rt, 0.99)),
        );
    }
}
