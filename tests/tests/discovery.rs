//! Home Assistant discovery on the embedded broker, as an MQTT client sees it: the
//! retained configs are there before any value; Home Assistant's `online` on
//! `homeassistant/status` makes the gateway publish the configs and then the states again
//! (configs first); no client may replace or clear a config; nothing is republished
//! without that. (A real Home Assistant: tests/tests/homeassistant.rs.)

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;

const CONFIG: &str = "homeassistant/sensor/fieldlink_t_caldeira_casa_caldeira_temperatura/config";

async fn house() -> (Gateway, std::sync::Arc<SimDevice>) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Input, 0, &[215]);
    let port = server.spawn_local().await.expect("simulator");
    let m = model(
        &format!(
            "buses:\n  - {{ id: plc, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: caldeira\n    bus: plc\n    poll_interval: 100ms\n    points:\n      - {{ topic: casa/caldeira/temperatura, table: input, address: 0, scale: 0.1, precision: 1, unit: \"°C\" }}\n      - {{ topic: casa/caldeira/ligada, table: coil, address: 0, writable: true }}\n"
        ),
        "",
    );
    (Gateway::start(m).await, dev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_retained_and_republished_configs_first_when_home_assistant_comes_online() {
    let (gw, _dev) = house().await;
    let port = gw.broker_port();
    // A late subscriber (Home Assistant starting after the gateway) finds every config
    // retained.
    let mut ha = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    let config = ha
        .next_on(CONFIG, Duration::from_secs(10))
        .await
        .expect("the temperature's config, retained");
    assert!(config.retain);
    let c: serde_json::Value = serde_json::from_str(&config.payload).expect("JSON config");
    assert_eq!(c["state_topic"], "casa/caldeira/temperatura");
    assert_eq!(c["device_class"], "temperature");
    assert_eq!(c["unit_of_measurement"], "°C");
    assert_eq!(
        c["unique_id"],
        "fieldlink_t_caldeira_casa_caldeira_temperatura"
    );
    assert_eq!(c["availability_mode"], "all");
    assert_eq!(c["device"]["identifiers"][0], "fieldlink_t_caldeira");
    let switch = seen_payload(
        &ha,
        "homeassistant/switch/fieldlink_t_caldeira_casa_caldeira_ligada/config",
    )
    .await
    .expect("the writable coil's config: a switch");
    let s: serde_json::Value = serde_json::from_str(&switch).expect("JSON config");
    assert_eq!(s["command_topic"], "casa/caldeira/ligada/set");
    assert_eq!(
        (&s["payload_on"], &s["payload_off"]),
        (&"true".into(), &"false".into())
    );
    // Seen at any time since subscribing: a broker delivers retained messages in its own
    // order, so the value may have come before the config waited for above.
    assert!(
        ha.wait_seen("casa/caldeira/temperatura", "21.5", Duration::from_secs(10))
            .await
    );
    // Nothing is sent again while Home Assistant says nothing (values do not change).
    // Every config arrived once (the retained delivery), none twice.
    let _ = ha.collect(Duration::from_millis(1500)).await;
    let twice: Vec<String> = {
        let seen = ha.seen.lock().expect("lock");
        let mut count = std::collections::HashMap::<&str, usize>::new();
        for m in seen
            .iter()
            .filter(|m| m.topic.starts_with("homeassistant/"))
        {
            *count.entry(m.topic.as_str()).or_default() += 1;
        }
        count
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(t, _)| t.to_string())
            .collect()
    };
    assert!(
        twice.is_empty(),
        "no config republished without a reason: {twice:?}"
    );
    // Home Assistant restarted: its birth message.
    let client = publisher(port).await;
    client
        .publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await
        .expect("publish the birth message");
    let after = ha
        .collect_until(
            |m| m.topic == "casa/caldeira/temperatura",
            Duration::from_secs(10),
        )
        .await;
    let first_config = after.iter().position(|m| m.topic == CONFIG);
    let state = after
        .iter()
        .position(|m| m.topic == "casa/caldeira/temperatura");
    assert!(
        matches!((first_config, state), (Some(c), Some(s)) if c < s),
        "configs again, then the states: {:?}",
        after.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    gw.stop().await;
}

/// The payload `topic` carried, as the observer saw it (waiting up to 5 s for it).
async fn seen_payload(o: &Observer, topic: &str) -> Option<String> {
    let find = || {
        o.seen
            .lock()
            .expect("lock")
            .iter()
            .find(|m| m.topic == topic)
            .map(|m| m.payload.clone())
    };
    fieldlink_tests::eventually(Duration::from_secs(5), || find().is_some()).await;
    find()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_replace_or_clear_a_config() {
    let (gw, _dev) = house().await;
    let port = gw.broker_port();
    let mut o = Observer::connect(port, CONFIG, QoS::AtLeastOnce).await;
    let before = o
        .next_on(CONFIG, Duration::from_secs(10))
        .await
        .expect("config");
    let client = publisher(port).await;
    client
        .publish(CONFIG, QoS::AtLeastOnce, true, "")
        .await
        .expect("publish");
    client
        .publish(CONFIG, QoS::AtLeastOnce, true, "{\"name\":\"x\"}")
        .await
        .expect("publish");
    // A new subscriber still gets the gateway's config.
    let mut late = Observer::connect(port, CONFIG, QoS::AtLeastOnce).await;
    let got = late
        .next_on(CONFIG, Duration::from_secs(5))
        .await
        .expect("config still retained");
    assert_eq!(got.payload, before.payload);
    assert!(o.collect(Duration::from_millis(500)).await.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_off_publishes_no_config() {
    let m = model(
        "buses:\n  - { id: io, kind: gpio, backend: simulated }\ndevices:\n  - { id: pi, bus: io, points: [{ topic: casa/porta, pin: 4 }] }\n",
        "homeassistant: { enabled: false }\n",
    );
    let gw = Gateway::start(m).await;
    let mut o = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    assert!(
        o.wait_payload("casa/porta", "false", Duration::from_secs(5))
            .await
    );
    let all = o.collect(Duration::from_millis(500)).await;
    let none = {
        let seen = o.seen.lock().expect("lock");
        seen.iter()
            .chain(all.iter())
            .all(|m| !m.topic.starts_with("homeassistant/"))
    };
    assert!(none, "no discovery with `enabled: false`");
    gw.stop().await;
}
