//! Commissioning from the command line: the real `fieldlink` binary's `probe`, `scan` and
//! `write` against tokio-modbus servers with known registers, over Modbus TCP, RTU on a
//! pseudo-terminal pair and RTU through a simulated TCP converter.
//!
//! Every expected value is computed here from the registers the server holds, word by
//! word, not through the gateway's codec.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{mpsc, Arc},
    time::Duration,
};

use fieldlink_drivers::{
    modbus::{rtu::Parity, Table},
    sim::{pty_pair, SimDevice, SimServer},
};
use fieldlink_tests::{eventually, process::fieldlink_bin};
use serde_json::Value as Json;

/// `fieldlink <args>`, run to its end off the test's runtime (the simulators run on it).
async fn fieldlink(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(fieldlink_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run fieldlink")
    })
    .await
    .expect("join")
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON object a command printed, after checking that it succeeded.
fn json_of(o: &Output) -> Json {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

/// The registers of a 32-bit value in a word order: `ABCD` high word first; `CDAB` low
/// word first; `BADC`, `DCBA` the same with the bytes of each word swapped.
fn regs32(bits: u32, order: &str) -> [u16; 2] {
    let (hi, lo) = ((bits >> 16) as u16, bits as u16);
    match order {
        "ABCD" => [hi, lo],
        "CDAB" => [lo, hi],
        "BADC" => [hi.swap_bytes(), lo.swap_bytes()],
        _ => [lo.swap_bytes(), hi.swap_bytes()],
    }
}

/// The same for a 64-bit value.
fn regs64(bits: u64, order: &str) -> [u16; 4] {
    let w = [
        (bits >> 48) as u16,
        (bits >> 32) as u16,
        (bits >> 16) as u16,
        bits as u16,
    ];
    match order {
        "ABCD" => w,
        "CDAB" => [w[3], w[2], w[1], w[0]],
        "BADC" => w.map(u16::swap_bytes),
        _ => [w[3], w[2], w[1], w[0]].map(u16::swap_bytes),
    }
}

/// The value a pair of registers holds as `ty` in `order`, computed from the words.
fn pair_value(w0: u16, w1: u16, ty: &str, order: &str) -> f64 {
    let bits = match order {
        "ABCD" => (u32::from(w0) << 16) | u32::from(w1),
        "CDAB" => (u32::from(w1) << 16) | u32::from(w0),
        "BADC" => (u32::from(w0.swap_bytes()) << 16) | u32::from(w1.swap_bytes()),
        _ => (u32::from(w1.swap_bytes()) << 16) | u32::from(w0.swap_bytes()),
    };
    match ty {
        "u32" => f64::from(bits),
        "i32" => f64::from(bits as i32),
        _ => f64::from(f32::from_bits(bits)),
    }
}

/// A device whose holding registers 0..40 hold, in each word order, an f32, a u32 and an
/// i32 (and an i16 and u16 on their own); returns the registers it holds.
fn meter() -> (Arc<SimDevice>, Vec<u16>) {
    let d = SimDevice::new();
    let mut regs = Vec::new();
    for (k, order) in ORDERS.iter().enumerate() {
        let f = -1234.5625f32 * (k as f32 + 1.0);
        regs.extend(regs32(f.to_bits(), order));
        regs.extend(regs32(4_000_000_000 - k as u32, order));
        regs.extend(regs32((-2_000_000_000i32 + k as i32) as u32, order));
        regs.extend([(-300i16 - k as i16) as u16, 65000 + k as u16]);
        regs.extend([0u16; 2]);
    }
    d.set_registers(Table::Holding, 0, &regs);
    (d, regs)
}

/// Check every decoding `probe --json` printed against the server's registers.
fn check_every_decoding(j: &Json, regs: &[u16], start: usize, count: usize) {
    assert_eq!(j["table"], "holding");
    let rows = j["registers"].as_array().expect("registers");
    assert_eq!(rows.len(), count);
    for (i, row) in rows.iter().enumerate() {
        let a = start + i;
        let w = regs.get(a).copied().unwrap_or(0);
        assert_eq!(row["address"], a, "{row}");
        assert_eq!(row["raw"], format!("{w:04x}"), "{row}");
        assert_eq!(row["u16"], w, "{row}");
        assert_eq!(row["i16"], w as i16, "{row}");
        if i + 1 == count {
            for ty in ["u32", "i32", "f32"] {
                assert!(row.get(ty).is_none(), "no pair on the last address: {row}");
            }
            continue;
        }
        let w1 = regs.get(a + 1).copied().unwrap_or(0);
        for ty in ["u32", "i32", "f32"] {
            for order in ORDERS {
                let want = pair_value(w, w1, ty, order);
                let got = &row[ty][order];
                if want.is_nan() || want.is_infinite() {
                    assert!(got.is_null(), "{ty} {order} at {a}: {got}");
                } else if ty == "f32" {
                    let got = got.as_f64().expect("a number") as f32;
                    assert_eq!(
                        got.to_bits(),
                        (want as f32).to_bits(),
                        "{ty} {order} at {a}"
                    );
                } else {
                    assert_eq!(got.as_f64(), Some(want), "{ty} {order} at {a}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_json_has_every_decoding_of_every_address_over_tcp() {
    let server = SimServer::new();
    let (dev, regs) = meter();
    server.add(1, dev.clone());
    let port = server.spawn_local().await.expect("sim");
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --unit 1 --address 0 --count {} --json",
        regs.len()
    )))
    .await;
    let j = json_of(&o);
    assert_eq!(j["unit"], 1);
    check_every_decoding(&j, &regs, 0, regs.len());
    // The values as written, in their own word order.
    for (k, order) in ORDERS.iter().enumerate() {
        let row = &j["registers"][k * 10];
        assert_eq!(row["f32"][order], -1234.5625 * (k as f64 + 1.0), "{row}");
        assert_eq!(
            j["registers"][k * 10 + 2]["u32"][order],
            4_000_000_000u32 - k as u32
        );
        assert_eq!(
            j["registers"][k * 10 + 4]["i32"][order],
            -2_000_000_000i64 + k as i64
        );
        assert_eq!(j["registers"][k * 10 + 6]["i16"], -300 - k as i64);
    }
    // The text table shows the same f32 in its column.
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --address 10 --count 2"
    )))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("f32 CDAB"), "{text}");
    assert!(text.contains("-2469.125"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_each_exception_and_reads_around_it_within_the_limits() {
    let server = SimServer::new();
    let dev = server.add(3, SimDevice::new());
    let regs: Vec<u16> = (0..300).map(|a| a * 3 + 1).collect();
    dev.set_registers(Table::Input, 0, &regs);
    dev.add_holes(Table::Input, [4, 5, 260]);
    let port = server.spawn_local().await.expect("sim");
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --unit 3 --table input --address 0 --count 300 --json"
    )))
    .await;
    let j = json_of(&o);
    let rows = j["registers"].as_array().expect("rows");
    assert_eq!(rows.len(), 300);
    for (a, row) in rows.iter().enumerate() {
        assert_eq!(row["address"], a);
        if [4, 5, 260].contains(&a) {
            assert_eq!(row, &serde_json::json!({"address": a, "exception": 2}));
        } else {
            assert_eq!(row["u16"], regs[a], "{row}");
        }
    }
    // The pair before a hole has no pair decodings; the one after it has.
    assert!(rows[3].get("u32").is_none(), "{}", rows[3]);
    assert!(rows[6].get("u32").is_some(), "{}", rows[6]);
    // No request asked for more than 125 registers; the blocks with holes were read
    // address by address.
    let log = dev.log();
    assert!(log.iter().all(|r| r.count <= 125), "{log:?}");
    assert!(log.iter().any(|r| r.address == 4 && r.count == 1));
    assert!(log.iter().any(|r| r.address == 261 && r.count == 1));
    assert!(log.iter().any(|r| r.address == 125 && r.count == 125));

    // A device with a short read buffer (exception 03 above 8 registers) is read too.
    dev.set_max_read(8);
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --unit 3 --table input --address 20 --count 12 --json"
    )))
    .await;
    let j = json_of(&o);
    for (i, row) in j["registers"].as_array().expect("rows").iter().enumerate() {
        assert_eq!(row["u16"], regs[20 + i], "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_over_rtu_on_a_pty_and_through_a_converter() {
    let (master, _keeper, path) = pty_pair().expect("pty");
    let server = SimServer::new();
    let (dev, regs) = meter();
    server.add(7, dev);
    tokio::spawn(server.clone().serve_rtu(master));
    let o = fieldlink(args(&format!(
        "probe --rtu {path} --baud 38400 --parity even --unit 7 --address 0 --count 40 --json"
    )))
    .await;
    check_every_decoding(&json_of(&o), &regs, 0, 40);

    let converter = SimServer::new();
    let (dev, regs) = meter();
    converter.add(9, dev);
    let port = converter.spawn_rtu_over_tcp().await.expect("converter");
    let o = fieldlink(args(&format!(
        "probe --rtu-over-tcp 127.0.0.1:{port} --unit 9 --address 0 --count 40 --json"
    )))
    .await;
    check_every_decoding(&json_of(&o), &regs, 0, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_bits() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    for a in [0u16, 3, 2100] {
        dev.set_bit(Table::Coil, a, true);
    }
    let port = server.spawn_local().await.expect("sim");
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --table coil --address 0 --count 2101 --json"
    )))
    .await;
    let j = json_of(&o);
    let rows = j["registers"].as_array().expect("rows");
    assert_eq!(rows.len(), 2101);
    for (a, row) in rows.iter().enumerate() {
        let on = [0, 3, 2100].contains(&a);
        assert_eq!(row, &serde_json::json!({"address": a, "bool": on}));
    }
    assert!(dev.log().iter().all(|r| r.count <= 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_watch_marks_the_register_that_changed() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    dev.set_registers(Table::Input, 0, &[215, 7, 9]);
    let port = server.spawn_local().await.expect("sim");
    let mut child = Command::new(fieldlink_bin())
        .args(args(&format!(
            "probe --tcp 127.0.0.1:{port} --table input --address 0 --count 3 --watch 100ms"
        )))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let take = |lines: &mut Vec<String>| {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
    };
    // The first reading: every address.
    assert!(
        eventually(Duration::from_secs(20), || {
            take(&mut lines);
            lines.iter().any(|l| l.trim_start().starts_with("2 "))
        })
        .await,
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.starts_with('*')), "{lines:?}");
    // The "temperature" changes: only its address is printed again, marked.
    dev.set_registers(Table::Input, 1, &[8]);
    assert!(
        eventually(Duration::from_secs(10), || {
            take(&mut lines);
            lines.iter().any(|l| l.starts_with('*'))
        })
        .await,
        "{lines:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let marked: Vec<&String> = lines.iter().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{lines:?}");
    let cols: Vec<&str> = marked[0][1..].split_whitespace().collect();
    assert_eq!(&cols[..3], ["1", "0008", "8"], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_yaml_drafts_points_that_check_accepts_once_topics_are_filled() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    // A meter with CDAB floats: 230.5 V at 0, 1.5 A at 2, a hole at 4-5, 50 Hz at 6.
    for (a, v) in [(0u16, 230.5f32), (2, 1.5), (6, 50.0)] {
        dev.set_registers(Table::Input, a, &regs32(v.to_bits(), "CDAB"));
    }
    dev.add_holes(Table::Input, [4, 5]);
    let port = server.spawn_local().await.expect("sim");
    let o = fieldlink(args(&format!(
        "probe --tcp 127.0.0.1:{port} --table input --address 0 --count 8 --yaml --type f32 --word-order cdab"
    )))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let draft = stdout(&o);
    for v in ["# now 230.5", "# now 1.5", "# now 50"] {
        assert!(draft.contains(v), "{draft}");
    }
    assert_eq!(draft.matches("topic: \"\"").count(), 3, "{draft}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: 127.0.0.1:0\n",
    )
    .expect("write");
    let mapping = |points: &str| {
        let indented: String = points.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port} }}\n\
             devices:\n  - id: meter\n    bus: b\n{indented}"
        )
    };
    let check = || {
        Command::new(fieldlink_bin())
            .args(["check", "--config"])
            .arg(dir.path().join("gateway.yaml"))
            .output()
            .expect("check")
    };
    // As drafted, the empty topics are refused...
    std::fs::write(dir.path().join("mapping.yaml"), mapping(&draft)).expect("write");
    assert_eq!(check().status.code(), Some(78));
    // ...and once filled, the draft is a valid mapping.
    let mut n = 0;
    let filled: String = draft
        .lines()
        .map(|l| {
            if l.contains("topic: \"\"") {
                n += 1;
                format!(
                    "{}\n",
                    l.replace("topic: \"\"", &format!("topic: casa/medidor/{n}"))
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("mapping.yaml"), mapping(&filled)).expect("write");
    let c = check();
    assert!(
        c.status.success(),
        "{}\n{filled}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(stdout(&c).contains("3 point(s)"), "{}", stdout(&c));
}

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

/// `fieldlink write` of `value` as `ty` in `order` at `address`; what the device got.
async fn write(port: u16, dev: &SimDevice, ty: &str, order: &str, value: &str) -> Vec<u16> {
    let o = fieldlink(args(&format!(
        "write --tcp 127.0.0.1:{port} --unit 1 --address 100 --type {ty} --word-order {order} {value}"
    )))
    .await;
    assert!(o.status.success(), "{ty} {order} {value}: {}", stderr(&o));
    assert!(stdout(&o).contains("Read back: "), "{}", stdout(&o));
    dev.registers(Table::Holding, 100, 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_lands_in_the_registers_in_every_type_and_order() {
    let server = SimServer::new();
    let dev = server.add(1, SimDevice::new());
    let port = server.spawn_local().await.expect("sim");
    for order in ORDERS {
        dev.set_registers(Table::Holding, 100, &[0; 4]);
        let got = write(port, &dev, "f32", order, "-21.1").await;
        assert_eq!(got[..2], regs32((-21.1f32).to_bits(), order), "f32 {order}");
        let got = write(port, &dev, "u32", order, "4000000001").await;
        assert_eq!(got[..2], regs32(4_000_000_001, order), "u32 {order}");
        let got = write(port, &dev, "i32", order, "-2000000001").await;
        assert_eq!(
            got[..2],
            regs32((-2_000_000_001i32) as u32, order),
            "i32 {order}"
        );
        let got = write(port, &dev, "f64", order, "1234.5678").await;
        assert_eq!(got, regs64(1234.5678f64.to_bits(), order), "f64 {order}");
        let got = write(port, &dev, "i64", order, "-9000000000000000001").await;
        assert_eq!(
            got,
            regs64((-9_000_000_000_000_000_001i64) as u64, order),
            "i64 {order}"
        );
    }
    dev.set_registers(Table::Holding, 100, &[0; 4]);
    assert_eq!(write(port, &dev, "i16", "ABCD", "-2").await[0], 0xFFFE);
    assert_eq!(write(port, &dev, "u16", "ABCD", "65535").await[0], 0xFFFF);
    // Function codes as the bus task chooses them: FC06 for one register, FC16 for more.
    let fcs: Vec<u8> = dev
        .log()
        .iter()
        .filter(|r| r.function != 3)
        .map(|r| r.function)
        .collect();
    assert_eq!(fcs.iter().filter(|f| **f == 6).count(), 2, "{fcs:?}");
    assert!(fcs.iter().all(|f| [6, 16].contains(f)), "{fcs:?}");
    // --multiple forces FC16, and FC15 on a coil; a coil takes ON as a /set would.
    dev.clear_log();
    let o = fieldlink(args(&format!(
        "write --tcp 127.0.0.1:{port} --unit 1 --address 7 --multiple --json 513"
    )))
    .await;
    let j = json_of(&o);
    assert_eq!(j["function"], 16);
    assert_eq!(j["written"]["registers"], serde_json::json!(["0201"]));
    assert_eq!(j["read_back"]["value"], 513);
    for (flags, fc) in [("", 5), ("--multiple", 15)] {
        dev.set_bit(Table::Coil, 3, false);
        let o = fieldlink(args(&format!(
            "write --tcp 127.0.0.1:{port} --unit 1 --table coil --address 3 {flags} ON"
        )))
        .await;
        assert!(o.status.success(), "{}", stderr(&o));
        let last = dev
            .log()
            .into_iter()
            .rfind(|r| r.function != 1)
            .expect("a write");
        assert_eq!((last.function, last.written.clone()), (fc, vec![1]));
    }
    assert!(stdout(
        &fieldlink(args(&format!(
            "write --tcp 127.0.0.1:{port} --unit 1 --table coil --address 3 off"
        )))
        .await
    )
    .contains("Read back: 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_over_rtu_lands_and_is_read_back() {
    let (master, _keeper, path) = pty_pair().expect("pty");
    let server = SimServer::new();
    let dev = server.add(4, SimDevice::new());
    tokio::spawn(server.serve_rtu(master));
    let o = fieldlink(args(&format!(
        "write --rtu {path} --unit 4 --address 10 --type f32 --word-order CDAB 21.5"
    )))
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        dev.registers(Table::Holding, 10, 2),
        regs32(21.5f32.to_bits(), "CDAB")
    );
    let text = stdout(&o);
    assert!(text.contains("Wrote 21.5 as f32 CDAB to unit 4, holding 10-11, with function 16 (registers 0000 41ac)."), "{text}");
    assert!(
        text.contains("Read back: 21.5 (registers 0000 41ac)."),
        "{text}"
    );
}

/// One line on standard error and the exit code.
fn refused(o: &Output) -> (Option<i32>, String) {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), lines[0].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_and_a_sysexits_code() {
    let server = SimServer::new();
    server.add(1, SimDevice::new());
    let port = server.clone().spawn_local().await.expect("sim");
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
        (format!("scan --rtu {path} --units 0-3"), 64),
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
        if want != 64 || !cmd.contains("--no-such-flag") {
            // Our own refusals are one line (clap's own usage errors add a usage block).
            if !stderr(&o).contains("Usage:") {
                refused(&o);
            }
        }
    }
    // Nothing was written by the refused writes.
    assert!(server
        .device(1)
        .expect("unit 1")
        .log()
        .iter()
        .all(|r| ![5, 6, 15, 16].contains(&r.function)));
}
