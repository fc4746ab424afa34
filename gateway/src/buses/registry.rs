//! The bus-task registry: one task per bus, by bus id, started, reconfigured and
//! stopped here (the runtime starts them, a reload changes them); opening a gpio
//! controller. Which bus kind runs which driver is decided in [`Buses::spawn`] alone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use fieldlink_drivers::{
    gpio::{GpioBackend, GpioError, SimGpio},
    modbus::{
        rtu::{RtuOverTcpTransport, RtuTransport},
        tcp::TcpTransport,
    },
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::warn;

use super::{BusIo, Control};
use crate::{
    commands::Request,
    health::Stats,
    modbus_server::Snapshots,
    model::{Bus, BusKind, GpioBackendKind, Model},
    publish::Batch,
    shutdown::Shutdown,
};

/// Commands that may wait for one bus task.
const COMMAND_CAPACITY: usize = 256;

/// Longest wait for a bus task to take a reload (it finishes its transaction first).
const BUS_WAIT: Duration = Duration::from_secs(30);

/// One running bus task.
struct BusTask {
    bus: Arc<Bus>,
    commands: mpsc::Sender<Request>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

/// The bus tasks, by bus id, and what a new one needs.
pub(crate) struct Buses {
    tasks: HashMap<String, BusTask>,
    out: mpsc::Sender<Batch>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    /// Simulated boards given by the caller, for gpio buses a reload starts.
    boards: HashMap<String, SimGpio>,
    /// What the Modbus server serves, when configured (every task records into it).
    snapshots: Option<Snapshots>,
}

impl Buses {
    pub(crate) fn new(
        out: mpsc::Sender<Batch>,
        stats: Arc<Stats>,
        shutdown: Shutdown,
        boards: HashMap<String, SimGpio>,
        snapshots: Option<Snapshots>,
    ) -> Buses {
        Buses {
            tasks: HashMap::new(),
            out,
            stats,
            shutdown,
            boards,
            snapshots,
        }
    }

    /// Start a task for every bus of `model` (the gpio controllers opened already);
    /// returns the command channel of every bus, in model order.
    pub(crate) fn spawn_all(
        &mut self,
        model: &Arc<Model>,
        gpio: &mut HashMap<String, Box<dyn GpioBackend>>,
    ) -> Vec<mpsc::Sender<Request>> {
        let mut first = 0;
        for bus in &model.buses {
            let backend = gpio.remove(&bus.id);
            self.spawn(model, bus, first, backend);
            first += bus.devices.len();
        }
        self.senders(model)
    }

    /// The command channel of every bus of `model`, in model order (a closed one for a
    /// bus without a task: it has no devices, so no commands either).
    pub(crate) fn senders(&self, model: &Model) -> Vec<mpsc::Sender<Request>> {
        model
            .buses
            .iter()
            .map(|b| match self.tasks.get(&b.id) {
                Some(t) => t.commands.clone(),
                None => mpsc::channel(1).0,
            })
            .collect()
    }

    /// Start the task of `bus` (none for a bus without devices, or a gpio bus without
    /// its controller).
    fn spawn(
        &mut self,
        model: &Arc<Model>,
        bus: &Arc<Bus>,
        first: usize,
        gpio: Option<Box<dyn GpioBackend>>,
    ) {
        if bus.devices.is_empty() {
            return;
        }
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (control, control_rx) = mpsc::channel(4);
        let io = BusIo {
            out: self.out.clone(),
            commands: commands_rx,
            control: control_rx,
            stats: self.stats.clone(),
            shutdown: self.shutdown.clone(),
            snapshots: self.snapshots.clone(),
        };
        let (m, b) = (model.clone(), bus.clone());
        // The list of bus kinds: each supplies its I/O to the one actor.
        let task = match (&bus.kind, gpio) {
            (
                BusKind::ModbusTcp {
                    host,
                    port,
                    timeout,
                    frame_delay,
                    connect_delay,
                },
                _,
            ) => {
                let t = TcpTransport::new(host.clone(), *port, *timeout)
                    .with_pauses(*frame_delay, *connect_delay);
                tokio::spawn(super::run_modbus(m, b, first, t, io))
            }
            (
                BusKind::ModbusRtu {
                    serial,
                    timeout,
                    frame_delay,
                },
                _,
            ) => {
                let t = RtuTransport::new(serial.clone(), *timeout, *frame_delay);
                tokio::spawn(super::run_modbus(m, b, first, t, io))
            }
            (
                BusKind::ModbusRtuOverTcp {
                    host,
                    port,
                    timeout,
                    frame_delay,
                    connect_delay,
                },
                _,
            ) => {
                let t = RtuOverTcpTransport::tcp(
                    host.clone(),
                    *port,
                    *timeout,
                    *frame_delay,
                    *connect_delay,
                );
                tokio::spawn(super::run_modbus(m, b, first, t, io))
            }
            (BusKind::Uart { .. }, _) => tokio::spawn(super::run_uart(m, b, first, io)),
            (BusKind::Gpio { .. }, Some(backend)) => {
                tokio::spawn(super::run_gpio(m, b, first, backend, io))
            }
            (BusKind::Gpio { .. }, None) => return,
        };
        self.tasks.insert(
            bus.id.clone(),
            BusTask {
                bus: bus.clone(),
                commands,
                control,
                task,
            },
        );
    }

    /// Wait for every task to end (after shutdown).
    pub(crate) async fn join(&mut self) {
        for (_, t) in self.tasks.drain() {
            let _ = t.task.await;
        }
    }

    /// Stop the task of bus `id` and wait until it ended (its queued commands run
    /// first).
    pub(crate) async fn stop(&mut self, id: &str) {
        let Some(t) = self.tasks.remove(id) else {
            return;
        };
        if tokio::time::timeout(BUS_WAIT, t.control.send(Control::Stop))
            .await
            .is_err()
        {
            warn!(bus = %id, "Bus task slow to take the reload.");
        }
        // It stops after its current transaction (bounded by the bus timeout): waited
        // for, so that its port and lines are free for whatever replaces it.
        let _ = t.task.await;
    }

    /// Give the task of bus `bus.id` its new devices and wait until it took them.
    pub(crate) async fn reconfigure(&mut self, bus: &Arc<Bus>, first: usize, generation: u64) {
        let Some(t) = self.tasks.get_mut(&bus.id) else {
            return;
        };
        let (done, taken) = oneshot::channel();
        let c = Control::reconfigure(&t.bus, bus.clone(), first, generation, done);
        match tokio::time::timeout(BUS_WAIT, t.control.send(c)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                warn!(bus = %bus.id, "Bus task slow to take the reload.");
                return;
            }
        }
        if tokio::time::timeout(BUS_WAIT, taken).await.is_err() {
            warn!(bus = %bus.id, "Bus task slow to take the reload.");
        }
        t.bus = bus.clone();
    }
}

impl Buses {
    /// The counters every task shares.
    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Where the tasks' messages go (a reload sends what it clears there too).
    pub(crate) fn out(&self) -> &mpsc::Sender<Batch> {
        &self.out
    }

    /// What the Modbus server serves, when configured (a reload updates it before the
    /// tasks take the new devices).
    pub(crate) fn snapshots(&self) -> Option<&Snapshots> {
        self.snapshots.as_ref()
    }

    /// Whether the gateway is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.is_shutdown()
    }

    /// The bus a task runs now, by bus id.
    pub(crate) fn running(&self, id: &str) -> Option<&Arc<Bus>> {
        self.tasks.get(id).map(|t| &t.bus)
    }

    /// Every running task's bus.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Bus>> {
        self.tasks.values().map(|t| &t.bus)
    }

    /// Start a task for `bus`, opening its gpio controller first when it needs one.
    pub(crate) fn start(
        &mut self,
        model: &Arc<Model>,
        bus: &Arc<Bus>,
        first: usize,
    ) -> Result<(), GpioError> {
        let gpio = match &bus.kind {
            BusKind::Gpio { backend } => Some(open_backend(&bus.id, *backend, &self.boards)?),
            _ => None,
        };
        self.spawn(model, bus, first, gpio);
        Ok(())
    }
}

/// Open the controller of every gpio bus of `model` (a simulated board from `boards`, or
/// rppal); the bus id with the error of the first that fails.
pub(crate) fn open_gpio(
    model: &Model,
    boards: &HashMap<String, SimGpio>,
) -> Result<HashMap<String, Box<dyn GpioBackend>>, (String, GpioError)> {
    let mut gpio: HashMap<String, Box<dyn GpioBackend>> = HashMap::new();
    for bus in &model.buses {
        if let BusKind::Gpio { backend } = bus.kind {
            let b = open_backend(&bus.id, backend, boards).map_err(|e| (bus.id.clone(), e))?;
            gpio.insert(bus.id.clone(), b);
        }
    }
    Ok(gpio)
}

/// The controller of gpio bus `bus`: its simulated board from `boards` (or a board of
/// its own), or rppal.
fn open_backend(
    bus: &str,
    backend: GpioBackendKind,
    boards: &HashMap<String, SimGpio>,
) -> Result<Box<dyn GpioBackend>, GpioError> {
    Ok(match backend {
        GpioBackendKind::Simulated => Box::new(boards.get(bus).cloned().unwrap_or_default()),
        GpioBackendKind::Rppal => fieldlink_drivers::gpio::open_rppal()?,
    })
}
