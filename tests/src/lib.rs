//! Shared helpers for fieldlink's end-to-end tests: a gateway under test (the real
//! `fieldlink::run_with`, its embedded broker on a port the system picks), an MQTT
//! observer (a separate rumqttc client, like a user's `mosquitto_sub`), and a TCP proxy
//! that can cut the gateway's MQTT connection the way a network fault does. [`process`] runs
//! the `fieldlink` binary as a child process.

pub mod homeassistant;
pub mod mbpoll;
pub mod mosquitto;
pub mod points;
pub mod process;
pub mod raw;
pub mod wire;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fieldlink::{broker::Bound, model::Model, shutdown, Stats};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound then released): another
/// process may take it before it is used, so it is only a candidate. Servers of our own
/// listen on port 0 instead ([`model`], [`Gateway::broker_port`]); mosquitto, which
/// cannot, is started with retries ([`mosquitto::Broker::start`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Build a model from a mapping file's text, with the embedded broker on 127.0.0.1 port 0
/// (the system picks the port; [`Gateway::broker_port`] tells it). `gateway_extra` is
/// appended to the generated gateway file.
pub fn model(mapping: &str, gateway_extra: &str) -> Model {
    let gateway = format!(
        "id: t\nmappings: mapping.yaml\nmqtt:\n  embedded:\n    listen: \"127.0.0.1:0\"\ndiagnostics_interval: 1h\n{gateway_extra}"
    );
    model_from(&gateway, mapping)
}

/// Build a model from a whole gateway file and a mapping file (`mapping.yaml`).
pub fn model_from(gateway: &str, mapping: &str) -> Model {
    match fieldlink::config::check_sources(Path::new("/gateway.yaml"), gateway, |_, _| {
        vec![(PathBuf::from("mapping.yaml"), mapping.to_string())]
    }) {
        Ok(c) => c.model,
        Err(d) => panic!(
            "test config is invalid:\n{}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// The gateway under test.
pub struct Gateway {
    trigger: shutdown::ShutdownTrigger,
    handle: JoinHandle<Result<(), fieldlink::RunError>>,
    /// Its model.
    pub model: Model,
    /// Its counters.
    pub stats: Arc<Stats>,
    /// Where its embedded broker listens, as bound (`None` without one).
    pub bound: Option<Bound>,
    /// Its broker store's directory, when the model had none of its own.
    _state: Option<tempfile::TempDir>,
}

/// A broker store of its own for a model whose store is under the default state
/// directory (every test gateway would otherwise read what the one before it stored).
fn isolate_store(model: &mut Model) -> Option<tempfile::TempDir> {
    let p = model.mqtt.embedded.as_mut()?.persistence.as_mut()?;
    if !p.file.starts_with(fieldlink::config::DEFAULT_STATE_DIR) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir for the broker store");
    p.file = dir.path().join(fieldlink::config::STORE_FILE);
    Some(dir)
}

impl Gateway {
    /// Start `run` in the background and wait until the embedded broker accepts clients.
    pub async fn start(model: Model) -> Gateway {
        Self::start_with(model, fieldlink::Hooks::default()).await
    }

    /// [`Gateway::start`] with hooks (e.g. simulated GPIO boards the test drives).
    pub async fn start_with(mut model: Model, mut hooks: fieldlink::Hooks) -> Gateway {
        let state = isolate_store(&mut model);
        let (trigger, sd) = shutdown::channel();
        let stats = Arc::new(Stats::new(&model));
        hooks.stats = Some(stats.clone());
        let (bound_tx, mut bound_rx) = watch::channel(None);
        hooks.bound = Some(bound_tx);
        let mut handle = tokio::spawn(fieldlink::run_with(model.clone(), sd, hooks));
        let bound = if model.mqtt.embedded.is_some() {
            // Sent once the broker admits clients; dropped unsent if `run_with` failed.
            let sent =
                tokio::time::timeout(Duration::from_secs(10), bound_rx.wait_for(Option::is_some))
                    .await
                    .expect("embedded broker listening within 10 s")
                    .map(|b| *b);
            match sent {
                Ok(b) => b,
                Err(_) => panic!(
                    "the gateway stopped before its broker listened: {:?}",
                    (&mut handle).await
                ),
            }
        } else {
            None
        };
        Gateway {
            trigger,
            handle,
            model,
            stats,
            bound,
            _state: state,
        }
    }

    /// The embedded broker's port, as bound (the model's `listen` may say 0).
    pub fn broker_port(&self) -> u16 {
        self.bound
            .map(|b| b.mqtt.port())
            .expect("the gateway has an embedded broker")
    }

    /// The embedded broker's TLS port, as bound (`mqtt.embedded.tls`).
    pub fn tls_port(&self) -> Option<u16> {
        self.bound.and_then(|b| b.tls).map(|a| a.port())
    }

    /// Trigger shutdown and wait for `run` to return.
    pub async fn stop(self) {
        self.trigger.trigger();
        let r = tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("gateway stops within 10 s")
            .expect("gateway task did not panic");
        r.expect("gateway run returned Ok");
    }
}

/// An MQTT client for publishing commands (its event loop runs in the background).
pub async fn publisher(port: u16) -> AsyncClient {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "pub-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 64);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    client
}

/// One message as a subscriber saw it.
#[derive(Clone, Debug)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// Payload as text.
    pub payload: String,
    /// The RETAIN flag as delivered.
    pub retain: bool,
    /// When it arrived.
    pub at: Instant,
}

/// A separate MQTT client that records everything it receives.
pub struct Observer {
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Every message so far (also the ones consumed by `next`).
    pub seen: Arc<Mutex<Vec<Msg>>>,
    _client: AsyncClient,
}

impl Observer {
    /// Connect to 127.0.0.1:`port` and subscribe to `filter` at `qos`, waiting for SUBACK.
    pub async fn connect(port: u16, filter: &str, qos: QoS) -> Observer {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "observer-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Self::connect_as(port, filter, qos, &id, true).await
    }

    /// [`Observer::connect`] with a client id and a persistent session (`clean: false`):
    /// a broker with persistence keeps its messages across a restart.
    pub async fn connect_as(port: u16, filter: &str, qos: QoS, id: &str, clean: bool) -> Observer {
        Self::connect_with(port, filter, qos, id, clean, None).await
    }

    /// [`Observer::connect_as`] with a user name and password.
    pub async fn connect_with(
        port: u16,
        filter: &str,
        qos: QoS,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
    ) -> Observer {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let c2 = client.clone();
        let filter = filter.to_string();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.subscribe(filter.clone(), qos).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Msg {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).to_string(),
                            retain: p.retain,
                            at: Instant::now(),
                        };
                        seen2.lock().expect("lock").push(m.clone());
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("observer subscribed within 10 s");
        Observer {
            rx,
            seen,
            _client: client,
        }
    }

    /// The next message on `topic` within `timeout` (other topics are skipped).
    pub async fn next_on(&mut self, topic: &str, timeout: Duration) -> Option<Msg> {
        self.next_matching(|m| m.topic == topic, timeout).await
    }

    /// The next message matching `pred` within `timeout`.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&Msg) -> bool,
        timeout: Duration,
    ) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Wait until `topic` carries `payload` (retained or live).
    pub async fn wait_payload(&mut self, topic: &str, payload: &str, timeout: Duration) -> bool {
        self.next_matching(|m| m.topic == topic && m.payload == payload, timeout)
            .await
            .is_some()
    }

    /// Wait until `topic` has carried `payload` at any time since this observer connected
    /// (unlike [`Observer::wait_payload`], order does not matter).
    pub async fn wait_seen(&mut self, topic: &str, payload: &str, timeout: Duration) -> bool {
        let seen = self.seen.clone();
        eventually(timeout, || {
            seen.lock()
                .expect("lock")
                .iter()
                .any(|m| m.topic == topic && m.payload == payload)
        })
        .await
    }

    /// Everything received during `d`.
    pub async fn collect(&mut self, d: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    /// Everything received until a message matching `last` (included) or `timeout`.
    pub async fn collect_until(
        &mut self,
        mut last: impl FnMut(&Msg) -> bool,
        timeout: Duration,
    ) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            let done = last(&m);
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Latest payload per topic of everything received during `d`.
    pub async fn snapshot(&mut self, d: Duration) -> HashMap<String, Msg> {
        self.collect(d)
            .await
            .into_iter()
            .map(|m| (m.topic.clone(), m))
            .collect()
    }
}

/// A TCP proxy in front of the broker: `cut()` drops every open connection without an
/// MQTT DISCONNECT (as a network fault would); `set_accepting(false)` refuses new ones.
pub struct Proxy {
    /// Port the proxy listens on.
    pub port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Start a proxy to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepting = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c2, a2) = (conns.clone(), accepting.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !a2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c2.lock().expect("lock").push(h);
            }
        });
        Proxy {
            port,
            conns,
            accepting,
        }
    }

    /// Drop every open connection (both sides see the socket close, no DISCONNECT).
    pub fn cut(&self) {
        for h in self.conns.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    /// Accept (true) or immediately close (false) new connections.
    pub fn set_accepting(&self, on: bool) {
        self.accepting
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Everything the gateway logs, from the moment [`capture_logs`] is first called (one
/// global subscriber for the test binary).
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let b2 = buf.clone();
        // The product's field formatter (`fieldlink::logs`), as `main` sets it up.
        let sub = tracing_subscriber::fmt()
            .fmt_fields(fieldlink::logs::EscapedFields)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(b2.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(sub);
        buf
    })
    .clone()
}

/// Whether the captured log holds `text`.
pub fn logged(text: &str) -> bool {
    let buf = capture_logs();
    let b = buf.lock().expect("lock");
    String::from_utf8_lossy(&b).contains(text)
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The Modbus task of `model`'s first bus over TCP to the simulator on 127.0.0.1:`port`
/// (5 s timeout), without commands or reloads, keeping what it reads in `snapshots` (the
/// Modbus server's): its published batches, its shutdown trigger and its task.
pub fn modbus_bus(
    model: &Arc<Model>,
    port: u16,
    snapshots: Option<fieldlink::modbus_server::Snapshots>,
) -> (
    mpsc::Receiver<Vec<fieldlink::Outgoing>>,
    shutdown::ShutdownTrigger,
    JoinHandle<()>,
) {
    let (out, rx) = mpsc::channel(1024);
    let (stop, sd) = shutdown::channel();
    let io = fieldlink::buses::BusIo {
        out,
        commands: mpsc::channel(1).1,
        control: mpsc::channel(1).1,
        stats: Arc::new(Stats::new(model)),
        shutdown: sd,
        snapshots,
    };
    let transport = fieldlink_drivers::modbus::tcp::TcpTransport::new(
        "127.0.0.1",
        port,
        Duration::from_secs(5),
    );
    let task = tokio::spawn(fieldlink::buses::run_modbus(
        model.clone(),
        model.buses[0].clone(),
        0,
        transport,
        io,
    ));
    (rx, stop, task)
}
