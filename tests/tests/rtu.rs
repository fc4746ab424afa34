//! Modbus RTU end to end: the gateway on one end of a pseudo-terminal pair, a tokio-modbus
//! RTU server with three unit ids on the other.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

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
    devs[2].set_responding(false);
    assert!(
        obs.wait_seen("fieldlink/t/dev3/availability", "offline", T)
            .await
    );
    let before: Vec<u64> = (0..2)
        .map(|i| gw.stats.devices[i].polls.load(Relaxed))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (i, b) in before.iter().enumerate() {
        let polls = gw.stats.devices[i].polls.load(Relaxed) - b;
        let failed = gw.stats.devices[i].failed_polls.load(Relaxed);
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
