//! Interop suite: the gateway against real mosquitto brokers (plain, user/password, TLS,
//! mutual TLS), a 20 s outage at 50 readings/s, the topic prefix, retained state after a
//! broker restart, commands from upstream, and both brokers at once.
//!
//! Needs mosquitto (`apt-get install -y mosquitto mosquitto-clients`): without it every test
//! prints `SKIPPED` and its reason (`Broker::start`), and fails when `CI` is set.
//!
//! No test waits a fixed time to synchronise: each waits, with a deadline, for what it needs
//! (a message a subscriber saw, a counter in the gateway's `Stats` or diagnostics, a
//! connection accepted). Nothing here waits to see that something does not happen: a refused
//! login or certificate is checked by its failure counter and `connects == 0`.

mod process;
mod support;

use std::{
    collections::HashMap,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use fieldlink_drivers::modbus::Table;
use fieldlink_tests::{
    eventually, model_from,
    mosquitto::{Broker, BrokerOpts, Pki},
    publisher, Gateway, Msg, Observer, Proxy,
};
use rumqttc::QoS;

use support::{
    compare, count_on, device, gateway_yaml, newest_arrived, readings, upstream_gateway,
};

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

/// `homeassistant.upstream: true`: a Home Assistant connected to the cloud broker sees
/// the gateway's entities there, their topics under the upstream prefix, and its birth
/// message brings the configs and then the states again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_discovery_upstream_carries_the_prefix() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (_dev, mapping) = device(1, "200ms").await;
    let up = format!(
        "    url: mqtt://127.0.0.1:{}\n    prefix: sites/t/\n    accept_commands: true\n",
        broker.port
    );
    let gw = Gateway::start(model_from(
        &format!(
            "{}homeassistant: {{ upstream: true }}\n",
            gateway_yaml(false, &up, state.path())
        ),
        &mapping,
    ))
    .await;
    let mut ha = Observer::connect(broker.port, "homeassistant/#", QoS::AtLeastOnce).await;
    let topic = "homeassistant/number/fieldlink_t_meter_casa_setpoint/config";
    let m = ha
        .next_on(topic, Duration::from_secs(10))
        .await
        .expect("the setpoint's config upstream, not under the prefix");
    // Retained: a Home Assistant that connects later finds it.
    let mut late = Observer::connect(broker.port, topic, QoS::AtLeastOnce).await;
    let again = late
        .next_on(topic, Duration::from_secs(5))
        .await
        .expect("retained upstream");
    assert!(again.retain);
    let c: serde_json::Value = serde_json::from_str(&m.payload).expect("JSON config");
    assert_eq!(c["state_topic"], "sites/t/casa/setpoint");
    assert_eq!(c["command_topic"], "sites/t/casa/setpoint/set");
    assert_eq!(c["availability"][0]["topic"], "sites/t/fieldlink/t/status");
    assert_eq!(
        c["availability"][1]["topic"],
        "sites/t/fieldlink/t/meter/availability"
    );
    // Home Assistant (re)starts on the cloud broker: configs, then the states.
    let mut all = Observer::connect(broker.port, "#", QoS::AtLeastOnce).await;
    let _ = all.collect(Duration::from_millis(500)).await;
    let client = fieldlink_tests::publisher(broker.port).await;
    client
        .publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await
        .expect("birth message");
    let after = all
        .collect_until(
            |m| m.topic == "sites/t/casa/setpoint",
            Duration::from_secs(10),
        )
        .await;
    let config = after.iter().position(|m| m.topic == topic);
    let value = after
        .iter()
        .position(|m| m.topic == "sites/t/casa/setpoint");
    assert!(
        matches!((config, value), (Some(c), Some(v)) if c < v),
        "configs again, then the states: {:?}",
        after.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    gw.stop().await;
}
