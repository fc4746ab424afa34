//! Tests of the snapshot: coverage (points, factors, bridged gaps once read), ages (the
//! times are given, no clock runs), availability, and what a reload keeps.

use std::{path::Path, sync::Arc, time::Duration};

use super::*;
use crate::model::{Allow, ModbusServer, Model};

const SERVED: &str = "  - id: m\n    bus: b\n    poll_interval: 1s\n    points:\n\
    \x20     - { topic: m/a, table: holding, address: 0 }\n\
    \x20     - { topic: m/b, table: holding, address: 1, type: u32 }\n\
    \x20     - { topic: m/c, table: holding, address: 10, poll_interval: 5s }\n\
    \x20     - { topic: m/w, table: holding, address: 20, write_only: true }\n\
    \x20     - { topic: m/s, table: input, address: 30, scale_register: 33 }\n\
    \x20     - { topic: m/k, table: coil, address: 4 }\n";

fn model(devices: &str) -> Model {
    let gateway = "id: t\nmappings: m.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n";
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, timeout: 2s }}\ndevices:\n{devices}"
    );
    let mut m = match crate::config::check_sources(Path::new("/g.yaml"), gateway, |_, _| {
        vec![("m.yaml".into(), mapping.clone())]
    }) {
        Ok(c) => c.model,
        Err(d) => panic!("{d:?}"),
    };
    m.modbus_server = Some(ModbusServer {
        listen: "127.0.0.1:0".parse().unwrap(),
        allow: Allow::loopback(),
        max_age: None,
        max_connections: 4,
        writes: false,
        units: vec![(1, "m".into()), (2, "n".into())],
        idle_timeout: Duration::from_secs(60),
        frame_timeout: Duration::from_secs(5),
    });
    m
}

fn snapshot(max_age: Option<Duration>) -> DeviceSnapshot {
    let m = model(SERVED);
    DeviceSnapshot::new(
        m.buses[0].devices[0].clone(),
        Duration::from_secs(2),
        max_age,
    )
}

fn regs(r: &[u16]) -> ReadData {
    ReadData::Registers(r.to_vec())
}

const S: Duration = Duration::from_secs(1);
const A: Exception = Exception::ILLEGAL_DATA_ADDRESS;
const B: Exception = Exception::GATEWAY_TARGET_FAILED;

#[test]
fn what_is_polled_is_covered_and_nothing_else() {
    let s = snapshot(None);
    let now = Instant::now();
    // Covered, not read yet: 0x0B; never covered: 02.
    assert_eq!(s.read(Table::Holding, 0, 3, now), Err(B));
    assert_eq!(s.read(Table::Holding, 10, 1, now), Err(B));
    assert_eq!(s.read(Table::Input, 30, 1, now), Err(B));
    assert_eq!(s.read(Table::Input, 33, 1, now), Err(B), "scale factor");
    assert_eq!(s.read(Table::Coil, 4, 1, now), Err(B));
    for (table, start, count) in [
        (Table::Holding, 3, 1),
        (Table::Holding, 2, 2),
        (Table::Holding, 9, 2),
        (Table::Holding, 20, 1),
        (Table::Input, 0, 1),
        (Table::Input, 31, 2),
        (Table::Coil, 5, 1),
        (Table::Discrete, 4, 1),
    ] {
        assert_eq!(s.read(table, start, count, now), Err(A), "{table} {start}");
    }
    assert_eq!(
        s.read(Table::Holding, 0, 0, now),
        Err(Exception::ILLEGAL_DATA_VALUE)
    );
}

#[test]
fn a_read_is_served_byte_for_byte_until_three_cadences_have_passed() {
    let s = snapshot(None);
    let t0 = Instant::now();
    s.record(Table::Holding, 0, 3, &regs(&[7, 0xABCD, 0x1234]), S, t0);
    assert_eq!(
        s.read(Table::Holding, 0, 3, t0),
        Ok(regs(&[7, 0xABCD, 0x1234]))
    );
    assert_eq!(s.read(Table::Holding, 1, 1, t0), Ok(regs(&[0xABCD])));
    // A read that bridged the gap 3..10 covers it from now on.
    assert_eq!(s.read(Table::Holding, 3, 1, t0), Err(A));
    let gap: Vec<u16> = (100..111).collect();
    s.record(Table::Holding, 0, 11, &regs(&gap), 5 * S, t0);
    assert_eq!(s.read(Table::Holding, 0, 11, t0), Ok(regs(&gap)));
    assert_eq!(
        s.read(Table::Holding, 10, 2, t0),
        Err(A),
        "spans an unpolled address"
    );
    // Its age: 3 × the longest cadence of the read (5 s: `m/c`).
    let late = t0 + Duration::from_millis(14_999);
    assert!(s.read(Table::Holding, 0, 11, late).is_ok());
    let t1 = t0 + 15 * S;
    assert_eq!(s.read(Table::Holding, 0, 11, t1), Err(B));
    // A fresher read of a part serves that part only.
    s.record(Table::Holding, 0, 1, &regs(&[9]), S, t1);
    assert_eq!(s.read(Table::Holding, 0, 1, t1), Ok(regs(&[9])));
    assert_eq!(s.read(Table::Holding, 0, 2, t1), Err(B));
    assert_eq!(s.served_reads(), 5);
}

#[test]
fn max_age_replaces_the_cadence_and_an_offline_device_is_never_served() {
    let s = snapshot(Some(Duration::from_secs(2)));
    let t0 = Instant::now();
    s.record(
        Table::Coil,
        4,
        1,
        &ReadData::Bits(vec![true; 8]),
        60 * S,
        t0,
    );
    assert_eq!(
        s.read(Table::Coil, 4, 1, t0),
        Ok(ReadData::Bits(vec![true]))
    );
    s.set_online(false);
    assert_eq!(s.read(Table::Coil, 4, 1, t0), Err(B));
    assert_eq!(s.read(Table::Coil, 5, 1, t0), Err(A), "02 before 0x0B");
    s.set_online(true);
    assert!(s.read(Table::Coil, 4, 1, t0).is_ok());
    assert!(s
        .read(Table::Coil, 4, 1, t0 + Duration::from_millis(1999))
        .is_ok());
    assert_eq!(s.read(Table::Coil, 4, 1, t0 + 2 * S), Err(B));
}

#[test]
fn runs_merge_where_they_touch_and_keep_their_values() {
    let mut t = Tables::default();
    t.cover(Table::Holding, 0, 2);
    t.cover(Table::Holding, 5, 6);
    t.cover(Table::Holding, 8, 9);
    t.0[0][1].cells[0].value = 55;
    assert_eq!(t.0[0].len(), 3);
    let i = t.cover(Table::Holding, 2, 5);
    assert_eq!(i, 0);
    assert_eq!(t.0[0].len(), 2);
    assert_eq!((t.0[0][0].start, t.0[0][0].end()), (0, 6));
    assert_eq!(t.0[0][0].cells[5].value, 55);
    assert!(t.find(Table::Holding, 0, 6).is_some());
    assert!(t.find(Table::Holding, 5, 7).is_none());
    // Inside a run: nothing changes.
    assert_eq!(t.cover(Table::Holding, 8, 9), 1);
    assert_eq!(t.cover(Table::Holding, 7, 10), 1);
    assert_eq!((t.0[0][1].start, t.0[0][1].end()), (7, 10));
    assert_eq!(t.cover(Table::Holding, 65535, 65536), 2);
}

#[test]
fn a_reload_keeps_an_unchanged_devices_snapshot_only() {
    let two = format!(
        "{SERVED}  - id: n\n    bus: b\n    unit: 2\n    points:\n      - {{ topic: n/a, table: holding, address: 0 }}\n"
    );
    let m = model(&two);
    let all = Snapshots::new(&m).expect("served");
    let (a, b) = (all.get("m").unwrap(), all.get("n").unwrap());
    // `n` changes, `m` does not.
    let changed = two.replace(
        "n/a, table: holding, address: 0",
        "n/a, table: holding, address: 1",
    );
    all.update(&model(&changed));
    assert!(Arc::ptr_eq(&all.get("m").unwrap(), &a));
    let fresh = all.get("n").unwrap();
    assert!(!Arc::ptr_eq(&fresh, &b));
    assert_eq!(fresh.read(Table::Holding, 1, 1, Instant::now()), Err(B));
    // Removed: gone.
    all.update(&model(SERVED));
    assert!(all.get("n").is_none());
    assert!(Snapshots::new(&model(SERVED)).is_some());
    let mut none = model(SERVED);
    none.modbus_server = None;
    assert!(Snapshots::new(&none).is_none());
}
