//! Tests of `modbus_server:` (`modbus_server.rs`, `modbus_server_units.rs`) through
//! [`check_sources`], as `fieldlink check` reports them.

use std::path::Path;

use crate::config::{check_sources, Checked, Diagnostic};

/// Two Modbus TCP buses, a meter at unit 1 on each, an RTU device at unit 3, and GPIO.
const MAPPING: &str = "\
buses:
  - { id: tcp-a, kind: modbus_tcp, host: 127.0.0.1 }
  - { id: tcp-b, kind: modbus_tcp, host: 127.0.0.2 }
  - { id: rs485, kind: modbus_rtu, path: /dev/ttyS9 }
  - { id: board, kind: gpio, backend: simulated }
devices:
  - id: meter
    bus: tcp-a
    points:
      - { topic: casa/power, table: holding, address: 0 }
  - id: garage
    bus: tcp-b
    points:
      - { topic: garage/power, table: holding, address: 0 }
  - id: inverter
    bus: rs485
    unit: 3
    poll_interval: 5s
    points:
      - { topic: pv/power, table: input, address: 0 }
      - { topic: pv/limit, table: holding, address: 9, writable: true }
  - id: relays
    bus: board
    points:
      - { topic: casa/relay, pin: 17, mode: output }
";

/// Check a gateway file whose `modbus_server:` section is `server` (indented by the
/// caller) against `mapping`.
fn check(server: &str, mapping: &str) -> Result<Checked, Vec<Diagnostic>> {
    let gateway = format!("id: t\nmappings: m.yaml\nmodbus_server:\n{server}");
    let mapping = mapping.to_string();
    check_sources(Path::new("/g.yaml"), &gateway, |_, _| {
        vec![(Path::new("/m.yaml").to_path_buf(), mapping)]
    })
}

/// Every diagnostic as `check` prints it.
fn lines(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(ToString::to_string).collect()
}

fn errors(server: &str, mapping: &str) -> Vec<String> {
    match check(server, mapping) {
        Ok(c) => panic!("loaded; warnings: {:?}", lines(&c.warnings)),
        Err(d) => lines(&d),
    }
}

fn units(c: &Checked) -> Vec<(u8, &str)> {
    let s = c.model.modbus_server.as_ref().expect("a server");
    s.units.iter().map(|(u, d)| (*u, d.as_str())).collect()
}

#[test]
fn devices_sharing_a_unit_id_across_buses_are_named_with_where_they_are() {
    let e = errors("  listen: 127.0.0.1:5020\n", MAPPING);
    assert_eq!(
        e,
        [
            "/g.yaml:4:3: modbus_server: unit id 1 is the unit of 2 devices, and the server \
          can serve only one of them at it: `meter` (bus `tcp-a`, /m.yaml:7:9), `garage` \
          (bus `tcp-b`, /m.yaml:11:9); say which device each served unit id is with \
          `units:`, e.g. `units: {1: meter, 2: garage}`"
        ]
    );
}

#[test]
fn without_units_every_modbus_device_is_served_at_its_own_unit_id() {
    let mapping = MAPPING.replace("bus: tcp-b\n", "bus: tcp-b\n    unit: 7\n");
    let c = check("  writes: true\n", &mapping).expect("valid");
    assert_eq!(units(&c), [(1, "meter"), (3, "inverter"), (7, "garage")]);
    assert!(c.warnings.is_empty(), "{:?}", lines(&c.warnings));
    let s = c.model.modbus_server.as_ref().expect("a server");
    assert_eq!(s.listen, super::DEFAULT_MODBUS_LISTEN);
    assert_eq!(s.allow, crate::model::Allow::loopback());
    assert_eq!((s.max_connections, s.writes, s.max_age), (16, true, None));
    assert_eq!(
        (s.idle_timeout, s.frame_timeout),
        (
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5)
        )
    );
}

#[test]
fn units_as_written_are_served_sorted_and_one_device_may_have_two() {
    let c = check(
        "  units:\n    9: inverter\n    2: meter\n    4: garage\n    5: meter\n",
        MAPPING,
    )
    .expect("valid");
    assert_eq!(
        units(&c),
        [(2, "meter"), (4, "garage"), (5, "meter"), (9, "inverter")]
    );
}

#[test]
fn every_bad_entry_of_units_is_reported() {
    let e = errors(
        "  units:\n    0: meter\n    248: meter\n    1: metre\n    2: relays\n    \
         inverter: 3\n    3: garage\n    03: inverter\n",
        MAPPING,
    );
    assert_eq!(
        e,
        [
            "/g.yaml:5:5: modbus_server.units.0: unit id 0 cannot be served; serve it at \
             one of 1–247 (0 is the broadcast address, 248–255 are reserved); the \
             device's own unit id does not matter",
            "/g.yaml:6:5: modbus_server.units.248: unit id 248 cannot be served; serve it \
             at one of 1–247 (0 is the broadcast address, 248–255 are reserved); the \
             device's own unit id does not matter",
            "/g.yaml:7:8: modbus_server.units.1: no device `metre`; did you mean `meter`?",
            "/g.yaml:8:8: modbus_server.units.2: device `relays` is on gpio bus `board`: \
             only Modbus devices can be served; name a device of a modbus_tcp, modbus_rtu \
             or modbus_rtu_over_tcp bus",
            "/g.yaml:9:5: modbus_server.units.inverter: `inverter` is not a unit id; the \
             unit id comes first: `3: inverter`",
            "/g.yaml:11:5: modbus_server.units.03: unit id 3 is listed twice (first at line \
             10); each served unit id names one device",
        ]
    );
}

#[test]
fn empty_units_serve_nothing_and_are_refused() {
    let e = errors("  units: {}\n", MAPPING);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("`units` is empty"), "{e:?}");
}

#[test]
fn a_unit_id_no_server_can_serve_is_left_out_with_a_warning() {
    let mapping = MAPPING.replace("bus: tcp-b\n", "bus: tcp-b\n    unit: 255\n");
    let c = check("  max_connections: 1024\n", &mapping).expect("valid");
    assert_eq!(units(&c), [(1, "meter"), (3, "inverter")]);
    assert_eq!(
        lines(&c.warnings),
        [
            "/g.yaml:4:3: modbus_server: warning: device `garage` (bus `tcp-b`, \
          /m.yaml:11:9) has unit id 255, which a Modbus server cannot serve (1–247): it \
          is not served; serve it at another unit id with `units:`, e.g. `units: {2: \
          garage}`"
        ]
    );
}

#[test]
fn writes_with_nothing_writable_and_a_max_age_below_a_cadence_warn() {
    let c = check(
        "  writes: true\n  max_age: 15s\n  units: {1: meter, 3: inverter}\n",
        MAPPING,
    )
    .expect("valid");
    assert!(c.warnings.is_empty(), "{:?}", lines(&c.warnings));
    let c = check(
        "  writes: true\n  max_age: 2s\n  units: {1: garage}\n",
        MAPPING,
    )
    .expect("valid");
    assert_eq!(
        lines(&c.warnings),
        [
            "/g.yaml:4:11: modbus_server.writes: warning: no served device has a writable \
          point: every write will be refused"
        ]
    );
    let c = check("  max_age: 2s\n  units: {3: inverter}\n", MAPPING).expect("valid");
    assert_eq!(
        lines(&c.warnings),
        [
            "/g.yaml:4:12: modbus_server.max_age: warning: device `inverter` is read every \
          5s, longer than max_age 2s: its values will mostly be refused as too old \
          (exception 0x0B)"
        ]
    );
}

/// One device at unit 1 and nothing else.
const ONE: &str = "\
buses: [{ id: b, kind: modbus_tcp, host: 127.0.0.1 }]
devices:
  - id: meter
    bus: b
    points: [{ topic: casa/power, table: holding, address: 0, writable: true }]
";

#[test]
fn a_listener_other_machines_reach_needs_allow() {
    for (listen, shown) in [
        ("0.0.0.0:5020", "0.0.0.0:5020"),
        ("'[::]:502'", "[::]:502"),
        ("192.168.1.5:5020", "192.168.1.5:5020"),
    ] {
        let e = errors(&format!("  listen: {listen}\n"), ONE);
        assert_eq!(
            e,
            [format!(
                "/g.yaml:4:11: modbus_server.allow: Modbus has no login: the Modbus server \
                 listens on {shown}, which other machines can reach, and has no `allow`, so \
                 anyone on the network could read every served device; list the clients \
                 that may connect, e.g. `allow: [192.168.1.10, 192.168.1.0/24]`, or listen \
                 on `127.0.0.1:5020`"
            )]
        );
    }
    let e = errors("  listen: 0.0.0.0:5020\n  writes: true\n", ONE);
    assert!(
        e[0].contains("could read every served device and write its writable points"),
        "{e:?}"
    );
    let c = check(
        "  listen: 0.0.0.0:5020\n  allow: [192.168.1.0/24, 192.168.2.7, '::1']\n",
        ONE,
    )
    .expect("valid");
    let s = c.model.modbus_server.as_ref().expect("a server");
    let allow: Vec<String> = s.allow.0.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["192.168.1.0/24", "192.168.2.7/32", "::1/128"]);
    assert!(s.allow.permits("192.168.1.77".parse().expect("ip")));
    assert!(!s.allow.permits("192.168.3.1".parse().expect("ip")));
    assert!(c.warnings.is_empty(), "{:?}", lines(&c.warnings));
}

#[test]
fn listen_takes_ipv4_and_ipv6_with_a_port_and_names_what_is_missing() {
    let c = check("  listen: '[::1]:5020'\n", ONE).expect("valid");
    let s = c.model.modbus_server.as_ref().expect("a server");
    assert_eq!(s.listen, "[::1]:5020".parse().expect("addr"));
    assert_eq!(s.allow, crate::model::Allow::loopback());
    for (listen, hint) in [
        ("127.0.0.1", "add the port: `127.0.0.1:5020`"),
        (
            "'::1:5020'",
            "write an IPv6 address in brackets: `[::1]:5020`",
        ),
        (
            "localhost:5020",
            "write it like `127.0.0.1:5020` or `0.0.0.0:5020` (an address, not a host name)",
        ),
    ] {
        let e = errors(&format!("  listen: {listen}\n"), ONE);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].ends_with(hint), "{e:?}");
        assert!(e[0].contains("is not an IP address with a port"), "{e:?}");
    }
}

#[test]
fn bad_allow_entries_bounds_and_durations_are_all_reported() {
    let e = errors(
        "  listen: 0.0.0.0:5020\n  allow: [192.168.1.0/33, homeassistant.local]\n  \
         max_connections: 0\n  idle_timeout: 0s\n  frame_timeout: 0s\n  max_age: 0s\n",
        ONE,
    );
    assert_eq!(
        e,
        [
            "/g.yaml:5:11: modbus_server.allow[0]: `192.168.1.0/33` is not an IP address or \
             CIDR range; the prefix after `/` is 0–32 for 192.168.1.0 (`33` given)",
            "/g.yaml:5:27: modbus_server.allow[1]: `homeassistant.local` is not an IP address \
             or CIDR range; host names are not resolved: write an address (`192.168.1.10`, \
             `::1`) or a range (`192.168.1.0/24`)",
            "/g.yaml:6:20: modbus_server.max_connections: max_connections 0 is outside \
             1–1024; the default is 16",
            "/g.yaml:7:17: modbus_server.idle_timeout: must be greater than zero; e.g. `1m`",
            "/g.yaml:8:18: modbus_server.frame_timeout: must be greater than zero; e.g. `5s`",
            "/g.yaml:9:12: modbus_server.max_age: must be greater than zero; e.g. `10s`",
        ]
    );
}

#[test]
fn allow_that_lets_everyone_in_or_nobody_warns_or_fails() {
    let c = check("  listen: 0.0.0.0:5020\n  allow: [0.0.0.0/0]\n", ONE).expect("valid");
    assert_eq!(
        lines(&c.warnings),
        [
            "/g.yaml:5:11: modbus_server.allow[0]: warning: `0.0.0.0/0` lets every address \
          connect, and Modbus has no login"
        ]
    );
    let c = check("  allow: [192.168.1.0/24]\n", ONE).expect("valid");
    assert_eq!(
        lines(&c.warnings),
        [
            "/g.yaml:4:11: modbus_server.allow[0]: warning: the Modbus server listens on \
          127.0.0.1:5020, which only this machine can reach: `192.168.1.0/24` can never \
          connect (listen on `0.0.0.0:5020` to let it)"
        ]
    );
    let e = errors("  allow: []\n", ONE);
    assert!(
        e[0].contains("`allow` is empty: no client could connect"),
        "{e:?}"
    );
}

#[test]
fn the_embedded_brokers_port_is_not_the_modbus_servers() {
    let e = errors("  listen: 127.0.0.1:1883\n", ONE);
    assert_eq!(
        e,
        [
            "/g.yaml:4:11: modbus_server.listen: 127.0.0.1:1883 is also where the embedded \
          broker listens (`mqtt.embedded.listen`: 127.0.0.1:1883); give the Modbus server \
          another port, e.g. 5020"
        ]
    );
}

#[test]
fn an_empty_section_is_a_loopback_server_of_every_device_and_null_is_none() {
    let c = check("  {}\n", ONE).expect("valid");
    let s = c.model.modbus_server.as_ref().expect("a server");
    assert_eq!(s.units, [(1, "meter".to_string())]);
    let c = check("", ONE).expect("valid");
    assert!(c.model.modbus_server.is_none());
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    let e = errors("  max_conections: 4\n", ONE);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("/g.yaml:4:3: modbus_server.max_conections: unknown key"),
        "{e:?}"
    );
    assert!(e[0].ends_with("did you mean `max_connections`?"), "{e:?}");
}

#[test]
fn a_unit_id_written_twice_is_refused() {
    let e = errors("  units:\n    3: inverter\n    3: meter\n", MAPPING);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("/g.yaml:6:5: modbus_server.units"),
        "{e:?}"
    );
    assert!(e[0].contains("duplicate key `3`"), "{e:?}");
}
