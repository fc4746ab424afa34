//! Reading a file: YAML to the file structs, structural problems with their location,
//! path and a did-you-mean hint; resolving the `mappings:` entries to files.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A parsed file and where it came from.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The path as shown in messages.
    pub path: PathBuf,
    /// The content.
    pub value: T,
}

/// A structural problem in a file: YAML syntax, an unknown key, a wrong type.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseProblem {
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    /// Field path (`devices[0].points[2].address`), empty at the top.
    pub path: String,
    /// The message.
    pub message: String,
    /// A hint such as "did you mean `address`?".
    pub hint: Option<String>,
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Deserialize one YAML document, returning the first structural problem with its
/// location, path and hint.
pub fn parse_yaml<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ParseProblem> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|err| {
        let loc = err.location();
        let raw = err.without_snippet().to_string();
        let message = strip_location_prefix(&raw);
        let path = clean_path(&path);
        let (message, hint) = humanize(&message);
        ParseProblem {
            line: loc.map_or(0, |l| l.line()),
            column: loc.map_or(0, |l| l.column()),
            path,
            message,
            hint,
        }
    })
}

/// The message of a serde-saphyr error without its "error: line L:" prefix and its
/// trailing " at line L, column C".
fn strip_location_prefix(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let mut s = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = s.strip_prefix("line ") {
        if let Some(idx) = rest.find(": ") {
            s = &rest[idx + 2..];
        }
    }
    // The location is printed in front already: drop " at line L, column C".
    if let Some(idx) = s.rfind(" at line ") {
        if s[idx..].contains(", column ") {
            s = &s[..idx];
        }
    }
    s.to_string()
}

/// Remove the `.value` segments serde-saphyr's `Spanned` adds and the `?` of serde's
/// "unknown path" marker.
fn clean_path(p: &str) -> String {
    let p = p.replace(".value", "");
    let p = p.strip_suffix(".?").unwrap_or(&p).to_string();
    if p == "?" || p == "." {
        String::new()
    } else {
        p
    }
}

/// Turn serde's messages into ours: "unknown field `adress`, expected one of a, b" becomes
/// "unknown key `adress`" with a did-you-mean (or the list of valid keys) as the hint.
fn humanize(message: &str) -> (String, Option<String>) {
    if message.starts_with("duplicate mapping key") {
        let key = message
            .trim_start_matches("duplicate mapping key")
            .trim_start_matches(':')
            .split(',')
            .next()
            .unwrap_or("")
            .trim();
        return (
            format!("duplicate key `{key}`"),
            Some("each key may appear once per item; remove one of them".into()),
        );
    }
    let (kind, rest) = if let Some(r) = message.strip_prefix("unknown field `") {
        ("key", r)
    } else if let Some(r) = message.strip_prefix("unknown variant `") {
        ("value", r)
    } else {
        return (message.to_string(), None);
    };
    let Some((word, rest)) = rest.split_once('`') else {
        return (message.to_string(), None);
    };
    let list = rest
        .split_once("expected one of")
        .map(|(_, l)| l)
        .or_else(|| rest.split_once("expected").map(|(_, l)| l))
        .unwrap_or("");
    let candidates: Vec<String> = list
        .split(',')
        .map(|c| c.trim().trim_matches('`').to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let hint = match did_you_mean(word, candidates.iter().map(String::as_str)) {
        Some(c) => Some(format!("did you mean `{c}`?")),
        None if candidates.is_empty() => None,
        None if kind == "key" => Some(format!("valid keys here: {}", candidates.join(", "))),
        None => Some(format!("expected one of: {}", candidates.join(", "))),
    };
    (format!("unknown {kind} `{word}`"), hint)
}

/// The closest candidate to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    candidates
        .map(|c| (strsim::damerau_levenshtein(&lw, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Resolve the `mappings:` entries against the gateway file's directory.
/// Returns the files (sorted, deduplicated) or the entries that matched nothing.
pub fn resolve_mappings(base: &Path, entries: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for e in entries {
        let p = base.join(e);
        if e.contains(['*', '?', '[']) {
            let pattern = p.to_string_lossy().to_string();
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map(|g| g.filter_map(Result::ok).filter(|p| p.is_file()).collect())
                .unwrap_or_default();
            if found.is_empty() {
                missing.push(format!("`{e}` matches no file"));
            }
            found.sort();
            files.extend(found);
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|d| d.path())
                        .filter(|p| {
                            p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                        })
                        .collect()
                })
                .unwrap_or_default();
            if found.is_empty() {
                missing.push(format!("directory `{e}` holds no .yaml file"));
            }
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p);
        } else {
            missing.push(format!("`{}` does not exist", p.display()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    (files, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappingFile;

    #[test]
    fn unknown_key_gets_path_location_and_hint() {
        let y = "devices:\n  - id: a\n    bus: b\n    points:\n      - topic: x\n        table: holding\n        adress: 3\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!((e.line, e.column), (7, 9));
        assert_eq!(e.path, "devices[0].points[0].adress");
        assert_eq!(e.hint.as_deref(), Some("did you mean `address`?"));
    }

    #[test]
    fn absurd_durations_are_rejected_with_their_location() {
        let y = "buses:\n  - id: b\n    kind: modbus_tcp\n    host: h\n    timeout: 1000000000y\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.message.contains("longer than 365 days"), "{}", e.message);
    }

    #[test]
    fn unknown_variant_gets_hint() {
        let y = "devices:\n  - id: a\n    bus: b\n    points:\n      - topic: x\n        table: holdng\n        address: 3\n";
        let e = parse_yaml::<MappingFile>(y).unwrap_err();
        assert_eq!(e.path, "devices[0].points[0].table");
        assert_eq!(e.hint.as_deref(), Some("did you mean `holding`?"));
    }
}
