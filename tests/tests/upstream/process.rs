//! The gateway as a process (the `fieldlink` binary): stopped with SIGTERM or SIGKILL during
//! an outage and started again on the same queue, and its Last Will upstream.

use std::{path::Path, time::Duration};

use fieldlink_tests::{
    eventually,
    mosquitto::{Broker, BrokerOpts},
    process::fieldlink_bin,
    Msg, Observer, Proxy,
};
use rumqttc::QoS;

use crate::support::{by_topic, compare, device, gateway_yaml, newest_arrived, readings};

/// A gateway process on config files in `dir`.
struct Process {
    child: std::process::Child,
}

impl Process {
    fn start(dir: &Path) -> Process {
        let child = std::process::Command::new(fieldlink_bin())
            .args(["run", "--config"])
            .arg(dir.join("gateway.yaml"))
            .env(
                "RUST_LOG",
                std::env::var("CHILD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn fieldlink");
        Process { child }
    }

    fn signal(&mut self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config files for a gateway process: both brokers, upstream through `upstream_port`.
fn process_config(dir: &Path, embedded: u16, upstream_port: u16, mapping: &str) {
    let up = format!(
        "    url: mqtt://127.0.0.1:{upstream_port}\n    keepalive: 2s\n    queue:\n      flush_interval: 1s\n"
    );
    let gw = gateway_yaml(true, &up, &dir.join("state"))
        .replace("diagnostics_interval: 1h", "diagnostics_interval: 1s")
        .replace(
            "embedded:\n    listen: \"127.0.0.1:",
            &format!("embedded:\n    listen: \"127.0.0.1:{embedded}\"\n    #"),
        );
    std::fs::write(dir.join("gateway.yaml"), gw).expect("gateway.yaml");
    std::fs::write(dir.join("mapping.yaml"), mapping).expect("mapping.yaml");
}

/// Wait for the process's embedded broker to accept a connection, then subscribe to it.
async fn local_observer(port: u16) -> Observer {
    assert!(
        eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await,
        "gateway process did not start"
    );
    Observer::connect(port, "#", QoS::AtLeastOnce).await
}

/// The upstream queue depth as the process reports it on `<base>/diagnostics`.
fn queue_depth(m: &Msg) -> Option<u64> {
    if m.topic != "fieldlink/t/diagnostics" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&m.payload).ok()?;
    v.get("upstream")?.get("queue_depth")?.as_u64()
}

/// Wait until the process reports (`<base>/diagnostics`, every second) a queue depth for
/// which `ok` holds.
async fn wait_depth(obs: &mut Observer, ok: impl Fn(u64) -> bool, timeout: Duration) -> bool {
    obs.next_matching(|m| queue_depth(m).is_some_and(&ok), timeout)
        .await
        .is_some()
}

/// Stop the gateway with `signal` during an outage and restart it: (missing readings, of
/// those older than the last flush interval); `None` when mosquitto is missing (skipped).
async fn restart_during_outage(signal: &str) -> Option<(usize, usize)> {
    let broker = Broker::start(&BrokerOpts::default())?;
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (dev, mapping) = device(5, "100ms").await;
    let embedded = fieldlink_tests::free_port();
    process_config(dir.path(), embedded, proxy.port, &mapping);
    let mut sub = Observer::connect(broker.port, "casa/#", QoS::AtLeastOnce).await;
    let mut p1 = Process::start(dir.path());
    let mut local1 = local_observer(embedded).await;
    assert!(sub
        .next_on("casa/p0", Duration::from_secs(10))
        .await
        .is_some());
    // The uplink goes down; readings queue up (6 s of them at 50/s, as the process
    // reports); the gateway is stopped in the middle.
    proxy.set_accepting(false);
    proxy.cut();
    assert!(
        wait_depth(&mut local1, |d| d >= 300, Duration::from_secs(20)).await,
        "readings queued during the outage"
    );
    let killed_at = std::time::SystemTime::now();
    p1.signal(signal);
    let truth1 = local1.seen.lock().expect("lock").clone();
    let mut p2 = Process::start(dir.path());
    let mut local2 = local_observer(embedded).await;
    // The restarted gateway runs with its queue while the uplink is still down.
    assert!(
        wait_depth(&mut local2, |d| d > 0, Duration::from_secs(20)).await,
        "the restarted gateway queues"
    );
    proxy.set_accepting(true);
    // Drained: the restarted gateway reports an (almost) empty queue.
    assert!(
        wait_depth(&mut local2, |d| d < 20, Duration::from_secs(60)).await,
        "the queue was replayed"
    );
    // Stop the readings: once the device is offline, the local subscriber has them all;
    // then wait until the newest of each topic arrived upstream.
    dev.set_responding(false);
    assert!(
        local2
            .wait_seen(
                "fieldlink/t/meter/availability",
                "offline",
                Duration::from_secs(10)
            )
            .await,
        "the device went offline"
    );
    let mut truth = truth1;
    truth.extend(local2.seen.lock().expect("lock").iter().cloned());
    let truth = by_topic(&truth);
    assert!(
        newest_arrived(&sub, "", &truth, Duration::from_secs(20)).await,
        "the last readings arrived upstream"
    );
    // Everything the subscriber got (`seen` includes what `next_on` consumed).
    let got = readings(&sub, "");
    // What is missing, and how long before the stop each missing reading was taken.
    let bound =
        humantime::format_rfc3339_millis(killed_at - Duration::from_millis(1300)).to_string();
    let mut late = 0;
    for (topic, readings) in &truth {
        let set: std::collections::HashSet<&String> = got
            .get(topic)
            .map(|g| g.iter().collect())
            .unwrap_or_default();
        for r in readings.iter().filter(|r| !set.contains(r)) {
            if *r < bound {
                eprintln!(
                    "missing beyond the bound: {topic} {r} (stopped {})",
                    humantime::format_rfc3339_millis(killed_at)
                );
                late += 1;
            }
        }
    }
    let (missing, dups, disorder) = compare(&truth, &got);
    let total: usize = truth.values().map(Vec::len).sum();
    eprintln!("restart with {signal} during an outage: {total} readings, {missing} missing ({late} older than the last flush interval), {dups} duplicates, {disorder} out of order");
    assert_eq!(disorder, 0);
    assert!(
        total > 300,
        "readings before and after the restart: {total}"
    );
    p2.signal("-TERM");
    Some((missing, late))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_outage_loses_nothing() {
    // Without mosquitto `Broker::start` printed why (and failed under CI).
    let Some((missing, _)) = restart_during_outage("-TERM").await else {
        return;
    };
    assert_eq!(missing, 0, "SIGTERM loses nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_outage_loses_at_most_the_last_batch() {
    let Some((_, beyond_bound)) = restart_during_outage("-KILL").await else {
        return;
    };
    assert_eq!(
        beyond_bound, 0,
        "only readings of the last flush interval may be lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fires_the_last_will_upstream() {
    let Some(broker) = Broker::start(&BrokerOpts::default()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_dev, mapping) = device(1, "500ms").await;
    let embedded = fieldlink_tests::free_port();
    process_config(dir.path(), embedded, broker.port, &mapping);
    let mut sub = Observer::connect(broker.port, "fieldlink/t/status", QoS::AtLeastOnce).await;
    let mut p = Process::start(dir.path());
    assert!(
        sub.wait_payload("fieldlink/t/status", "online", Duration::from_secs(20))
            .await
    );
    p.signal("-KILL");
    assert!(
        sub.wait_payload("fieldlink/t/status", "offline", Duration::from_secs(10))
            .await,
        "the Last Will"
    );
    let mut late = Observer::connect(broker.port, "fieldlink/t/status", QoS::AtLeastOnce).await;
    let m = late
        .next_on("fieldlink/t/status", Duration::from_secs(5))
        .await
        .expect("retained");
    assert_eq!((m.payload.as_str(), m.retain), ("offline", true));
}
