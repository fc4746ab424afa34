//! `fieldlink write`: every type and order, the function codes, the read-back.

use super::*;

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
