//! The validated, immutable runtime model built from the configuration by
//! [`crate::config`]. Nothing in here can be invalid, and nothing is a placeholder: a
//! point has the fields every point has plus one [`Source`] variant for its bus kind.

use std::{sync::Arc, time::Duration};

pub use fieldlink_drivers::gpio::Pull;
pub use fieldlink_drivers::modbus::rtu::{Parity, SerialSettings};
pub use fieldlink_drivers::modbus::{Table, WordOrder};
pub use fieldlink_drivers::uart::{FieldRef, Parser, Template};
pub use fieldlink_drivers::value::ValueType;
pub use mqtt::{
    EmbeddedBroker, EmbeddedTls, MqttModel, Persistence, QueueLimits, QueueSettings, Secret, Tls,
    Upstream,
};

mod modbus_server;
mod mqtt;

pub use modbus_server::{Allow, ModbusServer};

/// Everything the gateway runs.
#[derive(Clone, Debug)]
pub struct Model {
    /// Gateway id.
    pub gateway_id: String,
    /// Root of the gateway's own topics, e.g. `fieldlink/casa`.
    pub base_topic: String,
    /// MQTT settings.
    pub mqtt: MqttModel,
    /// How often diagnostics are published.
    pub diagnostics_interval: Duration,
    /// Buses, each with its devices (shared with the bus tasks, never copied).
    pub buses: Vec<Arc<Bus>>,
    /// Home Assistant discovery, when on.
    pub homeassistant: Option<HomeAssistant>,
    /// Commissioning requests through the embedded broker are accepted (`commissioning`).
    pub commissioning: bool,
    /// The Modbus TCP server (`modbus_server:`), when configured.
    pub modbus_server: Option<ModbusServer>,
}

/// Home Assistant MQTT discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeAssistant {
    /// Where configs go: `<prefix>/<component>/<unique_id>/config`; Home Assistant
    /// announces itself on `<prefix>/status`.
    pub discovery_prefix: String,
    /// Published on the embedded broker.
    pub embedded: bool,
    /// Published on the upstream broker too (its topics carry the upstream prefix).
    pub upstream: bool,
}

/// How a device shows in Home Assistant (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceHa {
    /// Name (default: the device id).
    pub name: Option<String>,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Suggested area.
    pub suggested_area: Option<String>,
}

/// Home Assistant entity platform of a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// Read-only value.
    Sensor,
    /// Read-only on/off.
    BinarySensor,
    /// Writable on/off.
    Switch,
    /// Writable number.
    Number,
    /// Writable choice of names.
    Select,
    /// Momentary action.
    Button,
    /// Writable text.
    Text,
}

/// Home Assistant entity category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityCategory {
    /// A setting.
    Config,
    /// Health, not purpose.
    Diagnostic,
}

/// Home Assistant state class of a sensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateClass {
    /// A value at a moment.
    Measurement,
    /// A total that may go down.
    Total,
    /// A total that only grows (but for resets).
    TotalIncreasing,
}

/// No overrides.
static NO_HA: PointHa = PointHa {
    name: None,
    component: None,
    device_class: None,
    state_class: None,
    icon: None,
    entity_category: None,
    enabled_by_default: None,
    expire_after: None,
    hidden: false,
};

/// A point's Home Assistant overrides (all optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PointHa {
    /// Entity name.
    pub name: Option<String>,
    /// Component, instead of the derived one.
    pub component: Option<Component>,
    /// Device class, instead of the one the unit implies.
    pub device_class: Option<String>,
    /// State class.
    pub state_class: Option<StateClass>,
    /// `mdi:` icon.
    pub icon: Option<String>,
    /// Entity category.
    pub entity_category: Option<EntityCategory>,
    /// Enabled when Home Assistant first sees it.
    pub enabled_by_default: Option<bool>,
    /// Unavailable after this long without a value.
    pub expire_after: Option<Duration>,
    /// No discovery config.
    pub hidden: bool,
}

impl Model {
    /// All devices of all buses.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.buses
            .iter()
            .flat_map(|b| b.devices.iter().map(|d| &**d))
    }

    /// The names of every topic the gateway publishes or accepts (the methods below are
    /// made by it).
    pub fn topics(&self) -> crate::Topics {
        crate::Topics::of(self)
    }

    /// `<base>/status` ([`Topics::status`](crate::Topics::status)).
    pub fn status_topic(&self) -> String {
        self.topics().status()
    }

    /// `<base>/diagnostics`.
    pub fn diagnostics_topic(&self) -> String {
        self.topics().diagnostics()
    }

    /// All points of all devices, in slot order.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.devices().flat_map(|d| d.points.iter())
    }

    /// `<base>/<device>/availability`.
    pub fn availability_topic(&self, device: &str) -> String {
        self.topics().availability(device)
    }
}

/// A bus: one task owns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Bus {
    /// Bus id.
    pub id: String,
    /// Kind and transport settings.
    pub kind: BusKind,
    /// Devices on the bus (shared with the bus task, never copied).
    pub devices: Vec<Arc<Device>>,
}

/// Transport of a bus.
#[derive(Clone, Debug, PartialEq)]
pub enum BusKind {
    /// Modbus TCP endpoint.
    ModbusTcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Request and connect timeout.
        timeout: Duration,
        /// Silence between a reply and the next request.
        frame_delay: Duration,
        /// Wait after every (re)connect before the first request.
        connect_delay: Duration,
    },
    /// Modbus RTU on a serial line.
    ModbusRtu {
        /// Port and framing.
        serial: SerialSettings,
        /// Request timeout.
        timeout: Duration,
        /// Extra silence between frames.
        frame_delay: Duration,
    },
    /// Modbus RTU frames through a serial-to-Ethernet converter (transparent mode).
    ModbusRtuOverTcp {
        /// The converter's host name or address.
        host: String,
        /// Its port.
        port: u16,
        /// Request and connect timeout.
        timeout: Duration,
        /// Silence between a reply and the next request.
        frame_delay: Duration,
        /// Wait after every (re)connect before the first request.
        connect_delay: Duration,
    },
    /// Text lines on a serial port (UART line devices).
    Uart {
        /// Port and framing.
        serial: SerialSettings,
        /// End of a line (`\n`, `\r\n`, ...).
        delimiter: Vec<u8>,
        /// Longest line accepted, in bytes (longer ones are dropped and counted).
        max_line: usize,
        /// How long a polled device has to answer its query, and the default wait for
        /// a command's acknowledgement.
        timeout: Duration,
    },
    /// GPIO lines of the board the gateway runs on.
    Gpio {
        /// Which controller drives the lines.
        backend: GpioBackendKind,
    },
}

/// GPIO controller of a `gpio` bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpioBackendKind {
    /// A Raspberry Pi through rppal.
    Rppal,
    /// A simulated board (tests, `fieldlink demo`, trying a mapping without hardware).
    Simulated,
}

/// A GPIO point: one line of the board.
#[derive(Clone, Debug, PartialEq)]
pub struct GpioPoint {
    /// BCM pin number.
    pub pin: u8,
    /// Logical `true` (ON) is a low level.
    pub active_low: bool,
    /// Input or output settings.
    pub mode: GpioMode,
}

/// Direction of a GPIO point and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum GpioMode {
    /// An input: edges are published after debouncing.
    Input {
        /// Pull resistor.
        pull: Pull,
        /// The level must be stable this long before a change is published (0 = every
        /// edge).
        debounce: Duration,
    },
    /// An output, writable through `<topic>/set`.
    Output {
        /// Logical state set at start.
        initial: bool,
        /// What happens to the line when the gateway stops.
        on_shutdown: OnShutdown,
        /// Momentary: an ON command switches on for this long, then off.
        pulse: Option<Duration>,
    },
}

/// State of an output when the gateway stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnShutdown {
    /// Leave the line as it is.
    Keep,
    /// Logical off (honours `active_low`).
    Off,
    /// Logical on (honours `active_low`).
    On,
    /// Physical low level.
    Low,
    /// Physical high level.
    High,
}

/// A device on a bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// Poll period (for a GPIO device, only the default of its points' settings).
    pub poll_interval: Duration,
    /// Consecutive failed polls that make it offline.
    pub offline_after: u32,
    /// Longest wait between two polls of an offline device (exponential backoff cap).
    pub max_backoff: Duration,
    /// What only its bus kind has, one variant per bus kind (as points have [`Source`]).
    pub kind: DeviceKind,
    /// How it shows in Home Assistant.
    pub ha: DeviceHa,
    /// Points.
    pub points: Vec<Point>,
    // One JSON object per device (issue #23, `buses/device_json.rs`):
    /// Where every point's last value goes as one JSON object (`json_topic`), if anywhere.
    pub json_topic: Option<String>,
}

/// What a device has that depends on its bus kind.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceKind {
    /// A device on a Modbus bus (TCP or RTU).
    Modbus(ModbusDevice),
    /// A device on a `uart` bus.
    Uart(UartDevice),
    /// The lines of a `gpio` bus: nothing of its own.
    Gpio,
}

/// A device on a Modbus bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModbusDevice {
    /// Modbus unit id.
    pub unit: u8,
    /// Largest gap the planner bridges.
    pub max_gap: u16,
    /// Most registers in one read.
    pub max_read_registers: u16,
    /// Most bits in one read.
    pub max_read_bits: u16,
    /// Always write with FC16/FC15.
    pub write_multiple: bool,
}

impl ModbusDevice {
    /// The read planner's limits for this device.
    pub fn read_limits(&self) -> fieldlink_drivers::modbus::ReadLimits {
        fieldlink_drivers::modbus::ReadLimits {
            max_gap: self.max_gap,
            registers: self.max_read_registers,
            bits: self.max_read_bits,
        }
    }
}

impl Device {
    /// Its Modbus settings, for a device on a Modbus bus.
    pub fn modbus(&self) -> Option<&ModbusDevice> {
        match &self.kind {
            DeviceKind::Modbus(m) => Some(m),
            _ => None,
        }
    }

    /// Its line parsing and polling, for a device on a `uart` bus.
    pub fn uart(&self) -> Option<&UartDevice> {
        match &self.kind {
            DeviceKind::Uart(u) => Some(u),
            _ => None,
        }
    }

    /// Whether its bus task polls it: `false` for a device whose points are all
    /// `write_only` (nothing to read; it is online while its writes are acknowledged, see
    /// `buses::rewrite`).
    pub fn polled(&self) -> bool {
        self.points.is_empty() || self.points.iter().any(|p| !p.write_only)
    }
}

/// Whether two devices are defined the same for their bus task: every field, their
/// points' slots included, but the Home Assistant ones (discovery has its own diff).
pub(crate) fn same(a: &Device, b: &Device) -> bool {
    fn runs(d: &Device) -> Device {
        let mut d = d.clone();
        d.ha = DeviceHa::default();
        for p in &mut d.points {
            p.ha_overrides = None;
        }
        d
    }
    a.id == b.id && a.points.len() == b.points.len() && runs(a) == runs(b)
}

/// Payload format of a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Bare value.
    Plain,
    /// JSON object with value, unit and timestamp.
    Json,
}

/// When a point is published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PublishMode {
    /// On change beyond the deadband (0 = any change).
    OnChange {
        /// Minimum change.
        deadband: f64,
    },
    /// After every successful poll.
    EveryPoll,
}

/// A point: one value, one topic, and where it comes from on its bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Topic.
    pub topic: String,
    /// Index of the point among all points of the model, in bus, device and point order
    /// (per-point state outside the bus task is a plain vector indexed by it).
    pub slot: u32,
    /// Value type (`bool` for a GPIO line).
    pub ty: ValueType,
    /// Multiplier.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
    /// Decimal places.
    pub precision: Option<u8>,
    /// Unit.
    pub unit: Option<String>,
    /// Retained.
    pub retain: bool,
    /// QoS 0–2.
    pub qos: u8,
    /// Payload format.
    pub payload: Payload,
    /// Publish policy.
    pub publish: PublishMode,
    /// Republish an unchanged value at least this often.
    pub heartbeat: Option<Duration>,
    /// Accepts commands on `<topic>/set`.
    pub writable: bool,
    /// Smallest value a command may set.
    pub min: Option<f64>,
    /// Largest value a command may set.
    pub max: Option<f64>,
    /// Named values (`ON` → 1), for commands and publishing.
    pub value_map: Vec<(String, f64)>,
    /// Where the value lives on the point's bus.
    pub source: Source,
    /// Home Assistant overrides, when the mapping gives any (boxed: most points have
    /// none, and 10 000 points would carry 1.3 MB of empty ones); [`Point::ha`].
    pub ha_overrides: Option<Box<PointHa>>,
    // Points at their own cadence (#23).
    /// Its own poll period (Modbus points), instead of its device's; [`Point::cadence`].
    pub poll_interval: Option<Duration>,
    // Writes (#23): write-only points and kept-alive setpoints (`buses::rewrite`).
    /// Never read (not polled, no read-back): a `/set` publishes the value the device
    /// acknowledged as its state. Implies `writable`; Modbus holding registers and coils.
    pub write_only: bool,
    /// The last value `/set` wrote is written again whenever this long has passed since
    /// the point's last write.
    pub rewrite_every: Option<Duration>,
    // One JSON object per device (issue #23):
    /// Its key in its device's JSON object, when the mapping gives one ([`Point::json_key`]
    /// has the default).
    pub key: Option<String>,
}

/// Where a point's value lives, one variant per bus kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Registers or bits of a Modbus device.
    Modbus(ModbusPoint),
    /// A GPIO line of the board.
    Gpio(GpioPoint),
    /// A field of a UART line and/or the line a command writes.
    Uart(Box<UartPoint>),
}

/// A point on a Modbus bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModbusPoint {
    /// Table.
    pub table: Table,
    /// First register/bit.
    pub address: u16,
    /// Word order.
    pub order: WordOrder,
    /// Bit inside the register, for `bool` on a register table.
    pub bit: Option<u8>,
    // Writes (#23): a separate write register.
    /// Where a `/set` writes (a holding register or coil), when not at `address`; the
    /// value is still read (polled, read back) at `address`.
    pub write_address: Option<u16>,
    // Scale factor registers (#25, `buses::scale`).
    /// The register (same table) holding the `i16` scale factor `sf`: the value is
    /// × 10^sf.
    pub scale_register: Option<u16>,
}

impl ModbusPoint {
    /// Registers (or bits) a value of type `ty` occupies here.
    pub fn count(&self, ty: ValueType) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            ty.registers()
        }
    }
}

/// A device on a `uart` bus.
#[derive(Clone, Debug, PartialEq)]
pub struct UartDevice {
    /// How its lines become fields (none: a write-only device).
    pub parser: Option<Parser>,
    /// Sent every `poll_interval` (request/response); `None`: the device sends on its own
    /// and `poll_interval` is the period it is expected to keep.
    pub query: Option<Vec<u8>>,
}

/// A point on a `uart` bus.
#[derive(Clone, Debug, PartialEq)]
pub struct UartPoint {
    /// The field of a parsed line holding the value (`None`: command only).
    pub field: Option<FieldRef>,
    /// How a `/set` is written.
    pub command: Option<UartCommand>,
}

/// The line a command writes, and the acknowledgement it waits for.
#[derive(Clone, Debug)]
pub struct UartCommand {
    /// The line (`RELAY{channel} {value}\n`).
    pub template: Template,
    /// Fixed fields of the template (`channel: 2`).
    pub params: std::collections::BTreeMap<String, String>,
    /// A line matching this acknowledges the command.
    pub ack: Option<regex::Regex>,
    /// How long to wait for it (default: the bus `timeout`).
    pub ack_timeout: Option<Duration>,
}

/// Equal when every field is, the acknowledgement by its pattern (a `Regex` has no `==`).
impl PartialEq for UartCommand {
    fn eq(&self, o: &Self) -> bool {
        self.template == o.template
            && self.params == o.params
            && self.ack.as_ref().map(regex::Regex::as_str)
                == o.ack.as_ref().map(regex::Regex::as_str)
            && self.ack_timeout == o.ack_timeout
    }
}

impl Point {
    /// Its Home Assistant overrides (none set when the mapping gives none).
    pub fn ha(&self) -> &PointHa {
        self.ha_overrides.as_deref().unwrap_or(&NO_HA)
    }

    /// `<topic>/set`.
    pub fn set_topic(&self) -> String {
        crate::topics::Topics::set(&self.topic)
    }

    /// `<topic>/set/result`.
    pub fn result_topic(&self) -> String {
        crate::topics::Topics::set_result(&self.topic)
    }

    /// Its key in its device's JSON object: `key`, else its topic's last level.
    pub fn json_key(&self) -> &str {
        match &self.key {
            Some(k) => k,
            None => crate::topics::last_level(&self.topic),
        }
    }

    // Reads on demand (`<topic>/get`, issue #23).

    /// `<topic>/get`.
    pub fn get_topic(&self) -> String {
        crate::topics::Topics::get(&self.topic)
    }

    /// `<topic>/get/result`.
    pub fn get_result_topic(&self) -> String {
        crate::topics::Topics::get_result(&self.topic)
    }

    /// Whether `<topic>/get` may read the point, or why not (the text of the refusal):
    /// the one place a point kind that is never read is refused. A device that cannot be
    /// asked (a UART device sending on its own) is its bus kind's answer.
    pub fn readable(&self) -> Result<(), &'static str> {
        match &self.source {
            _ if self.write_only => Err("a write_only point is never read; its state is the \
                 value last written"),
            Source::Uart(u) if u.field.is_none() => {
                Err("the point only takes commands; it has no value to read")
            }
            _ => Ok(()),
        }
    }

    /// The Modbus registers or bits of a point on a Modbus bus.
    pub fn modbus(&self) -> Option<&ModbusPoint> {
        match &self.source {
            Source::Modbus(m) => Some(m),
            _ => None,
        }
    }

    /// The line of a point on a `gpio` bus.
    pub fn gpio(&self) -> Option<&GpioPoint> {
        match &self.source {
            Source::Gpio(g) => Some(g),
            _ => None,
        }
    }

    /// The field and command of a point on a `uart` bus.
    pub fn uart(&self) -> Option<&UartPoint> {
        match &self.source {
            Source::Uart(u) => Some(u),
            _ => None,
        }
    }
}

// Points at their own cadence (#23).
impl Point {
    /// How often the point is read on `device`: its own `poll_interval`, else the
    /// device's.
    pub fn cadence(&self, device: &Device) -> Duration {
        self.poll_interval.unwrap_or(device.poll_interval)
    }
}

/// A read-only holding-register point on topic `t`, for unit tests.
#[cfg(test)]
pub(crate) fn test_point(ty: ValueType) -> Point {
    Point {
        topic: "t".into(),
        slot: 0,
        ty,
        scale: 1.0,
        offset: 0.0,
        precision: None,
        unit: None,
        retain: true,
        qos: 0,
        payload: Payload::Plain,
        publish: PublishMode::OnChange { deadband: 0.0 },
        heartbeat: None,
        writable: false,
        min: None,
        max: None,
        value_map: Vec::new(),
        ha_overrides: None,
        source: Source::Modbus(ModbusPoint {
            table: Table::Holding,
            address: 0,
            order: WordOrder::Abcd,
            bit: None,
            write_address: None,
            scale_register: None,
        }),
        poll_interval: None,
        write_only: false,
        rewrite_every: None,
        key: None,
    }
}
