//! The RTU master against a tokio-modbus RTU server on the other end of a pseudo-terminal.

use std::time::Duration;

use fieldlink_drivers::{
    modbus::{
        rtu::{Parity, RtuTransport, SerialSettings},
        DriverError, ModbusTransport, ReadData, Table,
    },
    sim::{SimDevice, SimServer},
};

fn pty() -> (tokio_serial::SerialStream, std::fs::File, String) {
    fieldlink_drivers::sim::pty_pair().expect("pty pair")
}

fn settings(path: &str, baud: u32) -> SerialSettings {
    SerialSettings {
        path: path.to_string(),
        baud,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_three_units_on_one_line() {
    let (master, _slave, path) = pty();
    let server = SimServer::new();
    let devs: Vec<_> = (1..=3u8)
        .map(|u| {
            let d = server.add(u, SimDevice::new());
            d.set_registers(Table::Holding, 0, &[u16::from(u) * 100, 7]);
            d.set_bit(Table::Coil, 4, u == 2);
            d
        })
        .collect();
    tokio::spawn(server.serve_rtu(master));
    let mut t = RtuTransport::new(
        settings(&path, 38_400),
        Duration::from_millis(300),
        Duration::ZERO,
    );
    for u in 1..=3u8 {
        let r = t.read(u, Table::Holding, 0, 2).await.expect("read");
        assert_eq!(r, ReadData::Registers(vec![u16::from(u) * 100, 7]));
        let b = t.read(u, Table::Coil, 0, 10).await.expect("read bits");
        let ReadData::Bits(bits) = b else {
            panic!("bits")
        };
        assert_eq!(bits.len(), 10);
        assert_eq!(bits[4], u == 2);
    }
    t.write_registers(2, 10, &[0x1234, 0x5678], false)
        .await
        .expect("FC16");
    t.write_registers(3, 11, &[42], false).await.expect("FC06");
    t.write_coils(1, 3, &[true], false).await.expect("FC05");
    assert_eq!(
        devs[1].registers(Table::Holding, 10, 2),
        vec![0x1234, 0x5678]
    );
    assert_eq!(devs[2].registers(Table::Holding, 11, 1), vec![42]);
    let log = devs[0].log();
    assert_eq!(log.last().map(|r| r.function), Some(5));
    // An exception is reported by name.
    devs[0].add_holes(Table::Holding, [50]);
    let e = t.read(1, Table::Holding, 50, 1).await.expect_err("hole");
    assert!(e.is_illegal_address(), "{e}");
    // A unit that does not exist: a timeout, then the others answer again.
    let e = t
        .read(9, Table::Holding, 0, 1)
        .await
        .expect_err("no unit 9");
    assert!(matches!(e, DriverError::Timeout(_)), "{e}");
    assert!(t.read(1, Table::Holding, 0, 1).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_never_taken_for_the_next_answer() {
    let (master, _slave, path) = pty();
    let server = SimServer::new();
    let slow = server.add(1, SimDevice::new());
    let fast = server.add(2, SimDevice::new());
    slow.set_registers(Table::Holding, 0, &[1111]);
    fast.set_registers(Table::Holding, 0, &[2222]);
    slow.set_reply_delay(Duration::from_millis(150));
    tokio::spawn(server.serve_rtu(master));
    let mut t = RtuTransport::new(
        settings(&path, 115_200),
        Duration::from_millis(100),
        Duration::ZERO,
    );
    let mut good = 0;
    for _ in 0..5 {
        let e = t.read(1, Table::Holding, 0, 1).await;
        assert!(
            e.is_err(),
            "the slow unit's reply comes after the timeout: {e:?}"
        );
        let r = t.read(2, Table::Holding, 0, 1).await;
        // Either the right value or an error; never the slow unit's 1111.
        if let Ok(r) = r {
            assert_eq!(r, ReadData::Registers(vec![2222]));
            good += 1;
        }
    }
    // The master waited for the late reply to pass, so the fast unit was still read.
    assert_eq!(
        good, 5,
        "the fast unit answered after each late reply was discarded"
    );
    assert!(t.discarded >= 5, "late replies discarded: {}", t.discarded);
    slow.set_reply_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        t.read(2, Table::Holding, 0, 1).await.expect("fast unit"),
        ReadData::Registers(vec![2222])
    );
}

/// A misbehaving device: each request gets the next reply from a script (bad CRC, wrong
/// unit, wrong function, garbage, nothing, then a good reply). Each bad one is an error for
/// that request, never a value, and the request after it gets the right answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_crc_wrong_unit_and_garbage_are_errors_never_values() {
    use fieldlink_drivers::modbus::rtu::crc16;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut master, _slave, path) = pty();
    let frame = |body: &[u8]| {
        let mut f = body.to_vec();
        f.extend_from_slice(&crc16(body).to_le_bytes());
        f
    };
    let good = frame(&[1, 3, 2, 0x00, 0x2A]); // unit 1, FC03, one register = 42
    let mut bad_crc = good.clone();
    bad_crc[4] ^= 0xFF;
    let script: Vec<(&str, Vec<u8>)> = vec![
        ("bad CRC", bad_crc),
        ("wrong unit", frame(&[2, 3, 2, 0x00, 0x63])),
        ("wrong function", frame(&[1, 4, 2, 0x00, 0x63])),
        ("garbage", b"\xff\x00hello world\x13\x37".to_vec()),
        ("wrong length", frame(&[1, 3, 4, 0, 0x63, 0, 0x63])),
        ("good", good),
    ];
    let names: Vec<&str> = script.iter().map(|(n, _)| *n).collect();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        for (_, reply) in script {
            // One request (8 bytes for FC03).
            let mut got = 0;
            while got < 8 {
                match master.read(&mut buf[got..8]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let _ = master.write_all(&reply).await;
        }
        // Keep the line open.
        let _ = master.read(&mut buf).await;
    });
    let mut t = RtuTransport::new(
        settings(&path, 115_200),
        Duration::from_millis(150),
        Duration::ZERO,
    );
    for name in names {
        let r = t.read(1, Table::Holding, 0, 1).await;
        if name == "good" {
            assert_eq!(r, Ok(ReadData::Registers(vec![42])), "{name}");
        } else {
            assert!(r.is_err(), "{name}: must be an error, got {r:?}");
        }
    }
}
