//! Bad input: one line and a sysexits code; a configured bus as the transport.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_a_busy_port_and_a_wrong_baud_rate_are_unavailable() {
    // Nothing listens on a port that was just freed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (code, line) =
        refused(&fieldlink(args(&format!("probe --tcp 127.0.0.1:{closed} --address 0"))).await);
    assert_eq!(code, Some(69), "{line}");
    assert!(
        line.contains(&format!("cannot reach Modbus TCP 127.0.0.1:{closed}")),
        "{line}"
    );

    // A busy serial port (another program has it open, exclusively).
    let (master, _keeper, path) = pty_pair().expect("pty");
    let settings = fieldlink_drivers::modbus::rtu::SerialSettings {
        path: path.clone(),
        baud: 9600,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    };
    let owner = settings.open().expect("open the port first");
    let (code, line) = refused(&fieldlink(args(&format!("probe --rtu {path} --address 0"))).await);
    assert_eq!(code, Some(69), "{line}");
    assert!(line.contains(&format!("cannot reach RTU {path}")), "{line}");
    drop(owner);

    // A wrong baud rate: the devices hear nothing they understand and stay silent.
    let rtu = SimServer::new();
    rtu.add(1, SimDevice::new());
    tokio::spawn(rtu.serve_rtu_at(master, 19200));
    let (code, line) = refused(
        &fieldlink(args(&format!(
            "probe --rtu {path} --baud 9600 --address 0 --timeout 100ms"
        )))
        .await,
    );
    assert_eq!(code, Some(69), "{line}");
    assert!(
        line.contains("no reply from unit 1") && line.contains("baud rate"),
        "{line}"
    );
    let o = fieldlink(args(&format!(
        "probe --rtu {path} --baud 19200 --parity even --address 0 --count 2 --json"
    )))
    .await;
    json_of(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_and_values_get_one_line_and_a_sysexits_code() {
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    let port = server.clone().spawn_local().await.expect("sim");
    let tcp = format!("--tcp 127.0.0.1:{port}");
    for (cmd, want) in [
        // Usage.
        (format!("probe {tcp} --address 65530 --count 10"), 64),
        (format!("probe {tcp} --address 70000"), 64),
        ("probe --address 0".to_string(), 64),
        (format!("probe {tcp} --rtu /dev/null --address 0"), 64),
        (format!("probe {tcp} --baud 9600 --address 0"), 64),
        (format!("probe {tcp} --address 0 --no-such-flag"), 64),
        (
            format!("probe {tcp} --table coil --address 0 --yaml --type f32"),
            64,
        ),
        ("scan --rtu /dev/ttyUSB9 --units 0-3".to_string(), 64),
        (format!("scan {tcp} --units 9-3"), 64),
        (
            format!("write {tcp} --unit 1 --address 65535 --type f32 1.5"),
            64,
        ),
        (
            format!("write {tcp} --unit 1 --table coil --address 0 --type u16 1"),
            64,
        ),
        // Data: a value the type cannot hold, or no number at all.
        (
            format!("write {tcp} --unit 1 --address 0 --type u16 70000"),
            65,
        ),
        (
            format!("write {tcp} --unit 1 --address 0 --type i16 -40000"),
            65,
        ),
        (
            format!("write {tcp} --unit 1 --address 0 --type f32 1e39"),
            65,
        ),
        (
            format!("write {tcp} --unit 1 --address 0 --type u16 1.5"),
            65,
        ),
        (format!("write {tcp} --unit 1 --address 0 abc"), 65),
        (
            format!("write {tcp} --unit 1 --table coil --address 0 maybe"),
            65,
        ),
    ] {
        let o = fieldlink(args(&cmd)).await;
        assert_eq!(o.status.code(), Some(want), "{cmd}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{cmd}: {}", stderr(&o));
        // Our own refusals are one line (clap's usage errors add a usage block).
        if !stderr(&o).contains("Usage:") {
            refused(&o);
        }
    }
    // Nothing was written by the refused writes.
    let dev = server.device(1).expect("unit 1");
    assert!(dev
        .log()
        .iter()
        .all(|r| ![5, 6, 15, 16].contains(&r.function)));
    // A write the device refuses (exception 02 at an address it does not have) is data.
    dev.add_holes(Table::Holding, [9]);
    let (code, line) =
        refused(&fieldlink(args(&format!("write {tcp} --unit 1 --address 9 5"))).await);
    assert_eq!(code, Some(65), "{line}");
    assert!(
        line.contains("refused the write: exception 0x02 (illegal data address)"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_bus_gives_the_transport_and_its_settings() {
    let tcp = SimServer::new();
    tcp.add(2, SimDevice::new()).set_registers(
        Table::Holding,
        0,
        &regs32(230.5f32.to_bits(), "ABCD"),
    );
    let port = tcp.spawn_local().await.expect("sim");
    // The RS-485 devices run at 19200 baud: only the bus's own settings reach them.
    let (master, _keeper, path) = pty_pair().expect("pty");
    let rtu = SimServer::new();
    rtu.add(3, SimDevice::new())
        .set_registers(Table::Holding, 0, &[7, 8]);
    tokio::spawn(rtu.serve_rtu_at(master, 19200));
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = dir.path().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: 127.0.0.1:0\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("mapping.yaml"),
        format!(
            "buses:\n  - {{ id: lan, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\n  \
             - {{ id: rs485, kind: modbus_rtu, path: {path}, baud: 19200, timeout: 200ms }}\n\
             devices:\n  - {{ id: a, bus: lan, unit: 2, points: [{{ topic: x/a, table: holding, address: 0 }}] }}\n  \
             - {{ id: b, bus: rs485, unit: 3, points: [{{ topic: x/b, table: holding, address: 0 }}] }}\n"
        ),
    )
    .expect("write");
    let config = gateway.display().to_string();
    let j = json_of(
        &fieldlink(args(&format!(
            "probe --config {config} --bus lan --unit 2 --address 0 --count 2 --json"
        )))
        .await,
    );
    assert_eq!(j["registers"][0]["f32"]["ABCD"], 230.5, "{j}");
    let j = json_of(
        &fieldlink(args(&format!(
            "probe --config {config} --bus rs485 --unit 3 --address 0 --count 2 --json"
        )))
        .await,
    );
    assert_eq!(j["registers"][1]["u16"], 8, "{j}");
    let j = json_of(
        &fieldlink(args(&format!(
            "scan --config {config} --bus rs485 --units 1-4 --json"
        )))
        .await,
    );
    assert_eq!(
        j["found"],
        serde_json::json!([{"unit": 3, "identification": null}])
    );
    assert_eq!(j["settings"]["baud"], 19200);
    // A bus that is not there, a bus that has no line settings.
    let (code, line) = refused(
        &fieldlink(args(&format!(
            "probe --config {config} --bus rs-485 --address 0"
        )))
        .await,
    );
    assert_eq!(code, Some(64));
    assert!(
        line.contains("no bus `rs-485`") && line.contains("lan, rs485"),
        "{line}"
    );
    let (code, _) = refused(
        &fieldlink(args(&format!(
            "probe --config {config} --bus lan --baud 9600 --address 0"
        )))
        .await,
    );
    assert_eq!(code, Some(64));
    // A configuration that does not load: its diagnostics, and `check`'s exit code.
    std::fs::write(dir.path().join("mapping.yaml"), "buses: [\n").expect("write");
    let o = fieldlink(args(&format!(
        "probe --config {config} --bus lan --address 0"
    )))
    .await;
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
}
