//! Interop suite: the gateway against real mosquitto brokers (plain, user/password, TLS,
//! mutual TLS), a 20 s outage at 50 readings/s, the topic prefix, retained state after a
//! broker restart, commands from upstream, and both brokers at once.
//!
//! Needs mosquitto (`apt-get install -y mosquitto mosquitto-clients`): without it every test
//! prints `SKIPPED` and its reason (`Broker::start`), and fails when `CI` is set.
//!
//! No test waits a fixed time to synchronise: each waits, with a deadline, for what it needs
//! (a message a subscriber saw, a counter in the gateway's `Stats` or diagnostics, a
//! connection accepted). The one bounded wait for something that must not happen says so.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually, model_from,
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

/// [`by_topic`] of what `obs` saw, with `prefix` taken off the topics.
fn readings(obs: &Observer, prefix: &str) -> BTreeMap<String, Vec<String>> {
    by_topic(&obs.seen.lock().expect("lock"))
        .into_iter()
        .map(|(t, v)| (t.trim_start_matches(prefix).to_string(), v))
        .collect()
}

/// Wait until `obs` (topics under `prefix`) has the newest reading of every topic of
/// `truth`. The queue sends in order, so what it still lacks then is lost (reported by
/// [`compare`]); `false` at the deadline.
async fn newest_arrived(
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
fn count_on(obs: &Observer, topic: &str) -> usize {
    obs.seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.topic == topic && ts(m).is_some())
        .count()
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
    let gw = Gateway::start(model_from(
        &gateway_yaml(false, &up, state.path()),
        &mapping,
    ))
    .await;
    let mut obs = Observer::connect(broker.port, "#", QoS::AtLeastOnce).await;
    assert!(
        obs.wait_seen(
            "sites/t/fieldlink/t/status",
            "online",
            Duration::from_secs(10)
        )
        .await,
        "status online under the prefix"
    );
    let m = obs
        .next_on("sites/t/casa/p0", Duration::from_secs(5))
        .await
        .expect("a reading under the prefix");
    assert!(m.payload.contains("\"value\":7"), "{}", m.payload);
    assert!(
        obs.wait_seen(
            "sites/t/fieldlink/t/meter/availability",
            "online",
            Duration::from_secs(5)
        )
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
    assert!(
        eventually(Duration::from_secs(10), || !gw
            .stats
            .upstream
            .connected
            .load(Relaxed))
        .await,
        "gateway saw the broker die"
    );
    broker.restart();
    assert!(
        eventually(Duration::from_secs(20), || gw
            .stats
            .upstream
            .connects
            .load(Relaxed)
            >= 2)
        .await,
        "gateway reconnected"
    );
    let mut late = Observer::connect(broker.port, "sites/t/#", QoS::AtLeastOnce).await;
    let topics = [
        "sites/t/fieldlink/t/status",
        "sites/t/fieldlink/t/meter/availability",
        "sites/t/casa/p0",
        "sites/t/casa/p2",
        "sites/t/casa/setpoint",
    ];
    // The first message of each topic a new subscriber gets is the retained one: wait until
    // each topic has one (`casa/setpoint` changes never, so only the republished state has it).
    let mut snap: HashMap<String, Msg> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topics.iter().all(|t| snap.contains_key(*t)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = late.next_matching(|_| true, left).await else {
            break;
        };
        snap.entry(m.topic.clone()).or_insert(m);
    }
    for topic in topics {
        let m = snap
            .get(topic)
            .unwrap_or_else(|| panic!("{topic} retained after restart: {snap:?}"));
        assert!(m.retain, "{topic} delivered as retained");
    }
    assert_eq!(snap["sites/t/fieldlink/t/status"].payload, "online");
    assert_eq!(snap["sites/t/casa/setpoint"].payload, "0");
    gw.stop().await;
    // Clean shutdown: offline, retained.
    let mut after =
        Observer::connect(broker.port, "sites/t/fieldlink/t/status", QoS::AtLeastOnce).await;
    assert!(
        after
            .wait_payload(
                "sites/t/fieldlink/t/status",
                "offline",
                Duration::from_secs(5)
            )
            .await
    );
}

/// Per topic: readings of `truth` missing from `got`, and whether `got`'s first occurrences
/// are in order. Returns (missing, duplicates, out_of_order).
fn compare(
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
    let mut sub = Observer::connect_as(
        broker.port,
        "sites/t/casa/#",
        QoS::AtLeastOnce,
        "sub-outage",
        false,
    )
    .await;
    let gw = Gateway::start(model_from(&gateway_yaml(true, &up, state.path()), &mapping)).await;
    let mut local = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    // Readings flow upstream before the outage: 2 s of them (20 at 10/s on p0).
    assert!(
        eventually(Duration::from_secs(10), || count_on(
            &sub,
            "sites/t/casa/p0"
        ) >= 20)
        .await,
        "readings upstream before the outage"
    );

    // Outage: the broker dies, and stays unreachable until 20 s of readings (1 000 at
    // 50/s) wait in the queue.
    proxy.set_accepting(false);
    broker.terminate();
    let outage = Instant::now();
    assert!(
        eventually(Duration::from_secs(40), || gw
            .stats
            .upstream
            .queue_depth
            .load(Relaxed)
            >= 1000)
        .await,
        "the outage queues readings"
    );
    let queued = gw.stats.upstream.queue_depth.load(Relaxed);
    broker.restart();
    // The subscriber reconnects on its own (same session) before the gateway may: a probe
    // on its filter reaches it once it is back (the probe is no reading: not compared).
    let probe = publisher(broker.port).await;
    probe
        .publish("sites/t/casa/probe", QoS::AtLeastOnce, false, "probe")
        .await
        .expect("probe");
    assert!(
        sub.wait_seen("sites/t/casa/probe", "probe", Duration::from_secs(20))
            .await,
        "the subscriber reconnected"
    );
    proxy.set_accepting(true);
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(60), || gw
            .stats
            .upstream
            .connected
            .load(Relaxed)
            && gw.stats.upstream.queue_depth.load(Relaxed) < 20)
        .await,
        "backlog drained"
    );
    let drained = back.elapsed();
    // Stop the readings: once the device is offline, the local subscriber has them all;
    // then wait until the newest of each topic arrived upstream, and compare everything.
    dev.set_responding(false);
    assert!(
        local
            .wait_seen(
                "fieldlink/t/meter/availability",
                "offline",
                Duration::from_secs(10)
            )
            .await,
        "the device went offline"
    );
    let truth = readings(&local, "");
    assert!(
        newest_arrived(&sub, "sites/t/", &truth, Duration::from_secs(20)).await,
        "the last readings arrived upstream"
    );
    let got = readings(&sub, "sites/t/");
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

/// A gateway on `url` with extra upstream keys, upstream only.
async fn upstream_gateway(url: &str, extra: &str, state: &Path, mapping: &str) -> Gateway {
    let up = format!("    url: {url}\n    keepalive: 5s\n{extra}");
    Gateway::start(model_from(&gateway_yaml(false, &up, state), mapping)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_and_a_wrong_password() {
    let Some(broker) = Broker::start(&BrokerOpts {
        users: vec![
            ("gw".into(), "s3cret pass".into()),
            ("obs".into(), "obs".into()),
        ],
        ..BrokerOpts::default()
    }) else {
        return;
    };
    fieldlink_tests::capture_logs();
    let state = tempfile::tempdir().expect("tempdir");
    let pw = state.path().join("password");
    std::fs::write(&pw, "s3cret pass\n").expect("pw");
    let (_dev, mapping) = device(1, "200ms").await;
    let mut obs = Observer::connect_with(
        broker.port,
        "#",
        QoS::AtLeastOnce,
        "obs-auth",
        true,
        Some(("obs", "obs")),
    )
    .await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let good = upstream_gateway(
        &url,
        &format!("    client_id: good\n    username: gw\n    password_file: {}\n    queue: {{ dir: {}/good }}\n", pw.display(), state.path().display()),
        state.path(),
        &mapping,
    )
    .await;
    assert!(
        obs.next_on("casa/p0", Duration::from_secs(10))
            .await
            .is_some(),
        "password from a file works"
    );

    // The wrong password, from the environment: refused, retried with backoff, no crash.
    std::env::set_var("FIELDLINK_TEST_WRONG_PW", "not it");
    let started = Instant::now();
    let bad = upstream_gateway(
        &url,
        &format!("    client_id: bad\n    username: gw\n    password_env: FIELDLINK_TEST_WRONG_PW\n    queue: {{ dir: {}/bad }}\n", state.path().display()),
        state.path(),
        &mapping,
    )
    .await;
    // Three refusals: the first attempt, then two retries after backoff waits of at least
    // 125 ms and 250 ms (half of 250 ms and 500 ms, the rest is jitter).
    assert!(
        eventually(Duration::from_secs(10), || bad
            .stats
            .upstream
            .connect_failures
            .load(Relaxed)
            >= 3)
        .await,
        "retried"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(375),
        "retried with backoff: 3 attempts in {took:?}"
    );
    assert_eq!(
        bad.stats.upstream.connects.load(Relaxed),
        0,
        "never connected"
    );
    assert!(!bad.stats.upstream.connected.load(Relaxed));
    assert!(
        eventually(Duration::from_secs(5), || bad
            .stats
            .upstream
            .queue_depth
            .load(Relaxed)
            > 0)
        .await,
        "readings wait in the queue"
    );
    assert!(
        fieldlink_tests::logged("user name or password"),
        "the log says why"
    );
    assert!(
        !fieldlink_tests::logged("not it"),
        "the password is never logged"
    );
    bad.stop().await;
    good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_broker_and_mutual_tls_presents_a_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(certs.path());
    let tls = Some((
        pki.ca.clone(),
        pki.server_cert.clone(),
        pki.server_key.clone(),
    ));
    let Some(broker) = Broker::start(&BrokerOpts {
        tls: tls.clone(),
        ..BrokerOpts::default()
    }) else {
        return;
    };
    let Some(mtls) = Broker::start(&BrokerOpts {
        tls,
        require_certificate: true,
        ..BrokerOpts::default()
    }) else {
        return;
    };
    fieldlink_tests::capture_logs();
    let state = tempfile::tempdir().expect("tempdir");
    let (_dev, mapping) = device(1, "200ms").await;
    let s = state.path().display();
    let url = |b: &Broker| format!("mqtts://127.0.0.1:{}", b.tls_port.expect("tls port"));
    let mut obs = Observer::connect(broker.port, "#", QoS::AtLeastOnce).await;
    let mut obs_m = Observer::connect(mtls.port, "#", QoS::AtLeastOnce).await;

    let ok = upstream_gateway(&url(&broker), &format!("    client_id: tls-ok\n    prefix: ok/\n    ca_file: {}\n    queue: {{ dir: {s}/a }}\n", pki.ca.display()), state.path(), &mapping).await;
    let wrong_ca = upstream_gateway(&url(&broker), &format!("    client_id: tls-wrong\n    prefix: wrong/\n    ca_file: {}\n    queue: {{ dir: {s}/b }}\n", pki.other_ca.display()), state.path(), &mapping).await;
    let mutual = upstream_gateway(&url(&mtls), &format!("    client_id: m-ok\n    prefix: m/\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    queue: {{ dir: {s}/c }}\n", pki.ca.display(), pki.client_cert.display(), pki.client_key.display()), state.path(), &mapping).await;
    let no_cert = upstream_gateway(&url(&mtls), &format!("    client_id: m-none\n    prefix: none/\n    ca_file: {}\n    queue: {{ dir: {s}/d }}\n", pki.ca.display()), state.path(), &mapping).await;

    assert!(
        obs.next_on("ok/casa/p0", Duration::from_secs(10))
            .await
            .is_some(),
        "TLS with the right CA"
    );
    assert!(
        obs_m
            .next_on("m/casa/p0", Duration::from_secs(10))
            .await
            .is_some(),
        "mutual TLS"
    );
    for (name, gw) in [("wrong CA", &wrong_ca), ("no client certificate", &no_cert)] {
        assert!(
            eventually(Duration::from_secs(10), || gw
                .stats
                .upstream
                .connect_failures
                .load(Relaxed)
                >= 2)
            .await,
            "{name}: retried"
        );
        assert_eq!(
            gw.stats.upstream.connects.load(Relaxed),
            0,
            "{name}: refused"
        );
        assert!(
            !gw.stats.upstream.connected.load(Relaxed),
            "{name}: refused"
        );
    }
    assert!(obs
        .seen
        .lock()
        .expect("lock")
        .iter()
        .all(|m| !m.topic.starts_with("wrong/")));
    assert!(obs_m
        .seen
        .lock()
        .expect("lock")
        .iter()
        .all(|m| !m.topic.starts_with("none/")));
    assert!(
        fieldlink_tests::logged("UnknownIssuer"),
        "the log names the certificate problem"
    );
    for gw in [ok, wrong_ca, mutual, no_cert] {
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_brokers_get_the_same_readings_and_upstream_commands_work() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (dev, mapping) = device(2, "200ms").await;
    let up = format!(
        "    url: mqtt://127.0.0.1:{}\n    prefix: sites/t/\n    accept_commands: true\n",
        broker.port
    );
    let mut remote = Observer::connect(broker.port, "sites/t/#", QoS::AtLeastOnce).await;
    let gw = Gateway::start(model_from(&gateway_yaml(true, &up, state.path()), &mapping)).await;
    let mut local = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    assert!(
        eventually(Duration::from_secs(10), || count_on(&local, "casa/p0")
            >= 10)
        .await,
        "readings locally"
    );
    let l = readings(&local, "");
    assert!(
        newest_arrived(&remote, "sites/t/", &l, Duration::from_secs(10)).await,
        "the same readings reach upstream"
    );
    let r = readings(&remote, "sites/t/");
    let (missing, _, disorder) = compare(&l, &r);
    assert!(l["casa/p0"].len() >= 10, "readings locally: {l:?}");
    assert_eq!((missing, disorder), (0, 0), "the same readings upstream");

    // A command from upstream writes the register; the result goes back upstream and the
    // new value reaches both brokers.
    let cmd = publisher(broker.port).await;
    cmd.publish(
        "sites/t/casa/setpoint/set",
        QoS::AtLeastOnce,
        false,
        r#"{"value":25,"id":"c1"}"#,
    )
    .await
    .expect("publish");
    let res = remote
        .next_on("sites/t/casa/setpoint/set/result", Duration::from_secs(5))
        .await
        .expect("result upstream");
    let v: serde_json::Value = serde_json::from_str(&res.payload).expect("json");
    assert_eq!(v, serde_json::json!({"ok": true, "value": 25, "id": "c1"}));
    assert_eq!(dev.registers(Table::Holding, 100, 1), vec![25]);
    assert!(
        local
            .wait_seen("casa/setpoint", "25", Duration::from_secs(5))
            .await
    );
    assert!(
        remote
            .wait_seen("sites/t/casa/setpoint", "25", Duration::from_secs(5))
            .await
    );
    // Out of range: rejected with the reason, nothing written.
    cmd.publish("sites/t/casa/setpoint/set", QoS::AtLeastOnce, false, "99")
        .await
        .expect("publish");
    let res = remote
        .next_on("sites/t/casa/setpoint/set/result", Duration::from_secs(5))
        .await
        .expect("rejection upstream");
    let v: serde_json::Value = serde_json::from_str(&res.payload).expect("json");
    assert_eq!(v["ok"], false, "{}", res.payload);
    assert_eq!(v["error"], "value 99 above max 50");
    assert_eq!(dev.registers(Table::Holding, 100, 1), vec![25]);
    gw.stop().await;
}

/// The `fieldlink` binary, built by `cargo test --workspace` (built here if missing).
fn fieldlink_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("fieldlink"))
        .expect("target dir");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = std::process::Command::new(cargo)
            .args(["build", "-p", "fieldlink", "--bin", "fieldlink"])
            .status()
            .expect("cargo build");
        assert!(ok.success());
    }
    bin
}

/// A gateway process on config files in `dir`.
struct Process {
    child: std::process::Child,
}

impl Process {
    fn start(dir: &Path) -> Process {
        let child = std::process::Command::new(fieldlink_bin())
            .args(["run", "--config"])
            .arg(dir.join("gateway.yaml"))
            .env(
                "RUST_LOG",
                std::env::var("CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn fieldlink");
        Process { child }
    }

    fn signal(&mut self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config files for a gateway process: both brokers, upstream through `upstream_port`.
fn process_config(dir: &Path, embedded: u16, upstream_port: u16, mapping: &str) {
    let up = format!(
        "    url: mqtt://127.0.0.1:{upstream_port}\n    keepalive: 2s\n    queue:\n      flush_interval: 1s\n"
    );
    let gw = gateway_yaml(true, &up, &dir.join("state"))
        .replace("diagnostics_interval: 1h", "diagnostics_interval: 1s")
        .replace(
            "embedded:\n    listen: \"127.0.0.1:",
            &format!("embedded:\n    listen: \"127.0.0.1:{embedded}\"\n    #"),
        );
    std::fs::write(dir.join("gateway.yaml"), gw).expect("gateway.yaml");
    std::fs::write(dir.join("mapping.yaml"), mapping).expect("mapping.yaml");
}

/// Wait for the process's embedded broker to accept a connection, then subscribe to it.
async fn local_observer(port: u16) -> Observer {
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await,
        "gateway process did not start"
    );
    Observer::connect(port, "#", QoS::AtLeastOnce).await
}

/// The upstream queue depth as the process reports it on `<base>/diagnostics`.
fn queue_depth(m: &Msg) -> Option<u64> {
    if m.topic != "fieldlink/t/diagnostics" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&m.payload).ok()?;
    v.get("upstream")?.get("queue_depth")?.as_u64()
}

/// Wait until the process reports (`<base>/diagnostics`, every second) a queue depth for
/// which `ok` holds.
async fn wait_depth(obs: &mut Observer, ok: impl Fn(u64) -> bool, timeout: Duration) -> bool {
    obs.next_matching(|m| queue_depth(m).is_some_and(&ok), timeout)
        .await
        .is_some()
}

/// Stop the gateway with `signal` during an outage and restart it: (missing readings, of
/// those older than the last flush interval); `None` when mosquitto is missing (skipped).
async fn restart_during_outage(signal: &str) -> Option<(usize, usize)> {
    let broker = Broker::start(&BrokerOpts::default())?;
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (dev, mapping) = device(5, "100ms").await;
    let embedded = fieldlink_tests::free_port();
    process_config(dir.path(), embedded, proxy.port, &mapping);
    let mut sub = Observer::connect(broker.port, "casa/#", QoS::AtLeastOnce).await;
    let mut p1 = Process::start(dir.path());
    let mut local1 = local_observer(embedded).await;
    assert!(sub
        .next_on("casa/p0", Duration::from_secs(10))
        .await
        .is_some());
    // The uplink goes down; readings queue up (5 s of them at 50/s, as the process
    // reports); the gateway is stopped in the middle.
    proxy.set_accepting(false);
    proxy.cut();
    assert!(
        wait_depth(&mut local1, |d| d >= 250, Duration::from_secs(20)).await,
        "readings queued during the outage"
    );
    let killed_at = std::time::SystemTime::now();
    p1.signal(signal);
    let truth1 = local1.seen.lock().expect("lock").clone();
    let mut p2 = Process::start(dir.path());
    let mut local2 = local_observer(embedded).await;
    // The restarted gateway runs with its queue while the uplink is still down.
    assert!(
        wait_depth(&mut local2, |d| d > 0, Duration::from_secs(20)).await,
        "the restarted gateway queues"
    );
    proxy.set_accepting(true);
    // Drained: the restarted gateway reports an (almost) empty queue.
    assert!(
        wait_depth(&mut local2, |d| d < 20, Duration::from_secs(60)).await,
        "the queue was replayed"
    );
    // Stop the readings: once the device is offline, the local subscriber has them all;
    // then wait until the newest of each topic arrived upstream.
    dev.set_responding(false);
    assert!(
        local2
            .wait_seen(
                "fieldlink/t/meter/availability",
                "offline",
                Duration::from_secs(10)
            )
            .await,
        "the device went offline"
    );
    let mut truth = truth1;
    truth.extend(local2.seen.lock().expect("lock").iter().cloned());
    let truth = by_topic(&truth);
    assert!(
        newest_arrived(&sub, "", &truth, Duration::from_secs(20)).await,
        "the last readings arrived upstream"
    );
    // Everything the subscriber got (`seen` includes what `next_on` consumed).
    let got = readings(&sub, "");
    // What is missing, and how long before the stop each missing reading was taken.
    let bound =
        humantime::format_rfc3339_millis(killed_at - Duration::from_millis(1300)).to_string();
    let mut late = 0;
    for (topic, readings) in &truth {
        let set: std::collections::HashSet<&String> = got
            .get(topic)
            .map(|g| g.iter().collect())
            .unwrap_or_default();
        for r in readings.iter().filter(|r| !set.contains(r)) {
            if *r < bound {
                eprintln!(
                    "missing beyond the bound: {topic} {r} (stopped {})",
                    humantime::format_rfc3339_millis(killed_at)
                );
                late += 1;
            }
        }
    }
    let (missing, dups, disorder) = compare(&truth, &got);
    let total: usize = truth.values().map(Vec::len).sum();
    eprintln!("restart with {signal} during an outage: {total} readings, {missing} missing ({late} older than the last flush interval), {dups} duplicates, {disorder} out of order");
    assert_eq!(disorder, 0);
    assert!(
        total > 300,
        "readings before and after the restart: {total}"
    );
    p2.signal("-TERM");
    Some((missing, late))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_loses_nothing() {
    // Without mosquitto `Broker::start` printed why (and failed under CI).
    let Some((missing, _)) = restart_during_outage("-TERM").await else {
        return;
    };
    assert_eq!(missing, 0, "SIGTERM loses nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_outage_loses_at_most_the_last_batch() {
    let Some((_, beyond_bound)) = restart_during_outage("-KILL").await else {
        return;
    };
    assert_eq!(
        beyond_bound, 0,
        "only readings of the last flush interval may be lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fires_the_last_will_upstream() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_dev, mapping) = device(1, "500ms").await;
    let embedded = fieldlink_tests::free_port();
    process_config(dir.path(), embedded, broker.port, &mapping);
    let mut sub = Observer::connect(broker.port, "fieldlink/t/status", QoS::AtLeastOnce).await;
    let mut p = Process::start(dir.path());
    assert!(
        sub.wait_payload("fieldlink/t/status", "online", Duration::from_secs(20))
            .await
    );
    p.signal("-KILL");
    assert!(
        sub.wait_payload("fieldlink/t/status", "offline", Duration::from_secs(10))
            .await,
        "the Last Will"
    );
    let mut late = Observer::connect(broker.port, "fieldlink/t/status", QoS::AtLeastOnce).await;
    let m = late
        .next_on("fieldlink/t/status", Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!((m.payload.as_str(), m.retain), ("offline", true));
}
