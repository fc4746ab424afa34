//! What systemd hears around a live reload: the `fieldlink` binary runs as a child process
//! whose `NOTIFY_SOCKET` is a Unix datagram socket bound by this test (the variable is set
//! on the child only). After `READY=1`, each SIGHUP must give `RELOADING=1` with
//! `MONOTONIC_USEC=` (CLOCK_MONOTONIC, µs) in the same datagram, then `READY=1` again, for
//! an applied reload and for a refused one alike (systemd's `Type=notify-reload`
//! protocol, sd_notify(3)); SIGTERM gives `STOPPING=1`.

use std::{
    os::unix::net::UnixDatagram,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::process::Fieldlink;

/// One datagram, and CLOCK_MONOTONIC (µs) when it was received.
#[derive(Clone, Debug)]
struct Datagram {
    text: String,
    received_us: u64,
}

type Heard = Arc<Mutex<Vec<Datagram>>>;

/// CLOCK_MONOTONIC in microseconds, the clock of `MONOTONIC_USEC`.
#[allow(unsafe_code)]
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which outlives the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).expect("seconds") * 1_000_000
        + u64::try_from(ts.tv_nsec).expect("nanoseconds") / 1000
}

fn listen(sock: UnixDatagram) -> Heard {
    let heard: Heard = Arc::default();
    let h = heard.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let received_us = monotonic_us();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            eprintln!("[notify] {:?}", text);
            h.lock().expect("lock").push(Datagram { text, received_us });
        }
    });
    heard
}

fn has(d: &Datagram, line: &str) -> bool {
    d.text.lines().any(|l| l == line)
}

fn heard_len(heard: &Heard) -> usize {
    heard.lock().expect("lock").len()
}

/// The index of the first datagram from `from` on with the line `line`, waiting up to
/// `within`.
async fn wait_for(heard: &Heard, from: usize, line: &str, within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = heard
            .lock()
            .expect("lock")
            .iter()
            .enumerate()
            .skip(from)
            .find_map(|(i, d)| has(d, line).then_some(i))
        {
            return Some(i);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all(heard: &Heard) -> Vec<String> {
    heard
        .lock()
        .expect("lock")
        .iter()
        .map(|d| d.text.clone())
        .collect()
}

/// SIGHUP; `RELOADING=1` with `MONOTONIC_USEC`, then `READY=1`, then the log line
/// `outcome`. Returns the `MONOTONIC_USEC` value.
async fn reload_is_announced(gw: &Fieldlink, heard: &Heard, outcome: &str) -> u64 {
    let t = Duration::from_secs(10);
    let from = heard_len(heard);
    let mark = gw.log_len();
    gw.signal("-HUP");
    let Some(r) = wait_for(heard, from, "RELOADING=1", t).await else {
        panic!(
            "no RELOADING=1 within {t:?} of SIGHUP; heard since: {:?}",
            &all(heard)[from..]
        );
    };
    let d = heard.lock().expect("lock")[r].clone();
    assert!(
        !all(heard)[from..r]
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 before RELOADING=1: {:?}",
        &all(heard)[from..]
    );
    let usec: u64 = d
        .text
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in the RELOADING=1 datagram: {:?}", d.text))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC is a number ({e}): {:?}", d.text));
    assert!(
        usec <= d.received_us && d.received_us - usec < 5_000_000,
        "MONOTONIC_USEC={usec} is CLOCK_MONOTONIC when it was sent (received at {})",
        d.received_us
    );
    assert!(
        wait_for(heard, r + 1, "READY=1", t).await.is_some(),
        "READY=1 after the reload; heard since SIGHUP: {:?}",
        &all(heard)[from..]
    );
    gw.expect_log(mark, outcome, t).await;
    usec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_reloading_then_ready_for_each_sighup_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("notify.sock");
    let heard = listen(UnixDatagram::bind(&sock).expect("bind the notify socket"));
    let server = SimServer::new();
    server
        .add(1, SimDevice::new())
        .set_registers(Table::Holding, 0, &[1, 2]);
    let port = server.spawn_local().await.expect("sim");
    let point = |topic: &str, address: u16| {
        format!("      - {{ topic: {topic}, table: holding, address: {address} }}\n")
    };
    let head = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 500ms }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 200ms\n    points:\n"
    );
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "id: t\nmappings: m.yaml\ndiagnostics_interval: 1s\nstate_dir: state\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n",
    )
    .expect("gateway.yaml");
    let m = dir.path().join("m.yaml");
    std::fs::write(&m, format!("{head}{}", point("casa/a", 0))).expect("m.yaml");

    let mut gw = Fieldlink::run_with_env(
        &dir.path().join("gateway.yaml"),
        &[("NOTIFY_SOCKET", sock.as_os_str())],
    );
    let t = Duration::from_secs(10);
    assert!(
        wait_for(&heard, 0, "READY=1", t).await.is_some(),
        "READY=1 at start; heard: {:?}",
        all(&heard)
    );

    // An applied reload (a new point).
    std::fs::write(
        &m,
        format!("{head}{}{}", point("casa/a", 0), point("casa/b", 1)),
    )
    .expect("m.yaml");
    let first = reload_is_announced(&gw, &heard, "Configuration reloaded.").await;

    // A refused one (an unknown key): the same two notifications.
    std::fs::write(
        &m,
        format!("{head}      - {{ topic: casa/c, table: holding, adress: 2 }}\n"),
    )
    .expect("m.yaml");
    let second = reload_is_announced(
        &gw,
        &heard,
        "Reload refused; the running configuration is unchanged.",
    )
    .await;
    assert!(
        second > first,
        "MONOTONIC_USEC moves on: {first} then {second}"
    );

    let from = heard_len(&heard);
    gw.signal("-TERM");
    assert!(
        wait_for(&heard, from, "STOPPING=1", t).await.is_some(),
        "STOPPING=1 at SIGTERM; heard: {:?}",
        &all(&heard)[from..]
    );
    let st = gw.wait_exit(t).await.expect("fieldlink stops");
    assert!(st.success(), "a clean stop: {st}");
}
