//! The embedded broker delivers every retained topic (600) to a new QoS 0 or QoS 1
//! subscriber, a taken listen address is reported clearly instead of only being logged,
//! and port 0 is bound, reported and kept when the broker is rebuilt.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use fieldlink_drivers::{
    modbus::Table,
    sim::{SimDevice, SimServer},
};
use fieldlink_tests::{eventually, model, model_from, raw, Gateway, Observer};
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_retained_topics_reach_a_new_subscriber() {
    const N: u16 = 600;
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let values: Vec<u16> = (0..N).map(|i| i * 3 + 1).collect();
    dev.set_registers(Table::Holding, 0, &values);
    let port = server.spawn_local().await.expect("sim");
    let mut points = String::new();
    for i in 0..N {
        points += &format!("      - {{ topic: casa/sensor/{i}, table: holding, address: {i} }}\n");
    }
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 1s\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut first = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let got = first.collect(Duration::from_millis(1500)).await;
    assert!(got.len() >= usize::from(N), "all values published once");

    // QoS 0 and QoS 1 subscribers alike (rumqttd gave a QoS 1 subscriber at most 100).
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut fresh = Observer::connect(gw.broker_port(), "casa/#", qos).await;
        let snap = fresh.snapshot(Duration::from_millis(1500)).await;
        let missing: Vec<u16> = (0..N)
            .filter(|i| {
                snap.get(&format!("casa/sensor/{i}"))
                    .is_none_or(|m| !m.retain || m.payload != (i * 3 + 1).to_string())
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{qos:?}: {} retained topics missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut m = model("buses: []\ndevices: []\n", "");
    if let Some(e) = m.mqtt.embedded.as_mut() {
        e.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    }
    let (_t, sd) = fieldlink::shutdown::channel();
    let err = fieldlink::run(m, sd).await.expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("already in use") && text.contains("mqtt.embedded.listen"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_0_on_ipv6_loopback_is_bound_reported_and_kept_across_a_rebuild() {
    let gateway = "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"[::1]:0\"\ndiagnostics_interval: 1h\n";
    let gw = Gateway::start(model_from(gateway, "buses: []\ndevices: []\n")).await;
    let at = gw.bound.expect("the broker reports its address").mqtt;
    assert!(
        at.is_ipv6() && at.ip().is_loopback() && at.port() != 0,
        "{at}"
    );
    let login = |at| async move {
        let mut s = tokio::net::TcpStream::connect(at).await.ok()?;
        raw::handshake(&mut s, &raw::connect("v6-client", 4, None)).await
    };
    assert_eq!(login(at).await, Some(0), "a client is admitted at {at}");
    // A failed broker is rebuilt on the port it got the first time.
    gw.stats.broker.fault.notify_one();
    let broker = gw.stats.broker.clone();
    assert!(
        eventually(Duration::from_secs(5), || broker.restarts.load(Relaxed)
            == 1)
        .await
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut back = login(at).await;
    while back.is_none() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        back = login(at).await;
    }
    assert_eq!(back, Some(0), "the rebuilt broker admits clients at {at}");
    gw.stop().await;
}
