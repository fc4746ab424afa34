//! Modbus RTU: the master ([`super::master`]) framing RTU (unit, PDU, CRC) on a serial
//! port (RS-485, [`RtuTransport`]) or on a TCP connection to a serial-to-Ethernet
//! converter in transparent mode ([`RtuOverTcpTransport`]: the same frames, no MBAP
//! header). tokio-modbus's RTU client keeps no silence between frames and can match a
//! late reply to the next request, hence our own master.
//!
//! On a serial line the master keeps at least 3.5 character times of silence before
//! every request, computed from baud rate and framing (1.75 ms fixed above 19 200 baud,
//! as the Modbus spec says), plus an optional extra `frame_delay`. A serial port is
//! opened exclusively (TIOCEXCL). Behind a TCP converter the converter keeps the serial
//! line's silences; the master keeps `frame_delay` between a reply and the next request,
//! and `connect_delay` after every (re)connect.

use std::time::Duration;

pub use super::frame::{crc16, Rtu};
pub use super::link::{sleep_precisely_until, Link, SerialLink, TcpLink};
pub use super::master::Master;
pub use crate::serial::{Parity, SerialSettings};

/// A Modbus RTU bus on a serial port: any number of unit ids on it.
pub type RtuTransport = Master<Rtu, SerialLink>;

/// Modbus RTU frames through a TCP converter: any number of unit ids behind it.
pub type RtuOverTcpTransport = Master<Rtu, TcpLink>;

impl RtuTransport {
    /// A transport for `settings`; the port is opened on the first request.
    pub fn new(settings: SerialSettings, timeout: Duration, frame_delay: Duration) -> Self {
        Master::over(
            Rtu,
            SerialLink(settings),
            timeout,
            frame_delay,
            Duration::ZERO,
        )
    }
}

impl RtuOverTcpTransport {
    /// A transport to the converter at `host:port`; connected on the first request,
    /// waiting `connect_delay` after every (re)connect before the first request.
    pub fn tcp(
        host: String,
        port: u16,
        timeout: Duration,
        frame_delay: Duration,
        connect_delay: Duration,
    ) -> Self {
        let link = TcpLink {
            host,
            port,
            connect_timeout: timeout,
        };
        Master::over(Rtu, link, timeout, frame_delay, connect_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inter_frame_gap_follows_baud_and_framing() {
        let mut s = SerialSettings {
            path: String::new(),
            baud: 9600,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        };
        // 11 bits per char at 9600 baud: 1.146 ms per char, 4.01 ms for 3.5 chars.
        assert_eq!(s.bits_per_char(), 11);
        assert!((s.inter_frame().as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-7);
        s.baud = 115_200;
        assert_eq!(s.inter_frame(), Duration::from_micros(1750));
    }

    #[test]
    fn reply_length_is_known_from_the_header() {
        let r = super::super::frame::Rtu;
        use super::super::frame::Framing;
        assert_eq!(r.frame_len(&[1]), Ok(None));
        assert_eq!(r.frame_len(&[1, 3]), Ok(None));
        assert_eq!(r.frame_len(&[1, 3, 4]), Ok(Some(9)));
        assert_eq!(r.frame_len(&[1, 0x83]), Ok(Some(5)));
        assert_eq!(r.frame_len(&[1, 6]), Ok(Some(8)));
        // Device identification: known once every object's header is in.
        let ident = [1, 0x2B, 0x0E, 1, 1, 0, 0, 2, 0, 3, b'A', b'B', b'C', 1, 2];
        assert_eq!(r.frame_len(&ident[..9]), Ok(None));
        assert_eq!(r.frame_len(&ident[..14]), Ok(None));
        assert_eq!(r.frame_len(&ident), Ok(Some(1 + 16 + 2)));
    }
}
