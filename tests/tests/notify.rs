//! What systemd hears (`Type=notify`, `WatchdogSec=`): a Unix datagram socket bound by the
//! test stands in for systemd's `NOTIFY_SOCKET`. The gateway runs in this process on a
//! current-thread runtime, so the test can block that runtime and see the watchdog pings
//! stop (they come from a task of the runtime, not from a timer thread).
//!
//! One test in this binary: it sets `NOTIFY_SOCKET` and `WATCHDOG_USEC` for the process.

use std::{
    os::unix::net::UnixDatagram,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fieldlink::shutdown;
use fieldlink_tests::model;

/// Every datagram received, with when it came.
type Heard = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(sock: UnixDatagram) -> Heard {
    let heard: Heard = Arc::default();
    let h = heard.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            h.lock().expect("lock").push((Instant::now(), text));
        }
    });
    heard
}

fn wait_for(heard: &Heard, what: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if heard
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == what))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn pings(heard: &Heard) -> Vec<Instant> {
    heard
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn systemd_hears_ready_watchdog_pings_from_the_runtime_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let heard = listen(UnixDatagram::bind(&path).expect("bind the notify socket"));
    // As systemd sets them for `WatchdogSec=400ms`: a ping is due every 200 ms.
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "400000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());

    let m = model(
        "buses:\n  - { id: io, kind: gpio, backend: simulated }\ndevices:\n  - { id: pi, bus: io, points: [{ topic: casa/porta, pin: 4 }] }\n",
        "",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (trigger, sd) = shutdown::channel();
    let gateway = rt.spawn(fieldlink::run(m, sd));
    rt.block_on(async {
        // The runtime runs while the test waits on the socket from a blocking thread.
        tokio::task::spawn_blocking({
            let heard = heard.clone();
            move || {
                assert!(
                    wait_for(&heard, "READY=1", Duration::from_secs(10)),
                    "READY=1"
                )
            }
        })
        .await
        .expect("ready");
        let n = pings(&heard).len();
        tokio::task::spawn_blocking({
            let heard = heard.clone();
            move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while pings(&heard).len() < n + 5 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
        .await
        .expect("pings");
    });
    let before = pings(&heard);
    assert!(before.len() >= 5, "pings while running: {}", before.len());
    for w in before.windows(2).skip(1) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(100) && gap < Duration::from_millis(400),
            "a ping every 200 ms, within the 400 ms watchdog: {gap:?}"
        );
    }
    // A task that blocks the gateway's only worker: the runtime is stuck, no pings.
    let blocked = Instant::now();
    rt.block_on(async {
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(1200)) })
            .await
            .expect("blocker")
    });
    let unblocked = Instant::now();
    let during = pings(&heard)
        .into_iter()
        .filter(|t| *t > blocked + Duration::from_millis(250) && *t < unblocked)
        .count();
    assert_eq!(during, 0, "no ping while the runtime is blocked");
    rt.block_on(async {
        // Pings again once it runs.
        let n = pings(&heard).len();
        tokio::task::spawn_blocking({
            let heard = heard.clone();
            move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while pings(&heard).len() < n + 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert!(pings(&heard).len() >= n + 2, "pings resume");
            }
        })
        .await
        .expect("resume");
        trigger.trigger();
        gateway.await.expect("joined").expect("gateway ran");
    });
    assert!(
        wait_for(&heard, "STOPPING=1", Duration::from_secs(5)),
        "STOPPING=1 at shutdown"
    );
}
