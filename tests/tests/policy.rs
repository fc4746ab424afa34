//! Publish policies as documented: `on_change` (with deadband), `every_poll`, heartbeat.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_deadband_every_poll_and_heartbeat() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[1000, 5, 6, 7]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        r#"
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}
devices:
  - id: d
    bus: b
    poll_interval: 100ms
    points:
      - {{ topic: p/deadband, table: holding, address: 0, scale: 0.1, precision: 1, deadband: 1.0 }}
      - {{ topic: p/onchange, table: holding, address: 1 }}
      - {{ topic: p/everypoll, table: holding, address: 2, publish: every_poll }}
      - {{ topic: p/heartbeat, table: holding, address: 3, heartbeat: 400ms }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "p/#", QoS::AtMostOnce).await;
    // Wait until the first value of every point arrived, then start counting.
    let seen = obs.seen.clone();
    let all_seen = fieldlink_tests::eventually(Duration::from_secs(10), || {
        let s = seen.lock().expect("lock");
        ["p/deadband", "p/onchange", "p/everypoll", "p/heartbeat"]
            .iter()
            .all(|t| s.iter().any(|m| m.topic == *t))
    })
    .await;
    assert!(all_seen, "first values of every point");
    assert!(seen
        .lock()
        .expect("lock")
        .iter()
        .any(|m| m.topic == "p/deadband" && m.payload == "100.0"));
    let _ = obs.collect(Duration::from_millis(50)).await;
    // Two seconds ≈ 20 polls of unchanged values.
    let msgs = obs.collect(Duration::from_secs(2)).await;
    let count = |t: &str| msgs.iter().filter(|m| m.topic == t).count();
    assert_eq!(
        count("p/onchange"),
        0,
        "on_change: an unchanged value is not republished"
    );
    assert_eq!(count("p/deadband"), 0);
    assert!(
        (14..=22).contains(&count("p/everypoll")),
        "every_poll: one message per poll, got {}",
        count("p/everypoll")
    );
    assert!(
        (3..=6).contains(&count("p/heartbeat")),
        "heartbeat 400ms over 2s: expected about 5, got {}",
        count("p/heartbeat")
    );

    // Below the deadband (0.5 < 1.0): nothing; at or above it: published.
    dev.set_registers(Table::Holding, 0, &[1005]);
    dev.set_registers(Table::Holding, 1, &[9]);
    let msgs = obs.collect(Duration::from_millis(600)).await;
    assert!(
        !msgs.iter().any(|m| m.topic == "p/deadband"),
        "0.5 is inside the deadband"
    );
    let changed: Vec<_> = msgs.iter().filter(|m| m.topic == "p/onchange").collect();
    assert_eq!(changed.len(), 1, "one message per change");
    assert_eq!(changed[0].payload, "9");
    dev.set_registers(Table::Holding, 0, &[1012]);
    let m = obs.next_on("p/deadband", Duration::from_secs(2)).await;
    assert_eq!(m.map(|m| m.payload).as_deref(), Some("101.2"));
    gw.stop().await;
}
