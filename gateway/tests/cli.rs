//! The command line as a newcomer uses it: `demo` in one terminal, `watch` in another.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

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
    let port = free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let watch = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args([
            "watch",
            "casa/#",
            "--port",
            &port.to_string(),
            "--count",
            "13",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start watch");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(watch.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(30));
    let _ = demo.kill();
    let _ = demo.wait();
    let out = out
        .expect("watch printed 13 messages within 30 s")
        .expect("watch output");
    let text = String::from_utf8_lossy(&out.stdout);
    let temp = text
        .lines()
        .find_map(|l| l.strip_prefix("casa/terreo/temperatura "))
        .expect("casa/terreo/temperatura is published");
    let t: f64 = temp.parse().expect("a number");
    assert!((15.0..30.0).contains(&t), "a room temperature, got {t}");
    assert!(text.lines().any(|l| l.starts_with("casa/energia/tensao ")));
}
