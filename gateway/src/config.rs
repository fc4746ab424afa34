//! Configuration as the user writes it: the gateway file and the mapping files (YAML).
//!
//! These structs mirror the files one to one; every `///` comment is the user reference
//! for that key (see `mappings/REFERENCE.md`). Unknown keys are rejected. They are turned
//! into the runtime [`Model`](crate::model::Model) by [`crate::validate`], which collects
//! every error with its file, line, column and field path.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

/// A value with the line and column where the file wrote it, for error messages.
///
/// serde-saphyr's own `Spanned` keeps two full locations per value (80 bytes); with every
/// key of a point spanned, a mapping of 10 000 points held about 30 MB while it was read,
/// and that start-up peak stayed in the process's resident set. This keeps 8 bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    line: u32,
    column: u32,
}

impl<T> Spanned<T> {
    /// 1-based line (0 when unknown).
    pub fn line(&self) -> u64 {
        u64::from(self.line)
    }

    /// 1-based column (0 when unknown).
    pub fn column(&self) -> u64 {
        u64::from(self.column)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Spanned {
            line: clamp(s.referenced.line()),
            column: clamp(s.referenced.column()),
            value: s.value,
        })
    }
}

/// Longest duration accepted anywhere (keeps deadline arithmetic far from overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written the human way: `500ms`, `1s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}`: write it like `500ms`, `1s`, `5m`, `1h 30m`"
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration `{s}` is longer than 365 days"
            )));
        }
        Ok(HumanDuration(d))
    }
}

/// One value or a list of them (`mappings: casa.yaml` or `mappings: [a.yaml, b.yaml]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// All values.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The gateway file (`--config`, default `/etc/fieldlink/gateway.yaml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Gateway id (letters, digits, `-`, `_`): names the gateway in topics and client ids.
    pub id: Spanned<String>,
    /// Root of the gateway's own topics (status, availability, diagnostics).
    /// Default: `fieldlink/<id>`.
    #[serde(default)]
    pub base_topic: Option<Spanned<String>>,
    /// Mapping files: a file, a directory (every `*.yaml`/`*.yml` inside) or a glob
    /// (`conf.d/*.yaml`), or a list of those. Relative paths are resolved against the
    /// directory of the gateway file.
    pub mappings: Spanned<OneOrMany<String>>,
    /// MQTT settings.
    #[serde(default)]
    pub mqtt: MqttFile,
    /// How often `<base>/diagnostics` is published. Default `30s`.
    #[serde(default)]
    pub diagnostics_interval: Option<Spanned<HumanDuration>>,
    /// Where the gateway keeps state across restarts (the upstream queue). Default
    /// `/var/lib/fieldlink` (systemd's `StateDirectory=fieldlink`). Relative paths are
    /// resolved against the directory of the gateway file.
    #[serde(default)]
    pub state_dir: Option<Spanned<String>>,
}

/// `mqtt:` section of the gateway file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    /// The embedded broker (rumqttd), on by default.
    #[serde(default)]
    pub embedded: EmbeddedFile,
    /// The gateway's client id on the embedded broker: reserved (no client may take it)
    /// and used by the start-up check; the gateway itself is linked in process. Default:
    /// `fieldlink-<id>`.
    #[serde(default)]
    pub client_id: Option<Spanned<String>>,
    /// No effect any more: the gateway has no MQTT connection to its embedded broker
    /// (`check` warns). The upstream connection has `upstream.keepalive`.
    #[serde(default)]
    pub keepalive: Option<Spanned<HumanDuration>>,
    /// An upstream (cloud) broker. Every message also goes there, through a disk-backed
    /// store-and-forward queue. Off unless this section is present.
    #[serde(default)]
    pub upstream: Option<Spanned<UpstreamFile>>,
}

/// `mqtt.upstream:` section: the broker the gateway bridges to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `mqtt://host:port` (plain) or `mqtts://host:port` (TLS). Default ports 1883 and 8883.
    pub url: Spanned<String>,
    /// Client id on the upstream broker; keep it stable, it names the persistent session.
    /// Default: `fieldlink-<id>`.
    #[serde(default)]
    pub client_id: Option<Spanned<String>>,
    /// User name.
    #[serde(default)]
    pub username: Option<Spanned<String>>,
    /// File holding the password (one line; a trailing newline is ignored). Never write the
    /// password itself in this file.
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
    /// Environment variable holding the password (e.g. `FIELDLINK_UPSTREAM_PASSWORD`, set in
    /// the systemd unit's environment file).
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    /// CA certificate(s) (PEM) that signed the broker's certificate. Default with `mqtts`:
    /// the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<Spanned<String>>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<Spanned<String>>,
    /// Keepalive towards the upstream broker. Default `30s`.
    #[serde(default)]
    pub keepalive: Option<Spanned<HumanDuration>>,
    /// QoS of data messages upstream: 1 (default) or 0. With 0 a message leaves the queue
    /// once written to the socket (no delivery guarantee). QoS 2 is not offered: delivery is
    /// at least once, with the queue resending what was not acknowledged.
    #[serde(default)]
    pub qos: Option<Spanned<i64>>,
    /// Put in front of every topic upstream, e.g. `sites/casa/`, so many gateways share one
    /// broker. Default: none.
    #[serde(default)]
    pub prefix: Option<Spanned<String>>,
    /// Accept commands (`<prefix><topic>/set`) from the upstream broker. Default `false`.
    #[serde(default)]
    pub accept_commands: bool,
    /// The store-and-forward queue.
    #[serde(default)]
    pub queue: QueueFile,
}

/// `mqtt.upstream.queue:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Directory of the queue. Default `<state_dir>/upstream-queue`.
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
    /// Largest size of the queue (`64MiB`, `512KiB`, `1GiB`). When full, the oldest
    /// messages are dropped (and counted). Default `64MiB`.
    #[serde(default)]
    pub max_size: Option<Spanned<ByteSize>>,
    /// How often queued messages are written to disk (one write and one fsync per
    /// interval). A `kill -9` or power cut loses at most the messages of the last interval
    /// that the broker had not acknowledged. Default `1s`.
    #[serde(default)]
    pub flush_interval: Option<Spanned<HumanDuration>>,
    /// Messages per second sent while catching up after an outage; `0` for no limit.
    /// Default 1000.
    #[serde(default)]
    pub replay_rate: Option<Spanned<i64>>,
}

/// A size written the human way: `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse `64MiB`, `64 MB`, `1g`, `4096`.
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return None,
        };
        let v = n * mult as f64;
        (0.0..1e15).contains(&v).then_some(ByteSize(v as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size `{s}`: write it like `64MiB`, `512KiB` or `1GiB`"
                ))
            }),
        }
    }
}

/// `mqtt.embedded:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedFile {
    /// Run the embedded broker. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address the embedded broker listens on. Default `127.0.0.1:1883`; use
    /// `0.0.0.0:1883` to let other machines (Home Assistant) connect.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// Maximum simultaneous client connections. Default 32.
    #[serde(default)]
    pub max_connections: Option<Spanned<u32>>,
    /// Users who may log in: a password file in Mosquitto's format, made with
    /// `mosquitto_passwd -c /etc/fieldlink/users <user>`; relative to the gateway file.
    /// Required when `listen` is not a loopback address, unless `allow_anonymous: true`.
    #[serde(default)]
    pub users_file: Option<Spanned<String>>,
    /// Topic rights per user: a file in Mosquitto's `acl_file` format (`user`, `topic`,
    /// `pattern` lines). Without it every admitted client may read everything and write
    /// everything but the gateway's own topics; with it, only what it grants.
    #[serde(default)]
    pub acl_file: Option<Spanned<String>>,
    /// Admit clients without a user name. Default: `true` on a loopback `listen`
    /// address and without `users_file`, otherwise `false`.
    #[serde(default)]
    pub allow_anonymous: Option<Spanned<bool>>,
    /// How often the `$SYS/broker/...` topics are refreshed. Default `10s`, as Mosquitto.
    #[serde(default)]
    pub sys_interval: Option<Spanned<HumanDuration>>,
    /// A second listener that speaks MQTT over TLS, for clients on an untrusted network.
    #[serde(default)]
    pub tls: Option<Spanned<EmbeddedTlsFile>>,
}

/// `mqtt.embedded.tls:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTlsFile {
    /// Address of the TLS listener, e.g. `0.0.0.0:8883`.
    pub listen: Spanned<String>,
    /// The server's certificate chain (PEM), relative to the gateway file.
    pub cert_file: Spanned<String>,
    /// The server's private key (PEM), relative to the gateway file.
    pub key_file: Spanned<String>,
}

fn yes() -> bool {
    true
}

impl Default for EmbeddedFile {
    fn default() -> Self {
        EmbeddedFile {
            enabled: true,
            listen: None,
            max_connections: None,
            users_file: None,
            acl_file: None,
            allow_anonymous: None,
            sys_interval: None,
            tls: None,
        }
    }
}

/// A mapping file: buses and the devices on them.
#[derive(Debug, Default, Deserialize)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BusKindName {
    /// Modbus TCP: `host`, `port`, `timeout`.
    ModbusTcp,
    /// The GPIO lines of the board the gateway runs on: `backend`.
    Gpio,
    /// Modbus RTU on a serial line (RS-485): `path`, `baud`, `parity`, `data_bits`,
    /// `stop_bits`, `timeout`, `frame_delay`.
    ModbusRtu,
    /// Text lines on a serial port (sensors and boards with an ASCII protocol): `path`,
    /// `baud`, `parity`, `data_bits`, `stop_bits`, `timeout`, `delimiter`, `max_line`.
    Uart,
}

/// Parity of a serial line.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParityName {
    /// No parity bit.
    None,
    /// Even parity (the Modbus specification's default).
    Even,
    /// Odd parity.
    Odd,
}

/// GPIO controller.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GpioBackendName {
    /// A Raspberry Pi through rppal (every model, Pi 5 included).
    Rppal,
    /// A simulated board: inputs float at their pull level, outputs only change state.
    Simulated,
}

/// One bus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusFile {
    /// Bus id, referenced by `devices[].bus`.
    pub id: Spanned<String>,
    /// `modbus_tcp`, `modbus_rtu`, `uart` or `gpio`.
    pub kind: Spanned<BusKindName>,
    /// Host name or IP address (modbus_tcp).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// TCP port (modbus_tcp). Default 502.
    #[serde(default)]
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
    pub baud: Option<Spanned<i64>>,
    /// Parity (modbus_rtu, uart): `none` (default), `even` or `odd`.
    #[serde(default)]
    pub parity: Option<Spanned<ParityName>>,
    /// Data bits (modbus_rtu, uart), 7 or 8. Default 8.
    #[serde(default)]
    pub data_bits: Option<Spanned<i64>>,
    /// Stop bits (modbus_rtu, uart), 1 or 2. Default 1.
    #[serde(default)]
    pub stop_bits: Option<Spanned<i64>>,
    /// Extra silence between frames on top of the 3.5 character times (modbus_rtu), for
    /// slow devices or RS-485 adapters that switch direction late. Default `0s`.
    #[serde(default)]
    pub frame_delay: Option<Spanned<HumanDuration>>,
    /// End of a line (uart). Default `"\n"` (a `\r` before it is trimmed off); write
    /// `"\r\n"` or any other text in double quotes.
    #[serde(default)]
    pub delimiter: Option<Spanned<String>>,
    /// Longest line in bytes (uart), 1–65536; longer lines are dropped and counted.
    /// Default 256.
    #[serde(default)]
    pub max_line: Option<Spanned<i64>>,
}

/// One device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// Device id: letters, digits, `-`, `_`; used in `<base>/<device>/availability`.
    pub id: Spanned<String>,
    /// Id of the bus the device is on.
    pub bus: Spanned<String>,
    /// Modbus unit id (slave address), 1–247. Default 1.
    #[serde(default)]
    pub unit: Option<Spanned<i64>>,
    /// Time between the starts of two polls. Default `1s`. On a uart device without
    /// `query`: the period the device sends at (it is `offline` after `offline_after`
    /// periods without a line).
    #[serde(default)]
    pub poll_interval: Option<Spanned<HumanDuration>>,
    /// Consecutive failed polls after which the device is published `offline`. Default 3.
    #[serde(default)]
    pub offline_after: Option<Spanned<i64>>,
    /// Largest gap (registers or bits) the read planner bridges to merge two reads.
    /// Default 8; 0 merges only contiguous points.
    #[serde(default)]
    pub max_gap: Option<Spanned<i64>>,
    /// Always write with FC16/FC15, even a single register or coil (for devices that do
    /// not implement FC06/FC05). Default `false`.
    #[serde(default)]
    pub write_multiple: Option<Spanned<bool>>,
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
    /// The device's points.
    #[serde(default)]
    pub points: Vec<PointFile>,
}

/// `parser:` of a uart device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserFile {
    /// `key_value` (`T=23.4;H=51.2`), `regex` (named groups) or `json` (field paths).
    pub kind: Spanned<ParserKindName>,
    /// key_value: between two pairs. Default `;`; `" "` splits at any whitespace.
    #[serde(default)]
    pub pair_separator: Option<Spanned<String>>,
    /// key_value: between a key and its value. Default `=`.
    #[serde(default)]
    pub kv_separator: Option<Spanned<String>>,
    /// regex: the pattern; each named group (`(?P<co2>\d+)`) is a field. Use single
    /// quotes in YAML so backslashes stay as written.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
}

/// Kind of a line parser.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParserKindName {
    /// `T=23.4;H=51.2`.
    KeyValue,
    /// A regular expression with named groups.
    Regex,
    /// One JSON object per line.
    Json,
}

/// A fixed template field: text, a number or a boolean.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true`/`false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(t) => f.write_str(t),
        }
    }
}

/// Modbus table of a point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableName {
    /// Holding registers (FC03).
    Holding,
    /// Input registers (FC04).
    Input,
    /// Coils (FC01).
    Coil,
    /// Discrete inputs (FC02).
    Discrete,
}

/// Value type of a point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
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

/// Word order.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum OrderName {
    /// Big-endian (the Modbus default).
    #[serde(rename = "ABCD")]
    Abcd,
    /// Words swapped.
    #[serde(rename = "CDAB")]
    Cdab,
    /// Bytes swapped inside words.
    #[serde(rename = "BADC")]
    Badc,
    /// Little-endian.
    #[serde(rename = "DCBA")]
    Dcba,
}

/// Payload format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadName {
    /// The bare value: `23.4`.
    Plain,
    /// `{"value":23.4,"unit":"°C","ts":"2026-11-22T10:00:00.000Z"}`.
    Json,
}

/// When a value is published.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PublishName {
    /// Only when the value changed (by more than `deadband`).
    OnChange,
    /// After every successful poll.
    EveryPoll,
}

/// One point: a value on the device mapped to one MQTT topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointFile {
    /// MQTT topic, taken exactly as written (`casa/terreo/temperatura`).
    pub topic: Spanned<String>,
    /// Modbus: `holding`, `input`, `coil` or `discrete`.
    #[serde(default)]
    pub table: Option<Spanned<TableName>>,
    /// Modbus: register (or bit) address, 0-based as on the wire.
    #[serde(default)]
    pub address: Option<Spanned<i64>>,
    /// GPIO: BCM pin number (`GPIO17` is `pin: 17`, physical header pin 11), 0–27.
    #[serde(default)]
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
    pub length: Option<Spanned<i64>>,
    /// `ABCD` (default), `CDAB`, `BADC` or `DCBA`.
    #[serde(default)]
    pub word_order: Option<Spanned<OrderName>>,
    /// For `bool` on a register: the bit (0 = least significant … 15).
    #[serde(default)]
    pub bit: Option<Spanned<i64>>,
    /// Multiplier applied to the raw value. Default 1.
    #[serde(default)]
    pub scale: Option<Spanned<f64>>,
    /// Added after scaling. Default 0.
    #[serde(default)]
    pub offset: Option<Spanned<f64>>,
    /// Decimal places of the published value (rounded). Default: as computed.
    #[serde(default)]
    pub precision: Option<Spanned<i64>>,
    /// Unit, shown in JSON payloads and Home Assistant (`°C`, `%`, `kWh`).
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Publish retained. Default `true`.
    #[serde(default)]
    pub retain: Option<Spanned<bool>>,
    /// MQTT QoS of the value, 0–2. Default 0.
    #[serde(default)]
    pub qos: Option<Spanned<i64>>,
    /// `plain` (default) or `json`.
    #[serde(default)]
    pub payload: Option<Spanned<PayloadName>>,
    /// `on_change` (default) or `every_poll`.
    #[serde(default)]
    pub publish: Option<Spanned<PublishName>>,
    /// With `on_change`: publish only when the value moved by more than this.
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
}

/// Direction of a GPIO point.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GpioModeName {
    /// Read the line; publish its debounced changes.
    Input,
    /// Drive the line; writable through `<topic>/set`.
    Output,
}

/// Pull resistor of a GPIO input.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PullName {
    /// Internal pull-up.
    Up,
    /// Internal pull-down.
    Down,
    /// None.
    None,
}

/// State of a GPIO output when the gateway stops.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdownName {
    /// Leave as it is.
    Keep,
    /// Logical off.
    Off,
    /// Logical on.
    On,
    /// Physical low.
    Low,
    /// Physical high.
    High,
}

/// A value in a `values:` map: a number or a boolean.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MapValue {
    /// `true`/`false`.
    Bool(bool),
    /// A number.
    Number(f64),
}

/// A parsed file and where it came from.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The path as shown in messages.
    pub path: PathBuf,
    /// The content.
    pub value: T,
}

/// A structural problem in a file: YAML syntax, an unknown key, a wrong type.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseProblem {
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Field path (`devices[0].points[2].address`), empty at the top.
    pub path: String,
    /// The message.
    pub message: String,
    /// A hint such as "did you mean `address`?".
    pub hint: Option<String>,
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Deserialize one YAML document, returning the first structural problem with its
/// location, path and hint.
pub fn parse_yaml<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ParseProblem> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let loc = err.location();
        let raw = err.without_snippet().to_string();
        let message = strip_location_prefix(&raw);
        let path = clean_path(&path);
        let (message, hint) = humanize(&message);
        ParseProblem {
            line: loc.map_or(0, |l| l.line()),
            column: loc.map_or(0, |l| l.column()),
            path,
            message,
            hint,
        }
    })
}

fn strip_location_prefix(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let mut s = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = s.strip_prefix("line ") {
        if let Some(idx) = rest.find(": ") {
            s = &rest[idx + 2..];
        }
    }
    // The location is printed in front already: drop " at line L, column C".
    if let Some(idx) = s.rfind(" at line ") {
        if s[idx..].contains(", column ") {
            s = &s[..idx];
        }
    }
    s.to_string()
}

/// Remove the `.value` segments serde-saphyr's `Spanned` adds and the `?` of serde's
/// "unknown path" marker.
fn clean_path(p: &str) -> String {
    let p = p.replace(".value", "");
    let p = p.strip_suffix(".?").unwrap_or(&p).to_string();
    if p == "?" || p == "." {
        String::new()
    } else {
        p
    }
}

/// Turn serde's messages into ours: "unknown field `adress`, expected one of a, b" becomes
/// "unknown key `adress`" with a did-you-mean (or the list of valid keys) as the hint.
fn humanize(message: &str) -> (String, Option<String>) {
    if message.starts_with("duplicate mapping key") {
        let key = message
            .trim_start_matches("duplicate mapping key")
            .trim_start_matches(':')
            .split(',')
            .next()
            .unwrap_or("")
            .trim();
        return (
            format!("duplicate key `{key}`"),
            Some("each key may appear once per item; remove one of them".into()),
        );
    }
    let (kind, rest) = if let Some(r) = message.strip_prefix("unknown field `") {
        ("key", r)
    } else if let Some(r) = message.strip_prefix("unknown variant `") {
        ("value", r)
    } else {
        return (message.to_string(), None);
    };
    let Some((word, rest)) = rest.split_once('`') else {
        return (message.to_string(), None);
    };
    let list = rest
        .split_once("expected one of")
        .map(|(_, l)| l)
        .or_else(|| rest.split_once("expected").map(|(_, l)| l))
        .unwrap_or("");
    let candidates: Vec<String> = list
        .split(',')
        .map(|c| c.trim().trim_matches('`').to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let hint = match did_you_mean(word, candidates.iter().map(String::as_str)) {
        Some(c) => Some(format!("did you mean `{c}`?")),
        None if candidates.is_empty() => None,
        None if kind == "key" => Some(format!("valid keys here: {}", candidates.join(", "))),
        None => Some(format!("expected one of: {}", candidates.join(", "))),
    };
    (format!("unknown {kind} `{word}`"), hint)
}

/// The closest candidate to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    candidates
        .map(|c| (strsim::damerau_levenshtein(&lw, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Resolve the `mappings:` entries against the gateway file's directory.
/// Returns the files (sorted, deduplicated) or the entries that matched nothing.
pub fn resolve_mappings(base: &Path, entries: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for e in entries {
        let p = base.join(e);
        if e.contains(['*', '?', '[']) {
            let pattern = p.to_string_lossy().to_string();
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map(|g| g.filter_map(Result::ok).filter(|p| p.is_file()).collect())
                .unwrap_or_default();
            if found.is_empty() {
                missing.push(format!("`{e}` matches no file"));
            }
            found.sort();
            files.extend(found);
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|d| d.path())
                        .filter(|p| {
                            p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                        })
                        .collect()
                })
                .unwrap_or_default();
            if found.is_empty() {
                missing.push(format!("directory `{e}` holds no .yaml file"));
            }
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p);
        } else {
            missing.push(format!("`{}` does not exist", p.display()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    (files, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_gets_path_location_and_hint() {
        let y = "devices:\n  - id: a\n    bus: b\n    points:\n      - topic: x\n        table: holding\n        adress: 3\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!((e.line, e.column), (7, 9));
        assert_eq!(e.path, "devices[0].points[0].adress");
        assert_eq!(e.hint.as_deref(), Some("did you mean `address`?"));
    }

    #[test]
    fn absurd_durations_are_rejected_with_their_location() {
        let y = "buses:\n  - id: b\n    kind: modbus_tcp\n    host: h\n    timeout: 1000000000y\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.message.contains("longer than 365 days"), "{}", e.message);
    }

    #[test]
    fn unknown_variant_gets_hint() {
        let y = "devices:\n  - id: a\n    bus: b\n    points:\n      - topic: x\n        table: holdng\n        address: 3\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!(e.path, "devices[0].points[0].table");
        assert_eq!(e.hint.as_deref(), Some("did you mean `holding`?"));
    }
}
