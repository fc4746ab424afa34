//! Interop suite: the gateway against real mosquitto brokers (plain, user/password, TLS,
//! mutual TLS), a 20 s outage at 50 readings/s, the topic prefix, retained state after a
//! broker restart, commands from upstream, and both brokers at once.
//!
//! Needs mosquitto (`apt-get install -y mosquitto mosquitto-clients`): skipped without it,
//! failed without it when `CI` is set.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually,
    model_from,
    mosquitto::{Broker, BrokerOpts, Pki},
    publisher, Gateway, Msg, Observer, Proxy,
};
use rumqttc::QoS;

/// A Modbus device with `points` registers, polled every `poll`, each reading published as
/// JSON with its timestamp (so every reading of a topic is distinct and ordered).
async fn device(points: usize, poll: &str) -> (Arc<SimDevice>, String) {
    let sim = SimServer::new();
    let dev = sim.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &vec![7; points.max(1)]);
    dev.set_registers(Table::Holding, 100, &[0]);
    let port = sim.spawn_local().await.expect("sim");
    let mut m = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}\ndevices:\n  - id: meter\n    bus: b\n    poll_interval: {poll}\n    points:\n"
    );
    for i in 0..points {
        m.push_str(&format!(
            "      - {{ topic: casa/p{i}, table: holding, address: {i}, publish: every_poll, payload: json }}\n"
        ));
    }
    m.push_str("      - { topic: casa/setpoint, table: holding, address: 100, writable: true, min: 0, max: 50 }\n");
    (dev, m)
}

/// A gateway file with an upstream section (and the embedded broker on or off).
fn gateway_yaml(embedded: bool, upstream: &str, state: &Path) -> String {
    let emb = if embedded {
        format!("  embedded:\n    listen: \"127.0.0.1:{}\"\n", fieldlink_tests::free_port())
    } else {
        "  embedded:\n    enabled: false\n".to_string()
    };
    format!(
        "id: t\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n{emb}  keepalive: 5s\n  upstream:\n{upstream}",
        state.display()
    )
}

fn ts(m: &Msg) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&m.payload).ok()?;
    Some(v.get("ts")?.as_str()?.to_string())
}

/// Per data topic, the readings in arrival order.
fn by_topic(msgs: &[Msg]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in msgs {
        if let Some(t) = ts(m) {
            out.entry(m.topic.clone()).or_default().push(t);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_status_and_retained_state_after_a_broker_restart() {
    let Some(mut broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (_dev, mapping) = device(3, "200ms").await;
    let up = format!(
        "    url: mqtt://127.0.0.1:{}\n    prefix: sites/t/\n    keepalive: 5s\n",
        broker.port
    );
    let gw = Gateway::start(model_from(&gateway_yaml(false, &up, state.path()), &mapping)).await;
    let mut obs = Observer::connect(broker.port, "#", QoS::AtLeastOnce).await;
    assert!(
        obs.wait_seen("sites/t/fieldlink/t/status", "online", Duration::from_secs(10))
            .await,
        "status online under the prefix"
    );
    let m = obs
        .next_on("sites/t/casa/p0", Duration::from_secs(5))
        .await
        .expect("a reading under the prefix");
    assert!(m.payload.contains("\"value\":7"), "{}", m.payload);
    assert!(
        obs.wait_seen("sites/t/fieldlink/t/meter/availability", "online", Duration::from_secs(5))
            .await
    );
    // No topic outside the prefix.
    assert!(obs
        .seen
        .lock()
        .expect("lock")
        .iter()
        .all(|m| m.topic.starts_with("sites/t/")));

    // The broker restarts without persistence: every retained message is gone. After the
    // gateway reconnects, a new subscriber sees the last values again.
    broker.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart();
    assert!(
        eventually(Duration::from_secs(20), || gw.stats.upstream.connects.load(Relaxed) >= 2).await,
        "gateway reconnected"
    );
    let mut late = Observer::connect(broker.port, "sites/t/#", QoS::AtLeastOnce).await;
    // The first message of each topic a new subscriber gets is the retained one.
    let mut snap: HashMap<String, Msg> = HashMap::new();
    for m in late.collect(Duration::from_secs(2)).await {
        snap.entry(m.topic.clone()).or_insert(m);
    }
    for topic in [
        "sites/t/fieldlink/t/status",
        "sites/t/fieldlink/t/meter/availability",
        "sites/t/casa/p0",
        "sites/t/casa/p2",
        "sites/t/casa/setpoint",
    ] {
        let m = snap.get(topic).unwrap_or_else(|| panic!("{topic} retained after restart: {snap:?}"));
        assert!(m.retain, "{topic} delivered as retained");
    }
    assert_eq!(snap["sites/t/fieldlink/t/status"].payload, "online");
    assert_eq!(snap["sites/t/casa/setpoint"].payload, "0");
    gw.stop().await;
    // Clean shutdown: offline, retained.
    let mut after = Observer::connect(broker.port, "sites/t/fieldlink/t/status", QoS::AtLeastOnce).await;
    assert!(after.wait_payload("sites/t/fieldlink/t/status", "offline", Duration::from_secs(5)).await);
}

/// Per topic: readings of `truth` missing from `got`, and whether `got`'s first occurrences
/// are in order. Returns (missing, duplicates, out_of_order).
fn compare(truth: &BTreeMap<String, Vec<String>>, got: &BTreeMap<String, Vec<String>>) -> (usize, usize, usize) {
    let (mut missing, mut dups, mut disorder) = (0, 0, 0);
    for (topic, readings) in truth {
        let empty = Vec::new();
        let g = got.get(topic).unwrap_or(&empty);
        let set: std::collections::HashSet<&String> = g.iter().collect();
        missing += readings.iter().filter(|r| !set.contains(r)).count();
        dups += g.len() - set.len();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&String> = g.iter().filter(|r| seen.insert(*r)).collect();
        disorder += firsts.windows(2).filter(|w| w[0] >= w[1]).count();
    }
    (missing, dups, disorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_second_outage_at_fifty_readings_per_second_loses_nothing() {
    // A broker with persistence, stopped gracefully: what it acknowledged survives its
    // restart, so every reading must reach the subscriber (a persistent session).
    let Some(mut broker) = Broker::start(&BrokerOpts {
        persistence: true,
        ..BrokerOpts::default()
    }) else {
        return;
    };
    let proxy = Proxy::start(broker.port).await;
    let state = tempfile::tempdir().expect("tempdir");
    let (dev, mapping) = device(5, "100ms").await;
    let up = format!(
        "    url: mqtt://127.0.0.1:{}\n    prefix: sites/t/\n    keepalive: 5s\n",
        proxy.port
    );
    let mut sub = Observer::connect_as(broker.port, "sites/t/casa/#", QoS::AtLeastOnce, "sub-outage", false).await;
    let gw = Gateway::start(model_from(&gateway_yaml(true, &up, state.path()), &mapping)).await;
    let mut local = Observer::connect(gw.broker_port(), "casa/#", QoS::AtLeastOnce).await;
    assert!(sub.next_on("sites/t/casa/p0", Duration::from_secs(10)).await.is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Outage: the broker dies, and stays unreachable for 20 s.
    proxy.set_accepting(false);
    broker.terminate();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let queued = gw.stats.upstream.queue_depth.load(Relaxed);
    broker.restart();
    // The subscriber reconnects on its own (same session) before the gateway may.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_accepting(true);
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || gw.stats.upstream.connected.load(Relaxed)
            && gw.stats.upstream.queue_depth.load(Relaxed) < 20)
        .await,
        "backlog drained"
    );
    let drained = back.elapsed();
    // Stop the readings, let the last ones through, then compare everything.
    dev.set_responding(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(eventually(Duration::from_secs(20), || gw.stats.upstream.queue_depth.load(Relaxed) == 0).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let truth = by_topic(&local.collect(Duration::from_millis(100)).await);
    let upstream = sub.collect(Duration::from_millis(500)).await;
    let got: BTreeMap<String, Vec<String>> = by_topic(&upstream)
        .into_iter()
        .map(|(t, v)| (t.trim_start_matches("sites/t/").to_string(), v))
        .collect();
    let total: usize = truth.values().map(Vec::len).sum();
    let (missing, dups, disorder) = compare(&truth, &got);
    eprintln!(
        "outage {:.1}s: {queued} queued, {total} readings in all, {missing} missing, {dups} duplicates, {disorder} out of order; backlog drained {:.1}s after the broker came back",
        back.duration_since(outage).as_secs_f64(),
        drained.as_secs_f64()
    );
    assert!(total > 1000, "about 50 readings/s for 25 s: {total}");
    assert!(queued > 800, "the outage queued readings: {queued}");
    assert_eq!(missing, 0, "every reading arrives upstream");
    assert_eq!(disorder, 0, "in order per topic");
    gw.stop().await;
    drop(broker);
}
