//! `mqtt.embedded`: the listener, logins, rights and the safe default (no anonymous
//! clients on a listener other machines can reach, as Mosquitto 2 does).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{at, Cx, Diagnostic, EmbeddedFile, EmbeddedTlsFile, Severity, Spanned, Validator};
use crate::{
    broker::{acl::Acl, passwd::Users, LineError},
    model::{EmbeddedBroker, EmbeddedTls, Model, Secret},
};

impl Validator {
    /// The embedded broker's model (when enabled), with every problem collected; `cx` is
    /// `mqtt.embedded`.
    pub(super) fn embedded(
        &mut self,
        cx: &Cx,
        e: &EmbeddedFile,
        state_dir: &Path,
    ) -> Option<EmbeddedBroker> {
        let listen = match &e.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 1883)),
            Some(l) => match l.value.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.error(
                        &cx.at("listen"),
                        l,
                        format!("`{}` is not an IP address with a port", l.value),
                        Some("write it like `127.0.0.1:1883` or `0.0.0.0:1883`".into()),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 1883))
                }
            },
        };
        let max_connections = match &e.max_connections {
            None => 32,
            Some(m) if (1..=10_000).contains(&m.value) => m.value as usize,
            Some(m) => {
                self.error(
                    &cx.at("max_connections"),
                    m,
                    format!("max_connections {} is outside 1–10000", m.value),
                    None,
                );
                32
            }
        };
        let (users, acl) = self.embedded_logins(cx, e);
        let tls = e
            .tls
            .as_ref()
            .and_then(|t| self.embedded_tls(&cx.at("tls"), &t.value));
        let allow_anonymous = self.allow_anonymous(cx, e, listen, tls.as_ref());
        if let (Some(users), Some(acl)) = (&users, &acl) {
            self.unknown_acl_users(cx, e, users, acl);
        }
        let sys_interval = self.positive_duration(
            &cx.at("sys_interval"),
            e.sys_interval.as_ref(),
            std::time::Duration::from_secs(10),
        );
        let (max_subscriptions, max_subscriptions_total) = self.embedded_subscriptions(cx, e);
        let front = self.embedded_front(cx, e);
        let (queues, persistence) = self.embedded_store(cx, e, state_dir);
        e.enabled.then(|| EmbeddedBroker {
            max_subscriptions,
            max_subscriptions_total,
            queues,
            persistence,
            sys_interval,
            tls,
            listen,
            max_connections,
            users,
            acl,
            allow_anonymous,
            secret: Secret::random(),
            connect_timeout: front.connect_timeout,
            max_connecting_per_address: front.max_connecting_per_address,
            max_connecting: front.max_connecting,
            max_packet_size: front.max_packet_size,
        })
    }

    /// The connection front's bounds (issue #21).
    fn embedded_front(&mut self, cx: &Cx, e: &EmbeddedFile) -> FrontBounds {
        let mut range =
            |key: &str, field: &Option<Spanned<u32>>, lo: u32, hi: u32, default: u32| match field {
                None => default,
                Some(v) if (lo..=hi).contains(&v.value) => v.value,
                Some(v) => {
                    self.error(
                        &cx.at(key),
                        v,
                        format!("{key} {} is outside {lo}–{hi}", v.value),
                        Some(format!("the default is {default}")),
                    );
                    default
                }
            };
        let per_address = range(
            "max_connecting_per_address",
            &e.max_connecting_per_address,
            1,
            1024,
            8,
        );
        let total = range("max_connecting", &e.max_connecting, 1, 1024, 64);
        let packet = range(
            "max_packet_size",
            &e.max_packet_size,
            1024,
            16 * 1024 * 1024,
            256 * 1024,
        );
        FrontBounds {
            connect_timeout: self.positive_duration(
                &cx.at("connect_timeout"),
                e.connect_timeout.as_ref(),
                std::time::Duration::from_secs(10),
            ),
            max_connecting_per_address: per_address as usize,
            max_connecting: total as usize,
            max_packet_size: packet,
        }
    }

    /// `users_file` and `acl_file`, loaded.
    fn embedded_logins(
        &mut self,
        cx: &Cx,
        e: &EmbeddedFile,
    ) -> (Option<Arc<Users>>, Option<Arc<Acl>>) {
        let users = e.users_file.as_ref().and_then(|f| {
            let path = cx.dir().join(&f.value);
            match Users::load(&path) {
                Ok(u) if u.is_empty() => {
                    self.error(
                        &cx.at("users_file"),
                        f,
                        format!("`{}` has no users", path.display()),
                        Some("add one with `mosquitto_passwd <file> <user>`".into()),
                    );
                    None
                }
                Ok(u) => Some(Arc::new(u)),
                Err(errors) => {
                    self.file_errors(
                        &cx.at("users_file"),
                        at(f),
                        &path,
                        &errors,
                        "make it with `mosquitto_passwd -c <file> <user>`",
                    );
                    None
                }
            }
        });
        let acl = e.acl_file.as_ref().and_then(|f| {
            let path = cx.dir().join(&f.value);
            match Acl::load(&path) {
                Ok(a) => Some(Arc::new(a)),
                Err(errors) => {
                    self.file_errors(&cx.at("acl_file"), at(f), &path, &errors,
                        "lines are `user <name>`, `topic [read|write|readwrite|deny] <filter>`, `pattern [read|write|readwrite|deny] <filter>`");
                    None
                }
            }
        });
        (users, acl)
    }

    /// A warning for each user the rights file names but the users file lacks.
    fn unknown_acl_users(&mut self, cx: &Cx, e: &EmbeddedFile, users: &Users, acl: &Acl) {
        for name in acl.user_names() {
            if !users.contains(name) {
                if let Some(f) = &e.acl_file {
                    self.warn(
                        &cx.at("acl_file"),
                        f,
                        format!(
                            "the rights file names user `{name}`, who is not in the users file"
                        ),
                    );
                }
            }
        }
    }

    /// `allow_anonymous` and its default; an error when no client could log in, or anyone
    /// on the network could.
    fn allow_anonymous(
        &mut self,
        cx: &Cx,
        e: &EmbeddedFile,
        listen: SocketAddr,
        tls: Option<&EmbeddedTls>,
    ) -> bool {
        let loopback = listen.ip().is_loopback() && tls.is_none_or(|t| t.listen.ip().is_loopback());
        let allow_anonymous = match &e.allow_anonymous {
            Some(a) => a.value,
            None => loopback && e.users_file.is_none(),
        };
        if !allow_anonymous && e.users_file.is_none() && e.enabled {
            let (loc, why) = match &e.allow_anonymous {
                Some(a) => (at(a), "`allow_anonymous: false` and no `users_file`: no client could log in".to_string()),
                // Where the listener other machines reach is written: the TLS one when
                // it is that one (the plain `listen` may not be written at all).
                None => (
                    match (tls.filter(|t| !t.listen.ip().is_loopback()), &e.tls) {
                        (Some(_), Some(t)) => at(&t.value.listen),
                        _ => e.listen.as_ref().map_or((0, 0), at),
                    },
                    format!("the embedded broker listens on {}, which other machines can reach, and has no `users_file`: anyone on the network could read the house and command its devices", tls.filter(|t| !t.listen.ip().is_loopback()).map_or(listen, |t| t.listen)),
                ),
            };
            self.error(
                &cx.at("users_file"),
                loc,
                why,
                Some("add users with `mosquitto_passwd -c /etc/fieldlink/users <user>` and set `users_file: /etc/fieldlink/users`, or (on a trusted network only) `allow_anonymous: true`".into()),
            );
        }
        allow_anonymous
    }

    /// `mqtt.embedded.tls`: the address, and a certificate and key that parse.
    fn embedded_tls(&mut self, cx: &Cx, t: &EmbeddedTlsFile) -> Option<EmbeddedTls> {
        let listen = match t.listen.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    &cx.at("listen"),
                    &t.listen,
                    format!("`{}` is not an IP address with a port", t.listen.value),
                    Some("write it like `0.0.0.0:8883`".into()),
                );
                None
            }
        };
        let cert = self.certificates(&cx.at("cert_file"), &t.cert_file);
        let key = self.private_key(&cx.at("key_file"), &t.key_file);
        Some(EmbeddedTls {
            listen: listen?,
            cert: cert?,
            key: key?,
        })
    }

    /// Report the line errors of a users or rights file: at the file's own line and
    /// column, with the gateway file's key (`cx`) as the path.
    fn file_errors(
        &mut self,
        cx: &Cx,
        key_at: (u64, u64),
        path: &Path,
        errors: &[LineError],
        hint: &str,
    ) {
        for LineError { line, message } in errors {
            if *line == 0 {
                self.error(
                    cx,
                    key_at,
                    format!("`{}`: {message}", path.display()),
                    Some(hint.to_string()),
                );
            } else {
                self.push(
                    Severity::Error,
                    &PathBuf::from(path),
                    (*line, 1),
                    cx.path.clone(),
                    message.clone(),
                    Some(hint.to_string()),
                );
            }
        }
    }
}

/// The connection front's settings, validated.
struct FrontBounds {
    connect_timeout: std::time::Duration,
    max_connecting_per_address: usize,
    max_connecting: usize,
    max_packet_size: u32,
}

/// Warnings that need the points: anonymous clients that may command devices from
/// the network.
pub(super) fn warnings(
    model: &Model,
    gateway: &Path,
    file: &EmbeddedFile,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(e) = &model.mqtt.embedded else {
        return;
    };
    open_files(e, gateway, file, diags);
    let lan = !e.listen.ip().is_loopback()
        || e.tls.as_ref().is_some_and(|t| !t.listen.ip().is_loopback());
    if !e.allow_anonymous || !lan {
        return;
    }
    let commands = match &e.acl {
        None => model.points().any(|p| p.writable),
        Some(acl) => acl.anonymous_may_command(
            model
                .points()
                .filter(|p| p.writable)
                .map(|p| p.topic.as_str()),
        ),
    };
    if commands {
        diags.push(Diagnostic {
            severity: Severity::Warning,
            file: gateway.to_path_buf(),
            line: file.allow_anonymous.as_ref().map_or(0, |a| a.line()),
            column: file.allow_anonymous.as_ref().map_or(0, |a| a.column()),
            path: "mqtt.embedded.allow_anonymous".into(),
            message: format!(
                "anonymous clients on {} may command devices (publish on `<topic>/set`)",
                e.listen
            ),
            hint: Some("add `users_file` (and `acl_file` to limit who writes `/set`), or keep anonymous clients to a loopback listener".into()),
        });
    }
}

/// A warning when this process's open-file limit leaves no room for `max_connections`
/// clients (each holds two descriptors: its own and the front's to rmqtt).
fn open_files(
    e: &crate::model::EmbeddedBroker,
    gateway: &Path,
    file: &EmbeddedFile,
    diags: &mut Vec<Diagnostic>,
) {
    let need = crate::broker::front::descriptors_needed(e);
    let Some(limit) = crate::broker::front::open_files_limit().filter(|l| *l < need) else {
        return;
    };
    diags.push(Diagnostic {
        severity: Severity::Warning,
        file: gateway.to_path_buf(),
        line: file.max_connections.as_ref().map_or(0, |m| m.line()),
        column: file.max_connections.as_ref().map_or(0, |m| m.column()),
        path: "mqtt.embedded.max_connections".into(),
        message: format!(
            "max_connections {} needs about {need} open files (two per client, one per connection before CONNECT), but this process may open {limit}",
            e.max_connections
        ),
        hint: Some("the systemd unit sets LimitNOFILE=32768; elsewhere raise the limit (`ulimit -n`) or lower max_connections".into()),
    });
}
