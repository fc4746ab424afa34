//! The connection front (issue #21): every client connection, on the plain listener and
//! on the TLS one, passes through here before rmqtt, which listens only on loopback
//! behind it (a PROXY v1 header first carries the client's real address).
//!
//! rmqtt 0.24 has no hook for these rules, so they are kept here:
//!
//! - a complete CONNECT within `connect_timeout` of the accept (TLS handshake
//!   included), else the socket is closed and counted;
//! - connections that have not finished CONNECT are bounded per source address
//!   (`max_connecting_per_address`) and in all (`max_connecting`); more are closed at
//!   once and counted, so one host cannot hold the slots or the descriptors;
//! - no client id or user name with U+0000 or invalid UTF-8, no Will on a topic name
//!   with a wildcard, U+0000 or invalid UTF-8;
//! - every PUBLISH: the same rule for its topic name, Topic Aliases resolved per
//!   connection (up to the maximum the broker announced) and checked like any topic;
//! - no packet above `max_packet_size`, refused from its fixed header;
//! - a session belongs to the user who made it ([`Owners`]): another user connecting
//!   with its client id gets a clean one.
//!
//! Client → broker is read packet by packet into one reusable buffer and forwarded in
//! the reads' chunks; broker → client is copied as it comes, only its fixed headers
//! followed (to end on a packet boundary before an MQTT 5 DISCONNECT).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{timeout, timeout_at, Instant},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{
    owners::Owners,
    packet::{self, reason, Boundaries, Reader},
    relay::{Refuse, Relay, GRACE},
    tls::proxy_header,
};
use crate::{health::BrokerStats, model::EmbeddedBroker};

/// Topic Aliases a client may use (MQTT 5), announced by rmqtt in its CONNACK: as
/// Mosquitto's default `max_topic_alias`.
pub(crate) const TOPIC_ALIASES: u16 = 10;

/// The front's settings, from the model.
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub per_address: usize,
    pub total: usize,
    pub max_packet: u32,
    /// With a users file a user name is proven by its password: sessions are owned by
    /// user names. Without one every client is anonymous.
    pub named_users: bool,
    /// The gateway's reserved client id (the start-up check): not tracked.
    pub gateway_client_id: String,
}

impl Settings {
    pub(crate) fn new(cfg: &EmbeddedBroker, gateway_client_id: &str) -> Settings {
        Settings {
            connect_timeout: cfg.connect_timeout,
            per_address: cfg.max_connecting_per_address,
            total: cfg.max_connecting,
            max_packet: cfg.max_packet_size,
            named_users: cfg.users.is_some(),
            gateway_client_id: gateway_client_id.to_string(),
        }
    }
}

/// Connections that have not finished CONNECT, by source and in all.
#[derive(Default)]
struct Connecting {
    by_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// The front of one broker build: its settings, counters, the session owners (which
/// outlive builds), and where rmqtt listens.
pub(crate) struct Front {
    settings: Settings,
    stats: Arc<BrokerStats>,
    owners: Arc<Owners>,
    connecting: Mutex<Connecting>,
    inner: SocketAddr,
}

/// One connection's place among those that have not finished CONNECT; given back when
/// dropped.
struct Slot {
    front: Arc<Front>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.front.connecting.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_source.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    c.by_source.remove(&self.key);
                }
            }
        }
    }
}

/// The key a source address is counted under: the address itself for IPv4 (also when
/// mapped into IPv6), its /64 network for IPv6 (one host usually has a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// What the front learnt from a CONNECT it forwards.
struct Hello {
    level: u8,
    client_id: String,
    /// The user the session would belong to.
    user: Option<String>,
    /// The previous owner, when another user made the session (it is started clean).
    taken_from: Option<Option<String>>,
    /// The session ends with the connection (its owner is forgotten then).
    ephemeral: bool,
    /// The PROXY header and the CONNECT as forwarded.
    bytes: Vec<u8>,
}

impl Front {
    pub(crate) fn new(
        settings: Settings,
        stats: Arc<BrokerStats>,
        owners: Arc<Owners>,
        inner: SocketAddr,
    ) -> Arc<Front> {
        Arc::new(Front {
            settings,
            stats,
            owners,
            connecting: Mutex::default(),
            inner,
        })
    }

    /// A slot for a new connection from `ip`, unless that source or all have as many
    /// unfinished as allowed.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = source_key(ip);
        let mut c = self.connecting.lock().ok()?;
        let mine = c.by_source.get(&key).copied().unwrap_or(0);
        if mine >= self.settings.per_address || c.total >= self.settings.total {
            return None;
        }
        c.total += 1;
        *c.by_source.entry(key).or_insert(0) += 1;
        Some(Slot {
            front: self.clone(),
            key,
        })
    }

    /// Check a CONNECT and decide how it is forwarded: `Err` is the CONNACK code to
    /// refuse it with (`None`: close without one).
    fn hello(
        &self,
        body: &[u8],
        first: u8,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Hello, Option<(u8, u8)>> {
        if first != 0x10 {
            return Err(None);
        }
        let c = match packet::connect(body) {
            Ok(c) => c,
            Err(packet::NotConnect::Protocol) => {
                return Err(Some((4, packet::v3::UNACCEPTABLE_PROTOCOL)));
            }
            Err(packet::NotConnect::Malformed) => return Err(None),
        };
        let v5 = c.level == 5;
        if !packet::text_ok(c.client_id) {
            let code = if v5 {
                reason::CLIENT_ID_INVALID
            } else {
                packet::v3::IDENTIFIER_REJECTED
            };
            return Err(Some((c.level, code)));
        }
        if c.user.is_some_and(|u| !packet::text_ok(u)) {
            let code = if v5 {
                reason::BAD_USER_NAME
            } else {
                packet::v3::BAD_USER_NAME
            };
            return Err(Some((c.level, code)));
        }
        if c.will_topic.is_some_and(|t| !packet::topic_name_ok(t)) {
            return Err(v5.then_some((5, reason::TOPIC_NAME_INVALID)));
        }
        let client_id = String::from_utf8_lossy(c.client_id).into_owned();
        let user = c
            .user
            .filter(|_| self.settings.named_users)
            .map(|u| String::from_utf8_lossy(u).into_owned());
        let tracked = !client_id.is_empty() && client_id != self.settings.gateway_client_id;
        let taken_from = if tracked {
            self.owners.get(&client_id).filter(|owner| *owner != user)
        } else {
            None
        };
        let mut bytes = proxy_header(peer, local).into_bytes();
        let at = bytes.len();
        let mut head = Vec::with_capacity(5);
        head.push(first);
        packet::varint(body.len(), &mut head);
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(body);
        let clean = c.clean || taken_from.is_some();
        if clean {
            // Clean session (3.1.x) / clean start (5): rmqtt discards the old session.
            bytes[at + head.len() + c.flags_at] |= 0x02;
        }
        Ok(Hello {
            level: c.level,
            ephemeral: if v5 { c.session_expiry == 0 } else { clean },
            client_id,
            user,
            taken_from,
            bytes,
        })
    }
}

/// Accept connections on `listener` (TLS ones when `tls` is given) until the broker's
/// runtime ends, each through the front.
pub(crate) async fn serve(front: Arc<Front>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                debug!(error = %e, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let deadline = Instant::now() + front.settings.connect_timeout;
        let Some(slot) = front.admit(peer.ip()) else {
            front.stats.connecting_refused.fetch_add(1, Relaxed);
            debug!(addr = %peer, "Connection closed: too many from this address (or in all) before CONNECT.");
            let _ = tcp.set_zero_linger();
            continue;
        };
        let front = front.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(front.inner);
            match tls {
                None => front.connection(tcp, peer, local, slot, deadline).await,
                Some(acceptor) => match timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => front.connection(s, peer, local, slot, deadline).await,
                    Ok(Err(e)) => debug!(addr = %peer, error = %e, "TLS handshake failed."),
                    Err(_) => {
                        front.stats.connect_timeouts.fetch_add(1, Relaxed);
                        debug!(addr = %peer, "Connection closed: no CONNECT in time (TLS handshake).");
                    }
                },
            }
        });
    }
}

impl Front {
    /// One client connection, from its first byte to its end.
    async fn connection<S>(
        self: &Arc<Self>,
        mut client: S,
        peer: SocketAddr,
        local: SocketAddr,
        slot: Slot,
        deadline: Instant,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut reader = Reader::new(self.settings.max_packet);
        let hello = match timeout_at(
            deadline,
            self.read_hello(&mut reader, &mut client, peer, local),
        )
        .await
        {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(_) => {
                self.stats.connect_timeouts.fetch_add(1, Relaxed);
                debug!(addr = %peer, "Connection closed: no CONNECT in time.");
                return;
            }
        };
        let broker = timeout_at(deadline, self.broker_hello(&hello)).await;
        let (mut broker, (got, bounds), accepted, alias_max) = match broker {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                debug!(addr = %peer, error = %e, "Connection closed: the broker did not answer its CONNECT.");
                return;
            }
            Err(_) => {
                debug!(addr = %peer, "Connection closed: the broker did not answer its CONNECT in time.");
                return;
            }
        };
        if client.write_all(&got).await.is_err() {
            return;
        }
        let mut owner = None;
        if accepted {
            drop(slot);
            if !hello.client_id.is_empty() && hello.client_id != self.settings.gateway_client_id {
                if let Some(prev) = &hello.taken_from {
                    self.stats.session_takeovers.fetch_add(1, Relaxed);
                    warn!(client = ?hello.client_id, user = ?hello.user, previous_user = ?prev, addr = %peer, "Session taken over by another user; it starts clean.");
                }
                owner = Some(self.owners.set(&hello.client_id, hello.user.as_deref()));
            }
        }
        let relay = Relay::new(&self.stats, &hello.client_id, hello.level == 5, alias_max);
        relay
            .run(reader, tokio::io::split(client), broker.split(), bounds)
            .await;
        if let (Some(token), true) = (owner, hello.ephemeral) {
            self.owners.release(&hello.client_id, token);
        }
    }

    /// Read and check the CONNECT; a refused one is answered (CONNACK) and closed.
    async fn read_hello<S>(
        &self,
        reader: &mut Reader,
        client: &mut S,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Option<Hello>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = loop {
            match reader.frame(0) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(b) => {
                    Refuse::from_bad(b).count(&self.stats);
                    debug!(addr = %peer, error = ?b, "Connection closed: bad CONNECT.");
                    return None;
                }
            }
            if !matches!(reader.fill(client, 0).await, Ok(1..)) {
                return None;
            }
        };
        let (first, len) = (frame.first, frame.len);
        match self.hello(frame.body, first, peer, local) {
            Ok(h) => {
                reader.consume(len);
                Some(h)
            }
            Err(refusal) => {
                self.stats.bad_packets.fetch_add(1, Relaxed);
                debug!(addr = %peer, code = ?refusal.map(|r| r.1), "Connection refused: CONNECT not allowed.");
                if let Some((level, code)) = refusal {
                    let _ = timeout(
                        GRACE,
                        client.write_all(&packet::connack_refusal(level, code)),
                    )
                    .await;
                }
                let _ = timeout(GRACE, client.shutdown()).await;
                None
            }
        }
    }

    /// Open rmqtt's side, send the PROXY header and the CONNECT, and read the CONNACK:
    /// (stream, (bytes read, where the stream stands in them), accepted, Topic Alias
    /// Maximum).
    async fn broker_hello(
        &self,
        hello: &Hello,
    ) -> std::io::Result<(TcpStream, (Vec<u8>, Boundaries), bool, u16)> {
        let mut s = TcpStream::connect(self.inner).await?;
        let _ = s.set_nodelay(true);
        s.write_all(&hello.bytes).await?;
        let mut got = Vec::with_capacity(64);
        let mut chunk = [0u8; 512];
        loop {
            if let Ok(Some((first, rem, head))) = packet::fixed_header(&got) {
                if got.len() >= head + rem {
                    let (ok, alias_max) = match first >> 4 {
                        packet::CONNACK => {
                            packet::connack(&got[head..head + rem], hello.level == 5)
                                .unwrap_or((false, 0))
                        }
                        _ => (false, 0),
                    };
                    let mut b = Boundaries::default();
                    b.feed(&got, false);
                    return Ok((s, (got, b), ok, alias_max));
                }
            }
            if got.len() > 64 * 1024 {
                return Err(std::io::Error::other("CONNACK too large"));
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Bind a front listener on `addr`.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, super::BrokerError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            super::BrokerError::AddrInUse { addr }
        } else {
            super::BrokerError::Bind { addr, source }
        }
    })
}

/// File descriptors the gateway may hold with `cfg`: a front and an inner socket per
/// connected client, one per connection still before its CONNECT, and 64 for the
/// listeners, buses, queue and log.
pub fn descriptors_needed(cfg: &EmbeddedBroker) -> u64 {
    2 * cfg.max_connections as u64 + cfg.max_connecting as u64 + 64
}

/// The process's soft limit of open files (`Max open files` in /proc/self/limits);
/// `None` when unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_per_ipv4_address_and_ipv6_network() {
        let a: IpAddr = "192.168.1.7".parse().expect("ip");
        assert_eq!(source_key(a), a);
        let mapped: IpAddr = "::ffff:192.168.1.7".parse().expect("ip");
        assert_eq!(source_key(mapped), a);
        let v6: IpAddr = "2001:db8:1:2:aa:bb:cc:dd".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2::99".parse().expect("ip");
        assert_eq!(source_key(v6), source_key(other));
    }

    #[test]
    fn open_files_limit_is_read() {
        assert!(open_files_limit().is_none_or(|n| n > 0));
    }
}
