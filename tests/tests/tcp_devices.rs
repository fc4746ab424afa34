//! Modbus TCP devices as people own them: unit ids 0 and 255 (inverter dongles that answer
//! nothing else), and devices that need a pause after connecting and between requests
//! (`connect_delay`, `frame_delay`), measured at the device from its request timestamps.

use std::time::{Duration, Instant};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_0_and_255_are_polled_on_modbus_tcp() {
    let server = SimServer::new();
    let zero = server.add(0, SimDevice::new());
    let top = server.add(255, SimDevice::new());
    zero.set_registers(Table::Input, 0, &[100]);
    top.set_registers(Table::Input, 0, &[255]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - {{ id: dongle0, bus: b, unit: 0, poll_interval: 200ms, points: [{{ topic: u/zero, table: input, address: 0 }}] }}\n  - {{ id: dongle255, bus: b, unit: 255, poll_interval: 200ms, points: [{{ topic: u/top, table: input, address: 0 }}] }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "u/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("u/zero", "100", T).await);
    assert!(obs.wait_seen("u/top", "255", T).await);
    assert!(zero.log().iter().all(|r| r.unit == 0));
    assert!(top.log().iter().all(|r| r.unit == 255));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_delay_and_frame_delay_are_kept_on_modbus_tcp() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[1]);
    dev.set_registers(Table::Holding, 100, &[2]);
    let port = server.spawn_local().await.expect("sim");
    // Two reads per poll (the points are far apart), polled every 100 ms: without the
    // pauses the two requests of a poll come back to back.
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, connect_delay: 500ms, frame_delay: 150ms }}\ndevices:\n  - {{ id: d, bus: b, unit: 1, poll_interval: 100ms, max_gap: 0, points: [{{ topic: p/a, table: holding, address: 0 }}, {{ topic: p/b, table: holding, address: 100 }}] }}\n"
    );
    let started = Instant::now();
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "p/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("p/b", "2", T).await);
    // Enough requests to measure: wait until the device has seen eight.
    let enough = fieldlink_tests::eventually(T, || dev.log().len() >= 8).await;
    assert!(enough, "requests: {}", dev.log().len());
    let log = dev.log();
    let first = log[0].at.duration_since(started);
    assert!(
        first >= Duration::from_millis(500),
        "the first request waited connect_delay: {first:?}"
    );
    for pair in log.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // The reply is immediate, so request to request is at least frame_delay.
        assert!(
            gap >= Duration::from_millis(145),
            "requests {gap:?} apart, frame_delay 150ms"
        );
    }
    gw.stop().await;
}

/// A dead unit on a shared bus is published `offline` within `offline_after` ×
/// `poll_interval` + 2 × `timeout` of its first failed poll (5 s here, plus up to one poll
/// interval until that poll), while its neighbours keep at least 90 % of their polls in
/// the first 20 s.
pub async fn prompt_offline_on(
    kind: &str,
    spawn: impl std::future::Future<Output = u16>,
    devs: [std::sync::Arc<SimDevice>; 3],
) {
    let port = spawn.await;
    let mut mapping = format!(
        "buses:\n  - {{ id: b, kind: {kind}, host: 127.0.0.1, port: {port}, timeout: 1s }}\ndevices:\n"
    );
    for u in 1..=3 {
        mapping += &format!(
            "  - {{ id: u{u}, bus: b, unit: {u}, poll_interval: 1s, points: [{{ topic: o/u{u}, table: holding, address: 0, publish: every_poll }}] }}\n"
        );
    }
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    for u in 1..=3 {
        assert!(
            obs.wait_seen(&format!("fieldlink/t/u{u}/availability"), "online", T)
                .await
        );
    }
    let polls = |i: usize| {
        gw.stats.devices()[i]
            .polls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = [polls(0), polls(2)];
    let stopped = Instant::now();
    devs[1].set_responding(false);
    assert!(
        obs.wait_seen("fieldlink/t/u2/availability", "offline", T)
            .await,
        "{kind}: unit 2 goes offline"
    );
    let took = stopped.elapsed();
    assert!(
        took <= Duration::from_millis(6500),
        "{kind}: offline {took:?} after the unit died (bound 5 s from its first failed poll)"
    );
    // The neighbours over the first 20 s after the death: a window to count in (the
    // dead unit's first two tries hold the bus for 2 × timeout each on RTU).
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(took)).await;
    let secs = stopped.elapsed().as_secs();
    for (i, b) in [(0usize, before[0]), (2, before[1])] {
        let n = polls(i) - b;
        assert!(
            n * 10 >= secs * 9,
            "{kind}: unit {} polled {n} times in {secs} s",
            i + 1
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_on_modbus_tcp_goes_offline_promptly() {
    let server = SimServer::new();
    let devs = [1u8, 2, 3].map(|u| server.add(u, SimDevice::new()));
    prompt_offline_on(
        "modbus_tcp",
        async move { server.spawn_local().await.expect("sim") },
        devs,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_behind_a_converter_goes_offline_promptly() {
    let server = SimServer::new();
    let devs = [1u8, 2, 3].map(|u| server.add(u, SimDevice::new()));
    prompt_offline_on(
        "modbus_rtu_over_tcp",
        async move { server.spawn_rtu_over_tcp().await.expect("converter") },
        devs,
    )
    .await;
}

/// A device that refuses reads of more than 10 registers (exception 03) is read whole
/// with `max_read_registers: 10`: every request stays within the limit, every value is
/// published. Without the key the planner's one long read is refused and nothing of it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_read_registers_keeps_a_short_buffered_device_readable() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_max_read(10);
    let values: Vec<u16> = (0..30).map(|a| 1000 + a).collect();
    dev.set_registers(Table::Input, 0, &values);
    let port = server.spawn_local().await.expect("sim");
    let points: String = (0..30)
        .map(|a| format!("      - {{ topic: lim/r{a}, table: input, address: {a} }}\n"))
        .collect();
    let mapping = |limit: &str| {
        format!(
            "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 200ms\n{limit}    points:\n{points}"
        )
    };
    let gw = Gateway::start(model(&mapping("    max_read_registers: 10\n"), "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "lim/#", QoS::AtMostOnce).await;
    for a in 0..30u16 {
        assert!(
            obs.wait_seen(&format!("lim/r{a}"), &(1000 + a).to_string(), T)
                .await,
            "register {a}"
        );
    }
    assert!(dev.log().iter().all(|r| r.count <= 10), "{:?}", dev.log());
    gw.stop().await;
    // The same device without the key: one read of 30, refused; nothing published.
    dev.clear_log();
    let gw = Gateway::start(model(&mapping(""), "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "lim/#", QoS::AtMostOnce).await;
    let refused = fieldlink_tests::eventually(T, || dev.log().iter().any(|r| r.count == 30)).await;
    assert!(refused, "{:?}", dev.log());
    let seen = obs.collect(Duration::from_millis(600)).await;
    assert!(
        seen.iter().all(|m| m.payload.is_empty()),
        "nothing read without the limit: {seen:?}"
    );
    gw.stop().await;
}
