//! The Home Assistant harness (`fieldlink_tests::homeassistant`) against a real HA core
//! (2024.3.3, from `tests/ha/install.sh`): a hand-written MQTT discovery config and a
//! retained state make an entity in HA, with its unit and device class, that is there
//! again with its state after HA restarts, and a discovered switch whose service call
//! becomes a command on the broker; the same through the gateway's embedded broker; what
//! this HA release makes of discovery keys newer than it (`default_entity_id`) next to
//! ones it knows (`origin`, an `availability` list with `availability_mode: all`); and
//! how it logs the payloads it refuses.

use std::time::{Duration, Instant};

use fieldlink_tests::{
    homeassistant::{self, HomeAssistant},
    model,
    mosquitto::{Broker, BrokerOpts},
    publisher, Gateway, Observer,
};
use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn retain(client: &AsyncClient, topic: &str, payload: impl Into<String>) {
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.into())
        .await
        .expect("publish");
}

fn attr<'a>(state: &'a Value, name: &str) -> &'a Value {
    &state["attributes"][name]
}

/// The discovery config of a temperature sensor whose state is on `state_topic`.
fn sensor_config(state_topic: &str) -> Value {
    json!({
        "name": "Temperature",
        "unique_id": "fieldlink_test_t",
        "state_topic": state_topic,
        "unit_of_measurement": "°C",
        "device_class": "temperature",
        "state_class": "measurement",
        "device": {
            "identifiers": ["fieldlink_test_dev"],
            "name": "Harness Device",
            "manufacturer": "fieldlink",
            "model": "harness"
        }
    })
}

/// Discovery config and retained state published to the broker on `port` make
/// `sensor.harness_device_temperature` in HA; after a restart it is back with its state.
async fn sensor_appears_and_survives_a_restart(port: u16) {
    let t0 = Instant::now();
    let Some(mut ha) = HomeAssistant::start(port) else {
        return;
    };
    eprintln!(
        "Home Assistant ready in {:.1} s (start() took {:.1} s)",
        ha.last_start.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let client = publisher(port).await;
    retain(&client, "fieldlink-test/t/state", "21.5").await;
    retain(
        &client,
        "homeassistant/sensor/test_t/config",
        sensor_config("fieldlink-test/t/state").to_string(),
    )
    .await;

    let id = "sensor.harness_device_temperature";
    let s = ha
        .wait_for_entity(id, WAIT, |s| s["state"] == "21.5")
        .unwrap_or_else(|| {
            panic!(
                "{id} with state 21.5 within {WAIT:?}; HA has: {:?}",
                ha.states()
                    .iter()
                    .map(|s| s["entity_id"].clone())
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(attr(&s, "unit_of_measurement"), "°C", "{s}");
    assert_eq!(attr(&s, "device_class"), "temperature", "{s}");
    assert_eq!(attr(&s, "state_class"), "measurement", "{s}");
    assert_eq!(
        attr(&s, "friendly_name"),
        "Harness Device Temperature",
        "{s}"
    );
    // The device block made a device (the registry is only on the websocket API; a
    // template reaches it over REST).
    let manufacturer = ha
        .render_template(&format!(
            "{{{{ device_attr(device_id('{id}'), 'manufacturer') }}}}"
        ))
        .expect("template");
    assert_eq!(manufacturer, "fieldlink");

    // A new state arrives live.
    retain(&client, "fieldlink-test/t/state", "22.25").await;
    ha.wait_for_entity(id, WAIT, |s| s["state"] == "22.25")
        .expect("the new state within 30 s");

    // A service call becomes a command on the broker.
    let mut commands = Observer::connect(port, "fieldlink-test/relay/set", QoS::AtLeastOnce).await;
    retain(
        &client,
        "homeassistant/switch/test_relay/config",
        json!({
            "name": "Relay",
            "unique_id": "fieldlink_test_relay",
            "state_topic": "fieldlink-test/relay/state",
            "command_topic": "fieldlink-test/relay/set",
            "device": { "identifiers": ["fieldlink_test_dev"], "name": "Harness Device" }
        })
        .to_string(),
    )
    .await;
    retain(&client, "fieldlink-test/relay/state", "OFF").await;
    let relay = "switch.harness_device_relay";
    ha.wait_for_entity(relay, WAIT, |s| s["state"] == "off")
        .expect("the switch, off, within 30 s");
    ha.call_service("switch", "turn_on", &json!({ "entity_id": relay }))
        .expect("switch.turn_on");
    let cmd = commands
        .next_on("fieldlink-test/relay/set", WAIT)
        .await
        .expect("HA publishes the command");
    assert_eq!(cmd.payload, "ON");
    let unknown = ha.call_service("switch", "no_such_service", &json!({}));
    assert!(
        matches!(unknown, Err(homeassistant::HttpError { status: 400, .. })),
        "{unknown:?}"
    );

    let t1 = Instant::now();
    ha.restart();
    eprintln!(
        "Home Assistant restarted in {:.1} s (ready {:.1} s after the new start)",
        t1.elapsed().as_secs_f64(),
        ha.last_start.as_secs_f64()
    );
    let s = ha
        .wait_for_entity(id, WAIT, |s| s["state"] == "22.25")
        .expect("the entity back with its retained state after the restart");
    assert_eq!(attr(&s, "unit_of_measurement"), "°C", "{s}");
    assert!(
        ha.mqtt_problems().is_empty(),
        "HA logged MQTT problems: {:#?}",
        ha.mqtt_problems()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_sensor_via_mosquitto_survives_a_restart() {
    if homeassistant::venv().is_none() {
        return;
    }
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    sensor_appears_and_survives_a_restart(broker.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_sensor_via_the_embedded_broker_survives_a_restart() {
    if homeassistant::venv().is_none() {
        return;
    }
    let gw = Gateway::start(model("buses: []\ndevices: []\n", "")).await;
    sensor_appears_and_survives_a_restart(gw.broker_port()).await;
    gw.stop().await;
}

/// HA 2024.3.3 drops keys it does not know from a discovery payload (its discovery
/// schemas remove extras) instead of refusing the payload: `default_entity_id` (HA
/// 2025.10's successor of `object_id`) is ignored without a word, so the entity id
/// comes from the device and entity names; `object_id` is what this release honours.
/// `origin` and an `availability` list with `availability_mode: all` are understood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_discovery_keys_are_dropped_silently() {
    if homeassistant::venv().is_none() {
        return;
    }
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let Some(ha) = HomeAssistant::start(broker.port) else {
        return;
    };
    let client = publisher(broker.port).await;
    let mut config = sensor_config("fieldlink-test/n/state");
    config["unique_id"] = json!("fieldlink_test_n");
    config["default_entity_id"] = json!("sensor.fieldlink_newer_keys");
    config["origin"] = json!({
        "name": "fieldlink",
        "sw_version": "0.1.0",
        "support_url": "https://example.invalid/fieldlink"
    });
    config["availability"] = json!([
        { "topic": "fieldlink-test/status", "payload_available": "online", "payload_not_available": "offline" },
        { "topic": "fieldlink-test/n/availability" }
    ]);
    config["availability_mode"] = json!("all");
    config["device"]["name"] = json!("Newer Keys");
    // And one with object_id, which this release does honour.
    let mut with_object_id = sensor_config("fieldlink-test/o/state");
    with_object_id["unique_id"] = json!("fieldlink_test_o");
    with_object_id["object_id"] = json!("fieldlink_object_id");
    with_object_id["device"]["name"] = json!("Object Id");

    retain(&client, "fieldlink-test/status", "online").await;
    retain(&client, "fieldlink-test/n/availability", "online").await;
    retain(&client, "fieldlink-test/n/state", "19.0").await;
    retain(&client, "fieldlink-test/o/state", "18.0").await;
    retain(
        &client,
        "homeassistant/sensor/test_n/config",
        config.to_string(),
    )
    .await;
    retain(
        &client,
        "homeassistant/sensor/test_o/config",
        with_object_id.to_string(),
    )
    .await;

    let by_name = "sensor.newer_keys_temperature";
    let s = ha
        .wait_for_entity(by_name, WAIT, |s| s["state"] == "19.0")
        .unwrap_or_else(|| {
            panic!(
                "{by_name} within {WAIT:?}; HA has {:?}; its MQTT log lines: {:#?}",
                ha.states()
                    .iter()
                    .map(|s| s["entity_id"].clone())
                    .collect::<Vec<_>>(),
                ha.run_log()
                    .lines()
                    .filter(|l| l.contains("mqtt"))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(attr(&s, "unit_of_measurement"), "°C");
    assert!(
        ha.state("sensor.fieldlink_newer_keys").is_none(),
        "default_entity_id is not known to 2024.3.3"
    );
    ha.wait_for_entity("sensor.fieldlink_object_id", WAIT, |s| s["state"] == "18.0")
        .expect("object_id sets the entity id");
    // No error or warning about either payload.
    assert!(
        ha.mqtt_problems().is_empty(),
        "HA complained: {:#?}",
        ha.problems("")
    );
    // The origin block was read: HA logs it (info) with the discovery.
    assert!(
        ha.run_log()
            .contains("from external application fieldlink, version: 0.1.0"),
        "the origin is logged with the discovery"
    );

    // availability_mode all: one topic offline is enough for unavailable.
    retain(&client, "fieldlink-test/n/availability", "offline").await;
    ha.wait_for_entity(by_name, WAIT, |s| s["state"] == "unavailable")
        .expect("unavailable when one of the availability topics says offline");
    retain(&client, "fieldlink-test/n/availability", "online").await;
    ha.wait_for_entity(by_name, WAIT, |s| s["state"] == "19.0")
        .expect("available again when all say online");
}

/// What HA 2024.3.3 refuses, and how it says so ([`HomeAssistant::mqtt_problems`]):
/// device-based discovery (`homeassistant/device/<id>/config` with `cmps`, a later
/// release's) is "not supported" (a warning; nothing is made); an invalid value (here a
/// `device_class`) is an ERROR naming the key, the topic and the payload; a payload that
/// is not JSON a warning. And an entity name that repeats the device name is not
/// shortened: the friendly name says it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_discovery_payloads_are_logged() {
    if homeassistant::venv().is_none() {
        return;
    }
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let Some(ha) = HomeAssistant::start(broker.port) else {
        return;
    };
    let client = publisher(broker.port).await;
    let device = json!({ "identifiers": ["fieldlink_refused"], "name": "Refused" });
    retain(&client, "fieldlink-test/r/state", "1").await;
    retain(
        &client,
        "homeassistant/device/fieldlink_refused/config",
        json!({
            "dev": { "ids": ["fieldlink_refused"], "name": "Refused" },
            "o": { "name": "fieldlink" },
            "cmps": { "t": { "p": "sensor", "unique_id": "fieldlink_cmps_t", "state_topic": "fieldlink-test/r/state", "name": "Cmps" } }
        })
        .to_string(),
    )
    .await;
    retain(
        &client,
        "homeassistant/sensor/test_bad/config",
        json!({ "name": "Bad", "unique_id": "fieldlink_bad", "state_topic": "fieldlink-test/r/state", "device_class": "bogus", "device": device }).to_string(),
    )
    .await;
    retain(
        &client,
        "homeassistant/sensor/test_nojson/config",
        "not json",
    )
    .await;
    retain(
        &client,
        "homeassistant/sensor/test_twice/config",
        json!({ "name": "Refused Level", "unique_id": "fieldlink_twice", "state_topic": "fieldlink-test/r/state", "device": device }).to_string(),
    )
    .await;

    let twice = ha
        .wait_for_entity("sensor.refused_refused_level", WAIT, |s| s["state"] == "1")
        .expect("the entity whose name repeats the device's");
    assert_eq!(attr(&twice, "friendly_name"), "Refused Refused Level");
    let problems = |text: &str| ha.mqtt_problems().into_iter().any(|l| l.contains(text));
    let deadline = Instant::now() + WAIT;
    while !(problems("Integration device is not supported")
        && problems("Unable to parse JSON test_nojson")
        && problems(
            "when processing MQTT discovery message topic: 'homeassistant/sensor/test_bad/config'",
        ))
    {
        assert!(
            Instant::now() < deadline,
            "all three refusals logged; HA's MQTT problems: {:#?}",
            ha.mqtt_problems()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(problems("@ data['device_class']"), "the key is named");
    let entities: Vec<Value> = ha
        .states()
        .into_iter()
        .map(|s| s["entity_id"].clone())
        .collect();
    assert!(
        !entities.contains(&json!("sensor.refused_cmps"))
            && !entities.contains(&json!("sensor.refused_bad")),
        "neither refused payload made an entity: {entities:?}"
    );
}
