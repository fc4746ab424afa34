//! `fieldlink scan`: the units there, their identification, line settings.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_exactly_the_units_there_with_their_identification() {
    let server = SimServer::new();
    let a = server.add(1, SimDevice::new());
    a.set_identification(&[(0, "ACME"), (1, "PM-10"), (2, "1.2"), (5, "model name")]);
    server.add(3, SimDevice::new());
    // Unit 4 has no register 0: its exception 02 says it is there.
    server
        .add(4, SimDevice::new())
        .add_holes(Table::Holding, [0]);
    let port = server.clone().spawn_local().await.expect("sim");
    let o = fieldlink(args(&format!(
        "scan --tcp 127.0.0.1:{port} --units 1-6 --timeout 100ms --json"
    )))
    .await;
    let j = json_of(&o);
    assert_eq!(
        j,
        serde_json::json!({
            "found": [
                {"unit": 1, "identification": {"vendor": "ACME", "product_code": "PM-10", "revision": "1.2"}},
                {"unit": 3, "identification": null},
                {"unit": 4, "identification": null},
            ],
            "settings": {"tcp": format!("127.0.0.1:{port}")},
        })
    );
    // A Modbus TCP gateway answers 0x0B (or 0x0A) for units nobody answers behind it.
    for code in [0x0A, 0x0B] {
        server.answer_absent_units(code);
        let o = fieldlink(args(&format!(
            "scan --tcp 127.0.0.1:{port} --units 1-6 --json"
        )))
        .await;
        let found: Vec<i64> = json_of(&o)["found"]
            .as_array()
            .expect("found")
            .iter()
            .filter_map(|f| f["unit"].as_i64())
            .collect();
        assert_eq!(found, [1, 3, 4], "exception {code:#04x}");
    }
    // One line per unit in text.
    let o = fieldlink(args(&format!("scan --tcp 127.0.0.1:{port} --units 1-3"))).await;
    let text = stdout(&o);
    assert!(
        text.contains("unit 1: answered; vendor \"ACME\", product \"PM-10\", revision \"1.2\""),
        "{text}"
    );
    assert!(
        text.contains("unit 3: answered; no identification"),
        "{text}"
    );
    assert!(text.contains("2 unit(s) answered"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_on_rtu_tries_each_baud_rate_and_parity() {
    let (master, _keeper, path) = pty_pair().expect("pty");
    let server = SimServer::new();
    server.add(2, SimDevice::new());
    server.add(5, SimDevice::new()).set_identification(&[
        (0, "Eastron"),
        (1, "SDM120"),
        (2, "2.1"),
    ]);
    tokio::spawn(server.serve_rtu_at(master, 19200));
    // (A pty carries the baud rate but not the parity: the devices answer at 19200 with
    // any parity, and the first combination that answers is the one reported.)
    let o = fieldlink(args(&format!(
        "scan --rtu {path} --baud 9600,19200 --parity even,none --units 1-6 --timeout 100ms --json"
    )))
    .await;
    let j = json_of(&o);
    assert_eq!(
        j,
        serde_json::json!({
            "found": [
                {"unit": 2, "identification": null},
                {"unit": 5, "identification": {"vendor": "Eastron", "product_code": "SDM120", "revision": "2.1"}},
            ],
            "settings": {"rtu": path, "baud": 19200, "parity": "even", "data_bits": 8, "stop_bits": 1},
        })
    );
    // At the wrong settings only: nothing answers, and the command says so.
    let o = fieldlink(args(&format!(
        "scan --rtu {path} --baud 9600 --units 1-3 --timeout 50ms"
    )))
    .await;
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no unit answered"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_through_a_converter_reads_identification() {
    let server = SimServer::new();
    server.add(12, SimDevice::new()).set_identification(&[
        (0, "Carlo Gavazzi"),
        (1, "EM24"),
        (2, "A3"),
    ]);
    let port = server.spawn_rtu_over_tcp().await.expect("converter");
    let o = fieldlink(args(&format!(
        "scan --rtu-over-tcp 127.0.0.1:{port} --units 10-13 --timeout 100ms --json"
    )))
    .await;
    let j = json_of(&o);
    assert_eq!(
        j["found"],
        serde_json::json!([{"unit": 12, "identification": {"vendor": "Carlo Gavazzi", "product_code": "EM24", "revision": "A3"}}])
    );
}
