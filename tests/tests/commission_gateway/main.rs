//! Commissioning through the running gateway: the real `fieldlink` binary's `probe`,
//! `scan` and `write` with `--config FILE --bus ID` while the gateway of that file runs
//! (in process, its embedded broker on a port the system picks, written into the file the
//! command reads) and owns an RTU bus on a pseudo-terminal. The gateway reaches the line
//! through a symbolic link that is removed once it has opened it: a command that opened
//! the port itself would fail, so every answer came through the gateway.
//!
//! Here: probe, watch, scan and write while the gateway keeps polling, direct mode when
//! it does not run, and the refusals (`commissioning` off, no write right in the
//! `acl_file`). `clients`: other MQTT clients (MQTT 5 with Response Topic and Correlation
//! Data, 3.1.1 with `response_topic` in the body). `cadence`: the bus task on tokio's
//! paused clock.

mod cadence;
mod clients;

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
