//! The embedded broker's memory is bounded as a whole: on the demo house (`fieldlink
//! demo`, a child process whose resident set is measured), `max_connections` clients each
//! push every per-client bound at once: subscriptions (to `max_subscriptions`, so the
//! total is reached too), retained messages (to the clients' retained bound), packets at
//! `max_packet_size`, and persistent sessions that go offline and are fed until every
//! queue is at `max_queued_bytes` and all together at `max_queued_bytes_total`. The peak
//! stays under 128 MiB at the defaults; with the clients gone (sessions discarded,
//! retained messages cleared) the resident set comes back within 5 MiB of where it was.

use std::time::Duration;

use fieldlink_tests::process::Fieldlink;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use tokio::{sync::mpsc, task::JoinHandle};

const T: Duration = Duration::from_secs(30);
/// The defaults under test (README "Embedded broker on the house network").
const MAX_CONNECTIONS: usize = 32;
const MAX_SUBSCRIPTIONS: usize = 10_000;
const MAX_PACKET: usize = 256 * 1024;

/// A `VmXXX:` line of /proc/<pid>/status, in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The resident set once it has stopped moving (two readings 1 s apart within 0.25 MiB).
async fn settled_rss(pid: u32) -> f64 {
    let mut last = status_mib(pid, "VmRSS:");
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = status_mib(pid, "VmRSS:");
        if (now - last).abs() < 0.25 {
            return now;
        }
        last = now;
    }
    last
}

struct Client {
    client: AsyncClient,
    task: JoinHandle<()>,
    rx: mpsc::UnboundedReceiver<Packet>,
}

impl Client {
    async fn connect(port: u16, id: &str, clean: bool) -> Client {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(2 * MAX_PACKET, 2 * MAX_PACKET);
        o.set_inflight(32);
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let name = id.to_string();
        let task = tokio::spawn(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(ev) => ev,
                    Err(e) => {
                        eprintln!("{name}: connection ended: {e}");
                        return;
                    }
                };
                match ev {
                    Event::Incoming(p) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    // DISCONNECT written: close (rumqttc would leave the socket open).
                    Event::Outgoing(Outgoing::Disconnect) => return,
                    Event::Outgoing(_) => {}
                }
            }
        });
        match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(Packet::ConnAck(_))) => {}
            other => panic!("{id}: no CONNACK: {other:?}"),
        }
        Client { client, task, rx }
    }

    /// Wait for `n` packets that `pred` accepts.
    async fn expect(&mut self, n: usize, what: &str, pred: impl Fn(&Packet) -> bool) {
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(T, self.rx.recv()).await {
                Ok(Some(p)) if pred(&p) => got += 1,
                Ok(Some(_)) => {}
                other => panic!("{what}: {got} of {n}, then {other:?}"),
            }
        }
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(T, self.task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bound_at_once_stays_under_128_mib_and_is_given_back() {
    let gw = Fieldlink::demo();
    let port = gw.broker_port(T).await;
    let pid = gw.pid();
    // The house running: every device online.
    gw.expect_log(0, "device=medidor-garagem", T).await;
    let base = settled_rss(pid).await;
    eprintln!("demo house, no clients: {base:.1} MiB");

    // The test's own client first, subscribed to the diagnostics before the subscription
    // total is reached.
    let mut publisher = Client::connect(port, "mem-pub", true).await;
    publisher
        .client
        .subscribe("fieldlink/casa/diagnostics", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    publisher
        .expect(1, "SUBACK", |p| matches!(p, Packet::SubAck(_)))
        .await;

    // Every client: a persistent session on `load/#`, then `max_subscriptions` more (the
    // total is reached after the first two), then retained messages of 16 KiB until the
    // clients' retained bound refuses them, then gone (its session stays).
    let payload = vec![b'r'; 16 * 1024];
    // First every session's `load/#` (before the subscription total is reached).
    for i in 0..MAX_CONNECTIONS {
        let mut c = Client::connect(port, &format!("mem-{i}"), false).await;
        c.client
            .subscribe("load/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        c.expect(1, "SUBACK load/#", |p| matches!(p, Packet::SubAck(_)))
            .await;
        c.close().await;
    }
    for i in 0..MAX_CONNECTIONS {
        let mut c = Client::connect(port, &format!("mem-{i}"), false).await;
        // `max_subscriptions` more than it may hold: the last are refused.
        let batches = MAX_SUBSCRIPTIONS / 100;
        for b in 0..batches {
            let filters = (0..100)
                .map(|k| SubscribeFilter::new(format!("mem/{i}/{b}/{k}/#"), QoS::AtMostOnce));
            c.client
                .subscribe_many(filters)
                .await
                .expect("subscribe_many");
        }
        c.expect(batches, "SUBACKs", |p| matches!(p, Packet::SubAck(_)))
            .await;
        for k in 0..40 {
            c.client
                .publish(
                    format!("ret/{i}/{k}"),
                    QoS::AtLeastOnce,
                    true,
                    payload.clone(),
                )
                .await
                .expect("publish");
        }
        c.expect(40, "PUBACKs", |p| matches!(p, Packet::PubAck(_)))
            .await;
        c.close().await;
    }
    // Messages at `max_packet_size` for everyone, until every queue is full and the
    // total is reached: each session takes 1 MiB, all of them 16 MiB.
    let big = vec![b'q'; MAX_PACKET - 1024];
    for n in 0..12 {
        publisher
            .client
            .publish(format!("load/{n}"), QoS::AtLeastOnce, false, big.clone())
            .await
            .expect("publish");
    }
    publisher
        .expect(12, "PUBACKs", |p| matches!(p, Packet::PubAck(_)))
        .await;
    // The bounds are reached, as the gateway itself reports them (diagnostics every 10 s
    // in the demo): every subscription the total allows, 16 MiB held for the offline
    // sessions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut report = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(Packet::Publish(p))) = tokio::time::timeout(T, publisher.rx.recv()).await
        else {
            continue;
        };
        if p.topic != "fieldlink/casa/diagnostics" {
            continue;
        }
        report = serde_json::from_slice(&p.payload).unwrap_or_default();
        let subs = report["broker"]["subscriptions"].as_i64().unwrap_or(0);
        let held = report["broker"]["offline"]["bytes"].as_u64().unwrap_or(0);
        if subs >= 20_000 && held >= 15 << 20 {
            break;
        }
    }
    let subs = report["broker"]["subscriptions"].as_i64().unwrap_or(0);
    let held = report["broker"]["offline"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        subs >= 20_000 && held >= 15 << 20,
        "the bounds were not reached: {subs} subscriptions, {held} bytes held offline: {report}"
    );
    let loaded = settled_rss(pid).await;
    let peak = status_mib(pid, "VmHWM:");
    eprintln!("every bound reached: {loaded:.1} MiB now, {peak:.1} MiB at the peak");
    assert!(
        peak < 128.0,
        "peak resident set {peak:.1} MiB with every bound reached (limit 128 MiB)"
    );

    // The clients gone: each session discarded (clean session), their retained messages
    // cleared.
    for i in 0..MAX_CONNECTIONS {
        Client::connect(port, &format!("mem-{i}"), true)
            .await
            .close()
            .await;
        for k in 0..40 {
            publisher
                .client
                .publish(format!("ret/{i}/{k}"), QoS::AtLeastOnce, true, Vec::new())
                .await
                .expect("clear");
        }
        publisher
            .expect(40, "PUBACKs", |p| matches!(p, Packet::PubAck(_)))
            .await;
    }
    publisher.close().await;
    let mut after = settled_rss(pid).await;
    // Freed memory goes back to the system in the background (the broker trims its heap
    // once many subscriptions or sessions were released): wait for it, bounded.
    for _ in 0..30 {
        if after <= base + 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = status_mib(pid, "VmRSS:");
    }
    eprintln!("clients gone: {after:.1} MiB (start {base:.1} MiB)");
    assert!(
        after <= base + 5.0,
        "resident set {after:.1} MiB once the clients are gone, {base:.1} MiB at the start"
    );
    drop(gw);
}
