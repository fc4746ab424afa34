//! Against a real Home Assistant (core 2024.3.3 from tests/ha/install.sh; the harness is
//! `fieldlink_tests::homeassistant`): what a user of Home Assistant sees when fieldlink
//! runs next to it. Entities are found by what HA shows (friendly name = device name +
//! entity name), as a user would find them.
//!
//! Without the venv the tests skip, except under `CI`, where they fail.

use std::{collections::HashMap, time::Duration};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{homeassistant::HomeAssistant, model, Gateway, Observer};
use rumqttc::QoS;
use serde_json::Value;

/// An entity HA should show: its domain and friendly name, from a discovery config.
#[derive(Clone, Debug)]
struct Expected {
    domain: String,
    friendly: String,
}

/// The discovery configs retained on the broker, as HA will read them.
async fn expected_entities(port: u16, at_least: usize) -> Vec<Expected> {
    let mut o = Observer::connect(port, "homeassistant/#", QoS::AtLeastOnce).await;
    let mut configs: HashMap<String, Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while configs.len() < at_least && tokio::time::Instant::now() < deadline {
        if let Some(m) = o
            .next_matching(|m| m.topic.ends_with("/config"), Duration::from_secs(2))
            .await
        {
            let v: Value = serde_json::from_str(&m.payload).expect("config JSON");
            configs.insert(m.topic, v);
        }
    }
    assert!(
        configs.len() >= at_least,
        "{} configs retained",
        configs.len()
    );
    configs
        .iter()
        .map(|(topic, c)| Expected {
            domain: topic
                .split('/')
                .nth(1)
                .expect("component level")
                .to_string(),
            friendly: format!(
                "{} {}",
                c["device"]["name"].as_str().expect("device name"),
                c["name"].as_str().expect("entity name")
            ),
        })
        .collect()
}

/// The state object of the entity of `domain` named `friendly`, if HA has it.
fn find<'a>(states: &'a [Value], domain: &str, friendly: &str) -> Option<&'a Value> {
    states.iter().find(|s| {
        s["attributes"]["friendly_name"] == friendly
            && s["entity_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{domain}.")))
    })
}

/// Entities of `want` that HA does not show with a real state yet.
fn missing<'a>(states: &[Value], want: &'a [Expected]) -> Vec<&'a Expected> {
    want.iter()
        .filter(|e| {
            !find(states, &e.domain, &e.friendly).is_some_and(|s| {
                // A button has no state until pressed; everything else has a value.
                let st = s["state"].as_str().unwrap_or("");
                e.domain == "button" || (st != "unavailable" && st != "unknown")
            })
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_house_appears_in_home_assistant_works_from_it_and_survives_its_restart() {
    let (trigger, sd) = fieldlink::shutdown::channel();
    let (bound_tx, mut bound) = tokio::sync::watch::channel(None);
    let demo = tokio::spawn(fieldlink::demo::run(
        "127.0.0.1:0".parse().expect("addr"),
        sd,
        Some(bound_tx),
    ));
    let port = bound
        .wait_for(Option::is_some)
        .await
        .expect("the demo's broker listens")
        .expect("bound")
        .mqtt
        .port();
    let want = expected_entities(port, 35).await;
    let Some(ha) = blocking(move || HomeAssistant::start(port)).await else {
        eprintln!("Home Assistant not installed (tests/ha/install.sh): skipped");
        return;
    };
    let ha = std::sync::Arc::new(ha);
    let mut values = Observer::connect(port, "casa/#", QoS::AtLeastOnce).await;
    // Every entity appears with a value.
    let (h, w) = (ha.clone(), want.clone());
    let states = blocking(move || {
        h.wait_for(Duration::from_secs(60), |s| missing(s, &w).is_empty())
            .unwrap_or_else(|| {
                let s = h.states();
                panic!(
                    "entities missing in HA: {:?}\nHA problems: {:?}",
                    missing(&s, &w),
                    h.mqtt_problems()
                )
            })
    })
    .await;
    // The temperature: a number, its unit and device class as the mapping implies.
    let t = find(&states, "sensor", "Sensor térreo Temperatura").expect("temperature entity");
    assert_eq!(t["attributes"]["unit_of_measurement"], "°C");
    assert_eq!(t["attributes"]["device_class"], "temperature");
    assert_eq!(t["attributes"]["state_class"], "measurement");
    let celsius: f64 = t["state"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a number");
    assert!((0.0..50.0).contains(&celsius), "{celsius}");
    let e = find(&states, "sensor", "Medidor de energia Consumo").expect("energy entity");
    assert_eq!(e["attributes"]["device_class"], "energy");
    assert_eq!(e["attributes"]["state_class"], "total_increasing");
    // The device as the mapping names it: manufacturer, model and area in HA's registry.
    let meter = e["entity_id"].as_str().expect("entity id").to_string();
    let (h, id) = (ha.clone(), meter.clone());
    let (maker, area) = blocking(move || {
        (
            h.render_template(&format!("{{{{ device_attr(device_id('{id}'), 'manufacturer') }}}} {{{{ device_attr(device_id('{id}'), 'model') }}}}"))
                .expect("template"),
            h.render_template(&format!("{{{{ area_name('{id}') }}}}"))
                .expect("template"),
        )
    })
    .await;
    assert_eq!(maker.trim(), "Eastron SDM120");
    assert_eq!(area.trim(), "Quadro");
    assert!(
        ha.mqtt_problems().is_empty(),
        "HA complained about our configs: {:?}",
        ha.mqtt_problems()
    );
    // A switch turned on in HA reaches the device: its read-back comes on MQTT and HA
    // shows it on.
    let light = find(&states, "switch", "Módulo de relés Luz")
        .and_then(|s| s["entity_id"].as_str())
        .expect("the garage light is a switch")
        .to_string();
    let (h, l) = (ha.clone(), light.clone());
    blocking(move || {
        h.call_service("switch", "turn_on", &serde_json::json!({ "entity_id": l }))
            .expect("switch.turn_on")
    })
    .await;
    assert!(
        values
            .wait_payload("casa/garagem/luz", "ON", Duration::from_secs(10))
            .await,
        "the device's read-back after HA's command"
    );
    let (h, l) = (ha.clone(), light.clone());
    assert!(
        blocking(move || h
            .wait_for_entity(&l, Duration::from_secs(10), |s| s["state"] == "on")
            .is_some())
        .await,
        "HA shows the light on"
    );
    // HA restarts: every entity comes back with its value (retained configs and states,
    // and the gateway's answer to HA's birth message).
    let mut ha = std::sync::Arc::try_unwrap(ha).unwrap_or_else(|_| panic!("one owner"));
    let w = want.clone();
    let ha = blocking(move || {
        ha.restart();
        let back = ha.wait_for(Duration::from_secs(60), |s| missing(s, &w).is_empty());
        assert!(
            back.is_some(),
            "after HA's restart, missing: {:?}",
            missing(&ha.states(), &w)
        );
        let light = find(&ha.states(), "switch", "Módulo de relés Luz").cloned();
        assert_eq!(light.expect("light")["state"], "on", "its state survived");
        ha
    })
    .await;
    drop(ha);
    trigger.trigger();
    demo.await.expect("demo task").expect("demo ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_point_device_appears_whole_and_goes_unavailable_when_offline() {
    const N: u16 = 150;
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let values: Vec<u16> = (0..N).map(|i| 1000 + i).collect();
    dev.set_registers(Table::Holding, 0, &values);
    let sim_port = server.spawn_local().await.expect("simulator");
    let mut mapping = format!(
        "buses:\n  - {{ id: plc, kind: modbus_tcp, host: 127.0.0.1, port: {sim_port}, timeout: 200ms }}\ndevices:\n  - id: meter\n    bus: plc\n    poll_interval: 200ms\n    offline_after: 2\n    max_backoff: 1s\n    points:\n"
    );
    for i in 0..N {
        mapping.push_str(&format!(
            "      - {{ topic: t/p{i}, table: holding, address: {i} }}\n"
        ));
    }
    let gw = Gateway::start(model(&mapping, "")).await;
    let port = gw.broker_port();
    let want: Vec<Expected> = expected_entities(port, usize::from(N) + 3)
        .await
        .into_iter()
        .filter(|e| e.friendly.starts_with("meter "))
        .collect();
    assert_eq!(want.len(), usize::from(N));
    let Some(ha) = blocking(move || HomeAssistant::start(port)).await else {
        eprintln!("Home Assistant not installed (tests/ha/install.sh): skipped");
        return;
    };
    let ha = std::sync::Arc::new(ha);
    let (h, w) = (ha.clone(), want.clone());
    let states = blocking(move || {
        h.wait_for(Duration::from_secs(60), |s| missing(s, &w).is_empty())
            .unwrap_or_else(|| {
                let s = h.states();
                panic!("{} of {N} entities missing", missing(&s, &w).len())
            })
    })
    .await;
    for i in [0, 75, 149] {
        let s = find(&states, "sensor", &format!("meter P{i}")).expect("entity");
        assert_eq!(s["state"], (1000 + i).to_string(), "the register's value");
    }
    // The device stops answering: every entity goes unavailable.
    dev.set_responding(false);
    let (h, w) = (ha.clone(), want.clone());
    let all_unavailable = blocking(move || {
        h.wait_for(Duration::from_secs(30), |s| {
            w.iter().all(|e| {
                find(s, &e.domain, &e.friendly).is_some_and(|x| x["state"] == "unavailable")
            })
        })
        .is_some()
    })
    .await;
    assert!(
        all_unavailable,
        "an offline device's entities are unavailable"
    );
    // Back: every entity has its value again.
    dev.set_responding(true);
    let (h, w) = (ha.clone(), want.clone());
    assert!(
        blocking(move || h
            .wait_for(Duration::from_secs(30), |s| missing(s, &w).is_empty())
            .is_some())
        .await,
        "values back after the device answers again"
    );
    drop(ha);
    gw.stop().await;
}
