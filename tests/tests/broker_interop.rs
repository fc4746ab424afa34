//! The embedded broker against Mosquitto's own clients (`mosquitto_pub`, `mosquitto_sub`,
//! `mosquitto_passwd`), as a user checks a broker: every protocol version and QoS,
//! retained messages, persistent sessions, Last Wills, logins from a real
//! `mosquitto_passwd` file, rights from an `acl_file`, and `$SYS`.
//!
//! Off CI these tests skip when the tools are missing; under `CI` they fail.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, model_from, mosquitto, Gateway, Observer};
use rumqttc::QoS;

use mosquitto::{run, tools, Sub, Tools};

/// `mosquitto_pub` with `args` against the broker; its exit code.
fn publish(t: &Tools, port: u16, args: &[&str]) -> i32 {
    run(&t.publ, port, args).status.code().unwrap_or(-1)
}

/// `mosquitto_sub` with `args`, run to its end: (exit code, stdout lines).
fn subscribe_once(t: &Tools, port: u16, args: &[&str]) -> (i32, Vec<String>) {
    let (rc, out, _) = subscribe_full(t, port, args);
    (rc, out)
}

/// [`subscribe_once`] with its standard error.
fn subscribe_full(t: &Tools, port: u16, args: &[&str]) -> (i32, Vec<String>, String) {
    let out = run(&t.sub, port, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A gateway with one device (`h/temp` read-only, `h/sp` writable), its broker on a port
/// the system picks; `embedded` is appended under `mqtt.embedded`.
async fn gateway(embedded: &str) -> (std::sync::Arc<SimDevice>, Gateway) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let sim = server.spawn_local().await.expect("sim");
    let gw = format!(
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n    sys_interval: 1s\n{embedded}diagnostics_interval: 1h\n"
    );
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {sim} }}\n\
         devices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    points:\n\
         \x20     - {{ topic: h/temp, table: holding, address: 0, type: u16 }}\n\
         \x20     - {{ topic: h/sp, table: holding, address: 1, type: u16, writable: true }}\n"
    );
    (dev, Gateway::start(model_from(&gw, &mapping)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_version_and_qos() {
    let Some(t) = tools() else { return };
    let (_dev, gw) = gateway("").await;
    let port = gw.broker_port();
    for v in ["mqttv31", "mqttv311", "mqttv5"] {
        for q in ["0", "1", "2"] {
            let topic = format!("x/{v}/{q}");
            // A retained message first: when it arrives the subscription is in place.
            assert_eq!(
                publish(&t, port, &["-V", v, "-q", q, "-r", "-t", &topic, "-m", "r"]),
                0
            );
            let sub = Sub::start(
                &t,
                port,
                &[
                    "-V",
                    v,
                    "-q",
                    q,
                    "-t",
                    &topic,
                    "-C",
                    "2",
                    "-F",
                    "%t %p %q %r",
                ],
            );
            assert_eq!(
                sub.line(Duration::from_secs(10)).as_deref(),
                Some(format!("{topic} r {q} 1").as_str()),
                "{v} QoS {q}: retained"
            );
            assert_eq!(
                publish(&t, port, &["-V", v, "-q", q, "-t", &topic, "-m", "live"]),
                0
            );
            assert_eq!(
                sub.line(Duration::from_secs(10)).as_deref(),
                Some(format!("{topic} live {q} 0").as_str()),
                "{v} QoS {q}: live"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_cleared_and_persistent_sessions() {
    let Some(t) = tools() else { return };
    let (_dev, gw) = gateway("").await;
    let port = gw.broker_port();
    assert_eq!(publish(&t, port, &["-r", "-t", "keep/me", "-m", "v1"]), 0);
    let (rc, lines) = subscribe_once(&t, port, &["-t", "keep/me", "-C", "1", "-W", "5"]);
    assert_eq!((rc, lines), (0, vec!["v1".to_string()]));
    assert_eq!(publish(&t, port, &["-r", "-t", "keep/me", "-n"]), 0);
    let (rc, lines) = subscribe_once(&t, port, &["-t", "keep/me", "-C", "1", "-W", "2"]);
    assert!(
        lines.is_empty(),
        "cleared retained message delivered: {lines:?}"
    );
    assert_eq!(rc, 27, "mosquitto_sub timed out waiting");

    // -c: the session and its QoS 1 message outlive the disconnect.
    let (rc, _) = subscribe_once(
        &t,
        port,
        &["-c", "-i", "persist", "-q", "1", "-t", "p/t", "-E"],
    );
    assert_eq!(rc, 0);
    assert_eq!(
        publish(&t, port, &["-q", "1", "-t", "p/t", "-m", "while-away"]),
        0
    );
    let (rc, lines) = subscribe_once(
        &t,
        port,
        &[
            "-c", "-i", "persist", "-q", "1", "-t", "p/t", "-C", "1", "-W", "5",
        ],
    );
    assert_eq!((rc, lines), (0, vec!["while-away".to_string()]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_on_kill_and_on_keepalive_expiry() {
    let Some(t) = tools() else { return };
    let (dev, gw) = gateway("").await;
    let port = gw.broker_port();
    let mut obs = Observer::connect(port, "will/#", QoS::AtLeastOnce).await;
    // Each client subscribes to a retained topic: when it prints it, it is connected.
    assert_eq!(publish(&t, port, &["-r", "-t", "ready", "-m", "r"]), 0);
    let connected = |extra: &[&str]| {
        let sub = Sub::start(&t, port, &[&["-t", "ready"][..], extra].concat());
        assert_eq!(
            sub.line(Duration::from_secs(10)).as_deref(),
            Some("r"),
            "{extra:?} connected"
        );
        sub
    };

    let killed = connected(&[
        "-i",
        "w-kill",
        "--will-topic",
        "will/kill",
        "--will-payload",
        "gone",
    ]);
    drop(killed); // SIGKILL: no DISCONNECT
    assert!(
        obs.wait_payload("will/kill", "gone", Duration::from_secs(10))
            .await,
        "will on kill -9"
    );

    // A Will on a command topic is a command: a fail-safe value reaches the device.
    let failsafe = connected(&[
        "-i",
        "w-cmd",
        "--will-topic",
        "h/sp/set",
        "--will-payload",
        "55",
    ]);
    drop(failsafe);
    assert!(
        eventually(Duration::from_secs(10), || dev.registers(
            Table::Holding,
            1,
            1
        ) == vec![55])
        .await,
        "the Will on h/sp/set was written to the device"
    );

    let frozen = connected(&[
        "-i",
        "w-ka",
        "-k",
        "5",
        "--will-topic",
        "will/keepalive",
        "--will-payload",
        "silent",
    ]);
    let pid = frozen.pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    // 1.5 × keepalive (7.5 s) without a packet: the broker closes and fires the will.
    assert!(
        obs.wait_payload("will/keepalive", "silent", Duration::from_secs(15))
            .await,
        "will on keepalive expiry"
    );
    drop(frozen);
    gw.stop().await;
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_from_mosquitto_passwd_and_rights_from_an_acl_file() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    for (i, (u, p)) in [("ha", "ha-secret"), ("intruso", "x")].iter().enumerate() {
        let mut c = Command::new(&t.passwd);
        if i == 0 {
            c.arg("-c");
        }
        assert!(c
            .args(["-b"])
            .arg(&users)
            .args([u, p])
            .status()
            .expect("mosquitto_passwd")
            .success());
    }
    let acl = write(
        dir.path(),
        "acl",
        "user ha\ntopic read h/#\ntopic read $SYS/#\ntopic write h/sp/set\ntopic readwrite marker/#\n\nuser intruso\ntopic read h/temp\ntopic write h/#\ntopic deny h/sp/set\n",
    );
    let (dev, gw) = gateway(&format!(
        "    users_file: {}\n    acl_file: {}\n",
        users.display(),
        acl.display()
    ))
    .await;
    let port = gw.broker_port();
    let ha = ["-u", "ha", "-P", "ha-secret"];

    // Wrong password, unknown user, anonymous: CONNACK "not authorised" (rc 5).
    assert_eq!(
        publish(
            &t,
            port,
            &["-u", "ha", "-P", "wrong", "-t", "marker/x", "-m", "1"]
        ),
        5
    );
    assert_eq!(
        publish(
            &t,
            port,
            &["-u", "nobody", "-P", "x", "-t", "marker/x", "-m", "1"]
        ),
        5
    );
    assert_eq!(publish(&t, port, &["-t", "marker/x", "-m", "1"]), 5);
    assert!(gw.stats.broker.refused_logins.load(Relaxed) >= 3);
    // A Last Will on a topic the user may not publish (no grant, a gateway topic) is
    // refused at login: the broker would publish it without a check.
    for will in ["forbidden/x", "h/temp"] {
        let out = run(
            &t.sub,
            port,
            &[
                "-u",
                "ha",
                "-P",
                "ha-secret",
                "-t",
                "marker/x",
                "-W",
                "2",
                "--will-topic",
                will,
                "--will-payload",
                "ON",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(5),
            "will on {will}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A subscription beyond the user's read rights gets the failure code.
    let (_, lines, err) = subscribe_full(
        &t,
        port,
        &["-u", "intruso", "-P", "x", "-t", "#", "-W", "3"],
    );
    assert!(
        err.contains("denied"),
        "denied subscription: {lines:?} {err}"
    );
    assert!(lines.is_empty(), "{lines:?}");
    assert!(gw.stats.broker.denied_subscriptions.load(Relaxed) >= 1);

    // What intruso may not publish, ha never sees: the marker after it arrives first.
    // A retained marker: when it arrives, the subscription is in place.
    assert_eq!(
        publish(
            &t,
            port,
            &[&ha[..], &["-r", "-t", "marker/ready", "-m", "1"]].concat()
        ),
        0
    );
    let sub = Sub::start(
        &t,
        port,
        &[
            "-u",
            "ha",
            "-P",
            "ha-secret",
            "-t",
            "h/#",
            "-t",
            "marker/#",
            "-v",
        ],
    );
    let mut ready = false;
    while let Some(l) = sub.line(Duration::from_secs(10)) {
        if l == "marker/ready 1" {
            ready = true;
            break;
        }
    }
    assert!(ready, "ha subscribed");
    // The gateway's own topics are not writable, not even with a grant on h/#.
    assert_eq!(
        publish(
            &t,
            port,
            &["-u", "intruso", "-P", "x", "-t", "h/temp", "-m", "999"]
        ),
        0
    );
    // intruso has no write right on marker/#: the broker drops it.
    assert_eq!(
        publish(
            &t,
            port,
            &["-u", "intruso", "-P", "x", "-t", "marker/forged", "-m", "1"]
        ),
        0
    );
    assert_eq!(
        publish(
            &t,
            port,
            &[&ha[..], &["-t", "marker/end", "-m", "1"]].concat()
        ),
        0
    );
    loop {
        let l = sub
            .line(Duration::from_secs(10))
            .expect("marker/end arrives");
        assert_ne!(
            l, "h/temp 999",
            "a client's value on the gateway's topic was delivered"
        );
        assert_ne!(l, "marker/forged 1", "a denied publish was delivered");
        if l == "marker/end 1" {
            break;
        }
    }
    assert!(gw.stats.broker.denied_publishes.load(Relaxed) >= 2);
    // An MQTT 5 client learns why: PUBACK reason code 0x87 "not authorized".
    let out = run(
        &t.publ,
        port,
        &[
            "-u",
            "intruso",
            "-P",
            "x",
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-d",
            "-t",
            "marker/forged",
            "-m",
            "2",
        ],
    );
    let debug = String::from_utf8_lossy(&out.stdout);
    assert!(debug.contains("PUBACK (Mid: 1, RC:135)"), "{debug}");

    // A command the rights deny never reaches the device: intruso's 41 is refused,
    // ha's 42 after it is written, and 42 is the only write the device saw.
    dev.clear_log();
    let out = run(
        &t.publ,
        port,
        &[
            "-u", "intruso", "-P", "x", "-V", "mqttv5", "-q", "1", "-d", "-t", "h/sp/set", "-m",
            "41",
        ],
    );
    let debug = String::from_utf8_lossy(&out.stdout);
    assert!(debug.contains("PUBACK (Mid: 1, RC:135)"), "{debug}");
    // ha may command the set point; the register is written.
    assert_eq!(
        publish(
            &t,
            port,
            &[&ha[..], &["-q", "1", "-t", "h/sp/set", "-m", "42"]].concat()
        ),
        0
    );
    assert!(
        eventually(Duration::from_secs(10), || dev.registers(
            Table::Holding,
            1,
            1
        ) == vec![42])
        .await
    );
    let writes: Vec<Vec<u16>> = dev
        .log()
        .into_iter()
        .filter(|q| matches!(q.function, 6 | 16))
        .map(|q| q.written)
        .collect();
    assert_eq!(
        writes,
        vec![vec![42]],
        "only the allowed command was written"
    );

    // $SYS moves.
    let (rc, lines) = subscribe_once(
        &t,
        port,
        &[
            &ha[..],
            &["-t", "$SYS/broker/messages/received", "-C", "2", "-W", "10"],
        ]
        .concat(),
    );
    assert_eq!(rc, 0);
    let n: Vec<u64> = lines.iter().map(|l| l.parse().expect("a count")).collect();
    assert!(n[1] > n[0], "$SYS/broker/messages/received moves: {n:?}");
    let (_, version) = subscribe_once(
        &t,
        port,
        &[
            &ha[..],
            &["-t", "$SYS/broker/version", "-C", "1", "-W", "5"],
        ]
        .concat(),
    );
    assert!(
        version.first().is_some_and(|v| v.starts_with("fieldlink")),
        "{version:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_logins() {
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
        "    users_file: {}\n    tls:\n      listen: \"127.0.0.1:0\"\n      cert_file: {}\n      key_file: {}\n",
        users.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    ))
    .await;
    let port = gw.tls_port().expect("the TLS listener is bound");
    let ca = pki.ca.display().to_string();
    let other = pki.other_ca.display().to_string();
    let login = ["-u", "casa", "-P", "s3nha"];
    // Readings over TLS, with the right CA and the right password.
    let (rc, lines) = subscribe_once(
        &t,
        port,
        &[
            &login[..],
            &["--cafile", &ca, "-t", "h/temp", "-C", "1", "-W", "10"],
        ]
        .concat(),
    );
    assert_eq!(rc, 0, "{lines:?}");
    assert_eq!(lines.len(), 1);
    // Publish and receive over TLS, every protocol version.
    for v in ["mqttv31", "mqttv311", "mqttv5"] {
        let topic = format!("tls/{v}");
        assert_eq!(
            publish(
                &t,
                port,
                &[
                    &login[..],
                    &["--cafile", &ca, "-V", v, "-r", "-t", &topic, "-m", "over-tls"]
                ]
                .concat()
            ),
            0,
            "{v}"
        );
        let (_, lines) = subscribe_once(
            &t,
            port,
            &[
                &login[..],
                &["--cafile", &ca, "-V", v, "-t", &topic, "-C", "1", "-W", "5"],
            ]
            .concat(),
        );
        assert_eq!(lines, vec!["over-tls".to_string()], "{v}");
    }
    // A wrong password over TLS is refused; a client that does not trust the CA fails.
    assert_eq!(
        publish(
            &t,
            port,
            &["-u", "casa", "-P", "nope", "--cafile", &ca, "-t", "x", "-m", "1"]
        ),
        5
    );
    assert_ne!(
        publish(
            &t,
            port,
            &[&login[..], &["--cafile", &other, "-t", "x", "-m", "1"]].concat()
        ),
        0
    );
    // Plain MQTT on the TLS port is not served.
    assert_ne!(
        publish(&t, port, &[&login[..], &["-t", "x", "-m", "1"]].concat()),
        0
    );
    gw.stop().await;
}
