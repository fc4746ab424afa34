//! Reads on demand (`<topic>/get`).
//!
//! On tokio's paused clock, a Modbus bus task over TCP to a tokio-modbus simulator: reads
//! of one device queued while a slow exchange runs are one request, served before the next
//! poll that is due, their values published although unchanged; reads still queued at
//! shutdown are answered, not read. End to end through the embedded broker with
//! `mosquitto_pub` / `mosquitto_sub`: the value and the result; a `/get` the ACL refuses
//! (nothing read); failed reads (exception, offline device) answered with the reason; and
//! `/get` from an upstream mosquitto with `accept_commands`. GPIO and UART: `get_kinds.rs`.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink::{buses, shutdown, Model, Outgoing, Stats};
use fieldlink_drivers::{
    modbus::{tcp::TcpTransport, Table},
    sim::{SimDevice, SimRequest, SimServer},
};
use fieldlink_tests::{
    eventually, model, model_from,
    mosquitto::{run, tools, Broker, BrokerOpts, Sub},
    publisher, Gateway, Observer,
};
use rumqttc::QoS;
use tokio::{sync::mpsc, time::Instant};

const T: Duration = Duration::from_secs(10);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A message and the virtual time since the test began when the bus task sent it.
type Log = Arc<Mutex<Vec<(Duration, Outgoing)>>>;

/// The channels of a bus task run by the test: what it publishes (with virtual times),
/// where requests go in, and its shutdown.
struct Task {
    log: Log,
    requests: mpsc::Sender<buses::Request>,
    control: mpsc::Sender<buses::Control>,
    stop: shutdown::ShutdownTrigger,
}

/// Run the Modbus bus of `model` over TCP to the simulator on `port`.
fn modbus_task(model: Model, port: u16) -> (Task, tokio::task::JoinHandle<()>) {
    let model = Arc::new(model);
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel::<Vec<Outgoing>>(1024);
    let log: Log = Arc::default();
    let l = log.clone();
    let t0 = Instant::now();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let at = t0.elapsed();
            l.lock()
                .expect("lock")
                .extend(batch.into_iter().map(|m| (at, m)));
        }
    });
    let (requests, commands) = mpsc::channel(16);
    let (control, control_rx) = mpsc::channel(4);
    let (stop, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands,
        control: control_rx,
        stats,
        shutdown: sd,
        snapshots: None,
    };
    let transport = TcpTransport::new("127.0.0.1", port, Duration::from_secs(5));
    let bus = model.buses[0].clone();
    let task = tokio::spawn(buses::run_modbus(model, bus, 0, transport, io));
    (
        Task {
            log,
            requests,
            control,
            stop,
        },
        task,
    )
}

/// A `/get` of point `point` of device 0 (what the router queues for `<topic>/get`).
fn get(point: usize, topic: &str, id: u32) -> buses::Request {
    buses::Request::Get(buses::Get {
        device: 0,
        point,
        topic: topic.into(),
        generation: 0,
        id: Some(id.into()),
    })
}

/// The payloads on `topic` with the virtual milliseconds they were sent at.
fn on(log: &Log, topic: &str) -> Vec<(u128, String)> {
    log.lock()
        .expect("lock")
        .iter()
        .filter(|(_, m)| m.topic == topic)
        .map(|(t, m)| {
            (
                t.as_millis(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect()
}

/// Wait (in virtual time) until the simulator logged `n` requests.
async fn requests(dev: &SimDevice, n: usize) -> Vec<SimRequest> {
    for _ in 0..100_000 {
        let log = dev.log();
        if log.len() >= n {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{n} requests never came: {:?}", dev.log());
}

const PAUSED_MAPPING: &str = "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 1, timeout: 5s }\ndevices:\n  - id: m\n    bus: b\n    poll_interval: 500ms\n    points:\n      - { topic: m/p0, table: holding, address: 0 }\n      - { topic: m/p1, table: holding, address: 1 }\n      - { topic: m/p2, table: holding, address: 2 }\n      - { topic: m/p3, table: holding, address: 3 }\n      - { topic: m/far, table: holding, address: 40 }\n";

async fn slow_meter() -> (Arc<SimDevice>, u16) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, &[10, 11, 12, 13]);
    dev.set_registers(Table::Holding, 40, &[40]);
    let port = server.spawn_local().await.expect("sim");
    (dev, port)
}

/// Four `/get` of three points of one device arrive while a poll waits 600 ms for each
/// reply: one read of just those three registers answers all four, right after the poll
/// and before the next poll, which was due meanwhile; the three values are published
/// again although unchanged, and the fourth point is not.
#[tokio::test(start_paused = true)]
async fn reads_queued_during_a_slow_exchange_are_one_request_before_the_next_poll() {
    let (dev, port) = slow_meter().await;
    let (task, _handle) = modbus_task(model(PAUSED_MAPPING, ""), port);
    // The first poll (two requests: 0..4 and 40) publishes every value.
    requests(&dev, 2).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(on(&task.log, "m/p1"), [(0, "11".to_string())]);
    // From now on every reply takes 600 ms: the poll at 500 ms holds the bus until 1.7 s,
    // and the next one is due at 1 s.
    dev.set_reply_delay(Duration::from_millis(600));
    let log = requests(&dev, 3).await;
    assert_eq!(
        (log[2].address, log[2].count),
        (0, 4),
        "the second poll runs"
    );
    for (i, (p, topic)) in [(1, "m/p1"), (3, "m/p3"), (1, "m/p1"), (2, "m/p2")]
        .into_iter()
        .enumerate()
    {
        task.requests
            .send(get(p, topic, i as u32))
            .await
            .expect("queued");
    }
    let log = requests(&dev, 6).await;
    let reads: Vec<(u16, u16)> = log[3..6].iter().map(|q| (q.address, q.count)).collect();
    assert_eq!(
        reads,
        [(40, 1), (1, 3), (0, 4)],
        "the rest of the poll, ONE read of p1..p3, then the next poll: {log:?}"
    );
    // The read's reply comes 600 ms after it was sent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let answered: Vec<(String, serde_json::Value)> = ["m/p1", "m/p2", "m/p3"]
        .iter()
        .flat_map(|t| {
            on(&task.log, &format!("{t}/get/result"))
                .into_iter()
                .map(move |(_, p)| (t.to_string(), json(&p)))
        })
        .collect();
    let expect = |t: &str, v: u32, id: u32| {
        (
            t.to_string(),
            serde_json::json!({"ok": true, "value": v, "id": id}),
        )
    };
    assert_eq!(
        answered,
        [
            expect("m/p1", 11, 0),
            expect("m/p1", 11, 2),
            expect("m/p2", 12, 3),
            expect("m/p3", 13, 1)
        ]
    );
    // Published again, unchanged, when the read came back (1.7 s + 600 ms), and only
    // then (the polls publish nothing: nothing changed).
    for (t, v) in [("m/p1", "11"), ("m/p2", "12"), ("m/p3", "13")] {
        assert_eq!(
            on(&task.log, t),
            [(0, v.to_string()), (2300, v.to_string())],
            "{t}"
        );
    }
    assert_eq!(on(&task.log, "m/p0").len(), 1, "p0 was not asked for");
    let results = on(&task.log, "m/p1/get/result");
    assert!(results.iter().all(|(t, _)| *t == 2300), "{results:?}");
    task.stop.trigger();
}

/// Reads still queued when the gateway stops are answered, and not read.
#[tokio::test(start_paused = true)]
async fn reads_queued_at_shutdown_are_answered_and_not_read() {
    let (dev, port) = slow_meter().await;
    let (task, handle) = modbus_task(model(PAUSED_MAPPING, ""), port);
    requests(&dev, 2).await;
    dev.set_reply_delay(Duration::from_millis(600));
    requests(&dev, 3).await;
    task.requests.send(get(1, "m/p1", 7)).await.expect("queued");
    task.requests.send(get(2, "m/p2", 8)).await.expect("queued");
    task.stop.trigger();
    handle.await.expect("bus task");
    tokio::time::sleep(Duration::from_millis(10)).await;
    for (t, id) in [("m/p1", 7), ("m/p2", 8)] {
        let r = on(&task.log, &format!("{t}/get/result"));
        assert_eq!(r.len(), 1, "{t}: {r:?}");
        assert_eq!(
            json(&r[0].1),
            serde_json::json!({"ok": false, "error": "gateway shutting down; not read", "id": id})
        );
    }
    let log = dev.log();
    assert!(
        log.iter().all(|q| q.count == 4 || q.address == 40),
        "only polls were read: {log:?}"
    );
}

/// A reload while reads wait: one routed before it for a point the reload removed is
/// answered so; one for a point that is still there is read as the point is now; and when
/// a later reload stops the bus, what is still queued is answered, not read.
#[tokio::test(start_paused = true)]
async fn reads_queued_across_a_reload_are_answered() {
    let (dev, port) = slow_meter().await;
    let old = model(PAUSED_MAPPING, "");
    let old_bus = old.buses[0].clone();
    let (task, handle) = modbus_task(old, port);
    requests(&dev, 2).await;
    dev.set_reply_delay(Duration::from_millis(600));
    requests(&dev, 3).await;
    // p2 removed, the device changed: p3 is now its third point.
    let new = model(
        &PAUSED_MAPPING.replace("      - { topic: m/p2, table: holding, address: 2 }\n", ""),
        "",
    );
    let (done, applied) = tokio::sync::oneshot::channel();
    let reload = buses::Control::reconfigure(&old_bus, new.buses[0].clone(), 0, 1, done);
    task.control.send(reload).await.expect("reload");
    task.requests.send(get(2, "m/p2", 1)).await.expect("queued");
    task.requests.send(get(3, "m/p3", 2)).await.expect("queued");
    applied.await.expect("applied");
    let log = requests(&dev, 6).await;
    let reads: Vec<(u16, u16)> = log[3..6].iter().map(|q| (q.address, q.count)).collect();
    assert_eq!(
        reads,
        [(40, 1), (3, 1), (0, 4)],
        "p3 read, then the next poll: {log:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let result = |t: &str| {
        let r = on(&task.log, &format!("{t}/get/result"));
        assert_eq!(r.len(), 1, "{t}: {r:?}");
        json(&r[0].1)
    };
    assert_eq!(
        result("m/p2"),
        serde_json::json!({"ok": false, "error": "configuration reloaded: the point is gone", "id": 1})
    );
    assert_eq!(
        result("m/p3"),
        serde_json::json!({"ok": true, "value": 13, "id": 2})
    );
    // A reload that replaces the bus: what is queued behind the exchange is answered.
    requests(&dev, 8).await;
    task.requests.send(get(0, "m/p0", 3)).await.expect("queued");
    task.control.send(buses::Control::Stop).await.expect("stop");
    handle.await.expect("bus task");
    assert_eq!(
        result("m/p0"),
        serde_json::json!({"ok": false, "error": "configuration reloading: the bus restarts; not read, send it again", "id": 3})
    );
    assert!(dev.log().iter().all(|q| q.count != 1 || q.address != 0));
}

/// Lines of `sub` until one starting with `prefix` (included), each within 10 s.
fn until(sub: &Sub, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(l) = sub.line(T) {
        let done = l.starts_with(prefix);
        out.push(l);
        if done {
            return out;
        }
    }
    panic!("no line starting with `{prefix}` within 10 s; saw {out:?}");
}

/// A meter polled once an hour: energy (u32 at 0), power (at 10), and an address the
/// device says does not exist (50).
async fn meter() -> (Arc<SimDevice>, String) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Input, 0, &[0, 1234]);
    dev.set_registers(Table::Input, 10, &[230]);
    dev.add_holes(Table::Input, [50]);
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 300ms }}\ndevices:\n  - id: medidor\n    bus: b\n    poll_interval: 1h\n    points:\n      - {{ topic: casa/energia, table: input, address: 0, type: u32 }}\n      - {{ topic: casa/potencia, table: input, address: 10 }}\n      - {{ topic: casa/ausente, table: input, address: 50 }}\n"
    );
    (dev, mapping)
}

/// `mosquitto_pub -t <topic>/get` publishes the value again (the device is polled once
/// an hour, so it has not changed) and answers on `/get/result`, echoing a JSON id; one
/// request reaches the device per `/get`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_get_publishes_the_value_and_the_result() {
    let Some(t) = tools() else { return };
    let (dev, mapping) = meter().await;
    let gw = Gateway::start(model(&mapping, "")).await;
    let port = gw.broker_port();
    let sub = Sub::start(&t, port, &["-t", "casa/#", "-v"]);
    // The retained value: the subscription is in place.
    let first = until(&sub, "casa/energia ");
    assert_eq!(first.last().map(String::as_str), Some("casa/energia 1234"));
    assert!(
        eventually(T, || dev.request_count() >= 2).await,
        "first poll"
    );
    let before = dev.request_count();
    let pub_get = |args: &[&str]| {
        let out = run(&t.publ, port, args);
        assert!(out.status.success(), "{out:?}");
    };
    pub_get(&["-t", "casa/energia/get", "-m", r#"{"id":"r1"}"#]);
    let lines = until(&sub, "casa/energia/get/result ");
    let n = lines.len();
    assert!(n >= 2, "{lines:?}");
    assert_eq!(
        lines[n - 2],
        "casa/energia 1234",
        "the value first: {lines:?}"
    );
    let result = lines[n - 1].trim_start_matches("casa/energia/get/result ");
    assert_eq!(
        json(result),
        serde_json::json!({"ok": true, "value": 1234, "id": "r1"})
    );
    // An empty message asks as well; no id, none echoed.
    pub_get(&["-t", "casa/potencia/get", "-n"]);
    let lines = until(&sub, "casa/potencia/get/result ");
    assert!(
        lines.contains(&"casa/potencia 230".to_string()),
        "{lines:?}"
    );
    let result = lines[lines.len() - 1].trim_start_matches("casa/potencia/get/result ");
    assert_eq!(json(result), serde_json::json!({"ok": true, "value": 230}));
    assert_eq!(dev.request_count(), before + 2, "one read per /get");
    gw.stop().await;
}

/// Failed reads are answered with the reason: an address the device refuses (exception
/// 02), and an offline device (refused at once, nothing sent to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_is_answered_with_the_reason() {
    let (dev, mapping) = meter().await;
    let mapping = mapping.replace(
        "poll_interval: 1h",
        "poll_interval: 200ms\n    offline_after: 2",
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtLeastOnce).await;
    assert!(obs.wait_seen("casa/energia", "1234", T).await);
    let client = publisher(gw.broker_port()).await;
    let ask = |topic: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, r#"{"id":9}"#)
                .await
                .expect("publish");
        }
    };
    ask("casa/ausente/get").await;
    let r = obs
        .next_on("casa/ausente/get/result", T)
        .await
        .expect("result");
    assert_eq!(
        json(&r.payload),
        serde_json::json!({"ok": false, "error": "device exception 0x02 (illegal data address)", "id": 9})
    );
    // The device stops answering: offline after two failed polls.
    dev.set_responding(false);
    assert!(
        obs.wait_seen("fieldlink/t/medidor/availability", "offline", T)
            .await
    );
    let before = dev.request_count();
    ask("casa/energia/get").await;
    let r = obs
        .next_on("casa/energia/get/result", T)
        .await
        .expect("result");
    assert_eq!(
        json(&r.payload),
        serde_json::json!({"ok": false, "error": "device `medidor` is offline", "id": 9})
    );
    assert!(dev.request_count() <= before + 1, "at most a backoff poll");
    gw.stop().await;
}

/// With an `acl_file`, `/get` needs the right to write `<topic>/get`: a refused one gets
/// PUBACK 0x87 (MQTT 5), is never read and never answered; an allowed one after it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_the_acl_refuses_reads_nothing() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    let ok = Command::new(&t.passwd)
        .args(["-c", "-b"])
        .arg(&users)
        .args(["painel", "s3nha"])
        .status()
        .expect("mosquitto_passwd");
    assert!(ok.success());
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user painel\ntopic read casa/#\ntopic write casa/potencia/get\n",
    )
    .expect("acl");
    let (dev, mapping) = meter().await;
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n    users_file: {}\n    acl_file: {}\n",
        users.display(),
        acl.display()
    );
    let gw = Gateway::start(model_from(&gateway, &mapping)).await;
    let port = gw.broker_port();
    let login = ["-u", "painel", "-P", "s3nha"];
    let sub = Sub::start(&t, port, &[&login[..], &["-t", "casa/#", "-v"]].concat());
    until(&sub, "casa/energia ");
    assert!(
        eventually(T, || dev.request_count() >= 2).await,
        "first poll"
    );
    dev.clear_log();
    let out = run(
        &t.publ,
        port,
        &[
            &login[..],
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-d",
                "-t",
                "casa/energia/get",
                "-n",
            ],
        ]
        .concat(),
    );
    let debug = String::from_utf8_lossy(&out.stdout);
    assert!(debug.contains("PUBACK (Mid: 1, RC:135)"), "{debug}");
    // The allowed one after it is read and answered; the refused one never was.
    let out = run(
        &t.publ,
        port,
        &[&login[..], &["-q", "1", "-t", "casa/potencia/get", "-n"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let lines = until(&sub, "casa/potencia/get/result ");
    assert!(
        !lines.iter().any(|l| l.starts_with("casa/energia")),
        "nothing of the refused /get: {lines:?}"
    );
    let reads: Vec<u16> = dev.log().iter().map(|q| q.address).collect();
    assert_eq!(reads, [10], "only the allowed point was read");
    assert!(
        gw.stats
            .broker
            .denied_publishes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    gw.stop().await;
}

/// `/get` from the upstream broker with `accept_commands`: the value and the result go
/// back upstream under the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_get_with_accept_commands() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (dev, mapping) = meter().await;
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nstate_dir: {}\ndiagnostics_interval: 1h\nmqtt:\n  embedded:\n    enabled: false\n  upstream:\n    url: mqtt://127.0.0.1:{}\n    prefix: sites/t/\n    accept_commands: true\n",
        state.path().display(),
        broker.port
    );
    let mut remote = Observer::connect(broker.port, "sites/t/#", QoS::AtLeastOnce).await;
    let gw = Gateway::start(model_from(&gateway, &mapping)).await;
    assert!(
        remote
            .wait_seen("sites/t/fieldlink/t/status", "online", T)
            .await
    );
    assert!(remote.wait_seen("sites/t/casa/energia", "1234", T).await);
    let before = dev.request_count();
    let asked_at = remote.seen.lock().expect("lock").len();
    let client = publisher(broker.port).await;
    // The command subscription is made after `online`: ask until it is answered.
    let mut result = None;
    for _ in 0..20 {
        client
            .publish(
                "sites/t/casa/energia/get",
                QoS::AtLeastOnce,
                false,
                r#"{"id":"up"}"#,
            )
            .await
            .expect("publish");
        result = remote
            .next_on(
                "sites/t/casa/energia/get/result",
                Duration::from_millis(500),
            )
            .await;
        if result.is_some() {
            break;
        }
    }
    let r = result.expect("a result upstream");
    assert_eq!(
        json(&r.payload),
        serde_json::json!({"ok": true, "value": 1234, "id": "up"})
    );
    // The value went upstream again just before the result.
    let seen = remote.seen.lock().expect("lock").clone();
    let after: Vec<&str> = seen[asked_at..].iter().map(|m| m.topic.as_str()).collect();
    let result_at = after
        .iter()
        .position(|t| *t == "sites/t/casa/energia/get/result")
        .expect("the result is seen");
    assert!(
        after[..result_at].contains(&"sites/t/casa/energia"),
        "the value again, upstream: {after:?}"
    );
    assert!(dev.request_count() > before);
    gw.stop().await;
}
