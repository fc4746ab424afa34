//! A mapping file as the user writes it: buses, devices and points. Every `///` comment
//! is the user reference for that key. The values of keys that belong to one bus kind
//! are in that kind's file (`modbus.rs`, `serial.rs`, `uart.rs`, `gpio.rs`).

use serde::Deserialize;

use super::{
    GpioBackendName, GpioModeName, HumanDuration, OnShutdownName, OrderName, ParamValue,
    ParityName, ParserFile, PullName, Spanned, TableName,
};

/// A mapping file: buses and the devices on them.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// Buses: one task owns each (a TCP endpoint, a serial port, a GPIO controller).
    #[serde(default)]
    pub buses: Vec<BusFile>,
    /// Devices and their points.
    #[serde(default)]
    pub devices: Vec<DeviceFile>,
}

/// The kind of a bus.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BusKindName {
    /// Modbus TCP: `host`, `port`, `timeout`, `frame_delay`, `connect_delay`.
    ModbusTcp,
    /// The GPIO lines of the board the gateway runs on: `backend`.
    Gpio,
    /// Modbus RTU on a serial line (RS-485): `path`, `baud`, `parity`, `data_bits`,
    /// `stop_bits`, `timeout`, `frame_delay`.
    ModbusRtu,
    /// Text lines on a serial port (sensors and boards with an ASCII protocol): `path`,
    /// `baud`, `parity`, `data_bits`, `stop_bits`, `timeout`, `delimiter`, `max_line`.
    Uart,
    /// Modbus RTU frames through a serial-to-Ethernet converter in transparent mode (raw
    /// RTU over a TCP socket, no MBAP header): `host`, `port`, `timeout`, `frame_delay`,
    /// `connect_delay`. A converter in "Modbus TCP gateway" mode is a `modbus_tcp` bus.
    ModbusRtuOverTcp,
}

/// One bus.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusFile {
    /// Bus id, referenced by `devices[].bus`.
    pub id: Spanned<String>,
    /// `modbus_tcp`, `modbus_rtu`, `modbus_rtu_over_tcp`, `uart` or `gpio`.
    pub kind: Spanned<BusKindName>,
    /// Host name or IP address (modbus_tcp, modbus_rtu_over_tcp: the device, Modbus
    /// gateway or serial converter).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// TCP port (modbus_tcp, modbus_rtu_over_tcp). Default 502; converters often use
    /// another (USR-TCP232 and Waveshare: 8887 or 4196, Elfin EW11: 8899): see its page.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<Spanned<u16>>,
    /// Timeout of one request (and of connecting). Default `1s`. On a uart bus: how long
    /// a polled device has to answer its `query`, and the default `ack_timeout`.
    #[serde(default)]
    pub timeout: Option<Spanned<HumanDuration>>,
    /// GPIO controller (gpio): `rppal` (default, a Raspberry Pi) or `simulated`.
    #[serde(default)]
    pub backend: Option<Spanned<GpioBackendName>>,
    /// Serial port (modbus_rtu, uart): `/dev/ttyUSB0`, or better a stable
    /// `/dev/serial/by-id/...` link.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Baud rate (modbus_rtu, uart). Default 9600.
    #[serde(default)]
    #[schemars(range(min = 300, max = 4000000))]
    pub baud: Option<Spanned<i64>>,
    /// Parity (modbus_rtu, uart): `none` (default), `even` or `odd`.
    #[serde(default)]
    pub parity: Option<Spanned<ParityName>>,
    /// Data bits (modbus_rtu, uart), 7 or 8. Default 8.
    #[serde(default)]
    #[schemars(range(min = 7, max = 8))]
    pub data_bits: Option<Spanned<i64>>,
    /// Stop bits (modbus_rtu, uart), 1 or 2. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2))]
    pub stop_bits: Option<Spanned<i64>>,
    /// Extra silence between frames on top of the 3.5 character times (modbus_rtu), for
    /// slow devices or RS-485 adapters that switch direction late; on modbus_rtu_over_tcp
    /// the silence kept between a reply and the next request (the converter keeps the
    /// serial line's own); on modbus_tcp the same, for devices and dongles that drop
    /// requests sent back to back. Default `0s`.
    #[serde(default)]
    pub frame_delay: Option<Spanned<HumanDuration>>,
    /// Wait after every (re)connect before the first request (modbus_tcp,
    /// modbus_rtu_over_tcp), for devices, converters and inverter dongles that drop
    /// requests sent right after the connection opens or drop the connection.
    /// Default `0s`.
    #[serde(default)]
    pub connect_delay: Option<Spanned<HumanDuration>>,
    /// End of a line (uart). Default `"\n"` (a `\r` before it is trimmed off); write
    /// `"\r\n"` or any other text in double quotes.
    #[serde(default)]
    pub delimiter: Option<Spanned<String>>,
    /// Longest line in bytes (uart), 1–65536; longer lines are dropped and counted.
    /// Default 256.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65536))]
    pub max_line: Option<Spanned<i64>>,
}

/// One device.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// Device id: letters, digits, `-`, `_`; used in `<base>/<device>/availability`.
    pub id: Spanned<String>,
    /// Id of the bus the device is on.
    pub bus: Spanned<String>,
    /// Modbus unit id (slave address): 1–247 on `modbus_rtu` and `modbus_rtu_over_tcp`
    /// (0 is broadcast on a serial line), 0–255 on `modbus_tcp` (some inverters and
    /// their dongles answer only 0 or 255). Default 1.
    #[serde(default)]
    #[schemars(range(min = 0, max = 255))]
    pub unit: Option<Spanned<i64>>,
    /// Time between the starts of two polls. Default `1s`. On a uart device without
    /// `query`: the period the device sends at (it is `offline` after `offline_after`
    /// periods without a line). A Modbus point may have its own (`poll_interval` on the
    /// point).
    #[serde(default)]
    pub poll_interval: Option<Spanned<HumanDuration>>,
    /// Consecutive failed polls after which the device is published `offline`. Default 3.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub offline_after: Option<Spanned<i64>>,
    /// Largest gap (registers or bits) the read planner bridges to merge two reads.
    /// Default 8; 0 merges only contiguous points.
    #[serde(default)]
    #[schemars(range(min = 0, max = 124))]
    pub max_gap: Option<Spanned<i64>>,
    /// Always write with FC16/FC15, even a single register or coil (for devices that do
    /// not implement FC06/FC05). Default `false`.
    #[serde(default)]
    pub write_multiple: Option<Spanned<bool>>,
    /// Most registers one read may ask for, 1–125 (Modbus devices). Default 125, the
    /// protocol's limit; lower it for devices that answer exception 03 or time out
    /// beyond some count.
    #[serde(default)]
    #[schemars(range(min = 1, max = 125))]
    pub max_read_registers: Option<Spanned<i64>>,
    /// Most coils or discrete inputs one read may ask for, 1–2000 (Modbus devices).
    /// Default 2000.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2000))]
    pub max_read_bits: Option<Spanned<i64>>,
    /// Longest wait between two polls of an offline device: the retry interval doubles
    /// from `poll_interval` up to this. Default `60s`.
    #[serde(default)]
    pub max_backoff: Option<Spanned<HumanDuration>>,
    /// UART: text sent every `poll_interval` to ask for a reading (`"READ\r\n"`); the
    /// reply is the next line the parser accepts within the bus `timeout`. Without it the
    /// device is expected to send on its own.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// UART: how a line becomes fields.
    #[serde(default)]
    pub parser: Option<ParserFile>,
    /// How the device shows in Home Assistant: `name`, `manufacturer`, `model`,
    /// `suggested_area`.
    #[serde(default)]
    pub homeassistant: Option<super::DeviceHaFile>,
    /// The device's points.
    #[serde(default)]
    pub points: Vec<PointFile>,
    // One JSON object per device (issue #23, `device_json.rs`):
    /// Publish, after every poll that changed a value, one retained JSON object with the
    /// last value of each of the device's points on this topic (`casa/medidor/json`):
    /// `{"<key>": value, ..., "ts": "2026-11-22T10:00:00.000Z"}`, numbers as numbers,
    /// named values and text as strings, points not read yet left out. In addition to
    /// the points' own topics; any bus kind. Default: none.
    #[serde(default)]
    pub json_topic: Option<Spanned<String>>,
    // Device profiles (#25, `profiles.rs`, `profile_use.rs`).
    /// A device profile (`eastron-sdm630`): the device gets the profile's points, each at
    /// `<topic_prefix>/<key>`, in addition to its own `points`. `fieldlink profiles` lists
    /// the shipped ones and those of the gateway file's `profiles:` directories. Modbus
    /// devices only. The profile's unit id, read limits and Home Assistant manufacturer
    /// and model apply where the device sets none of its own.
    #[serde(default)]
    pub profile: Option<Spanned<String>>,
    /// With `profile`: the topic its points are published under (`casa/energia/medidor`
    /// publishes the profile's `power` at `casa/energia/medidor/power`). Required with
    /// `profile`.
    #[serde(default)]
    pub topic_prefix: Option<Spanned<String>>,
    /// With `profile`: keys of the profile's points the device leaves out
    /// (`[energy_export, frequency]`).
    #[serde(default)]
    pub exclude: Option<Vec<Spanned<String>>>,
    /// With `profile`: point keys of a profile point to change, by the point's key
    /// (`power: {deadband: 5, poll_interval: 5s}`). Any point key may be given; `topic`
    /// publishes the point there instead of at `<topic_prefix>/<key>`, and
    /// `homeassistant:` changes only the keys it gives.
    #[serde(default)]
    pub overrides: Option<super::OverridesFile>,
}

/// Value type of a point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TypeName {
    /// One bit.
    Bool,
    /// Unsigned 16-bit (1 register).
    U16,
    /// Signed 16-bit (1 register).
    I16,
    /// Unsigned 32-bit (2 registers).
    U32,
    /// Signed 32-bit (2 registers).
    I32,
    /// Unsigned 64-bit (4 registers).
    U64,
    /// Signed 64-bit (4 registers).
    I64,
    /// 32-bit float (2 registers).
    F32,
    /// 64-bit float (4 registers).
    F64,
    /// Text of `length` bytes.
    String,
}

/// Payload format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadName {
    /// The bare value: `23.4`.
    Plain,
    /// `{"value":23.4,"unit":"°C","ts":"2026-11-22T10:00:00.000Z"}`.
    Json,
}

/// When a value is published.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishName {
    /// Only when the value changed (by more than `deadband`).
    OnChange,
    /// After every successful poll.
    EveryPoll,
}

/// One point: a value on the device mapped to one MQTT topic.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointFile {
    /// MQTT topic, taken exactly as written (`casa/terreo/temperatura`).
    pub topic: Spanned<String>,
    /// Modbus: `holding`, `input`, `coil` or `discrete`.
    #[serde(default)]
    pub table: Option<Spanned<TableName>>,
    /// Modbus: register (or bit) address, 0-based as on the wire.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub address: Option<Spanned<i64>>,
    /// GPIO: BCM pin number (`GPIO17` is `pin: 17`, physical header pin 11), 0–27.
    #[serde(default)]
    #[schemars(range(min = 0, max = 27))]
    pub pin: Option<Spanned<i64>>,
    /// GPIO: `input` (default) or `output`.
    #[serde(default)]
    pub mode: Option<Spanned<GpioModeName>>,
    /// GPIO input: `up`, `down` or `none` (default).
    #[serde(default)]
    pub pull: Option<Spanned<PullName>>,
    /// GPIO: a low level means ON (`true`). Default `false`.
    #[serde(default)]
    pub active_low: Option<Spanned<bool>>,
    /// GPIO input: how long a new level must hold before it is published. Default
    /// `20ms`; `0s` publishes every edge.
    #[serde(default)]
    pub debounce: Option<Spanned<HumanDuration>>,
    /// GPIO output: logical state at start. Default `false` (off).
    #[serde(default)]
    pub initial: Option<Spanned<bool>>,
    /// GPIO output: state when the gateway stops: `keep` (default), `off`, `on`, or the
    /// physical level `low`/`high`.
    #[serde(default)]
    pub on_shutdown: Option<Spanned<OnShutdownName>>,
    /// GPIO output: momentary; an ON command switches on for this long, then off (`500ms`
    /// for a garage door opener or a bell).
    #[serde(default)]
    pub pulse: Option<Spanned<HumanDuration>>,
    /// `bool`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `string`.
    /// Default `bool` on coils/discretes, `u16` on registers, `f64` on UART points.
    #[serde(default, rename = "type")]
    pub ty: Option<Spanned<TypeName>>,
    /// Length in bytes of a `string` (on UART points: the longest accepted, default 255).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub length: Option<Spanned<i64>>,
    /// `ABCD` (default), `CDAB`, `BADC` or `DCBA`.
    #[serde(default)]
    pub word_order: Option<Spanned<OrderName>>,
    /// For `bool` on a register: the bit (0 = least significant … 15).
    #[serde(default)]
    #[schemars(range(min = 0, max = 15))]
    pub bit: Option<Spanned<i64>>,
    /// Multiplier applied to the raw value. Default 1.
    #[serde(default)]
    pub scale: Option<Spanned<f64>>,
    /// Added after scaling. Default 0.
    #[serde(default)]
    pub offset: Option<Spanned<f64>>,
    /// Decimal places of the published value (rounded). Default: as computed.
    #[serde(default)]
    #[schemars(range(min = 0, max = 12))]
    pub precision: Option<Spanned<i64>>,
    /// Unit, shown in JSON payloads and Home Assistant (`°C`, `%`, `kWh`).
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Publish retained. Default `true`.
    #[serde(default)]
    pub retain: Option<Spanned<bool>>,
    /// MQTT QoS of the value, 0–2. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub qos: Option<Spanned<i64>>,
    /// `plain` (default) or `json`.
    #[serde(default)]
    pub payload: Option<Spanned<PayloadName>>,
    /// `on_change` (default) or `every_poll`.
    #[serde(default)]
    pub publish: Option<Spanned<PublishName>>,
    /// With `on_change`: publish only when the value moved by more than this. Default 0.
    #[serde(default)]
    pub deadband: Option<Spanned<f64>>,
    /// Republish an unchanged value at least this often (`5m`).
    #[serde(default)]
    pub heartbeat: Option<Spanned<HumanDuration>>,
    /// Accept commands on `<topic>/set` and write them to the device. Default `false`.
    #[serde(default)]
    pub writable: Option<Spanned<bool>>,
    /// Smallest value a command may set (engineering units, after scale/offset).
    #[serde(default)]
    pub min: Option<Spanned<f64>>,
    /// Largest value a command may set (engineering units, after scale/offset).
    #[serde(default)]
    pub max: Option<Spanned<f64>>,
    /// Names for values, used for commands and when publishing: `{ON: 1, OFF: 0}`.
    #[serde(default)]
    pub values: Option<Spanned<std::collections::BTreeMap<String, MapValue>>>,
    /// UART: the field holding the value: a key (key_value), a group name (regex) or a
    /// path such as `sensor.temp` or `ch[0].v` (json).
    #[serde(default)]
    pub field: Option<Spanned<String>>,
    /// UART: the line a `/set` writes, e.g. `"RELAY{channel} {value}\n"`. Fields:
    /// `{value}` (the name from `values` when one matches, else the number; booleans as
    /// 1/0), `{raw}` (the number after the inverse of scale/offset) and every key of
    /// `params`. Makes the point writable.
    #[serde(default)]
    pub command: Option<Spanned<String>>,
    /// UART: fixed fields for `command` (`{channel: 2}`).
    #[serde(default)]
    pub params: Option<Spanned<std::collections::BTreeMap<String, ParamValue>>>,
    /// UART: a regex the device's acknowledgement line must match (`'^OK'`); without it
    /// a command counts as done once written.
    #[serde(default)]
    pub ack: Option<Spanned<String>>,
    /// UART: how long to wait for `ack`. Default: the bus `timeout`.
    #[serde(default)]
    pub ack_timeout: Option<Spanned<HumanDuration>>,
    /// Home Assistant overrides: `name`, `component`, `device_class`, `state_class`,
    /// `icon`, `entity_category`, `enabled_by_default`, `expire_after`, `hidden`.
    #[serde(default)]
    pub homeassistant: Option<super::PointHaFile>,
    // Points at their own cadence (#23).
    /// Modbus: read this point this often instead of at its device's `poll_interval`
    /// (`1s` for power, `1m` for an energy total, `1h` for a serial number). A point that
    /// is not due costs no read of its own; it is still decoded and published whenever a
    /// read of a point that is due covers its registers. Default: the device's.
    #[serde(default)]
    pub poll_interval: Option<Spanned<HumanDuration>>,
    // Writes (#23): separate write register, write-only points, kept-alive setpoints.
    /// Modbus `holding` or `coil` point with `writable: true`: the register (or coil) a
    /// `/set` writes, for devices that take a setpoint at another address than the one
    /// they report it at; 0-based as `address`, written in the point's `type` and
    /// `word_order` (a `bit` point reads, changes and writes back this register). The
    /// value is still polled, and read back after the write, at `address`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65535))]
    pub write_address: Option<Spanned<i64>>,
    /// Modbus `holding` or `coil` point that is only written, never read (registers that
    /// read back as 0 or not at all): it is never polled and has no read-back; after the
    /// device acknowledged a `/set`, the written value is published as the point's state
    /// (retained when `retain` is). Implies `writable: true`. A device whose points are all
    /// `write_only` is never polled: it is `online` from the start and while its writes
    /// are acknowledged, `offline` after a write that got no answer. Default `false`.
    #[serde(default)]
    pub write_only: Option<Spanned<bool>>,
    /// Writable point: the last value a `/set` wrote is written again whenever this long
    /// has passed since the point's last write (`30s`), for devices that fall back to a
    /// safe value when their master goes quiet. A new `/set` replaces the value (the period
    /// restarts from its write); one that fails stops the rewriting, as do a reload that
    /// changes the device and shutdown. Many devices keep setpoints in flash or EEPROM with
    /// limited write cycles: check the manual.
    #[serde(default)]
    pub rewrite_every: Option<Spanned<HumanDuration>>,
    // One JSON object per device (issue #23, `device_json.rs`):
    /// The point's key in its device's JSON object (`json_topic`): a non-empty name
    /// without `/`, unique within the device, not `ts`. Default: the last level of its
    /// topic (`casa/medidor/potencia` → `potencia`).
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    // Scale factor registers (#25, `scale_register.rs`).
    /// Modbus `holding` or `input` register point: the address of a signed 16-bit scale
    /// factor `sf` in the same table (0-based, as `address`); the value published is the
    /// register value × 10^sf (then `scale` and `offset`), as SunSpec devices (SolarEdge,
    /// Fronius, SMA) and some inverters encode their values. The factor is read with the
    /// point, in the same request where the planner can; a value is published only once
    /// its factor was read in the same poll. A factor outside −10..10, or 0x8000 (SunSpec's
    /// "not implemented"), publishes nothing (and is logged once). Not on writable points.
    #[serde(default)]
    pub scale_register: Option<Spanned<i64>>,
}

/// A value in a `values:` map: a number or a boolean.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum MapValue {
    /// `true`/`false`.
    Bool(bool),
    /// A number.
    Number(f64),
}
