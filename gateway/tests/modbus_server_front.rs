//! The Modbus server's network side as other masters see it: tokio-modbus's client and
//! the real `mbpoll` read every table and get exactly the backend's values; exceptions
//! arrive as the masters report them; writes reach the backend only when enabled;
//! pipelined requests are answered in order; the counters reach the diagnostics.
//! (Robustness: `modbus_server_robustness.rs`.)

mod modbus_front;

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use fieldlink::modbus_server::{ReadData, Table, Write};
use modbus_front::*;
use tokio::io::AsyncWriteExt;
use tokio_modbus::{client::Context, prelude::*, ExceptionCode};

async fn client(s: &Server, unit: u8) -> Context {
    tokio_modbus::client::tcp::connect_slave(s.addr, Slave(unit))
        .await
        .expect("connect")
}

fn registers(d: ReadData) -> Vec<u16> {
    match d {
        ReadData::Registers(r) => r,
        ReadData::Bits(_) => panic!("bits"),
    }
}

fn bits(d: ReadData) -> Vec<bool> {
    match d {
        ReadData::Bits(b) => b,
        ReadData::Registers(_) => panic!("registers"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_modbus_reads_every_table_exactly() {
    let s = Server::start(settings()).await;
    let mut c = client(&s, UNIT).await;
    for (start, count) in [(0, 1), (0, 125), (175, 125), (299, 1)] {
        let got = c.read_holding_registers(start, count).await.expect("io");
        assert_eq!(got, Ok(registers(expected(Table::Holding, start, count))));
        let got = c.read_input_registers(start, count).await.expect("io");
        assert_eq!(got, Ok(registers(expected(Table::Input, start, count))));
    }
    for (start, count) in [(0, 1), (0, 2000), (3, 13), (500, 1999), (2499, 1)] {
        let got = c.read_coils(start, count).await.expect("io");
        assert_eq!(got, Ok(bits(expected(Table::Coil, start, count))));
        let got = c.read_discrete_inputs(start, count).await.expect("io");
        assert_eq!(got, Ok(bits(expected(Table::Discrete, start, count))));
    }
    assert_eq!(s.stats.requests.load(Relaxed), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_reach_tokio_modbus_as_sent() {
    let s = Server::start(settings()).await;
    let mut c = client(&s, UNIT).await;
    // Unserved, and spanning served and unserved: 02.
    assert_eq!(
        c.read_holding_registers(REGS, 1).await.expect("io"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        c.read_coils(BITS - 2, 3).await.expect("io"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // The connection is kept after an exception.
    assert_eq!(
        c.read_input_registers(0, 2).await.expect("io"),
        Ok(vec![input(0), input(1)])
    );
    c.set_slave(Slave(OFFLINE));
    assert_eq!(
        c.read_input_registers(0, 2).await.expect("io"),
        Err(ExceptionCode::GatewayTargetDevice)
    );
    c.set_slave(Slave(9));
    assert_eq!(
        c.read_discrete_inputs(0, 2).await.expect("io"),
        Err(ExceptionCode::GatewayPathUnavailable)
    );
    assert_eq!(s.stats.exceptions(0x02), 2);
    assert_eq!(s.stats.exceptions(0x0B), 1);
    assert_eq!(s.stats.exceptions(0x0A), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_checks_follow_the_specification() {
    let s = Server::start(settings()).await;
    let mut c = s.connect().await;
    let ex = |fc: u8, code: u8| vec![fc | 0x80, code];
    // Quantity out of range: 03 (checked before the address).
    for (fc, max) in [(1u8, 2000u16), (2, 2000), (3, 125), (4, 125)] {
        assert_eq!(ask(&mut c, 1, UNIT, &pdu(fc, 0, 0)).await, ex(fc, 3));
        assert_eq!(ask(&mut c, 2, UNIT, &pdu(fc, 0, max + 1)).await, ex(fc, 3));
        assert_eq!(
            ask(&mut c, 3, UNIT, &pdu(fc, 65535, max + 1)).await,
            ex(fc, 3)
        );
        // Past address 65535: 02.
        assert_eq!(ask(&mut c, 4, UNIT, &pdu(fc, 65535, 2)).await, ex(fc, 2));
        // A PDU longer or shorter than its function's layout: 03.
        let mut long = pdu(fc, 0, 1);
        long.push(0);
        assert_eq!(ask(&mut c, 5, UNIT, &long).await, ex(fc, 3));
        assert_eq!(ask(&mut c, 6, UNIT, &long[..2]).await, ex(fc, 3));
    }
    // Functions this server does not offer: 01, writes included (writes: false).
    for fc in [
        0x00, 0x05, 0x06, 0x07, 0x08, 0x0F, 0x10, 0x11, 0x16, 0x17, 0x2B, 0x7F, 0x81,
    ] {
        assert_eq!(
            ask(&mut c, 7, UNIT, &pdu(fc, 0, 1)).await,
            ex(fc, 1),
            "{fc}"
        );
    }
    assert_eq!(ask(&mut c, 8, UNIT, &[0x11]).await, ex(0x11, 1));
    // Still served.
    let got = ask(&mut c, 0xBEEF, UNIT, &pdu(3, 7, 2)).await;
    let [a, b] = holding(7).to_be_bytes();
    let [x, y] = holding(8).to_be_bytes();
    assert_eq!(got, vec![3, 4, a, b, x, y]);
    assert_eq!(s.stats.exceptions(1), 14);
    assert_eq!(s.tables.writes.lock().expect("writes").len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(settings()).await;
    let mut c = s.connect().await;
    let mut both = adu(0x0102, UNIT, &pdu(3, 0, 2));
    both.extend(adu(0x0304, OFFLINE, &pdu(4, 0, 1)));
    both.extend(adu(0x0506, UNIT, &pdu(1, 0, 9)));
    c.write_all(&both).await.expect("send");
    let [h0, l0] = holding(0).to_be_bytes();
    let [h1, l1] = holding(1).to_be_bytes();
    assert_eq!(
        reply(&mut c).await,
        Some((0x0102, UNIT, vec![3, 4, h0, l0, h1, l1]))
    );
    assert_eq!(
        reply(&mut c).await,
        Some((0x0304, OFFLINE, vec![0x84, 0x0B]))
    );
    // Coils 0..9: 0, 3, 6 on; packed LSB first, padded with zeros.
    assert_eq!(
        reply(&mut c).await,
        Some((0x0506, UNIT, vec![1, 2, 0b0100_1001, 0]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_backend_only_when_enabled() {
    // writes: false: 01, and the backend never sees it.
    let s = Server::start(settings()).await;
    let mut c = client(&s, UNIT).await;
    assert_eq!(
        c.write_single_register(10, 0x1234).await.expect("io"),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        c.write_multiple_coils(10, &[true]).await.expect("io"),
        Err(ExceptionCode::IllegalFunction)
    );
    assert!(s.tables.writes.lock().expect("writes").is_empty());

    let mut on = settings();
    on.writes = true;
    let s = Server::start(on).await;
    let mut c = client(&s, UNIT).await;
    assert_eq!(
        c.write_single_register(10, 0x1234).await.expect("io"),
        Ok(())
    );
    assert_eq!(c.write_single_coil(7, true).await.expect("io"), Ok(()));
    assert_eq!(
        c.write_multiple_registers(20, &[1, 2, 3])
            .await
            .expect("io"),
        Ok(())
    );
    let coils = [true, false, true, true, false, false, false, false, true];
    assert_eq!(
        c.write_multiple_coils(30, &coils).await.expect("io"),
        Ok(())
    );
    // The point's checks refuse it: 03.
    assert_eq!(
        c.write_single_register(REFUSED, 5).await.expect("io"),
        Err(ExceptionCode::IllegalDataValue)
    );
    let w = |table, start, data| Write { table, start, data };
    let got: Vec<_> = s.tables.writes.lock().expect("writes").clone();
    let me = got[0].2;
    assert_eq!(me.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(
        got,
        vec![
            (
                UNIT,
                w(Table::Holding, 10, ReadData::Registers(vec![0x1234])),
                me
            ),
            (UNIT, w(Table::Coil, 7, ReadData::Bits(vec![true])), me),
            (
                UNIT,
                w(Table::Holding, 20, ReadData::Registers(vec![1, 2, 3])),
                me
            ),
            (UNIT, w(Table::Coil, 30, ReadData::Bits(coils.to_vec())), me),
            (
                UNIT,
                w(Table::Holding, REFUSED, ReadData::Registers(vec![5])),
                me
            ),
        ]
    );
    assert_eq!(s.stats.writes.load(Relaxed), 4);
    assert_eq!(s.stats.exceptions(3), 1);

    // The echoes, byte for byte; FC05 with a value other than FF00/0000: 03.
    let mut raw = s.connect().await;
    assert_eq!(
        ask(&mut raw, 1, UNIT, &pdu(6, 11, 0xABCD)).await,
        pdu(6, 11, 0xABCD)
    );
    assert_eq!(ask(&mut raw, 2, UNIT, &pdu(5, 12, 0)).await, pdu(5, 12, 0));
    assert_eq!(ask(&mut raw, 3, UNIT, &pdu(5, 12, 1)).await, vec![0x85, 3]);
    let fc16 = [16, 0, 40, 0, 2, 4, 0, 1, 0, 2];
    assert_eq!(ask(&mut raw, 4, UNIT, &fc16).await, pdu(16, 40, 2));
    let fc15 = [15, 0, 41, 0, 3, 1, 0b101];
    assert_eq!(ask(&mut raw, 5, UNIT, &fc15).await, pdu(15, 41, 3));
    assert_eq!(ask(&mut raw, 6, 9, &pdu(6, 1, 1)).await, vec![0x86, 0x0A]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_write_in_flight_finish() {
    let mut on = settings();
    on.writes = true;
    let s = Server::start(on).await;
    let mut idle = s.connect().await;
    let mut c = s.connect().await;
    c.write_all(&adu(7, UNIT, &pdu(6, SLOW, 42)))
        .await
        .expect("send");
    s.tables.slow_arrived.notified().await;
    s.trigger.trigger();
    // The idle connection is closed at once; the one writing is not.
    assert!(closed_without_reply(&mut idle).await);
    assert!(!s.task.is_finished());
    s.tables.release.notify_one();
    assert_eq!(reply(&mut c).await, Some((7, UNIT, pdu(6, SLOW, 42))));
    assert!(closed_without_reply(&mut c).await);
    tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve returns once every connection is closed")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_the_diagnostics() {
    let model = fieldlink::config::check_sources(
        std::path::Path::new("/gateway.yaml"),
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\n",
        |_, _| {
            vec![(
                "mapping.yaml".into(),
                "buses: []\ndevices: []\n".to_string(),
            )]
        },
    )
    .map_err(|d| format!("{d:?}"))
    .expect("model")
    .model;
    let stats = fieldlink::Stats::new(&model);
    assert!(stats.to_json().get("modbus_server").is_none());
    let s = Server::start(settings()).await;
    stats.set_modbus_server(Some(s.stats.clone()));
    let mut c = client(&s, UNIT).await;
    c.read_holding_registers(0, 1)
        .await
        .expect("io")
        .expect("read");
    c.read_holding_registers(REGS, 1)
        .await
        .expect("io")
        .expect_err("02");
    let doc = stats.to_json();
    let m = &doc["modbus_server"];
    assert_eq!(m["open"], 1);
    assert_eq!(m["accepted"], 1);
    assert_eq!(m["requests"], 2);
    assert_eq!(m["exceptions"], serde_json::json!({"02": 1}));
    let me = &m["clients"]["127.0.0.1"];
    assert_eq!(me["requests"], 2);
    assert_eq!(me["exceptions"], 1);
    assert!(me["last_seen_unix"].as_u64().expect("last seen") > 1_700_000_000);
}

/// Run mbpoll once (`-1`), 0-based references (`-0`); its values, or its error line.
async fn mbpoll(
    bin: &std::path::Path,
    port: u16,
    unit: u8,
    kind: &str,
    at: u16,
    n: u16,
) -> Result<Vec<u32>, String> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-m", "tcp", "-1", "-0", "-o", "5"])
        .args(["-p", &port.to_string(), "-a", &unit.to_string(), "-t", kind])
        .args(["-r", &at.to_string(), "-c", &n.to_string(), "127.0.0.1"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run mbpoll");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    // `[12]: \t0x1054` or `[3]: \t40968 (-24568)`.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let values: Vec<(u16, u32)> = text
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .map(|l| {
            let (i, v) = l.split_once("]:").expect("an mbpoll value line");
            let v = v.split_whitespace().next().expect("a value");
            let v = match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16),
                None => v.parse(),
            };
            (i.parse().expect("index"), v.expect("number"))
        })
        .collect();
    assert_eq!(
        values.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (at..at + n).collect::<Vec<_>>(),
        "{text}"
    );
    Ok(values.into_iter().map(|(_, v)| v).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_reads_the_same_values() {
    let Some(bin) = modbus_front::mbpoll() else {
        return;
    };
    let s = Server::start(settings()).await;
    let port = s.addr.port();
    let regs = |t, at, n| {
        registers(expected(t, at, n))
            .into_iter()
            .map(u32::from)
            .collect::<Vec<_>>()
    };
    let bits = |t, at, n| {
        bits(expected(t, at, n))
            .into_iter()
            .map(u32::from)
            .collect::<Vec<_>>()
    };
    // mbpoll reads at most 125 values at once, in every table.
    for (at, n) in [(0u16, 125u16), (175, 125), (42, 1)] {
        assert_eq!(
            mbpoll(&bin, port, UNIT, "4:hex", at, n).await,
            Ok(regs(Table::Holding, at, n))
        );
        assert_eq!(
            mbpoll(&bin, port, UNIT, "3:hex", at, n).await,
            Ok(regs(Table::Input, at, n))
        );
    }
    for (at, n) in [(0u16, 125u16), (2375, 125), (7, 9)] {
        assert_eq!(
            mbpoll(&bin, port, UNIT, "0", at, n).await,
            Ok(bits(Table::Coil, at, n))
        );
        assert_eq!(
            mbpoll(&bin, port, UNIT, "1", at, n).await,
            Ok(bits(Table::Discrete, at, n))
        );
    }
    let err = |e: &str| Err::<Vec<u32>, String>(e.to_string());
    assert_eq!(
        mbpoll(&bin, port, UNIT, "4", REGS - 1, 2).await,
        err("Read output (holding) register failed: Illegal data address")
    );
    assert_eq!(
        mbpoll(&bin, port, OFFLINE, "3", 0, 1).await,
        err("Read input register failed: Target device failed to respond")
    );
    assert_eq!(
        mbpoll(&bin, port, 9, "1", 0, 1).await,
        err("Read discrete input failed: Gateway path unavailable")
    );
}
