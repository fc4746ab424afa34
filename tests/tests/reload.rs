//! Live reload on SIGHUP, end to end: the `fieldlink` binary runs as a child process on
//! config files in a temporary directory, its Modbus TCP devices are tokio-modbus servers
//! of this test on 127.0.0.1 port 0 (`SimServer`), and an MQTT subscriber on its embedded
//! broker sees what a user would. The test edits the files and sends `kill -HUP`.
//!
//! What is checked: a new mapping file starts publishing; an unchanged device keeps its
//! cadence while another changes (on another bus, and on the same bus); a broken file
//! (YAML syntax, unknown key) is refused with the diagnostics `fieldlink check` prints, and
//! the running configuration goes on; removed points are cleared and removed devices
//! `offline`, and come back when re-added; a topic that moves to a renamed device keeps
//! its retained value; commands around a reload are all answered; settings that need a
//! restart are reported (again at each reload) and not applied; `<base>/diagnostics`
//! counts it all under `reload`. systemd's side (`RELOADING=1`, `READY=1`) is in
//! `notify_reload.rs`.
//!
//! No fixed sleep synchronises: every wait is for a log line, a message or a counter, with a
//! deadline.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{
    eventually,
    process::{check_diagnostics, Fieldlink},
    publisher, Msg, Observer,
};
use rumqttc::QoS;
use serde_json::Value;

const DIAG: &str = "fieldlink/t/diagnostics";
const RELOADED: &str = "Configuration reloaded.";
const REFUSED: &str = "Reload refused; the running configuration is unchanged.";
/// Generous deadline for anything the gateway does in well under a second.
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Config files

/// A directory with a gateway file and its mapping files.
struct Config {
    dir: tempfile::TempDir,
}

impl Config {
    /// A gateway file (id `t`, diagnostics every second, the embedded broker on port 0)
    /// whose `mappings:` is `mappings`.
    fn new(mappings: &str) -> Config {
        let c = Config {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        c.write("gateway.yaml", &gateway_yaml(mappings, ""));
        c
    }

    /// The gateway file, as an absolute path (diagnostics name files as given).
    fn gateway(&self) -> PathBuf {
        self.path("gateway.yaml")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

fn gateway_yaml(mappings: &str, extra: &str) -> String {
    format!(
        "id: t\nmappings: {mappings}\ndiagnostics_interval: 1s\nstate_dir: state\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n{extra}"
    )
}

/// One Modbus TCP bus entry.
fn bus(id: &str, port: u16) -> String {
    format!("  - {{ id: {id}, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 500ms }}\n")
}

/// One device entry polled every 200 ms; `points` are the inside of flow maps.
fn device(id: &str, bus: &str, unit: u8, points: &[&str]) -> String {
    let mut s = format!(
        "  - id: {id}\n    bus: {bus}\n    unit: {unit}\n    poll_interval: 200ms\n    points:\n"
    );
    for p in points {
        s.push_str(&format!("      - {{ {p} }}\n"));
    }
    s
}

fn mapping(buses: &[String], devices: &[String]) -> String {
    let mut s = String::new();
    if !buses.is_empty() {
        s.push_str("buses:\n");
        buses.iter().for_each(|b| s.push_str(b));
    }
    s.push_str("devices:\n");
    devices.iter().for_each(|d| s.push_str(d));
    s
}

/// A simulated Modbus TCP device (unit 1) on its own listener, holding registers from 0
/// set to `values`.
async fn sim(values: &[u16]) -> (Arc<SimDevice>, u16) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Holding, 0, values);
    let port = server.spawn_local().await.expect("sim");
    (dev, port)
}

// ---------------------------------------------------------------------------------------
// The process, its log, its messages

/// Start the gateway and subscribe to everything on its embedded broker.
async fn start(cfg: &Config) -> (Fieldlink, u16, Observer) {
    let gw = Fieldlink::run(&cfg.gateway());
    let port = gw.broker_port(T).await;
    let obs = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    (gw, port, obs)
}

/// Send SIGHUP and wait for the reload's outcome line: `Ok(line)` for `Configuration
/// reloaded.`, `Err(line)` for `Reload refused…`. Also returns where the log stood before.
async fn sighup(gw: &Fieldlink) -> (usize, Result<String, String>, usize) {
    let mark = gw.log_len();
    gw.signal("-HUP");
    let Some(i) = gw
        .wait_log_matching(mark, |l| l.contains(RELOADED) || l.contains(REFUSED), T)
        .await
    else {
        panic!(
            "no `{RELOADED}` nor `{REFUSED}` within {T:?} of SIGHUP; the log since:\n{}",
            gw.log_since(mark).join("\n")
        );
    };
    let line = gw.log_since(i).swap_remove(0);
    let outcome = if line.contains(RELOADED) {
        Ok(line)
    } else {
        Err(line)
    };
    (mark, outcome, i)
}

/// SIGHUP that must be applied: the `Configuration reloaded.` line.
async fn reload_ok(gw: &Fieldlink) -> String {
    match sighup(gw).await {
        (_, Ok(line), _) => line,
        (mark, Err(_), _) => panic!(
            "a valid configuration was refused:\n{}",
            gw.log_since(mark).join("\n")
        ),
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// `added=`, `removed=`, `changed=`, `kept=` of a `Configuration reloaded.` line.
fn counts(line: &str) -> [Option<u64>; 4] {
    ["added", "removed", "changed", "kept"].map(|n| field(line, n))
}

fn some4(c: [u64; 4]) -> [Option<u64>; 4] {
    c.map(Some)
}

/// Messages on `topic` seen so far.
fn on(obs: &Observer, topic: &str) -> Vec<Msg> {
    obs.seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.topic == topic)
        .cloned()
        .collect()
}

/// Wait until `topic` has carried `payload` (at any time since `obs` connected).
async fn wait_seen(obs: &Observer, topic: &str, payload: &str, within: Duration) -> bool {
    eventually(within, || {
        on(obs, topic).iter().any(|m| m.payload == payload)
    })
    .await
}

/// Wait until `topic` has had `n` messages that arrived after `since`.
async fn wait_arrivals(obs: &Observer, topic: &str, since: Instant, n: usize) -> bool {
    eventually(T, || {
        on(obs, topic).iter().filter(|m| m.at > since).count() >= n
    })
    .await
}

/// The `reload` value of a diagnostics message (`Some(Null)` before any reload, `None`
/// when the key is missing or the message is not diagnostics).
fn reload_of(m: &Msg) -> Option<Value> {
    if m.topic != DIAG {
        return None;
    }
    let v: Value = serde_json::from_str(&m.payload).ok()?;
    v.get("reload").cloned()
}

/// Wait for a diagnostics message whose `reload` satisfies `pred`; panics with the last
/// diagnostics seen.
async fn wait_reload_diag(obs: &Observer, pred: impl Fn(&Value) -> bool) -> Value {
    let found = Arc::new(Mutex::new(None));
    let f2 = found.clone();
    let ok = eventually(T, || {
        let hit = on(obs, DIAG)
            .iter()
            .rev()
            .find_map(|m| reload_of(m).filter(|r| pred(r)));
        let got = hit.is_some();
        *f2.lock().expect("lock") = hit;
        got
    })
    .await;
    if !ok {
        let last = on(obs, DIAG).last().map(|m| m.payload.clone());
        panic!("no diagnostics with the expected `reload` within {T:?}; the last: {last:?}");
    }
    let v = found.lock().expect("lock").take();
    v.expect("found")
}

/// Check a `reload` object of the diagnostics: tries, refusals, the last outcome, and the
/// device counts of the last successful reload (`None`: not checked).
fn check_reload(
    r: &Value,
    count: u64,
    failed: u64,
    last_ok: bool,
    last_errors: u64,
    devices: Option<[u64; 4]>,
) {
    assert_eq!(r["count"], count, "reload.count: {r}");
    assert_eq!(r["failed"], failed, "reload.failed: {r}");
    assert_eq!(r["last_ok"], last_ok, "reload.last_ok: {r}");
    assert_eq!(r["last_errors"], last_errors, "reload.last_errors: {r}");
    let at = r["last_at"]
        .as_str()
        .unwrap_or_else(|| panic!("reload.last_at is a string: {r}"));
    assert!(at.ends_with('Z'), "reload.last_at in UTC: {at}");
    let t = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("last_at {at}: {e}"));
    let age = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO);
    assert!(
        age < Duration::from_secs(30),
        "reload.last_at is recent: {at}"
    );
    assert!(
        r["restart_needed"].is_array(),
        "reload.restart_needed is a list: {r}"
    );
    if let Some([added, removed, changed, kept]) = devices {
        assert_eq!(r["added"], added, "reload.added: {r}");
        assert_eq!(r["removed"], removed, "reload.removed: {r}");
        assert_eq!(r["changed"], changed, "reload.changed: {r}");
        assert_eq!(r["kept"], kept, "reload.kept: {r}");
    }
}

/// SIGTERM: the gateway stops cleanly.
async fn stop(mut gw: Fieldlink) {
    gw.signal("-TERM");
    let st = gw.wait_exit(T).await.expect("fieldlink stops within 10 s");
    assert!(st.success(), "a clean stop: {st}");
}

/// Largest gap between consecutive instants (sorted), and where it ends.
fn max_gap(mut at: Vec<Instant>) -> (Duration, Option<Instant>) {
    at.sort();
    at.windows(2)
        .map(|w| (w[1] - w[0], Some(w[1])))
        .max_by_key(|(d, _)| *d)
        .unwrap_or((Duration::ZERO, None))
}

// ---------------------------------------------------------------------------------------
// 1. A new mapping file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mapping_file_matched_by_the_glob_starts_publishing() {
    let (_dev_a, port_a) = sim(&[11]).await;
    let (dev_b, port_b) = sim(&[22]).await;
    let cfg = Config::new("conf.d/*.yaml");
    cfg.write(
        "conf.d/a.yaml",
        &mapping(
            &[bus("ba", port_a)],
            &[device(
                "da",
                "ba",
                1,
                &["topic: casa/a/v, table: holding, address: 0"],
            )],
        ),
    );
    let (gw, _port, obs) = start(&cfg).await;
    assert!(
        wait_seen(&obs, "casa/a/v", "11", T).await,
        "device a publishes"
    );
    // Before any reload, diagnostics carry `"reload": null`.
    assert!(
        eventually(T, || !on(&obs, DIAG).is_empty()).await,
        "diagnostics every second"
    );
    let first = on(&obs, DIAG).swap_remove(0);
    assert_eq!(
        reload_of(&first),
        Some(Value::Null),
        "`reload` is null before any reload: {}",
        first.payload
    );

    cfg.write(
        "conf.d/b.yaml",
        &mapping(
            &[bus("bb", port_b)],
            &[device(
                "db",
                "bb",
                1,
                &["topic: casa/b/v, table: holding, address: 0"],
            )],
        ),
    );
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([1, 0, 0, 1]), "{line}");
    assert!(
        wait_seen(&obs, "casa/b/v", "22", T).await,
        "the new file's topic appears"
    );
    assert!(
        wait_seen(&obs, "fieldlink/t/db/availability", "online", T).await,
        "the new device is online"
    );
    assert!(dev_b.request_count() > 0, "the new device is polled");
    let r = wait_reload_diag(&obs, |r| r["count"] == 1).await;
    check_reload(&r, 1, 0, true, 0, Some([1, 0, 0, 1]));
    assert_eq!(r["restart_needed"], serde_json::json!([]), "{r}");

    // SIGHUP with nothing changed: every device kept.
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 0, 0, 2]), "{line}");
    let r = wait_reload_diag(&obs, |r| r["count"] == 2).await;
    check_reload(&r, 2, 0, true, 0, Some([0, 0, 0, 2]));
    stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// 2. An unchanged device misses no poll

/// A TCP proxy on 127.0.0.1 port 0 in front of `target`: its port, and how many
/// connections it accepted.
async fn counting_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, n)
}

/// `devices.<dev>.polls` of a diagnostics message.
fn polls_of(m: &Msg, dev: &str) -> Option<u64> {
    if m.topic != DIAG {
        return None;
    }
    let v: Value = serde_json::from_str(&m.payload).ok()?;
    v["devices"][dev]["polls"].as_u64()
}

/// Wait for a diagnostics message that arrived after `since`, and check that its poll
/// count of `dk` is the number of polls the simulated device had seen by then (a device
/// restarted with fresh counters would report far fewer); returns that count.
async fn polls_follow_the_device(obs: &Observer, dk: &SimDevice, since: Instant) -> u64 {
    assert!(
        eventually(T, || on(obs, DIAG).iter().any(|m| m.at > since)).await,
        "diagnostics every second"
    );
    let m = on(obs, DIAG)
        .into_iter()
        .find(|m| m.at > since)
        .expect("diagnostics");
    let polls = polls_of(&m, "dk").unwrap_or_else(|| panic!("devices.dk.polls: {}", m.payload));
    let seen = dk.log().iter().filter(|r| r.at <= m.at).count() as u64;
    assert!(
        polls <= seen + 1 && polls + 3 >= seen,
        "the gateway counts {polls} polls of dk, the device saw {seen}: {}",
        m.payload
    );
    polls
}

/// Device `dk` (unchanged, 200 ms, every poll published) and device `dc` in one mapping
/// file; the reload changes `dc` only (a scale and a new point). On its own bus, or on the
/// bus of `dc` (another unit id).
async fn unchanged_device_keeps_its_cadence(same_bus: bool) {
    let server_k = SimServer::new();
    let dk = server_k.add(1, SimDevice::new());
    dk.set_registers(Table::Holding, 0, &[7]);
    let server_c = if same_bus {
        server_k.clone()
    } else {
        SimServer::new()
    };
    let unit_c = if same_bus { 2 } else { 1 };
    let dc = server_c.add(unit_c, SimDevice::new());
    dc.set_registers(Table::Holding, 0, &[10, 3]);
    // The unchanged device's bus connects through a proxy that counts connections.
    let (port_k, connections) =
        counting_proxy(server_k.clone().spawn_local().await.expect("sim")).await;
    let (buses, bus_c) = if same_bus {
        (vec![bus("b", port_k)], "b")
    } else {
        let port_c = server_c.spawn_local().await.expect("sim");
        (vec![bus("b", port_k), bus("bc", port_c)], "bc")
    };
    let k = device(
        "dk",
        "b",
        1,
        &["topic: casa/k/v, table: holding, address: 0, publish: every_poll"],
    );
    let before = mapping(
        &buses,
        &[
            k.clone(),
            device(
                "dc",
                bus_c,
                unit_c,
                &["topic: casa/c/v, table: holding, address: 0, publish: every_poll"],
            ),
        ],
    );
    let after = mapping(
        &buses,
        &[
            k,
            device(
                "dc",
                bus_c,
                unit_c,
                &[
                    "topic: casa/c/v, table: holding, address: 0, scale: 2, publish: every_poll",
                    "topic: casa/c/w, table: holding, address: 1, publish: every_poll",
                ],
            ),
        ],
    );
    let cfg = Config::new("m.yaml");
    cfg.write("m.yaml", &before);
    let (gw, _port, obs) = start(&cfg).await;
    let t0 = Instant::now();
    assert!(
        wait_arrivals(&obs, "casa/k/v", t0, 8).await,
        "dk publishes every poll"
    );
    assert!(wait_seen(&obs, "casa/c/v", "10", T).await, "dc publishes");
    // The gateway's poll counter of dk follows the polls the device saw (checked here
    // before the reload, so that the check after it means something).
    let polls_before = polls_follow_the_device(&obs, &dk, t0).await;
    let connected = connections.load(Ordering::SeqCst);

    cfg.write("m.yaml", &after);
    let hup = Instant::now();
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 0, 1, 1]), "{line}");
    assert!(
        wait_seen(&obs, "casa/c/v", "20", T).await,
        "the changed device runs its new mapping (scale 2)"
    );
    assert!(
        wait_seen(&obs, "casa/c/w", "3", T).await,
        "the changed device's new point"
    );
    // Two more seconds of the unchanged device after the change took effect.
    let applied = Instant::now();
    assert!(
        wait_arrivals(&obs, "casa/k/v", applied, 10).await,
        "dk keeps publishing after the reload"
    );
    let end = Instant::now();
    let from = hup - Duration::from_millis(1000);
    let arrivals: Vec<Instant> = on(&obs, "casa/k/v")
        .iter()
        .map(|m| m.at)
        .filter(|t| *t >= from && *t <= end)
        .collect();
    let polls: Vec<Instant> = dk
        .log()
        .iter()
        .filter(|r| r.function == 3 && r.at >= from && r.at <= end)
        .map(|r| r.at)
        .collect();
    let (gap, gap_at) = max_gap(arrivals.clone());
    let (poll_gap, poll_gap_at) = max_gap(polls.clone());
    let rel = |t: Option<Instant>| {
        t.map(|t| {
            if t >= hup {
                format!("{:?} after SIGHUP", t - hup)
            } else {
                format!("{:?} before SIGHUP", hup - t)
            }
        })
    };
    eprintln!(
        "same bus: {same_bus}; unchanged device across the reload: {} messages, largest gap {gap:?} ({:?}); {} polls, largest gap {poll_gap:?} ({:?})",
        arrivals.len(),
        rel(gap_at),
        polls.len(),
        rel(poll_gap_at)
    );
    // Not restarted: its counters go on, and (on its own bus) its connection stays.
    let polls_after = polls_follow_the_device(&obs, &dk, end).await;
    assert!(
        polls_after > polls_before,
        "{polls_before} then {polls_after}"
    );
    let reconnects = connections.load(Ordering::SeqCst) - connected;
    eprintln!("same bus: {same_bus}; the unchanged device's bus connected {reconnects} more time(s) during the reload");
    if !same_bus {
        assert_eq!(
            reconnects, 0,
            "the unchanged bus keeps its connection to the device"
        );
    }
    let limit = Duration::from_millis(400);
    assert!(
        poll_gap < limit,
        "the unchanged device was not polled for {poll_gap:?} ({:?}); poll interval 200 ms",
        rel(poll_gap_at)
    );
    assert!(
        gap < limit,
        "no message of the unchanged device for {gap:?} ({:?}); poll interval 200 ms",
        rel(gap_at)
    );
    stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_device_misses_no_poll_while_another_bus_changes() {
    unchanged_device_keeps_its_cadence(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_device_misses_no_poll_while_a_device_on_its_bus_changes() {
    unchanged_device_keeps_its_cadence(true).await;
}

// ---------------------------------------------------------------------------------------
// 3. A broken mapping is refused

/// `conf.d/b.yaml` with a point renamed to `casa/b/renamed` and, with `broken`, a YAML
/// syntax error (`syntax`) or an unknown key (`unknown_key`) on line 9.
fn b_yaml(port: u16, broken: &str) -> String {
    let point = match broken {
        "syntax" => "{ topic: casa/b/renamed, table: holding, address: 0, publish: every_poll",
        "unknown_key" => {
            "{ topic: casa/b/renamed, table: holding, adress: 0, publish: every_poll }"
        }
        _ => "{ topic: casa/b/renamed, table: holding, address: 0, publish: every_poll }",
    };
    format!(
        "buses:\n  - {{ id: bb, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 500ms }}\ndevices:\n  - id: db\n    bus: bb\n    unit: 1\n    poll_interval: 200ms\n    points:\n      - {point}\n"
    )
}

fn a_yaml(port: u16, extra_point: bool) -> String {
    let mut points = vec!["topic: casa/a/v, table: holding, address: 0, publish: every_poll"];
    if extra_point {
        points.push("topic: casa/a/extra, table: holding, address: 1, publish: every_poll");
    }
    mapping(&[bus("ba", port)], &[device("da", "ba", 1, &points)])
}

/// Two devices in two files; then a valid change to `a.yaml` and a broken `b.yaml`:
/// refused as a whole. Returns the running gateway, its subscriber and the files.
async fn broken_mapping_is_refused(
    broken: &str,
    position: &str,
    message: &str,
) -> (Fieldlink, Observer, Config, u16) {
    let (_dev_a, port_a) = sim(&[1, 9]).await;
    let (_dev_b, port_b) = sim(&[2]).await;
    let cfg = Config::new("conf.d/*.yaml");
    cfg.write("conf.d/a.yaml", &a_yaml(port_a, false));
    cfg.write(
        "conf.d/b.yaml",
        &mapping(
            &[bus("bb", port_b)],
            &[device(
                "db",
                "bb",
                1,
                &["topic: casa/b/v, table: holding, address: 0, publish: every_poll"],
            )],
        ),
    );
    let (gw, _port, obs) = start(&cfg).await;
    let t0 = Instant::now();
    assert!(wait_arrivals(&obs, "casa/a/v", t0, 3).await, "a publishes");
    assert!(wait_arrivals(&obs, "casa/b/v", t0, 3).await, "b publishes");

    cfg.write("conf.d/a.yaml", &a_yaml(port_a, true));
    cfg.write("conf.d/b.yaml", &b_yaml(port_b, broken));
    // What `fieldlink check` says about these files.
    let (diags, code) = check_diagnostics(&cfg.gateway());
    assert_eq!(code, Some(78), "check refuses the files: {diags:?}");
    let b = cfg.path("conf.d/b.yaml");
    let expected_start = format!("{}:{position}: ", b.display());
    assert_eq!(diags.len(), 1, "one diagnostic: {diags:?}");
    assert!(
        diags[0].starts_with(&expected_start) && diags[0].contains(message),
        "check's diagnostic: {diags:?}"
    );

    let (mark, outcome, refused_at) = sighup(&gw).await;
    if let Ok(line) = outcome {
        panic!(
            "a broken configuration was applied: {line}\n{}",
            gw.log_since(mark).join("\n")
        );
    }
    // Each diagnostic on standard error as `check` prints it, before the refusal.
    let log = gw.log_since(mark);
    for d in &diags {
        match log.iter().position(|l| l == d) {
            Some(i) => assert!(
                mark + i < refused_at,
                "the diagnostic comes before `{REFUSED}`:\n{}",
                log.join("\n")
            ),
            None => panic!(
                "the diagnostic `{d}` is not on standard error as check prints it (a line {}):\n{}",
                if log.iter().any(|l| l.contains(d.as_str())) {
                    "contains it, with more around it"
                } else {
                    "holding it is missing"
                },
                log.join("\n")
            ),
        }
    }
    // The old configuration keeps running: both devices publish, neither goes offline,
    // and nothing of the new files is applied.
    let refused = Instant::now();
    assert!(
        wait_arrivals(&obs, "casa/a/v", refused, 5).await,
        "device a still publishes after the refusal"
    );
    assert!(
        wait_arrivals(&obs, "casa/b/v", refused, 5).await,
        "device b still publishes after the refusal"
    );
    for dev in ["da", "db"] {
        let topic = format!("fieldlink/t/{dev}/availability");
        assert!(
            on(&obs, &topic).iter().all(|m| m.payload == "online"),
            "{dev} stayed online: {:?}",
            on(&obs, &topic)
        );
    }
    let r = wait_reload_diag(&obs, |r| r["count"] == 1).await;
    check_reload(&r, 1, 1, false, 1, None);
    assert!(
        on(&obs, "casa/a/extra").is_empty() && on(&obs, "casa/b/renamed").is_empty(),
        "nothing of the refused configuration runs"
    );
    (gw, obs, cfg, port_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_syntax_error_is_refused_and_the_old_configuration_runs_on() {
    let (gw, _obs, _cfg, _) = broken_mapping_is_refused("syntax", "9:9", "unclosed bracket").await;
    stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_and_the_fixed_file_is_applied_next() {
    let (gw, obs, cfg, port_b) = broken_mapping_is_refused(
        "unknown_key",
        "9:50",
        "devices[0].points[0].adress: unknown key `adress`",
    )
    .await;
    // Fixed: both changes apply on the next SIGHUP.
    cfg.write("conf.d/b.yaml", &b_yaml(port_b, ""));
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 0, 2, 0]), "{line}");
    assert!(
        wait_seen(&obs, "casa/b/renamed", "2", T).await,
        "renamed point"
    );
    assert!(wait_seen(&obs, "casa/a/extra", "9", T).await, "new point");
    assert!(
        wait_seen(&obs, "casa/b/v", "", T).await,
        "the old topic of the renamed point is cleared"
    );
    let r = wait_reload_diag(&obs, |r| r["count"] == 2).await;
    check_reload(&r, 2, 1, true, 0, Some([0, 0, 2, 0]));
    stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// 4. Removed points and devices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_points_are_cleared_and_a_removed_device_goes_offline() {
    let (_dev_a, port_a) = sim(&[1, 2]).await;
    let (dev_b, port_b) = sim(&[3]).await;
    let cfg = Config::new("[a.yaml, b.yaml]");
    let a = |both: bool| {
        let mut points = vec!["topic: casa/a/p1, table: holding, address: 0"];
        if both {
            points.push("topic: casa/a/p2, table: holding, address: 1");
        }
        mapping(&[bus("ba", port_a)], &[device("da", "ba", 1, &points)])
    };
    cfg.write("a.yaml", &a(true));
    cfg.write(
        "b.yaml",
        &mapping(
            &[bus("bb", port_b)],
            &[device(
                "db",
                "bb",
                1,
                &["topic: casa/b/q, table: holding, address: 0"],
            )],
        ),
    );
    let (gw, port, obs) = start(&cfg).await;
    for (topic, payload) in [
        ("casa/a/p1", "1"),
        ("casa/a/p2", "2"),
        ("casa/b/q", "3"),
        ("fieldlink/t/da/availability", "online"),
        ("fieldlink/t/db/availability", "online"),
    ] {
        assert!(
            wait_seen(&obs, topic, payload, T).await,
            "{topic} {payload}"
        );
    }

    // p2 leaves a.yaml; b.yaml leaves the gateway file's list (the file stays on disk).
    cfg.write("a.yaml", &a(false));
    cfg.write("gateway.yaml", &gateway_yaml("[a.yaml]", ""));
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 1, 1, 0]), "{line}");
    let requests_b = dev_b.request_count();
    // Subscribers see the clearing messages and the removed device's `offline`.
    // Home Assistant's entities of the removed points go too: their configs are
    // cleared.
    for (topic, payload) in [
        ("casa/a/p2", ""),
        ("casa/b/q", ""),
        ("fieldlink/t/db/availability", "offline"),
        ("homeassistant/sensor/fieldlink_t_da_casa_a_p2/config", ""),
        ("homeassistant/sensor/fieldlink_t_db_casa_b_q/config", ""),
    ] {
        assert!(
            wait_seen(&obs, topic, payload, T).await,
            "{topic} {payload:?}: {:?}",
            on(&obs, topic)
        );
    }

    // A new subscriber gets the retained state: no value for the removed points.
    let fresh = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    // The first diagnostics is the retained one; the second is published a second
    // later, after every retained message was delivered.
    assert!(
        eventually(T, || on(&fresh, DIAG).len() >= 2).await,
        "diagnostics reach the new subscriber"
    );
    let retained = |topic: &str| {
        on(&fresh, topic)
            .into_iter()
            .find(|m| m.retain)
            .map(|m| m.payload)
    };
    assert_eq!(retained("casa/a/p1").as_deref(), Some("1"), "p1 stays");
    assert_eq!(
        retained("fieldlink/t/db/availability").as_deref(),
        Some("offline"),
        "the removed device is offline, retained"
    );
    assert_eq!(
        retained("fieldlink/t/da/availability").as_deref(),
        Some("online")
    );
    for topic in ["casa/a/p2", "casa/b/q"] {
        let got = on(&fresh, topic);
        assert!(
            got.iter().all(|m| !m.retain && m.payload.is_empty()),
            "a new subscriber gets nothing for the removed point {topic}: {got:?}"
        );
    }
    // The removed device is no longer polled (one poll may have been under way).
    let now = dev_b.request_count();
    assert!(
        now <= requests_b + 1,
        "the removed device is not polled any more: {requests_b} requests at the reload, {now} a second or more later"
    );
    let r = wait_reload_diag(&obs, |r| r["count"] == 1).await;
    check_reload(&r, 1, 0, true, 0, Some([0, 1, 1, 0]));

    // Both come back: their values are published (and retained) again, though they
    // equal the last values published before the removal.
    cfg.write("a.yaml", &a(true));
    cfg.write("gateway.yaml", &gateway_yaml("[a.yaml, b.yaml]", ""));
    let back = Instant::now();
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([1, 0, 1, 0]), "{line}");
    for (topic, payload) in [
        ("casa/a/p2", "2"),
        ("casa/b/q", "3"),
        ("fieldlink/t/db/availability", "online"),
    ] {
        assert!(
            eventually(T, || on(&obs, topic)
                .iter()
                .any(|m| m.at > back && m.payload == payload))
            .await,
            "{topic} {payload} again after the device came back: {:?}",
            on(&obs, topic)
        );
    }
    let again = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    assert!(
        eventually(T, || on(&again, DIAG).len() >= 2).await,
        "diagnostics reach the new subscriber"
    );
    let retained = |topic: &str| {
        on(&again, topic)
            .into_iter()
            .find(|m| m.retain)
            .map(|m| m.payload)
    };
    assert_eq!(retained("casa/a/p2").as_deref(), Some("2"));
    assert_eq!(retained("casa/b/q").as_deref(), Some("3"));
    assert_eq!(
        retained("fieldlink/t/db/availability").as_deref(),
        Some("online")
    );
    stop(gw).await;
}

/// A device renamed (the same point, the same topic, on the same bus): the old device is
/// removed, the new one added, and the topic they share keeps its retained value (its
/// clearing, as a removed device's topic, must not come after the new device's value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_moves_to_a_renamed_device_keeps_its_retained_value() {
    let (_dev, port_a) = sim(&[11]).await;
    let cfg = Config::new("m.yaml");
    let m = |id: &str| {
        mapping(
            &[bus("ba", port_a)],
            &[device(
                id,
                "ba",
                1,
                &["topic: casa/a/v, table: holding, address: 0"],
            )],
        )
    };
    cfg.write("m.yaml", &m("da"));
    let (gw, port, obs) = start(&cfg).await;
    assert!(wait_seen(&obs, "casa/a/v", "11", T).await, "da publishes");
    assert!(wait_seen(&obs, "fieldlink/t/da/availability", "online", T).await);
    cfg.write("m.yaml", &m("dz"));
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([1, 1, 0, 0]), "{line}");
    assert!(
        wait_seen(&obs, "fieldlink/t/da/availability", "offline", T).await,
        "the old device offline"
    );
    assert!(
        wait_seen(&obs, "fieldlink/t/dz/availability", "online", T).await,
        "the new device online"
    );
    let fresh = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    assert!(
        eventually(T, || on(&fresh, DIAG).len() >= 2).await,
        "diagnostics reach the new subscriber"
    );
    let retained: Vec<String> = on(&fresh, "casa/a/v")
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| m.payload)
        .collect();
    eprintln!(
        "casa/a/v as the first subscriber saw it: {:?}",
        on(&obs, "casa/a/v")
            .iter()
            .map(|m| m.payload.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        retained,
        vec!["11".to_string()],
        "a new subscriber gets the topic's retained value"
    );
    stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// 5. Commands around a reload

/// Device `dw` (a writable setpoint at holding 10, a reading at 0) in `a.yaml`, device
/// `dc` (a reading at 0, a writable setpoint at 7) in `b.yaml`; `b_after` adds a writable
/// point to `dc` (so `dw` is kept and `dc` changed).
struct CommandSetup {
    cfg: Config,
    dev_w: Arc<SimDevice>,
    dev_c: Arc<SimDevice>,
    b_after: String,
}

async fn command_setup() -> CommandSetup {
    let (dev_w, port_w) = sim(&[5]).await;
    let (dev_c, port_c) = sim(&[6]).await;
    let cfg = Config::new("[a.yaml, b.yaml]");
    cfg.write(
        "a.yaml",
        &mapping(
            &[bus("ba", port_w)],
            &[device(
                "dw",
                "ba",
                1,
                &[
                    "topic: casa/w/v, table: holding, address: 0, publish: every_poll",
                    "topic: casa/w/sp, table: holding, address: 10, writable: true, min: 0, max: 1000",
                ],
            )],
        ),
    );
    let c = |new_point: bool| {
        let mut points = vec![
            "topic: casa/c/v, table: holding, address: 0",
            "topic: casa/c/sp, table: holding, address: 7, writable: true, min: 0, max: 1000",
        ];
        if new_point {
            points.push(
                "topic: casa/c/new, table: holding, address: 5, writable: true, min: 0, max: 1000",
            );
        }
        mapping(&[bus("bb", port_c)], &[device("dc", "bb", 1, &points)])
    };
    cfg.write("b.yaml", &c(false));
    CommandSetup {
        cfg,
        dev_w,
        dev_c,
        b_after: c(true),
    }
}

/// The result on `<topic>/set/result` whose id is `id`, as JSON.
fn result_for(obs: &Observer, topic: &str, id: &str) -> Option<Value> {
    on(obs, &format!("{topic}/set/result"))
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&m.payload).ok())
        .find(|v| v["id"] == id)
}

async fn wait_result(obs: &Observer, topic: &str, id: &str) -> Value {
    assert!(
        eventually(T, || result_for(obs, topic, id).is_some()).await,
        "no {topic}/set/result for id {id} within {T:?}: {:?}",
        on(obs, &format!("{topic}/set/result"))
    );
    result_for(obs, topic, id).expect("result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_right_after_sighup_is_answered_and_written() {
    let s = command_setup().await;
    let (gw, port, obs) = start(&s.cfg).await;
    assert!(wait_seen(&obs, "casa/w/sp", "0", T).await, "dw publishes");
    assert!(wait_seen(&obs, "casa/c/v", "6", T).await, "dc publishes");
    let cmd = publisher(port).await;
    // One command before, so that the client is connected when it matters.
    cmd.publish(
        "casa/w/sp/set",
        QoS::AtLeastOnce,
        false,
        r#"{"value": 1, "id": "warm-up"}"#,
    )
    .await
    .expect("publish");
    assert_eq!(wait_result(&obs, "casa/w/sp", "warm-up").await["ok"], true);

    s.cfg.write("b.yaml", &s.b_after);
    let mark = gw.log_len();
    gw.signal("-HUP");
    cmd.publish(
        "casa/w/sp/set",
        QoS::AtLeastOnce,
        false,
        r#"{"value": 42, "id": "after-hup"}"#,
    )
    .await
    .expect("publish");
    let r = wait_result(&obs, "casa/w/sp", "after-hup").await;
    assert_eq!(
        r,
        serde_json::json!({"ok": true, "value": 42, "id": "after-hup"}),
        "the command sent right after SIGHUP"
    );
    assert_eq!(
        s.dev_w.registers(Table::Holding, 10, 1),
        vec![42],
        "written"
    );
    let i = gw.expect_log(mark, RELOADED, T).await;
    let line = gw.log_since(i).swap_remove(0);
    assert_eq!(counts(&line), some4([0, 0, 1, 1]), "{line}");

    // After the reload: the kept point and the new writable point take commands.
    for (topic, id, value, dev, addr) in [
        ("casa/w/sp", "after-reload", 43, &s.dev_w, 10),
        ("casa/c/new", "new-point", 77, &s.dev_c, 5),
    ] {
        cmd.publish(
            format!("{topic}/set"),
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"value": {value}, "id": "{id}"}}"#),
        )
        .await
        .expect("publish");
        let r = wait_result(&obs, topic, id).await;
        assert_eq!(
            r,
            serde_json::json!({"ok": true, "value": value, "id": id}),
            "{topic}"
        );
        assert_eq!(
            dev.registers(Table::Holding, addr, 1),
            vec![value],
            "{topic}"
        );
    }
    stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_around_a_reload_all_get_a_result() {
    let s = command_setup().await;
    let (gw, port, obs) = start(&s.cfg).await;
    assert!(wait_seen(&obs, "casa/w/sp", "0", T).await, "dw publishes");
    let cmd = publisher(port).await;
    cmd.publish(
        "casa/w/sp/set",
        QoS::AtLeastOnce,
        false,
        r#"{"value": 1, "id": "warm-up"}"#,
    )
    .await
    .expect("publish");
    assert_eq!(wait_result(&obs, "casa/w/sp", "warm-up").await["ok"], true);

    // Commands to the kept device's setpoint and to the changed device's, in turn, one
    // every 2 ms (pacing, not synchronisation: the reload itself takes a few ms) until told
    // to stop: (topic, id, value, when sent).
    type Sent = Arc<Mutex<Vec<(&'static str, String, u64, Instant)>>>;
    let sent: Sent = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let (sent, done, cmd) = (sent.clone(), done.clone(), cmd.clone());
        async move {
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                i += 1;
                let topic = if i.is_multiple_of(2) {
                    "casa/w/sp"
                } else {
                    "casa/c/sp"
                };
                let id = format!("c{i}");
                let value = 100 + i % 900;
                cmd.publish(
                    format!("{topic}/set"),
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"value": {value}, "id": "{id}"}}"#),
                )
                .await
                .expect("publish");
                sent.lock()
                    .expect("lock")
                    .push((topic, id, value, Instant::now()));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let count_after = |since: Instant| {
        sent.lock()
            .expect("lock")
            .iter()
            .filter(|(_, _, _, t)| *t > since)
            .count()
    };
    assert!(
        eventually(T, || count_after(Instant::now() - T) >= 20).await,
        "commands before the reload"
    );
    s.cfg.write("b.yaml", &s.b_after);
    let hup = Instant::now();
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 0, 1, 1]), "{line}");
    let reloaded = Instant::now();
    assert!(
        eventually(T, || count_after(reloaded) >= 20).await,
        "commands after the reload"
    );
    done.store(true, Ordering::SeqCst);
    sender.await.expect("sender");
    let sent = sent.lock().expect("lock").clone();
    let all_answered = eventually(T, || {
        sent.iter()
            .all(|(topic, id, _, _)| result_for(&obs, topic, id).is_some())
    })
    .await;
    let missing: Vec<(&str, &String, Instant)> = sent
        .iter()
        .filter(|(topic, id, _, _)| result_for(&obs, topic, id).is_none())
        .map(|(topic, id, _, t)| (*topic, id, *t))
        .collect();
    let around = sent
        .iter()
        .filter(|(_, _, _, t)| *t >= hup && *t <= reloaded)
        .count();
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for (topic, id, _, _) in &sent {
        let what = match result_for(&obs, topic, id) {
            Some(r) if r["ok"] == true => "ok".to_string(),
            Some(r) => r["error"]
                .as_str()
                .unwrap_or("?")
                .split(':')
                .next()
                .unwrap_or("?")
                .to_string(),
            None => "no result".to_string(),
        };
        *outcomes.entry(format!("{topic}: {what}")).or_default() += 1;
    }
    eprintln!(
        "{} commands, {around} of them sent between SIGHUP and `{RELOADED}`: {outcomes:?}",
        sent.len()
    );
    assert!(
        all_answered,
        "commands without a result (topic, id, sent after SIGHUP by): {:?}",
        missing
            .iter()
            .map(|(topic, id, t)| (topic, id, t.checked_duration_since(hup)))
            .collect::<Vec<_>>()
    );
    // The kept device's commands are applied or superseded by a newer one, nothing else;
    // the changed device's may also be refused for the reload, with the errors the README
    // lists for that (`configuration reloaded`, `configuration reloading`).
    for (topic, id, value, _) in &sent {
        let r = result_for(&obs, topic, id).expect("result");
        let error = r["error"].as_str().unwrap_or("");
        let allowed: &[&str] = if *topic == "casa/w/sp" {
            &["superseded"]
        } else {
            &[
                "superseded",
                "configuration reloaded",
                "configuration reloading",
            ]
        };
        let refused = r["ok"] == false && allowed.iter().any(|a| error.starts_with(a));
        assert!(
            r == serde_json::json!({"ok": true, "value": value, "id": id}) || refused,
            "command {id} ({value}) to {topic}: {r}"
        );
    }
    // The last command of each point is applied.
    for (topic, dev, addr) in [("casa/w/sp", &s.dev_w, 10), ("casa/c/sp", &s.dev_c, 7)] {
        let (_, id, value, _) = sent.iter().rev().find(|c| c.0 == topic).expect("commands");
        assert_eq!(
            result_for(&obs, topic, id).expect("result"),
            serde_json::json!({"ok": true, "value": value, "id": id}),
            "the last command to {topic} is applied"
        );
        assert_eq!(
            dev.registers(Table::Holding, addr, 1),
            vec![u16::try_from(*value).expect("u16")],
            "{topic}: the register holds the last value"
        );
    }
    stop(gw).await;
}

// ---------------------------------------------------------------------------------------
// 6. Settings that need a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_reported_and_not_applied() {
    let (_dev_a, port_a) = sim(&[1]).await;
    let (_dev_b, port_b) = sim(&[2]).await;
    let cfg = Config::new("[a.yaml]");
    cfg.write(
        "a.yaml",
        &mapping(
            &[bus("ba", port_a)],
            &[device(
                "da",
                "ba",
                1,
                &["topic: casa/a/v, table: holding, address: 0, publish: every_poll"],
            )],
        ),
    );
    cfg.write(
        "b.yaml",
        &mapping(
            &[bus("bb", port_b)],
            &[device(
                "db",
                "bb",
                1,
                &["topic: casa/b/v, table: holding, address: 0"],
            )],
        ),
    );
    let (gw, port, obs) = start(&cfg).await;
    assert!(wait_seen(&obs, "casa/a/v", "1", T).await, "a publishes");
    // A new base topic and a new embedded broker setting (restart needed), and a new
    // mapping file (applied).
    cfg.write(
        "gateway.yaml",
        &gateway_yaml(
            "[a.yaml, b.yaml]",
            "    max_connections: 16\nbase_topic: fieldlink/other\n",
        ),
    );
    let mark = gw.log_len();
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([1, 0, 0, 1]), "{line}");
    let restart_lines: Vec<String> = gw
        .log_since(mark)
        .into_iter()
        .filter(|l| l.contains("needs a restart"))
        .collect();
    assert!(
        !restart_lines.is_empty(),
        "`needs a restart` is logged:\n{}",
        gw.log_since(mark).join("\n")
    );
    eprintln!("restart needed: {restart_lines:?}");
    // The mapping change applies, under the old base topic, on the same broker.
    assert!(wait_seen(&obs, "casa/b/v", "2", T).await, "the new device");
    assert!(
        wait_seen(&obs, "fieldlink/t/db/availability", "online", T).await,
        "availability under the base topic the gateway started with"
    );
    let r = wait_reload_diag(&obs, |r| r["count"] == 1).await;
    check_reload(&r, 1, 0, true, 0, Some([1, 0, 0, 1]));
    let needed = r["restart_needed"].as_array().cloned().unwrap_or_default();
    assert!(
        !needed.is_empty() && needed.iter().all(Value::is_string),
        "reload.restart_needed names the settings: {r}"
    );
    let late = Observer::connect(port, "#", QoS::AtLeastOnce).await;
    assert!(
        eventually(T, || on(&late, DIAG).len() >= 2).await,
        "diagnostics still on the old base topic"
    );
    assert!(
        !gw.log_since(mark)
            .iter()
            .any(|l| l.contains("Embedded broker listening.")),
        "the embedded broker was not restarted"
    );
    for o in [&obs, &late] {
        let other: Vec<Msg> = o
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.topic.starts_with("fieldlink/other"))
            .cloned()
            .collect();
        assert!(
            other.is_empty(),
            "the new base topic is not used: {other:?}"
        );
    }
    eprintln!("restart_needed: {}", r["restart_needed"]);

    // SIGHUP again, nothing changed since: the settings still differ from the running
    // ones, so they are reported again, and still not applied.
    let mark = gw.log_len();
    let line = reload_ok(&gw).await;
    assert_eq!(counts(&line), some4([0, 0, 0, 2]), "{line}");
    assert!(
        gw.log_since(mark)
            .iter()
            .any(|l| l.contains("needs a restart")),
        "`needs a restart` again:\n{}",
        gw.log_since(mark).join("\n")
    );
    let r2 = wait_reload_diag(&obs, |r| r["count"] == 2).await;
    check_reload(&r2, 2, 0, true, 0, Some([0, 0, 0, 2]));
    assert_eq!(
        r2["restart_needed"], r["restart_needed"],
        "the same settings still need a restart"
    );
    let since = Instant::now();
    assert!(
        eventually(T, || on(&obs, DIAG).iter().any(|m| m.at > since)).await,
        "diagnostics still on the old base topic"
    );
    let other = obs
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|m| m.topic.starts_with("fieldlink/other"))
        .count();
    assert_eq!(other, 0, "the new base topic is still not used");
    stop(gw).await;
}
