//! The validator's state and the checks every part shares: diagnostics, integer ranges,
//! durations, files named in the gateway file, rejected keys, regexes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Diagnostic, HumanDuration, Severity, Spanned};

pub(super) fn at<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.line(), s.column())
}

#[derive(Default)]
pub(super) struct Validator {
    pub(super) diags: Vec<Diagnostic>,
    /// A mapping file did not parse: references into it cannot be checked.
    pub(super) parse_failed: bool,
    /// A device named a bus that does not exist.
    pub(super) unknown_bus: bool,
    /// GPIO pins in use: where and by which topic.
    pub(super) pins: HashMap<u8, (PathBuf, (u64, u64), String)>,
    /// Serial ports in use: where and by which bus.
    pub(super) ports: HashMap<String, (PathBuf, (u64, u64), String)>,
}

impl Validator {
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

    pub(super) fn error(
        &mut self,
        file: &Path,
        loc: (u64, u64),
        path: impl Into<String>,
        msg: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, file, loc, path, msg, hint);
    }

    pub(super) fn warn(
        &mut self,
        file: &Path,
        loc: (u64, u64),
        path: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.push(Severity::Warning, file, loc, path, msg, None);
    }

    /// An integer field within `lo..=hi`.
    pub(super) fn int_in(
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
    pub(super) fn read_file(
        &mut self,
        file: &Path,
        f: &Spanned<String>,
        path: &str,
    ) -> Option<Vec<u8>> {
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
    pub(super) fn certificates(
        &mut self,
        file: &Path,
        f: &Spanned<String>,
        path: &str,
    ) -> Option<Vec<u8>> {
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

    pub(super) fn positive_duration(
        &mut self,
        file: &Path,
        field: Option<&Spanned<HumanDuration>>,
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

    /// Report every key of `keys` that is present as one that does not belong here.
    pub(super) fn reject_keys(
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

    /// A regex from the mapping, or an error at `loc`.
    pub(super) fn regex(
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

    pub(super) fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}
