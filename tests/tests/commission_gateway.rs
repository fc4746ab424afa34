//! Commissioning through the running gateway: the real `fieldlink` binary's `probe`,
//! `scan` and `write` with `--config FILE --bus ID` while the gateway of that file runs
//! (in process, its embedded broker on a port the system picks, written into the file the
//! command reads) and owns an RTU bus on a pseudo-terminal. The gateway reaches the line
//! through a symbolic link that is removed once it has opened it: a command that opened
//! the port itself would fail, so every answer came through the gateway.
//!
//! Also: MQTT 5 clients with Response Topic and Correlation Data (rumqttc, and the real
//! `mosquitto_rr`), a 3.1.1 client with `response_topic` in the body (`mosquitto_pub` /
//! `mosquitto_sub`), and the refusals: `commissioning` off, and no write right in the
//! `acl_file`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{pty_pair, SimDevice, SimServer},
};
use fieldlink_tests::{
    capture_logs, eventually, logged,
    mosquitto::{self, tools},
    process::fieldlink_bin,
    Gateway, Observer,
};
use rumqttc::QoS;
use serde_json::{json, Value as Json};

const T: Duration = Duration::from_secs(5);

/// The registers of the device being commissioned (unit 5): 230.5 as an f32 CDAB at 0,
/// then 1, 2.
const REGS: [u16; 4] = [0x8000, 0x4366, 1, 2];

/// A gateway that owns an RTU bus with two polled devices (units 1 and 2, every 200 ms),
/// a third device on the line it does not know (unit 5), and the gateway file the
/// commands read.
struct Bench {
    gw: Gateway,
    /// The gateway file, with the port its broker listens on.
    config: PathBuf,
    dir: tempfile::TempDir,
    polled: [Arc<SimDevice>; 2],
    new: Arc<SimDevice>,
    _keeper: std::fs::File,
}

/// The mapping: on each polled device a temperature, a writable setpoint (f32 CDAB at 5)
/// and a read-only limit (holding 8).
fn mapping(path: &Path) -> String {
    let mut m = format!(
        "buses:\n  - id: rs485\n    kind: modbus_rtu\n    path: {}\n    baud: 38400\n    parity: even\n    timeout: 150ms\n  - {{ id: serial, kind: uart, path: /dev/ttyFIELDLINK-none }}\ndevices:\n",
        path.display()
    );
    for u in 1..=2 {
        m.push_str(&format!(
            "  - id: dev{u}\n    bus: rs485\n    unit: {u}\n    poll_interval: 200ms\n    offline_after: 2\n    points:\n      - {{ topic: rtu/dev{u}/temp, table: input, address: 0, type: i16, scale: 0.1 }}\n      - {{ topic: rtu/dev{u}/setpoint, table: holding, address: 5, type: f32, word_order: CDAB, writable: true }}\n      - {{ topic: rtu/dev{u}/limit, table: holding, address: 8, type: u16 }}\n"
        ));
    }
    m
}

impl Bench {
    /// `gateway_extra` goes at the top level of the gateway file, `embedded` under
    /// `mqtt.embedded`.
    async fn start(gateway_extra: &str, embedded: &str) -> Bench {
        capture_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let (master, keeper, pty) = pty_pair().expect("pty");
        let link = dir.path().join("ttyRS485");
        std::os::unix::fs::symlink(&pty, &link).expect("symlink");
        let server = SimServer::new();
        let polled = [1u8, 2].map(|u| {
            let d = server.add(u, SimDevice::new());
            d.set_registers(Table::Input, 0, &[200 + u16::from(u)]);
            d
        });
        let new = server.add(5, SimDevice::new());
        new.set_registers(Table::Holding, 0, &REGS);
        new.set_identification(&[(0, "ACME"), (1, "PM-5"), (2, "1.2")]);
        tokio::spawn(server.serve_rtu_at(master, 38400));
        let config = dir.path().join("gateway.yaml");
        let gateway = |listen: &str| {
            format!(
                "id: t\nmappings: mapping.yaml\nstate_dir: state\ndiagnostics_interval: 1h\n{gateway_extra}mqtt:\n  embedded:\n    listen: \"{listen}\"\n    persistence: false\n{embedded}"
            )
        };
        std::fs::write(&config, gateway("127.0.0.1:0")).expect("write");
        std::fs::write(dir.path().join("mapping.yaml"), mapping(&link)).expect("write");
        let model = match fieldlink::config::load(&config) {
            Ok(c) => c.model,
            Err(d) => panic!("{d:?}"),
        };
        let gw = Gateway::start(model).await;
        let online = || {
            gw.stats
                .devices()
                .iter()
                .all(|d| d.availability() == fieldlink::health::Availability::Online)
        };
        assert!(eventually(T, online).await, "both devices online");
        // The gateway holds the port: from now on nobody else can find it.
        std::fs::remove_file(&link).expect("unlink");
        let port = gw.broker_port();
        std::fs::write(&config, gateway(&format!("127.0.0.1:{port}"))).expect("write");
        Bench {
            gw,
            config,
            dir,
            polled,
            new,
            _keeper: keeper,
        }
    }

    /// `fieldlink <command> --config <the file> --bus rs485 <rest>`.
    async fn cli(&self, command: &str, rest: &str) -> Output {
        let mut args: Vec<String> = vec![
            command.into(),
            "--config".into(),
            self.config.display().to_string(),
            "--bus".into(),
            "rs485".into(),
        ];
        args.extend(rest.split_whitespace().map(String::from));
        tokio::task::spawn_blocking(move || {
            Command::new(fieldlink_bin())
                .args(&args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .output()
                .expect("run fieldlink")
        })
        .await
        .expect("join")
    }

    /// Polls and failed polls of the two devices the gateway polls.
    fn polls(&self) -> [(u64, u64); 2] {
        let s = self.gw.stats.devices();
        [0, 1].map(|i| (s[i].polls.load(Relaxed), s[i].failed_polls.load(Relaxed)))
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> Json {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// The exit code and the one line on standard error.
fn refused(o: &Output) -> (Option<i32>, String) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    (o.status.code(), lines[0].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_write_go_through_the_gateway_while_it_keeps_polling() {
    let b = Bench::start("commissioning: true\n", "").await;
    let mut obs = Observer::connect(
        b.gw.broker_port(),
        "fieldlink/t/+/availability",
        QoS::AtMostOnce,
    )
    .await;
    let started = std::time::Instant::now();
    let before = b.polls();

    // probe --json: every address as the device holds it.
    let j = json_of(
        &b.cli("probe", "--unit 5 --address 0 --count 4 --json")
            .await,
    );
    assert_eq!(j["unit"], 5);
    let rows = j["registers"].as_array().expect("rows");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["u16"], REGS[i], "{row}");
    }
    assert_eq!(rows[0]["f32"]["CDAB"], 230.5, "{}", rows[0]);
    // The table, as direct mode prints it, naming the bus as configured.
    let o = b.cli("probe", "--unit 5 --address 0 --count 2").await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("Unit 5 on RTU ") && text.contains("at 38400 8E1, holding registers 0-1:"),
        "{text}"
    );
    assert!(text.contains("230.5"), "{text}");
    // 2000 addresses in one answer; more are asked for in several commands.
    let j = json_of(
        &b.cli("probe", "--unit 5 --address 0 --count 2000 --json")
            .await,
    );
    assert_eq!(j["registers"].as_array().map(Vec::len), Some(2000));
    assert_eq!(j["registers"][1999]["u16"], 0);
    let (code, line) = refused(&b.cli("probe", "--unit 5 --address 0 --count 2001").await);
    assert_eq!(code, Some(64), "{line}");
    assert!(line.contains("at most 2000 addresses"), "{line}");

    // write: lands in the registers, read back, logged with the user.
    let j = json_of(
        &b.cli(
            "write",
            "--unit 5 --address 10 --type f32 --word-order CDAB --json 21.5",
        )
        .await,
    );
    let bits = 21.5f32.to_bits();
    assert_eq!(
        b.new.registers(Table::Holding, 10, 2),
        vec![bits as u16, (bits >> 16) as u16]
    );
    assert_eq!(j["function"], 16, "{j}");
    assert_eq!(j["read_back"]["value"], 21.5, "{j}");
    assert!(logged("Commissioning write."), "logged at INFO");
    // A value the type cannot hold: the command path's checks, exit 65.
    let (code, line) = refused(
        &b.cli("write", "--unit 5 --address 10 --type u16 70000")
            .await,
    );
    assert_eq!(code, Some(65), "{line}");
    // A register of a point the mapping does not make writable: refused (77).
    let (code, line) = refused(&b.cli("write", "--unit 1 --address 8 3").await);
    assert_eq!(code, Some(77), "{line}");
    assert!(
        line.contains("point `rtu/dev1/limit` of device `dev1`"),
        "{line}"
    );
    assert_eq!(b.polled[0].registers(Table::Holding, 8, 1), [0]);

    // The house kept running: both devices online throughout, every poll answered, and
    // polled at their cadence (at least half of it on a busy machine).
    let after = b.polls();
    let elapsed = started.elapsed();
    for (i, ((p0, f0), (p1, f1))) in before.iter().zip(after).enumerate() {
        assert_eq!(f1, *f0, "dev{} had failed polls", i + 1);
        let expected = elapsed.as_millis() as u64 / 200;
        assert!(
            p1 - p0 >= expected / 2,
            "dev{} polled {} times in {elapsed:?}",
            i + 1,
            p1 - p0
        );
    }
    let seen = obs.collect(Duration::from_millis(300)).await;
    assert!(
        seen.iter().all(|m| m.payload == "online"),
        "{:?}",
        seen.iter()
            .map(|m| (&m.topic, &m.payload))
            .collect::<Vec<_>>()
    );
    b.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_watch_through_the_gateway_marks_what_changed() {
    use std::io::{BufRead, BufReader};
    let b = Bench::start("commissioning: true\n", "").await;
    let mut child = Command::new(fieldlink_bin())
        .args(["probe", "--config"])
        .arg(&b.config)
        .args([
            "--bus",
            "rs485",
            "--unit",
            "5",
            "--address",
            "0",
            "--count",
            "4",
        ])
        .args(["--watch", "200ms"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> String {
        loop {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {what:?}: {e}"),
            }
        }
    };
    next("holding registers 0-3:");
    next("       3  0002");
    b.new.set_registers(Table::Holding, 3, &[0x1234]);
    let when = next("changed");
    assert!(
        when.starts_with("-- +") && when.ends_with(": 1 changed"),
        "{when}"
    );
    let row = next("1234");
    assert!(row.starts_with("*      3  1234"), "{row}");
    let _ = child.kill();
    let _ = child.wait();
    b.gw.stop().await;
}

/// With the gateway of the file not running (nothing listens where its broker would),
/// `--config FILE --bus ID` opens the bus itself, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_running_the_command_opens_the_bus_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _keeper, pty) = pty_pair().expect("pty");
    let server = SimServer::new();
    server
        .add(5, SimDevice::new())
        .set_registers(Table::Holding, 0, &REGS);
    tokio::spawn(server.serve_rtu_at(master, 38400));
    let config = dir.path().join("gateway.yaml");
    // A port that was free a moment ago: nobody listens there.
    let port = fieldlink_tests::free_port();
    std::fs::write(
        &config,
        format!(
            "id: t\nmappings: mapping.yaml\ncommissioning: true\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("write");
    std::fs::write(dir.path().join("mapping.yaml"), mapping(Path::new(&pty))).expect("write");
    let o = tokio::task::spawn_blocking(move || {
        Command::new(fieldlink_bin())
            .args(["probe", "--config"])
            .arg(&config)
            .args([
                "--bus",
                "rs485",
                "--unit",
                "5",
                "--address",
                "0",
                "--count",
                "2",
                "--json",
            ])
            .env_remove("RUST_LOG")
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let j = json_of(&o);
    assert_eq!(j["registers"][0]["f32"]["CDAB"], 230.5, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_through_the_gateway_skips_the_units_it_polls() {
    let b = Bench::start("commissioning: true\n", "").await;
    for d in &b.polled {
        d.clear_log();
    }
    let j = json_of(&b.cli("scan", "--units 1-6 --json").await);
    assert_eq!(
        j["found"],
        json!([{"unit": 5, "identification": {"vendor": "ACME", "product_code": "PM-5", "revision": "1.2"}}]),
        "{j}"
    );
    assert_eq!(
        j["skipped"],
        json!([{"unit": 1, "device": "dev1"}, {"unit": 2, "device": "dev2"}])
    );
    assert_eq!(j["settings"]["baud"], 38400);
    // The polled devices heard only their polls: no scan's read of holding register 0.
    for d in &b.polled {
        assert!(
            d.log().iter().all(|r| !(r.function == 3 && r.address == 0)),
            "{:?}",
            d.log()
        );
    }
    // The text says so.
    let o = b.cli("scan", "--units 1-6").await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("Skipped units 1, 2: the gateway polls them (devices dev1, dev2)."),
        "{text}"
    );
    assert!(text.contains("unit 5: answered; vendor \"ACME\""), "{text}");
    b.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_commissioning_true() {
    let b = Bench::start("", "").await;
    b.new.clear_log();
    let (code, line) = refused(&b.cli("probe", "--unit 5 --address 0").await);
    assert_eq!(code, Some(77), "{line}");
    assert_eq!(
        line,
        "error: commissioning through the gateway is off: set `commissioning: true` in the \
         gateway file"
    );
    assert!(b.new.log().is_empty(), "nothing reached the device");
    b.gw.stop().await;
}

/// The rights for the ACL test: `installer` may send requests, `guest` only read.
const ACL: &str = "\
user installer
topic read fieldlink/t/status
topic write fieldlink/t/bus/+/request
topic readwrite fieldlink-cli/#

user guest
topic read fieldlink/t/status
topic readwrite fieldlink-cli/#
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_the_acl_right() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users");
    for (i, u) in ["installer", "guest"].iter().enumerate() {
        let mut c = Command::new(&t.passwd);
        if i == 0 {
            c.arg("-c");
        }
        let ok = c
            .arg("-b")
            .arg(&users)
            .args([*u, &format!("{u}-pw")])
            .status()
            .expect("mosquitto_passwd");
        assert!(ok.success());
        std::fs::write(dir.path().join(u), format!("{u}-pw\n")).expect("write");
    }
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("write");
    let embedded = format!(
        "    users_file: {}\n    acl_file: {}\n",
        users.display(),
        acl.display()
    );
    let b = Bench::start("commissioning: true\n", &embedded).await;
    let login = |u: &str| {
        format!(
            "--username {u} --password-file {}",
            dir.path().join(u).display()
        )
    };
    let (code, line) = refused(
        &b.cli(
            "write",
            &format!("{} --unit 5 --address 3 7", login("guest")),
        )
        .await,
    );
    assert_eq!(code, Some(77), "{line}");
    assert_eq!(
        line,
        "error: not authorised: the acl_file grants this client no write on the request topic"
    );
    assert_eq!(b.new.registers(Table::Holding, 3, 1), [2], "not written");
    // Without a login the broker refuses the client at once: never the port either.
    let (code, line) = refused(&b.cli("probe", "--unit 5 --address 0").await);
    assert_eq!(code, Some(77), "{line}");
    // The right in the acl_file: written, and logged with the user.
    let o = b
        .cli(
            "write",
            &format!("{} --unit 5 --address 3 7", login("installer")),
        )
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("Wrote 7 as u16 to unit 5, holding 3"),
        "{}",
        stdout(&o)
    );
    assert_eq!(b.new.registers(Table::Holding, 3, 1), [7]);
    assert!(
        logged("user=\"installer\""),
        "the write is logged with its user"
    );
    b.gw.stop().await;
}

/// An MQTT 5 request on `topic` with a Response Topic and Correlation Data, as rumqttc
/// sends it; the answer as it arrived (topic, correlation data, body).
async fn ask_v5(port: u16, topic: &str, body: &str) -> (String, Option<Vec<u8>>, Json) {
    use rumqttc::v5::{
        mqttbytes::{v5::Packet, v5::PublishProperties, QoS as Q5},
        AsyncClient, Event, MqttOptions,
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!("v5-client-{}", N.fetch_add(1, Relaxed));
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 16);
    client
        .subscribe("replies/v5", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut sent = false;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) if !sent => {
                    sent = true;
                    let props = PublishProperties {
                        response_topic: Some("replies/v5".into()),
                        correlation_data: Some(b"req-42"[..].into()),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            topic.to_string(),
                            Q5::AtLeastOnce,
                            false,
                            body.to_string(),
                            props,
                        )
                        .await
                        .expect("publish");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("an answer");
    let j: Json = serde_json::from_slice(&answer.payload).expect("json");
    (
        String::from_utf8_lossy(&answer.topic).into_owned(),
        answer
            .properties
            .and_then(|p| p.correlation_data)
            .map(|c| c.to_vec()),
        j,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_client_gets_its_answer_on_its_response_topic_with_its_correlation_data() {
    let b = Bench::start("commissioning: true\n", "").await;
    let port = b.gw.broker_port();
    let body = r#"{"command":"probe","unit":5,"address":0,"count":2}"#;
    let (topic, correlation, j) = ask_v5(port, "fieldlink/t/bus/rs485/request", body).await;
    assert_eq!(topic, "replies/v5");
    assert_eq!(correlation.as_deref(), Some(&b"req-42"[..]));
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["result"]["registers"][0]["f32"]["CDAB"], 230.5, "{j}");
    assert!(
        j["text"]
            .as_str()
            .is_some_and(|t| t.contains("holding registers 0-1")),
        "{j}"
    );
    // Only Modbus buses, and only buses the gateway has: refused, saying why.
    let (_, _, j) = ask_v5(port, "fieldlink/t/bus/serial/request", body).await;
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["exit"], 77, "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("bus `serial` is not a Modbus bus")),
        "{j}"
    );
    let (_, _, j) = ask_v5(port, "fieldlink/t/bus/nope/request", body).await;
    assert_eq!(j["error"], "the gateway has no bus `nope`", "{j}");
    // A body that is no request: usage (64).
    let (_, _, j) = ask_v5(
        port,
        "fieldlink/t/bus/rs485/request",
        r#"{"command":"erase"}"#,
    )
    .await;
    assert_eq!(j["exit"], 64, "{j}");

    // The real mosquitto_rr (MQTT 5 request/response) too.
    if let Some(rr) = mosquitto::tool("mosquitto_rr") {
        let o = mosquitto::run(
            &rr,
            b.gw.broker_port(),
            &[
                "-t",
                "fieldlink/t/bus/rs485/request",
                "-e",
                "replies/rr",
                "-m",
                r#"{"command":"probe","unit":5,"address":2,"count":2,"json":true}"#,
                "-W",
                "10",
            ],
        );
        let j: Json = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
        assert_eq!(j["result"]["registers"][1]["u16"], 2, "{j}");
        // The text is the JSON line `probe --json` prints.
        let text: Json = j["text"]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .expect("the text is JSON");
        assert_eq!(text, j["result"]);
    }
    b.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_311_client_names_its_response_topic_in_the_body() {
    let Some(t) = tools() else { return };
    let b = Bench::start("commissioning: true\n", "").await;
    let port = b.gw.broker_port().to_string();
    let mut sub = Command::new(&t.sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "311",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .args(["-t", "replies/v311"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    // mosquitto_sub does not say when it has subscribed: the request goes out again
    // until it has its answer (the same value written again changes nothing).
    let request = r#"{"command":"write","unit":5,"address":1,"value":17,"response_topic":"replies/v311","id":"w1"}"#;
    let mut answered = false;
    for _ in 0..40 {
        let o = mosquitto::run(
            &t.publ,
            b.gw.broker_port(),
            &[
                "-V",
                "311",
                "-t",
                "fieldlink/t/bus/rs485/request",
                "-m",
                request,
            ],
        );
        assert!(o.status.success());
        if eventually(Duration::from_millis(500), || {
            matches!(sub.try_wait(), Ok(Some(_)))
        })
        .await
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "mosquitto_sub got an answer");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut sub.stdout.take().expect("stdout"), &mut answer);
    let j: Json = serde_json::from_str(&answer).expect("json");
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["id"], "w1");
    assert_eq!(j["result"]["read_back"]["value"], 17, "{j}");
    assert_eq!(b.new.registers(Table::Holding, 1, 1), [17]);
    let _ = &b.dir;
    b.gw.stop().await;
}

/// A shared RS-485 line on tokio's paused clock: units 1 and 2 answer in 10 ms, every
/// other unit is silent (a try holds the line for twice the timeout, as on RTU).
struct Line {
    timeout: Duration,
    /// Every read: the unit and when it began.
    reads: Arc<std::sync::Mutex<Vec<(u8, tokio::time::Instant)>>>,
}

impl fieldlink_drivers::modbus::ModbusTransport for Line {
    async fn read(
        &mut self,
        unit: u8,
        _table: Table,
        _addr: u16,
        count: u16,
    ) -> Result<fieldlink_drivers::modbus::ReadData, fieldlink_drivers::modbus::DriverError> {
        if let Ok(mut r) = self.reads.lock() {
            r.push((unit, tokio::time::Instant::now()));
        }
        if unit > 2 {
            tokio::time::sleep(self.timeout * 2).await;
            return Err(fieldlink_drivers::modbus::DriverError::Timeout(
                self.timeout,
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(fieldlink_drivers::modbus::ReadData::Registers(vec![
            7;
            usize::from(count)
        ]))
    }

    async fn write_registers(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[u16],
        _multiple: bool,
    ) -> Result<(), fieldlink_drivers::modbus::DriverError> {
        Ok(())
    }

    async fn write_coils(
        &mut self,
        _unit: u8,
        _addr: u16,
        _values: &[bool],
        _multiple: bool,
    ) -> Result<(), fieldlink_drivers::modbus::DriverError> {
        Ok(())
    }

    fn endpoint(&self) -> String {
        "rs485 (test)".into()
    }
}

/// A long scan through the bus task (98 silent units, half a minute of timeouts) is split
/// into single requests between the polls: the two devices keep their 1 s cadence, late
/// by one exchange at most, and no poll fails.
#[tokio::test(start_paused = true)]
async fn a_long_scan_takes_turns_with_the_polls() {
    use fieldlink::{
        buses,
        commission::{
            gateway::{Job, Who},
            scan::ScanArgs,
            wire::Asked,
        },
        shutdown, Stats,
    };
    use tokio::sync::{mpsc, oneshot};
    let mapping = "buses:\n  - { id: rs485, kind: modbus_rtu, path: /dev/ttyUSB0, timeout: 150ms }\ndevices:\n\
         \x20 - { id: u1, bus: rs485, unit: 1, poll_interval: 1s, points: [{ topic: f/u1, table: holding, address: 0 }] }\n\
         \x20 - { id: u2, bus: rs485, unit: 2, poll_interval: 1s, points: [{ topic: f/u2, table: holding, address: 0 }] }\n";
    let model = Arc::new(fieldlink_tests::model(mapping, "commissioning: true\n"));
    let stats = Arc::new(Stats::new(&model));
    let (out, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (commands_tx, commands) = mpsc::channel(16);
    let (trigger, sd) = shutdown::channel();
    let io = buses::BusIo {
        out,
        commands,
        control: mpsc::channel(1).1,
        stats: stats.clone(),
        shutdown: sd,
    };
    let reads: Arc<std::sync::Mutex<Vec<(u8, tokio::time::Instant)>>> = Arc::default();
    let line = Line {
        timeout: Duration::from_millis(150),
        reads: reads.clone(),
    };
    let task = tokio::spawn(buses::run_modbus(
        model.clone(),
        model.buses[0].clone(),
        0,
        line,
        io,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answer, answered) = oneshot::channel();
    let job = Job {
        asked: Asked::Scan(ScanArgs {
            transport: Default::default(),
            units: "1-100".into(),
            json: true,
        }),
        who: Who {
            user: Some("installer".into()),
            client: "test".into(),
        },
        answer,
    };
    let began = tokio::time::Instant::now();
    commands_tx
        .send(buses::Request::Commission(Box::new(job)))
        .await
        .expect("bus task runs");
    let a = answered.await.expect("answered");
    let took = began.elapsed();
    // 98 silent units at 300 ms each, with the polls between them.
    assert!(took >= Duration::from_millis(98 * 300), "{took:?}");
    assert_eq!(
        a.error.as_ref().map(|(_, exit)| *exit),
        Some(69),
        "nobody answered: {a:?}"
    );
    let j = a.result.expect("the --json object");
    assert_eq!(j["found"], json!([]));
    assert_eq!(j["skipped"][1], json!({"unit": 2, "device": "u2"}));
    trigger.trigger();
    task.await.expect("bus task");
    let reads = reads.lock().expect("lock").clone();
    for u in [1u8, 2] {
        let polls: Vec<tokio::time::Instant> = reads
            .iter()
            .filter(|(unit, at)| *unit == u && *at >= began && *at <= began + took)
            .map(|(_, at)| *at)
            .collect();
        // One poll a second throughout the scan, each at most one silent try late.
        assert!(
            polls.len() as u128 >= took.as_millis() / 1000 - 1,
            "unit {u}: {} polls in {took:?}",
            polls.len()
        );
        for w in polls.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap <= Duration::from_millis(1000 + 300 + 20),
                "unit {u}: {gap:?}"
            );
        }
    }
    for d in stats.devices().iter() {
        assert_eq!(d.failed_polls.load(Relaxed), 0, "{}", d.id);
    }
    // The scan never asked the polled units.
    let scanned: Vec<u8> = reads
        .iter()
        .filter(|(_, at)| *at >= began)
        .map(|(u, _)| *u)
        .filter(|u| *u > 2)
        .collect();
    assert_eq!(scanned, (3..=100).collect::<Vec<u8>>());
}
