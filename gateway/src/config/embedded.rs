//! `mqtt.embedded`: the listener, logins, rights and the safe default (no anonymous
//! clients on a listener other machines can reach, as Mosquitto 2 does).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{at, Diagnostic, EmbeddedFile, EmbeddedTlsFile, Severity, Validator};
use crate::{
    broker::{acl::Acl, passwd::Users, LineError},
    model::{EmbeddedBroker, EmbeddedTls, Model, Secret},
};

impl Validator {
    /// The embedded broker's model (when enabled), with every problem collected.
    pub(super) fn embedded(
        &mut self,
        file: &Path,
        e: &EmbeddedFile,
    ) -> (SocketAddr, Option<EmbeddedBroker>) {
        let dir = file.parent().unwrap_or(Path::new("."));
        let listen = match &e.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 1883)),
            Some(l) => match l.value.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.error(
                        file,
                        at(l),
                        "mqtt.embedded.listen",
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
                    file,
                    at(m),
                    "mqtt.embedded.max_connections",
                    format!("max_connections {} is outside 1–10000", m.value),
                    None,
                );
                32
            }
        };
        let users = e.users_file.as_ref().and_then(|f| {
            let path = dir.join(&f.value);
            match Users::load(&path) {
                Ok(u) if u.is_empty() => {
                    self.error(
                        file,
                        at(f),
                        "mqtt.embedded.users_file",
                        format!("`{}` has no users", path.display()),
                        Some("add one with `mosquitto_passwd <file> <user>`".into()),
                    );
                    None
                }
                Ok(u) => Some(Arc::new(u)),
                Err(errors) => {
                    self.file_errors(
                        file,
                        at(f),
                        "mqtt.embedded.users_file",
                        &path,
                        &errors,
                        "make it with `mosquitto_passwd -c <file> <user>`",
                    );
                    None
                }
            }
        });
        let acl = e.acl_file.as_ref().and_then(|f| {
            let path = dir.join(&f.value);
            match Acl::load(&path) {
                Ok(a) => Some(Arc::new(a)),
                Err(errors) => {
                    self.file_errors(file, at(f), "mqtt.embedded.acl_file", &path, &errors,
                        "lines are `user <name>`, `topic [read|write|readwrite|deny] <filter>`, `pattern [read|write|readwrite|deny] <filter>`");
                    None
                }
            }
        });
        let tls = e
            .tls
            .as_ref()
            .and_then(|t| self.embedded_tls(file, &t.value));
        let loopback = listen.ip().is_loopback()
            && tls
                .as_ref()
                .is_none_or(|t: &EmbeddedTls| t.listen.ip().is_loopback());
        let allow_anonymous = match &e.allow_anonymous {
            Some(a) => a.value,
            None => loopback && e.users_file.is_none(),
        };
        if !allow_anonymous && e.users_file.is_none() && e.enabled {
            let (loc, why) = match &e.allow_anonymous {
                Some(a) => (at(a), "`allow_anonymous: false` and no `users_file`: no client could log in".to_string()),
                None => (
                    e.listen.as_ref().map_or((0, 0), at),
                    format!("the embedded broker listens on {}, which other machines can reach, and has no `users_file`: anyone on the network could read the house and command its devices", tls.as_ref().filter(|t| !t.listen.ip().is_loopback()).map_or(listen, |t| t.listen)),
                ),
            };
            self.error(
                file,
                loc,
                "mqtt.embedded.users_file",
                why,
                Some("add users with `mosquitto_passwd -c /etc/fieldlink/users <user>` and set `users_file: /etc/fieldlink/users`, or (on a trusted network only) `allow_anonymous: true`".into()),
            );
        }
        if let (Some(users), Some(acl)) = (&users, &acl) {
            for name in acl.user_names() {
                if !users.contains(name) {
                    if let Some(f) = &e.acl_file {
                        self.warn(
                            file,
                            at(f),
                            "mqtt.embedded.acl_file",
                            format!(
                                "the rights file names user `{name}`, who is not in the users file"
                            ),
                        );
                    }
                }
            }
        }
        let sys_interval = self.positive_duration(
            file,
            e.sys_interval.as_ref(),
            "mqtt.embedded.sys_interval",
            std::time::Duration::from_secs(10),
        );
        let model = e.enabled.then(|| EmbeddedBroker {
            sys_interval,
            tls,
            listen,
            max_connections,
            users,
            acl,
            allow_anonymous,
            secret: Secret::random(),
        });
        (listen, model)
    }

    /// `mqtt.embedded.tls`: the address, and a certificate and key that parse.
    pub(super) fn embedded_tls(&mut self, file: &Path, t: &EmbeddedTlsFile) -> Option<EmbeddedTls> {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        let listen = match t.listen.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    file,
                    at(&t.listen),
                    "mqtt.embedded.tls.listen",
                    format!("`{}` is not an IP address with a port", t.listen.value),
                    Some("write it like `0.0.0.0:8883`".into()),
                );
                None
            }
        };
        let cert = self.certificates(file, &t.cert_file, "mqtt.embedded.tls.cert_file");
        let key = self
            .read_file(file, &t.key_file, "mqtt.embedded.tls.key_file")
            .and_then(|b| match PrivateKeyDer::from_pem_slice(&b) {
                Ok(_) => Some(Secret(String::from_utf8_lossy(&b).into_owned())),
                Err(e) => {
                    self.error(
                        file,
                        at(&t.key_file),
                        "mqtt.embedded.tls.key_file",
                        format!("`{}` holds no usable private key: {e}", t.key_file.value),
                        Some(
                            "expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`"
                                .into(),
                        ),
                    );
                    None
                }
            });
        Some(EmbeddedTls {
            listen: listen?,
            cert: cert?,
            key: key?,
        })
    }

    /// Report the line errors of a users or rights file: at the file's own line and
    /// column, with the gateway file's key as the path.
    pub(super) fn file_errors(
        &mut self,
        gateway: &Path,
        key_at: (u64, u64),
        key: &str,
        path: &Path,
        errors: &[LineError],
        hint: &str,
    ) {
        for LineError { line, message } in errors {
            if *line == 0 {
                self.error(
                    gateway,
                    key_at,
                    key,
                    format!("`{}`: {message}", path.display()),
                    Some(hint.to_string()),
                );
            } else {
                self.push(
                    Severity::Error,
                    &PathBuf::from(path),
                    (*line, 1),
                    key,
                    message.clone(),
                    Some(hint.to_string()),
                );
            }
        }
    }
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
