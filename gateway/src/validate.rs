//! Validation: configuration files → [`Model`], collecting every problem.
//!
//! Each problem is a [`Diagnostic`] printed as `file:line:col: field.path: message; hint`.
//! Structural problems (YAML syntax, unknown keys, wrong value types) stop the file they
//! are in at the first one; every semantic problem in every file is reported.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use fieldlink_drivers::uart::{FieldPath, FieldRef, Template};

mod embedded;

use crate::{
    config::{
        did_you_mean, parse_yaml, resolve_mappings, BusFile, BusKindName, DeviceFile, GatewayFile,
        GpioBackendName, GpioModeName, MapValue, MappingFile, OnShutdownName, OrderName,
        ParityName, ParserFile, ParserKindName, PayloadName, PointFile, PublishName, PullName,
        Spanned, TableName, TypeName,
    },
    model::{
        Bus, BusKind, Device, GpioBackendKind, GpioMode, GpioPoint, ModbusPoint, Model, MqttModel,
        OnShutdown, Parity, Parser, Payload, Point, PublishMode, Pull, SerialSettings, Source,
        Table, UartCommand, UartDevice, UartPoint, ValueType, WordOrder,
    },
    topics::{check_topic, is_id},
};

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The configuration cannot run.
    Error,
    /// Runs, but probably not as meant.
    Warning,
}

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
    /// Field path, e.g. `devices[0].points[3].address`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// A valid model plus the warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    /// The model.
    pub model: Model,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

/// Give every point its slot (its index in [`Model::points`] order) and share the buses.
fn number_points(buses: Vec<Bus>) -> Vec<Arc<Bus>> {
    let mut slot = 0u32;
    buses
        .into_iter()
        .map(|mut b| {
            for d in &mut b.devices {
                // Not shared yet: make_mut never copies here.
                for p in &mut Arc::make_mut(d).points {
                    p.slot = slot;
                    slot += 1;
                }
            }
            Arc::new(b)
        })
        .collect()
}

/// Load and validate the gateway file at `path` and every mapping file it names.
pub fn load(path: &Path) -> Result<Checked, Vec<Diagnostic>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                path: String::new(),
                message: format!("cannot read the gateway file: {e}"),
                hint: Some("pass the right file with --config".into()),
            }])
        }
    };
    check_sources(path, &text, |entries, diags| {
        let base = path.parent().unwrap_or(Path::new("."));
        let (files, missing) = resolve_mappings(base, entries);
        for m in missing {
            diags.push((format!("mapping file {m}"), None));
        }
        files
            .into_iter()
            .filter_map(|f| match std::fs::read_to_string(&f) {
                Ok(t) => Some((f, t)),
                Err(e) => {
                    diags.push((format!("cannot read `{}`: {e}", f.display()), None));
                    None
                }
            })
            .collect()
    })
}

/// Problems found while resolving mapping files: (message, hint).
pub type ResolveProblems = Vec<(String, Option<String>)>;

/// Validate a gateway file's text; `resolve` turns its `mappings:` entries into
/// `(path, text)` pairs (from disk, or from memory for `fieldlink demo`).
pub fn check_sources(
    gateway_path: &Path,
    gateway_text: &str,
    resolve: impl FnOnce(&[String], &mut ResolveProblems) -> Vec<(PathBuf, String)>,
) -> Result<Checked, Vec<Diagnostic>> {
    let mut v = Validator::default();
    let gw_file = gateway_path.to_path_buf();
    let gw: GatewayFile = match parse_yaml(gateway_text) {
        Ok(g) => g,
        Err(p) => {
            v.push(
                Severity::Error,
                &gw_file,
                (p.line, p.column),
                p.path,
                p.message,
                p.hint,
            );
            return Err(v.diags);
        }
    };
    let mut problems = Vec::new();
    let sources = resolve(&gw.mappings.value.to_vec(), &mut problems);
    for (msg, hint) in problems {
        v.error(&gw_file, at(&gw.mappings), "mappings", msg, hint);
    }
    let mut files = vec![gw_file.clone()];
    let mut mappings = Vec::new();
    for (path, text) in sources {
        files.push(path.clone());
        match parse_yaml::<MappingFile>(&text) {
            Ok(m) => mappings.push((path, m)),
            Err(p) => v.push(
                Severity::Error,
                &path,
                (p.line, p.column),
                p.path,
                p.message,
                p.hint,
            ),
        }
    }
    let header = v.gateway(&gw_file, &gw);
    v.parse_failed = files.len() - 1 != mappings.len();
    let buses = v.mappings(&mappings, header.as_ref().map(|h| h.base_topic.as_str()));
    // Report in file order, then by position.
    v.diags.sort_by_key(|d| {
        (
            files
                .iter()
                .position(|f| *f == d.file)
                .unwrap_or(usize::MAX),
            d.line,
            d.column,
        )
    });
    if v.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(v.diags);
    }
    let Some(h) = header else {
        return Err(v.diags);
    };
    let model = Model {
        gateway_id: h.id,
        base_topic: h.base_topic,
        mqtt: h.mqtt,
        diagnostics_interval: h.diagnostics_interval,
        buses: number_points(buses),
    };
    embedded::warnings(&model, &gw_file, &gw.mqtt.embedded, &mut v.diags);
    Ok(Checked {
        model,
        warnings: v.diags,
        files,
    })
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` → (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url
        .strip_prefix("ssl://")
        .or_else(|| url.strip_prefix("tls://"))
    {
        (true, r)
    } else if let Some(r) = url.strip_prefix("tcp://") {
        (false, r)
    } else {
        return Err(format!(
            "`{url}` does not start with `mqtt://` or `mqtts://`"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') {
        return Err(format!(
            "`{url}`: only `scheme://host:port` is taken (no path, no user in the url)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed `[` in an IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(format!("`{url}`: unexpected `{after}` after the address")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`{url}`: port `{p}` is not 1–65535")),
        },
    };
    Ok((tls, host, port))
}

fn noun(t: Table) -> &'static str {
    match t {
        Table::Holding => "holding register",
        Table::Input => "input register",
        Table::Coil => "coil",
        Table::Discrete => "discrete input",
    }
}

fn at<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.line(), s.column())
}

struct Header {
    id: String,
    base_topic: String,
    mqtt: MqttModel,
    diagnostics_interval: Duration,
}

#[derive(Default)]
struct Validator {
    diags: Vec<Diagnostic>,
    /// A mapping file did not parse: references into it cannot be checked.
    parse_failed: bool,
    /// A device named a bus that does not exist.
    unknown_bus: bool,
    /// GPIO pins in use: where and by which topic.
    pins: HashMap<u8, (PathBuf, (u64, u64), String)>,
    /// Serial ports in use: where and by which bus.
    ports: HashMap<String, (PathBuf, (u64, u64), String)>,
}

/// What a device's bus is, for the checks that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Modbus,
    Gpio,
    Uart,
}

/// The keys only UART points take, with where they are.
fn uart_point_keys(p: &PointFile) -> [(&'static str, Option<(u64, u64)>); 5] {
    [
        ("field", p.field.as_ref().map(at)),
        ("command", p.command.as_ref().map(at)),
        ("params", p.params.as_ref().map(at)),
        ("ack", p.ack.as_ref().map(at)),
        ("ack_timeout", p.ack_timeout.as_ref().map(at)),
    ]
}

/// The value type a type name stands for; `string` takes its length from `string`.
fn value_type(name: TypeName, string: impl FnOnce() -> ValueType) -> ValueType {
    match name {
        TypeName::Bool => ValueType::Bool,
        TypeName::U16 => ValueType::U16,
        TypeName::I16 => ValueType::I16,
        TypeName::U32 => ValueType::U32,
        TypeName::I32 => ValueType::I32,
        TypeName::U64 => ValueType::U64,
        TypeName::I64 => ValueType::I64,
        TypeName::F32 => ValueType::F32,
        TypeName::F64 => ValueType::F64,
        TypeName::String => string(),
    }
}

/// Where state lives unless `state_dir` says otherwise (systemd's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fieldlink";

/// Default bound of the upstream queue.
pub const DEFAULT_QUEUE_SIZE: u64 = 64 << 20;

/// Default longest line of a uart bus.
pub const DEFAULT_MAX_LINE: usize = 256;

/// Default cap of an offline device's retry interval.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Highest BCM pin of the 40-pin header.
pub const GPIO_MAX_PIN: u8 = 27;

/// Debounce of a GPIO input unless the mapping says otherwise.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

impl Validator {
    fn push(
        &mut self,
        severity: Severity,
        file: &Path,
        (line, column): (u64, u64),
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            file: file.to_path_buf(),
            line,
            column,
            path: path.into(),
            message: message.into(),
            hint,
        });
    }

    fn error(
        &mut self,
        file: &Path,
        loc: (u64, u64),
        path: impl Into<String>,
        msg: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, file, loc, path, msg, hint);
    }

    fn warn(
        &mut self,
        file: &Path,
        loc: (u64, u64),
        path: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.push(Severity::Warning, file, loc, path, msg, None);
    }

    /// An integer field within `lo..=hi`.
    fn int_in(
        &mut self,
        file: &Path,
        field: Option<&Spanned<i64>>,
        path: &str,
        what: &str,
        (lo, hi): (i64, i64),
        default: i64,
    ) -> i64 {
        match field {
            None => default,
            Some(s) if (lo..=hi).contains(&s.value) => s.value,
            Some(s) => {
                self.error(
                    file,
                    at(s),
                    path,
                    format!("{what} {} is outside {lo}–{hi}", s.value),
                    Some(format!("use a value from {lo} to {hi}")),
                );
                default
            }
        }
    }

    /// Read a file named in the gateway file (relative to it).
    fn read_file(&mut self, file: &Path, f: &Spanned<String>, path: &str) -> Option<Vec<u8>> {
        let full = file.parent().unwrap_or(Path::new(".")).join(&f.value);
        match std::fs::read(&full) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(
                    file,
                    at(f),
                    path,
                    format!("cannot read `{}`: {e}", full.display()),
                    Some("the gateway must be able to read this file when it starts".into()),
                );
                None
            }
        }
    }

    /// PEM certificates in a file: at least one, all parsing.
    fn certificates(&mut self, file: &Path, f: &Spanned<String>, path: &str) -> Option<Vec<u8>> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let bytes = self.read_file(file, f, path)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
        match certs {
            Ok(c) if !c.is_empty() => Some(bytes),
            Ok(_) => {
                self.error(
                    file,
                    at(f),
                    path,
                    format!("`{}` holds no PEM certificate", f.value),
                    Some("expected `-----BEGIN CERTIFICATE-----` blocks".into()),
                );
                None
            }
            Err(e) => {
                self.error(
                    file,
                    at(f),
                    path,
                    format!("`{}` is not valid PEM: {e}", f.value),
                    None,
                );
                None
            }
        }
    }

    fn upstream(
        &mut self,
        file: &Path,
        u: &crate::config::UpstreamFile,
        id: &str,
        state_dir: &Path,
    ) -> crate::model::Upstream {
        use crate::model::{QueueSettings, Secret, Tls, Upstream};
        let p = "mqtt.upstream";
        let (tls, host, port) = match parse_url(&u.url.value) {
            Ok(v) => v,
            Err(e) => {
                self.error(
                    file,
                    at(&u.url),
                    format!("{p}.url"),
                    e,
                    Some(
                        "write it like `mqtts://broker.example.com:8883` or `mqtt://10.0.0.5:1883`"
                            .into(),
                    ),
                );
                (false, String::new(), 0)
            }
        };
        let client_id = match &u.client_id {
            Some(c) if c.value.is_empty() || c.value.len() > 256 => {
                self.error(
                    file,
                    at(c),
                    format!("{p}.client_id"),
                    "client id must be 1–256 bytes",
                    None,
                );
                String::new()
            }
            Some(c) => c.value.clone(),
            None => format!("fieldlink-{id}"),
        };
        let password = match (&u.password_file, &u.password_env) {
            (Some(f), Some(_)) => {
                self.error(
                    file,
                    at(f),
                    format!("{p}.password_file"),
                    "both `password_file` and `password_env` are set",
                    Some("keep one of them".into()),
                );
                None
            }
            (Some(f), None) => self
                .read_file(file, f, &format!("{p}.password_file"))
                .map(|b| {
                    let text = String::from_utf8_lossy(&b);
                    Secret(text.trim_end_matches(['\r', '\n']).to_string())
                }),
            (None, Some(v)) => match std::env::var(&v.value) {
                Ok(pw) => Some(Secret(pw)),
                Err(_) => {
                    self.error(
                        file,
                        at(v),
                        format!("{p}.password_env"),
                        format!("environment variable `{}` is not set", v.value),
                        Some(
                            "set it in the service's environment (systemd `EnvironmentFile=`)"
                                .into(),
                        ),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        if password.is_some() && u.username.is_none() {
            let loc = u
                .password_file
                .as_ref()
                .or(u.password_env.as_ref())
                .map_or((0, 0), at);
            self.error(
                file,
                loc,
                format!("{p}.username"),
                "a password is set but no `username`",
                Some("MQTT 3.1.1 sends a password only with a user name".into()),
            );
        }
        let mut tls_model = None;
        if tls {
            let ca = u
                .ca_file
                .as_ref()
                .and_then(|f| self.certificates(file, f, &format!("{p}.ca_file")));
            let client = match (&u.cert_file, &u.key_file) {
                (Some(c), Some(k)) => {
                    let cert = self.certificates(file, c, &format!("{p}.cert_file"));
                    let key = self.read_file(file, k, &format!("{p}.key_file")).and_then(|b| {
                        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
                        match PrivateKeyDer::from_pem_slice(&b) {
                            Ok(_) => Some(Secret(String::from_utf8_lossy(&b).into_owned())),
                            Err(e) => {
                                self.error(
                                    file,
                                    at(k),
                                    format!("{p}.key_file"),
                                    format!("`{}` holds no usable private key: {e}", k.value),
                                    Some("expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`".into()),
                                );
                                None
                            }
                        }
                    });
                    cert.zip(key)
                }
                (Some(c), None) => {
                    self.error(
                        file,
                        at(c),
                        format!("{p}.key_file"),
                        "`cert_file` needs `key_file`",
                        None,
                    );
                    None
                }
                (None, Some(k)) => {
                    self.error(
                        file,
                        at(k),
                        format!("{p}.cert_file"),
                        "`key_file` needs `cert_file`",
                        None,
                    );
                    None
                }
                (None, None) => None,
            };
            tls_model = Some(Tls { ca, client });
        } else {
            for (key, f) in [
                ("ca_file", &u.ca_file),
                ("cert_file", &u.cert_file),
                ("key_file", &u.key_file),
            ] {
                if let Some(f) = f {
                    self.error(
                        file,
                        at(f),
                        format!("{p}.{key}"),
                        format!("`{key}` needs TLS, but the url is `mqtt://`"),
                        Some("use `mqtts://` to connect with TLS".into()),
                    );
                }
            }
        }
        let keepalive = self.positive_duration(
            file,
            u.keepalive.as_ref(),
            &format!("{p}.keepalive"),
            Duration::from_secs(30),
        );
        if keepalive < Duration::from_secs(1) || keepalive > Duration::from_secs(65535) {
            if let Some(k) = &u.keepalive {
                self.error(
                    file,
                    at(k),
                    format!("{p}.keepalive"),
                    "keepalive must be 1s–18h",
                    None,
                );
            }
        }
        // QoS 2 is refused: after a reconnect the queue resends with new packet ids, which
        // a broker holding the old id for its PUBREL could treat as a duplicate.
        let qos = self.int_in(file, u.qos.as_ref(), &format!("{p}.qos"), "qos", (0, 1), 1) as u8;
        let prefix = match &u.prefix {
            Some(x) => {
                if x.value.contains(['+', '#', '\0']) {
                    self.error(
                        file,
                        at(x),
                        format!("{p}.prefix"),
                        "a topic prefix may not contain `+`, `#` or NUL",
                        None,
                    );
                } else if !x.value.is_empty() && !x.value.ends_with('/') {
                    self.warn(
                        file,
                        at(x),
                        format!("{p}.prefix"),
                        format!(
                            "prefix `{}` does not end with `/`: topics become `{}casa/...`",
                            x.value, x.value
                        ),
                    );
                }
                x.value.clone()
            }
            None => String::new(),
        };
        let q = &u.queue;
        let qp = format!("{p}.queue");
        let dir = match &q.dir {
            Some(d) if d.value.trim().is_empty() => {
                self.error(file, at(d), format!("{qp}.dir"), "empty path", None);
                state_dir.join("upstream-queue")
            }
            Some(d) => file.parent().unwrap_or(Path::new(".")).join(&d.value),
            None => state_dir.join("upstream-queue"),
        };
        let max_size = match &q.max_size {
            Some(m) if m.value.0 < 64 << 10 => {
                self.error(
                    file,
                    at(m),
                    format!("{qp}.max_size"),
                    format!("max_size {} bytes is below 64KiB", m.value.0),
                    Some("e.g. `64MiB`".into()),
                );
                DEFAULT_QUEUE_SIZE
            }
            Some(m) => m.value.0,
            None => DEFAULT_QUEUE_SIZE,
        };
        let flush_interval = self.positive_duration(
            file,
            q.flush_interval.as_ref(),
            &format!("{qp}.flush_interval"),
            Duration::from_secs(1),
        );
        if flush_interval > Duration::from_secs(60) {
            if let Some(f) = &q.flush_interval {
                self.error(
                    file,
                    at(f),
                    format!("{qp}.flush_interval"),
                    "flush_interval above 60s risks a minute of data on a power cut",
                    Some(
                        "use at most `60s`; the default `1s` costs one small write a second".into(),
                    ),
                );
            }
        }
        let replay_rate = self.int_in(
            file,
            q.replay_rate.as_ref(),
            &format!("{qp}.replay_rate"),
            "replay_rate",
            (0, 1_000_000),
            1000,
        ) as u32;
        Upstream {
            url: u.url.value.clone(),
            host,
            port,
            tls: tls_model,
            client_id,
            username: u.username.as_ref().map(|x| x.value.clone()),
            password,
            keepalive,
            qos,
            prefix,
            accept_commands: u.accept_commands,
            queue: QueueSettings {
                dir,
                max_size,
                flush_interval,
                replay_rate,
            },
        }
    }

    fn positive_duration(
        &mut self,
        file: &Path,
        field: Option<&Spanned<crate::config::HumanDuration>>,
        path: &str,
        default: Duration,
    ) -> Duration {
        match field {
            None => default,
            Some(s) if s.value.0.is_zero() => {
                self.error(
                    file,
                    at(s),
                    path,
                    "must be greater than zero",
                    Some(format!("e.g. `{}`", humantime::format_duration(default))),
                );
                default
            }
            Some(s) => s.value.0,
        }
    }

    fn gateway(&mut self, file: &Path, gw: &GatewayFile) -> Option<Header> {
        let id = gw.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&gw.id),
                "id",
                format!("gateway id `{id}` may only use letters, digits, `-` and `_`"),
                Some("it becomes a topic level and part of the MQTT client id".into()),
            );
        }
        let base_topic = match &gw.base_topic {
            Some(b) => {
                match check_topic(&b.value) {
                    Err(e) => self.error(file, at(b), "base_topic", e, None),
                    Ok(Some(w)) => self.warn(file, at(b), "base_topic", w),
                    Ok(None) => {}
                }
                b.value.clone()
            }
            None => format!("fieldlink/{id}"),
        };
        let e = &gw.mqtt.embedded;
        if !e.enabled && gw.mqtt.upstream.is_none() {
            self.error(
                file,
                (0, 0),
                "mqtt.embedded.enabled",
                "no MQTT destination: the embedded broker is disabled and no upstream is set",
                Some("set `mqtt.embedded.enabled: true` or add `mqtt.upstream`".into()),
            );
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let state_dir = match &gw.state_dir {
            Some(d) if d.value.trim().is_empty() => {
                self.error(file, at(d), "state_dir", "empty path", None);
                PathBuf::from(DEFAULT_STATE_DIR)
            }
            Some(d) => dir.join(&d.value),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let upstream = gw
            .mqtt
            .upstream
            .as_ref()
            .map(|u| self.upstream(file, &u.value, &id, &state_dir));
        let (listen, embedded) = self.embedded(file, e);
        let client_id = match &gw.mqtt.client_id {
            Some(c) if c.value.is_empty() || c.value.len() > 256 => {
                self.error(
                    file,
                    at(c),
                    "mqtt.client_id",
                    "client id must be 1–256 bytes",
                    None,
                );
                String::new()
            }
            Some(c) => c.value.clone(),
            None => format!("fieldlink-{id}"),
        };
        // No effect any more: a warning only, whatever the value, so an older file never
        // stops the gateway for it.
        if let Some(k) = &gw.mqtt.keepalive {
            self.warn(
                file,
                at(k),
                "mqtt.keepalive",
                "has no effect: the gateway is linked to its embedded broker in process, \
                 without an MQTT connection (the upstream connection has \
                 `mqtt.upstream.keepalive`)",
            );
        }
        let keepalive = gw
            .mqtt
            .keepalive
            .as_ref()
            .map_or(Duration::from_secs(15), |k| k.value.0);
        let diagnostics_interval = self.positive_duration(
            file,
            gw.diagnostics_interval.as_ref(),
            "diagnostics_interval",
            Duration::from_secs(30),
        );
        let host = if listen.ip().is_unspecified() {
            if listen.is_ipv4() {
                "127.0.0.1".to_string()
            } else {
                "::1".to_string()
            }
        } else {
            listen.ip().to_string()
        };
        Some(Header {
            id,
            base_topic,
            mqtt: MqttModel {
                embedded,
                host,
                port: listen.port(),
                client_id,
                keepalive,
                upstream,
            },
            diagnostics_interval,
        })
    }

    fn mappings(&mut self, files: &[(PathBuf, MappingFile)], base: Option<&str>) -> Vec<Bus> {
        // Buses first: devices may refer to a bus of any file.
        let mut buses: Vec<Bus> = Vec::new();
        let mut bus_where: HashMap<String, (PathBuf, (u64, u64))> = HashMap::new();
        for (file, m) in files {
            for (i, b) in m.buses.iter().enumerate() {
                let path = format!("buses[{i}]");
                if let Some(bus) = self.bus(file, &path, b) {
                    if let Some((f0, l0)) = bus_where.get(&bus.id) {
                        self.error(
                            file,
                            at(&b.id),
                            format!("{path}.id"),
                            format!(
                                "bus id `{}` is already used at {}:{}:{}",
                                bus.id,
                                f0.display(),
                                l0.0,
                                l0.1
                            ),
                            Some("give every bus its own id".into()),
                        );
                        continue;
                    }
                    bus_where.insert(bus.id.clone(), (file.clone(), at(&b.id)));
                    buses.push(bus);
                }
            }
        }
        let bus_ids: Vec<String> = buses.iter().map(|b| b.id.clone()).collect();
        let classes: HashMap<String, Class> = buses
            .iter()
            .map(|b| {
                let class = match b.kind {
                    BusKind::Gpio { .. } => Class::Gpio,
                    BusKind::Uart { .. } => Class::Uart,
                    BusKind::ModbusTcp { .. } | BusKind::ModbusRtu { .. } => Class::Modbus,
                };
                (b.id.clone(), class)
            })
            .collect();
        let mut device_where: HashMap<String, (PathBuf, (u64, u64))> = HashMap::new();
        let mut unit_where: HashMap<(String, u8), String> = HashMap::new();
        let mut topic_where: BTreeMap<String, (PathBuf, (u64, u64), String)> = BTreeMap::new();
        let mut device_ids = Vec::new();
        for (file, m) in files {
            for (i, d) in m.devices.iter().enumerate() {
                device_ids.push(d.id.value.clone());
                let path = format!("devices[{i}]");
                let class = classes.get(&d.bus.value).copied().unwrap_or(Class::Modbus);
                let Some((bus_id, dev)) =
                    self.device(file, &path, d, &bus_ids, class, &mut topic_where)
                else {
                    continue;
                };
                if let Some((f0, l0)) = device_where.get(&dev.id) {
                    self.error(
                        file,
                        at(&d.id),
                        format!("{path}.id"),
                        format!(
                            "device id `{}` is already used at {}:{}:{}",
                            dev.id,
                            f0.display(),
                            l0.0,
                            l0.1
                        ),
                        Some("device ids name availability topics and must be unique".into()),
                    );
                    continue;
                }
                device_where.insert(dev.id.clone(), (file.clone(), at(&d.id)));
                let unit_valid = d.unit.as_ref().is_none_or(|u| (1..=247).contains(&u.value));
                let first = unit_where
                    .entry((bus_id.clone(), dev.unit))
                    .or_insert_with(|| dev.id.clone())
                    .clone();
                if unit_valid && first != dev.id && class == Class::Modbus {
                    let loc = d.unit.as_ref().map_or(at(&d.id), at);
                    let default = if d.unit.is_none() {
                        " (the default)"
                    } else {
                        ""
                    };
                    self.error(
                        file,
                        loc,
                        format!("{path}.unit"),
                        format!(
                            "unit id {}{default} is already used by device `{first}` on bus `{bus_id}`",
                            dev.unit
                        ),
                        Some("each device on a bus needs its own unit id".into()),
                    );
                }
                if let Some(bus) = buses.iter_mut().find(|b| b.id == bus_id) {
                    bus.devices.push(Arc::new(dev));
                }
            }
        }
        // Point topics must not collide with the gateway's own topics or command topics.
        if let Some(base) = base {
            let mut reserved = vec![format!("{base}/status"), format!("{base}/diagnostics")];
            reserved.extend(
                device_ids
                    .iter()
                    .map(|d| format!("{base}/{d}/availability")),
            );
            for r in reserved {
                if let Some((f, l, p)) = topic_where.get(&r) {
                    let (f, l, p) = (f.clone(), *l, p.clone());
                    self.error(
                        &f,
                        l,
                        p,
                        format!("topic `{r}` is one of the gateway's own topics"),
                        Some("choose another topic or change `base_topic`".into()),
                    );
                }
            }
        }
        let topics: Vec<(String, PathBuf, (u64, u64), String)> = topic_where
            .iter()
            .map(|(t, (f, l, p))| (t.clone(), f.clone(), *l, p.clone()))
            .collect();
        for (t, f, l, p) in &topics {
            for (suffix, what) in [("/set", "command"), ("/set/result", "command result")] {
                if let Some(parent) = t.strip_suffix(suffix) {
                    if topic_where.contains_key(parent) {
                        self.error(
                            f,
                            *l,
                            p.clone(),
                            format!("topic `{t}` is the {what} topic of point `{parent}`"),
                            Some(format!(
                                "`{suffix}` below a point topic is reserved for commands"
                            )),
                        );
                    }
                }
            }
        }
        for bus in &buses {
            if bus.devices.is_empty() && !self.unknown_bus && !self.parse_failed {
                let (f, l) = &bus_where[&bus.id];
                let (f, l) = (f.clone(), *l);
                self.warn(&f, l, "", format!("bus `{}` has no devices", bus.id));
            }
        }
        buses
    }

    fn bus(&mut self, file: &Path, path: &str, b: &BusFile) -> Option<Bus> {
        let id = b.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&b.id),
                format!("{path}.id"),
                format!("bus id `{id}` may only use letters, digits, `-` and `_`"),
                None,
            );
        }
        let (kind_name, allowed): (&str, &[&str]) = match b.kind.value {
            BusKindName::ModbusTcp => ("modbus_tcp", &["host", "port", "timeout"]),
            BusKindName::ModbusRtu => (
                "modbus_rtu",
                &[
                    "path",
                    "baud",
                    "parity",
                    "data_bits",
                    "stop_bits",
                    "timeout",
                    "frame_delay",
                ],
            ),
            BusKindName::Uart => (
                "uart",
                &[
                    "path",
                    "baud",
                    "parity",
                    "data_bits",
                    "stop_bits",
                    "timeout",
                    "delimiter",
                    "max_line",
                ],
            ),
            BusKindName::Gpio => ("gpio", &["backend"]),
        };
        let present = [
            ("host", b.host.as_ref().map(at)),
            ("port", b.port.as_ref().map(at)),
            ("timeout", b.timeout.as_ref().map(at)),
            ("backend", b.backend.as_ref().map(at)),
            ("path", b.path.as_ref().map(at)),
            ("baud", b.baud.as_ref().map(at)),
            ("parity", b.parity.as_ref().map(at)),
            ("data_bits", b.data_bits.as_ref().map(at)),
            ("stop_bits", b.stop_bits.as_ref().map(at)),
            ("frame_delay", b.frame_delay.as_ref().map(at)),
            ("delimiter", b.delimiter.as_ref().map(at)),
            ("max_line", b.max_line.as_ref().map(at)),
        ];
        for (key, loc) in present {
            if let (Some(loc), false) = (loc, allowed.contains(&key)) {
                let hint = if key == "port" && matches!(kind_name, "modbus_rtu" | "uart") {
                    format!("the serial port of a {kind_name} bus is `path: /dev/ttyUSB0`")
                } else {
                    format!("a {kind_name} bus takes: {}", allowed.join(", "))
                };
                self.error(
                    file,
                    loc,
                    format!("{path}.{key}"),
                    format!("`{key}` does not apply to a {kind_name} bus"),
                    Some(hint),
                );
            }
        }
        match b.kind.value {
            BusKindName::ModbusRtu => {
                let serial = self.serial(file, path, b, kind_name, &id)?;
                let frame_delay = b.frame_delay.as_ref().map_or(Duration::ZERO, |d| d.value.0);
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                Some(Bus {
                    id,
                    kind: BusKind::ModbusRtu {
                        serial,
                        timeout,
                        frame_delay,
                    },
                    devices: Vec::new(),
                })
            }
            BusKindName::Uart => {
                let serial = self.serial(file, path, b, kind_name, &id)?;
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                let delimiter = match &b.delimiter {
                    None => b"\n".to_vec(),
                    Some(d) if d.value.is_empty() => {
                        self.error(
                            file,
                            at(d),
                            format!("{path}.delimiter"),
                            "the delimiter is empty",
                            Some(r#"write it in double quotes: `delimiter: "\r\n"`"#.into()),
                        );
                        b"\n".to_vec()
                    }
                    Some(d) => d.value.as_bytes().to_vec(),
                };
                let max_line = self.int_in(
                    file,
                    b.max_line.as_ref(),
                    &format!("{path}.max_line"),
                    "max_line",
                    (1, 65536),
                    DEFAULT_MAX_LINE as i64,
                ) as usize;
                Some(Bus {
                    id,
                    kind: BusKind::Uart {
                        serial,
                        delimiter,
                        max_line,
                        timeout,
                    },
                    devices: Vec::new(),
                })
            }
            BusKindName::Gpio => Some(Bus {
                id,
                kind: BusKind::Gpio {
                    backend: match b.backend.as_ref().map(|x| x.value) {
                        None | Some(GpioBackendName::Rppal) => GpioBackendKind::Rppal,
                        Some(GpioBackendName::Simulated) => GpioBackendKind::Simulated,
                    },
                },
                devices: Vec::new(),
            }),
            BusKindName::ModbusTcp => {
                let host = match &b.host {
                    Some(h) if !h.value.trim().is_empty() => h.value.trim().to_string(),
                    Some(h) => {
                        self.error(file, at(h), format!("{path}.host"), "host is empty", None);
                        return None;
                    }
                    None => {
                        self.error(
                            file,
                            at(&b.kind),
                            path.to_string(),
                            "a modbus_tcp bus needs `host`",
                            Some("add `host: 192.168.1.20` (the device or Modbus gateway)".into()),
                        );
                        return None;
                    }
                };
                let port = match &b.port {
                    Some(p) if p.value == 0 => {
                        self.error(
                            file,
                            at(p),
                            format!("{path}.port"),
                            "port 0 is not a valid TCP port",
                            Some("Modbus TCP uses 502".into()),
                        );
                        502
                    }
                    Some(p) => p.value,
                    None => 502,
                };
                let timeout = self.positive_duration(
                    file,
                    b.timeout.as_ref(),
                    &format!("{path}.timeout"),
                    Duration::from_secs(1),
                );
                Some(Bus {
                    id,
                    kind: BusKind::ModbusTcp {
                        host,
                        port,
                        timeout,
                    },
                    devices: Vec::new(),
                })
            }
        }
    }

    /// Port and framing of a serial bus (modbus_rtu, uart); each port belongs to one bus.
    fn serial(
        &mut self,
        file: &Path,
        path: &str,
        b: &BusFile,
        kind: &str,
        id: &str,
    ) -> Option<SerialSettings> {
        let port_path = match &b.path {
            Some(p) if !p.value.trim().is_empty() => p.value.trim().to_string(),
            _ => {
                self.error(
                    file,
                    b.path.as_ref().map_or(at(&b.kind), at),
                    format!("{path}.path"),
                    format!("a {kind} bus needs the serial port's `path`"),
                    Some("add `path: /dev/ttyUSB0` (better: a /dev/serial/by-id/... link, stable across reboots)".into()),
                );
                return None;
            }
        };
        let baud = self.int_in(
            file,
            b.baud.as_ref(),
            &format!("{path}.baud"),
            "baud rate",
            (300, 4_000_000),
            9600,
        );
        let data_bits = self.int_in(
            file,
            b.data_bits.as_ref(),
            &format!("{path}.data_bits"),
            "data_bits",
            (7, 8),
            8,
        );
        let stop_bits = self.int_in(
            file,
            b.stop_bits.as_ref(),
            &format!("{path}.stop_bits"),
            "stop_bits",
            (1, 2),
            1,
        );
        if let Some((f0, l0, bus0)) = self.ports.get(&port_path) {
            let msg = format!(
                "serial port `{port_path}` is already used by bus `{bus0}` at {}:{}:{}",
                f0.display(),
                l0.0,
                l0.1
            );
            self.error(
                file,
                b.path.as_ref().map_or(at(&b.kind), at),
                format!("{path}.path"),
                msg,
                Some(
                    "one task owns each port: put every device of one serial line on one bus"
                        .into(),
                ),
            );
        } else {
            self.ports.insert(
                port_path.clone(),
                (
                    file.to_path_buf(),
                    b.path.as_ref().map_or(at(&b.kind), at),
                    id.to_string(),
                ),
            );
        }
        Some(SerialSettings {
            path: port_path,
            baud: baud as u32,
            parity: match b.parity.as_ref().map(|p| p.value) {
                None | Some(ParityName::None) => Parity::None,
                Some(ParityName::Even) => Parity::Even,
                Some(ParityName::Odd) => Parity::Odd,
            },
            data_bits: data_bits as u8,
            stop_bits: stop_bits as u8,
        })
    }

    fn device(
        &mut self,
        file: &Path,
        path: &str,
        d: &DeviceFile,
        bus_ids: &[String],
        class: Class,
        topics: &mut BTreeMap<String, (PathBuf, (u64, u64), String)>,
    ) -> Option<(String, Device)> {
        if class != Class::Uart {
            self.reject_keys(
                file,
                path,
                &[
                    ("query", d.query.as_ref().map(at)),
                    ("parser", d.parser.as_ref().map(|p| at(&p.kind))),
                ],
                |key| format!("`{key}` applies to devices on a uart bus only"),
                "put the device on a `kind: uart` bus, or remove the key",
            );
        }
        if class == Class::Uart {
            self.reject_keys(
                file,
                path,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a uart bus"),
                "a uart device takes `parser`, `query`, `poll_interval`, `offline_after`, `max_backoff`",
            );
        }
        if class == Class::Gpio {
            self.reject_keys(
                file,
                path,
                &[
                ("unit", d.unit.as_ref().map(at)),
                ("poll_interval", d.poll_interval.as_ref().map(at)),
                ("offline_after", d.offline_after.as_ref().map(at)),
                ("max_gap", d.max_gap.as_ref().map(at)),
                ("write_multiple", d.write_multiple.as_ref().map(at)),
                ("max_backoff", d.max_backoff.as_ref().map(at)),
            ],
                |key| format!("`{key}` does not apply to a device on a gpio bus"),
                "GPIO inputs are interrupt-driven, not polled; use a point's `heartbeat` to republish",
            );
        }
        let id = d.id.value.clone();
        if !is_id(&id) {
            self.error(
                file,
                at(&d.id),
                format!("{path}.id"),
                format!("device id `{id}` may only use letters, digits, `-` and `_`"),
                Some("it becomes a topic level of `<base>/<device>/availability`".into()),
            );
        }
        let bus_ok = bus_ids.contains(&d.bus.value);
        if !bus_ok && !self.parse_failed {
            self.unknown_bus = true;
            let hint = match did_you_mean(&d.bus.value, bus_ids.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None if bus_ids.is_empty() => "no bus is defined; add one under `buses:`".into(),
                None => format!("defined buses: {}", bus_ids.join(", ")),
            };
            self.error(
                file,
                at(&d.bus),
                format!("{path}.bus"),
                format!("unknown bus `{}`", d.bus.value),
                Some(hint),
            );
        }
        let unit = self.int_in(
            file,
            d.unit.as_ref(),
            &format!("{path}.unit"),
            "unit id",
            (1, 247),
            1,
        );
        let poll_interval = self.positive_duration(
            file,
            d.poll_interval.as_ref(),
            &format!("{path}.poll_interval"),
            Duration::from_secs(1),
        );
        let offline_after = self.int_in(
            file,
            d.offline_after.as_ref(),
            &format!("{path}.offline_after"),
            "offline_after",
            (1, 1000),
            3,
        );
        let max_gap = self.int_in(
            file,
            d.max_gap.as_ref(),
            &format!("{path}.max_gap"),
            "max_gap",
            (0, 124),
            8,
        );
        let max_backoff = self.positive_duration(
            file,
            d.max_backoff.as_ref(),
            &format!("{path}.max_backoff"),
            DEFAULT_MAX_BACKOFF,
        );
        let uart = if class == Class::Uart {
            let parser = d.parser.as_ref().and_then(|pf| self.parser(file, path, pf));
            let query = match &d.query {
                Some(q) if q.value.is_empty() => {
                    self.error(
                        file,
                        at(q),
                        format!("{path}.query"),
                        "the query is empty",
                        Some("remove `query` for a device that sends on its own".into()),
                    );
                    None
                }
                Some(q) => {
                    if d.parser.is_none() {
                        self.error(
                            file,
                            at(q),
                            format!("{path}.query"),
                            "a `query` needs a `parser` to read the reply",
                            Some("add e.g. `parser: {kind: key_value}`".into()),
                        );
                    }
                    Some(q.value.as_bytes().to_vec())
                }
                None => None,
            };
            Some(UartDevice { parser, query })
        } else {
            None
        };
        let parser = uart.as_ref().and_then(|u| u.parser.as_ref());
        let parser_failed = class == Class::Uart && d.parser.is_some() && parser.is_none();
        let mut points = Vec::new();
        for (i, p) in d.points.iter().enumerate() {
            let ppath = format!("{path}.points[{i}]");
            if let Some(pt) = self.point(file, &ppath, p, class, parser, parser_failed) {
                if let Some((f0, l0, _)) = topics.get(&pt.topic) {
                    self.error(
                        file,
                        at(&p.topic),
                        format!("{ppath}.topic"),
                        format!(
                            "duplicate topic `{}` (first used at {}:{}:{})",
                            pt.topic,
                            f0.display(),
                            l0.0,
                            l0.1
                        ),
                        Some("every point needs its own topic".into()),
                    );
                    continue;
                }
                topics.insert(
                    pt.topic.clone(),
                    (file.to_path_buf(), at(&p.topic), format!("{ppath}.topic")),
                );
                points.push((i, pt));
            }
        }
        if d.points.is_empty() {
            self.warn(
                file,
                at(&d.id),
                format!("{path}.points"),
                format!("device `{id}` has no points"),
            );
        }
        // Overlapping registers with different interpretations: a warning.
        for a in 0..points.len() {
            for b in a + 1..points.len() {
                let (_, pa) = &points[a];
                let (ib, pb) = &points[b];
                let (Some(ma), Some(mb)) = (pa.modbus(), pb.modbus()) else {
                    continue;
                };
                if ma.table != mb.table {
                    continue;
                }
                let (sa, ea) = (
                    u32::from(ma.address),
                    u32::from(ma.address) + u32::from(ma.count(pa.ty)),
                );
                let (sb, eb) = (
                    u32::from(mb.address),
                    u32::from(mb.address) + u32::from(mb.count(pb.ty)),
                );
                let overlap = sa < eb && sb < ea;
                let same = pa.ty == pb.ty && ma.order == mb.order && ma.address == mb.address;
                let both_bits = ma.bit.is_some() && mb.bit.is_some();
                if overlap && !same && !both_bits {
                    self.warn(
                        file,
                        d.points[*ib].address.as_ref().map_or(at(&d.points[*ib].topic), at),
                        format!("{path}.points[{ib}].address"),
                        format!(
                            "points `{}` ({} at {} {}) and `{}` ({} at {} {}) read overlapping registers differently",
                            pa.topic, pa.ty, ma.table, ma.address, pb.topic, pb.ty, mb.table, mb.address
                        ),
                    );
                }
            }
        }
        if !bus_ok {
            return None;
        }
        // Exactly as long as needed: the model lives as long as the process.
        let mut points: Vec<Point> = points.into_iter().map(|(_, p)| p).collect();
        points.shrink_to_fit();
        Some((
            d.bus.value.clone(),
            Device {
                id,
                unit: unit as u8,
                poll_interval,
                offline_after: offline_after as u32,
                max_gap: max_gap as u16,
                write_multiple: d.write_multiple.as_ref().is_some_and(|w| w.value),
                max_backoff,
                uart,
                points,
            },
        ))
    }

    fn point(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
        class: Class,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> Option<Point> {
        let errors_before = self.error_count();
        let topic = p.topic.value.clone();
        match check_topic(&topic) {
            Err(e) => self.error(file, at(&p.topic), format!("{path}.topic"), e, None),
            Ok(Some(w)) => self.warn(file, at(&p.topic), format!("{path}.topic"), w),
            Ok(None) => {}
        }
        let (table, address, ty, order, bit, gpio, uart) = match class {
            Class::Gpio => {
                let g = self.gpio_part(file, path, p);
                let table = match g.mode {
                    GpioMode::Input { .. } => Table::Discrete,
                    GpioMode::Output { .. } => Table::Coil,
                };
                let pin = u16::from(g.pin);
                (
                    table,
                    pin,
                    ValueType::Bool,
                    WordOrder::Abcd,
                    None,
                    Some(g),
                    None,
                )
            }
            Class::Uart => {
                let (ty, u) = self.uart_part(file, path, p, parser, parser_failed);
                let table = if u.command.is_some() {
                    Table::Holding
                } else {
                    Table::Input
                };
                (table, 0, ty, WordOrder::Abcd, None, None, Some(Box::new(u)))
            }
            Class::Modbus => {
                let (table, address, ty, order, bit) = self.modbus_part(file, path, p);
                (table, address, ty, order, bit, None, None)
            }
        };
        let numeric = ty.is_numeric();
        for (name, f) in [("scale", &p.scale), ("offset", &p.offset)] {
            if let Some(s) = f {
                if gpio.is_some() {
                    // Reported by `gpio_part`.
                } else if !numeric {
                    self.error(
                        file,
                        at(s),
                        format!("{path}.{name}"),
                        format!("`{name}` only applies to numeric types, this point is `{ty}`"),
                        None,
                    );
                } else if !s.value.is_finite() {
                    self.error(
                        file,
                        at(s),
                        format!("{path}.{name}"),
                        format!("`{name}` must be a finite number"),
                        None,
                    );
                }
            }
        }
        if let Some(s) = &p.scale {
            if s.value == 0.0 {
                self.error(
                    file,
                    at(s),
                    format!("{path}.scale"),
                    "scale 0 would publish 0 for every reading",
                    Some("use e.g. `scale: 0.1` for tenths".into()),
                );
            }
        }
        let precision = self.int_in(
            file,
            p.precision.as_ref(),
            &format!("{path}.precision"),
            "precision",
            (0, 12),
            -1,
        );
        let qos = self.int_in(
            file,
            p.qos.as_ref(),
            &format!("{path}.qos"),
            "qos",
            (0, 2),
            0,
        );
        let publish = match p.publish.as_ref().map(|s| s.value) {
            Some(PublishName::EveryPoll) if gpio.is_some() => {
                if let Some(e) = &p.publish {
                    self.error(
                        file,
                        at(e),
                        format!("{path}.publish"),
                        "GPIO points are not polled: inputs publish every debounced change",
                        Some(
                            "remove `publish`; add `heartbeat: 5m` to republish an unchanged state"
                                .into(),
                        ),
                    );
                }
                PublishMode::OnChange { deadband: 0.0 }
            }
            Some(PublishName::EveryPoll) => {
                if let Some(db) = &p.deadband {
                    self.error(
                        file,
                        at(db),
                        format!("{path}.deadband"),
                        "`deadband` only applies to `publish: on_change`",
                        Some("remove `deadband` or use `publish: on_change`".into()),
                    );
                }
                PublishMode::EveryPoll
            }
            _ => {
                let deadband = match &p.deadband {
                    None => 0.0,
                    Some(db) if db.value.is_finite() && db.value >= 0.0 => {
                        if gpio.is_some() {
                            // Reported by `gpio_part`.
                        } else if !numeric {
                            self.error(
                                file,
                                at(db),
                                format!("{path}.deadband"),
                                format!("`deadband` only applies to numeric types, this point is `{ty}`"),
                                None,
                            );
                        }
                        db.value
                    }
                    Some(db) => {
                        self.error(
                            file,
                            at(db),
                            format!("{path}.deadband"),
                            format!("deadband {} must be zero or positive", db.value),
                            None,
                        );
                        0.0
                    }
                };
                PublishMode::OnChange { deadband }
            }
        };
        let heartbeat = match &p.heartbeat {
            Some(h) if h.value.0.is_zero() => {
                self.error(
                    file,
                    at(h),
                    format!("{path}.heartbeat"),
                    "heartbeat must be greater than zero",
                    Some("remove it to publish only on change".into()),
                );
                None
            }
            Some(h) => Some(h.value.0),
            None => None,
        };
        let writable = match (&gpio, &p.writable) {
            // GPIO outputs are writable unless the mapping says otherwise.
            (Some(g), w) => {
                let out = matches!(g.mode, GpioMode::Output { .. });
                let w_val = w.as_ref().map_or(out, |w| w.value);
                if let (Some(w), true) = (w, w_val && !out) {
                    self.error(
                        file,
                        at(w),
                        format!("{path}.writable"),
                        "a GPIO input cannot be written",
                        Some("use `mode: output` for a line the gateway drives".into()),
                    );
                }
                w_val && out
            }
            (None, w) if uart.is_some() => {
                let has_command = uart.as_ref().is_some_and(|u| u.command.is_some());
                let w_val = w.as_ref().map_or(has_command, |w| w.value);
                if let (Some(w), true) = (w, w_val && !has_command) {
                    self.error(
                        file,
                        at(w),
                        format!("{path}.writable"),
                        "a UART point needs `command` to be writable",
                        Some(r#"add e.g. `command: "SET {value}\n"`"#.into()),
                    );
                }
                w_val && has_command
            }
            (None, w) => w.as_ref().is_some_and(|w| w.value),
        };
        if let (Some(w), true) = (
            &p.writable,
            gpio.is_none()
                && uart.is_none()
                && writable
                && matches!(table, Table::Input | Table::Discrete),
        ) {
            self.error(
                file,
                at(w),
                format!("{path}.writable"),
                format!("{}s are read-only in Modbus", noun(table)),
                Some(
                    "use `table: holding` (registers) or `table: coil` (bits) for writable points"
                        .into(),
                ),
            );
        }
        for (name, f) in [("min", &p.min), ("max", &p.max)] {
            if let Some(v) = f {
                if gpio.is_some() {
                    // Reported by `gpio_part`.
                } else if !numeric {
                    self.error(
                        file,
                        at(v),
                        format!("{path}.{name}"),
                        format!("`{name}` only applies to numeric types, this point is `{ty}`"),
                        None,
                    );
                } else if !v.value.is_finite() {
                    self.error(
                        file,
                        at(v),
                        format!("{path}.{name}"),
                        format!("`{name}` must be a finite number"),
                        None,
                    );
                }
            }
        }
        if let (Some(lo), Some(hi)) = (&p.min, &p.max) {
            if lo.value > hi.value {
                self.error(
                    file,
                    at(hi),
                    format!("{path}.max"),
                    format!("max {} is below min {}", hi.value, lo.value),
                    Some("swap them".into()),
                );
            }
        }
        let mut value_map = Vec::new();
        if let Some(vm) = &p.values {
            if matches!(ty, ValueType::String { .. }) {
                self.error(
                    file,
                    at(vm),
                    format!("{path}.values"),
                    "`values` does not apply to `string` points",
                    None,
                );
            }
            for (k, v) in &vm.value {
                let n = match v {
                    MapValue::Bool(b) => f64::from(u8::from(*b)),
                    MapValue::Number(n) => *n,
                };
                if k.trim().is_empty()
                    || !n.is_finite()
                    || (ty == ValueType::Bool && n != 0.0 && n != 1.0)
                {
                    self.error(
                        file,
                        at(vm),
                        format!("{path}.values.{k}"),
                        format!("`{k}: {n}` is not a usable value for a `{ty}` point"),
                        Some("use e.g. `values: {ON: 1, OFF: 0}`".into()),
                    );
                }
                value_map.push((k.clone(), n));
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        let source = match (gpio, uart) {
            (Some(g), _) => Source::Gpio(g),
            (None, Some(u)) => Source::Uart(u),
            (None, None) => Source::Modbus(ModbusPoint {
                table,
                address,
                order,
                bit,
            }),
        };
        Some(Point {
            slot: 0,
            writable,
            min: p.min.as_ref().map(|v| v.value),
            max: p.max.as_ref().map(|v| v.value),
            value_map,
            topic,
            ty,
            scale: p.scale.as_ref().map_or(1.0, |s| s.value),
            offset: p.offset.as_ref().map_or(0.0, |s| s.value),
            precision: u8::try_from(precision).ok(),
            unit: p.unit.as_ref().map(|u| u.value.clone()),
            retain: p.retain.as_ref().is_none_or(|r| r.value),
            qos: qos as u8,
            payload: match p.payload.as_ref().map(|s| s.value) {
                Some(PayloadName::Json) => Payload::Json,
                _ => Payload::Plain,
            },
            publish,
            heartbeat,
            source,
        })
    }

    /// The GPIO half of a point: pin, direction and its settings.
    fn gpio_part(&mut self, file: &Path, path: &str, p: &PointFile) -> GpioPoint {
        self.no_uart_keys(file, path, p, "a gpio");
        let modbus_keys = [
            ("table", p.table.as_ref().map(at)),
            ("address", p.address.as_ref().map(at)),
            ("length", p.length.as_ref().map(at)),
            ("word_order", p.word_order.as_ref().map(at)),
            ("bit", p.bit.as_ref().map(at)),
            ("scale", p.scale.as_ref().map(at)),
            ("offset", p.offset.as_ref().map(at)),
            ("precision", p.precision.as_ref().map(at)),
            ("deadband", p.deadband.as_ref().map(at)),
            ("min", p.min.as_ref().map(at)),
            ("max", p.max.as_ref().map(at)),
        ];
        self.reject_keys(
            file,
            path,
            &modbus_keys,
            |key| format!("`{key}` does not apply to a GPIO point (one line, on or off)"),
            "remove it; a GPIO point has `pin`, `mode`, `pull`, `active_low`, `debounce`, `initial`, `on_shutdown`, `pulse`",
        );
        if let Some(t) = p.ty.as_ref().filter(|t| t.value != TypeName::Bool) {
            self.error(
                file,
                at(t),
                format!("{path}.type"),
                "a GPIO point is `bool`",
                Some("remove `type`; use `values: {ON: true, OFF: false}` for named states".into()),
            );
        }
        let pin = match &p.pin {
            None => {
                self.error(
                    file,
                    at(&p.topic),
                    path.to_string(),
                    "a GPIO point needs `pin`",
                    Some("add `pin: 17` (the BCM number: GPIO17 is physical pin 11)".into()),
                );
                0
            }
            Some(pn) if (0..=i64::from(GPIO_MAX_PIN)).contains(&pn.value) => {
                let pin = pn.value as u8;
                if let Some((f0, l0, t0)) = self.pins.get(&pin) {
                    let msg = format!(
                        "pin {pin} is already used by `{t0}` at {}:{}:{}",
                        f0.display(),
                        l0.0,
                        l0.1
                    );
                    self.error(
                        file,
                        at(pn),
                        format!("{path}.pin"),
                        msg,
                        Some("every GPIO line can serve one point".into()),
                    );
                } else {
                    self.pins
                        .insert(pin, (file.to_path_buf(), at(pn), p.topic.value.clone()));
                }
                pin
            }
            Some(pn) => {
                self.error(
                    file,
                    at(pn),
                    format!("{path}.pin"),
                    format!("pin {} is outside the board's GPIO0–GPIO{GPIO_MAX_PIN}", pn.value),
                    Some("use the BCM number of the 40-pin header (GPIO17 is `pin: 17`), not the physical pin".into()),
                );
                0
            }
        };
        let active_low = p.active_low.as_ref().is_some_and(|a| a.value);
        let output = p
            .mode
            .as_ref()
            .is_some_and(|m| m.value == GpioModeName::Output);
        let wrong_side = |v: &mut Self, key: &str, loc: Option<(u64, u64)>, side: &str| {
            if let Some(loc) = loc {
                v.error(
                    file,
                    loc,
                    format!("{path}.{key}"),
                    format!("`{key}` applies to {side} only"),
                    Some(if side == "inputs" {
                        "remove it, or set `mode: input`".into()
                    } else {
                        "remove it, or set `mode: output`".into()
                    }),
                );
            }
        };
        let mode = if output {
            wrong_side(self, "pull", p.pull.as_ref().map(at), "inputs");
            wrong_side(self, "debounce", p.debounce.as_ref().map(at), "inputs");
            let pulse = match &p.pulse {
                Some(d) if d.value.0.is_zero() => {
                    self.error(
                        file,
                        at(d),
                        format!("{path}.pulse"),
                        "pulse must be longer than zero",
                        Some("e.g. `pulse: 500ms`, or remove it for a plain on/off output".into()),
                    );
                    None
                }
                Some(d) => Some(d.value.0),
                None => None,
            };
            let initial = p.initial.as_ref().is_some_and(|i| i.value);
            if let (Some(i), true, true) = (&p.initial, initial, pulse.is_some()) {
                self.error(
                    file,
                    at(i),
                    format!("{path}.initial"),
                    "a pulse output starts off",
                    Some("remove `initial: true`".into()),
                );
            }
            GpioMode::Output {
                initial,
                on_shutdown: match p.on_shutdown.as_ref().map(|o| o.value) {
                    None | Some(OnShutdownName::Keep) => OnShutdown::Keep,
                    Some(OnShutdownName::Off) => OnShutdown::Off,
                    Some(OnShutdownName::On) => OnShutdown::On,
                    Some(OnShutdownName::Low) => OnShutdown::Low,
                    Some(OnShutdownName::High) => OnShutdown::High,
                },
                pulse,
            }
        } else {
            wrong_side(self, "initial", p.initial.as_ref().map(at), "outputs");
            wrong_side(
                self,
                "on_shutdown",
                p.on_shutdown.as_ref().map(at),
                "outputs",
            );
            wrong_side(self, "pulse", p.pulse.as_ref().map(at), "outputs");
            GpioMode::Input {
                pull: match p.pull.as_ref().map(|x| x.value) {
                    None | Some(PullName::None) => Pull::None,
                    Some(PullName::Up) => Pull::Up,
                    Some(PullName::Down) => Pull::Down,
                },
                debounce: p.debounce.as_ref().map_or(DEFAULT_DEBOUNCE, |d| d.value.0),
            }
        };
        GpioPoint {
            pin,
            active_low,
            mode,
        }
    }

    /// The Modbus half of a point: table, address, type, word order, bit.
    fn modbus_part(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
    ) -> (Table, u16, ValueType, WordOrder, Option<u8>) {
        self.no_uart_keys(file, path, p, "a Modbus");
        let gpio_keys = [
            ("pin", p.pin.as_ref().map(at)),
            ("mode", p.mode.as_ref().map(at)),
            ("pull", p.pull.as_ref().map(at)),
            ("active_low", p.active_low.as_ref().map(at)),
            ("debounce", p.debounce.as_ref().map(at)),
            ("initial", p.initial.as_ref().map(at)),
            ("on_shutdown", p.on_shutdown.as_ref().map(at)),
            ("pulse", p.pulse.as_ref().map(at)),
        ];
        self.reject_keys(
            file,
            path,
            &gpio_keys,
            |key| format!("`{key}` applies to GPIO points only; this device is on a Modbus bus"),
            "put the point on a device of a `kind: gpio` bus, or remove the key",
        );
        let Some(table_s) = &p.table else {
            self.error(
                file,
                at(&p.topic),
                path.to_string(),
                "a Modbus point needs `table`",
                Some("add `table: holding` (or `input`, `coil`, `discrete`)".into()),
            );
            return (Table::Holding, 0, ValueType::U16, WordOrder::Abcd, None);
        };
        let Some(address_s) = &p.address else {
            self.error(
                file,
                at(&p.topic),
                path.to_string(),
                "a Modbus point needs `address`",
                Some("add `address: 0` (0-based, as on the wire)".into()),
            );
            return (Table::Holding, 0, ValueType::U16, WordOrder::Abcd, None);
        };
        let table = match table_s.value {
            TableName::Holding => Table::Holding,
            TableName::Input => Table::Input,
            TableName::Coil => Table::Coil,
            TableName::Discrete => Table::Discrete,
        };
        let type_name =
            p.ty.as_ref()
                .map(|t| t.value)
                .unwrap_or(if table.is_bits() {
                    TypeName::Bool
                } else {
                    TypeName::U16
                });
        let type_loc = p.ty.as_ref().map_or(at(table_s), at);
        let ty = value_type(type_name, || match &p.length {
            Some(l) if (1..=250).contains(&l.value) => ValueType::String {
                len: l.value as u16,
            },
            Some(l) => {
                self.error(
                    file,
                    at(l),
                    format!("{path}.length"),
                    format!("string length {} is outside 1–250 bytes", l.value),
                    Some("one read carries at most 125 registers (250 bytes)".into()),
                );
                ValueType::String { len: 2 }
            }
            None => {
                self.error(
                    file,
                    type_loc,
                    format!("{path}.type"),
                    "a `string` point needs `length` (bytes)",
                    Some("add `length: 16`".into()),
                );
                ValueType::String { len: 2 }
            }
        });
        self.length_only_for_strings(file, path, p, ty);
        if table.is_bits() && ty != ValueType::Bool {
            self.error(
                file,
                type_loc,
                format!("{path}.type"),
                format!(
                    "type `{ty}` is not allowed on a {}: it holds a single bit",
                    noun(table)
                ),
                Some("use `type: bool`, or `table: holding`/`input` for register values".into()),
            );
        }
        let bit = match &p.bit {
            None => None,
            Some(b) if table.is_bits() => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!(
                        "`bit` selects a bit inside a register; a {} is already one bit",
                        noun(table)
                    ),
                    Some("remove `bit`".into()),
                );
                None
            }
            Some(b) if ty != ValueType::Bool => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!("`bit` needs `type: bool`, this point is `{ty}`"),
                    Some("set `type: bool` to read one bit of the register".into()),
                );
                None
            }
            Some(b) if (0..=15).contains(&b.value) => Some(b.value as u8),
            Some(b) => {
                self.error(
                    file,
                    at(b),
                    format!("{path}.bit"),
                    format!("bit index {} is outside 0–15", b.value),
                    Some("bit 0 is the least significant bit of the register".into()),
                );
                None
            }
        };
        let count = if table.is_bits() {
            1
        } else {
            i64::from(ty.registers())
        };
        let address = if (0..=65535).contains(&address_s.value) {
            if address_s.value + count - 1 > 65535 {
                self.error(
                    file,
                    at(address_s),
                    format!("{path}.address"),
                    format!(
                        "address {} + {count} registers of `{ty}` goes beyond 65535",
                        address_s.value
                    ),
                    Some(format!(
                        "the last usable start address for `{ty}` is {}",
                        65536 - count
                    )),
                );
            }
            address_s.value as u16
        } else {
            self.error(
                file,
                at(address_s),
                format!("{path}.address"),
                format!("address {} is outside 0–65535", address_s.value),
                Some(format!(
                    "addresses are 0-based on the wire: {} is `address: 0` of `table: {table}`",
                    match table {
                        Table::Holding => "register 40001",
                        Table::Input => "input register 30001",
                        Table::Coil => "coil 00001",
                        Table::Discrete => "discrete input 10001",
                    }
                )),
            );
            0
        };
        let order = match p.word_order.as_ref().map(|o| o.value) {
            None | Some(OrderName::Abcd) => WordOrder::Abcd,
            Some(OrderName::Cdab) => WordOrder::Cdab,
            Some(OrderName::Badc) => WordOrder::Badc,
            Some(OrderName::Dcba) => WordOrder::Dcba,
        };
        (table, address, ty, order, bit)
    }

    /// `length` on a point that is not a `string`.
    fn length_only_for_strings(&mut self, file: &Path, path: &str, p: &PointFile, ty: ValueType) {
        if let (Some(l), false) = (&p.length, matches!(ty, ValueType::String { .. })) {
            self.error(
                file,
                at(l),
                format!("{path}.length"),
                format!("`length` only applies to `string` points, this one is `{ty}`"),
                Some("remove `length` or set `type: string`".into()),
            );
        }
    }

    /// Report every key of `keys` that is present as one that does not belong here.
    fn reject_keys(
        &mut self,
        file: &Path,
        path: &str,
        keys: &[(&str, Option<(u64, u64)>)],
        message: impl Fn(&str) -> String,
        hint: &str,
    ) {
        for (key, loc) in keys {
            if let Some(loc) = loc {
                self.error(
                    file,
                    *loc,
                    format!("{path}.{key}"),
                    message(key),
                    Some(hint.to_string()),
                );
            }
        }
    }

    /// UART keys on a point of another bus kind.
    fn no_uart_keys(&mut self, file: &Path, path: &str, p: &PointFile, bus: &str) {
        self.reject_keys(
            file,
            path,
            &uart_point_keys(p),
            |key| format!("`{key}` applies to UART points only; this device is on {bus} bus"),
            "put the point on a device of a `kind: uart` bus, or remove the key",
        );
    }

    /// A regex from the mapping, or an error at `loc`.
    fn regex(
        &mut self,
        file: &Path,
        loc: (u64, u64),
        path: String,
        what: &str,
        pattern: &str,
    ) -> Option<regex::Regex> {
        match regex::Regex::new(pattern) {
            Ok(r) => Some(r),
            Err(e) => {
                let text = e.to_string();
                let reason = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .map_or_else(
                        || text.lines().last().unwrap_or("").trim().to_string(),
                        str::to_string,
                    );
                self.error(
                    file,
                    loc,
                    path,
                    format!("{what} `{pattern}` does not compile: {reason}"),
                    Some(
                        "in YAML, write patterns in single quotes so `\\d` stays as written".into(),
                    ),
                );
                None
            }
        }
    }

    /// The `parser:` of a uart device.
    fn parser(&mut self, file: &Path, path: &str, pf: &ParserFile) -> Option<Parser> {
        let kind = pf.kind.value;
        let not_for = |key: &str| {
            format!(
                "`{key}` does not apply to a `{}` parser",
                match kind {
                    ParserKindName::KeyValue => "key_value",
                    ParserKindName::Regex => "regex",
                    ParserKindName::Json => "json",
                }
            )
        };
        let mut foreign: Vec<(&str, (u64, u64))> = Vec::new();
        if kind != ParserKindName::KeyValue {
            foreign.extend(
                pf.pair_separator
                    .as_ref()
                    .map(|x| ("pair_separator", at(x))),
            );
            foreign.extend(pf.kv_separator.as_ref().map(|x| ("kv_separator", at(x))));
        }
        if kind != ParserKindName::Regex {
            foreign.extend(pf.pattern.as_ref().map(|x| ("pattern", at(x))));
        }
        for (key, loc) in foreign {
            self.error(
                file,
                loc,
                format!("{path}.parser.{key}"),
                not_for(key),
                None,
            );
        }
        let parser = match kind {
            ParserKindName::KeyValue => {
                let pair = pf.pair_separator.as_ref().map_or(";", |x| x.value.as_str());
                let kv = pf.kv_separator.as_ref().map_or("=", |x| x.value.as_str());
                if let Some(x) = pf.pair_separator.as_ref().filter(|x| x.value.is_empty()) {
                    self.error(
                        file,
                        at(x),
                        format!("{path}.parser.pair_separator"),
                        "the pair separator is empty",
                        Some(r#"e.g. `pair_separator: ";"`, or `" "` for whitespace"#.into()),
                    );
                }
                if let Some(x) = pf
                    .kv_separator
                    .as_ref()
                    .filter(|x| x.value.trim().is_empty())
                {
                    self.error(
                        file,
                        at(x),
                        format!("{path}.parser.kv_separator"),
                        "the key/value separator is blank",
                        Some(r#"e.g. `kv_separator: "="` or `":"`"#.into()),
                    );
                }
                Parser::KeyValue {
                    pair_separator: pair.to_string(),
                    kv_separator: kv.to_string(),
                }
            }
            ParserKindName::Json => Parser::Json,
            ParserKindName::Regex => {
                let Some(pat) = &pf.pattern else {
                    self.error(
                        file,
                        at(&pf.kind),
                        format!("{path}.parser"),
                        "a `regex` parser needs `pattern`",
                        Some(r#"add e.g. `pattern: '^CO2=(?P<co2>\d+)'`"#.into()),
                    );
                    return None;
                };
                let re = self.regex(
                    file,
                    at(pat),
                    format!("{path}.parser.pattern"),
                    "pattern",
                    &pat.value,
                )?;
                if re.capture_names().flatten().next().is_none() {
                    self.error(
                        file,
                        at(pat),
                        format!("{path}.parser.pattern"),
                        "the pattern has no named group, so it yields no field",
                        Some("name each value: `(?P<temp>[-0-9.]+)`".into()),
                    );
                }
                Parser::Regex(re)
            }
        };
        Some(parser)
    }

    /// The UART half of a point: type, field and command.
    fn uart_part(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> (ValueType, UartPoint) {
        self.reject_keys(
            file,
            path,
            &[
            ("table", p.table.as_ref().map(at)),
            ("address", p.address.as_ref().map(at)),
            ("word_order", p.word_order.as_ref().map(at)),
            ("bit", p.bit.as_ref().map(at)),
            ("pin", p.pin.as_ref().map(at)),
            ("mode", p.mode.as_ref().map(at)),
            ("pull", p.pull.as_ref().map(at)),
            ("active_low", p.active_low.as_ref().map(at)),
            ("debounce", p.debounce.as_ref().map(at)),
            ("initial", p.initial.as_ref().map(at)),
            ("on_shutdown", p.on_shutdown.as_ref().map(at)),
            ("pulse", p.pulse.as_ref().map(at)),
        ],
            |key| format!("`{key}` does not apply to a UART point"),
            "a UART point reads `field` of a parsed line; `command`, `params`, `ack`, `ack_timeout` make it writable",
        );
        let ty = value_type(p.ty.as_ref().map_or(TypeName::F64, |t| t.value), || {
            ValueType::String {
                len: self.int_in(
                    file,
                    p.length.as_ref(),
                    &format!("{path}.length"),
                    "string length",
                    (1, 65535),
                    255,
                ) as u16,
            }
        });
        self.length_only_for_strings(file, path, p, ty);
        let field = match (&p.field, parser) {
            (None, _) => {
                if p.command.is_none() {
                    self.error(
                        file,
                        at(&p.topic),
                        path.to_string(),
                        "a UART point needs `field` (or `command`, for a write-only point)",
                        Some("add `field: <key, group name or JSON path>`".into()),
                    );
                }
                None
            }
            (Some(_), None) if parser_failed => None,
            (Some(f), None) => {
                self.error(
                    file,
                    at(f),
                    format!("{path}.field"),
                    "`field` needs the device's `parser`",
                    Some("add e.g. `parser: {kind: key_value}` to the device".into()),
                );
                None
            }
            (Some(f), Some(Parser::KeyValue { .. })) if f.value.trim().is_empty() => {
                self.error(
                    file,
                    at(f),
                    format!("{path}.field"),
                    "the field is empty",
                    None,
                );
                None
            }
            (Some(f), Some(Parser::KeyValue { .. })) => {
                Some(FieldRef::Name(f.value.trim().to_string()))
            }
            (Some(f), Some(Parser::Json)) => match FieldPath::parse(&f.value) {
                Ok(fp) => Some(FieldRef::Path(fp)),
                Err(e) => {
                    self.error(
                        file,
                        at(f),
                        format!("{path}.field"),
                        e.to_string(),
                        Some("write a JSON path like `co2`, `sensor.temp` or `ch[0].value`".into()),
                    );
                    None
                }
            },
            (Some(f), Some(re @ Parser::Regex(_))) => {
                let groups = re.group_names();
                if groups.contains(&f.value) {
                    Some(FieldRef::Name(f.value.clone()))
                } else {
                    let hint = match did_you_mean(&f.value, groups.iter().map(String::as_str)) {
                        Some(g) => format!("did you mean `{g}`?"),
                        None => format!("its named groups: {}", groups.join(", ")),
                    };
                    self.error(
                        file,
                        at(f),
                        format!("{path}.field"),
                        format!("the parser's pattern has no group named `{}`", f.value),
                        Some(hint),
                    );
                    None
                }
            }
        };
        let params: BTreeMap<String, String> = p
            .params
            .as_ref()
            .map(|m| {
                m.value
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = &p.params {
            for k in m
                .value
                .keys()
                .filter(|k| matches!(k.as_str(), "value" | "raw"))
            {
                self.error(
                    file,
                    at(m),
                    format!("{path}.params.{k}"),
                    format!("`{k}` is filled in by the command itself"),
                    Some("give the parameter another name".into()),
                );
            }
        }
        let command = match &p.command {
            None => {
                self.reject_keys(
                    file,
                    path,
                    &[
                        ("params", p.params.as_ref().map(at)),
                        ("ack", p.ack.as_ref().map(at)),
                        ("ack_timeout", p.ack_timeout.as_ref().map(at)),
                    ],
                    |key| format!("`{key}` needs `command`"),
                    r#"add e.g. `command: "SET {value}\n"`"#,
                );
                None
            }
            Some(c) => match Template::parse(&c.value) {
                Err(e) => {
                    self.error(
                        file,
                        at(c),
                        format!("{path}.command"),
                        format!("command template: {e}"),
                        None,
                    );
                    None
                }
                Ok(template) => {
                    let mut known: Vec<&str> = vec!["value", "raw"];
                    known.extend(params.keys().map(String::as_str));
                    for f in template.fields() {
                        if !known.contains(&f) {
                            let hint = match did_you_mean(f, known.iter().copied()) {
                                Some(k) => format!("did you mean `{k}`?"),
                                None => format!(
                                    "known fields: {}; add `params: {{{f}: ...}}` for a fixed one",
                                    known.join(", ")
                                ),
                            };
                            self.error(
                                file,
                                at(c),
                                format!("{path}.command"),
                                format!("the command template names an unknown field `{{{f}}}`"),
                                Some(hint),
                            );
                        }
                    }
                    let ack = p.ack.as_ref().and_then(|a| {
                        self.regex(file, at(a), format!("{path}.ack"), "ack pattern", &a.value)
                    });
                    let ack_timeout = p.ack_timeout.as_ref().map(|t| {
                        self.positive_duration(
                            file,
                            Some(t),
                            &format!("{path}.ack_timeout"),
                            Duration::from_secs(1),
                        )
                    });
                    if let (Some(t), None) = (&p.ack_timeout, &p.ack) {
                        self.error(
                            file,
                            at(t),
                            format!("{path}.ack_timeout"),
                            "`ack_timeout` needs `ack`",
                            Some("add `ack: '^OK'` (the device's acknowledgement line)".into()),
                        );
                    }
                    Some(UartCommand {
                        template,
                        params,
                        ack,
                        ack_timeout,
                    })
                }
            },
        };
        (ty, UartPoint { field, command })
    }

    fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}
