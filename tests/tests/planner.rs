//! The read planner seen from the device: the fewest requests per cycle; a merged
//! read that hits exception 02 is split, and retried only after its check (10 s, doubling).

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_points_in_three_areas_cost_three_reads_per_cycle() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mut points = String::new();
    // Area 1: 15 u16 at 0..15 with a 2-register gap in the middle (bridged, max_gap 8).
    for i in 0..15u16 {
        let a = if i < 8 { i } else { i + 2 };
        points += &format!("      - {{ topic: a1/{i}, table: holding, address: {a} }}\n");
    }
    // Area 2: 15 f32 at 200.. (30 registers).
    for i in 0..15u16 {
        points += &format!(
            "      - {{ topic: a2/{i}, table: holding, address: {}, type: f32 }}\n",
            200 + 2 * i
        );
    }
    // Area 3: 10 input registers.
    for i in 0..10u16 {
        points += &format!(
            "      - {{ topic: a3/{i}, table: input, address: {} }}\n",
            50 + i
        );
    }
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "fieldlink/#", QoS::AtMostOnce).await;
    assert!(
        obs.wait_payload(
            "fieldlink/t/d/availability",
            "online",
            Duration::from_secs(10)
        )
        .await
    );
    dev.clear_log();
    // Ten cycles of three reads each.
    assert!(fieldlink_tests::eventually(Duration::from_secs(10), || dev.log().len() >= 30).await);
    let log = dev.log();
    gw.stop().await;

    let mut reads: Vec<(u8, u16, u16)> = log
        .iter()
        .map(|r| (r.function, r.address, r.count))
        .collect();
    reads.sort_unstable();
    reads.dedup();
    assert_eq!(
        reads,
        vec![(3, 0, 17), (3, 200, 30), (4, 50, 10)],
        "exactly three distinct reads"
    );
    // Group requests into cycles (a cycle's requests are back to back, cycles 100 ms apart).
    let mut cycles: Vec<usize> = Vec::new();
    let mut last = None;
    for r in &log {
        match last {
            Some(t) if r.at.duration_since(t) < Duration::from_millis(40) => {
                if let Some(c) = cycles.last_mut() {
                    *c += 1;
                }
            }
            _ => cycles.push(1),
        }
        last = Some(r.at);
    }
    // The first and last cycle may be cut by the observation window.
    let inner = &cycles[1..cycles.len().saturating_sub(1)];
    assert!(
        inner.len() >= 8,
        "about 15 cycles observed, got {}",
        cycles.len()
    );
    assert!(
        inner.iter().all(|&c| c == 3),
        "3 requests per cycle, got {cycles:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_02_splits_the_merged_read_once() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 10, &[111]);
    dev.set_registers(Table::Holding, 14, &[222]);
    dev.add_holes(Table::Holding, [12]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        r#"
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}
devices:
  - id: d
    bus: b
    poll_interval: 100ms
    points:
      - {{ topic: h/a, table: holding, address: 10 }}
      - {{ topic: h/b, table: holding, address: 14 }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "h/#", QoS::AtMostOnce).await;
    let snap = obs.snapshot(Duration::from_millis(1500)).await;
    let log = dev.log();
    gw.stop().await;
    assert_eq!(snap.get("h/a").map(|m| m.payload.as_str()), Some("111"));
    assert_eq!(snap.get("h/b").map(|m| m.payload.as_str()), Some("222"));
    let merged = log
        .iter()
        .filter(|r| r.address == 10 && r.count == 5)
        .count();
    assert_eq!(
        merged, 1,
        "the failing merged read (10, 5) is sent exactly once"
    );
    let singles_a = log
        .iter()
        .filter(|r| r.address == 10 && r.count == 1)
        .count();
    let singles_b = log
        .iter()
        .filter(|r| r.address == 14 && r.count == 1)
        .count();
    assert!(
        singles_a >= 10 && singles_b >= 10,
        "then read separately every cycle"
    );
    assert!(log
        .iter()
        .all(|r| !(r.address <= 12 && 12 < r.address + r.count) || r.count == 5));
}

/// An address that really does not exist inside a block: only its point leaves the merged
/// read (it is probed alone with backoff, first after 10 s, and listed as `unreadable` in
/// diagnostics); its neighbours are read together again, one request per cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_address_costs_its_neighbours_nothing() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 28, &[1, 2, 3, 4]);
    dev.add_holes(Table::Holding, [32, 33]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        r#"
buses:
  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}
devices:
  - id: d
    bus: b
    poll_interval: 100ms
    points:
      - {{ topic: m/a, table: holding, address: 28 }}
      - {{ topic: m/b, table: holding, address: 29 }}
      - {{ topic: m/c, table: holding, address: 30 }}
      - {{ topic: m/d, table: holding, address: 31 }}
      - {{ topic: m/e, table: holding, address: 32, type: u32 }}
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let stats = gw.stats.clone();
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(10), || stats.devices()[0].unreadable()
            == vec!["m/e".to_string()])
        .await,
        "the missing point is listed as unreadable"
    );
    let diag = stats.to_json();
    assert_eq!(
        diag["devices"]["d"]["unreadable"],
        serde_json::json!(["m/e"])
    );
    // Wait out the cycle that found it, then watch a second of polling.
    let mut obs = Observer::connect(gw.broker_port(), "m/#", QoS::AtMostOnce).await;
    let snap = obs.snapshot(Duration::from_millis(300)).await;
    assert_eq!(snap.get("m/d").map(|m| m.payload.as_str()), Some("4"));
    dev.clear_log();
    // Ten cycles' worth of requests (100 ms polls; the first probe of 32 is due at 10 s).
    assert!(
        fieldlink_tests::eventually(Duration::from_secs(10), || dev.log().len() >= 10).await,
        "polling goes on"
    );
    let log = dev.log();
    gw.stop().await;
    let reads: Vec<(u16, u16)> = log.iter().map(|r| (r.address, r.count)).collect();
    assert!(reads.len() >= 8, "about 10 cycles: {reads:?}");
    assert!(
        reads.iter().all(|&r| r == (28, 4)),
        "one merged read of 28-31 per cycle and no probe of 32 before 10 s: {reads:?}"
    );
}
