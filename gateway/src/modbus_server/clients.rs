//! The Modbus server's counters: totals, and per client address for the last
//! [`MAX_CLIENTS`] addresses seen (the `modbus_server` object of the diagnostics).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::json;

use super::Exception;

/// Client addresses with counters of their own; past that, the one seen least recently
/// (and with no connection open, when there is one) makes room.
pub const MAX_CLIENTS: usize = 64;

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed it between requests, or the gateway stops.
    Normally,
    /// A frame the server could not take: protocol id not 0, a length field outside
    /// 2..=254, or the client closed mid-frame.
    Malformed,
    /// No request began within `idle_timeout`.
    Idle,
    /// A request begun was not complete within `frame_timeout`, or the client read no
    /// reply for `idle_timeout`.
    Stalled,
}

/// Counters of one client address.
#[derive(Debug, Default)]
pub(crate) struct ClientStats {
    open: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
    exceptions: AtomicU64,
    writes: AtomicU64,
    malformed: AtomicU64,
    /// ms since the Unix epoch.
    last_seen_ms: AtomicU64,
    /// `ServerStats::seen` at that moment: which client was seen last, exactly.
    last_seen_seq: AtomicU64,
}

impl ClientStats {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "open": self.open.load(Relaxed),
            "connections": self.connections.load(Relaxed),
            "requests": self.requests.load(Relaxed),
            "exceptions": self.exceptions.load(Relaxed),
            "writes": self.writes.load(Relaxed),
            "malformed": self.malformed.load(Relaxed),
            "last_seen_unix": self.last_seen_ms.load(Relaxed) / 1000,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters of the Modbus TCP server (`modbus_server:`), shared by its tasks and read by
/// the diagnostics ([`crate::Stats::set_modbus_server`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted (allowed, and within `max_connections`).
    pub accepted: AtomicU64,
    /// Connections closed at once: their address is outside `allow`.
    pub refused_not_allowed: AtomicU64,
    /// Connections closed at once: `max_connections` were open.
    pub refused_full: AtomicU64,
    /// Connections closed for a frame the server could not take (protocol id not 0, a
    /// length field outside 2..=254, closed mid-frame).
    pub closed_malformed: AtomicU64,
    /// Connections closed after `idle_timeout` without a request.
    pub closed_idle: AtomicU64,
    /// Connections closed because a request begun was not complete within
    /// `frame_timeout`, or the client did not read its replies.
    pub closed_stalled: AtomicU64,
    /// Requests received (every complete frame).
    pub requests: AtomicU64,
    /// Writes the device acknowledged (answered with the echo).
    pub writes: AtomicU64,
    /// Exception replies by code (index: the code, 0x00..=0x0F; higher codes at 0).
    exceptions: [AtomicU64; 16],
    /// The address last refused for `allow`, and when (ms since the Unix epoch).
    last_refused: Mutex<Option<(IpAddr, u64)>>,
    clients: Mutex<HashMap<IpAddr, Arc<ClientStats>>>,
    /// Counts client activity (orders the clients by when they were seen).
    seen: AtomicU64,
}

impl ServerStats {
    /// Zeroed counters.
    pub fn new() -> ServerStats {
        ServerStats::default()
    }

    /// Exception replies sent with `code`.
    pub fn exceptions(&self, code: u8) -> u64 {
        self.exceptions
            .get(usize::from(code))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// A connection from `ip` was refused for `allow`.
    pub(crate) fn refused_not_allowed(&self, ip: IpAddr) {
        self.refused_not_allowed.fetch_add(1, Relaxed);
        if let Ok(mut last) = self.last_refused.lock() {
            *last = Some((ip.to_canonical(), now_ms()));
        }
    }

    /// A connection from `ip` was accepted: its client's counters.
    pub(crate) fn opened(&self, ip: IpAddr) -> Arc<ClientStats> {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        let ip = ip.to_canonical();
        let client = match self.clients.lock() {
            Ok(mut clients) => {
                if !clients.contains_key(&ip) && clients.len() >= MAX_CLIENTS {
                    evict(&mut clients);
                }
                clients.entry(ip).or_default().clone()
            }
            Err(_) => Arc::default(),
        };
        client.open.fetch_add(1, Relaxed);
        client.connections.fetch_add(1, Relaxed);
        self.seen(&client);
        client
    }

    /// A connection of `client` ended.
    pub(crate) fn closed(&self, client: &ClientStats, why: Closed) {
        self.open.fetch_sub(1, Relaxed);
        client.open.fetch_sub(1, Relaxed);
        match why {
            Closed::Normally => {}
            Closed::Malformed => {
                self.closed_malformed.fetch_add(1, Relaxed);
                client.malformed.fetch_add(1, Relaxed);
            }
            Closed::Idle => {
                self.closed_idle.fetch_add(1, Relaxed);
            }
            Closed::Stalled => {
                self.closed_stalled.fetch_add(1, Relaxed);
            }
        }
    }

    fn seen(&self, client: &ClientStats) {
        client.last_seen_ms.store(now_ms(), Relaxed);
        client
            .last_seen_seq
            .store(self.seen.fetch_add(1, Relaxed), Relaxed);
    }

    /// `client` sent a request.
    pub(crate) fn request(&self, client: &ClientStats) {
        self.requests.fetch_add(1, Relaxed);
        client.requests.fetch_add(1, Relaxed);
        self.seen(client);
    }

    /// `client` was sent exception `e`.
    pub(crate) fn exception(&self, client: &ClientStats, e: Exception) {
        let i = if usize::from(e.0) < self.exceptions.len() {
            usize::from(e.0)
        } else {
            0
        };
        self.exceptions[i].fetch_add(1, Relaxed);
        client.exceptions.fetch_add(1, Relaxed);
    }

    /// A write of `client` was acknowledged.
    pub(crate) fn write(&self, client: &ClientStats) {
        self.writes.fetch_add(1, Relaxed);
        client.writes.fetch_add(1, Relaxed);
    }

    /// The `modbus_server` object of the diagnostics document.
    pub fn json(&self) -> serde_json::Value {
        let exceptions: serde_json::Map<String, serde_json::Value> = self
            .exceptions
            .iter()
            .enumerate()
            .map(|(code, n)| (code, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(code, n)| {
                let key = if code == 0 {
                    "other".to_string()
                } else {
                    format!("{code:02X}")
                };
                (key, json!(n))
            })
            .collect();
        let mut clients: Vec<(IpAddr, Arc<ClientStats>)> = self
            .clients
            .lock()
            .map(|c| c.iter().map(|(ip, s)| (*ip, s.clone())).collect())
            .unwrap_or_default();
        clients.sort_by_key(|(ip, _)| *ip);
        let last_refused = self.last_refused.lock().ok().and_then(|l| *l);
        json!({
            "open": self.open.load(Relaxed),
            "accepted": self.accepted.load(Relaxed),
            "refused_not_allowed": self.refused_not_allowed.load(Relaxed),
            "refused_full": self.refused_full.load(Relaxed),
            "closed_malformed": self.closed_malformed.load(Relaxed),
            "closed_idle": self.closed_idle.load(Relaxed),
            "closed_stalled": self.closed_stalled.load(Relaxed),
            "requests": self.requests.load(Relaxed),
            "writes": self.writes.load(Relaxed),
            "exceptions": exceptions,
            "last_refused": last_refused.map(|(ip, ms)| json!({
                "client": ip.to_string(),
                "at_unix": ms / 1000,
            })),
            "clients": clients
                .into_iter()
                .map(|(ip, c)| (ip.to_string(), c.to_json()))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// Make room for one client: the one seen least recently among those with no connection
/// open, else among all.
fn evict(clients: &mut HashMap<IpAddr, Arc<ClientStats>>) {
    let oldest = |idle_only: bool| {
        clients
            .iter()
            .filter(|(_, c)| !idle_only || c.open.load(Relaxed) == 0)
            .min_by_key(|(_, c)| c.last_seen_seq.load(Relaxed))
            .map(|(ip, _)| *ip)
    };
    if let Some(ip) = oldest(true).or_else(|| oldest(false)) {
        clients.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
    }

    #[test]
    fn clients_are_bounded_and_the_least_recent_idle_one_goes() {
        let s = ServerStats::new();
        // Client 0 stays connected; the others come and go.
        let kept = s.opened(ip(0));
        for i in 1..MAX_CLIENTS as u32 {
            let c = s.opened(ip(i));
            s.closed(&c, Closed::Normally);
        }
        s.request(&kept);
        let again = s.opened(ip(1));
        s.request(&again);
        s.closed(&again, Closed::Malformed);
        let c = s.opened(ip(1000));
        s.closed(&c, Closed::Idle);
        let j = s.json();
        let clients = j["clients"].as_object().expect("clients");
        assert_eq!(clients.len(), MAX_CLIENTS);
        assert!(clients.contains_key("10.0.0.0"));
        assert!(clients.contains_key("10.0.0.1"));
        assert!(clients.contains_key("10.0.3.232"));
        assert_eq!(clients["10.0.0.1"]["connections"], 2);
        assert_eq!(clients["10.0.0.1"]["malformed"], 1);
        assert_eq!(clients["10.0.0.0"]["open"], 1);
        assert_eq!(j["open"], 1);
        assert_eq!(j["accepted"], MAX_CLIENTS as u64 + 2);
        assert_eq!(j["closed_malformed"], 1);
        assert_eq!(j["closed_idle"], 1);
        assert_eq!(j["requests"], 2);
    }

    #[test]
    fn exceptions_by_code() {
        let s = ServerStats::new();
        let c = s.opened(ip(1));
        s.exception(&c, Exception::ILLEGAL_DATA_ADDRESS);
        s.exception(&c, Exception::GATEWAY_TARGET_FAILED);
        s.exception(&c, Exception::GATEWAY_TARGET_FAILED);
        s.exception(&c, Exception(0x42));
        assert_eq!(s.exceptions(0x0B), 2);
        assert_eq!(
            s.json()["exceptions"],
            json!({"02": 1, "0B": 2, "other": 1})
        );
        s.refused_not_allowed("::ffff:192.0.2.7".parse().expect("ip"));
        assert_eq!(s.json()["last_refused"]["client"], "192.0.2.7");
    }
}
