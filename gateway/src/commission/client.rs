//! A commissioning command through the running gateway: the command line's side.
//!
//! With `--config FILE --bus ID`, the command first tries that file's embedded broker
//! (its `listen` address; a wildcard address is reached on loopback) with the
//! `--username`/`--password-file` login, as `fieldlink watch` takes it. Nothing
//! listening there: the gateway does not run, and the command opens the bus itself.
//! A broker that answers and holds `<base>/status` = `online` is the running gateway:
//! the command becomes a request on `<base>/bus/<id>/request` (MQTT 5, with a Response
//! Topic and Correlation Data; the body is [`WireRequest`]), and prints the answer as
//! direct mode prints its own. Anything else that answers there (a refused login, a
//! status that is not `online`) ends the command with one line: it never opens a port
//! that its gateway may own.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use rumqttc::v5::{
    mqttbytes::{
        v5::{
            ConnectReturnCode, Filter, Packet, PubAckReason, PublishProperties, SubscribeReasonCode,
        },
        QoS,
    },
    AsyncClient, ConnectionError, Event, MqttOptions,
};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::{
    probe::{self, Plan, ProbeArgs},
    scan::ScanArgs,
    wire::{reading_of, Answer, WireRequest},
    write::WriteArgs,
    CommissionError,
};
use crate::model::{BusKind, Model};

/// How long the broker has to answer the login, and then to show the gateway's status.
const HELLO: Duration = Duration::from_secs(3);

/// What the client's event loop hears, passed on to the command.
#[derive(Debug)]
enum Heard {
    /// The login was answered (`Ok`) or refused.
    Connected(Result<(), ConnectReturnCode>),
    /// The connection was refused: nothing listens there.
    Unreachable,
    /// The connection failed later.
    Lost(String),
    /// A SUBACK: whether each filter was granted.
    Subscribed(Vec<bool>),
    /// A message.
    Message {
        topic: String,
        payload: Bytes,
        correlation: Option<Bytes>,
    },
    /// A PUBACK that refused the request.
    Refused,
}

/// The running gateway that owns the bus, connected.
#[derive(Debug)]
pub struct Gateway {
    client: AsyncClient,
    heard: mpsc::Receiver<Heard>,
    events: JoinHandle<()>,
    /// `host:port` of its broker, for messages.
    at: String,
    bus: String,
    request_topic: String,
    response_topic: String,
    status_topic: String,
    /// The bus's reply timeout (how long the answers may take).
    timeout: Duration,
    asked: u64,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// Where to reach a broker that listens on `listen`: a wildcard address on loopback.
fn reach(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// Forward what the event loop hears until it fails for good.
async fn listen(mut events: rumqttc::v5::EventLoop, tx: mpsc::Sender<Heard>) {
    let mut connected = false;
    loop {
        let heard = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                Heard::Connected(Ok(()))
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => Heard::Subscribed(
                s.return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    .collect(),
            ),
            Ok(Event::Incoming(Packet::Publish(p))) => Heard::Message {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                correlation: p.properties.and_then(|pp| pp.correlation_data),
                payload: p.payload,
            },
            Ok(Event::Incoming(Packet::PubAck(a))) if a.reason == PubAckReason::NotAuthorized => {
                Heard::Refused
            }
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Heard::Connected(Err(code)),
            Err(ConnectionError::Io(e))
                if !connected && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Heard::Unreachable
            }
            Err(e) => Heard::Lost(e.to_string()),
        };
        let end = matches!(
            heard,
            Heard::Unreachable | Heard::Lost(_) | Heard::Connected(Err(_))
        );
        if tx.send(heard).await.is_err() || end {
            return;
        }
    }
}

impl Gateway {
    /// The running gateway of `model` when it owns bus `bus`: `None` when nothing listens
    /// on its embedded broker (the gateway does not run).
    pub async fn find(
        model: &Model,
        bus: &str,
        login: Option<(String, String)>,
    ) -> Result<Option<Gateway>, CommissionError> {
        // Without an embedded broker, or one on a port the system picks, nothing tells
        // where the gateway would listen.
        let Some(e) = model
            .mqtt
            .embedded
            .as_ref()
            .filter(|e| e.listen.port() != 0)
        else {
            return Ok(None);
        };
        let Some(b) = model.buses.iter().find(|b| b.id == bus) else {
            return Ok(None);
        };
        let timeout = match &b.kind {
            BusKind::ModbusTcp { timeout, .. }
            | BusKind::ModbusRtu { timeout, .. }
            | BusKind::ModbusRtuOverTcp { timeout, .. }
            | BusKind::Uart { timeout, .. } => *timeout,
            BusKind::Gpio { .. } => Duration::from_secs(1),
        };
        let addr = reach(e.listen);
        let id = format!("fieldlink-cli-{}-{}", std::process::id(), nonce() % 100_000);
        let mut o = MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_connection_timeout(HELLO.as_secs());
        o.set_max_packet_size(Some(64 * 1024 * 1024));
        let (client, events) = AsyncClient::new(o, 16);
        let (tx, heard) = mpsc::channel(64);
        let events = tokio::spawn(listen(events, tx));
        let topics = model.topics();
        let mut g = Gateway {
            client,
            heard,
            events,
            at: addr.to_string(),
            bus: bus.to_string(),
            request_topic: topics.bus_request(bus),
            response_topic: format!("fieldlink-cli/{id}"),
            status_topic: topics.status(),
            timeout,
            asked: 0,
        };
        match g.next(Instant::now() + HELLO + HELLO).await {
            Some(Heard::Connected(Ok(()))) => {}
            Some(Heard::Unreachable) => return Ok(None),
            Some(Heard::Connected(Err(code))) => {
                return Err(CommissionError::Refused(format!(
                    "the running gateway's broker at {} refused the login ({code:?}): give \
                     --username and --password-file",
                    g.at
                )))
            }
            _ => return Err(g.silent()),
        }
        g.subscribe().await?;
        g.online().await?;
        Ok(Some(g))
    }

    /// The error when a broker answers but does not show the gateway running.
    fn silent(&self) -> CommissionError {
        CommissionError::Unavailable(format!(
            "a broker answers at {} but does not show `{}` online: is the gateway starting \
             or stopping? The bus is not opened while its gateway may own it (--rtu or \
             --tcp opens it without asking)",
            self.at, self.status_topic
        ))
    }

    async fn next(&mut self, until: Instant) -> Option<Heard> {
        tokio::time::timeout_at(until, self.heard.recv())
            .await
            .ok()
            .flatten()
    }

    async fn subscribe(&mut self) -> Result<(), CommissionError> {
        let filters = [&self.status_topic, &self.response_topic]
            .map(|t| Filter::new(t.as_str(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .await
            .map_err(|e| CommissionError::Unavailable(format!("{}: {e}", self.at)))
    }

    /// Wait for `<base>/status` = `online` (retained).
    async fn online(&mut self) -> Result<(), CommissionError> {
        let until = Instant::now() + HELLO;
        loop {
            match self.next(until).await {
                Some(Heard::Subscribed(granted)) if granted.iter().any(|g| !g) => {
                    return Err(CommissionError::Refused(format!(
                        "the running gateway's broker at {} refused the subscriptions to \
                         `{}` and `{}`: the acl_file must let you read both",
                        self.at, self.status_topic, self.response_topic
                    )))
                }
                Some(Heard::Message { topic, payload, .. }) if topic == self.status_topic => {
                    return match &payload[..] {
                        b"online" => Ok(()),
                        _ => Err(self.silent()),
                    }
                }
                Some(Heard::Lost(e)) => {
                    return Err(CommissionError::Unavailable(format!("{}: {e}", self.at)))
                }
                None => return Err(self.silent()),
                Some(_) => {}
            }
        }
    }

    /// Send a request and wait for its answer (`exchanges`: how many Modbus requests it
    /// may take, for how long to wait).
    pub async fn ask(
        &mut self,
        w: &WireRequest,
        exchanges: u64,
    ) -> Result<Answer, CommissionError> {
        self.asked += 1;
        let correlation = Bytes::from(format!("{}-{}", nonce(), self.asked));
        let props = PublishProperties {
            response_topic: Some(self.response_topic.clone()),
            correlation_data: Some(correlation.clone()),
            ..PublishProperties::default()
        };
        let body = serde_json::to_vec(w)
            .map_err(|e| CommissionError::Usage(format!("the request: {e}")))?;
        self.client
            .publish_with_properties(
                self.request_topic.clone(),
                QoS::AtLeastOnce,
                false,
                body,
                props,
            )
            .await
            .map_err(|e| CommissionError::Unavailable(format!("{}: {e}", self.at)))?;
        // Every exchange may wait twice for the bus's timeout (a late reply on RTU), and
        // take turns with the polls.
        let per = self.timeout * 2 + Duration::from_millis(100);
        let wait = Duration::from_secs(30) + per.saturating_mul(exchanges.min(100_000) as u32);
        let mut until = Instant::now() + wait;
        let mut refused = false;
        loop {
            match self.next(until).await {
                Some(Heard::Message {
                    topic,
                    payload,
                    correlation: c,
                }) if topic == self.response_topic && c.as_ref() == Some(&correlation) => {
                    return Answer::from_body(&payload).ok_or_else(|| {
                        CommissionError::Unavailable(format!(
                            "the gateway's answer is not one: {}",
                            String::from_utf8_lossy(&payload)
                        ))
                    });
                }
                Some(Heard::Message { topic, payload, .. })
                    if topic == self.status_topic && &payload[..] != b"online" =>
                {
                    return Err(CommissionError::Unavailable(
                        "the gateway stopped before it answered".into(),
                    ));
                }
                Some(Heard::Refused) if !refused => {
                    // The gateway answers why; if it cannot, the broker's refusal says it.
                    refused = true;
                    until = until.min(Instant::now() + HELLO);
                }
                Some(Heard::Lost(e)) => {
                    return Err(CommissionError::Unavailable(format!(
                        "lost the running gateway's broker at {}: {e}",
                        self.at
                    )))
                }
                None if refused => {
                    return Err(CommissionError::Refused(format!(
                        "not authorised: the running gateway's broker refused the request \
                         on `{}`",
                        self.request_topic
                    )))
                }
                None => {
                    return Err(CommissionError::Unavailable(format!(
                        "no answer from the running gateway within {} on `{}`: the acl_file \
                         must let you publish and read it",
                        humantime::format_duration(wait),
                        self.response_topic
                    )))
                }
                Some(_) => {}
            }
        }
    }

    /// `through the running gateway on bus rs485` (for messages).
    pub fn describe(&self) -> String {
        format!("the running gateway's bus `{}`", self.bus)
    }
}

/// A number that differs between runs (correlation data, client ids).
fn nonce() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

/// Print an answer's output; its error, if it has one.
fn finish(a: Answer, out: &mut impl Write) -> Result<bool, CommissionError> {
    let printed = match &a.text {
        Some(t) => probe::print(out, t)?,
        None => true,
    };
    match a.error {
        Some((line, exit)) => Err(CommissionError::answered(line, exit)),
        None => Ok(printed),
    }
}

/// `probe` through the running gateway (`--watch`: asked again every interval).
pub async fn probe(
    a: &ProbeArgs,
    plan: &Plan,
    mut g: Gateway,
    out: &mut impl Write,
) -> Result<(), CommissionError> {
    let w = WireRequest::probe(a);
    let max = u64::from(plan.req.table.max_read());
    let exchanges = u64::from(plan.req.count).div_ceil(max) + u64::from(plan.req.count);
    let first = g.ask(&w, exchanges).await?;
    let result = first.result.clone();
    if !finish(first, out)? {
        return Ok(());
    }
    let Some(every) = plan.interval else {
        return Ok(());
    };
    let bad = || CommissionError::Unavailable("the gateway's answer holds no reading".into());
    let mut last = result.as_ref().and_then(reading_of).ok_or_else(bad)?;
    let mut ticks = probe::Ticks::new(every);
    loop {
        let secs = ticks.next().await;
        let answer = g.ask(&w, exchanges).await?;
        if let Some((line, _)) = answer.error {
            eprintln!("+{secs:.1}s: {line}");
            continue;
        }
        let now = answer
            .result
            .as_ref()
            .and_then(reading_of)
            .ok_or_else(bad)?;
        if let Some(text) = probe::changes(&last, &now, secs, a) {
            if !probe::print(out, &text)? {
                return Ok(());
            }
        }
        last = now;
    }
}

/// `scan` through the running gateway.
pub async fn scan(
    a: &ScanArgs,
    mut g: Gateway,
    out: &mut impl Write,
) -> Result<(), CommissionError> {
    let units = super::scan::units(&a.units).map_err(CommissionError::Usage)?;
    let answer = g.ask(&WireRequest::scan(a), 2 * units.len() as u64).await?;
    finish(answer, out).map(|_| ())
}

/// `write` through the running gateway.
pub async fn write(
    a: &WriteArgs,
    mut g: Gateway,
    out: &mut impl Write,
) -> Result<(), CommissionError> {
    let answer = g.ask(&WireRequest::write(a), 3).await?;
    finish(answer, out).map(|_| ())
}
