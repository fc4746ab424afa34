//! What the interop tests share: the simulated meter, gateway files, and readings as
//! subscribers saw them.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, model_from, Gateway, Msg, Observer};

/// A Modbus device with `points` registers, polled every `poll`, each reading published as
/// JSON with its timestamp (so every reading of a topic is distinct and ordered).
pub(crate) async fn device(points: usize, poll: &str) -> (Arc<SimDevice>, String) {
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
pub(crate) fn gateway_yaml(embedded: bool, upstream: &str, state: &Path) -> String {
    let emb = if embedded {
        format!(
            "  embedded:\n    listen: \"127.0.0.1:{}\"\n",
            fieldlink_tests::free_port()
        )
    } else {
        "  embedded:\n    enabled: false\n".to_string()
    };
    format!(
        "id: t\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n{emb}  upstream:\n{upstream}",
        state.display()
    )
}

pub(crate) fn ts(m: &Msg) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&m.payload).ok()?;
    Some(v.get("ts")?.as_str()?.to_string())
}

/// Per data topic, the readings in arrival order.
pub(crate) fn by_topic(msgs: &[Msg]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in msgs {
        if let Some(t) = ts(m) {
            out.entry(m.topic.clone()).or_default().push(t);
        }
    }
    out
}

/// [`by_topic`] of what `obs` saw, with `prefix` taken off the topics.
pub(crate) fn readings(obs: &Observer, prefix: &str) -> BTreeMap<String, Vec<String>> {
    by_topic(&obs.seen.lock().expect("lock"))
        .into_iter()
        .map(|(t, v)| (t.trim_start_matches(prefix).to_string(), v))
        .collect()
}

/// Wait until `obs` (topics under `prefix`) has the newest reading of every topic of
/// `truth`. The queue sends in order, so what it still lacks then is lost (reported by
/// [`compare`]); `false` at the deadline.
pub(crate) async fn newest_arrived(
    obs: &Observer,
    prefix: &str,
    truth: &BTreeMap<String, Vec<String>>,
    timeout: Duration,
) -> bool {
    eventually(timeout, || {
        let got = readings(obs, prefix);
        truth.iter().all(|(topic, r)| {
            r.last()
                .is_none_or(|last| got.get(topic).is_some_and(|g| g.contains(last)))
        })
    })
    .await
}

/// How many readings of `topic` `obs` saw.
pub(crate) fn count_on(obs: &Observer, topic: &str) -> usize {
    obs.seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.topic == topic && ts(m).is_some())
        .count()
}

/// Per topic: readings of `truth` missing from `got`, and whether `got`'s first occurrences
/// are in order. Returns (missing, duplicates, out_of_order).
pub(crate) fn compare(
    truth: &BTreeMap<String, Vec<String>>,
    got: &BTreeMap<String, Vec<String>>,
) -> (usize, usize, usize) {
    let (mut missing, mut dups, mut disorder) = (0, 0, 0);
    for (topic, readings) in truth {
        let empty = Vec::new();
        let g = got.get(topic).unwrap_or(&empty);
        let set: std::collections::HashSet<&String> = g.iter().collect();
        for r in readings.iter().filter(|r| !set.contains(r)) {
            eprintln!("missing: {topic} {r}");
            missing += 1;
        }
        dups += g.len() - set.len();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&String> = g.iter().filter(|r| seen.insert(*r)).collect();
        disorder += firsts.windows(2).filter(|w| w[0] >= w[1]).count();
    }
    (missing, dups, disorder)
}

/// A gateway on `url` with extra upstream keys, upstream only.
pub(crate) async fn upstream_gateway(
    url: &str,
    extra: &str,
    state: &Path,
    mapping: &str,
) -> Gateway {
    let up = format!("    url: {url}\n    keepalive: 5s\n{extra}");
    Gateway::start(model_from(&gateway_yaml(false, &up, state), mapping)).await
}
