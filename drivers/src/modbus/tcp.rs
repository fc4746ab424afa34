//! Modbus TCP: the master ([`super::master`]) framing MBAP (transaction id, protocol id,
//! length, unit, PDU) on a TCP connection. tokio-modbus's TCP client takes a reply with
//! more registers than asked and a frame the device sent unasked for the answer to the
//! next request; this one checks every field of every reply, skips replies to earlier
//! requests by their transaction id and throws away input nobody asked for.

use std::time::Duration;

use super::{frame::Mbap, link::TcpLink, master::Master};

/// A Modbus TCP endpoint (one TCP connection, any number of unit ids behind it).
pub type TcpTransport = Master<Mbap, TcpLink>;

impl TcpTransport {
    /// A transport for `host:port`; connects lazily on the first request, within
    /// `timeout`, as every request must be answered.
    pub fn new(host: impl Into<String>, port: u16, timeout: Duration) -> Self {
        let link = TcpLink {
            host: host.into(),
            port,
            connect_timeout: timeout,
        };
        Master::over(
            Mbap::default(),
            link,
            timeout,
            Duration::ZERO,
            Duration::ZERO,
        )
    }

    /// Keep `frame_delay` of silence between a reply and the next request, and wait
    /// `connect_delay` after every (re)connect before the first request.
    pub fn with_pauses(self, frame_delay: Duration, connect_delay: Duration) -> Self {
        self.set_pauses(frame_delay, connect_delay)
    }
}
