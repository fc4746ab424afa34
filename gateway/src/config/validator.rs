//! The validator's state, the [`Cx`] every check is given (file and field path), and the
//! checks all parts share: diagnostics, integer ranges, durations, client ids, files named
//! in the gateway file, rejected keys, regexes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Diagnostic, HumanDuration, Severity, Spanned};
use crate::model::Secret;

/// Line and column of a value, for a diagnostic.
pub(super) fn at<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.line(), s.column())
}

/// Where a diagnostic points: a spanned value, or a (line, column) pair.
pub(super) trait Span {
    /// 1-based line and column, (0, 0) when unknown.
    fn loc(&self) -> (u64, u64);
}

impl<T> Span for &Spanned<T> {
    fn loc(&self) -> (u64, u64) {
        at(self)
    }
}

impl Span for (u64, u64) {
    fn loc(&self) -> (u64, u64) {
        *self
    }
}

/// The context of a check: the file being checked and the field path in it
/// (`devices[0].points[3]`; empty at the top of the file).
#[derive(Clone, Debug)]
pub(super) struct Cx<'a> {
    /// The file, as shown in messages.
    pub(super) file: &'a Path,
    /// The field path.
    pub(super) path: String,
}

impl<'a> Cx<'a> {
    /// The top of `file`.
    pub(super) fn new(file: &'a Path) -> Self {
        Cx {
            file,
            path: String::new(),
        }
    }

    /// The key `key` below this path: `devices[0]` → `devices[0].unit`; at the top, `unit`.
    pub(super) fn at(&self, key: &str) -> Cx<'a> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Cx {
            file: self.file,
            path,
        }
    }

    /// Item `i` of the list `key`: `points[3]`.
    pub(super) fn item(&self, key: &str, i: usize) -> Cx<'a> {
        self.at(&format!("{key}[{i}]"))
    }

    /// The directory of the file: relative paths in it are resolved against it.
    pub(super) fn dir(&self) -> &'a Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

/// The validator: the diagnostics so far and what must be unique across all files.
#[derive(Default)]
pub(super) struct Validator {
    /// Every problem found, in the order found.
    pub(super) diags: Vec<Diagnostic>,
    /// A mapping file did not parse: references into it cannot be checked.
    pub(super) parse_failed: bool,
    /// A device named a bus that does not exist.
    pub(super) unknown_bus: bool,
    /// GPIO pins in use: where and by which topic.
    pub(super) pins: HashMap<u8, (PathBuf, (u64, u64), String)>,
    /// Serial ports in use: where and by which bus.
    pub(super) ports: HashMap<String, (PathBuf, (u64, u64), String)>,
    // RabbitMQ's `.` in topics (#25, `profile_use.rs`).
    /// An upstream broker is configured.
    pub(super) upstream: bool,
}

impl Validator {
    /// Record a diagnostic in any file.
    pub(super) fn push(
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

    /// An error at `span`, on the field `cx`.
    pub(super) fn error(
        &mut self,
        cx: &Cx,
        span: impl Span,
        msg: impl Into<String>,
        hint: Option<String>,
    ) {
        let path = cx.path.clone();
        self.push(Severity::Error, cx.file, span.loc(), path, msg, hint);
    }

    /// A warning at `span`, on the field `cx`.
    pub(super) fn warn(&mut self, cx: &Cx, span: impl Span, msg: impl Into<String>) {
        let path = cx.path.clone();
        self.push(Severity::Warning, cx.file, span.loc(), path, msg, None);
    }

    /// Errors reported so far.
    pub(super) fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// An integer field within `lo..=hi`.
    pub(super) fn int_in(
        &mut self,
        cx: &Cx,
        field: Option<&Spanned<i64>>,
        what: &str,
        (lo, hi): (i64, i64),
        default: i64,
    ) -> i64 {
        match field {
            None => default,
            Some(s) if (lo..=hi).contains(&s.value) => s.value,
            Some(s) => {
                self.error(
                    cx,
                    s,
                    format!("{what} {} is outside {lo}–{hi}", s.value),
                    Some(format!("use a value from {lo} to {hi}")),
                );
                default
            }
        }
    }

    /// A duration that must not be zero.
    pub(super) fn positive_duration(
        &mut self,
        cx: &Cx,
        field: Option<&Spanned<HumanDuration>>,
        default: Duration,
    ) -> Duration {
        match field {
            None => default,
            Some(s) if s.value.0.is_zero() => {
                self.error(
                    cx,
                    s,
                    "must be greater than zero",
                    Some(format!("e.g. `{}`", humantime::format_duration(default))),
                );
                default
            }
            Some(s) => s.value.0,
        }
    }

    /// An MQTT client id: 1–256 bytes; default `fieldlink-<id>`.
    pub(super) fn client_id(
        &mut self,
        cx: &Cx,
        field: Option<&Spanned<String>>,
        id: &str,
    ) -> String {
        match field {
            Some(c) if c.value.is_empty() || c.value.len() > 256 => {
                self.error(cx, c, "client id must be 1–256 bytes", None);
                String::new()
            }
            Some(c) => c.value.clone(),
            None => format!("fieldlink-{id}"),
        }
    }

    /// Read a file named in the gateway file (relative to it).
    pub(super) fn read_file(&mut self, cx: &Cx, f: &Spanned<String>) -> Option<Vec<u8>> {
        let full = cx.dir().join(&f.value);
        match std::fs::read(&full) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error(
                    cx,
                    f,
                    format!("cannot read `{}`: {e}", full.display()),
                    Some("the gateway must be able to read this file when it starts".into()),
                );
                None
            }
        }
    }

    /// PEM certificates in a file: at least one, all parsing.
    pub(super) fn certificates(&mut self, cx: &Cx, f: &Spanned<String>) -> Option<Vec<u8>> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let bytes = self.read_file(cx, f)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
        match certs {
            Ok(c) if !c.is_empty() => Some(bytes),
            Ok(_) => {
                self.error(
                    cx,
                    f,
                    format!("`{}` holds no PEM certificate", f.value),
                    Some("expected `-----BEGIN CERTIFICATE-----` blocks".into()),
                );
                None
            }
            Err(e) => {
                self.error(cx, f, format!("`{}` is not valid PEM: {e}", f.value), None);
                None
            }
        }
    }

    /// A PEM private key in a file (PKCS#8, PKCS#1 or SEC1).
    pub(super) fn private_key(&mut self, cx: &Cx, f: &Spanned<String>) -> Option<Secret> {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        let b = self.read_file(cx, f)?;
        match PrivateKeyDer::from_pem_slice(&b) {
            Ok(_) => Some(Secret(String::from_utf8_lossy(&b).into_owned())),
            Err(e) => {
                self.error(
                    cx,
                    f,
                    format!("`{}` holds no usable private key: {e}", f.value),
                    Some(
                        "expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    /// Report every key of `keys` that is present as one that does not belong here.
    pub(super) fn reject_keys(
        &mut self,
        cx: &Cx,
        keys: &[(&str, Option<(u64, u64)>)],
        message: impl Fn(&str) -> String,
        hint: &str,
    ) {
        for (key, loc) in keys {
            if let Some(loc) = loc {
                self.error(&cx.at(key), *loc, message(key), Some(hint.to_string()));
            }
        }
    }

    /// A regex from the mapping, or an error at `loc`.
    pub(super) fn regex(
        &mut self,
        cx: &Cx,
        loc: impl Span,
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
                    cx,
                    loc,
                    format!("{what} `{pattern}` does not compile: {reason}"),
                    Some(
                        "in YAML, write patterns in single quotes so `\\d` stays as written".into(),
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cx_builds_field_paths() {
        let file = Path::new("m.yaml");
        let top = Cx::new(file);
        assert_eq!(top.at("id").path, "id");
        let point = top.item("devices", 0).item("points", 3);
        assert_eq!(point.path, "devices[0].points[3]");
        assert_eq!(point.at("type").path, "devices[0].points[3].type");
        assert_eq!(
            top.at("mqtt.upstream").at("queue").path,
            "mqtt.upstream.queue"
        );
        assert_eq!(point.dir(), Path::new(""));
        assert_eq!(
            Cx::new(Path::new("/etc/f/g.yaml")).dir(),
            Path::new("/etc/f")
        );
    }

    #[test]
    fn error_and_warn_carry_file_path_and_span() {
        let mut v = Validator::default();
        let cx = Cx::new(Path::new("m.yaml")).item("buses", 1);
        v.error(&cx.at("port"), (4, 11), "bad", Some("fix it".into()));
        v.warn(&cx, (3, 5), "odd");
        assert_eq!(v.error_count(), 1);
        let lines: Vec<String> = v.diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "m.yaml:4:11: buses[1].port: bad; fix it",
                "m.yaml:3:5: buses[1]: warning: odd",
            ]
        );
    }
}
