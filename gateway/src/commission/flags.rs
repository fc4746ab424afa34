//! The transport flags (`--tcp`, `--rtu-over-tcp`, `--rtu` with its line settings, or
//! `--config FILE --bus ID` for a configured bus's settings), checked and turned into
//! [`Target`]s.

use std::{path::PathBuf, time::Duration};

use fieldlink_drivers::modbus::rtu::{Parity, SerialSettings};

use super::{
    target::{Target, Transport},
    CommissionError,
};
use crate::model::Model;

/// The transport flags every commissioning subcommand takes.
// `HOST[:PORT]` in the field docs is the `--help` text, not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TransportArgs {
    /// Modbus TCP: the device or Modbus gateway at HOST[:PORT] (port 502 by default).
    #[arg(long, value_name = "HOST[:PORT]", help_heading = "Transport")]
    pub tcp: Option<String>,
    /// Modbus RTU frames through a serial-to-Ethernet converter in transparent mode at
    /// HOST[:PORT] (port 502 by default; its setup page says which).
    #[arg(long, value_name = "HOST[:PORT]", help_heading = "Transport")]
    pub rtu_over_tcp: Option<String>,
    /// Modbus RTU on this serial port (`/dev/ttyUSB0`).
    #[arg(long, value_name = "PATH", help_heading = "Transport")]
    pub rtu: Option<String>,
    /// Baud rate of the serial line (default 9600; `scan` takes a list: 9600,19200).
    #[arg(
        long,
        value_name = "N",
        value_delimiter = ',',
        help_heading = "Transport"
    )]
    pub baud: Vec<u32>,
    /// Parity of the serial line: none, even or odd (default none; `scan` takes a list).
    #[arg(
        long,
        value_name = "none|even|odd",
        value_delimiter = ',',
        help_heading = "Transport"
    )]
    pub parity: Vec<String>,
    /// Data bits of the serial line: 7 or 8 (default 8).
    #[arg(long, value_name = "7|8", help_heading = "Transport")]
    pub data_bits: Option<u8>,
    /// Stop bits of the serial line: 1 or 2 (default 1).
    #[arg(long, value_name = "1|2", help_heading = "Transport")]
    pub stop_bits: Option<u8>,
    /// Use a configured bus's settings: the gateway file (with `--bus`).
    #[arg(long, short, value_name = "FILE", help_heading = "Transport")]
    pub config: Option<PathBuf>,
    /// The bus of `--config` to use.
    #[arg(
        long,
        value_name = "ID",
        requires = "config",
        help_heading = "Transport"
    )]
    pub bus: Option<String>,
    /// How long to wait for each reply (default: 1s, `scan` 200ms; with `--config`, the
    /// bus's `timeout`).
    #[arg(long, value_name = "DURATION", help_heading = "Transport")]
    pub timeout: Option<String>,
    /// With `--config`, when the gateway runs: log in to its embedded broker as this user.
    #[arg(
        long,
        short = 'u',
        value_name = "USER",
        requires = "config",
        help_heading = "Transport"
    )]
    pub username: Option<String>,
    /// Read that user's password from this file (first line), never from the command line.
    #[arg(
        long,
        value_name = "FILE",
        requires = "username",
        help_heading = "Transport"
    )]
    pub password_file: Option<PathBuf>,
}

/// `HOST[:PORT]`: `10.0.0.7`, `10.0.0.7:8899`, `::1`, `[::1]:1502`.
pub fn host_port(text: &str, flag: &str) -> Result<(String, u16), CommissionError> {
    let bad = |why: &str| CommissionError::Usage(format!("{flag} `{text}`: {why}"));
    let t = text.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("a `[` without its `]`"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad("expected `[ADDRESS]:PORT`")),
        }
    } else if t.matches(':').count() == 1 {
        let (h, p) = t.split_once(':').unwrap_or((t, ""));
        (h, Some(p))
    } else {
        (t, None)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 502,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

/// A duration flag (`200ms`, `1s`), more than zero.
pub fn duration(text: &str, flag: &str) -> Result<Duration, CommissionError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(CommissionError::Usage(format!(
            "{flag} must be more than 0"
        ))),
        Err(e) => Err(CommissionError::Usage(format!(
            "{flag} `{text}`: {e} (write it as 200ms, 1s, 1m)"
        ))),
    }
}

impl TransportArgs {
    /// The one transport of `probe` and `write`, opened here.
    pub fn target(&self, default_timeout: Duration) -> Result<Target, CommissionError> {
        let mut all = self.transports(default_timeout, false, None)?;
        Ok(Target::Direct(all.remove(0)))
    }

    /// Every combination of line settings to try (`scan --baud 9600,19200 --parity
    /// none,even`: four), or the one transport, opened here; never empty.
    pub fn targets(&self, default_timeout: Duration) -> Result<Vec<Target>, CommissionError> {
        Ok(self
            .transports(default_timeout, true, None)?
            .into_iter()
            .map(Target::Direct)
            .collect())
    }

    /// Where the command goes: with `--config FILE --bus ID` and the gateway of that file
    /// running, that gateway, alone (the port is never opened here then); otherwise the
    /// transports to open here, as [`TransportArgs::target`] (`several`: as
    /// [`TransportArgs::targets`]).
    pub async fn resolve(
        &self,
        default_timeout: Duration,
        several: bool,
    ) -> Result<Vec<Target>, CommissionError> {
        self.one_given()?;
        let model = match &self.config {
            Some(f) => Some(
                crate::config::load(f)
                    .map_err(CommissionError::Config)?
                    .model,
            ),
            None => None,
        };
        let direct = self.transports(default_timeout, several, model.as_ref())?;
        if let (Some(m), Some(bus)) = (&model, &self.bus) {
            let login = self.login()?;
            if let Some(g) = super::client::Gateway::find(m, bus, login).await? {
                self.through_gateway(bus)?;
                return Ok(vec![Target::Gateway(g)]);
            }
        }
        Ok(direct.into_iter().map(Target::Direct).collect())
    }

    /// [`TransportArgs::resolve`] of `probe` and `write`: the one target.
    pub async fn resolve_one(&self, default_timeout: Duration) -> Result<Target, CommissionError> {
        self.resolve(default_timeout, false)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CommissionError::Usage("no transport given".into()))
    }

    /// The user and password of `--username` and `--password-file`.
    fn login(&self) -> Result<Option<(String, String)>, CommissionError> {
        let Some(user) = &self.username else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| {
                    CommissionError::Usage(format!(
                        "cannot read the password file {}: {e}",
                        f.display()
                    ))
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        };
        Ok(Some((user.clone(), password)))
    }

    /// The flags that cannot apply when the running gateway owns the bus: it runs the
    /// bus at its own settings.
    fn through_gateway(&self, bus: &str) -> Result<(), CommissionError> {
        let changes = !self.baud.is_empty()
            || !self.parity.is_empty()
            || self.data_bits.is_some()
            || self.stop_bits.is_some()
            || self.timeout.is_some();
        if changes {
            return Err(CommissionError::Usage(format!(
                "the running gateway owns bus `{bus}` and runs it at its configured \
                 settings: --baud, --parity, --data-bits, --stop-bits and --timeout \
                 cannot change them (stop the gateway to try others)"
            )));
        }
        Ok(())
    }

    /// Exactly one of the transport flags.
    fn one_given(&self) -> Result<(), CommissionError> {
        use CommissionError::Usage;
        let given = [
            self.tcp.is_some(),
            self.rtu_over_tcp.is_some(),
            self.rtu.is_some(),
            self.config.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err(Usage(
                    "say where the device is: --tcp HOST[:PORT], --rtu-over-tcp HOST[:PORT], \
                     --rtu PATH, or --config FILE --bus ID"
                        .into(),
                ))
            }
            1 => {}
            _ => {
                return Err(Usage(
                    "give one of --tcp, --rtu-over-tcp, --rtu and --config".into(),
                ))
            }
        }
        Ok(())
    }

    /// The transports to open here (`model`: the one of `--config`, when already loaded).
    fn transports(
        &self,
        default_timeout: Duration,
        several: bool,
        model: Option<&Model>,
    ) -> Result<Vec<Transport>, CommissionError> {
        use CommissionError::Usage;
        self.one_given()?;
        let timeout = match &self.timeout {
            Some(t) => Some(duration(t, "--timeout")?),
            None => None,
        };
        let line_flags = !self.baud.is_empty()
            || !self.parity.is_empty()
            || self.data_bits.is_some()
            || self.stop_bits.is_some();
        let not_serial = |what: &str| {
            Usage(format!(
                "--baud, --parity, --data-bits and --stop-bits are for a serial line \
                 (--rtu); {what}"
            ))
        };
        if let Some(t) = &self.tcp {
            if line_flags {
                return Err(not_serial("a Modbus TCP device has none"));
            }
            let (host, port) = host_port(t, "--tcp")?;
            let timeout = timeout.unwrap_or(default_timeout);
            return Ok(vec![Transport::Tcp {
                host,
                port,
                timeout,
            }]);
        }
        if let Some(t) = &self.rtu_over_tcp {
            if line_flags {
                return Err(not_serial(
                    "a converter's serial side is set on the converter",
                ));
            }
            let (host, port) = host_port(t, "--rtu-over-tcp")?;
            return Ok(vec![Transport::RtuOverTcp {
                host,
                port,
                timeout: timeout.unwrap_or(default_timeout),
                frame_delay: Duration::ZERO,
                connect_delay: Duration::ZERO,
            }]);
        }
        if let Some(path) = &self.rtu {
            let base = SerialSettings {
                path: path.clone(),
                baud: 9600,
                parity: Parity::None,
                data_bits: 8,
                stop_bits: 1,
            };
            let timeout = timeout.unwrap_or(default_timeout);
            return self.lines(&base, several, |serial| Transport::Rtu {
                serial,
                timeout,
                frame_delay: Duration::ZERO,
            });
        }
        let Some(file) = &self.config else {
            return Err(Usage("--config FILE needs --bus ID".into()));
        };
        let loaded;
        let model = match model {
            Some(m) => m,
            None => {
                loaded = crate::config::load(file)
                    .map_err(CommissionError::Config)?
                    .model;
                &loaded
            }
        };
        self.configured(model, default_timeout, timeout, line_flags, several)
    }

    /// Every combination of `--baud` and `--parity` on `base`, with `--data-bits` and
    /// `--stop-bits`.
    fn lines(
        &self,
        base: &SerialSettings,
        several: bool,
        make: impl Fn(SerialSettings) -> Transport,
    ) -> Result<Vec<Transport>, CommissionError> {
        use CommissionError::Usage;
        if !several && (self.baud.len() > 1 || self.parity.len() > 1) {
            return Err(Usage(
                "one --baud and one --parity here; `fieldlink scan` tries several".into(),
            ));
        }
        let mut parities = Vec::new();
        for p in &self.parity {
            parities.push(match p.trim().to_ascii_lowercase().as_str() {
                "none" | "n" => Parity::None,
                "even" | "e" => Parity::Even,
                "odd" | "o" => Parity::Odd,
                _ => return Err(Usage(format!("--parity `{p}`: expected none, even or odd"))),
            });
        }
        if parities.is_empty() {
            parities.push(base.parity);
        }
        let bauds = if self.baud.is_empty() {
            vec![base.baud]
        } else {
            self.baud.clone()
        };
        if let Some(b) = bauds.iter().find(|b| !(50..=4_000_000).contains(*b)) {
            return Err(Usage(format!("--baud {b} is not a serial baud rate")));
        }
        let data_bits = self.data_bits.unwrap_or(base.data_bits);
        if !matches!(data_bits, 7 | 8) {
            return Err(Usage(format!("--data-bits {data_bits}: expected 7 or 8")));
        }
        let stop_bits = self.stop_bits.unwrap_or(base.stop_bits);
        if !matches!(stop_bits, 1 | 2) {
            return Err(Usage(format!("--stop-bits {stop_bits}: expected 1 or 2")));
        }
        let mut out = Vec::new();
        for baud in &bauds {
            for parity in &parities {
                out.push(make(SerialSettings {
                    path: base.path.clone(),
                    baud: *baud,
                    parity: *parity,
                    data_bits,
                    stop_bits,
                }));
            }
        }
        Ok(out)
    }

    /// `--config FILE --bus ID`: that bus's transport and settings (the line settings
    /// may be overridden on a serial bus, to try others).
    fn configured(
        &self,
        model: &Model,
        default_timeout: Duration,
        timeout: Option<Duration>,
        line_flags: bool,
        several: bool,
    ) -> Result<Vec<Transport>, CommissionError> {
        use CommissionError::Usage;
        let Some(file) = &self.config else {
            return Err(Usage("--config FILE needs --bus ID".into()));
        };
        let ids = || {
            model
                .buses
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(id) = &self.bus else {
            return Err(Usage(format!(
                "--config needs --bus ID, the bus to use (in {}: {})",
                file.display(),
                ids()
            )));
        };
        let Some(bus) = model.buses.iter().find(|b| &b.id == id) else {
            return Err(Usage(format!(
                "no bus `{id}` in {} (its buses: {})",
                file.display(),
                ids()
            )));
        };
        // A scan keeps its own short timeout (the bus's is made for polling devices that
        // are there); probe and write take the bus's.
        let pick = |bus_timeout: Duration| {
            timeout.unwrap_or(if several {
                default_timeout
            } else {
                bus_timeout
            })
        };
        let line_only = || {
            Usage(format!(
                "bus `{id}` is not a serial line: --baud, --parity, --data-bits and \
                 --stop-bits are for `modbus_rtu` buses"
            ))
        };
        let Some(t) = Transport::of_bus(&bus.kind) else {
            return Err(Usage(format!("bus `{id}` is not a Modbus bus")));
        };
        let timeout = pick(t.timeout());
        match t {
            Transport::Rtu {
                serial,
                frame_delay,
                ..
            } => self.lines(&serial, several, |serial| Transport::Rtu {
                serial,
                timeout,
                frame_delay,
            }),
            _ if line_flags => Err(line_only()),
            other => Ok(vec![other.with_timeout(timeout)]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        assert_eq!(
            host_port("10.0.0.7", "--tcp").unwrap(),
            ("10.0.0.7".into(), 502)
        );
        assert_eq!(
            host_port("10.0.0.7:8899", "--tcp").unwrap(),
            ("10.0.0.7".into(), 8899)
        );
        assert_eq!(host_port("::1", "--tcp").unwrap(), ("::1".into(), 502));
        assert_eq!(
            host_port("[::1]:1502", "--tcp").unwrap(),
            ("::1".into(), 1502)
        );
        for bad in ["", ":502", "h:0", "h:70000", "h:x", "[::1", "[::1]x"] {
            assert!(
                matches!(host_port(bad, "--tcp"), Err(CommissionError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn scan_tries_every_combination_and_probe_only_one() {
        let args = TransportArgs {
            rtu: Some("/dev/ttyUSB0".into()),
            baud: vec![9600, 19200],
            parity: vec!["none".into(), "even".into()],
            ..TransportArgs::default()
        };
        let t = args.targets(Duration::from_millis(200)).unwrap();
        let names: Vec<String> = t
            .iter()
            .filter_map(|t| match t {
                Target::Direct(t) => Some(t.describe()),
                Target::Gateway(_) => None,
            })
            .collect();
        assert_eq!(
            names,
            [
                "RTU /dev/ttyUSB0 at 9600 8N1",
                "RTU /dev/ttyUSB0 at 9600 8E1",
                "RTU /dev/ttyUSB0 at 19200 8N1",
                "RTU /dev/ttyUSB0 at 19200 8E1"
            ]
        );
        assert!(matches!(
            args.target(Duration::from_secs(1)),
            Err(CommissionError::Usage(_))
        ));
    }

    #[test]
    fn transport_flags_are_checked() {
        let usage = |a: TransportArgs| {
            matches!(
                a.target(Duration::from_secs(1)),
                Err(CommissionError::Usage(_))
            )
        };
        assert!(usage(TransportArgs::default()), "none given");
        assert!(usage(TransportArgs {
            tcp: Some("h".into()),
            rtu: Some("/dev/x".into()),
            ..TransportArgs::default()
        }));
        assert!(usage(TransportArgs {
            tcp: Some("h".into()),
            baud: vec![9600],
            ..TransportArgs::default()
        }));
        for (d, s, p) in [
            (Some(9), None, None),
            (None, Some(3), None),
            (None, None, Some("mark")),
        ] {
            assert!(usage(TransportArgs {
                rtu: Some("/dev/x".into()),
                data_bits: d,
                stop_bits: s,
                parity: p.map(|p: &str| vec![p.to_string()]).unwrap_or_default(),
                ..TransportArgs::default()
            }));
        }
        assert!(usage(TransportArgs {
            tcp: Some("h".into()),
            timeout: Some("0s".into()),
            ..TransportArgs::default()
        }));
    }
}
