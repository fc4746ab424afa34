//! GPIO through the simulated board: inputs publish once per debounced change (honouring
//! pull, active-low and the value map), outputs follow `/set` with read-back and result,
//! honour active-low, initial and shutdown states, and pulse.

use std::time::Duration;

use fieldlink::Hooks;
use fieldlink_drivers::gpio::SimGpio;
use fieldlink_tests::{model, publisher, Gateway, Observer};
use rumqttc::QoS;

const T: Duration = Duration::from_secs(5);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("result is JSON")
}

async fn start(mapping: &str, board: &SimGpio) -> Gateway {
    let mut hooks = Hooks::default();
    hooks.gpio.insert("io".into(), board.clone());
    Gateway::start_with(model(mapping, ""), hooks).await
}

const HEAD: &str = "buses:\n  - id: io\n    kind: gpio\n    backend: simulated\ndevices:\n  - id: pi\n    bus: io\n    points:\n";

// Debounce and heartbeat run on tokio's paused clock in `actor.rs`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_follow_set_with_active_low_initial_and_shutdown_states() {
    let board = SimGpio::default();
    let mapping = format!(
        "{HEAD}      - topic: casa/rele\n        pin: 27\n        mode: output\n        active_low: true\n        on_shutdown: off\n        values: {{\"ON\": true, \"OFF\": false}}\n      - topic: casa/luz\n        pin: 23\n        mode: output\n        initial: true\n      - topic: casa/bomba\n        pin: 24\n        mode: output\n        on_shutdown: high\n      - topic: casa/aquecedor\n        pin: 25\n        mode: output\n        initial: true\n        on_shutdown: low\n      - topic: casa/lampada\n        pin: 26\n        mode: output\n"
    );
    let gw = start(&mapping, &board).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    // Initial states: logical OFF on an active-low line is a high level.
    assert!(obs.wait_seen("casa/rele", "OFF", T).await);
    assert!(obs.wait_seen("casa/luz", "true", T).await);
    assert!(board.level(27), "active-low OFF drives the line high");
    assert!(board.level(23), "initial: true");
    assert!(!board.level(24));

    let client = publisher(gw.broker_port()).await;
    client
        .publish(
            "casa/rele/set",
            QoS::AtLeastOnce,
            false,
            r#"{"value":"ON","id":7}"#,
        )
        .await
        .expect("publish");
    let r = obs
        .next_on("casa/rele/set/result", T)
        .await
        .expect("result");
    assert_eq!(json(&r.payload), json(r#"{"ok":true,"value":"ON","id":7}"#));
    assert!(!board.level(27), "active-low ON drives the line low");
    assert!(obs.wait_seen("casa/rele", "ON", T).await);

    // A bad payload is rejected and the line is not touched.
    let writes = board.history(27).len();
    client
        .publish("casa/rele/set", QoS::AtLeastOnce, false, "maybe")
        .await
        .expect("publish");
    let r = obs
        .next_on("casa/rele/set/result", T)
        .await
        .expect("result");
    let v = json(&r.payload);
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap_or("").starts_with("wrong type"),
        "{v}"
    );
    assert_eq!(board.history(27).len(), writes, "nothing written");

    // The lamp is switched on and must stay on (keep) after the gateway stops.
    client
        .publish("casa/lampada/set", QoS::AtLeastOnce, false, "true")
        .await
        .expect("publish");
    assert!(obs.wait_seen("casa/lampada", "true", T).await);
    gw.stop().await;
    // Shutdown states: off (active-low → high), high, low, keep.
    assert!(
        board.level(27),
        "on_shutdown: off on an active-low line is high"
    );
    assert!(board.level(24), "on_shutdown: high");
    assert!(!board.level(25), "on_shutdown: low");
    assert!(board.level(26), "on_shutdown: keep (default) leaves it on");
    assert!(board.released(27) && board.released(26));
    // The final states were published before the gateway went away.
    assert!(obs.wait_seen("casa/rele", "OFF", T).await);
    assert!(obs.wait_seen("casa/aquecedor", "false", T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_switches_on_then_off_after_the_pulse_time() {
    let board = SimGpio::default();
    let mapping = format!(
        "{HEAD}      - topic: casa/portao\n        pin: 22\n        mode: output\n        pulse: 300ms\n        values: {{\"ON\": true, \"OFF\": false}}\n"
    );
    let gw = start(&mapping, &board).await;
    let mut obs = Observer::connect(gw.broker_port(), "casa/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("casa/portao", "OFF", T).await);
    obs.collect(Duration::from_millis(200)).await; // the retained state
    let client = publisher(gw.broker_port()).await;
    client
        .publish("casa/portao/set", QoS::AtLeastOnce, false, "ON")
        .await
        .expect("publish");
    let on = obs.next_on("casa/portao", T).await.expect("ON");
    assert_eq!(on.payload, "ON");
    let off = obs.next_on("casa/portao", T).await.expect("OFF");
    assert_eq!(off.payload, "OFF");
    let h = board.history(22);
    let levels: Vec<bool> = h.iter().map(|(l, _)| *l).collect();
    assert_eq!(
        levels,
        vec![false, true, false],
        "initial, pulse on, pulse off"
    );
    let width = h[2].1 - h[1].1;
    assert!(
        width >= Duration::from_millis(300) && width < Duration::from_millis(600),
        "pulse width {width:?}"
    );
    // A pulse in progress at shutdown ends off.
    client
        .publish("casa/portao/set", QoS::AtLeastOnce, false, "ON")
        .await
        .expect("publish");
    assert!(obs.wait_payload("casa/portao", "ON", T).await);
    gw.stop().await;
    assert!(!board.level(22), "a pulse never outlives the gateway");
}
