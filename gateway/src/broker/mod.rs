//! The embedded MQTT broker: rmqtt, hardened for a home network.
//!
//! rmqtt serves MQTT 3.1, 3.1.1 and 5 on one port, QoS 0–2, persistent sessions, Last
//! Wills and (with its `rmqtt-retainer` plugin, in memory) retained messages. What it
//! lacks for a house is built here around it:
//!
//! - [`passwd`]: logins from a `mosquitto_passwd` file;
//! - [`acl`]: rights from a Mosquitto `acl_file`, and the topics only the gateway writes;
//! - `policy`: the rmqtt hook that applies both, logs connects and refusals (refusals
//!   rate-limited) and counts for diagnostics;
//! - `delivery`: read rights checked again on every delivery (a session taken over by
//!   another user, queued and in-flight messages), through rmqtt's message expiry hook;
//! - `subscriptions`: `max_subscriptions` per client and `max_subscriptions_total`, and
//!   the broker's count of them in diagnostics;
//! - `discovery`: no client publishes a discovery config that claims the gateway's
//!   entities or devices, whatever its topic;
//! - `requests`: commissioning requests (`<base>/bus/<id>/request`): who may send one,
//!   and where its answer may go;
//! - `sys`: Mosquitto-style `$SYS/broker/...` topics;
//! - `front`: every client connection passes through it before rmqtt (which listens
//!   only on loopback): the bounds before CONNECT, the topic-name, client-id and
//!   packet-size rules, and session ownership ([`owners`]); `relay` carries a
//!   connection after its CONNECT; `packet` reads just enough MQTT for both;
//! - `reaper`: removes sessions rmqtt leaves behind when a client resets during the
//!   handshake (they would fill `max_connections` and lock everyone out);
//! - `queues`: the count and byte bounds of what offline persistent sessions hold;
//! - `trim`: the heap given back once many subscriptions, queued or retained bytes were
//!   released;
//! - `store`: clients' retained messages and persistent sessions on disk (`persistence`);
//! - `link`: the gateway's own side, in process: its messages go straight into the
//!   router and retained store, and allowed client commands come back from the rights
//!   check (the gateway is not a network client of its own broker);
//! - supervision: the broker runs on its own thread and runtime; if it fails it is
//!   rebuilt and listening again within a second, clients reconnect, and the gateway
//!   publishes its retained state into the new broker.

pub mod acl;
mod delivery;
mod discovery;
pub(crate) mod front;
mod link;
pub mod owners;
mod packet;
pub mod passwd;
mod policy;
mod queues;
mod reaper;
mod relay;
mod requests;
mod store;
mod subscriptions;
mod sys;
mod tls;
mod trim;

use std::{
    net::{SocketAddr, TcpStream},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use rmqtt::{context::ServerContext, hook::Type, net::Builder, server::MqttServer};
use thiserror::Error;
use tracing::{error, info, warn};

pub use link::{ClientCommand, Inbox, Link, Reply, ReplyTo, Requester, Routed, Serving};
pub use store::{Restored, Saver};

use crate::{health::BrokerStats, model::EmbeddedBroker, topics::LiveContract, Model};

/// A problem in a users or rights file, with its 1-based line (0: the file as a whole).
#[derive(Debug, Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number (0: the file as a whole).
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// Read `path` and parse it; a file that cannot be read is one error at line 0.
fn load_file<T>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, Vec<LineError>>,
) -> Result<T, Vec<LineError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![LineError {
            line: 0,
            message: format!("cannot read it: {e}"),
        }]
    })?;
    parse(&text)
}

/// Why the embedded broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The listen address is taken.
    #[error("the embedded MQTT broker cannot listen on {addr}: address already in use (is another broker such as mosquitto running?); change `mqtt.embedded.listen` in the gateway file (e.g. 127.0.0.1:1884), or pass --listen to `fieldlink demo`")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Any other bind error.
    #[error(
        "the embedded MQTT broker cannot listen on {addr}: {source}; check `mqtt.embedded.listen`"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The broker did not come up.
    #[error("the embedded MQTT broker did not accept connections on {0} within 5s")]
    NotReady(SocketAddr),
    /// Thread or runtime start failed.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// Longest an offline persistent session is kept (MQTT 5 clients may ask for less).
const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Longest a queued message waits for an offline client (rmqtt's default is 5 min).
const MESSAGE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How long a broker that failed waits before it is rebuilt, at first and at most.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_millis(800);

/// Most retained topics the broker keeps.
fn retained_limit(model: &Model) -> usize {
    // Point topics, device availability, status, diagnostics, $SYS; clients are held to
    // their own bound by the policy, so they can never take the gateway's room.
    model.points().count() + model.devices().count() + policy::CLIENT_RETAINED_TOPICS + 1000
}

/// The addresses the embedded broker listens on, as bound: where the configuration
/// says port 0, the port the system chose. A broker rebuilt after a failure binds the
/// same addresses again, so clients find it where they found it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The MQTT listener (`mqtt.embedded.listen`).
    pub mqtt: SocketAddr,
    /// The MQTT over TLS listener (`mqtt.embedded.tls.listen`), when there is one.
    pub tls: Option<SocketAddr>,
}

/// Build one rmqtt server (context, retainer, our hook) and its listeners, on the
/// addresses of `at` (a rebuild) or else the configured ones. A bind error is returned as
/// the user should see it.
async fn build(
    model: &Model,
    contract: &LiveContract,
    cfg: &EmbeddedBroker,
    stats: &Arc<BrokerStats>,
    ends: Ends<'_>,
    at: Option<Bound>,
) -> Result<(MqttServer, Bound), BrokerError> {
    let Ends { end, store, owners } = ends;
    let addr = at.map_or(cfg.listen, |b| b.mqtt);
    let retainer = format!(
        "storage.type = \"ram\"\nmax_retained_messages = {}\nmax_payload_size = \"{}B\"\nretained_message_ttl = \"0s\"\n",
        retained_limit(model),
        cfg.max_packet_size
    );
    let scx = ServerContext::new()
        // rmqtt refuses every new client while the machine's load average is high: on a
        // busy Pi that would lock Home Assistant out. The gateway limits by count.
        .busy_check_enable(false)
        // No session limit in rmqtt: it counts offline sessions too and checks before the
        // login, so strangers could lock the gateway out. Connected clients are limited
        // in the policy; offline sessions expire and are bounded by the reaper.
        .mqtt_max_sessions(0)
        .plugins_config_map_add("rmqtt-retainer", retainer)
        .build()
        .await;
    if let Err(e) = rmqtt_retainer::register(&scx, true, false).await {
        return Err(BrokerError::Thread(std::io::Error::other(e.to_string())));
    }
    let policy = Arc::new(policy::Policy::new(model, cfg, contract.clone()));
    let retained = Arc::new(policy::ClientRetained::default());
    let online = register_hooks(&scx, cfg, (&policy, &retained), stats, end).await;
    let queues = queues::start(&scx, cfg.queues, stats).await;
    if let Some(store) = store {
        let rules = store::Rules {
            policy: &policy,
            retained: &retained,
            listen_cfg: Arc::new(listener_builder(cfg, addr).name("mqtt")),
            listener_id: at.map_or(cfg.listen.port(), |b| b.mqtt.port()),
            max_sessions: 4 * cfg.max_connections,
        };
        // Each re-created session belongs to the user who made it, as before the restart:
        // another user taking its client id starts clean (the front).
        let restored = store.start(&scx, model, contract, &rules, &queues).await;
        for (client_id, user) in &restored.owners {
            owners.set(client_id, user.as_deref());
        }
    }
    tokio::spawn(sys::publish(scx.clone(), stats.clone(), cfg.sys_interval));
    // The gateway's messages: if their task fails (a panic in rmqtt's routing ends only
    // that task), the broker is rebuilt, as for any other failure; nothing would carry
    // the gateway's messages otherwise.
    let serve = tokio::spawn(end.serve(scx.clone(), stats.clone(), &model.mqtt.client_id));
    let watch = stats.clone();
    tokio::spawn(async move {
        if serve.await.is_err() {
            error!("Embedded broker routing task failed; rebuilding the broker.");
            watch.fault.notify_one();
        }
    });
    tokio::spawn(trim::give_back(
        scx.clone(),
        retained.clone(),
        stats.clone(),
    ));
    tokio::spawn(reaper::run(
        scx.clone(),
        stats.clone(),
        online,
        4 * cfg.max_connections,
    ));
    // The front listens where clients connect; rmqtt only on loopback behind it, on a
    // port the system picks (held from bind to close, so no other process can take
    // it), a PROXY header first.
    let plain = front::bind(addr).await?;
    let mqtt = plain
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let loopback = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let inner_listener = listener_builder(cfg, loopback)
        .name("mqtt")
        .proxy_protocol(true)
        .proxy_protocol_timeout(cfg.connect_timeout)
        .bind()
        .and_then(|l| l.tcp())
        .map_err(|e| bind_error(loopback, e))?;
    let inner = inner_listener
        .local_addr()
        .map_err(|e| bind_error(loopback, e))?;
    // Listener ids are ports (rmqtt shows them in client ids): the one clients use.
    let server = MqttServer::new(scx).listener_by_id(inner_listener, mqtt.port());
    let settings = front::Settings::new(cfg, &model.mqtt.client_id);
    let front = front::Front::new(settings, stats.clone(), owners.clone(), inner);
    tokio::spawn(front::serve(front.clone(), plain, None));
    let mut bound = Bound { mqtt, tls: None };
    if let Some(t) = &cfg.tls {
        let outer = at.and_then(|b| b.tls).unwrap_or(t.listen);
        let (tls_listener, acceptor) = tls::bind(t, outer).await?;
        let tls_addr = tls_listener
            .local_addr()
            .map_err(|source| BrokerError::Bind {
                addr: outer,
                source,
            })?;
        tokio::spawn(front::serve(front, tls_listener, Some(acceptor)));
        info!(listen = %tls_addr, "Embedded broker TLS listener ready.");
        bound.tls = Some(tls_addr);
    }
    Ok((server.build(), bound))
}

/// What outlives a rebuilt broker and each build is handed: the gateway's end of the
/// link, the store on disk, the owners of the sessions.
#[derive(Clone, Copy)]
struct Ends<'a> {
    end: &'a link::BrokerEnd,
    store: Option<&'a store::StoreEnd>,
    owners: &'a Arc<owners::Owners>,
}

/// Register the login and rights checks and the counters (rmqtt's hooks) on `scx`;
/// returns the set of connected clients they keep (the reaper reads it).
async fn register_hooks(
    scx: &ServerContext,
    cfg: &EmbeddedBroker,
    (policy, retained): (&Arc<policy::Policy>, &Arc<policy::ClientRetained>),
    stats: &Arc<BrokerStats>,
    end: &link::BrokerEnd,
) -> Arc<policy::Online> {
    let online = Arc::new(policy::Online::default());
    let register = scx.extends.hook_mgr().register();
    for t in [
        Type::ClientAuthenticate,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::MessagePublish,
        Type::MessageDelivered,
    ] {
        register
            .add(
                t,
                Box::new(policy::Guard::new(
                    policy.clone(),
                    stats.clone(),
                    online.clone(),
                    retained.clone(),
                    end.commands(),
                )),
            )
            .await;
    }
    // Rights on delivery (only with a rights file: nothing runs per message without
    // one) and the subscription bounds, checked before the rights (priority 1).
    if cfg.acl.is_some() {
        let rights = delivery::DeliveryRights::new(policy.clone(), stats.clone());
        register
            .add(Type::MessageExpiryCheck, Box::new(rights))
            .await;
    }
    let limits = subscriptions::SubscriptionLimits::new(
        cfg.max_subscriptions,
        cfg.max_subscriptions_total,
        scx.clone(),
        stats.clone(),
    );
    register
        .add_priority(Type::ClientSubscribeCheckAcl, 1, Box::new(limits))
        .await;
    register.start().await;
    online
}

/// The settings of rmqtt's listener (behind the front, on loopback).
fn listener_builder(cfg: &EmbeddedBroker, addr: SocketAddr) -> Builder {
    Builder::new()
        .laddr(addr)
        .reuseaddr(Some(true))
        // One more for the start-up check, which logs in with the gateway's id; clients are
        // limited to `max_connections` by the policy, and those still in CONNECT by the
        // front (which forwards only complete CONNECTs).
        .max_connections(cfg.max_connections + cfg.max_connecting + 1)
        .max_handshaking_limit(cfg.max_connecting + 1)
        .handshake_timeout(cfg.connect_timeout)
        // The front refuses bigger packets first; rmqtt announces it in MQTT 5's CONNACK.
        .max_packet_size(cfg.max_packet_size)
        .max_topic_aliases(front::TOPIC_ALIASES)
        // Every login goes through our hook, anonymous ones included.
        .allow_anonymous(false)
        .max_mqueue_len(queues::rmqtt_queue_len(&cfg.queues))
        .max_inflight(std::num::NonZeroU16::new(128).unwrap_or(std::num::NonZeroU16::MIN))
        .max_clientid_len(256)
        // A client silent for 1.5 × its keepalive is closed (MQTT 3.1.1 §3.1.2.10):
        // rmqtt waits keepalive × backoff × 2.
        .keepalive_backoff(0.75)
        .max_session_expiry_interval(MAX_SESSION_EXPIRY)
        .message_expiry_interval(MESSAGE_EXPIRY)
}

fn bind_error(addr: SocketAddr, e: rmqtt::Error) -> BrokerError {
    match e.downcast::<std::io::Error>() {
        Ok(io) if io.kind() == std::io::ErrorKind::AddrInUse => BrokerError::AddrInUse { addr },
        Ok(source) => BrokerError::Bind { addr, source },
        Err(e) => BrokerError::Bind {
            addr,
            source: std::io::Error::other(e.to_string()),
        },
    }
}

/// Connect and wait for CONNACK with the gateway's credentials: proves the broker
/// serves MQTT and admits the gateway.
fn mqtt_probe(addr: SocketAddr, client_id: &str, secret: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    // Clean session, user name and password: the gateway's own identity.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 10];
    for f in [
        client_id.as_bytes(),
        client_id.as_bytes(),
        secret.as_bytes(),
    ] {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
    }
    let mut pkt = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        pkt.push(b);
        if len == 0 {
            break;
        }
    }
    pkt.extend_from_slice(&body);
    s.write_all(&pkt)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other("unexpected CONNACK"));
    }
    let _ = s.write_all(&[0xE0, 0]);
    Ok(())
}

fn probe_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// A panic inside rmqtt's code ends only the task it happened in (a connection, or the
/// broker, which the supervisor rebuilds), and is logged; any other panic aborts the
/// process as before (systemd restarts it), since the gateway's own tasks are not
/// written to survive one. Call once, at start.
pub fn panic_policy() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_broker = info.location().is_some_and(|l| l.file().contains("rmqtt"));
        if in_broker {
            error!(panic = %info, "Embedded broker task failed; it is restarted.");
        } else {
            default(info);
            std::process::abort();
        }
    }));
}

/// Start the embedded broker on its own thread and runtime, supervised; returns, once
/// it accepts connections, the gateway's link to it (`None` without an embedded broker).
/// The addresses it bound (the port the system chose for a configured port 0) are sent
/// on `bound`, at that moment; they stay the same for the life of the process.
pub fn start(
    model: Arc<Model>,
    contract: LiveContract,
    stats: Arc<BrokerStats>,
    bound: Option<tokio::sync::watch::Sender<Option<Bound>>>,
) -> Result<Option<Link>, BrokerError> {
    let Some(cfg) = model.mqtt.embedded.clone() else {
        return Ok(None);
    };
    let addr = cfg.listen;
    let client_id = model.mqtt.client_id.clone();
    let secret = cfg.secret.0.clone();
    // A bind error comes back here, so that it reaches the caller.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Bound, BrokerError>>();
    let (mut link, end) = link::pair();
    warn_open_files(&cfg);
    // Owners of the sessions: more than the broker keeps (connected clients, and 4 ×
    // `max_connections` offline sessions).
    let owners = Arc::new(owners::Owners::new(8 * cfg.max_connections + 64));
    let (saver, store) = store::pair(cfg.persistence.as_ref(), &stats);
    link.store = saver;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let ends = Ends {
                end: &end,
                store: store.as_ref(),
                owners: &owners,
            };
            supervise(&model, &contract, &cfg, &stats, ends, ready_tx);
        })
        .map_err(BrokerError::Thread)?;
    let at = match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(at)) => at,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(BrokerError::NotReady(addr)),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if mqtt_probe(probe_addr(at.mqtt), &client_id, &secret).is_ok() {
            info!(listen = %at.mqtt, "Embedded broker listening.");
            if let Some(tx) = bound {
                tx.send_replace(Some(at));
            }
            return Ok(Some(link));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(at.mqtt))
}

/// A WARN when the open-file limit leaves no room for `max_connections` clients.
fn warn_open_files(cfg: &EmbeddedBroker) {
    let need = front::descriptors_needed(cfg);
    if let Some(limit) = front::open_files_limit().filter(|l| *l < need) {
        warn!(
            limit,
            need,
            "The open-file limit is below what max_connections needs; raise LimitNOFILE= (the unit sets 32768) or lower max_connections."
        );
    }
}

/// Run the broker; whenever it stops (an error, or a panic inside rmqtt), drop its
/// runtime with every task and connection in it and build a new one.
fn supervise(
    model: &Model,
    contract: &LiveContract,
    cfg: &EmbeddedBroker,
    stats: &Arc<BrokerStats>,
    ends: Ends<'_>,
    ready: std::sync::mpsc::Sender<Result<Bound, BrokerError>>,
) {
    let end = ends.end;
    let mut ready = Some(ready);
    // The addresses of the first build: every rebuild binds them again (a configured
    // port 0 must not become another port after a failure).
    let mut bound: Option<Bound> = None;
    let mut delay = RESTART_FIRST;
    loop {
        // One thread for the whole broker: no work stealing, no wakeups across threads
        // inside it (measured cheaper than a one-worker multi-thread runtime).
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(BrokerError::Thread(e)));
                    return;
                }
                error!(error = %e, "Embedded broker runtime failed; retrying.");
                std::thread::sleep(RESTART_MAX);
                continue;
            }
        };
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                let (server, at) = build(model, contract, cfg, stats, ends, bound).await?;
                bound = Some(at);
                end.announce(true);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(at));
                }
                tokio::select! {
                    r = server.run() => {
                        if let Err(e) = r {
                            error!(error = %e, "Embedded broker stopped.");
                        }
                    }
                    () = stats.fault.notified() => {}
                }
                Ok(())
            })
        }));
        end.announce(false);
        // Dropping the runtime ends every connection task of the failed broker.
        rt.shutdown_timeout(Duration::from_millis(100));
        match outcome {
            Ok(Err(e)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                error!(error = %e, "Embedded broker could not be rebuilt; retrying.");
            }
            Ok(Ok(())) => error!("Embedded broker stopped; restarting it."),
            Err(_) => error!("Embedded broker failed (panic); restarting it."),
        }
        stats.restarts.fetch_add(1, Relaxed);
        stats.clients.store(0, Relaxed);
        if started.elapsed() > Duration::from_secs(30) {
            delay = RESTART_FIRST;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(RESTART_MAX);
    }
}
