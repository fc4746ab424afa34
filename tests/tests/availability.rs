//! A device that stops answering goes offline after N polls, publishes nothing meanwhile,
//! and comes back; a device on another endpoint keeps its cadence throughout.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_goes_offline_and_back_while_the_other_keeps_cadence() {
    let (sa, sb) = (SimServer::new(), SimServer::new());
    let a = sa.add(1, SimDevice::new());
    let b = sb.add(1, SimDevice::new());
    a.set_registers(Table::Holding, 0, &[1]);
    b.set_registers(Table::Holding, 0, &[2]);
    let (pa, pb) = (
        sa.spawn_local().await.expect("sim"),
        sb.spawn_local().await.expect("sim"),
    );
    let mapping = format!(
        r#"
buses:
  - {{ id: ba, kind: modbus_tcp, host: 127.0.0.1, port: {pa}, timeout: 150ms }}
  - {{ id: bb, kind: modbus_tcp, host: 127.0.0.1, port: {pb}, timeout: 150ms }}
devices:
  - id: dev-a
    bus: ba
    poll_interval: 100ms
    offline_after: 3
    points:
      - {{ topic: v/a, table: holding, address: 0, publish: every_poll }}
  - id: dev-b
    bus: bb
    poll_interval: 100ms
    points:
      - {{ topic: v/b, table: holding, address: 0, publish: every_poll }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let port = gw.broker_port();
    let mut obs = Observer::connect(port, "#", QoS::AtMostOnce).await;
    assert!(
        obs.wait_payload(
            "fieldlink/t/dev-a/availability",
            "online",
            Duration::from_secs(10)
        )
        .await
    );
    assert!(obs.next_on("v/a", Duration::from_secs(2)).await.is_some());

    a.set_responding(false);
    let stopped = std::time::Instant::now();
    let off = obs
        .next_matching(
            |m| m.topic == "fieldlink/t/dev-a/availability" && m.payload == "offline",
            Duration::from_secs(5),
        )
        .await
        .expect("dev-a goes offline");
    let took = off.at.duration_since(stopped);
    // 3 failed polls: ~100 ms cadence + 150 ms timeout each.
    assert!(
        took < Duration::from_secs(2),
        "offline after 3 polls, took {took:?}"
    );
    // A new subscriber sees the retained offline.
    let mut fresh = Observer::connect(port, "fieldlink/t/+/availability", QoS::AtMostOnce).await;
    let snap = fresh.snapshot(Duration::from_millis(300)).await;
    assert_eq!(snap["fieldlink/t/dev-a/availability"].payload, "offline");
    assert!(snap["fieldlink/t/dev-a/availability"].retain);

    let b_before = b.request_count();
    let outage = obs.collect(Duration::from_secs(2)).await;
    let b_polls = b.request_count() - b_before;
    assert!(
        !outage.iter().any(|m| m.topic == "v/a" && m.at > off.at),
        "no value of the dead device is published while it is offline"
    );
    assert!(
        b_polls >= 16,
        "dev-b keeps ≥ 80 % of its 20 polls in 2 s, got {b_polls}"
    );
    let b_values = outage.iter().filter(|m| m.topic == "v/b").count();
    assert!(b_values >= 16, "dev-b values keep flowing, got {b_values}");

    a.set_responding(true);
    assert!(
        obs.wait_payload(
            "fieldlink/t/dev-a/availability",
            "online",
            Duration::from_secs(10)
        )
        .await,
        "dev-a comes back online"
    );
    assert!(
        obs.next_on("v/a", Duration::from_secs(2)).await.is_some(),
        "values flow again"
    );
    gw.stop().await;
}
