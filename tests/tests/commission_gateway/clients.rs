//! Other MQTT clients than the command line: MQTT 5 with Response Topic and Correlation
//! Data (rumqttc, and the real `mosquitto_rr`), MQTT 3.1.1 with `response_topic` in the
//! body (`mosquitto_pub` / `mosquitto_sub`), and the refusals they get.

use super::*;

/// An MQTT 5 request on `topic` with a Response Topic and Correlation Data, as rumqttc
/// sends it; the answer as it arrived (topic, correlation data, body).
async fn ask_v5(port: u16, topic: &str, body: &str) -> (String, Option<Vec<u8>>, Json) {
    use rumqttc::v5::{
        mqttbytes::{v5::Packet, v5::PublishProperties, QoS as Q5},
        AsyncClient, Event, MqttOptions,
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!("v5-client-{}", N.fetch_add(1, Relaxed));
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 16);
    client
        .subscribe("replies/v5", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut sent = false;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) if !sent => {
                    sent = true;
                    let props = PublishProperties {
                        response_topic: Some("replies/v5".into()),
                        correlation_data: Some(b"req-42"[..].into()),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            topic.to_string(),
                            Q5::AtLeastOnce,
                            false,
                            body.to_string(),
                            props,
                        )
                        .await
                        .expect("publish");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => return p,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("an answer");
    let j: Json = serde_json::from_slice(&answer.payload).expect("json");
    (
        String::from_utf8_lossy(&answer.topic).into_owned(),
        answer
            .properties
            .and_then(|p| p.correlation_data)
            .map(|c| c.to_vec()),
        j,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_client_gets_its_answer_on_its_response_topic_with_its_correlation_data() {
    let b = Bench::start("commissioning: true\n", "").await;
    let port = b.gw.broker_port();
    let body = r#"{"command":"probe","unit":5,"address":0,"count":2}"#;
    let (topic, correlation, j) = ask_v5(port, "fieldlink/t/bus/rs485/request", body).await;
    assert_eq!(topic, "replies/v5");
    assert_eq!(correlation.as_deref(), Some(&b"req-42"[..]));
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["result"]["registers"][0]["f32"]["CDAB"], 230.5, "{j}");
    assert!(
        j["text"]
            .as_str()
            .is_some_and(|t| t.contains("holding registers 0-1")),
        "{j}"
    );
    // Only Modbus buses, and only buses the gateway has: refused, saying why.
    let (_, _, j) = ask_v5(port, "fieldlink/t/bus/serial/request", body).await;
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(j["exit"], 77, "{j}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("bus `serial` is not a Modbus bus")),
        "{j}"
    );
    let (_, _, j) = ask_v5(port, "fieldlink/t/bus/nope/request", body).await;
    assert_eq!(j["error"], "the gateway has no bus `nope`", "{j}");
    // A body that is no request: usage (64).
    let (_, _, j) = ask_v5(
        port,
        "fieldlink/t/bus/rs485/request",
        r#"{"command":"erase"}"#,
    )
    .await;
    assert_eq!(j["exit"], 64, "{j}");

    // The real mosquitto_rr (MQTT 5 request/response) too.
    if let Some(rr) = mosquitto::tool("mosquitto_rr") {
        let o = mosquitto::run(
            &rr,
            b.gw.broker_port(),
            &[
                "-t",
                "fieldlink/t/bus/rs485/request",
                "-e",
                "replies/rr",
                "-m",
                r#"{"command":"probe","unit":5,"address":2,"count":2,"json":true}"#,
                "-W",
                "10",
            ],
        );
        let j: Json = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
        assert_eq!(j["result"]["registers"][1]["u16"], 2, "{j}");
        // The text is the JSON line `probe --json` prints.
        let text: Json = j["text"]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .expect("the text is JSON");
        assert_eq!(text, j["result"]);
    }
    b.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_311_client_names_its_response_topic_in_the_body() {
    let Some(t) = tools() else { return };
    let b = Bench::start("commissioning: true\n", "").await;
    let port = b.gw.broker_port().to_string();
    let mut sub = Command::new(&t.sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "311",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .args(["-t", "replies/v311"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    // mosquitto_sub does not say when it has subscribed: the request goes out again
    // until it has its answer (the same value written again changes nothing).
    let request = r#"{"command":"write","unit":5,"address":1,"value":17,"response_topic":"replies/v311","id":"w1"}"#;
    let mut answered = false;
    for _ in 0..40 {
        let o = mosquitto::run(
            &t.publ,
            b.gw.broker_port(),
            &[
                "-V",
                "311",
                "-t",
                "fieldlink/t/bus/rs485/request",
                "-m",
                request,
            ],
        );
        assert!(o.status.success());
        if eventually(Duration::from_millis(500), || {
            matches!(sub.try_wait(), Ok(Some(_)))
        })
        .await
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "mosquitto_sub got an answer");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut sub.stdout.take().expect("stdout"), &mut answer);
    let j: Json = serde_json::from_str(&answer).expect("json");
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["id"], "w1");
    assert_eq!(j["result"]["read_back"]["value"], 17, "{j}");
    assert_eq!(b.new.registers(Table::Holding, 1, 1), [17]);
    let _ = &b.dir;
    b.gw.stop().await;
}
