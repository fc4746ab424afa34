//! Status topic and Last Will: `online` on connect; the broker publishes the retained
//! `offline` Will when the gateway's connection dies without DISCONNECT; `online` again
//! after the gateway reconnects (with its state republished); `offline` on clean stop.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer, Proxy};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_fires_when_the_connection_dies_and_online_returns() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[42]);
    let sim_port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim_port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 200ms\n    points:\n      - {{ topic: casa/x, table: holding, address: 0 }}\n"
    );
    let mut m = model(&mapping, "");
    let broker_port = m.mqtt.port;
    // The gateway's client goes through a proxy we can cut.
    let proxy = Proxy::start(broker_port).await;
    m.mqtt.port = proxy.port;
    let gw = Gateway::start(m).await;
    let mut obs = Observer::connect(broker_port, "#", QoS::AtLeastOnce).await;
    assert!(
        obs.wait_seen("fieldlink/t/status", "online", Duration::from_secs(10))
            .await
    );
    assert!(obs.wait_seen("casa/x", "42", Duration::from_secs(5)).await);

    // Connection dies, reconnection impossible for a while.
    proxy.set_accepting(false);
    proxy.cut();
    assert!(
        obs.wait_payload("fieldlink/t/status", "offline", Duration::from_secs(10))
            .await,
        "the broker publishes the Last Will"
    );
    let mut fresh = Observer::connect(broker_port, "fieldlink/t/status", QoS::AtMostOnce).await;
    let snap = fresh.snapshot(Duration::from_millis(300)).await;
    assert_eq!(snap["fieldlink/t/status"].payload, "offline");
    assert!(snap["fieldlink/t/status"].retain, "the Will is retained");

    // While disconnected the value changes; after reconnecting the gateway republishes.
    dev.set_registers(Table::Holding, 0, &[43]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_accepting(true);
    assert!(
        obs.wait_payload("fieldlink/t/status", "online", Duration::from_secs(40))
            .await,
        "online again after reconnect"
    );
    assert!(
        obs.wait_payload("casa/x", "43", Duration::from_secs(5))
            .await
    );
    let mut fresh = Observer::connect(broker_port, "#", QoS::AtMostOnce).await;
    let snap = fresh.snapshot(Duration::from_millis(300)).await;
    assert_eq!(snap["casa/x"].payload, "43");
    assert_eq!(snap["fieldlink/t/d/availability"].payload, "online");

    gw.stop().await;
    assert!(
        obs.wait_payload("fieldlink/t/status", "offline", Duration::from_secs(5))
            .await,
        "clean shutdown publishes offline"
    );
    let mut fresh = Observer::connect(broker_port, "fieldlink/#", QoS::AtMostOnce).await;
    let snap = fresh.snapshot(Duration::from_millis(300)).await;
    assert_eq!(snap["fieldlink/t/status"].payload, "offline");
    assert_eq!(snap["fieldlink/t/d/availability"].payload, "offline");
}
