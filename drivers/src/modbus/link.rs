//! The byte streams the Modbus master runs on: a serial port or a TCP connection. A link
//! opens its stream, knows the line's timing and throws away input nobody asked for.

use std::{future::Future, io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};
use tokio_serial::{SerialPort, SerialStream};

use crate::serial::SerialSettings;

/// Sleep until `t` with sub-millisecond precision: tokio's timer wheel ticks in whole
/// milliseconds (and rounds up), which alone would add 1–2 ms of dead bus time to every
/// transaction. The last stretch is slept on a blocking-pool thread (`nanosleep`, precise
/// to tens of microseconds) instead of spinning.
pub async fn sleep_precisely_until(t: Instant) {
    let coarse = Duration::from_millis(2);
    if t.saturating_duration_since(Instant::now()) > coarse {
        tokio::time::sleep_until(t - coarse).await;
    }
    let rest = t.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// What the master needs of the byte stream its frames travel on.
pub trait Link: Send + 'static {
    /// The open stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// What it is, in logs and errors: "serial port", "connection".
    const NOUN: &'static str;
    /// Open it.
    fn open(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Where it leads: `/dev/ttyUSB0`, `192.168.1.7:8899`.
    fn endpoint(&self) -> String;
    /// The silence the line needs between frames (3.5 character times on a serial line;
    /// none over TCP, where a converter keeps it).
    fn inter_frame(&self) -> Duration;
    /// One character's time on the line (a request's bytes take that long each before a
    /// reply can start); none over TCP.
    fn char_time(&self) -> Duration;
    /// Throw away the input waiting now; how many bytes. An error: the stream is gone.
    fn discard_waiting(stream: &mut Self::Stream) -> io::Result<usize>;
}

/// A serial port (RS-485 adapter).
pub struct SerialLink(pub SerialSettings);

impl Link for SerialLink {
    type Stream = SerialStream;
    const NOUN: &'static str = "serial port";

    async fn open(&mut self) -> io::Result<SerialStream> {
        self.0.open().map_err(io::Error::other)
    }

    fn endpoint(&self) -> String {
        self.0.path.clone()
    }

    fn inter_frame(&self) -> Duration {
        self.0.inter_frame()
    }

    fn char_time(&self) -> Duration {
        self.0.char_time()
    }

    fn discard_waiting(port: &mut SerialStream) -> io::Result<usize> {
        let n = port.bytes_to_read().map_err(io::Error::other)? as usize;
        if n > 0 {
            port.clear(tokio_serial::ClearBuffer::Input)
                .map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// A TCP connection: to a Modbus TCP device or gateway, or to a serial-to-Ethernet
/// converter in transparent mode.
pub struct TcpLink {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Link for TcpLink {
    type Stream = TcpStream;
    const NOUN: &'static str = "connection";

    async fn open(&mut self) -> io::Result<TcpStream> {
        let addr = (self.host.as_str(), self.port);
        let s = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn inter_frame(&self) -> Duration {
        Duration::ZERO
    }

    fn char_time(&self) -> Duration {
        Duration::ZERO
    }

    fn discard_waiting(s: &mut TcpStream) -> io::Result<usize> {
        let mut buf = [0u8; 256];
        let mut n = 0;
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }
}
