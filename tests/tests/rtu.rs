//! Modbus RTU end to end: the gateway on one end of a pseudo-terminal pair, a tokio-modbus
//! RTU server with three unit ids on the other.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;

const T: Duration = Duration::from_secs(5);

fn pty() -> (tokio_serial::SerialStream, std::fs::File, String) {
    fieldlink_drivers::sim::pty_pair().expect("pty pair")
}

fn mapping(path: &str) -> String {
    let mut m = format!(
        "buses:\n  - id: rs485\n    kind: modbus_rtu\n    path: {path}\n    baud: 38400\n    parity: even\n    timeout: 150ms\ndevices:\n"
    );
    for u in 1..=3 {
        m.push_str(&format!(
            "  - id: dev{u}\n    bus: rs485\n    unit: {u}\n    poll_interval: 200ms\n    offline_after: 2\n    points:\n      - topic: rtu/dev{u}/temp\n        table: input\n        address: 0\n        type: i16\n        scale: 0.1\n      - topic: rtu/dev{u}/setpoint\n        table: holding\n        address: 5\n        type: f32\n        word_order: CDAB\n        writable: true\n"
        ));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_units_publish_and_take_writes_and_a_dead_unit_does_not_starve_the_others() {
    let (master, _keeper, path) = pty();
    let server = SimServer::new();
    let devs: Vec<_> = (1..=3u8)
        .map(|u| {
            let d = server.add(u, SimDevice::new());
            d.set_registers(Table::Input, 0, &[200 + u16::from(u)]);
            d
        })
        .collect();
    tokio::spawn(server.serve_rtu(master));
    let gw = Gateway::start(model(&mapping(&path), "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    for u in 1..=3 {
        assert!(
            obs.wait_seen(&format!("rtu/dev{u}/temp"), &format!("20.{u}"), T)
                .await,
            "unit {u} value"
        );
    }
    // A write through /set lands in unit 2's registers (f32, CDAB), and is read back.
    let client = publisher(gw.broker_port()).await;
    client
        .publish(
            "rtu/dev2/setpoint/set",
            QoS::AtLeastOnce,
            false,
            r#"{"value":21.5,"id":"w"}"#,
        )
        .await
        .expect("publish");
    let r = obs
        .next_on("rtu/dev2/setpoint/set/result", T)
        .await
        .expect("result");
    let v: serde_json::Value = serde_json::from_str(&r.payload).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    let bits = 21.5f32.to_bits();
    assert_eq!(
        devs[1].registers(Table::Holding, 5, 2),
        vec![bits as u16, (bits >> 16) as u16],
        "CDAB: low word first"
    );
    let w = devs[1]
        .log()
        .into_iter()
        .filter(|r| r.function == 16)
        .count();
    assert_eq!(w, 1, "one FC16 write");

    // Unit 3 stops answering: it goes offline; units 1 and 2 keep their cadence.
    let died = std::time::Instant::now();
    devs[2].set_responding(false);
    assert!(
        obs.wait_seen("fieldlink/t/dev3/availability", "offline", T)
            .await
    );
    // Within offline_after × poll_interval + 2 × timeout (0.7 s) of its first failed
    // poll, which begins within one poll interval (0.2 s): 1.5 s leaves room for a busy
    // machine, far below the 10 s the fair share alone would take.
    assert!(
        died.elapsed() <= Duration::from_millis(1500),
        "offline {:?} after the unit died",
        died.elapsed()
    );
    let before: Vec<u64> = (0..2)
        .map(|i| gw.stats.devices()[i].polls.load(Relaxed))
        .collect();
    // A measurement window, not synchronisation: the cadence over 10 s of real time on a
    // real pty line (the paused-clock version of this is tests/tests/fairness.rs).
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (i, b) in before.iter().enumerate() {
        let polls = gw.stats.devices()[i].polls.load(Relaxed) - b;
        let failed = gw.stats.devices()[i].failed_polls.load(Relaxed);
        // 10 s at 200 ms is 50 polls; at least 80 % of them, all good.
        assert!(polls >= 40, "unit {} polled {polls} times in 10 s", i + 1);
        assert_eq!(failed, 0, "unit {} had failed polls", i + 1);
    }
    // Back to normal on the first good reply.
    devs[2].set_responding(true);
    assert!(
        obs.wait_seen(
            "fieldlink/t/dev3/availability",
            "online",
            Duration::from_secs(15)
        )
        .await
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_adapter_goes_offline_and_comes_back_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyRS485");
    let (master, keeper, path) = pty();
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let server = SimServer::new();
    for u in 1..=3u8 {
        server
            .add(u, SimDevice::new())
            .set_registers(Table::Input, 0, &[200 + u16::from(u)]);
    }
    let serving = tokio::spawn(server.clone().serve_rtu(master));
    let gw = Gateway::start(model(&mapping(&link.to_string_lossy()), "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    assert!(
        obs.wait_seen("fieldlink/t/dev1/availability", "online", T)
            .await
    );

    // Unplug: both ends of the pty go away.
    serving.abort();
    let _ = serving.await;
    drop(keeper);
    for u in 1..=3 {
        assert!(
            obs.wait_seen(&format!("fieldlink/t/dev{u}/availability"), "offline", T)
                .await,
            "dev{u} offline after the hang-up"
        );
    }
    // Plug back in (a new pty behind the same path), with new values.
    let (master, _keeper2, path2) = pty();
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(&path2, &link).expect("symlink");
    for u in 1..=3u8 {
        server
            .device(u)
            .expect("device")
            .set_registers(Table::Input, 0, &[300 + u16::from(u)]);
    }
    tokio::spawn(server.serve_rtu(master));
    for u in 1..=3 {
        assert!(
            obs.wait_seen(
                &format!("rtu/dev{u}/temp"),
                &format!("30.{u}"),
                Duration::from_secs(70)
            )
            .await,
            "dev{u} back with its new value"
        );
        assert!(
            obs.wait_seen(&format!("fieldlink/t/dev{u}/availability"), "online", T)
                .await
        );
    }
    gw.stop().await;
}

/// The gateway never starts a request sooner than 3.5 character times after the previous
/// reply, measured on the device side of the pty, at three line settings (1.75 ms fixed
/// above 19 200 baud).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_frame_gap_is_kept_at_every_baud_rate() {
    // (baud, parity, stop bits, bits per character)
    for (baud, parity, stop, bits) in [
        (9600u32, "none", 1, 10u32),
        (19200, "even", 1, 11),
        (115200, "none", 2, 11),
    ] {
        let (master, _keeper, path) = pty();
        let slave = fieldlink_drivers::sim::TimedRtuSlave::spawn(master, vec![1, 2, 3], None);
        let mut m = format!(
            "buses:\n  - id: rs485\n    kind: modbus_rtu\n    path: {path}\n    baud: {baud}\n    parity: {parity}\n    stop_bits: {stop}\n    timeout: 200ms\ndevices:\n"
        );
        for u in 1..=3 {
            m.push_str(&format!(
                "  - id: dev{u}\n    bus: rs485\n    unit: {u}\n    poll_interval: 15ms\n    points:\n      - topic: gap/dev{u}\n        table: holding\n        address: {a}\n        publish: every_poll\n",
                a = u * 10
            ));
        }
        let gw = Gateway::start(model(&m, "")).await;
        let mut obs = Observer::connect(gw.broker_port(), "gap/#", QoS::AtMostOnce).await;
        let msgs = obs.collect(Duration::from_millis(1500)).await;
        gw.stop().await;
        // Every value is the register's own address (the slave's truth).
        for msg in &msgs {
            let unit: u16 = msg.topic["gap/dev".len()..].parse().expect("unit");
            assert_eq!(msg.payload, (unit * 10).to_string(), "{}", msg.topic);
        }
        let gaps = slave.gaps();
        assert!(
            gaps.len() >= 50,
            "{baud} baud: only {} exchanges",
            gaps.len()
        );
        let required = if baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_secs_f64(3.5 * f64::from(bits) / f64::from(baud))
        };
        let min = gaps.iter().min().copied().unwrap_or_default();
        assert!(
            min >= required,
            "{baud} baud: a request came {min:?} after a reply; 3.5 characters is {required:?}"
        );
    }
}

/// A slow unit whose replies arrive after the timeout (sometimes within it): every value
/// published matches what the simulator held for that point, never a reply to another
/// request of the same unit (same function, same length, other address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_are_never_published_as_another_requests_value() {
    let (master, _keeper, path) = pty();
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    tokio::spawn(server.serve_rtu(master));
    // Two reads of the same unit, same function and length, far apart (not merged).
    let m = format!(
        "buses:\n  - id: rs485\n    kind: modbus_rtu\n    path: {path}\n    baud: 115200\n    timeout: 100ms\ndevices:\n  - id: slow\n    bus: rs485\n    poll_interval: 50ms\n    offline_after: 1000\n    max_gap: 0\n    points:\n      - topic: late/a\n        table: holding\n        address: 0\n        publish: every_poll\n      - topic: late/b\n        table: holding\n        address: 100\n        publish: every_poll\n"
    );
    // Truth: a counts 1000.., b counts 5000..; every value each ever held is recorded.
    let truth_a = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let truth_b = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (ta, tb, d) = (truth_a.clone(), truth_b.clone(), dev.clone());
    let changer = tokio::spawn(async move {
        let delays = [20u64, 140, 60, 180, 90, 120, 30, 160];
        for k in 0u16.. {
            ta.lock().expect("lock").insert(1000 + k);
            tb.lock().expect("lock").insert(5000 + k);
            d.set_registers(Table::Holding, 0, &[1000 + k]);
            d.set_registers(Table::Holding, 100, &[5000 + k]);
            // Reply delays around the 100 ms timeout (late ones within 2 timeouts).
            d.set_reply_delay(Duration::from_millis(delays[usize::from(k) % delays.len()]));
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
    });
    let gw = Gateway::start(model(&m, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "late/#", QoS::AtMostOnce).await;
    // Until both points were read often enough to tell and replies timed out often enough
    // (a loaded machine reads the second one less often: a timeout on the first read ends
    // the cycle), at most 30 s.
    let (mut seen_a, mut seen_b) = (0, 0);
    let msgs = obs
        .collect_until(
            |m| {
                if m.topic == "late/a" {
                    seen_a += 1;
                } else {
                    seen_b += 1;
                }
                seen_a >= 5
                    && seen_b >= 5
                    && gw.stats.devices()[0].request_errors.load(Relaxed) >= 5
            },
            Duration::from_secs(30),
        )
        .await;
    changer.abort();
    let timeouts = gw.stats.devices()[0].request_errors.load(Relaxed);
    gw.stop().await;
    let (mut na, mut nb) = (0, 0);
    for msg in &msgs {
        let v: u16 = msg.payload.parse().expect("number");
        let truth = if msg.topic == "late/a" {
            na += 1;
            &truth_a
        } else {
            nb += 1;
            &truth_b
        };
        assert!(
            truth.lock().expect("lock").contains(&v),
            "{} published {v}, a value it never held",
            msg.topic
        );
    }
    assert!(
        na >= 5 && nb >= 5,
        "too few readings to tell: a {na}, b {nb}"
    );
    assert!(timeouts >= 5, "the slow replies did time out ({timeouts})");
}
