//! Serial port settings shared by the Modbus RTU master and the UART line devices.

use std::time::Duration;

use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// Parity of a serial line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Settings of a serial port.
#[derive(Clone, Debug, PartialEq)]
pub struct SerialSettings {
    /// Device path (`/dev/ttyUSB0`, `/dev/serial/by-id/...`).
    pub path: String,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// Bits on the wire per character: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time to send one character.
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)))
    }

    /// The silence that separates two frames: 3.5 character times, or 1.75 ms above
    /// 19 200 baud (Modbus over serial line, §2.5.1.1).
    pub fn inter_frame(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }

    /// Open the port exclusively, raw, with these settings.
    pub fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let mut port = tokio_serial::new(&self.path, self.baud)
            .data_bits(match self.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(if self.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()?;
        #[cfg(unix)]
        port.set_exclusive(true)?;
        // Whatever sat in the buffer before we opened is not for us.
        port.clear(tokio_serial::ClearBuffer::All)?;
        Ok(port)
    }
}
