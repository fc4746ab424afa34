//! `mqtt.upstream`: the url, login, TLS files, keepalive, QoS, prefix and the queue.

use std::{path::Path, time::Duration};

use super::{at, Cx, QueueFile, Spanned, UpstreamFile, Validator};
use crate::model::{QueueSettings, Secret, Tls, Upstream};

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

/// Default bound of the upstream queue.
pub const DEFAULT_QUEUE_SIZE: u64 = 64 << 20;

impl Validator {
    /// `mqtt.upstream`; `cx` is that section.
    pub(super) fn upstream(
        &mut self,
        cx: &Cx,
        u: &UpstreamFile,
        id: &str,
        state_dir: &Path,
    ) -> Upstream {
        let (tls, host, port) = match parse_url(&u.url.value) {
            Ok(v) => v,
            Err(e) => {
                self.error(
                    &cx.at("url"),
                    &u.url,
                    e,
                    Some(
                        "write it like `mqtts://broker.example.com:8883` or `mqtt://10.0.0.5:1883`"
                            .into(),
                    ),
                );
                (false, String::new(), 0)
            }
        };
        let client_id = self.client_id(&cx.at("client_id"), u.client_id.as_ref(), id);
        let password = self.upstream_password(cx, u);
        let tls = self.upstream_tls(cx, u, tls);
        let keepalive = self.positive_duration(
            &cx.at("keepalive"),
            u.keepalive.as_ref(),
            Duration::from_secs(30),
        );
        if keepalive < Duration::from_secs(1) || keepalive > Duration::from_secs(65535) {
            if let Some(k) = &u.keepalive {
                self.error(&cx.at("keepalive"), k, "keepalive must be 1s–18h", None);
            }
        }
        // QoS 2 is refused: after a reconnect the queue resends with new packet ids, which
        // a broker holding the old id for its PUBREL could treat as a duplicate.
        let qos = self.int_in(&cx.at("qos"), u.qos.as_ref(), "qos", (0, 1), 1) as u8;
        let prefix = match &u.prefix {
            Some(x) => {
                self.topic_prefix(&cx.at("prefix"), x);
                self.dotted_topic(&cx.at("prefix"), x);
                x.value.clone()
            }
            None => String::new(),
        };
        Upstream {
            url: u.url.value.clone(),
            host,
            port,
            tls,
            client_id,
            username: u.username.as_ref().map(|x| x.value.clone()),
            password,
            keepalive,
            qos,
            prefix,
            accept_commands: u.accept_commands,
            queue: self.upstream_queue(&cx.at("queue"), &u.queue, state_dir),
        }
    }

    /// The password, from `password_file` or `password_env`, and the user name it needs.
    fn upstream_password(&mut self, cx: &Cx, u: &UpstreamFile) -> Option<Secret> {
        let password = match (&u.password_file, &u.password_env) {
            (Some(f), Some(_)) => {
                self.error(
                    &cx.at("password_file"),
                    f,
                    "both `password_file` and `password_env` are set",
                    Some("keep one of them".into()),
                );
                None
            }
            (Some(f), None) => self.read_file(&cx.at("password_file"), f).map(|b| {
                let text = String::from_utf8_lossy(&b);
                Secret(text.trim_end_matches(['\r', '\n']).to_string())
            }),
            (None, Some(v)) => match std::env::var(&v.value) {
                Ok(pw) => Some(Secret(pw)),
                Err(_) => {
                    self.error(
                        &cx.at("password_env"),
                        v,
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
                &cx.at("username"),
                loc,
                "a password is set but no `username`",
                Some("MQTT 3.1.1 sends a password only with a user name".into()),
            );
        }
        password
    }

    /// The TLS files: checked with an `mqtts://` url, refused with `mqtt://`.
    fn upstream_tls(&mut self, cx: &Cx, u: &UpstreamFile, tls: bool) -> Option<Tls> {
        if !tls {
            for (key, f) in [
                ("ca_file", &u.ca_file),
                ("cert_file", &u.cert_file),
                ("key_file", &u.key_file),
            ] {
                if let Some(f) = f {
                    self.error(
                        &cx.at(key),
                        f,
                        format!("`{key}` needs TLS, but the url is `mqtt://`"),
                        Some("use `mqtts://` to connect with TLS".into()),
                    );
                }
            }
            return None;
        }
        let ca = u
            .ca_file
            .as_ref()
            .and_then(|f| self.certificates(&cx.at("ca_file"), f));
        let client = match (&u.cert_file, &u.key_file) {
            (Some(c), Some(k)) => {
                let cert = self.certificates(&cx.at("cert_file"), c);
                let key = self.private_key(&cx.at("key_file"), k);
                cert.zip(key)
            }
            (Some(c), None) => {
                self.error(&cx.at("key_file"), c, "`cert_file` needs `key_file`", None);
                None
            }
            (None, Some(k)) => {
                self.error(&cx.at("cert_file"), k, "`key_file` needs `cert_file`", None);
                None
            }
            (None, None) => None,
        };
        Some(Tls { ca, client })
    }

    /// `prefix`: no wildcards; a warning when it does not end with `/`.
    fn topic_prefix(&mut self, cx: &Cx, x: &Spanned<String>) {
        if x.value.contains(['+', '#', '\0']) {
            self.error(
                cx,
                x,
                "a topic prefix may not contain `+`, `#` or NUL",
                None,
            );
        } else if !x.value.is_empty() && !x.value.ends_with('/') {
            self.warn(
                cx,
                x,
                format!(
                    "prefix `{}` does not end with `/`: topics become `{}casa/...`",
                    x.value, x.value
                ),
            );
        }
    }

    /// `mqtt.upstream.queue`; `cx` is that section.
    fn upstream_queue(&mut self, cx: &Cx, q: &QueueFile, state_dir: &Path) -> QueueSettings {
        let dir = match &q.dir {
            Some(d) if d.value.trim().is_empty() => {
                self.error(&cx.at("dir"), d, "empty path", None);
                state_dir.join("upstream-queue")
            }
            Some(d) => cx.dir().join(&d.value),
            None => state_dir.join("upstream-queue"),
        };
        let max_size = match &q.max_size {
            Some(m) if m.value.0 < 64 << 10 => {
                self.error(
                    &cx.at("max_size"),
                    m,
                    format!("max_size {} bytes is below 64KiB", m.value.0),
                    Some("e.g. `64MiB`".into()),
                );
                DEFAULT_QUEUE_SIZE
            }
            Some(m) => m.value.0,
            None => DEFAULT_QUEUE_SIZE,
        };
        let flush_interval = self.positive_duration(
            &cx.at("flush_interval"),
            q.flush_interval.as_ref(),
            Duration::from_secs(1),
        );
        if flush_interval > Duration::from_secs(60) {
            if let Some(f) = &q.flush_interval {
                self.error(
                    &cx.at("flush_interval"),
                    f,
                    "flush_interval above 60s risks a minute of data on a power cut",
                    Some(
                        "use at most `60s`; the default `1s` costs one small write a second".into(),
                    ),
                );
            }
        }
        let replay_rate = self.int_in(
            &cx.at("replay_rate"),
            q.replay_rate.as_ref(),
            "replay_rate",
            (0, 1_000_000),
            1000,
        ) as u32;
        QueueSettings {
            dir,
            max_size,
            flush_interval,
            replay_rate,
        }
    }
}
