//! A faulty Modbus TCP device never makes the gateway publish a value it did not have:
//! a raw-byte server answers with each kind of malformed reply in turn (every fault phase
//! followed by a clean one); no value from a bad reply is published, every fault is
//! counted by kind in the device's diagnostics, and the clean phases still publish.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldlink_drivers::modbus::ReplyFault;
use fieldlink_tests::{model, Gateway, Observer};
use rumqttc::QoS;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const T: Duration = Duration::from_secs(10);

/// How the server answers the next requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Clean,
    /// Six registers for five asked.
    LongerThanAsked,
    /// A reply with the previous transaction id only.
    OldTransaction,
    /// The reply from another unit.
    OtherUnit,
    /// The reply for another function.
    OtherFunction,
    /// A protocol id other than 0.
    ProtocolId,
    /// The reply, then three bytes more.
    StrayAfter,
    /// Half a reply.
    Truncated,
    /// The clean reply, and then, unasked, a frame with a bad value.
    Unsolicited,
}

/// The bad value every malformed reply carries: it must never be published.
const BAD: u16 = 0xDEAD;

/// An MBAP reply to `tx` from `unit` for `function` with `regs`.
fn reply(tx: u16, proto: u16, unit: u8, function: u8, regs: &[u16]) -> Vec<u8> {
    let mut pdu = vec![function, (regs.len() * 2) as u8];
    for r in regs {
        pdu.extend_from_slice(&r.to_be_bytes());
    }
    let mut f = Vec::new();
    f.extend_from_slice(&tx.to_be_bytes());
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    f.push(unit);
    f.extend_from_slice(&pdu);
    f
}

async fn serve(listener: TcpListener, mode: Arc<Mutex<Mode>>) {
    while let Ok((mut s, _)) = listener.accept().await {
        let mode = mode.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 12];
            loop {
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let tx = u16::from_be_bytes([req[0], req[1]]);
                let (unit, function) = (req[6], req[7]);
                let count = usize::from(u16::from_be_bytes([req[10], req[11]]));
                let good: Vec<u16> = (0..count as u16).map(|a| 1000 + a).collect();
                let bad = vec![BAD; count];
                let m = *mode.lock().expect("mode");
                let out = match m {
                    Mode::Clean => reply(tx, 0, unit, function, &good),
                    Mode::LongerThanAsked => reply(tx, 0, unit, function, &vec![BAD; count + 1]),
                    Mode::OldTransaction => reply(tx.wrapping_sub(1), 0, unit, function, &bad),
                    Mode::OtherUnit => reply(tx, 0, unit.wrapping_add(1), function, &bad),
                    Mode::OtherFunction => reply(tx, 0, unit, 4, &bad),
                    Mode::ProtocolId => reply(tx, 7, unit, function, &bad),
                    Mode::StrayAfter => {
                        let mut r = reply(tx, 0, unit, function, &bad);
                        r.extend_from_slice(&[1, 2, 3]);
                        r
                    }
                    Mode::Truncated => {
                        let r = reply(tx, 0, unit, function, &bad);
                        r[..r.len() / 2].to_vec()
                    }
                    Mode::Unsolicited => reply(tx, 0, unit, function, &good),
                };
                if s.write_all(&out).await.is_err() {
                    return;
                }
                if m == Mode::Unsolicited {
                    // Between two polls: a frame for the next transaction id, unasked.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let stray = reply(tx.wrapping_add(1), 0, unit, function, &bad);
                    if s.write_all(&stray).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_from_a_malformed_reply_is_ever_published() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mode = Arc::new(Mutex::new(Mode::Clean));
    tokio::spawn(serve(listener, mode.clone()));
    let points: String = (0..5)
        .map(|a| {
            format!("      - {{ topic: bad/r{a}, table: holding, address: {a}, publish: every_poll }}\n")
        })
        .collect();
    let mapping = format!(
        "buses:\n  - {{ id: b, kind: modbus_tcp, host: 127.0.0.1, port: {port}, timeout: 200ms }}\ndevices:\n  - id: d\n    bus: b\n    poll_interval: 100ms\n    offline_after: 1000\n    points:\n{points}"
    );
    let gw = Gateway::start(model(&mapping, "")).await;
    let mut obs = Observer::connect(gw.broker_port(), "bad/#", QoS::AtMostOnce).await;
    assert!(obs.wait_seen("bad/r4", "1004", T).await);
    let phases = [
        (Mode::LongerThanAsked, ReplyFault::Length),
        (Mode::OldTransaction, ReplyFault::TransactionId),
        (Mode::OtherUnit, ReplyFault::Unit),
        (Mode::OtherFunction, ReplyFault::Function),
        (Mode::ProtocolId, ReplyFault::Protocol),
        (Mode::StrayAfter, ReplyFault::Stray),
        (Mode::Truncated, ReplyFault::Length),
        (Mode::Unsolicited, ReplyFault::Stray),
    ];
    let stats = gw.stats.devices()[0].clone();
    for (m, kind) in phases {
        let before = stats.rejected(kind);
        *mode.lock().expect("mode") = m;
        let counted = fieldlink_tests::eventually(T, || stats.rejected(kind) >= before + 2).await;
        assert!(counted, "{m:?}: counted as {kind}");
        *mode.lock().expect("mode") = Mode::Clean;
        // A clean phase after each fault: the real value is published again.
        let seen = obs.collect(Duration::from_millis(400)).await;
        assert!(
            seen.iter().all(|s| s.payload != BAD.to_string()),
            "{m:?}: a value from a bad reply was published: {seen:?}"
        );
        let back = fieldlink_tests::eventually(T, || {
            obs.seen
                .lock()
                .map(|v| {
                    v.iter()
                        .rev()
                        .take(5)
                        .any(|s| s.topic == "bad/r0" && s.payload == "1000")
                })
                .unwrap_or(false)
        })
        .await;
        assert!(back, "{m:?}: clean values again");
    }
    let all = obs.collect(Duration::from_millis(300)).await;
    assert!(all.iter().all(|s| s.payload != BAD.to_string()));
    let seen = obs.seen.lock().expect("seen").clone();
    assert!(
        seen.iter().all(|s| s.payload != BAD.to_string()),
        "never published"
    );
    gw.stop().await;
}
