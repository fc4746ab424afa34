//! The Modbus TCP server (`modbus_server:`): what it listens on, whom it lets in, and
//! which served unit id is which device.

use std::{net::SocketAddr, time::Duration};

/// The Modbus TCP server that serves what the bus tasks last read (issue #26).
#[derive(Clone, Debug, PartialEq)]
pub struct ModbusServer {
    /// Listen address (default `127.0.0.1:5020`).
    pub listen: SocketAddr,
    /// Clients allowed to connect; a connection from elsewhere is closed at once.
    /// Without `allow:` in the file: loopback only (and a non-loopback `listen` then
    /// fails validation).
    pub allow: Allow,
    /// The oldest value served; `None`: 3 × the cadence of the point(s) whose read
    /// produced it (the device's `poll_interval` unless a point sets its own).
    pub max_age: Option<Duration>,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// FC05/06/15/16 accepted (on writable points only).
    pub writes: bool,
    /// Served unit id → device id (a Modbus device). Resolved at validation: the
    /// `units:` map as written, or else every Modbus device at its own unit id.
    pub units: Vec<(u8, String)>,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
    /// A request that has begun must be complete within this (a client that stops
    /// mid-frame is closed).
    pub frame_timeout: Duration,
}

/// Addresses and CIDR ranges a client may connect from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow(pub Vec<ipnet::IpNet>);

impl Allow {
    /// Loopback only (127.0.0.0/8 and ::1).
    pub fn loopback() -> Allow {
        Allow(vec![
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or_default(),
            ),
            ipnet::IpNet::V6(
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
            ),
        ])
    }

    /// Whether a client at `ip` may connect (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}
