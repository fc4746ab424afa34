//! The connection front of the embedded broker (issue #21): what a hostile client on the
//! house network tried against rmqtt alone, now refused or closed, checked with
//! Mosquitto's own clients where they can express the case and a raw socket where they
//! cannot (mosquitto_pub itself refuses a wildcard topic or a NUL).
//!
//! Off CI these tests skip when the tools are missing; under `CI` they fail.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    capture_logs, eventually, logged, model_from, mosquitto, raw,
    wire::{
        closed_within, connack_limits, connect, login, next_packet, open_from, publish, still_open,
    },
    Gateway, Observer,
};
use rumqttc::QoS;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;

struct Tools {
    publ: PathBuf,
    sub: PathBuf,
    passwd: PathBuf,
}

fn tools() -> Option<Tools> {
    Some(Tools {
        publ: mosquitto::tool("mosquitto_pub")?,
        sub: mosquitto::tool("mosquitto_sub")?,
        passwd: mosquitto::tool("mosquitto_passwd")?,
    })
}

/// One of Mosquitto's clients with `args` against 127.0.0.1:`port`, run to its end:
/// (exit code, stdout lines).
fn run(bin: &Path, port: u16, args: &[&str]) -> (i32, Vec<String>) {
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// A gateway with one device (`h/temp` read-only, `h/sp` writable) and Home Assistant
/// discovery on (the default); `embedded` is appended under `mqtt.embedded`.
async fn gateway(embedded: &str) -> (Arc<SimDevice>, Gateway) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let sim = server.spawn_local().await.expect("sim");
    let gw = format!(
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n{embedded}diagnostics_interval: 1h\n"
    );
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim} }}\n\
         devices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    points:\n\
         \x20     - {{ topic: h/temp, table: holding, address: 0, type: u16 }}\n\
         \x20     - {{ topic: h/sp, table: holding, address: 1, type: u16, writable: true }}\n"
    );
    (dev, Gateway::start(model_from(&gw, &mapping)).await)
}

/// The Home Assistant configs a new `homeassistant/#` subscriber receives: (topic,
/// payload) per line of `mosquitto_sub -v`, `n` of them.
fn discovery_seen(t: &Tools, port: u16, n: usize) -> Vec<String> {
    let (_, lines) = run(
        &t.sub,
        port,
        &[
            "-t",
            "homeassistant/#",
            "-v",
            "-C",
            &n.to_string(),
            "-W",
            "5",
        ],
    );
    let mut topics: Vec<String> = lines
        .iter()
        .map(|l| l.split_once(' ').map_or(l.clone(), |(t, _)| t.to_string()))
        .collect();
    topics.sort();
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_nul_topic_names_never_hide_the_gateways_state() {
    let Some(t) = tools() else { return };
    let (_dev, gw) = gateway("").await;
    let port = gw.broker_port();
    let mut configs: Vec<String> = fieldlink::homeassistant::configs(&gw.model)
        .into_iter()
        .map(|c| c.topic)
        .collect();
    configs.sort();
    assert!(!configs.is_empty());
    assert_eq!(discovery_seen(&t, port, configs.len()), configs, "before");

    // A retained PUBLISH on a topic name with a wildcard closes the connection (3.1.1:
    // no answer; 5: DISCONNECT 0x90 Topic Name invalid first).
    for topic in [
        &b"homeassistant/#"[..],
        b"fieldlink/#",
        b"fieldlink/t/status\0",
    ] {
        let (mut s, ack) = login(port, &connect(4, b"shadow", true, None, None)).await;
        assert_eq!(ack.map(|a| a.1), Some(vec![0, 0]), "admitted");
        s.write_all(&publish(false, topic, b"shadow", true, false, None))
            .await
            .expect("send");
        let after = closed_within(&mut s, Duration::from_secs(5)).await;
        assert_eq!(after, Some(vec![]), "{topic:?}: closed without an answer");
        let (mut s, ack) = login(port, &connect(5, b"shadow5", true, None, None)).await;
        assert_eq!(ack.map(|a| a.1.get(1).copied()), Some(Some(0)));
        s.write_all(&publish(true, topic, b"shadow", true, false, None))
            .await
            .expect("send");
        let after = closed_within(&mut s, Duration::from_secs(5)).await;
        assert_eq!(after, Some(vec![(0xE0, vec![0x90])]), "{topic:?}: MQTT 5");
    }
    // A Will on `#`: 3.1.1 closed without CONNACK, 5 refused with 0x90; never stored.
    let (mut s, ack) = login(port, &connect(4, b"will", false, Some(b"#"), None)).await;
    assert_eq!(ack, None, "3.1.1 Will on `#` refused");
    assert!(closed_within(&mut s, Duration::from_secs(5))
        .await
        .is_some());
    let (_s, ack) = login(port, &connect(5, b"will5", false, Some(b"#"), None)).await;
    assert_eq!(
        ack.map(|a| a.1),
        Some(vec![0, 0x90, 0]),
        "MQTT 5 Will on `#`"
    );
    assert!(gw.stats.broker.bad_packets.load(Relaxed) >= 8);

    // Home Assistant still finds every real config, and `fieldlink/#` subscribers
    // (libmosquitto) still read the status.
    assert_eq!(discovery_seen(&t, port, configs.len()), configs, "after");
    let (rc, lines) = run(
        &t.sub,
        port,
        &["-t", "fieldlink/#", "-v", "-C", "1", "-W", "5"],
    );
    assert_eq!(rc, 0, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("fieldlink/t/")),
        "{lines:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_or_bad_utf8_in_client_id_or_user_name_is_refused() {
    if tools().is_none() {
        return;
    }
    let (_dev, gw) = gateway("").await;
    let port = gw.broker_port();
    // 3.1.1: identifier rejected (2), bad user name (4); 5: 0x85, 0x86.
    type Login<'a> = Option<(&'a str, &'a str)>;
    let cases: [(u8, &[u8], Login, u8); 6] = [
        (4, b"ha\0x", None, 0x02),
        (4, b"\xff\xfe", None, 0x02),
        (5, b"ha\0x", None, 0x85),
        (4, b"ok", Some(("u\0", "p")), 0x04),
        (5, b"ok", Some(("u\0", "p")), 0x86),
        (4, b"ha", None, 0),
    ];
    for (level, id, user, code) in cases {
        let (mut s, ack) = login(port, &connect(level, id, true, None, user)).await;
        let (first, body) = ack.unwrap_or_else(|| panic!("{id:?}: a CONNACK"));
        assert_eq!(
            (first, body.get(1).copied()),
            (0x20, Some(code)),
            "{id:?} {user:?}"
        );
        if code != 0 {
            assert!(closed_within(&mut s, Duration::from_secs(5))
                .await
                .is_some());
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_resolve_and_unknown_ones_are_a_protocol_error() {
    let Some(t) = tools() else { return };
    let (_dev, gw) = gateway("").await;
    let port = gw.broker_port();
    let (mut s, ack) = login(port, &connect(5, b"aliaser", true, None, None)).await;
    let (_, body) = ack.expect("CONNACK");
    assert_eq!(body.get(1), Some(&0));
    assert_eq!(
        connack_limits(&body),
        (Some(10), Some(256 * 1024)),
        "announced"
    );
    // alias 1 = alias/a, alias 2 = alias/b, then alias 1 alone: retained on alias/a.
    for (topic, payload, alias) in [
        (&b"alias/a"[..], &b"one"[..], 1),
        (b"alias/b", b"b", 2),
        (b"", b"two", 1),
    ] {
        s.write_all(&publish(true, topic, payload, true, true, Some(alias)))
            .await
            .expect("send");
        let ack = next_packet(&mut s, Duration::from_secs(5)).await;
        assert_eq!(ack.map(|a| a.0), Some(0x40), "PUBACK");
    }
    let (rc, mut lines) = run(&t.sub, port, &["-t", "alias/#", "-v", "-C", "2", "-W", "5"]);
    lines.sort();
    assert_eq!(
        (rc, lines),
        (0, vec!["alias/a two".to_string(), "alias/b b".to_string()])
    );
    // An empty topic with an alias never set: DISCONNECT 0x82 Protocol Error.
    s.write_all(&publish(true, b"", b"lost", true, false, Some(3)))
        .await
        .expect("send");
    let after = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(after, Some(vec![(0xE0, vec![0x82])]));
    // An alias above the maximum: 0x94 Topic Alias invalid.
    let (mut s, _) = login(port, &connect(5, b"aliaser2", true, None, None)).await;
    s.write_all(&publish(true, b"alias/c", b"x", false, false, Some(11)))
        .await
        .expect("send");
    let after = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(after, Some(vec![(0xE0, vec![0x94])]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_connects_are_closed_after_connect_timeout() {
    if tools().is_none() {
        return;
    }
    let (_dev, gw) = gateway("    connect_timeout: 1s\n").await;
    let port = gw.broker_port();
    // Nothing, one byte, a partial fixed header, a partial body.
    let sends: [&[u8]; 4] = [b"", &[0x10], &[0x10, 0x80], &[0x10, 20, 0, 4, b'M']];
    let mut socks = Vec::new();
    for bytes in sends {
        let mut s = raw::open(port).await.expect("connect");
        s.write_all(bytes).await.expect("send");
        socks.push(s);
    }
    for (i, s) in socks.iter_mut().enumerate() {
        let after = closed_within(s, Duration::from_secs(5)).await;
        assert_eq!(after, Some(vec![]), "socket {i} closed, without an answer");
    }
    assert!(gw.stats.broker.connect_timeouts.load(Relaxed) >= 4);
    assert_eq!(raw::try_login(port, "after", 4, None).await, Some(0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_the_connection_slots() {
    let Some(t) = tools() else { return };
    let (_dev, gw) = gateway("    connect_timeout: 8s\n").await;
    let port = gw.broker_port();
    // More silent connections from 127.0.0.1 than max_connections (32) allows.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.extend(open_from([127, 0, 0, 1], port).await);
    }
    let broker = gw.stats.broker.clone();
    assert!(
        eventually(Duration::from_secs(5), || broker
            .connecting_refused
            .load(Relaxed)
            >= 32)
        .await,
        "all but 8 closed at once"
    );
    // A real login from another address works meanwhile.
    let publ = |source: &str| run(&t.publ, port, &["-A", source, "-t", "front/x", "-m", "1"]).0;
    assert_eq!(publ("127.0.0.2"), 0, "another host logs in");
    let open = still_open(&mut silent).await;
    assert_eq!(open, 8, "the address's 8 slots were held during the login");
    assert_ne!(publ("127.0.0.1"), 0, "the address itself is at its bound");
    // Once the bound closes them, the address logs in again.
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(15)).await.is_some());
    }
    assert_eq!(publ("127.0.0.1"), 0, "slots freed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_sessions_do_not_lock_out_tls_clients() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = mosquitto::Pki::generate(dir.path());
    let users = dir.path().join("users");
    assert!(Command::new(&t.passwd)
        .args(["-c", "-b"])
        .arg(&users)
        .args(["casa", "s3nha"])
        .status()
        .expect("mosquitto_passwd")
        .success());
    let (_dev, gw) = gateway(&format!(
        "    users_file: {}\n    connect_timeout: 8s\n    tls:\n      listen: \"127.0.0.1:0\"\n      cert_file: {}\n      key_file: {}\n",
        users.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    ))
    .await;
    let port = gw.tls_port().expect("TLS listener");
    // 33 TLS sessions, from 33 addresses, that go silent after the handshake.
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&pki.ca).expect("ca");
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut silent = Vec::new();
    for i in 0..33u8 {
        let tcp = open_from([127, 0, 1, 10 + i], port).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        silent.push(connector.connect(name, tcp).await.expect("TLS handshake"));
    }
    // A real TLS client logs in meanwhile.
    let ca = pki.ca.display().to_string();
    let (rc, _) = run(
        &t.publ,
        port,
        &[
            "-A",
            "127.0.0.2",
            "--cafile",
            &ca,
            "-u",
            "casa",
            "-P",
            "s3nha",
            "-t",
            "x",
            "-m",
            "1",
        ],
    );
    assert_eq!(
        rc, 0,
        "a TLS client is served while 33 silent sessions are open"
    );
    let open = still_open(&mut silent).await;
    assert_eq!(open, 33, "they were still open");
    // And they are closed at the bound.
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(15)).await.is_some());
    }
    assert!(gw.stats.broker.connect_timeouts.load(Relaxed) >= 33);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_taking_over_a_session_starts_it_clean() {
    let Some(t) = tools() else { return };
    capture_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    for (i, (u, p)) in [("ha", "ha-secret"), ("intruso", "x")].iter().enumerate() {
        let mut c = Command::new(&t.passwd);
        if i == 0 {
            c.arg("-c");
        }
        assert!(c
            .arg("-b")
            .arg(&users)
            .args([u, p])
            .status()
            .expect("mosquitto_passwd")
            .success());
    }
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user ha\ntopic read #\n\nuser intruso\ntopic readwrite clients/intruso/#\n",
    )
    .expect("acl");
    let (dev, gw) = gateway(&format!(
        "    users_file: {}\n    acl_file: {}\n",
        users.display(),
        acl.display()
    ))
    .await;
    let port = gw.broker_port();
    // Home Assistant's persistent session, subscribed to everything at QoS 1, offline.
    let ha = [
        "-u",
        "ha",
        "-P",
        "ha-secret",
        "-i",
        "ha-persistent",
        "-c",
        "-q",
        "1",
    ];
    let (rc, _) = run(
        &t.sub,
        port,
        &[&ha[..], &["-t", "h/#", "-C", "1", "-W", "10"]].concat(),
    );
    assert_eq!(rc, 0);
    // A reading while it is offline: queued for it.
    let mut obs = Observer::connect_with(
        port,
        "h/temp",
        QoS::AtLeastOnce,
        "observer",
        true,
        Some(("ha", "ha-secret")),
    )
    .await;
    dev.set_registers(Table::Holding, 0, &[77]);
    assert!(
        obs.wait_payload("h/temp", "77", Duration::from_secs(10))
            .await
    );
    // Another user with that client id: a clean session, nothing of Home Assistant's.
    let (mut s, ack) = login(
        port,
        &connect(4, b"ha-persistent", false, None, Some(("intruso", "x"))),
    )
    .await;
    assert_eq!(
        ack,
        Some((0x20, vec![0, 0])),
        "accepted, session present = 0"
    );
    s.write_all(&[0xC0, 0]).await.expect("PINGREQ");
    let mut got = Vec::new();
    while let Some(p) = next_packet(&mut s, Duration::from_secs(2)).await {
        got.push(p.0);
    }
    assert!(got.contains(&0xD0), "PINGRESP");
    assert!(!got.iter().any(|f| f >> 4 == 3), "no PUBLISH: {got:?}");
    assert!(
        eventually(Duration::from_secs(5), || logged(
            "Session taken over by another user"
        ))
        .await
    );
    assert!(logged("user=Some(\"intruso\") previous_user=Some(\"ha\")"));
    assert_eq!(gw.stats.broker.session_takeovers.load(Relaxed), 1);
    drop(s);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_over_max_packet_size_closes_the_connection() {
    if tools().is_none() {
        return;
    }
    let (_dev, gw) = gateway("    max_packet_size: 2048\n").await;
    let port = gw.broker_port();
    let (mut s, ack) = login(port, &connect(5, b"big5", true, None, None)).await;
    let (_, body) = ack.expect("CONNACK");
    assert_eq!(
        connack_limits(&body).1,
        Some(2048),
        "MQTT 5 CONNACK announces it"
    );
    s.write_all(&publish(true, b"big/x", &[b'x'; 3000], false, false, None))
        .await
        .expect("send");
    let after = closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(after, Some(vec![(0xE0, vec![0x95])]), "DISCONNECT 0x95");
    let (mut s, _) = login(port, &connect(4, b"big4", true, None, None)).await;
    // Only the fixed header: refused before the body is read.
    s.write_all(&[0x30, 0xB8, 0x17]).await.expect("send");
    assert_eq!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        Some(vec![])
    );
    assert_eq!(gw.stats.broker.oversized_packets.load(Relaxed), 2);
    // Up to the limit is served.
    let (mut s, _) = login(port, &connect(4, b"fits", true, None, None)).await;
    s.write_all(&publish(false, b"big/y", &[b'y'; 2000], false, true, None))
        .await
        .expect("send");
    assert_eq!(
        next_packet(&mut s, Duration::from_secs(5))
            .await
            .map(|p| p.0),
        Some(0x40)
    );
    gw.stop().await;
}
