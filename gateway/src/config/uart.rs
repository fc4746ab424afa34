//! UART (`uart` buses, text lines): the device's parser, the values of its keys and the
//! UART half of a point.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use fieldlink_drivers::uart::{FieldPath, FieldRef, Template};
use serde::Deserialize;

use super::{at, did_you_mean, value_type, PointFile, Spanned, TypeName, Validator};
use crate::model::{Parser, UartCommand, UartPoint, ValueType};

/// `parser:` of a uart device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserFile {
    /// `key_value` (`T=23.4;H=51.2`), `regex` (named groups) or `json` (field paths).
    pub kind: Spanned<ParserKindName>,
    /// key_value: between two pairs. Default `;`; `" "` splits at any whitespace.
    #[serde(default)]
    pub pair_separator: Option<Spanned<String>>,
    /// key_value: between a key and its value. Default `=`.
    #[serde(default)]
    pub kv_separator: Option<Spanned<String>>,
    /// regex: the pattern; each named group (`(?P<co2>\d+)`) is a field. Use single
    /// quotes in YAML so backslashes stay as written.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
}

/// Kind of a line parser.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParserKindName {
    /// `T=23.4;H=51.2`.
    KeyValue,
    /// A regular expression with named groups.
    Regex,
    /// One JSON object per line.
    Json,
}

/// A fixed template field: text, a number or a boolean.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true`/`false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(t) => f.write_str(t),
        }
    }
}

/// The keys only UART points take, with where they are.
pub(super) fn uart_point_keys(p: &PointFile) -> [(&'static str, Option<(u64, u64)>); 5] {
    [
        ("field", p.field.as_ref().map(at)),
        ("command", p.command.as_ref().map(at)),
        ("params", p.params.as_ref().map(at)),
        ("ack", p.ack.as_ref().map(at)),
        ("ack_timeout", p.ack_timeout.as_ref().map(at)),
    ]
}

/// Default longest line of a uart bus.
pub const DEFAULT_MAX_LINE: usize = 256;

impl Validator {
    /// UART keys on a point of another bus kind.
    pub(super) fn no_uart_keys(&mut self, file: &Path, path: &str, p: &PointFile, bus: &str) {
        self.reject_keys(
            file,
            path,
            &uart_point_keys(p),
            |key| format!("`{key}` applies to UART points only; this device is on {bus} bus"),
            "put the point on a device of a `kind: uart` bus, or remove the key",
        );
    }

    /// The `parser:` of a uart device.
    pub(super) fn parser(&mut self, file: &Path, path: &str, pf: &ParserFile) -> Option<Parser> {
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
    pub(super) fn uart_part(
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
}
