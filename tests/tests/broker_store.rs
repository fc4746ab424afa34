//! What clients store in the embedded broker (issue #21): their retained messages and
//! persistent sessions survive a restart and a crash, a damaged store is reported and set
//! aside, and what offline sessions hold is bounded by count and bytes.
//!
//! The `fieldlink` binary runs as a child process on files in a temporary directory, its
//! broker on a port the system picks; clients are the real `mosquitto_pub` and
//! `mosquitto_sub`, and rumqttc where a test needs to see CONNACK's session present flag
//! or to reconnect without subscribing again. Waits are for log lines, diagnostics
//! counters and the store file's contents, never fixed sleeps.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use fieldlink_tests::{mosquitto::tool, process::Fieldlink, Observer};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};

/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(15);
const DIAG: &str = "fieldlink/t/diagnostics";

/// A gateway file (id `t`, no devices, diagnostics every second, the broker on port 0,
/// state in `state/`) with `embedded` appended under `mqtt.embedded`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(embedded: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("gateway.yaml"),
            format!(
                "id: t\nmappings: m.yaml\nstate_dir: state\ndiagnostics_interval: 1s\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n{embedded}"
            ),
        )
        .expect("write gateway file");
        std::fs::write(dir.path().join("m.yaml"), "buses: []\ndevices: []\n").expect("write");
        Setup { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn store(&self) -> PathBuf {
        self.state().join("broker.store")
    }

    /// Start the gateway; it and its broker's port.
    async fn start(&self) -> (Fieldlink, u16) {
        let gw = Fieldlink::run(&self.dir.path().join("gateway.yaml"));
        let port = gw.broker_port(T).await;
        (gw, port)
    }

    /// Wait until the store file on disk holds every one of `texts` (it is replaced whole,
    /// by a rename, so a read never sees half of it).
    async fn wait_store_holds(&self, texts: &[&str]) {
        let deadline = Instant::now() + T;
        loop {
            let bytes = std::fs::read(self.store()).unwrap_or_default();
            if texts.iter().all(|t| contains(&bytes, t.as_bytes())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the store never held all of {texts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The mosquitto client tools, or `None` to skip (CI fails instead).
fn tools() -> Option<(PathBuf, PathBuf)> {
    Some((tool("mosquitto_pub")?, tool("mosquitto_sub")?))
}

/// `mosquitto_pub` one message to 127.0.0.1:`port`.
fn publish(bin: &Path, port: u16, topic: &str, payload: &str, args: &[&str]) {
    let st = Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-m",
            payload,
        ])
        .args(args)
        .status()
        .expect("run mosquitto_pub");
    assert!(st.success(), "mosquitto_pub {topic}: {st}");
}

/// `mosquitto_sub` for the first message on `filter` (a retained one), as `topic payload`.
fn first_retained(bin: &Path, port: u16, filter: &str) -> String {
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", filter])
        .args(["-v", "-C", "1", "-W", "10"])
        .output()
        .expect("run mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `broker.offline` object of the diagnostics, once `pred` holds for it.
async fn offline_until(port: u16, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let mut obs = Observer::connect(port, DIAG, QoS::AtMostOnce).await;
    let deadline = tokio::time::Instant::now() + T;
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        let Some(m) = obs.next_on(DIAG, T).await else {
            break;
        };
        let v: Value = serde_json::from_str(&m.payload).expect("diagnostics are JSON");
        last = v["broker"]["offline"].clone();
        if pred(&last) {
            return last;
        }
    }
    panic!("diagnostics never matched; last broker.offline: {last}");
}

/// A persistent-session client (rumqttc), to see CONNACK's session present flag and to
/// reconnect without subscribing again.
struct Client {
    client: AsyncClient,
    task: JoinHandle<()>,
    rx: mpsc::UnboundedReceiver<Packet>,
}

impl Client {
    /// Connect with `clean session` off; the client and CONNACK's session present flag.
    async fn connect(port: u16, id: &str) -> (Client, bool) {
        Self::connect_with(port, id, false).await
    }

    /// [`Client::connect`] with `clean session` as given.
    async fn connect_with(port: u16, id: &str, clean: bool) -> (Client, bool) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                match ev {
                    Event::Incoming(p) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    // DISCONNECT is written: close the connection (rumqttc leaves it open,
                    // and the broker waits for the close).
                    Event::Outgoing(Outgoing::Disconnect) => return,
                    Event::Outgoing(_) => {}
                }
            }
        });
        let present = match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(Packet::ConnAck(c))) => c.session_present,
            other => panic!("no CONNACK: {other:?}"),
        };
        (Client { client, task, rx }, present)
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match tokio::time::timeout(T, self.rx.recv()).await {
                Ok(Some(Packet::SubAck(_))) => return,
                Ok(Some(_)) => {}
                other => panic!("no SUBACK: {other:?}"),
            }
        }
    }

    /// Payloads received until one equals `last` (included).
    async fn payloads_until(&mut self, last: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(T, self.rx.recv()).await {
                Ok(Some(Packet::Publish(p))) => {
                    let s = String::from_utf8_lossy(&p.payload).to_string();
                    let done = s == last;
                    got.push(s);
                    if done {
                        return got;
                    }
                }
                Ok(Some(_)) => {}
                other => panic!("`{last}` never came (got {got:?}): {other:?}"),
            }
        }
    }

    /// Disconnect cleanly (the session stays).
    async fn leave(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(T, self.task).await;
    }
}

/// `n` bytes starting with `mark`.
fn sized(mark: &str, n: usize) -> String {
    format!("{mark}{}", "x".repeat(n - mark.len()))
}

/// A thermostat's retained set point and three QoS 1 messages queued for Home Assistant's
/// offline session are stored; the gateway ends by `signal`, starts again, and everything
/// is back, Home Assistant's session included: messages published after the restart
/// while it is still away are queued for it too, and it gets them all, in order, with
/// session present = 1 and without subscribing again.
async fn survives(signal: &str, autosave: &str) {
    let Some((publ, sub)) = tools() else {
        return;
    };
    let s = Setup::new(&format!("    autosave_interval: {autosave}\n"));
    let (mut gw, port) = s.start().await;
    publish(
        &publ,
        port,
        "clients/thermostat/target",
        "21.5",
        &["-r", "-q", "1"],
    );
    for id in ["ha-store", "gone-store"] {
        let (mut c, present) = Client::connect(port, id).await;
        assert!(!present, "a new session");
        c.subscribe("notes/#").await;
        c.leave().await;
    }
    for i in 1..=3 {
        publish(&publ, port, "notes/n", &format!("queued-{i}"), &["-q", "1"]);
    }
    offline_until(port, |o| o["messages"] == 2 * 3).await;
    if signal == "-KILL" {
        // Nothing is written at a kill -9: wait for the autosave to have it all.
        s.wait_store_holds(&["21.5", "queued-1", "queued-2", "queued-3"])
            .await;
    }
    gw.signal(signal);
    let st = gw.wait_exit(T).await.expect("the gateway ends");
    if signal == "-TERM" {
        assert!(st.success(), "{st}");
    }
    let (gw, port) = s.start().await;
    let at = gw.expect_log(0, "Broker store restored.", T).await;
    let line = &gw.log_since(at)[0];
    assert!(
        line.contains("retained=1") && line.contains("sessions=2") && line.contains("messages=6"),
        "{line}"
    );
    assert_eq!(
        first_retained(&sub, port, "clients/#"),
        "clients/thermostat/target 21.5"
    );
    publish(&publ, port, "notes/n", "queued-4", &["-q", "1"]);
    let (mut ha, present) = Client::connect(port, "ha-store").await;
    assert!(present, "the session is still there after the restart");
    assert_eq!(
        ha.payloads_until("queued-4").await,
        ["queued-1", "queued-2", "queued-3", "queued-4"]
    );
    // A restored session's client coming back clean gets nothing of its subscription.
    let (mut clean, present) = Client::connect_with(port, "gone-store", true).await;
    assert!(!present);
    clean.subscribe("marker/#").await;
    publish(
        &publ,
        port,
        "notes/n",
        "not for a clean session",
        &["-q", "1"],
    );
    publish(&publ, port, "marker/x", "marker", &["-q", "1"]);
    assert_eq!(clean.payloads_until("marker").await, ["marker"]);
    // The gateway's own topics are not in the store (it republishes them itself).
    let bytes = std::fs::read(s.store()).unwrap_or_default();
    assert!(
        !contains(&bytes, b"fieldlink/t/status"),
        "gateway topics kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_queued_messages_survive_sigterm() {
    // The autosave never comes within the test: what survives was written at shutdown.
    survives("-TERM", "1h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_and_queued_messages_survive_kill_9() {
    survives("-KILL", "200ms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_store_is_reported_set_aside_and_the_gateway_starts() {
    let Some((publ, sub)) = tools() else {
        return;
    };
    let s = Setup::new("");
    std::fs::create_dir_all(s.state()).expect("mkdir");
    std::fs::write(s.store(), b"not a store at all").expect("write");
    let (gw, port) = s.start().await;
    let at = gw
        .expect_log(0, "Broker store unreadable; starting without it.", T)
        .await;
    let line = &gw.log_since(at)[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&s.store().display().to_string()) && line.contains("bad header"),
        "path and reason: {line}"
    );
    assert!(!s.store().exists(), "set aside");
    let aside: Vec<String> = std::fs::read_dir(s.state())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("broker.store.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(s.state().join(&aside[0])).expect("read"),
        b"not a store at all"
    );
    // The broker serves.
    publish(&publ, port, "clients/x", "1", &["-r", "-q", "1"]);
    assert_eq!(first_retained(&sub, port, "clients/#"), "clients/x 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_store_keeps_what_came_before_the_tear() {
    let Some((publ, sub)) = tools() else {
        return;
    };
    let s = Setup::new("    autosave_interval: 200ms\n");
    let (mut gw, port) = s.start().await;
    publish(&publ, port, "clients/a", "first", &["-r", "-q", "1"]);
    publish(&publ, port, "clients/b", "second", &["-r", "-q", "1"]);
    s.wait_store_holds(&["first", "second"]).await;
    gw.signal("-KILL");
    gw.wait_exit(T).await.expect("killed");
    // A write torn by a power cut: the last bytes (the end record) never reached the disk.
    let bytes = std::fs::read(s.store()).expect("store");
    std::fs::write(s.store(), &bytes[..bytes.len() - 5]).expect("tear");
    let (gw, port) = s.start().await;
    let at = gw
        .expect_log(
            0,
            "Broker store damaged; what came before the damage is restored.",
            T,
        )
        .await;
    let line = &gw.log_since(at)[0];
    assert!(line.contains("ERROR") && line.contains("torn"), "{line}");
    let got: Vec<String> = ["clients/a", "clients/b"]
        .iter()
        .map(|t| first_retained(&sub, port, t))
        .collect();
    assert_eq!(got, ["clients/a first", "clients/b second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_keeps_only_the_newest_within_max_queued_bytes() {
    let Some((publ, _)) = tools() else {
        return;
    };
    // Each message counts 1 000 payload + 5 topic + 512 bytes: five fit in 8 KiB.
    let s = Setup::new("    max_queued_bytes: 8KiB\n    persistence: false\n");
    let (_gw, port) = s.start().await;
    let (mut c, _) = Client::connect(port, "slow").await;
    c.subscribe("big/#").await;
    c.leave().await;
    for i in 1..=12 {
        publish(
            &publ,
            port,
            "big/t",
            &sized(&format!("q1-{i:02}-"), 1000),
            &["-q", "1"],
        );
    }
    for i in 1..=3 {
        publish(
            &publ,
            port,
            "big/t",
            &sized(&format!("q0-{i:02}-"), 1000),
            &["-q", "0"],
        );
    }
    let o = offline_until(port, |o| o["dropped"]["qos0"] == 3).await;
    assert_eq!(o["messages"], 5, "{o}");
    assert_eq!(o["dropped"]["oldest"], 7, "{o}");
    assert!(o["bytes"].as_u64().is_some_and(|b| b <= 8192), "{o}");
    let (mut c, present) = Client::connect(port, "slow").await;
    assert!(present);
    publish(&publ, port, "big/t", "end", &["-q", "1"]);
    let got: Vec<String> = c
        .payloads_until("end")
        .await
        .iter()
        .map(|p| p.chars().take(6).collect())
        .collect();
    assert_eq!(
        got,
        ["q1-08-", "q1-09-", "q1-10-", "q1-11-", "q1-12-", "end"]
    );
}

/// rmqtt keeps a wakeup for every message queued for an offline session; after twice its
/// queue length the session is made anew (`broker/queues/renew.rs`). Across that, it keeps
/// its subscriptions and its newest messages, in order, and goes on queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_made_anew_keeps_its_messages_and_subscriptions() {
    let Some((publ, _)) = tools() else {
        return;
    };
    let s = Setup::new(
        "    max_queued_messages: 10
    persistence: false
",
    );
    let (_gw, port) = s.start().await;
    for id in ["many", "gone"] {
        let (mut c, _) = Client::connect(port, id).await;
        c.subscribe("many/#").await;
        c.leave().await;
    }
    let lines = |from: usize, to: usize| {
        (from..=to)
            .map(|i| format!("m{i:04}\n"))
            .collect::<String>()
    };
    let feed = |text: String| {
        use std::io::Write;
        let mut child = Command::new(&publ)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "many/x"])
            .args(["-q", "1", "-l"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_pub -l");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        assert!(child.wait().expect("wait").success());
    };
    feed(lines(1, 200));
    offline_until(port, |o| o["renewed"].as_u64() >= Some(2)).await;
    feed(lines(201, 300));
    let o = offline_until(port, |o| o["dropped"]["oldest"] == 2 * 290).await;
    assert_eq!(o["messages"], 2 * 10, "{o}");
    let (mut c, present) = Client::connect(port, "many").await;
    assert!(present);
    publish(&publ, port, "many/x", "end", &["-q", "1"]);
    let want: Vec<String> = (291..=300)
        .map(|i| format!("m{i:04}"))
        .chain(["end".to_string()])
        .collect();
    assert_eq!(c.payloads_until("end").await, want);
    // Starting clean, a client id gets nothing of its old subscription.
    let (mut clean, present) = Client::connect_with(port, "gone", true).await;
    assert!(!present);
    clean.subscribe("marker/#").await;
    publish(
        &publ,
        port,
        "many/x",
        "not for a clean session",
        &["-q", "1"],
    );
    publish(&publ, port, "marker/x", "marker", &["-q", "1"]);
    assert_eq!(clean.payloads_until("marker").await, ["marker"]);
}

/// A connected client that stops acknowledging: 128 messages in flight, then its queue,
/// held to `max_queued_bytes` (in flight included) every second, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_client_that_does_not_acknowledge_is_held_to_max_queued_bytes() {
    let Some((publ, _)) = tools() else {
        return;
    };
    let s = Setup::new("    max_queued_bytes: 256KiB\n    persistence: false\n");
    let (_gw, port) = s.start().await;
    let mut o = MqttOptions::new("stuck", "127.0.0.1", port);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 64);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::SubAck(_)) = ev {
                let _ = tx.send(());
            }
        }
    });
    client
        .subscribe("stuck/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::timeout(T, rx.recv()).await.expect("SUBACK");
    // 300 messages of 1 000 bytes, 1 517 counted each: 128 in flight (194 176 bytes), room
    // for 44 queued (256 KiB in all); the oldest of the other 128 go.
    let lines: String = (1..=300)
        .map(|i| sized(&format!("{i:03}-"), 1000) + "\n")
        .collect();
    let mut child = Command::new(&publ)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "stuck/x"])
        .args(["-q", "1", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub -l");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("write");
    }
    assert!(child.wait().expect("wait").success());
    let o = offline_until(port, |o| o["dropped"]["oldest"] == 128).await;
    assert_eq!(
        o["messages"], 0,
        "nothing is held for an offline session: {o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_takes_the_oldest_of_the_session_holding_the_most() {
    let Some((publ, _)) = tools() else {
        return;
    };
    let s = Setup::new(
        "    max_queued_bytes: 8KiB\n    max_queued_bytes_total: 10KiB\n    persistence: false\n",
    );
    let (_gw, port) = s.start().await;
    for id in ["a", "b"] {
        let (mut c, _) = Client::connect(port, id).await;
        c.subscribe(&format!("{id}/#")).await;
        c.leave().await;
    }
    // `a` holds five (7 585 bytes counted); each of `b`'s three takes `a`'s oldest while
    // `a` holds the most.
    for i in 1..=5 {
        publish(
            &publ,
            port,
            "a/t",
            &sized(&format!("a{i}-"), 1000),
            &["-q", "1"],
        );
    }
    for i in 1..=3 {
        publish(
            &publ,
            port,
            "b/t",
            &sized(&format!("b{i}-"), 1000),
            &["-q", "1"],
        );
    }
    let o = offline_until(port, |o| o["dropped"]["total"] == 2).await;
    assert_eq!(o["messages"], 6, "{o}");
    assert!(o["bytes"].as_u64().is_some_and(|b| b <= 10240), "{o}");
    for (id, want) in [("a", ["a3-", "a4-", "a5-"]), ("b", ["b1-", "b2-", "b3-"])] {
        let (mut c, _) = Client::connect(port, id).await;
        publish(&publ, port, &format!("{id}/t"), "end", &["-q", "1"]);
        let got: Vec<String> = c
            .payloads_until("end")
            .await
            .iter()
            .map(|p| p.chars().take(3).collect())
            .collect();
        assert_eq!(got[..3], want, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_off_writes_nothing() {
    let Some((publ, sub)) = tools() else {
        return;
    };
    let s = Setup::new("    persistence: false\n    autosave_interval: 200ms\n");
    let (mut gw, port) = s.start().await;
    publish(&publ, port, "clients/x", "kept?", &["-r", "-q", "1"]);
    let (mut c, _) = Client::connect(port, "p").await;
    c.subscribe("n/#").await;
    c.leave().await;
    publish(&publ, port, "n/x", "queued", &["-q", "1"]);
    let o = offline_until(port, |o| o["messages"] == 1).await;
    assert_eq!(o["persistence"]["enabled"], false, "{o}");
    gw.signal("-TERM");
    assert!(gw.wait_exit(T).await.is_some_and(|st| st.success()));
    let files: Vec<_> = std::fs::read_dir(s.state())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().starts_with("broker.store")),
        "{files:?}"
    );
    let (_gw, port) = s.start().await;
    let (_, present) = Client::connect(port, "p").await;
    assert!(!present, "nothing kept: a new session");
    publish(&publ, port, "clients/y", "2", &["-r", "-q", "1"]);
    assert_eq!(first_retained(&sub, port, "clients/#"), "clients/y 2");
}
