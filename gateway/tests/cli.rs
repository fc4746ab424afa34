//! The command line as a newcomer uses it: `demo` in one terminal, `watch` in another.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

#[test]
fn version_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .arg("--version")
        .output()
        .expect("run fieldlink");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fieldlink "));
}

#[test]
fn demo_readings_are_visible_with_watch() {
    // Port 0: the demo prints the port the system picked, as a newcomer would read it.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    let stderr = demo.stderr.take().expect("demo's stderr");
    let addr = support::broker_addr(stderr, Duration::from_secs(20));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let port = addr.port();
    let watch = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args([
            "watch",
            "casa/#",
            "--port",
            &port.to_string(),
            "--count",
            "100",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start watch");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(watch.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(45));
    let _ = demo.kill();
    let _ = demo.wait();
    let out = out
        .expect("watch printed 100 messages within 45 s")
        .expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    let temp = text
        .lines()
        .find_map(|l| l.strip_prefix("casa/terreo/temperatura "))
        .expect("casa/terreo/temperatura is published");
    let t: f64 = temp.parse().expect("a number");
    assert!((15.0..30.0).contains(&t), "a room temperature, got {t}");
    assert!(text.lines().any(|l| l.starts_with("casa/energia/tensao ")));
    // The simulated GPIO board: a door contact (closed at start) and a relay (off).
    assert!(
        text.lines().any(|l| l == "casa/cozinha/porta FECHADA"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "casa/jardim/valvula OFF"),
        "{text}"
    );
    // The serial buses: an RS-485 sensor (Modbus RTU on a pty) and a UART CO₂ sensor.
    for topic in ["casa/quarto/temperatura ", "casa/sala/co2 "] {
        assert!(
            text.lines().any(|l| l.starts_with(topic)),
            "{topic}missing:\n{text}"
        );
    }
}

/// `backend: rppal` on a machine that is not a Raspberry Pi: a clear error and a failed
/// exit, never a panic (CI runs on x86_64).
#[test]
#[cfg_attr(
    any(target_arch = "arm", target_arch = "aarch64"),
    ignore = "on an ARM board rppal may open the GPIO controller; run it on a machine that is not a Raspberry Pi"
)]
fn rppal_backend_off_a_pi_fails_with_a_clear_error() {
    let model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default();
    assert!(
        !model.contains("Raspberry Pi"),
        "this is a {model}: rppal may work here, so this test cannot show its error"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "id: t\nmappings: io.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("io.yaml"),
        "buses:\n  - id: pi\n    kind: gpio\ndevices:\n  - id: io\n    bus: pi\n    points:\n      - topic: casa/porta\n        pin: 17\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["run", "--config"])
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .expect("run fieldlink");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bus `pi`: GPIO is not available on this machine"),
        "{err}"
    );
    assert!(err.contains("backend: simulated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// SIGHUP (what `systemctl reload` sends) must not end the gateway: the demo has no
/// configuration file to reload, so it is logged and ignored; SIGTERM then stops it
/// cleanly. (`fieldlink run` reloads: tests/tests/reload.rs.)
#[test]
fn sighup_does_not_stop_the_gateway() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    let stderr = demo.stderr.take().expect("demo's stderr");
    let port = support::broker_addr(stderr, Duration::from_secs(20)).port();
    let kill = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &demo.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    };
    kill("-HUP");
    // Still serving well after the signal: 20 readings arrive.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args([
            "watch",
            "casa/#",
            "--port",
            &port.to_string(),
            "--count",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    // `watch` retries a broker that is gone forever: give it 20 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let served = loop {
        if let Some(st) = watch.try_wait().expect("watch") {
            break st.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = watch.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(served, "20 readings after SIGHUP");
    kill("-TERM");
    let status = demo.wait().expect("demo exits");
    assert!(status.success(), "a clean stop after SIGHUP: {status:?}");
}
