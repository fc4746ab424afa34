//! Modbus TCP transport: a tokio-modbus client with a timeout around every call,
//! reconnection with exponential backoff, and the pauses some devices need: after every
//! (re)connect before the first request (`connect_delay`) and between a reply and the next
//! request (`frame_delay`).

use std::time::Duration;

use tokio::{net::TcpStream, time::Instant};
use tokio_modbus::{client::Context, prelude::*};
use tracing::{debug, info};

use super::{
    client::{exception_name, DriverError, ModbusTransport},
    ReadData, Table,
};
use crate::backoff::Backoff;

/// A Modbus TCP endpoint (one TCP connection, any number of unit ids behind it).
pub struct TcpTransport {
    host: String,
    port: u16,
    timeout: Duration,
    ctx: Option<Context>,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    was_connected: bool,
    frame_delay: Duration,
    connect_delay: Duration,
    /// No request before this: the end of `connect_delay`, or `frame_delay` after the
    /// last reply.
    ready_at: Instant,
}

impl TcpTransport {
    /// A transport for `host:port`; connects lazily on the first request.
    pub fn new(host: impl Into<String>, port: u16, timeout: Duration) -> Self {
        TcpTransport {
            host: host.into(),
            port,
            timeout,
            ctx: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            next_attempt: None,
            was_connected: false,
            frame_delay: Duration::ZERO,
            connect_delay: Duration::ZERO,
            ready_at: Instant::now(),
        }
    }

    /// Keep `frame_delay` of silence between a reply and the next request, and wait
    /// `connect_delay` after every (re)connect before the first request.
    pub fn with_pauses(mut self, frame_delay: Duration, connect_delay: Duration) -> Self {
        self.frame_delay = frame_delay;
        self.connect_delay = connect_delay;
        self
    }

    fn drop_connection(&mut self, why: &str) {
        if self.ctx.take().is_some() {
            debug!(endpoint = %self.endpoint(), reason = why, "Connection dropped.");
        }
    }

    async fn connect(&mut self) -> Result<&mut Context, DriverError> {
        if self.ctx.is_none() {
            if let Some(at) = self.next_attempt {
                if Instant::now() < at {
                    return Err(DriverError::NotConnected(format!(
                        "reconnecting to {} in {:?}",
                        self.endpoint(),
                        at.saturating_duration_since(Instant::now())
                    )));
                }
            }
            let attempt = async {
                let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            };
            let result = tokio::time::timeout(self.timeout, attempt).await;
            match result {
                Ok(Ok(stream)) => {
                    self.backoff.reset();
                    self.next_attempt = None;
                    if !self.was_connected {
                        info!(endpoint = %self.endpoint(), "Connected.");
                    }
                    self.was_connected = true;
                    self.ready_at = Instant::now() + self.connect_delay;
                    self.ctx = Some(tokio_modbus::client::tcp::attach(stream));
                }
                Ok(Err(e)) => return Err(self.connect_failed(e.to_string())),
                Err(_) => return Err(self.connect_failed("connect timed out".to_string())),
            }
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| DriverError::NotConnected("no connection".into()))
    }

    fn connect_failed(&mut self, why: String) -> DriverError {
        let delay = self.backoff.next_delay();
        self.next_attempt = Some(Instant::now() + delay);
        if self.was_connected {
            info!(endpoint = %self.endpoint(), error = %why, retry_in = ?delay, "Connection lost.");
        } else {
            debug!(endpoint = %self.endpoint(), error = %why, retry_in = ?delay, "Connect failed.");
        }
        self.was_connected = false;
        DriverError::Io(format!("connect to {}: {why}", self.endpoint()))
    }
}

impl TcpTransport {
    /// Run one request with the timeout; drop the connection on timeout (a late reply
    /// would be matched to the next request) or on an I/O error.
    async fn call<T, F>(&mut self, unit: u8, f: F) -> Result<T, DriverError>
    where
        F: for<'c> FnOnce(
            &'c mut Context,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = tokio_modbus::Result<T>> + Send + 'c>,
        >,
    {
        let timeout = self.timeout;
        self.connect().await?;
        tokio::time::sleep_until(self.ready_at).await;
        let ctx = self.connect().await?;
        ctx.set_slave(Slave(unit));
        let outcome = tokio::time::timeout(timeout, f(ctx)).await;
        self.ready_at = Instant::now() + self.frame_delay;
        match outcome {
            Err(_) => {
                self.drop_connection("timeout");
                Err(DriverError::Timeout(timeout))
            }
            Ok(Err(e)) => {
                self.drop_connection("i/o error");
                Err(DriverError::Io(e.to_string()))
            }
            Ok(Ok(Err(code))) => {
                let code = u8::from(code);
                Err(DriverError::Exception {
                    code,
                    name: exception_name(code),
                })
            }
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }
}

impl ModbusTransport for TcpTransport {
    async fn write_registers(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[u16],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let values = values.to_vec();
        self.call(unit, move |ctx| {
            Box::pin(async move {
                if values.len() == 1 && !multiple {
                    ctx.write_single_register(addr, values[0]).await
                } else {
                    ctx.write_multiple_registers(addr, &values).await
                }
            })
        })
        .await
    }

    async fn write_coils(
        &mut self,
        unit: u8,
        addr: u16,
        values: &[bool],
        multiple: bool,
    ) -> Result<(), DriverError> {
        let values = values.to_vec();
        self.call(unit, move |ctx| {
            Box::pin(async move {
                if values.len() == 1 && !multiple {
                    ctx.write_single_coil(addr, values[0]).await
                } else {
                    ctx.write_multiple_coils(addr, &values).await
                }
            })
        })
        .await
    }

    async fn read(
        &mut self,
        unit: u8,
        table: Table,
        addr: u16,
        count: u16,
    ) -> Result<ReadData, DriverError> {
        let data = self
            .call(unit, move |ctx| {
                Box::pin(async move {
                    match table {
                        Table::Holding => ctx
                            .read_holding_registers(addr, count)
                            .await
                            .map(|r| r.map(ReadData::Registers)),
                        Table::Input => ctx
                            .read_input_registers(addr, count)
                            .await
                            .map(|r| r.map(ReadData::Registers)),
                        Table::Coil => ctx
                            .read_coils(addr, count)
                            .await
                            .map(|r| r.map(ReadData::Bits)),
                        Table::Discrete => ctx
                            .read_discrete_inputs(addr, count)
                            .await
                            .map(|r| r.map(ReadData::Bits)),
                    }
                })
            })
            .await?;
        let got = match &data {
            ReadData::Registers(r) => r.len(),
            ReadData::Bits(b) => b.len(),
        };
        if got < usize::from(count) {
            return Err(DriverError::Protocol(format!(
                "asked for {count} {table} values, got {got}"
            )));
        }
        Ok(data)
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
