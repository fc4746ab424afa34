//! Running the gateway: [`run`] (and [`run_with`] for tests, benchmarks and the demo)
//! starts every part in order and stops them in reverse on shutdown.

use std::{collections::HashMap, sync::Arc, time::Duration};

use fieldlink_drivers::gpio::{GpioError, SimGpio};
use thiserror::Error;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::info;

use crate::{
    broker, buses, commands, health::Stats, modbus_server, model::Model, mqtt, publish, reload,
    service, shutdown::Shutdown, topics::LiveContract,
};

/// Why the gateway could not run.
#[derive(Debug, Error)]
pub enum RunError {
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The upstream broker's TLS settings or queue.
    #[error(transparent)]
    Upstream(#[from] mqtt::UpstreamError),
    /// The Modbus server (`modbus_server.listen`) could not listen.
    #[error("modbus_server: cannot listen on {listen}: {error}")]
    ModbusListen {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A gpio bus could not open its controller.
    #[error("bus `{bus}`: {error}")]
    Gpio {
        /// Bus id.
        bus: String,
        /// What failed.
        error: GpioError,
    },
}

/// Handles a caller can give [`run_with`]: tests, benchmarks and the demo use them.
#[derive(Default)]
pub struct Hooks {
    /// Counters to share (otherwise fresh ones).
    pub stats: Option<Arc<Stats>>,
    /// Simulated GPIO boards by bus id, for buses with `backend: simulated`; such a bus
    /// without an entry gets a board of its own.
    pub gpio: HashMap<String, SimGpio>,
    /// Receives the addresses the embedded broker bound, once it accepts clients (with
    /// `listen: 127.0.0.1:0`, the port the system chose). Nothing is sent without an
    /// embedded broker; the sender is dropped unsent when `run_with` fails first.
    pub bound: Option<tokio::sync::watch::Sender<Option<broker::Bound>>>,
    /// Reload requests (SIGHUP in `fieldlink run`); without, the configuration is fixed.
    pub reloads: Option<Reloads>,
    /// The Modbus server's listener (`modbus_server:`), bound by the caller (a test on
    /// port 0); without, `modbus_server.listen` is bound.
    pub modbus_listener: Option<tokio::net::TcpListener>,
    /// Receives the Modbus server's backend once the bus tasks run (tests ask it
    /// directly); nothing is sent without `modbus_server:`.
    pub modbus_backend: Option<tokio::sync::oneshot::Sender<Arc<dyn modbus_server::Backend>>>,
}

/// Where reloads come from.
pub struct Reloads {
    /// One message per request.
    pub requests: mpsc::Receiver<()>,
    /// Reads and validates the configuration again (run on a blocking thread).
    pub load: Loader,
}

pub use crate::reload::Loader;

/// Capacity (in poll batches) of the channel from the bus tasks to the MQTT task.
const OUT_CAPACITY: usize = 1024;

/// Run the gateway until `shutdown` fires: the embedded broker (if enabled), one task per
/// bus, the MQTT client and the diagnostics publisher. On shutdown the bus tasks finish
/// their transaction, devices and the gateway are published `offline` (retained) and the
/// MQTT connection is closed with a DISCONNECT.
pub async fn run(model: Model, shutdown: Shutdown) -> Result<(), RunError> {
    run_with_stats(model, shutdown, None).await
}

/// [`run`], sharing the counters with the caller (benchmarks and tests read them).
pub async fn run_with_stats(
    model: Model,
    shutdown: Shutdown,
    stats: Option<Arc<Stats>>,
) -> Result<(), RunError> {
    run_with(
        model,
        shutdown,
        Hooks {
            stats,
            ..Hooks::default()
        },
    )
    .await
}

/// [`run`] with [`Hooks`], in named steps: open what can fail first (GPIO controllers,
/// the upstream queue and TLS settings, the embedded broker), then the MQTT sides, then
/// one task per bus and the diagnostics; on shutdown, stop them in the reverse order.
pub async fn run_with(
    model: Model,
    mut shutdown: Shutdown,
    mut hooks: Hooks,
) -> Result<(), RunError> {
    // Off a Pi, `backend: rppal` fails here, before anything else starts.
    let mut gpio = buses::open_gpio(&model, &hooks.gpio)
        .map_err(|(bus, error)| RunError::Gpio { bus, error })?;
    // A queue directory that cannot be written stops the gateway here, with the reason.
    let spool = match &model.mqtt.upstream {
        Some(u) => {
            mqtt::upstream::options(&model, u)?;
            Some(mqtt::upstream::open_queue(u)?)
        }
        None => None,
    };
    // A Modbus server address that cannot be bound stops the gateway here.
    let modbus_listener = bind_modbus(&model, hooks.modbus_listener.take()).await?;
    let model = Arc::new(model);
    let stats = hooks
        .stats
        .clone()
        .unwrap_or_else(|| Arc::new(Stats::new(&model)));
    let contract = LiveContract::new(&model);
    let link = start_broker(&model, &contract, &stats, hooks.bound.take()).await?;
    let (tx, rx) = mpsc::channel(OUT_CAPACITY);
    let (current, current_rx) = watch::channel(model.clone());
    let snapshots = modbus_server::Snapshots::new(&model);
    let mut buses = buses::Buses::new(
        tx.clone(),
        stats.clone(),
        shutdown.clone(),
        hooks.gpio,
        snapshots.clone(),
    );
    let command_txs = buses.spawn_all(&model, &mut gpio);
    let router = commands::Router::new(model.clone(), command_txs, stats.clone());
    let server = start_modbus_server(
        &model,
        (modbus_listener, snapshots),
        &router,
        (&tx, &stats, &shutdown),
        hooks.modbus_backend.take(),
    );
    let mqtt = start_mqtt(&model, current_rx, &stats, rx, router.clone(), link, spool);
    let diag = tokio::spawn(diagnostics(
        model.clone(),
        tx.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    info!(
        gateway = %model.gateway_id,
        buses = model.buses.len(),
        devices = model.devices().count(),
        points = model.points().count(),
        "Gateway running."
    );
    service::ready();
    let watchdog = service::spawn_watchdog(shutdown.clone());
    let mut gateway = reload::Running {
        model,
        buses,
        router,
        contract,
        current,
        next_slot: 0,
    };
    gateway.next_slot = gateway
        .model
        .points()
        .map(|p| p.slot + 1)
        .max()
        .unwrap_or(0);
    let mut reloads = hooks.reloads.take();
    loop {
        tokio::select! {
            () = shutdown.recv() => break,
            Some(()) = next_request(&mut reloads) => {
                if let Some(r) = &reloads {
                    gateway.reload(r.load.clone()).await;
                }
            }
        }
    }
    info!("Shutting down.");
    service::stopping();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    let model = gateway.model.clone();
    gateway.buses.join().await;
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    let _ = diag.await;
    let offline = model
        .devices()
        .map(|d| buses::availability(&model.availability_topic(&d.id), false))
        .collect();
    let _ = tx.send(offline).await;
    drop(tx);
    drop(gateway);
    for m in mqtt {
        // The upstream side writes its queue to disk before it disconnects.
        let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
    }
    info!("Gateway stopped.");
    Ok(())
}

/// The next reload request; never, without a source of them.
async fn next_request(reloads: &mut Option<Reloads>) -> Option<()> {
    match reloads {
        Some(r) => r.requests.recv().await,
        None => std::future::pending().await,
    }
}

/// The Modbus server's listener, when `modbus_server:` is configured: `given` (bound by
/// a test), else `modbus_server.listen` bound now.
async fn bind_modbus(
    model: &Model,
    given: Option<tokio::net::TcpListener>,
) -> Result<Option<tokio::net::TcpListener>, RunError> {
    let Some(s) = &model.modbus_server else {
        return Ok(None);
    };
    if given.is_some() {
        return Ok(given);
    }
    let bound = tokio::net::TcpListener::bind(s.listen).await;
    bound.map(Some).map_err(|error| RunError::ModbusListen {
        listen: s.listen,
        error,
    })
}

/// Start the Modbus server on `listener` when `modbus_server:` is configured: its
/// backend reads `snapshots` and routes writes with `router`; `backend` receives it.
fn start_modbus_server(
    model: &Model,
    (listener, snapshots): (
        Option<tokio::net::TcpListener>,
        Option<modbus_server::Snapshots>,
    ),
    router: &commands::Router,
    (out, stats, shutdown): (&mpsc::Sender<publish::Batch>, &Arc<Stats>, &Shutdown),
    backend: Option<tokio::sync::oneshot::Sender<Arc<dyn modbus_server::Backend>>>,
) -> Option<JoinHandle<()>> {
    let (settings, listener, snapshots) = (model.modbus_server.as_ref()?, listener?, snapshots?);
    let settings = Arc::new(settings.clone());
    let gateway: Arc<dyn modbus_server::Backend> = Arc::new(modbus_server::GatewayBackend::new(
        settings.clone(),
        snapshots,
        router.clone(),
        out,
    ));
    if let Some(b) = backend {
        let _ = b.send(gateway.clone());
    }
    Some(modbus_server::start(
        listener,
        settings,
        gateway,
        stats.clone(),
        shutdown.clone(),
    ))
}

/// Start the embedded broker, when enabled: the gateway's link into it.
async fn start_broker(
    model: &Arc<Model>,
    contract: &LiveContract,
    stats: &Arc<Stats>,
    bound: Option<tokio::sync::watch::Sender<Option<broker::Bound>>>,
) -> Result<Option<broker::Link>, RunError> {
    if model.mqtt.embedded.is_none() {
        return Ok(None);
    }
    let (m, c, b) = (model.clone(), contract.clone(), stats.broker.clone());
    Ok(
        tokio::task::spawn_blocking(move || broker::start(m, c, b, bound))
            .await
            .map_err(|e| broker::BrokerError::Thread(std::io::Error::other(e.to_string())))??,
    )
}

/// Start the MQTT sides the model has (embedded, upstream, or both with a fan-out).
fn start_mqtt(
    model: &Arc<Model>,
    current: watch::Receiver<Arc<Model>>,
    stats: &Arc<Stats>,
    rx: mpsc::Receiver<publish::Batch>,
    router: commands::Router,
    link: Option<broker::Link>,
    spool: Option<mqtt::Spool>,
) -> Vec<JoinHandle<()>> {
    let upstream_router = model
        .mqtt
        .upstream
        .as_ref()
        .filter(|u| u.accept_commands)
        .map(|_| router.clone());
    // One retained state for both sides.
    let retained = mqtt::Retained::new(model);
    let up_current = current.clone();
    let embedded = |intake, link| {
        tokio::spawn(mqtt::run_client(
            current,
            retained.clone(),
            intake,
            stats.clone(),
            router,
            link,
        ))
    };
    let upstream = |intake, spool| {
        tokio::spawn(mqtt::upstream::run_logged(
            (model.clone(), Some(up_current)),
            spool,
            (intake, retained.clone()),
            stats.clone(),
            upstream_router,
        ))
    };
    let direct = |rx| mqtt::Intake::Direct(rx, retained.clone());
    match (link, spool) {
        (Some(link), None) => vec![embedded(direct(rx), link)],
        (None, Some(spool)) => vec![upstream(direct(rx), spool)],
        (Some(link), Some(spool)) => {
            let (etx, erx) = mpsc::channel(OUT_CAPACITY);
            let (utx, urx) = mpsc::channel(OUT_CAPACITY);
            vec![
                tokio::spawn(mqtt::fanout(rx, retained.clone(), etx, utx)),
                embedded(mqtt::Intake::Fanned(erx), link),
                upstream(mqtt::Intake::Fanned(urx), spool),
            ]
        }
        // Validation requires a destination; drain so the buses never block.
        (None, None) => {
            let mut rx = rx;
            vec![tokio::spawn(
                async move { while rx.recv().await.is_some() {} },
            )]
        }
    }
}

async fn diagnostics(
    model: Arc<Model>,
    tx: mpsc::Sender<publish::Batch>,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) {
    let topic = model.diagnostics_topic();
    let mut tick = tokio::time::interval(model.diagnostics_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.recv() => return,
            _ = tick.tick() => {}
        }
        stats.mqtt_queue.store(
            (tx.max_capacity() - tx.capacity()) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let m = publish::Outgoing {
            topic: topic.clone(),
            payload: stats.to_json().to_string().into_bytes(),
            retain: true,
            qos: 0,
            slot: None,
        };
        if tx.send(vec![m]).await.is_err() {
            return;
        }
    }
}
