//! UART line devices end to end: the gateway on one end of a pseudo-terminal pair, an
//! emulated sensor or relay board (this test) on the other.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

fn pty() -> (tokio_serial::SerialStream, std::fs::File, String) {
    fieldlink_drivers::sim::pty_pair().expect("pty pair")
}

async fn result(obs: &mut Observer, topic: &str) -> serde_json::Value {
    let r = obs
        .next_on(&format!("{topic}/set/result"), T)
        .await
        .expect("result");
    serde_json::from_str(&r.payload).expect("json")
}

fn values(msgs: &[fieldlink_tests::Msg], topic: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.payload.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sensor_lines_are_parsed_and_garbage_is_counted_not_published() {
    let (mut sensor, _keeper, path) = pty();
    let mapping = format!(
        r#"
buses:
  - id: serial
    kind: uart
    path: {path}
    baud: 9600
    max_line: 64
    timeout: 300ms
devices:
  - id: clima
    bus: serial
    poll_interval: 1s
    offline_after: 2
    parser:
      kind: key_value
    points:
      - topic: casa/sala/temperatura
        field: T
        precision: 1
        unit: "°C"
      - topic: casa/sala/umidade
        field: H
        type: u16
        publish: every_poll
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    // Bytes written before the gateway opens its end are flushed away on open.
    let opened_bus = gw.stats.serial_all()[0].clone();
    let opened = &opened_bus.opened;
    assert!(fieldlink_tests::eventually(T, || opened.load(Relaxed) == 1).await);
    let writes: Vec<&[u8]> = vec![
        b"T=23.4;H=51\n",
        b"\x01\x02zz\xff\n", // not UTF-8: garbage
        b"hello world\n",    // no key=value pair: garbage
        b"foo=1;bar=2\n",    // pairs, none of ours: garbage
        &[b'A'; 300],        // over-long...
        b"T=99;H=99\n",      // ...until here: dropped whole
        b"T=2",              // a line split across writes
        b"4.5;H=5",
        b"0\n",
        b"T=25.04;H=49\r\n", // CRLF is fine with the default "\n"
        b"T=abc;H=48\n",     // T unparsable, H still good
        b"T=88",             // partial: never finished
    ];
    for w in writes {
        sensor.write_all(w).await.expect("write");
        sensor.flush().await.expect("flush");
        // Pacing, not synchronisation: separate writes make separate reads likely, so
        // the split line is reassembled across reads (the assertions hold either way).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msgs = obs
        .collect_until(|m| m.topic == "casa/sala/umidade" && m.payload == "48", T)
        .await;
    assert_eq!(
        values(&msgs, "casa/sala/temperatura"),
        ["23.4", "24.5", "25.0"],
        "temperature: good lines only, split line reassembled"
    );
    assert_eq!(
        values(&msgs, "casa/sala/umidade"),
        ["51", "50", "49", "48"],
        "humidity: every line that carried it"
    );
    let s = gw.stats.serial_all()[0].clone();
    assert_eq!(s.garbage.load(Relaxed), 3, "garbage lines");
    assert_eq!(s.overlong.load(Relaxed), 1, "over-long lines");
    assert_eq!(s.bad_values.load(Relaxed), 1, "T=abc");
    assert!(
        fieldlink_tests::eventually(T, || s.partial.load(Relaxed) == 1).await,
        "the unfinished `T=88` is discarded after the line went quiet"
    );
    let availability = gw.model.availability_topic("clima");
    let mut obs2 = Observer::connect(gw.broker_port(), &availability, QoS::AtMostOnce).await;
    assert!(obs2.wait_payload(&availability, "online", T).await);
    // Silence for offline_after × poll_interval: offline.
    assert!(
        obs2.wait_payload(&availability, "offline", T).await,
        "silent sensor goes offline"
    );
    sensor.write_all(b"T=26;H=47\n").await.expect("write");
    assert!(
        obs2.wait_payload(&availability, "online", T).await,
        "back online"
    );
    gw.stop().await;
}

/// What the emulated board received, line by line.
type Received = Arc<Mutex<Vec<String>>>;

/// An emulated CO₂ sensor and relay board sharing one line (CRLF framing): answers `READ`
/// with JSON, `RELAY1 ...` with `OK`, `RELAY2 ...` with `ERR 7`, and never `RELAY3 ...`.
fn board(mut port: tokio_serial::SerialStream) -> Received {
    let received: Received = Arc::default();
    let rec = received.clone();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        let mut co2 = 600;
        loop {
            let n = match port.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..i]).into_owned();
                buf.drain(..i + 2);
                rec.lock().expect("lock").push(line.clone());
                let reply: Option<String> = if line == "READ" {
                    co2 += 12;
                    // Sent in two pieces, the way a slow UART delivers it.
                    let r = format!("{{\"co2\": {co2}, \"t\": [21.5, 0]}}\r\n");
                    let (a, b) = r.split_at(9);
                    let _ = port.write_all(a.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    Some(b.to_string())
                } else if line.starts_with("RELAY1 ") {
                    Some("OK\r\n".into())
                } else if line.starts_with("RELAY2 ") {
                    Some("ERR 7\r\n".into())
                } else {
                    None
                };
                if let Some(r) = reply {
                    let _ = port.write_all(r.as_bytes()).await;
                    let _ = port.flush().await;
                }
            }
        }
    });
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_json_sensor_and_templated_commands_with_ack() {
    let (port, _keeper, path) = pty();
    let received = board(port);
    let mapping = format!(
        r#"
buses:
  - id: board
    kind: uart
    path: {path}
    baud: 115200
    delimiter: "\r\n"
    timeout: 400ms
devices:
  - id: co2
    bus: board
    query: "READ\r\n"
    poll_interval: 300ms
    parser:
      kind: json
    points:
      - topic: casa/sala/co2
        field: co2
        type: u16
        unit: ppm
      - topic: casa/sala/temperatura
        field: t[0]
  - id: relays
    bus: board
    points:
      - topic: casa/jardim/bomba
        type: bool
        values: {{ON: true, OFF: false}}
        command: "RELAY{{channel}} {{value}}\r\n"
        params: {{channel: 1}}
        ack: '^OK'
      - topic: casa/jardim/luz
        type: bool
        command: "RELAY{{channel}} {{value}}\r\n"
        params: {{channel: 2}}
        ack: '^OK'
      - topic: casa/jardim/portao
        type: bool
        command: "RELAY{{channel}} {{value}}\r\n"
        params: {{channel: 3}}
        ack: '^OK'
        ack_timeout: 250ms
      - topic: casa/jardim/painel
        type: string
        length: 32
        command: "TEXT {{value}}\r\n"
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    assert!(
        obs.wait_seen("casa/sala/co2", "612", T).await,
        "first reply"
    );
    assert!(obs.wait_seen("casa/sala/co2", "624", T).await, "next poll");
    assert!(obs.wait_seen("casa/sala/temperatura", "21.5", T).await);

    let client = publisher(gw.broker_port()).await;
    let set = |topic: &'static str, payload: &'static str| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    };

    // Acknowledged: the templated line is on the port, the state is published.
    set("casa/jardim/bomba/set", r#"{"value":"ON","id":1}"#).await;
    let v = result(&mut obs, "casa/jardim/bomba").await;
    assert_eq!(v, serde_json::json!({"ok": true, "value": "ON", "id": 1}));
    assert!(received
        .lock()
        .expect("lock")
        .contains(&"RELAY1 ON".to_string()));
    assert!(obs.wait_seen("casa/jardim/bomba", "ON", T).await);

    // Wrong acknowledgement.
    set("casa/jardim/luz/set", "true").await;
    let v = result(&mut obs, "casa/jardim/luz").await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"], "wrong acknowledgement: `ERR 7`", "{v}");
    assert!(
        fieldlink_tests::eventually(T, || received
            .lock()
            .expect("lock")
            .contains(&"RELAY2 1".to_string()))
        .await
    );

    // Missing acknowledgement.
    set("casa/jardim/portao/set", "ON").await;
    let v = result(&mut obs, "casa/jardim/portao").await;
    assert_eq!(v["error"], "no acknowledgement within 250ms", "{v}");

    // A text value goes into the template as written (no ack configured: done once written).
    set("casa/jardim/painel/set", "ola mundo").await;
    let v = result(&mut obs, "casa/jardim/painel").await;
    assert_eq!(v, serde_json::json!({"ok": true, "value": "ola mundo"}));
    // Written to the line before the result; the board reads it on its own task.
    assert!(
        fieldlink_tests::eventually(T, || received
            .lock()
            .expect("lock")
            .contains(&"TEXT ola mundo".to_string()))
        .await
    );

    // A bad payload is rejected before anything is written.
    let before = received.lock().expect("lock").clone();
    set("casa/jardim/bomba/set", "maybe").await;
    let v = result(&mut obs, "casa/jardim/bomba").await;
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("maybe")),
        "{v}"
    );
    // A line break in a text value would smuggle in a second command: rejected.
    set("casa/jardim/painel/set", r#"{"value":"oi\r\nRELAY3 ON"}"#).await;
    let v = result(&mut obs, "casa/jardim/painel").await;
    assert_eq!(v["ok"], false, "{v}");
    // Both were answered; the next line written after them is the next query.
    let n = before.len();
    assert!(fieldlink_tests::eventually(T, || received.lock().expect("lock").len() > n).await);
    let after = received.lock().expect("lock").clone();
    assert!(
        after[before.len()..].iter().all(|l| l == "READ"),
        "nothing but queries written after the rejected commands: {:?}",
        &after[before.len()..]
    );
    // Polling went on through all of it.
    let co2 = values(
        &obs.collect(Duration::from_millis(800)).await,
        "casa/sala/co2",
    );
    assert!(!co2.is_empty(), "co2 still polled");
    assert_eq!(gw.stats.serial_all()[0].garbage.load(Relaxed), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_sensor_port_lost_and_back() {
    // The gateway opens a symlink; removing it and closing the pty is an unplugged adapter.
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyCO2");
    let (mut sensor, keeper, path) = pty();
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let mapping = format!(
        r#"
buses:
  - id: serial
    kind: uart
    path: {}
devices:
  - id: co2
    bus: serial
    poll_interval: 5s
    parser:
      kind: regex
      pattern: '^CO2 (?P<ppm>\d+) ppm T (?P<t>-?[0-9.]+)'
    points:
      - topic: casa/quarto/co2
        field: ppm
        type: u16
      - topic: casa/quarto/temperatura
        field: t
"#,
        link.display()
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let availability = gw.model.availability_topic("co2");
    let mut obs = Observer::connect(gw.broker_port(), "#", QoS::AtMostOnce).await;
    let opened_bus = gw.stats.serial_all()[0].clone();
    let opened = &opened_bus.opened;
    assert!(fieldlink_tests::eventually(T, || opened.load(Relaxed) == 1).await);
    sensor
        .write_all(b"CO2 0815 ppm T 19.5\n")
        .await
        .expect("write");
    assert!(obs.wait_seen("casa/quarto/co2", "815", T).await);
    assert!(obs.wait_seen("casa/quarto/temperatura", "19.5", T).await);
    assert!(obs.wait_seen(&availability, "online", T).await);
    // Unplug.
    std::fs::remove_file(&link).expect("rm link");
    drop(keeper);
    drop(sensor);
    assert!(
        obs.wait_payload(&availability, "offline", T).await,
        "offline when the port hangs up"
    );
    // Plug in again: a new pty behind the same name.
    let (mut sensor, _keeper2, path2) = pty();
    std::os::unix::fs::symlink(&path2, &link).expect("symlink");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        sensor
            .write_all(b"CO2 0900 ppm T 20.0\n")
            .await
            .expect("write");
        if obs
            .wait_seen("casa/quarto/co2", "900", Duration::from_millis(500))
            .await
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reopened in time");
    }
    assert!(obs.wait_payload(&availability, "online", T).await);
    gw.stop().await;
}

/// Commands drained in one batch behind a command still waiting for its acknowledgement
/// when shutdown comes are answered "shutting down" and never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_behind_an_unacknowledged_one_are_not_written_at_shutdown() {
    let (port, _keeper, path) = pty();
    let received = board(port);
    // `PING` is never answered: the bus task spends its time waiting for that reply, so
    // the three commands below queue up and are taken as one batch.
    let mapping = format!(
        r#"
buses:
  - id: board
    kind: uart
    path: {path}
    delimiter: "\r\n"
    timeout: 2s
devices:
  - id: mute
    bus: board
    query: "PING\r\n"
    poll_interval: 100ms
    offline_after: 1000
    parser:
      kind: json
    points:
      - {{ topic: casa/mudo, field: x }}
  - id: relays
    bus: board
    points:
      - topic: casa/portao
        type: bool
        command: "RELAY3 {{value}}\r\n"
        ack: '^OK'
        ack_timeout: 30s
      - topic: casa/rega
        type: bool
        command: "RELAY4 {{value}}\r\n"
      - topic: casa/luz
        type: bool
        command: "RELAY5 {{value}}\r\n"
        ack: '^OK'
"#
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    let sent = || received.lock().expect("lock").clone();
    assert!(fieldlink_tests::eventually(T, || sent().contains(&"PING".to_string())).await);
    let client = publisher(gw.broker_port()).await;
    for t in ["casa/portao/set", "casa/rega/set", "casa/luz/set"] {
        client
            .publish(t, QoS::AtLeastOnce, false, "ON")
            .await
            .expect("publish");
    }
    assert!(
        fieldlink_tests::eventually(T, || sent().contains(&"RELAY3 1".to_string())).await,
        "the first command is written after the query's timeout"
    );
    let stop = tokio::spawn(gw.stop());
    let v = result(&mut obs, "casa/portao").await;
    assert_eq!(
        v["error"], "gateway shutting down before the acknowledgement",
        "{v}"
    );
    for topic in ["casa/rega", "casa/luz"] {
        let v = result(&mut obs, topic).await;
        assert_eq!(
            v["error"], "gateway shutting down; command not written",
            "{v}"
        );
    }
    stop.await.expect("stopped");
    let lines = sent();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("RELAY4") || l.starts_with("RELAY5")),
        "nothing written after shutdown: {lines:?}"
    );
}
