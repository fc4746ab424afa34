//! The embedded MQTT broker (rumqttd), sized for a small board.
//!
//! rumqttd only logs a listen address that is already taken, so [`start`] binds the
//! address itself first and returns a clear error; it then starts the broker on its own
//! thread (`Broker::start` blocks) and waits until it accepts connections.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;
use tracing::{error, info};

use crate::model::EmbeddedBroker;

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
    /// Thread spawn failed.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// Maximum number of retained topics delivered to one new QoS 0 subscriber, and the
/// outgoing queue limit per connection.
pub const MAX_OUTGOING_PACKETS: u64 = 200_000;

/// Size of one in-memory log segment per subscription filter, counted by rumqttd as
/// topic + payload + 4 bytes per message (the real cost per message is ~10× that).
/// A subscriber that falls further behind than the segments hold skips ahead.
pub const SEGMENT_BYTES: usize = 32 * 1024;
/// Number of segments kept per subscription filter.
pub const SEGMENTS: usize = 4;

/// The rumqttd configuration for `cfg`.
pub fn config(cfg: &EmbeddedBroker) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let mut v4 = HashMap::new();
    v4.insert("v4".to_string(), server);
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections + 1,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Default::default()
    }
}

/// Connect and wait for CONNACK: proves the broker serves MQTT
/// (a bare TCP probe would make rumqttd log an error).
fn mqtt_probe(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let id = b"fieldlink-probe";
    let mut pkt = vec![0x10, (10 + 2 + id.len()) as u8];
    pkt.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, id.len() as u8]);
    pkt.extend_from_slice(id);
    s.write_all(&pkt)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other("unexpected CONNACK"));
    }
    // Close without DISCONNECT: rumqttd logs a clean DISCONNECT as an error ("router-drop").
    Ok(())
}

/// Start the embedded broker; returns once it accepts connections.
pub fn start(cfg: &EmbeddedBroker) -> Result<(), BrokerError> {
    let addr = cfg.listen;
    match TcpListener::bind(addr) {
        Ok(l) => drop(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(BrokerError::AddrInUse { addr })
        }
        Err(source) => return Err(BrokerError::Bind { addr, source }),
    }
    let config = config(cfg);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "Embedded broker stopped.");
            }
        })
        .map_err(BrokerError::Thread)?;
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if mqtt_probe(probe).is_ok() {
            info!(listen = %addr, "Embedded broker listening.");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(addr))
}
