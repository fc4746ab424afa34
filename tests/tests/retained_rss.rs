//! A measurement, not a check (ignored by default; run with `--ignored --nocapture`): the
//! resident memory the gateway's retained state costs with both MQTT sides on, at 20 000
//! points with JSON payloads, once every value has reached the upstream broker.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually, model_from,
    mosquitto::{self, Broker, BrokerOpts},
    Gateway,
};

const POINTS: usize = 20_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn retained_state_rss_with_both_sides() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let Some(sub) = mosquitto::tool("mosquitto_sub") else {
        return;
    };
    let sim = SimServer::new();
    let dev = sim.add(1, SimDevice::new());
    let values: Vec<u16> = (0..POINTS).map(|i| i as u16).collect();
    dev.set_registers(Table::Holding, 0, &values);
    let port = sim.spawn_local().await.expect("sim");
    let mut mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 2s\n    points:\n"
    );
    for i in 0..POINTS {
        mapping.push_str(&format!(
            "      - {{ topic: casa/sensor/{i}, table: holding, address: {i}, payload: json, unit: W }}\n"
        ));
    }
    let state = tempfile::tempdir().expect("tempdir");
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n    persistence: false\n  upstream:\n    url: mqtt://127.0.0.1:{}\n    prefix: up/\n",
        state.path().display(),
        broker.port
    );
    let model = model_from(&gateway, &mapping);
    fieldlink::trim_heap();
    let before = rss_kib();
    let mut waiter = std::process::Command::new(&sub)
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "up/casa/#", "-C", &POINTS.to_string(), "-W", "120"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let gw = Gateway::start(model).await;
    let status = tokio::task::spawn_blocking(move || waiter.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "every value upstream");
    // Every value acknowledged by the upstream broker, then a few more polls (nothing
    // changes: nothing more is published) for the allocator to settle.
    let u = &gw.stats.upstream;
    let d = gw.stats.device_by_id("d").expect("device counters");
    let polls = d.polls.load(Relaxed);
    let settled = || u.acked.load(Relaxed) >= POINTS as u64 && d.polls.load(Relaxed) >= polls + 5;
    assert!(eventually(Duration::from_secs(60), settled).await);
    fieldlink::trim_heap();
    let after = rss_kib();
    eprintln!(
        "RSS: before {before} KiB, with {POINTS} points on both sides {after} KiB, difference {} KiB",
        after.saturating_sub(before)
    );
    gw.stop().await;
}
