//! Unit tests of device profiles as the configuration reads them: a profile expanded
//! into a device's points (exclude, overrides, the device keys it gives), the profile
//! file's own syntax, `scale_register` and the `.` warning.

use std::path::Path;

use super::{check_sources, parse_yaml, Checked, Diagnostic, ProfileFile};
use crate::model::{Device, PublishMode, Source};

/// A user profile `acme-pm10`: 9600 8E1, unit 7, 40 registers a read.
const PROFILE: &str = "\
profile:
  name: acme-pm10
  manufacturer: Acme
  model: PM10
  kind: energy_meter
  document: { title: PM10 registers, date: \"2024-01-31\" }
  serial: { baud: 9600, parity: even }
  unit: 7
  max_read_registers: 40
points:
  - key: voltage
    table: input
    address: 0
    type: f32
    unit: V
    homeassistant: { device_class: voltage, state_class: measurement }
  - { key: power, table: input, address: 12, type: f32, unit: W }
  - { key: frequency, table: input, address: 70, type: f32, unit: Hz }
";

/// Check a gateway file whose `profiles:` is a directory holding `PROFILE`, with
/// `gateway_extra` appended and `mapping` as its mapping file.
fn check(
    gateway_extra: &str,
    mapping: &str,
) -> (Result<Checked, Vec<Diagnostic>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).expect("mkdir");
    std::fs::write(profiles.join("acme-pm10.yaml"), PROFILE).expect("write");
    let gw = dir.path().join("gateway.yaml");
    let text = format!("id: t\nmappings: m.yaml\nprofiles: profiles\n{gateway_extra}");
    let m = dir.path().join("m.yaml");
    let r = check_sources(&gw, &text, |_, _| vec![(m.clone(), mapping.to_string())]);
    (r, dir)
}

fn lines(diags: &[Diagnostic], dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    diags
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect()
}

fn device(c: &Checked) -> &Device {
    c.model.devices().next().expect("a device")
}

#[test]
fn a_profile_expands_with_exclude_overrides_and_own_points() {
    let mapping = "\
buses: [{ id: b, kind: modbus_tcp, host: 127.0.0.1 }]
devices:
  - id: medidor
    bus: b
    profile: acme-pm10
    topic_prefix: casa/medidor
    exclude: [frequency]
    overrides:
      power: { deadband: 5, topic: casa/potencia }
      voltage: { homeassistant: { name: Tensão } }
    points:
      - { topic: casa/medidor/extra, table: holding, address: 100 }
";
    let (r, dir) = check("", mapping);
    let c = r.unwrap_or_else(|d| panic!("{:?}", lines(&d, dir.path())));
    assert_eq!(lines(&c.warnings, dir.path()), Vec::<String>::new());
    let d = device(&c);
    let topics: Vec<&str> = d.points.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "casa/medidor/voltage",
            "casa/potencia",
            "casa/medidor/extra"
        ]
    );
    assert_eq!(d.points[1].publish, PublishMode::OnChange { deadband: 5.0 });
    // The override's Home Assistant name joins the profile's device class.
    let ha = d.points[0].ha();
    assert_eq!(ha.name.as_deref(), Some("Tensão"));
    assert_eq!(ha.device_class.as_deref(), Some("voltage"));
    // The device keys the profile gives where the device has none.
    let m = d.modbus().expect("modbus");
    assert_eq!((m.unit, m.max_read_registers), (7, 40));
    assert_eq!(d.ha.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(d.ha.model.as_deref(), Some("PM10"));
    assert!(
        c.files
            .iter()
            .any(|f| f.ends_with("profiles/acme-pm10.yaml")),
        "{:?}",
        c.files
    );
}

#[test]
fn the_device_keeps_its_own_unit_limits_and_home_assistant_device() {
    let mapping = "\
buses: [{ id: b, kind: modbus_rtu, path: /dev/null, parity: even }]
devices:
  - id: medidor
    bus: b
    unit: 3
    max_read_registers: 10
    homeassistant: { model: PM10-B }
    profile: acme-pm10
    topic_prefix: casa/medidor
";
    let (r, dir) = check("", mapping);
    let c = r.unwrap_or_else(|d| panic!("{:?}", lines(&d, dir.path())));
    // 9600 8E1 is the profile's: no warning.
    assert_eq!(lines(&c.warnings, dir.path()), Vec::<String>::new());
    let d = device(&c);
    let m = d.modbus().expect("modbus");
    assert_eq!((m.unit, m.max_read_registers), (3, 10));
    assert_eq!(d.ha.manufacturer.as_deref(), Some("Acme"));
    assert_eq!(d.ha.model.as_deref(), Some("PM10-B"));
}

#[test]
fn profile_keys_need_a_profile_and_a_profile_needs_a_modbus_bus() {
    let mapping = "\
buses:
  - { id: b, kind: modbus_tcp, host: 127.0.0.1 }
  - { id: s, kind: uart, path: /dev/null }
devices:
  - id: a
    bus: b
    topic_prefix: casa/a
    exclude: [power]
    points: [{ topic: casa/a/x, table: holding, address: 0 }]
  - id: c
    bus: s
    profile: acme-pm10
    topic_prefix: casa/c
    parser: { kind: key_value }
";
    let (r, dir) = check("", mapping);
    let d = r.expect_err("errors");
    assert_eq!(
        lines(&d, dir.path()),
        [
            "m.yaml:7:19: devices[0].topic_prefix: `topic_prefix` applies to a device with a `profile`; add `profile: <name>` (`fieldlink profiles` lists them), or remove the key",
            "m.yaml:8:15: devices[0].exclude: `exclude` applies to a device with a `profile`; add `profile: <name>` (`fieldlink profiles` lists them), or remove the key",
            "m.yaml:12:14: devices[1].profile: profile `acme-pm10` describes a Modbus device; bus `s` is a uart bus; put the device on a modbus_tcp, modbus_rtu or modbus_rtu_over_tcp bus",
        ]
    );
}

#[test]
fn a_profile_point_has_key_not_topic() {
    let text = "profile: { name: x, manufacturer: X, model: X, kind: other }\npoints:\n  - { topic: a, table: holding, address: 0 }\n";
    let e = parse_yaml::<ProfileFile>(text).expect_err("topic refused");
    assert_eq!((e.line, e.column), (3, 5));
    assert!(
        e.message.contains("has `key`, not `topic`"),
        "{}",
        e.message
    );
    let p: ProfileFile = parse_yaml(&text.replace("topic", "key")).expect("parses");
    assert_eq!(p.points[0].0.topic.value, "a");
    assert_eq!(
        (p.points[0].0.topic.line(), p.points[0].0.topic.column()),
        (3, 12)
    );
}

#[test]
fn scale_register_is_checked_and_reaches_the_model() {
    let mapping = "\
buses: [{ id: b, kind: modbus_tcp, host: 127.0.0.1 }]
devices:
  - id: inv
    bus: b
    points:
      - { topic: a, table: holding, address: 0, type: i16, scale_register: 4 }
      - { topic: b, table: coil, address: 0, scale_register: 4 }
      - { topic: c, table: holding, address: 1, writable: true, scale_register: 4 }
      - { topic: d, table: holding, address: 2, type: u32, scale_register: 3 }
      - { topic: e, table: holding, address: 5, scale_register: 70000 }
";
    let (r, dir) = check("", mapping);
    let d = r.expect_err("errors");
    assert_eq!(
        lines(&d, dir.path()),
        [
            "m.yaml:7:62: devices[0].points[1].scale_register: a coil has no scale factor; `scale_register` is for `holding` and `input` register values",
            "m.yaml:8:81: devices[0].points[2].scale_register: a point with `scale_register` cannot be written; remove `writable` (a command would need the factor read at the moment of writing)",
            "m.yaml:9:76: devices[0].points[3].scale_register: register 3 is the point's own value, not a scale factor; give the address of the factor's own register (SunSpec: the `_SF` one)",
            "m.yaml:10:65: devices[0].points[4].scale_register: address 70000 is outside 0–65535; the factor's register address, 0-based as `address`",
        ]
    );
    let ok = mapping.lines().take(6).collect::<Vec<_>>().join("\n");
    let (r, dir) = check("", &ok);
    let c = r.unwrap_or_else(|d| panic!("{:?}", lines(&d, dir.path())));
    let Source::Modbus(m) = &device(&c).points[0].source else {
        panic!("not modbus");
    };
    assert_eq!(m.scale_register, Some(4));
}

#[test]
fn dotted_topics_warn_only_with_an_upstream_broker() {
    let mapping = "\
buses: [{ id: b, kind: modbus_tcp, host: 127.0.0.1 }]
devices:
  - id: a
    bus: b
    profile: acme-pm10
    topic_prefix: casa/v1.2
    exclude: [power, frequency]
    points: [{ topic: casa/a.b, table: holding, address: 100 }]
";
    let (r, dir) = check("", mapping);
    assert!(r.expect("loads").warnings.is_empty());
    let (r, dir2) = check(
        "mqtt: { upstream: { url: \"mqtt://127.0.0.1:1\" } }\n",
        mapping,
    );
    let w = lines(&r.expect("loads").warnings, dir2.path());
    let hint = "if the upstream broker is RabbitMQ, its MQTT plugin turns `.` into `/`: the data arrives under another name and its `/set` never reaches the gateway; use `_` or `-`";
    assert_eq!(
        w,
        [
            format!("m.yaml:6:19: devices[0].topic_prefix: warning: topic `casa/v1.2/voltage` contains `.` (point `voltage` of profile `acme-pm10`); {hint}"),
            format!("m.yaml:8:23: devices[0].points[0].topic: warning: topic `casa/a.b` contains `.`; {hint}"),
        ]
    );
    let _ = (dir, dir2);
}

#[test]
fn a_user_profile_replaces_a_shipped_one_with_a_warning() {
    use super::{profiles::Library, Cx, GatewayFile, Validator};
    static SHIPPED: &[(&str, &str)] = &[(
        "acme-pm10",
        "profile: { name: acme-pm10, manufacturer: Acme, model: PM10, kind: energy_meter }\n",
    )];
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("mine")).expect("mkdir");
    let file = dir.path().join("mine/acme-pm10.yaml");
    std::fs::write(&file, PROFILE).expect("write");
    let gw_path = dir.path().join("gateway.yaml");
    let gw: GatewayFile =
        parse_yaml("id: t\nmappings: m.yaml\nprofiles: [mine]\n").expect("gateway file");
    let mut v = Validator::default();
    let (mut lib, files) = v.profiles_over(Library::from_table(SHIPPED), &Cx::new(&gw_path), &gw);
    assert_eq!(files, std::slice::from_ref(&file));
    assert_eq!(
        lines(&v.diags, dir.path()),
        ["mine/acme-pm10.yaml:2:9: profile.name: warning: replaces the shipped profile `acme-pm10`"]
    );
    // The user's is the one used: it has points, the shipped one none.
    let p = lib.get(&mut v, "acme-pm10").expect("profile");
    assert_eq!(p.path, file);
    assert_eq!(p.file.as_ref().map(|f| f.points.len()), Some(3));
}
