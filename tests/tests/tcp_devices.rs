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
