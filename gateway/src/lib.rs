//! fieldlink: polls field devices and maps every reading onto an MQTT topic tree.
//!
//! The entry point is [`run`]: `main` and the tests both call it with a validated
//! [`Model`](model::Model) and a [`Shutdown`](shutdown::Shutdown) signal.

pub mod broker;
pub mod buses;
pub mod commands;
pub mod config;
pub mod demo;
pub mod health;
pub mod model;
pub mod mqtt;
pub mod publish;
pub mod shutdown;
pub mod spool;
pub mod topics;
pub mod upstream;
pub mod validate;

use std::{collections::HashMap, sync::Arc, time::Duration};

use fieldlink_drivers::{
    gpio::{GpioBackend, GpioError, SimGpio},
    modbus::{rtu::RtuTransport, tcp::TcpTransport},
};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::info;

pub use health::Stats;
pub use model::Model;
pub use shutdown::{Shutdown, ShutdownTrigger};

/// Return freed heap pages to the kernel (glibc keeps them otherwise): after loading a
/// large configuration, and after the embedded broker served a burst of connections.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_heap() {
    // SAFETY: malloc_trim only returns free pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`trim_heap`] where glibc is not the allocator: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

/// Why the gateway could not run.
#[derive(Debug, Error)]
pub enum RunError {
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The upstream broker's TLS settings or queue.
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
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
#[derive(Clone, Default)]
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
}

/// Commands that may wait for one bus task.
const COMMAND_CAPACITY: usize = 256;

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

/// [`run`] with [`Hooks`].
pub async fn run_with(model: Model, mut shutdown: Shutdown, hooks: Hooks) -> Result<(), RunError> {
    let stats = hooks.stats;
    // Open GPIO controllers first: off a Pi, `backend: rppal` fails here, before anything
    // else starts.
    let mut gpio: HashMap<String, Box<dyn GpioBackend>> = HashMap::new();
    for bus in &model.buses {
        if let model::BusKind::Gpio { backend } = bus.kind {
            let b: Box<dyn GpioBackend> = match backend {
                model::GpioBackendKind::Simulated => {
                    Box::new(hooks.gpio.get(&bus.id).cloned().unwrap_or_default())
                }
                model::GpioBackendKind::Rppal => {
                    fieldlink_drivers::gpio::open_rppal().map_err(|error| RunError::Gpio {
                        bus: bus.id.clone(),
                        error,
                    })?
                }
            };
            gpio.insert(bus.id.clone(), b);
        }
    }
    // The upstream queue and TLS settings next: a queue directory that cannot be written
    // stops the gateway here, with the reason.
    let spool = match &model.mqtt.upstream {
        Some(u) => {
            upstream::options(&model, u)?;
            Some(upstream::open_queue(u)?)
        }
        None => None,
    };
    let model = Arc::new(model);
    let stats = stats.unwrap_or_else(|| Arc::new(Stats::new(&model)));
    let link = if model.mqtt.embedded.is_some() {
        let (m, b, at) = (model.clone(), stats.broker.clone(), hooks.bound);
        tokio::task::spawn_blocking(move || broker::start(m, b, at))
            .await
            .map_err(|e| broker::BrokerError::Thread(std::io::Error::other(e.to_string())))??
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(OUT_CAPACITY);
    let mut command_txs = Vec::new();
    let mut command_rxs = Vec::new();
    for _ in &model.buses {
        let (ctx, crx) = mpsc::channel(COMMAND_CAPACITY);
        command_txs.push(ctx);
        command_rxs.push(crx);
    }
    let router = commands::Router::new(model.clone(), command_txs, stats.clone());
    let upstream_router = model
        .mqtt
        .upstream
        .as_ref()
        .filter(|u| u.accept_commands)
        .map(|_| router.clone());
    let mut mqtt = Vec::new();
    match (link, spool) {
        (Some(link), None) => {
            mqtt.push(tokio::spawn(mqtt::run_client(
                model.clone(),
                rx,
                stats.clone(),
                router,
                link,
            )));
        }
        (None, Some(spool)) => {
            mqtt.push(tokio::spawn(upstream_task(
                model.clone(),
                spool,
                rx,
                stats.clone(),
                upstream_router,
            )));
        }
        (Some(link), Some(spool)) => {
            let (etx, erx) = mpsc::channel(OUT_CAPACITY);
            let (utx, urx) = mpsc::channel(OUT_CAPACITY);
            mqtt.push(tokio::spawn(fanout(rx, etx, utx)));
            mqtt.push(tokio::spawn(mqtt::run_client(
                model.clone(),
                erx,
                stats.clone(),
                router,
                link,
            )));
            mqtt.push(tokio::spawn(upstream_task(
                model.clone(),
                spool,
                urx,
                stats.clone(),
                upstream_router,
            )));
        }
        // Validation requires a destination; drain so the buses never block.
        (None, None) => {
            let mut rx = rx;
            mqtt.push(tokio::spawn(
                async move { while rx.recv().await.is_some() {} },
            ));
        }
    }

    let mut buses = Vec::new();
    let mut first = 0;
    for (bus, commands) in model.buses.iter().zip(command_rxs) {
        let n = bus.devices.len();
        let io = buses::BusIo {
            out: tx.clone(),
            commands,
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        };
        match &bus.kind {
            model::BusKind::ModbusTcp {
                host,
                port,
                timeout,
            } => {
                let transport = TcpTransport::new(host.clone(), *port, *timeout);
                buses.push(tokio::spawn(buses::run_modbus(
                    model.clone(),
                    bus.clone(),
                    first,
                    transport,
                    io,
                )));
            }
            model::BusKind::ModbusRtu {
                serial,
                timeout,
                frame_delay,
            } => {
                let transport = RtuTransport::new(serial.clone(), *timeout, *frame_delay);
                buses.push(tokio::spawn(buses::run_modbus(
                    model.clone(),
                    bus.clone(),
                    first,
                    transport,
                    io,
                )));
            }
            model::BusKind::Uart { .. } => {
                buses.push(tokio::spawn(buses::run_uart(
                    model.clone(),
                    bus.clone(),
                    first,
                    io,
                )));
            }
            model::BusKind::Gpio { .. } => {
                // Opened above for every gpio bus.
                if let Some(backend) = gpio.remove(&bus.id) {
                    buses.push(tokio::spawn(buses::run_gpio(
                        model.clone(),
                        bus.clone(),
                        first,
                        backend,
                        io,
                    )));
                }
            }
        }
        first += n;
    }
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
        points = model.devices().map(|d| d.points.len()).sum::<usize>(),
        "Gateway running."
    );
    shutdown.recv().await;
    info!("Shutting down.");
    for b in buses {
        let _ = b.await;
    }
    let _ = diag.await;
    let offline = model
        .devices()
        .map(|d| buses::availability(&model.availability_topic(&d.id), false))
        .collect();
    let _ = tx.send(offline).await;
    drop(tx);
    for m in mqtt {
        // The upstream side writes its queue to disk before it disconnects.
        let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
    }
    info!("Gateway stopped.");
    Ok(())
}

/// Every batch to both MQTT sides (embedded and upstream).
async fn fanout(
    mut rx: mpsc::Receiver<publish::Batch>,
    embedded: mpsc::Sender<publish::Batch>,
    upstream: mpsc::Sender<publish::Batch>,
) {
    while let Some(batch) = rx.recv().await {
        let _ = embedded.send(batch.clone()).await;
        let _ = upstream.send(batch).await;
    }
}

async fn upstream_task(
    model: Arc<Model>,
    spool: spool::Spool,
    rx: mpsc::Receiver<publish::Batch>,
    stats: Arc<Stats>,
    router: Option<commands::Router>,
) {
    if let Err(e) = upstream::run_upstream(model, spool, rx, stats, router).await {
        tracing::error!(error = %e, "Upstream link stopped.");
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
