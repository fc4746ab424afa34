//! Device profiles (#25), end to end: the gateway loads its files from disk (`profiles:`
//! a directory of the user's own, in a temporary directory of this test), polls a
//! tokio-modbus server of this test on 127.0.0.1 port 0 (`SimServer`) and publishes on
//! its embedded broker. A device using a profile with `exclude`, `overrides` and points of
//! its own publishes exactly the topics it should, with the values the registers hold;
//! `scale_register` (SunSpec scale factors) read in the same request as their values,
//! applied, changed, unusable, and on `/get`.

use std::{collections::BTreeMap, path::Path, time::Duration};

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{capture_logs, eventually, logged, publisher, Gateway, Observer};
use rumqttc::QoS;

/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(10);

/// The user's own profile: a meter with big-endian floats, a scaled i16 and a counter.
const PROFILE: &str = "\
# The user's own profile, in the same syntax as the shipped ones.
profile:
  name: acme-pm10
  manufacturer: Acme
  model: PM10
  kind: energy_meter
  unit: 7
points:
  - { key: voltage, table: input, address: 0, type: f32, unit: V }
  - { key: current, table: input, address: 6, type: f32, word_order: CDAB, unit: A }
  - { key: power, table: input, address: 12, type: i16, scale: 0.1, unit: W }
  - { key: frequency, table: input, address: 70, type: f32, unit: Hz }
  - { key: energy_import, table: input, address: 72, type: u32, unit: kWh }
";

/// Write `gateway.yaml` (with `gateway_extra`), `mapping.yaml` and, when given, the
/// profile in `profiles/` into `dir`, and load them as `fieldlink run` does.
fn load(dir: &Path, gateway_extra: &str, mapping: &str, profile: Option<&str>) -> fieldlink::Model {
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n{gateway_extra}"
    );
    std::fs::write(dir.join("gateway.yaml"), gateway).expect("write gateway.yaml");
    std::fs::write(dir.join("mapping.yaml"), mapping).expect("write mapping.yaml");
    if let Some(p) = profile {
        std::fs::create_dir_all(dir.join("profiles")).expect("mkdir profiles");
        std::fs::write(dir.join("profiles/acme-pm10.yaml"), p).expect("write profile");
    }
    match fieldlink::config::load(&dir.join("gateway.yaml")) {
        Ok(c) => {
            assert!(c.warnings.is_empty(), "warnings: {:?}", c.warnings);
            c.model
        }
        Err(d) => panic!(
            "invalid: {}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn f32_regs(v: f32, order: WordOrder) -> Vec<u16> {
    codec::encode(&Value::Float(f64::from(v)), ValueType::F32, order).expect("encode")
}

/// The latest payload of every topic under `prefix` the observer has seen.
fn latest(obs: &Observer, prefix: &str) -> BTreeMap<String, String> {
    obs.seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.topic.starts_with(prefix))
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect()
}

/// Wait until `dev` has answered `polls` more polls than now (each poll is at least one
/// request), so that whatever those polls publish has been published.
async fn polls(dev: &SimDevice, polls: u64) {
    let start = dev.request_count();
    assert!(
        eventually(T, || dev.request_count() >= start + 2 * polls).await,
        "the device is not polled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_profile_with_exclude_overrides_and_own_points_publishes_exactly_its_topics() {
    let server = SimServer::new();
    // Unit 7: the profile's, the device sets none.
    let dev = server.add(7, SimDevice::new());
    dev.set_registers(Table::Input, 0, &f32_regs(230.5, WordOrder::Abcd));
    dev.set_registers(Table::Input, 6, &f32_regs(4.25, WordOrder::Cdab));
    dev.set_registers(Table::Input, 12, &[1234]);
    dev.set_registers(Table::Input, 70, &f32_regs(50.0, WordOrder::Abcd));
    dev.set_registers(Table::Input, 72, &[0, 1000]);
    dev.set_registers(Table::Holding, 100, &[42]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "\
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}
devices:
  - id: medidor
    bus: b
    poll_interval: 200ms
    profile: acme-pm10
    topic_prefix: casa/energia/medidor
    exclude: [energy_import]
    overrides:
      power: {{ precision: 2 }}
      frequency: {{ topic: casa/energia/frequencia, payload: json }}
    points:
      - {{ topic: casa/energia/medidor/modo, table: holding, address: 100 }}
"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let model = load(
        dir.path(),
        "profiles: [profiles]\n",
        &mapping,
        Some(PROFILE),
    );
    let gw = Gateway::start(model).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("casa/energia/medidor/modo", "42", T).await);
    assert!(
        obs.wait_seen("casa/energia/medidor/power", "123.40", T)
            .await
    );
    polls(&dev, 2).await;
    let values = latest(&obs, "casa/");
    let frequency = values
        .get("casa/energia/frequencia")
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .unwrap_or_else(|| panic!("no JSON frequency in {values:?}"));
    assert_eq!(frequency["value"], 50.0);
    assert_eq!(frequency["unit"], "Hz");
    let plain: BTreeMap<&str, &str> = values
        .iter()
        .filter(|(t, _)| *t != "casa/energia/frequencia")
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    // energy_import is excluded: no topic; frequency is published where the override says.
    assert_eq!(
        plain,
        BTreeMap::from([
            ("casa/energia/medidor/voltage", "230.5"),
            ("casa/energia/medidor/current", "4.25"),
            ("casa/energia/medidor/power", "123.40"),
            ("casa/energia/medidor/modo", "42"),
        ])
    );
    // Home Assistant's device is the profile's manufacturer and model.
    let config = latest(&obs, "homeassistant/")
        .into_iter()
        .find(|(t, _)| t.contains("casa_energia_medidor_voltage"))
        .map(|(_, p)| serde_json::from_str::<serde_json::Value>(&p).expect("json"))
        .expect("a discovery config for the voltage");
    assert_eq!(config["device"]["manufacturer"], "Acme", "{config}");
    assert_eq!(config["device"]["model"], "PM10", "{config}");
    gw.stop().await;
}

/// A SunSpec-like inverter: W at holding 83 with its W_SF at 84 (one request), the DC
/// power at 100 with its factor far away at 300 (another request), and a value whose
/// factor says "not implemented".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_registers_are_read_with_their_values_and_applied() {
    capture_logs();
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 83, &[1234, (-1i16) as u16]);
    dev.set_registers(Table::Holding, 71, &[567, 0, 0, 0, (-2i16) as u16]);
    dev.set_registers(Table::Holding, 100, &[250]);
    dev.set_registers(Table::Holding, 300, &[2]);
    dev.set_registers(Table::Holding, 400, &[99, 0x8000]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "\
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}
devices:
  - id: inversor
    bus: b
    poll_interval: 200ms
    points:
      - {{ topic: casa/solar/potencia, table: holding, address: 83, type: i16, unit: W, scale_register: 84 }}
      - {{ topic: casa/solar/corrente, table: holding, address: 71, unit: A, scale_register: 75 }}
      - {{ topic: casa/solar/dc, table: holding, address: 100, type: i16, unit: W, scale_register: 300 }}
      - {{ topic: casa/solar/reativa, table: holding, address: 400, type: i16, scale_register: 401 }}
"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = Gateway::start(load(dir.path(), "", &mapping, None)).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("casa/solar/potencia", "123.4", T).await);
    assert!(obs.wait_seen("casa/solar/corrente", "5.67", T).await);
    // Its factor comes in a later request of the same poll.
    assert!(obs.wait_seen("casa/solar/dc", "25000", T).await);
    polls(&dev, 2).await;
    // Factor 0x8000: the value is never published, and that is logged once.
    assert!(!latest(&obs, "casa/").contains_key("casa/solar/reativa"));
    assert!(eventually(T, || logged("Scale factor unusable")).await);
    let warnings = String::from_utf8_lossy(&capture_logs().lock().expect("lock"))
        .matches("Scale factor unusable")
        .count();
    assert_eq!(warnings, 1, "warned once, not every poll");

    // Each factor rides in its value's request: no read of 84 or 75 of its own, and the
    // power and its factor come in one read.
    let reads = dev.log();
    assert!(reads
        .iter()
        .any(|r| r.address <= 83 && r.address + r.count > 84));
    assert!(!reads.iter().any(|r| r.address == 84 || r.address == 75));

    // A new factor applies from the poll that reads it.
    dev.set_registers(Table::Holding, 84, &[(-2i16) as u16]);
    assert!(obs.wait_seen("casa/solar/potencia", "12.34", T).await);

    // `/get` reads the factor with the value.
    let client = publisher(gw.broker_port()).await;
    client
        .publish("casa/solar/dc/get", QoS::AtLeastOnce, false, "")
        .await
        .expect("publish");
    let r = obs
        .next_on("casa/solar/dc/get/result", T)
        .await
        .expect("a /get/result");
    let r: serde_json::Value = serde_json::from_str(&r.payload).expect("json");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["value"], 25000.0, "{r}");
    gw.stop().await;
}
