//! Status topic and retained state across a broker rebuild: `online` at start; when the
//! embedded broker fails and the supervisor rebuilds it (its retained store empty), the
//! gateway publishes `online` and its whole retained state into the new broker, values
//! that changed meanwhile included; `offline` (retained) on a clean stop.
//!
//! The gateway is not a network client of its embedded broker (it is linked in process),
//! so there is no connection of its own that could die while the process lives; the
//! Last Will of the upstream connection is tested in `upstream.rs`.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, model, Gateway, Observer};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_republished_into_a_rebuilt_broker_and_offline_on_stop() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[42, 7]);
    let sim_port = server.spawn_local().await.expect("sim");
    // Two points: one changes while the broker is down, one never changes (an
    // every_poll point whose value stays the same is still retained by the new broker).
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim_port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    points:\n      - {{ topic: casa/x, table: holding, address: 0 }}\n      - {{ topic: casa/y, table: holding, address: 1, publish: every_poll }}\n"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let port = gw.broker_port();
    let mut obs = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    assert!(
        obs.wait_seen("fieldlink/t/status", "online", Duration::from_secs(10))
            .await
    );
    assert!(obs.wait_seen("casa/x", "42", Duration::from_secs(5)).await);
    assert!(obs.wait_seen("casa/y", "7", Duration::from_secs(5)).await);

    // The broker fails; the value changes before the new broker serves.
    let broker = gw.stats.broker.clone();
    dev.set_registers(Table::Holding, 0, &[43]);
    broker.fault.notify_one();
    assert!(
        eventually(Duration::from_secs(5), || broker.restarts.load(Relaxed)
            == 1)
        .await,
        "the supervisor rebuilt the broker"
    );
    let mut fresh = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    assert!(
        fresh
            .wait_payload("casa/x", "43", Duration::from_secs(10))
            .await,
        "the changed value reaches the new broker"
    );
    // A subscriber arriving now gets every retained message from the new broker.
    let mut late = Observer::connect(port, "#", QoS::AtMostOnce).await;
    let got = late.collect(Duration::from_millis(300)).await;
    for (topic, payload) in [
        ("fieldlink/t/status", "online"),
        ("fieldlink/t/d/availability", "online"),
        ("casa/x", "43"),
        ("casa/y", "7"),
    ] {
        assert!(
            got.iter()
                .any(|m| m.topic == topic && m.payload == payload && m.retain),
            "{topic} = {payload} not retained by the new broker: {got:?}"
        );
    }

    gw.stop().await;
    assert!(
        late.wait_payload("fieldlink/t/status", "offline", Duration::from_secs(5))
            .await,
        "clean shutdown publishes offline"
    );
}
