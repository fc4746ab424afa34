//! `fieldlink probe`: every decoding, exceptions, limits, bits, `--watch`, `--yaml`.

use super::*;

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
