//! The MQTT half of the model: the upstream broker with its queue, the embedded broker
//! with its listeners, logins, bounds and store.

use std::{net::SocketAddr, sync::Arc, time::Duration};

/// MQTT settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MqttModel {
    /// The embedded broker, when enabled.
    pub embedded: Option<EmbeddedBroker>,
    /// The gateway's client id (reserved on the embedded broker: no client may use it).
    pub client_id: String,
    /// The upstream broker, when configured.
    pub upstream: Option<Upstream>,
}

/// The upstream (cloud) broker and its store-and-forward queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// The URL as written (for logs).
    pub url: String,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS settings, for `mqtts://`.
    pub tls: Option<Tls>,
    /// Client id (names the persistent session).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password (read from a file or the environment; never printed).
    pub password: Option<Secret>,
    /// Keepalive.
    pub keepalive: Duration,
    /// QoS of data messages.
    pub qos: u8,
    /// Prefix of every topic upstream.
    pub prefix: String,
    /// Commands are accepted from upstream.
    pub accept_commands: bool,
    /// The disk queue.
    pub queue: QueueSettings,
}

/// A password: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The embedded broker's TLS listener.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddedTls {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate chain (PEM, checked to parse).
    pub cert: Vec<u8>,
    /// Private key (PEM, checked to parse).
    pub key: Secret,
}

/// TLS towards the upstream broker (PEM text, already checked to parse).
#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    /// CA certificates; `None` trusts the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Secret)>,
}

/// The store-and-forward queue of the upstream broker.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Directory.
    pub dir: std::path::PathBuf,
    /// Largest size in bytes (drop-oldest beyond it).
    pub max_size: u64,
    /// Write batch interval.
    pub flush_interval: Duration,
    /// Messages per second while catching up; 0 is unlimited.
    pub replay_rate: u32,
}

/// The embedded broker.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddedBroker {
    /// Listen address.
    pub listen: SocketAddr,
    /// Maximum client connections.
    pub max_connections: usize,
    /// Users who may log in (`users_file`), if any.
    pub users: Option<Arc<crate::broker::passwd::Users>>,
    /// Topic rights (`acl_file`); without it every admitted client may read all and
    /// write all but the gateway's own topics.
    pub acl: Option<Arc<crate::broker::acl::Acl>>,
    /// Whether clients without a user name are admitted.
    pub allow_anonymous: bool,
    /// How often the `$SYS` topics are refreshed.
    pub sys_interval: Duration,
    /// The TLS listener, if any.
    pub tls: Option<EmbeddedTls>,
    /// The gateway client's own password on this broker, new at every start.
    pub secret: Secret,
    // Subscription bounds:
    /// Most subscriptions one client may hold (`max_subscriptions`).
    pub max_subscriptions: usize,
    /// Most subscriptions all clients together may hold (`max_subscriptions_total`).
    pub max_subscriptions_total: usize,
    // The connection front (issue #21): bounds before CONNECT and on packets.
    /// Longest from accept to a complete CONNECT (TLS handshake included).
    pub connect_timeout: Duration,
    /// Connections still before their CONNECT from one source address (IPv6: a /64).
    pub max_connecting_per_address: usize,
    /// Connections still before their CONNECT, in all.
    pub max_connecting: usize,
    /// Largest packet a client may send, in bytes, fixed header included.
    pub max_packet_size: u32,
    // Issue #21, offline queues and persistence (broker/queues.rs, broker/store/).
    /// Bounds of what is held for offline persistent sessions.
    pub queues: QueueLimits,
    /// Where clients' retained messages and persistent sessions are kept across restarts;
    /// `None`: in memory only (`persistence: false`).
    pub persistence: Option<Persistence>,
}

/// Bounds of the messages the embedded broker holds for offline persistent sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages per session (`max_queued_messages`).
    pub max_messages: usize,
    /// Bytes per session (`max_queued_bytes`): topic, payload and properties.
    pub max_bytes: usize,
    /// Bytes for all offline sessions together (`max_queued_bytes_total`).
    pub max_bytes_total: usize,
}

/// The embedded broker's store on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// The store file (`<state_dir>/broker.store`).
    pub file: std::path::PathBuf,
    /// How often changes are written (`autosave_interval`).
    pub autosave_interval: Duration,
}

impl Secret {
    /// A new random secret (128 bits, hex).
    pub fn random() -> Secret {
        let mut b = [0u8; 16];
        // Without the OS's randomness (never seen on Linux) the secret is still unique
        // per process and start time, and only guards against local clients.
        if getrandom::fill(&mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            b = (t ^ u128::from(std::process::id()) << 64).to_le_bytes();
        }
        Secret(b.iter().map(|x| format!("{x:02x}")).collect())
    }
}
