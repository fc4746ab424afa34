//! One JSON object per device (`json_topic`): a new subscriber (`mosquitto_sub`) finds the
//! device's object retained, with every point's last value under its key (the last level
//! of its topic, or `key:`), numbers as numbers, named values as strings, points never
//! read left out; it is published again after a poll that changed a value, not after
//! polls that only repeated values (`every_poll`); upstream gets it under the prefix; a
//! reload that removes the device clears it.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use fieldlink::{config, Hooks, Reloads};
use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually, model, model_from,
    mosquitto::{self, Broker, BrokerOpts},
    Gateway, Observer,
};
use rumqttc::QoS;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const JSON_TOPIC: &str = "casa/medidor/json";

/// A meter: power (key by default `potencia`), energy ×0.1 with `key: kWh`, a state with
/// named values published after every poll, and a point at an address the device says
/// does not exist (never read).
async fn meter() -> (Arc<SimDevice>, String) {
    let sim = SimServer::new();
    let dev = sim.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[1250, 0, 53217, 1]);
    dev.add_holes(Table::Holding, [20]);
    let port = sim.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: medidor\n    bus: b\n    poll_interval: 100ms\n    max_gap: 0\n    json_topic: {JSON_TOPIC}\n    points:\n      - {{ topic: casa/medidor/potencia, table: holding, address: 0 }}\n      - {{ topic: casa/medidor/energia, table: holding, address: 1, type: u32, scale: 0.1, key: kWh }}\n      - {{ topic: casa/medidor/estado, table: holding, address: 3, values: {{ON: 1, OFF: 0}}, publish: every_poll }}\n      - {{ topic: casa/medidor/falta, table: holding, address: 20 }}\n"
    );
    (dev, mapping)
}

/// The retained message on `topic` as a new `mosquitto_sub` gets it (`None`: none
/// within 5 s).
async fn retained(sub: &Path, port: u16, topic: &str) -> Option<String> {
    let (sub, topic) = (sub.to_path_buf(), topic.to_string());
    let out = tokio::task::spawn_blocking(move || {
        mosquitto::run(
            &sub,
            port,
            &["-t", &topic, "-C", "1", "-W", "5", "--retained-only"],
        )
    })
    .await
    .expect("join");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// `retained` until `ok` holds for it (a poll may not have happened yet).
async fn retained_until(sub: &Path, port: u16, topic: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + T;
    loop {
        let got = retained(sub, port, topic)
            .await
            .and_then(|s| serde_json::from_str::<Value>(&s).ok());
        match got {
            Some(v) if ok(&v) => return v,
            _ if std::time::Instant::now() > deadline => {
                panic!("no retained object on {topic} as expected: {got:?}")
            }
            _ => tokio::task::yield_now().await,
        }
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_is_retained_after_a_change_and_not_sent_again_without_one() {
    let Some(sub) = mosquitto::tool("mosquitto_sub") else {
        return;
    };
    let (dev, mapping) = meter().await;
    let gw = Gateway::start(model(&mapping, "")).await;
    let port = gw.broker_port();

    let v = retained_until(&sub, port, JSON_TOPIC, |v| v.get("potencia").is_some()).await;
    let mut k = keys(&v);
    k.sort_unstable();
    assert_eq!(k, ["estado", "kWh", "potencia", "ts"], "{v}");
    // As written: the points' order, the timestamp last.
    let text = retained(&sub, port, JSON_TOPIC).await.expect("retained");
    let at = |k: &str| text.find(&format!("\"{k}\":")).expect(k);
    assert!(
        at("potencia") < at("kWh") && at("kWh") < at("estado") && at("estado") < at("ts"),
        "{text}"
    );
    assert_eq!(v["potencia"], serde_json::json!(1250));
    assert_eq!(v["kWh"], serde_json::json!(5321.7));
    assert_eq!(v["estado"], serde_json::json!("ON"));
    assert!(
        v.get("falta").is_none(),
        "a point never read is left out: {v}"
    );
    let ts = v["ts"].as_str().expect("ts is text");
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");

    // Polls that only repeat values (`estado` is published after every poll): no object.
    let mut obs = Observer::connect(port, "casa/medidor/#", QoS::AtMostOnce).await;
    let seen = obs.seen.clone();
    let count = |topic: &str| {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|m| m.topic == topic)
            .count()
    };
    assert!(
        eventually(T, || count("casa/medidor/estado") >= 6).await,
        "polls go on"
    );
    assert_eq!(
        count(JSON_TOPIC),
        1,
        "only the retained object, nothing after polls without a change"
    );

    // A change: the object again, with the new value and the others as they were.
    dev.set_registers(Table::Holding, 0, &[1300]);
    let m = obs
        .next_matching(|m| m.topic == JSON_TOPIC && m.payload.contains("1300"), T)
        .await
        .expect("the object after the change");
    let live: Value = serde_json::from_str(&m.payload).expect("JSON");
    assert_eq!(live["potencia"], serde_json::json!(1300));
    assert_eq!(live["kWh"], serde_json::json!(5321.7));
    assert_eq!(count(JSON_TOPIC), 2, "once per change");
    let v = retained_until(&sub, port, JSON_TOPIC, |v| v["potencia"] == 1300).await;
    assert_eq!(v["estado"], serde_json::json!("ON"));
    assert_eq!(
        gw.stats
            .device_by_id("medidor")
            .map(|d| d.failed_polls.load(Relaxed)),
        Some(0)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_object_under_its_prefix() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let Some(sub) = mosquitto::tool("mosquitto_sub") else {
        return;
    };
    let (_dev, mapping) = meter().await;
    let state = tempfile::tempdir().expect("tempdir");
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n  upstream:\n    url: mqtt://127.0.0.1:{}\n    prefix: sites/a/\n",
        state.path().display(),
        broker.port
    );
    let gw = Gateway::start(model_from(&gateway, &mapping)).await;
    let up = retained_until(&sub, broker.port, &format!("sites/a/{JSON_TOPIC}"), |v| {
        v.get("potencia").is_some()
    })
    .await;
    let local = retained_until(&sub, gw.broker_port(), JSON_TOPIC, |_| true).await;
    assert_eq!(up["potencia"], local["potencia"]);
    assert_eq!(up["kWh"], serde_json::json!(5321.7));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_removed_by_a_reload_has_its_object_cleared() {
    let Some(sub) = mosquitto::tool("mosquitto_sub") else {
        return;
    };
    let (_dev, mapping) = meter().await;
    let gateway = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n";
    let text = Arc::new(Mutex::new(mapping.clone()));
    let files = text.clone();
    let load: fieldlink::Loader = Arc::new(move || {
        let mapping = files.lock().expect("lock").clone();
        config::check_sources(Path::new("/gateway.yaml"), gateway, |_, _| {
            vec![(PathBuf::from("mapping.yaml"), mapping.clone())]
        })
    });
    let (reload, requests) = tokio::sync::mpsc::channel(1);
    let hooks = Hooks {
        reloads: Some(Reloads { requests, load }),
        ..Hooks::default()
    };
    let gw = Gateway::start_with(model_from(gateway, &mapping), hooks).await;
    let port = gw.broker_port();
    retained_until(&sub, port, JSON_TOPIC, |v| v.get("potencia").is_some()).await;
    let mut obs = Observer::connect(port, JSON_TOPIC, QoS::AtMostOnce).await;

    *text.lock().expect("lock") = "buses: []\ndevices: []\n".into();
    reload.send(()).await.expect("reload");
    assert!(
        obs.next_matching(|m| m.payload.is_empty(), T)
            .await
            .is_some(),
        "an empty retained message clears the object"
    );
    assert_eq!(
        retained(&sub, port, JSON_TOPIC).await,
        None,
        "nothing retained"
    );
    gw.stop().await;
}
