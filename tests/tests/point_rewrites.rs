//! Kept-alive setpoints (#23, `rewrite_every`) on tokio's paused clock: the Modbus bus
//! task is driven through its command and reload channels, over a transport that hands
//! every request to the same `SimDevice`s a `SimServer` serves (no socket: virtual time
//! must not race real I/O), so every write is counted at the device with its virtual
//! time. A last test reloads the running gateway (as SIGHUP does, through
//! `Hooks::reloads`) and counts the rewrites at the TCP server.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use fieldlink::{buses, shutdown, Model, Outgoing, Stats};
use fieldlink_drivers::{
    modbus::{Table, Value},
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    capture_logs, eventually, model,
    points::{device, mapping, requests, set, Direct, Writes},
    publisher, Gateway, Observer,
};
use rumqttc::QoS;
use tokio::{sync::mpsc, time::Instant};

/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(10);

/// A bus task on the paused clock and its handles.
struct Bench {
    commands: mpsc::Sender<buses::Request>,
    control: mpsc::Sender<buses::Control>,
    log: Arc<Mutex<Vec<(Duration, Outgoing)>>>,
    writes: Writes,
    stats: Arc<Stats>,
    model: Arc<Model>,
    stop: shutdown::ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
    t0: Instant,
}

const BUS: &str =
    "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1, port: 502, timeout: 1s }\ndevices:\n";

/// Run the Modbus bus of `devices` (appended to [`BUS`]) over `server`.
fn bench(server: &SimServer, devices: &str) -> Bench {
    let model = Arc::new(model(&format!("{BUS}{devices}"), ""));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel::<Vec<Outgoing>>(1024);
    let log: Arc<Mutex<Vec<(Duration, Outgoing)>>> = Arc::default();
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
    let (commands, commands_rx) = mpsc::channel(16);
    let (control, control_rx) = mpsc::channel(4);
    let (stop, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands: commands_rx,
        control: control_rx,
        stats: stats.clone(),
        shutdown: sd,
        snapshots: None,
    };
    let writes: Writes = Arc::default();
    let transport = Direct {
        server: server.clone(),
        timeout: Duration::from_secs(1),
        writes: writes.clone(),
        t0,
    };
    let bus = model.buses[0].clone();
    let task = tokio::spawn(buses::run_modbus(model.clone(), bus, 0, transport, io));
    Bench {
        commands,
        control,
        log,
        writes,
        stats,
        model,
        stop,
        task,
        t0,
    }
}

impl Bench {
    /// Send a `/set` of `value` for point `p` of device `d` (as the router would).
    async fn set(&self, d: usize, p: usize, value: i64) {
        let topic = self.model.buses[0].devices[d].points[p].topic.clone();
        let c = buses::Command {
            device: d,
            point: p,
            topic,
            generation: 0,
            value: Value::Int(value),
            id: Some(serde_json::json!(format!("set-{value}"))),
            reply: None,
        };
        self.commands
            .send(buses::Request::Set(c))
            .await
            .expect("bus task runs");
        // The task takes it at once (the clock does not move while it can run).
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Sleep until `at` since the start (virtual time).
    async fn until(&self, at: Duration) {
        tokio::time::sleep_until(self.t0 + at).await;
    }

    /// The writes of `unit` as (whole seconds of virtual time, first value).
    fn writes_of(&self, unit: u8) -> Vec<(u64, u16)> {
        self.writes
            .lock()
            .expect("lock")
            .iter()
            .filter(|w| w.1 == unit)
            .map(|w| (w.0.as_secs(), w.3[0]))
            .collect()
    }

    /// The payloads published on `topic`.
    fn on(&self, topic: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, m)| m.topic == topic)
            .map(|(_, m)| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    fn counters(&self, id: &str) -> (u64, u64) {
        self.stats.device_by_id(id).map_or((0, 0), |d| {
            (d.rewrites.load(Relaxed), d.rewrite_errors.load(Relaxed))
        })
    }
}

/// `(second, value)` for each of `seconds`.
fn at(seconds: &[u64], value: u16) -> Vec<(u64, u16)> {
    seconds.iter().map(|s| (*s, value)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_kept_value_is_rewritten_every_period_until_a_new_set_replaces_it() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let mut b = bench(
        &server,
        &device(
            "inversor",
            1,
            "1h",
            &["topic: casa/inversor/limite, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.until(Duration::from_secs(2)).await;
    b.set(0, 0, 50).await;
    b.until(Duration::from_secs(40)).await;
    // Written by the command at 2 s, then again every 10 s.
    assert_eq!(b.writes_of(1), at(&[2, 12, 22, 32], 50));
    assert_eq!(
        requests(&dev, 6, Table::Holding, 0),
        4,
        "counted at the device"
    );
    assert_eq!(b.counters("inversor"), (3, 0));
    // A rewrite answers nothing and publishes only what changed (nothing here).
    assert_eq!(b.on("casa/inversor/limite/set/result").len(), 1);
    assert_eq!(b.on("casa/inversor/limite"), ["0", "50"]);

    // A new /set at 40 s replaces the kept value; the period restarts from its write.
    b.set(0, 0, 60).await;
    b.until(Duration::from_secs(75)).await;
    let w = b.writes_of(1);
    assert_eq!(w[4..], at(&[40, 50, 60, 70], 60), "{w:?}");
    assert!(
        !w[4..].iter().any(|x| x.1 == 50),
        "the old value is never written again"
    );
    assert_eq!(b.counters("inversor"), (6, 0));
    assert_eq!(b.on("casa/inversor/limite/set/result").len(), 2);

    // Shutdown ends it.
    b.stop.trigger();
    (&mut b.task).await.expect("bus task ends");
    let n = b.writes_of(1).len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(b.writes_of(1).len(), n);
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_publishes_its_read_back_when_it_changed() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let b = bench(
        &server,
        &device(
            "bomba",
            1,
            "5s",
            &["topic: casa/bomba/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.until(Duration::from_secs(1)).await;
    b.set(0, 0, 40).await;
    // The device falls back to 0 at 3 s (its master went quiet, say); the poll at 5 s
    // publishes it, the rewrite at 11 s puts 40 back and publishes that change; the
    // rewrite at 21 s changes nothing and publishes nothing.
    b.until(Duration::from_secs(3)).await;
    dev.set_registers(Table::Holding, 0, &[0]);
    b.until(Duration::from_secs(25)).await;
    assert_eq!(b.on("casa/bomba/alvo"), ["0", "40", "0", "40"]);
    assert_eq!(dev.registers(Table::Holding, 0, 1), [40]);
    assert_eq!(b.counters("bomba"), (2, 0));
    assert_eq!(
        b.on("casa/bomba/alvo/set/result").len(),
        1,
        "rewrites answer nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_rewrite_is_counted_warned_once_and_tried_again_after_the_period() {
    let logs = capture_logs();
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let b = bench(
        &server,
        &device(
            "caldeira",
            1,
            "1h",
            &["topic: casa/caldeira/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"],
        ),
    );
    b.set(0, 0, 40).await;
    b.until(Duration::from_secs(11)).await;
    assert_eq!(b.counters("caldeira"), (1, 0));
    // The device stops answering at 11 s: the rewrites at 20, 31 and 42 s fail (each
    // costs the 1 s timeout; the next comes a period after it), counted, warned once.
    dev.set_responding(false);
    b.until(Duration::from_secs(50)).await;
    assert_eq!(b.counters("caldeira"), (1, 3));
    // At the device: the command at 0 s, the rewrites at 10, 20, 31 and 42 s.
    assert_eq!(requests(&dev, 6, Table::Holding, 0), 5, "{:?}", dev.log());
    let logged = |text: &str| {
        String::from_utf8_lossy(&logs.lock().expect("lock"))
            .lines()
            .filter(|l| l.contains(text) && l.contains("casa/caldeira/alvo"))
            .count()
    };
    assert_eq!(
        logged("Rewrite failed."),
        1,
        "WARN once while it keeps failing"
    );
    // Back at 50 s: the rewrite at 53 s goes through.
    dev.set_responding(true);
    b.until(Duration::from_secs(54)).await;
    assert_eq!(b.counters("caldeira"), (2, 3));
    assert_eq!(requests(&dev, 6, Table::Holding, 0), 6);
    assert_eq!(logged("Rewrite acknowledged again."), 1);
    assert_eq!(
        b.on("casa/caldeira/alvo/set/result").len(),
        1,
        "rewrites answer nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_the_device_ends_its_rewrites_and_an_unchanged_one_keeps_them() {
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    server.add(2, SimDevice::new());
    let device = |id: &str, unit: u8, poll: &str| {
        let point = format!(
            "topic: casa/{id}/alvo, table: holding, address: 0, writable: true, rewrite_every: 10s"
        );
        device(id, unit, poll, &[&point])
    };
    let b = bench(
        &server,
        &format!("{}{}", device("a", 1, "1h"), device("b", 2, "1h")),
    );
    b.set(0, 0, 11).await;
    b.set(1, 0, 22).await;
    b.until(Duration::from_secs(15)).await;
    assert_eq!(b.writes_of(1), at(&[0, 10], 11));
    assert_eq!(b.writes_of(2), at(&[0, 10], 22));

    // The reload at 15 s changes device `a` (its poll interval) and keeps `b`, as
    // `fieldlink` does on SIGHUP (the same `Control` the bus registry sends).
    let new = model(
        &format!("{BUS}{}{}", device("a", 1, "2h"), device("b", 2, "1h")),
        "",
    );
    let (done, applied) = tokio::sync::oneshot::channel();
    let c = buses::Control::reconfigure(&b.model.buses[0], new.buses[0].clone(), 0, 1, done);
    assert!(matches!(&c, buses::Control::Reconfigure { kept, .. } if *kept == [None, Some(1)]));
    b.control.send(c).await.expect("bus task runs");
    applied.await.expect("reload applied");
    b.until(Duration::from_secs(45)).await;
    assert_eq!(
        b.writes_of(1),
        at(&[0, 10], 11),
        "changed device: no more rewrites"
    );
    assert_eq!(
        b.writes_of(2),
        at(&[0, 10, 20, 30, 40], 22),
        "unchanged device: rewritten on its period across the reload"
    );
}

/// Writes of `value` at `dev` (FC06).
fn writes_of(dev: &SimDevice, value: u16) -> usize {
    dev.log()
        .iter()
        .filter(|r| r.function == 6 && r.written.first() == Some(&value))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_the_running_gateway_ends_the_rewrites_of_the_device_it_changes() {
    let server = SimServer::new();
    let a = server.add(1, SimDevice::new());
    let b = server.add(2, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let point = |id: &str| {
        format!("topic: casa/{id}/alvo, table: holding, address: 0, writable: true, rewrite_every: 200ms")
    };
    let text = |poll_a: &str| {
        mapping(
            port,
            &[
                device("a", 1, poll_a, &[&point("a")]),
                device("b", 2, "1s", &[&point("b")]),
            ],
        )
    };
    let current = Arc::new(Mutex::new(text("1s")));
    let gateway = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n";
    let source = current.clone();
    let load: fieldlink::Loader = Arc::new(move || {
        let mapping = source.lock().expect("lock").clone();
        fieldlink::config::check_sources(std::path::Path::new("/gateway.yaml"), gateway, |_, _| {
            vec![("mapping.yaml".into(), mapping)]
        })
    });
    let (reload, requests) = mpsc::channel(1);
    let hooks = fieldlink::Hooks {
        reloads: Some(fieldlink::Reloads { requests, load }),
        ..Default::default()
    };
    let gw = Gateway::start_with(model(&text("1s"), ""), hooks).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let client = publisher(gw.broker_port()).await;
    assert_eq!(
        set(&client, &mut obs, "casa/a/alvo", "11").await["ok"],
        true
    );
    assert_eq!(
        set(&client, &mut obs, "casa/b/alvo", "22").await["ok"],
        true
    );
    assert!(eventually(T, || writes_of(&a, 11) >= 3 && writes_of(&b, 22) >= 3).await);

    // Device `a` changes (its poll interval), `b` does not.
    *current.lock().expect("lock") = text("2s");
    let reloads = || gw.stats.reloads().map_or(0, |r| r.count);
    reload.send(()).await.expect("reload request");
    assert!(eventually(T, || reloads() == 1).await, "reload applied");
    let last = gw.stats.reloads().and_then(|r| r.last).expect("outcome");
    assert_eq!((last.changed, last.kept), (1, 1));
    let (after_a, after_b) = (writes_of(&a, 11), writes_of(&b, 22));
    // `b` goes on being rewritten; `a`, not once more.
    assert!(eventually(T, || writes_of(&b, 22) >= after_b + 5).await);
    assert_eq!(writes_of(&a, 11), after_a, "{:?}", a.log());
    gw.stop().await;
}
