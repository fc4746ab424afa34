//! Every shipped profile (`mappings/profiles/<name>.yaml`) proven against its vendor
//! document: a tokio-modbus server holds the registers the document describes, with
//! distinct known values in the device's own encoding, the real gateway polls it with a
//! device using the profile, and every published value is checked.
//!
//! The proof is the fixture `tests/profiles/<name>.yaml`, written from the vendor document
//! independently of the profile file:
//!
//! ```yaml
//! document: { title: "SDM630 Modbus Protocol", version: "V1.8" }   # same citation as the profile
//! unit: 1                        # the device's default unit id per the document
//! registers:                     # what the simulated device holds
//!   - { table: input, address: 0, type: f32, word_order: ABCD, value: 230.1 }
//! expect:                        # what a user must see published, per profile key
//!   voltage_l1: 230.1
//! ```
//!
//! Optional fixture keys: `serial` (compared with the profile's), `max_read_registers`
//! (the simulated device refuses longer reads with exception 03, as the real one does, and
//! the profile's limit is compared). A register entry takes `table`, `address` (0-based),
//! `type` (`u16` on registers and `bool` on bits by default), `word_order` (`ABCD` by
//! default), `length` (strings; the value's length by default) and `value`; the harness
//! encodes it with the drivers crate's codec. Register values must be distinct and not 0 (what an
//! unset register reads), so that a point reading the wrong address cannot pass by chance.
//!
//! Fixtures are found by listing `tests/profiles/`: a new profile needs its fixture and no
//! code. `PROFILES=eastron-sdm630,xy-md02 cargo test -p fieldlink-tests --test profiles`
//! runs only those; with `PROFILE_MAPPINGS=<dir>` each converted mapping and a gateway file
//! are written there for `fieldlink check --config <dir>/<name>.gateway.yaml`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::{codec, Table, Value, ValueType, WordOrder},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, Gateway, Observer};
use rumqttc::QoS;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

const PROFILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../mappings/profiles");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
/// The test's stand-in for every slow cadence (`poll_interval: 1h` on a serial number).
const SLOW_POLL: &str = "300ms";
/// How long every published value may take to arrive.
const T: Duration = Duration::from_secs(30);

/// A fixture, written from the vendor document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    document: Json,
    unit: u8,
    #[serde(default)]
    serial: Option<Json>,
    #[serde(default)]
    max_read_registers: Option<u16>,
    registers: Vec<Register>,
    expect: BTreeMap<String, Json>,
}

/// What the simulated device holds at one address.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    table: String,
    address: u16,
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    word_order: Option<String>,
    #[serde(default)]
    length: Option<u16>,
    value: Json,
    /// Why this register may hold the same value as another (two on/off registers: with 0
    /// refused, both must hold 1). The others stay distinct.
    #[serde(default)]
    same_value_because: Option<String>,
}

/// One profile under test.
struct Case {
    name: String,
    profile: Json,
    fixture: Fixture,
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every fixture's name (`tests/profiles/<name>.yaml`), limited by `PROFILES` when set.
fn fixture_names() -> Vec<String> {
    let only: Option<BTreeSet<String>> = std::env::var("PROFILES")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().to_string()).collect());
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .expect("tests/profiles/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .filter(|n| only.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    names.sort();
    names
}

/// The keys of a profile's points, in file order.
fn profile_keys(profile: &Json) -> Vec<String> {
    points_of(profile)
        .iter()
        .filter_map(|p| p.get("key").and_then(Json::as_str).map(str::to_string))
        .collect()
}

fn points_of(profile: &Json) -> &[Json] {
    profile
        .get("points")
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Load a fixture and its profile, and compare what both say outside the registers:
/// the document cited, the unit id, the serial settings, the read limit, the keys.
fn load(name: &str) -> Result<Case, Vec<String>> {
    let fixture: Fixture =
        read_yaml(&Path::new(FIXTURES).join(format!("{name}.yaml"))).map_err(|e| vec![e])?;
    let profile: Json =
        read_yaml(&Path::new(PROFILES).join(format!("{name}.yaml"))).map_err(|e| vec![e])?;
    let meta = &profile["profile"];
    let mut errs = Vec::new();
    if meta["name"] != json!(name) {
        errs.push(format!(
            "profile.name is {}, the file says {name}",
            meta["name"]
        ));
    }
    if meta["document"] != fixture.document {
        errs.push(format!(
            "the fixture cites {}, the profile {}",
            fixture.document, meta["document"]
        ));
    }
    if meta.get("unit").is_some_and(|u| *u != json!(fixture.unit)) {
        errs.push(format!(
            "profile.unit {} but the document says {}",
            meta["unit"], fixture.unit
        ));
    }
    if let Some(s) = &fixture.serial {
        if meta["serial"] != *s {
            errs.push(format!(
                "profile.serial {} but the document says {s}",
                meta["serial"]
            ));
        }
    }
    if let Some(m) = fixture.max_read_registers {
        if meta["max_read_registers"] != json!(m) {
            errs.push(format!(
                "profile.max_read_registers {} but the document says {m}",
                meta["max_read_registers"]
            ));
        }
    }
    let keys = profile_keys(&profile);
    let mut seen = BTreeSet::new();
    for k in &keys {
        if !seen.insert(k) {
            errs.push(format!("key {k} twice in the profile"));
        }
        if !fixture.expect.contains_key(k) {
            errs.push(format!(
                "profile key {k} has no expected value in the fixture"
            ));
        }
    }
    for k in fixture.expect.keys() {
        if !seen.contains(k) {
            errs.push(format!("the fixture expects {k}, which the profile lacks"));
        }
    }
    if keys.len() != points_of(&profile).len() {
        errs.push("a profile point has no `key`".into());
    }
    if errs.is_empty() {
        Ok(Case {
            name: name.to_string(),
            profile,
            fixture,
        })
    } else {
        Err(errs)
    }
}

// A device using the profile as a user's would (#25 F): `profile: <name>`,
// `topic_prefix: prof/<name>`, the profile's read limits and Home Assistant device as the
// profile gives them, and every point's own `poll_interval` overridden by `SLOW_POLL` so
// that the test does not wait an hour.
fn profile_device(name: &str, profile: &Json, bus: &str, unit: u8) -> Map<String, Json> {
    let mut dev = Map::new();
    dev.insert("id".into(), json!(name));
    dev.insert("bus".into(), json!(bus));
    dev.insert("unit".into(), json!(unit));
    dev.insert("poll_interval".into(), json!("200ms"));
    dev.insert("profile".into(), json!(name));
    dev.insert("topic_prefix".into(), json!(format!("prof/{name}")));
    let overrides: Map<String, Json> = points_of(profile)
        .iter()
        .filter(|p| p.get("poll_interval").is_some())
        .filter_map(|p| p.get("key").and_then(Json::as_str))
        .map(|k| (k.to_string(), json!({ "poll_interval": SLOW_POLL })))
        .collect();
    if !overrides.is_empty() {
        dev.insert("overrides".into(), Json::Object(overrides));
    }
    dev
}

/// A mapping file's text (JSON values are YAML) with one Modbus TCP bus per device.
fn mapping_text(devices: &[(u16, Map<String, Json>)]) -> String {
    let mut s = String::from("buses:\n");
    for (port, d) in devices {
        s += &format!(
            "  - {{ id: {}, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 500ms }}\n",
            d["bus"].as_str().unwrap_or("b")
        );
    }
    s += "devices:\n";
    for (_, d) in devices {
        let mut first = true;
        for (k, v) in d {
            s += if first { "  - " } else { "    " };
            first = false;
            if let (true, Some(points)) = (k == "points", v.as_array()) {
                s += "points:\n";
                for p in points {
                    s += &format!("      - {p}\n");
                }
            } else {
                s += &format!("{k}: {v}\n");
            }
        }
    }
    s
}

fn table(name: &str) -> Result<Table, String> {
    Ok(match name {
        "holding" => Table::Holding,
        "input" => Table::Input,
        "coil" => Table::Coil,
        "discrete" => Table::Discrete,
        _ => return Err(format!("unknown table {name}")),
    })
}

fn value_type(name: &str, r: &Register) -> Result<ValueType, String> {
    Ok(match name {
        "bool" => ValueType::Bool,
        "u16" => ValueType::U16,
        "i16" => ValueType::I16,
        "u32" => ValueType::U32,
        "i32" => ValueType::I32,
        "u64" => ValueType::U64,
        "i64" => ValueType::I64,
        "f32" => ValueType::F32,
        "f64" => ValueType::F64,
        "string" => {
            let n = r.value.as_str().map_or(0, str::len) as u16;
            ValueType::String {
                len: r.length.unwrap_or(n + n % 2),
            }
        }
        _ => return Err(format!("unknown type {name}")),
    })
}

fn word_order(name: &str) -> Result<WordOrder, String> {
    Ok(match name {
        "ABCD" => WordOrder::Abcd,
        "CDAB" => WordOrder::Cdab,
        "BADC" => WordOrder::Badc,
        "DCBA" => WordOrder::Dcba,
        _ => return Err(format!("unknown word order {name}")),
    })
}

fn codec_value(v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::String(s) => Value::Str(s.clone()),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::U64(u),
            (_, _, Some(f)) => Value::Float(f),
            _ => return Err(format!("value {n} out of range")),
        },
        _ => return Err(format!("value {v} is not a number, text or bool")),
    })
}

/// A simulated device holding the fixture's registers, each encoded by the codec.
fn device(f: &Fixture) -> Result<std::sync::Arc<SimDevice>, Vec<String>> {
    let dev = SimDevice::new();
    if let Some(m) = f.max_read_registers {
        dev.set_max_read(m);
    }
    let mut errs = Vec::new();
    let mut used: HashMap<(Table, u16), u16> = HashMap::new();
    let mut values: HashMap<String, u16> = HashMap::new();
    for r in &f.registers {
        let at = format!("{} {}", r.table, r.address);
        let encoded = (|| -> Result<(Table, Vec<u16>), String> {
            let t = table(&r.table)?;
            let value = codec_value(&r.value)?;
            if t.is_bits() {
                let Value::Bool(b) = value else {
                    return Err("a bit takes true or false".into());
                };
                dev.set_bit(t, r.address, b);
                return Ok((t, vec![1]));
            }
            let ty = value_type(r.ty.as_deref().unwrap_or("u16"), r)?;
            let order = word_order(r.word_order.as_deref().unwrap_or("ABCD"))?;
            let regs = codec::encode(&value, ty, order).map_err(|e| e.to_string())?;
            dev.set_registers(t, r.address, &regs);
            Ok((t, regs))
        })();
        match encoded {
            Ok((t, regs)) => {
                for i in 0..regs.len() as u16 {
                    if let Some(other) = used.insert((t, r.address.wrapping_add(i)), r.address) {
                        errs.push(format!("fixture: {at} overlaps the register at {other}"));
                    }
                }
                if !t.is_bits() && regs.iter().all(|r| *r == 0) {
                    errs.push(format!(
                        "fixture: {at} holds 0, what an unset register reads: use another value"
                    ));
                }
                if !t.is_bits() && r.same_value_because.is_none() {
                    if let Some(other) = values.insert(r.value.to_string(), r.address) {
                        errs.push(format!(
                            "fixture: {at} holds {}, as {other} does: use distinct values",
                            r.value
                        ));
                    }
                }
            }
            Err(e) => errs.push(format!("fixture: {at}: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(dev)
    } else {
        Err(errs)
    }
}

/// Whether `got` (a published payload) is what the document says (`want`); numbers
/// within the point's `precision` (half a unit of its last decimal), or within a float's
/// own rounding without one.
fn same(want: &Json, got: &str, point: &Json) -> bool {
    match want {
        Json::Number(n) => {
            let (Some(w), Ok(g)) = (n.as_f64(), got.parse::<f64>()) else {
                return false;
            };
            let tol = match point.get("precision").and_then(Json::as_u64) {
                Some(p) => 0.5 * 10f64.powi(-(p as i32)) + 1e-9,
                None => w.abs() * 1e-6 + 1e-9,
            };
            (w - g).abs() <= tol
        }
        Json::Bool(b) => got == b.to_string(),
        Json::String(s) => got == s,
        _ => false,
    }
}

/// `fieldlink check` on one converted profile: its errors and warnings.
fn check(name: &str, mapping: &str) -> Vec<String> {
    let gateway = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n";
    if let Ok(dir) = std::env::var("PROFILE_MAPPINGS") {
        let dir = PathBuf::from(dir);
        let gw = gateway.replace("mapping.yaml", &format!("{name}.mapping.yaml"));
        let written = std::fs::write(dir.join(format!("{name}.gateway.yaml")), gw)
            .and_then(|()| std::fs::write(dir.join(format!("{name}.mapping.yaml")), mapping));
        if let Err(e) = written {
            return vec![format!("cannot write to {}: {e}", dir.display())];
        }
    }
    let checked = fieldlink::config::check_sources(Path::new("/gateway.yaml"), gateway, |_, _| {
        vec![(PathBuf::from("mapping.yaml"), mapping.to_string())]
    });
    match checked {
        Ok(c) => c.warnings.iter().map(|w| format!("check: {w}")).collect(),
        Err(d) => d.iter().map(|e| format!("check: {e}")).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_profile_publishes_what_its_vendor_document_says() {
    let names = fixture_names();
    assert!(!names.is_empty(), "no fixture in tests/profiles/");
    // Every shipped profile has a fixture (unless PROFILES narrows the run).
    if std::env::var("PROFILES").is_err() {
        let shipped: BTreeSet<String> = std::fs::read_dir(PROFILES)
            .expect("mappings/profiles/ exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
            .collect();
        let fixtures: BTreeSet<String> = names.iter().cloned().collect();
        let missing: Vec<_> = shipped.difference(&fixtures).collect();
        assert!(
            missing.is_empty(),
            "profiles without a fixture: {missing:?}"
        );
    }
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut running = Vec::new();
    for name in &names {
        let case = match load(name) {
            Ok(c) => c,
            Err(e) => {
                failures.insert(name.clone(), e);
                continue;
            }
        };
        let dev = match device(&case.fixture) {
            Ok(d) => d,
            Err(e) => {
                failures.insert(name.clone(), e);
                continue;
            }
        };
        let server = SimServer::new();
        server.add(case.fixture.unit, dev);
        let port = server
            .spawn_local()
            .await
            .expect("simulated device listens");
        let d = profile_device(name, &case.profile, &format!("b-{name}"), case.fixture.unit);
        let problems = check(name, &mapping_text(&[(port, d.clone())]));
        if problems.is_empty() {
            running.push((case, port, d));
        } else {
            failures.insert(name.clone(), problems);
        }
    }
    if !running.is_empty() {
        let devices: Vec<_> = running.iter().map(|(_, p, d)| (*p, d.clone())).collect();
        let gw = Gateway::start(fieldlink_tests::model(&mapping_text(&devices), "")).await;
        let obs = Observer::connect(gw.broker_port(), "prof/#", QoS::AtMostOnce).await;
        let topics: BTreeSet<String> = running
            .iter()
            .flat_map(|(c, _, _)| {
                profile_keys(&c.profile)
                    .into_iter()
                    .map(|k| format!("prof/{}/{k}", c.name))
            })
            .collect();
        let seen = obs.seen.clone();
        let latest = || -> HashMap<String, String> {
            let seen = seen.lock().expect("lock");
            seen.iter()
                .map(|m| (m.topic.clone(), m.payload.clone()))
                .collect()
        };
        eventually(T, || {
            let l = latest();
            topics.iter().all(|t| l.contains_key(t))
        })
        .await;
        let published = latest();
        for (case, _, _) in &running {
            for point in points_of(&case.profile) {
                let key = point["key"].as_str().unwrap_or("");
                let want = &case.fixture.expect[key];
                let errs = failures.entry(case.name.clone()).or_default();
                match published.get(&format!("prof/{}/{key}", case.name)) {
                    Some(got) if same(want, got, point) => {}
                    Some(got) => errs.push(format!(
                        "{key}: published {got:?}, the document says {want}"
                    )),
                    None => errs.push(format!("{key}: nothing published within {T:?}")),
                }
            }
        }
        gw.stop().await;
    }
    failures.retain(|_, e| !e.is_empty());
    let report: Vec<String> = failures
        .iter()
        .map(|(n, e)| format!("{n}:\n  {}", e.join("\n  ")))
        .collect();
    assert!(
        report.is_empty(),
        "{} of {} profiles fail:\n{}",
        failures.len(),
        names.len(),
        report.join("\n")
    );
}
