//! `modbus_server:` of the gateway file: the Modbus TCP server that serves other Modbus
//! masters what the bus tasks last read (issue #26). Its keys as the user writes them,
//! and their checks: the listener, who may connect, the bounds, and `allow` required on
//! a listener other machines can reach (Modbus has no login). Which served unit id is
//! which device is `modbus_server_units.rs`.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{
    de::{MapAccess, Visitor},
    Deserialize, Deserializer,
};

use super::{at, Cx, HumanDuration, MappingFile, Spanned, Validator};
use crate::model::{Allow, Bus, EmbeddedBroker, ModbusServer};

/// Where the server listens unless `listen` says otherwise.
pub const DEFAULT_MODBUS_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    5020,
));
/// Connections served at once unless `max_connections` says otherwise.
pub const DEFAULT_MODBUS_MAX_CONNECTIONS: usize = 16;
/// `idle_timeout` unless set.
pub const DEFAULT_MODBUS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `frame_timeout` unless set.
pub const DEFAULT_MODBUS_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// `modbus_server:` section: a Modbus TCP server that answers other Modbus masters (Home
/// Assistant's `modbus`, evcc, a vendor's tool) from the registers and bits the gateway
/// last read, so that every device keeps one master. Off unless this section is present;
/// `modbus_server: {}` turns it on with every default.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusServerFile {
    /// Address and port the server listens on (`127.0.0.1:5020`, `[::1]:5020`). Default
    /// `127.0.0.1:5020`; `0.0.0.0:5020` lets other machines connect, which needs `allow`.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    /// Clients that may connect: IP addresses (`192.168.1.10`, `::1`) and CIDR ranges
    /// (`192.168.1.0/24`); a connection from any other address is closed at once.
    /// Default: loopback only (this machine). Required when `listen` is not a loopback
    /// address: Modbus has no login, so this list is all that keeps the rest of the
    /// network out.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// The oldest value served: a register older than this is answered with exception
    /// 0x0B (gateway target failed to respond), never served stale. Default: 3 × the
    /// cadence of the read that brought it (the device's `poll_interval`, or the point's
    /// own).
    #[serde(default)]
    pub max_age: Option<Spanned<HumanDuration>>,
    /// Connections served at once, 1–1024; one more is closed at once. Default 16.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1024))]
    pub max_connections: Option<Spanned<i64>>,
    /// Accept writes (FC05, FC06, FC15, FC16) on the registers and coils of writable
    /// points, whole points at a time, checked and sent as a `<topic>/set` is. Default
    /// `false`: every write is refused.
    #[serde(default)]
    pub writes: Option<Spanned<bool>>,
    /// Served unit id (1–247) → device id (`{1: meter, 3: inverter}`): which Modbus device
    /// (of any Modbus bus) a request to that unit id reads. One device may be served at
    /// more than one unit id. Default: every Modbus device at its own `unit`, which must
    /// then differ across buses (`check` names the devices that share one).
    #[serde(default)]
    pub units: Option<Spanned<UnitsFile>>,
    /// A connection that sends no complete request for this long is closed. Default
    /// `60s`.
    #[serde(default)]
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    /// A request whose first byte arrived must be complete within this, or the connection
    /// is closed (a client that stops mid-frame). Default `5s`.
    #[serde(default)]
    pub frame_timeout: Option<Spanned<HumanDuration>>,
}

/// `modbus_server.units`: served unit id → device id, in the order written, each with
/// where it is written.
#[derive(Debug, Default)]
pub struct UnitsFile(pub Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for UnitsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads the map entry by entry, keeping both spans.
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = UnitsFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of served unit id to device id, like `{1: meter}`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UnitsFile, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(UnitsFile(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The unit ids a served unit may have (Modbus: 0 is broadcast, 248–255 reserved).
pub(super) const SERVED_UNITS: std::ops::RangeInclusive<i64> = 1..=247;

/// `units`' keys, 1–247 as YAML writes them (`1`, `+7`, `007`).
const UNIT_PATTERN: &str = r"^\+?0*([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-3][0-9]|24[0-7])$";

impl schemars::JsonSchema for UnitsFile {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ModbusUnits".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "propertyNames": {
                "pattern": UNIT_PATTERN,
                "patternErrorMessage": "a served unit id: 1–247",
            },
            "additionalProperties": { "type": "string" },
        })
    }
}

impl Validator {
    /// The server's model, when the section is present; `cx` is `modbus_server`.
    /// `embedded` is the embedded broker (its listener must not be the same); `buses`
    /// and `files` give the devices `units` may name.
    pub(super) fn modbus_server(
        &mut self,
        cx: &Cx,
        file: &Spanned<ModbusServerFile>,
        embedded: Option<&EmbeddedBroker>,
        (buses, files): (&[Bus], &[(PathBuf, MappingFile)]),
    ) -> ModbusServer {
        let f = &file.value;
        let units = self.modbus_units(cx, file, buses, files);
        let listen = self.modbus_listen(cx, f, embedded);
        let allow = self.modbus_allow(cx, f, listen);
        let max_connections = match &f.max_connections {
            None => DEFAULT_MODBUS_MAX_CONNECTIONS,
            Some(m) if (1..=1024).contains(&m.value) => m.value as usize,
            Some(m) => {
                self.error(
                    &cx.at("max_connections"),
                    m,
                    format!("max_connections {} is outside 1–1024", m.value),
                    Some(format!("the default is {DEFAULT_MODBUS_MAX_CONNECTIONS}")),
                );
                DEFAULT_MODBUS_MAX_CONNECTIONS
            }
        };
        let max_age = f
            .max_age
            .as_ref()
            .map(|a| self.positive_duration(&cx.at("max_age"), Some(a), Duration::from_secs(10)));
        ModbusServer {
            listen,
            allow,
            max_age,
            max_connections,
            writes: f.writes.as_ref().is_some_and(|w| w.value),
            units,
            idle_timeout: self.positive_duration(
                &cx.at("idle_timeout"),
                f.idle_timeout.as_ref(),
                DEFAULT_MODBUS_IDLE_TIMEOUT,
            ),
            frame_timeout: self.positive_duration(
                &cx.at("frame_timeout"),
                f.frame_timeout.as_ref(),
                DEFAULT_MODBUS_FRAME_TIMEOUT,
            ),
        }
    }

    /// `listen`: an IP address with a port, not the embedded broker's.
    fn modbus_listen(
        &mut self,
        cx: &Cx,
        f: &ModbusServerFile,
        embedded: Option<&EmbeddedBroker>,
    ) -> SocketAddr {
        let Some(l) = &f.listen else {
            return DEFAULT_MODBUS_LISTEN;
        };
        let lcx = cx.at("listen");
        let text = l.value.trim();
        let Ok(addr) = text.parse::<SocketAddr>() else {
            let v6_port = text.rsplit_once(':').and_then(|(head, port)| {
                let head = head.parse::<std::net::Ipv6Addr>().ok()?;
                Some(SocketAddr::new(head.into(), port.parse().ok()?))
            });
            let hint = match (text.parse::<std::net::IpAddr>(), v6_port) {
                (Ok(_), Some(with_port)) => {
                    format!("write an IPv6 address in brackets: `{with_port}`")
                }
                (Ok(ip), None) => format!(
                    "add the port: `{}`",
                    SocketAddr::new(ip, DEFAULT_MODBUS_LISTEN.port())
                ),
                (Err(_), _) if text.matches(':').count() > 1 => {
                    "write an IPv6 address in brackets: `[::1]:5020`".into()
                }
                (Err(_), _) => {
                    "write it like `127.0.0.1:5020` or `0.0.0.0:5020` (an address, not a \
                           host name)"
                        .into()
                }
            };
            self.error(
                &lcx,
                l,
                format!("`{}` is not an IP address with a port", l.value),
                Some(hint),
            );
            return DEFAULT_MODBUS_LISTEN;
        };
        let clash = embedded.and_then(|e| {
            let mut taken = vec![("mqtt.embedded.listen", e.listen)];
            taken.extend(
                e.tls
                    .as_ref()
                    .map(|t| ("mqtt.embedded.tls.listen", t.listen)),
            );
            taken.into_iter().find(|(_, a)| same_socket(*a, addr))
        });
        if let Some((key, other)) = clash {
            self.error(
                &lcx,
                l,
                format!("{addr} is also where the embedded broker listens (`{key}`: {other})"),
                Some("give the Modbus server another port, e.g. 5020".into()),
            );
        }
        addr
    }

    /// `allow`: addresses and ranges; required on a listener other machines can reach.
    fn modbus_allow(&mut self, cx: &Cx, f: &ModbusServerFile, listen: SocketAddr) -> Allow {
        let acx = cx.at("allow");
        let loopback = listen.ip().to_canonical().is_loopback();
        let Some(list) = &f.allow else {
            if !loopback {
                let loc = f.listen.as_ref().map_or((0, 0), at);
                let what = if f.writes.as_ref().is_some_and(|w| w.value) {
                    "read every served device and write its writable points"
                } else {
                    "read every served device"
                };
                self.error(
                    &acx,
                    loc,
                    format!(
                        "Modbus has no login: the Modbus server listens on {listen}, which \
                         other machines can reach, and has no `allow`, so anyone on the \
                         network could {what}"
                    ),
                    Some(
                        "list the clients that may connect, e.g. `allow: [192.168.1.10, \
                         192.168.1.0/24]`, or listen on `127.0.0.1:5020`"
                            .into(),
                    ),
                );
            }
            return Allow::loopback();
        };
        if list.is_empty() {
            self.error(
                &acx,
                f.listen.as_ref().map_or((0, 0), at),
                "`allow` is empty: no client could connect",
                Some(
                    "list the clients that may connect, e.g. `allow: [192.168.1.10]`, or \
                     leave `allow` out for this machine only"
                        .into(),
                ),
            );
        }
        let mut nets = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let icx = cx.item("allow", i);
            match parse_net(&entry.value) {
                Ok(net) => {
                    self.allow_reach(&icx, entry, net, listen);
                    nets.push(net);
                }
                Err(hint) => self.error(
                    &icx,
                    entry,
                    format!("`{}` is not an IP address or CIDR range", entry.value),
                    Some(hint),
                ),
            }
        }
        Allow(nets)
    }

    /// Warnings for an `allow` entry that lets every address in, or that can never
    /// connect (a LAN range on a loopback listener).
    fn allow_reach(
        &mut self,
        cx: &Cx,
        entry: &Spanned<String>,
        net: ipnet::IpNet,
        listen: SocketAddr,
    ) {
        if net.prefix_len() == 0 {
            self.warn(
                cx,
                entry,
                format!(
                    "`{}` lets every address connect, and Modbus has no login",
                    entry.value
                ),
            );
        } else if listen.ip().to_canonical().is_loopback() && !net.addr().is_loopback() {
            self.warn(
                cx,
                entry,
                format!(
                    "the Modbus server listens on {listen}, which only this machine can \
                     reach: `{}` can never connect (listen on `0.0.0.0:{}` to let it)",
                    entry.value,
                    listen.port()
                ),
            );
        }
    }
}

/// Whether two listeners would take the same port (one of them on every address, or
/// both on the same one).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An `allow` entry: a CIDR range, or an address (a /32 or /128). The error is the hint.
pub(super) fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    Err(net_hint(t))
}

/// What to write instead of an `allow` entry that is neither an address nor a range.
fn net_hint(t: &str) -> String {
    let example = "write an address (`192.168.1.10`, `::1`) or a range (`192.168.1.0/24`)";
    if let Some((addr, prefix)) = t.split_once('/') {
        if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return format!("the prefix after `/` is 0–{max} for {ip} (`{prefix}` given)");
        }
    }
    if let Ok(sock) = t.parse::<SocketAddr>() {
        return format!("without the port: `{}`", sock.ip());
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.parse::<std::net::IpAddr>().is_ok() {
            return format!("without the brackets: `{inner}`");
        }
    }
    let octets: Vec<&str> = t.split('.').collect();
    if octets.len() == 4 && octets.iter().any(|o| *o == "*" || *o == "x") {
        let fixed = octets
            .iter()
            .take_while(|o| o.parse::<u8>().is_ok())
            .count();
        let mut net: Vec<String> = octets[..fixed].iter().map(|s| s.to_string()).collect();
        net.resize(4, "0".into());
        return format!("write the range as `{}/{}`", net.join("."), fixed * 8);
    }
    if t.contains('-')
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    {
        return format!("ranges are written in CIDR form: {example}");
    }
    if t.chars().any(|c| c.is_ascii_alphabetic()) && !t.contains(':') {
        return format!("host names are not resolved: {example}");
    }
    example.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_as_ranges_and_addresses() {
        let net = |s: &str| parse_net(s).map(|n| n.to_string());
        assert_eq!(net("192.168.1.0/24").as_deref(), Ok("192.168.1.0/24"));
        assert_eq!(net("192.168.1.7/24").as_deref(), Ok("192.168.1.0/24"));
        assert_eq!(net("192.168.1.10").as_deref(), Ok("192.168.1.10/32"));
        assert_eq!(net("::1").as_deref(), Ok("::1/128"));
        assert_eq!(net("fd00::/8").as_deref(), Ok("fd00::/8"));
        assert_eq!(net(" 10.0.0.1 ").as_deref(), Ok("10.0.0.1/32"));
    }

    #[test]
    fn a_bad_allow_entry_gets_a_hint_that_fits_it() {
        let hint = |s: &str| parse_net(s).unwrap_err();
        assert!(
            hint("192.168.1.0/33").contains("0–32"),
            "{}",
            hint("192.168.1.0/33")
        );
        assert!(hint("::1/129").contains("0–128"));
        assert_eq!(hint("192.168.1.10:502"), "without the port: `192.168.1.10`");
        assert_eq!(hint("[::1]"), "without the brackets: `::1`");
        assert_eq!(hint("192.168.1.*"), "write the range as `192.168.1.0/24`");
        assert_eq!(hint("10.*.*.*"), "write the range as `10.0.0.0/8`");
        assert!(hint("192.168.1.10-20").starts_with("ranges are written in CIDR form"));
        assert!(hint("homeassistant.local").starts_with("host names are not resolved"));
    }

    #[test]
    fn units_keep_their_order_and_spans() {
        let f: ModbusServerFile =
            crate::config::parse_yaml("units:\n  3: inverter\n  1: meter\n").expect("parses");
        let units = f.units.expect("units");
        let got: Vec<_> = units
            .value
            .0
            .iter()
            .map(|(k, v)| (k.value.as_str(), at(k), v.value.as_str(), at(v)))
            .collect();
        assert_eq!(
            got,
            [
                ("3", (2, 3), "inverter", (2, 6)),
                ("1", (3, 3), "meter", (3, 6))
            ]
        );
    }

    #[test]
    fn the_unit_pattern_is_1_to_247() {
        let r = regex::Regex::new(UNIT_PATTERN).expect("compiles");
        for n in 0..=300i64 {
            assert_eq!(r.is_match(&n.to_string()), SERVED_UNITS.contains(&n), "{n}");
        }
        assert!(r.is_match("007"));
        assert!(!r.is_match("meter"));
    }

    #[test]
    fn listeners_clash_on_the_same_port_of_the_same_or_every_address() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert!(same_socket(a("127.0.0.1:1883"), a("127.0.0.1:1883")));
        assert!(same_socket(a("0.0.0.0:1883"), a("127.0.0.1:1883")));
        assert!(!same_socket(a("127.0.0.1:1883"), a("127.0.0.1:5020")));
        assert!(!same_socket(a("127.0.0.1:1883"), a("192.168.1.2:1883")));
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
