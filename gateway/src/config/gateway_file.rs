//! The gateway file as the user writes it: the gateway, `mqtt:`, `mqtt.upstream:`,
//! `mqtt.embedded:`. Every `///` comment is the user reference for that key.

use serde::Deserialize;

use super::{ByteSize, HumanDuration, OneOrMany, Spanned};

/// The gateway file (`--config`, default `/etc/fieldlink/gateway.yaml`).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// Where the gateway keeps state across restarts (the upstream queue, the embedded
    /// broker's store `broker.store`). Default
    /// `/var/lib/fieldlink` (systemd's `StateDirectory=fieldlink`). Relative paths are
    /// resolved against the directory of the gateway file.
    #[serde(default)]
    pub state_dir: Option<Spanned<String>>,
    /// Home Assistant MQTT discovery (on by default with the embedded broker).
    #[serde(default)]
    pub homeassistant: Option<super::HomeAssistantFile>,
    // Device profiles (#25).
    /// Directories of your own device profiles (every `*.yaml` inside, one profile a
    /// file), a directory or a list; relative paths are resolved against the directory
    /// of the gateway file. They add to the profiles compiled into the binary; one with
    /// the name of a shipped profile replaces it (`check` warns).
    #[serde(default)]
    pub profiles: Option<Spanned<OneOrMany<String>>>,
    // Commissioning through the running gateway (#24).
    /// Accept commissioning requests (`fieldlink probe`, `scan` and `write` with `--config
    /// FILE --bus ID`) on `<base>/bus/<id>/request` of the embedded broker, run by the bus
    /// task between its polls, so that the port keeps one owner. Only clients the
    /// `acl_file` grants write on that topic may send them; without an `acl_file`, only
    /// clients connected over loopback (on this machine). Default `false`.
    #[serde(default)]
    pub commissioning: Option<Spanned<bool>>,
    // The Modbus TCP server (#26, `modbus_server.rs`).
    /// A Modbus TCP server that serves other Modbus masters (Home Assistant's `modbus`,
    /// evcc, a vendor's tool) the registers the gateway last read, so that each device
    /// keeps one master. Off unless this section is present (`modbus_server: {}` for every
    /// default).
    #[serde(default)]
    pub modbus_server: Option<Spanned<super::ModbusServerFile>>,
}

/// `mqtt:` section of the gateway file.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttFile {
    /// The embedded broker, on by default.
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    #[schemars(range(min = 0, max = 1))]
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
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
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
    #[schemars(range(min = 0, max = 1000000))]
    pub replay_rate: Option<Spanned<i64>>,
}

/// `mqtt.embedded:` section.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    #[schemars(range(min = 1, max = 10000))]
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
    // Subscription bounds:
    /// Most subscriptions one client (one session) may hold; a SUBSCRIBE entry beyond it
    /// gets the failure return code (MQTT 5: 0x97 "Quota exceeded"). Re-subscribing a
    /// filter the client has does not count again. Default 10000: a Home Assistant with
    /// 2000 entities subscribes to a few topics each.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_subscriptions: Option<Spanned<u32>>,
    /// Most subscriptions all clients together may hold, offline persistent sessions
    /// included; beyond it SUBSCRIBE entries are refused as above. At least
    /// `max_subscriptions`. Default 20000 (or `max_subscriptions`, when that is higher).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_subscriptions_total: Option<Spanned<u32>>,
    // The connection front (issue #21): bounds before CONNECT and on packets.
    /// Longest a client may take from its TCP connect to a complete CONNECT packet, the
    /// TLS handshake included; then the connection is closed (and counted in
    /// `<base>/diagnostics`, `broker.connect_timeouts`). Default `10s`.
    #[serde(default)]
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    /// Connections from one address (IPv6: one /64 network) that have not yet completed
    /// their CONNECT; one more is closed at once (`broker.connecting_refused`), so one
    /// host cannot hold the broker's slots. 1–1024, default 8.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1024))]
    pub max_connecting_per_address: Option<Spanned<u32>>,
    /// Connections from all addresses that have not yet completed their CONNECT; one
    /// more is closed at once. 1–1024, default 64.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1024))]
    pub max_connecting: Option<Spanned<u32>>,
    /// Largest MQTT packet a client may send, in bytes, fixed header included (as
    /// Mosquitto's `max_packet_size`); a bigger one closes the connection before it is
    /// read (MQTT 5: DISCONNECT 0x95, and the CONNACK announces the limit).
    /// 1024–16777216, default 262144 (256 KiB).
    #[serde(default)]
    #[schemars(range(min = 1024, max = 16777216))]
    pub max_packet_size: Option<Spanned<u32>>,
    // Issue #21: what is held for offline clients, and kept across restarts.
    /// Messages held for one offline persistent session (`clean session` off), in flight
    /// included, as Mosquitto's `max_queued_messages`. Beyond it a QoS 0 message is
    /// dropped and a QoS 1 or 2 message makes room by dropping the oldest. Default `1000`.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub max_queued_messages: Option<Spanned<u32>>,
    /// Bytes (topic, payload and properties) held for one offline persistent session, as
    /// Mosquitto's `max_queued_bytes`; same policy. Default `1MiB`.
    #[serde(default)]
    pub max_queued_bytes: Option<Spanned<ByteSize>>,
    /// Bytes held for all offline persistent sessions together; beyond it the oldest
    /// messages of the session holding the most are dropped. Default `16MiB`.
    #[serde(default)]
    pub max_queued_bytes_total: Option<Spanned<ByteSize>>,
    /// Keep clients' retained messages and persistent sessions (subscriptions, queued
    /// messages) in `<state_dir>/broker.store`, so that a restart, an upgrade or a crash
    /// loses at most the last `autosave_interval`. Default `true`.
    #[serde(default)]
    pub persistence: Option<Spanned<bool>>,
    /// How often changes are written to the store (in the background, only when
    /// something changed), as Mosquitto's `autosave_interval`; at shutdown it is written
    /// once more. Default `10s`.
    #[serde(default)]
    pub autosave_interval: Option<Spanned<HumanDuration>>,
}

/// `mqtt.embedded.tls:` section.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTlsFile {
    /// Address of the TLS listener, e.g. `0.0.0.0:8883`.
    pub listen: Spanned<String>,
    /// The server's certificate chain (PEM), relative to the gateway file.
    pub cert_file: Spanned<String>,
    /// The server's private key (PEM), relative to the gateway file.
    pub key_file: Spanned<String>,
}

/// `serde(default)` of `enabled`.
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
            max_subscriptions: None,
            max_subscriptions_total: None,
            connect_timeout: None,
            max_connecting_per_address: None,
            max_connecting: None,
            max_packet_size: None,
            max_queued_messages: None,
            max_queued_bytes: None,
            max_queued_bytes_total: None,
            persistence: None,
            autosave_interval: None,
        }
    }
}
