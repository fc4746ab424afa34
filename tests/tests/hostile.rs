//! No client can stop the gateway (issue #12): rumqttd 0.20 aborted the whole process on
//! both reproductions below. After each attack the readings still flow and a command is
//! still written to the device.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, model, publisher, raw, Gateway, Observer};
use rumqttc::QoS;
use tokio::io::AsyncWriteExt;

/// A device with a reading (`h/temp`, holding 0) and a writable set point (`h/sp`,
/// holding 1), polled every 100 ms.
async fn house(gateway_extra: &str) -> (std::sync::Arc<SimDevice>, Gateway) {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\n\
         devices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    points:\n\
         \x20     - {{ topic: h/temp, table: holding, address: 0, type: u16 }}\n\
         \x20     - {{ topic: h/sp, table: holding, address: 1, type: u16, writable: true }}\n"
    );
    let gw = Gateway::start(model(&mapping, gateway_extra)).await;
    (dev, gw)
}

/// A new reading reaches a new subscriber and a command reaches the device.
async fn still_serving(dev: &SimDevice, gw: &Gateway, value: u16) {
    let port = gw.broker_port();
    let mut obs = Observer::connect(port, "h/#", QoS::AtLeastOnce).await;
    dev.set_registers(Table::Holding, 0, &[value]);
    assert!(
        obs.wait_payload("h/temp", &value.to_string(), Duration::from_secs(10))
            .await,
        "reading {value} still published"
    );
    let client = publisher(port).await;
    client
        .publish("h/sp/set", QoS::AtLeastOnce, false, (value + 1).to_string())
        .await
        .expect("publish");
    let res = obs
        .next_on("h/sp/set/result", Duration::from_secs(10))
        .await
        .expect("command result");
    assert!(res.payload.contains("\"ok\":true"), "{}", res.payload);
    assert_eq!(dev.registers(Table::Holding, 1, 1), vec![value + 1]);
}

/// Whether `client_id` can log in (CONNACK 0) within `within`, trying again at once.
async fn admitted_within(port: u16, client_id: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if raw::try_login(port, client_id, 4, None).await == Some(0) {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_connack_twice_with_one_client_id() {
    let (dev, gw) = house("").await;
    let port = gw.broker_port();
    for _ in 0..2 {
        let mut s = raw::open(port).await.expect("connect");
        s.write_all(&raw::connect("flaky", 4, None))
            .await
            .expect("send");
        raw::reset(s);
    }
    still_serving(&dev, &gw, 11).await;
    assert_eq!(raw::try_login(port, "flaky", 4, None).await, Some(0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_broker_refuses_then_admits_the_same_client() {
    let (dev, gw) = house("").await;
    // max_connections is set in the gateway file; `model()` takes the default 32.
    let port = gw.broker_port();
    let max = gw
        .model
        .mqtt
        .embedded
        .as_ref()
        .map_or(32, |e| e.max_connections);
    let mut held = Vec::new();
    for i in 0..max {
        let mut s = raw::open(port).await.expect("connect");
        let rc = raw::handshake(&mut s, &raw::connect(&format!("c{i}"), 4, None)).await;
        assert_eq!(rc, Some(0), "client {i} admitted");
        held.push(s);
    }
    let mut extra = raw::open(port).await.expect("connect");
    let rc = raw::handshake(&mut extra, &raw::connect("extra", 4, None)).await;
    assert_ne!(rc, Some(0), "client {} refused while full", max + 1);
    drop(extra);
    for s in held {
        raw::reset(s);
    }
    let admitted = admitted_within(port, "extra", Duration::from_secs(5)).await;
    assert!(
        admitted,
        "the refused client is admitted once the others left"
    );
    still_serving(&dev, &gw, 12).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_leave_the_gateway_serving() {
    let (dev, gw) = house("").await;
    let port = gw.broker_port();
    still_serving(&dev, &gw, 1).await;
    let before = raw::rss_kib();

    // Garbage, a truncated CONNECT, a remaining length of 268 MB, HTTP.
    let connect = raw::connect("hostile", 4, None);
    let mut huge = vec![0x10];
    raw::varint(268_435_455, &mut huge);
    huge.extend_from_slice(&[0u8; 4096]);
    let attacks: Vec<Vec<u8>> = vec![
        (0..=255u8).cycle().take(4096).collect(),
        connect[..7].to_vec(),
        huge,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0x30, 0x05, b'a', b'b'],
        vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ];
    // A connection may be reset at once: the front refuses more than
    // `max_connecting_per_address` still before their CONNECT from one address, and the
    // resets of the previous rounds may not have reached it yet.
    for a in &attacks {
        let Ok(mut s) = raw::open(port).await else {
            continue;
        };
        let _ = s.write_all(a).await;
        raw::reset(s);
    }
    // A reset at every byte of the handshake, and right after it.
    for cut in 0..=connect.len() {
        let Ok(mut s) = raw::open(port).await else {
            continue;
        };
        let _ = s.write_all(&connect[..cut]).await;
        raw::reset(s);
    }
    // Client-id takeover storm: 200 connections with one id, all reset. (Those beyond
    // `max_connecting_per_address` still before their CONNACK are reset by the broker
    // at once, sometimes before `connect` returns.)
    let mut storm = Vec::new();
    for _ in 0..200 {
        let Ok(mut s) = raw::open(port).await else {
            continue;
        };
        let _ = s.write_all(&raw::connect("same", 4, None)).await;
        storm.push(s);
    }
    for s in storm {
        raw::reset(s);
    }
    // 1000 connections at once (more than max_connections), then all reset.
    let mut many = Vec::new();
    for i in 0..1000 {
        if let Ok(mut s) = raw::open(port).await {
            let _ = s.write_all(&raw::connect(&format!("m{i}"), 4, None)).await;
            many.push(s);
        }
    }
    for s in many {
        raw::reset(s);
    }
    // A client that takes the gateway's own client id is refused.
    let own = gw.model.mqtt.client_id.clone();
    assert_ne!(raw::try_login(port, &own, 4, None).await, Some(0));

    still_serving(&dev, &gw, 2).await;
    let admitted = admitted_within(port, "same", Duration::from_secs(5)).await;
    assert!(admitted, "the storm's client id can log in again");
    // The broker trims the heap after a burst of connections (within a second or two).
    let back = eventually(Duration::from_secs(15), || {
        raw::rss_kib() < before + 5 * 1024
    })
    .await;
    assert!(
        back,
        "RSS grew from {before} KiB to {} KiB and stayed there",
        raw::rss_kib()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_broker_is_rebuilt_and_the_state_republished() {
    let (dev, gw) = house("").await;
    let port = gw.broker_port();
    still_serving(&dev, &gw, 5).await;
    let started = std::time::Instant::now();
    gw.stats.broker.fault.notify_one();
    let broker = gw.stats.broker.clone();
    assert!(
        eventually(Duration::from_secs(5), || broker
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
    let back = admitted_within(port, "after-restart", Duration::from_secs(5)).await;
    assert!(back, "the broker serves again");
    eprintln!("broker serving again after {:?}", started.elapsed());
    // The gateway reconnected and republished its retained state to the new broker.
    let mut obs = Observer::connect(port, "fieldlink/t/status", QoS::AtLeastOnce).await;
    assert!(
        obs.wait_payload("fieldlink/t/status", "online", Duration::from_secs(10))
            .await
    );
    still_serving(&dev, &gw, 6).await;
    gw.stop().await;
}
