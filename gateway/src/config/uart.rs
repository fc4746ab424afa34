//! UART (`uart` buses, text lines): the values of its keys, the bus, the device's query
//! and line parser, and the UART half of a point (field and command).

use std::{collections::BTreeMap, fmt, time::Duration};

use fieldlink_drivers::uart::{FieldPath, FieldRef, Template};
use serde::Deserialize;

use super::{
    at, did_you_mean, value_type, BusFile, Cx, DeviceFile, PointFile, Spanned, TypeName, Validator,
};
use crate::model::{BusKind, Parser, UartCommand, UartDevice, UartPoint, ValueType};

/// `parser:` of a uart device.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
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
#[derive(Clone, Debug, Deserialize, PartialEq, schemars::JsonSchema)]
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
fn uart_point_keys(p: &PointFile) -> [(&'static str, Option<(u64, u64)>); 5] {
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

/// The keys of a `uart` bus.
pub(super) const BUS_KEYS: &[&str] = &[
    "path",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "timeout",
    "delimiter",
    "max_line",
];

/// The keys of a UART point that only make sense on other bus kinds, with where they are.
fn foreign_point_keys(p: &PointFile) -> [(&'static str, Option<(u64, u64)>); 12] {
    [
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
    ]
}

impl Validator {
    /// A `uart` bus: a serial line, `timeout`, `delimiter`, `max_line`.
    pub(super) fn uart_bus(&mut self, cx: &Cx, b: &BusFile, id: &str) -> Option<BusKind> {
        let serial = self.serial(cx, b, "uart", id)?;
        let timeout = self.positive_duration(
            &cx.at("timeout"),
            b.timeout.as_ref(),
            Duration::from_secs(1),
        );
        let delimiter = match &b.delimiter {
            None => b"\n".to_vec(),
            Some(d) if d.value.is_empty() => {
                self.error(
                    &cx.at("delimiter"),
                    d,
                    "the delimiter is empty",
                    Some(r#"write it in double quotes: `delimiter: "\r\n"`"#.into()),
                );
                b"\n".to_vec()
            }
            Some(d) => d.value.as_bytes().to_vec(),
        };
        let max_line = self.int_in(
            &cx.at("max_line"),
            b.max_line.as_ref(),
            "max_line",
            (1, 65536),
            DEFAULT_MAX_LINE as i64,
        ) as usize;
        Some(BusKind::Uart {
            serial,
            delimiter,
            max_line,
            timeout,
        })
    }

    /// The UART part of a device (`cx`): its `parser` and `query`.
    pub(super) fn uart_device(&mut self, cx: &Cx, d: &DeviceFile) -> UartDevice {
        let parser = d
            .parser
            .as_ref()
            .and_then(|pf| self.parser(&cx.at("parser"), pf));
        let query = match &d.query {
            Some(q) if q.value.is_empty() => {
                self.error(
                    &cx.at("query"),
                    q,
                    "the query is empty",
                    Some("remove `query` for a device that sends on its own".into()),
                );
                None
            }
            Some(q) => {
                if d.parser.is_none() {
                    self.error(
                        &cx.at("query"),
                        q,
                        "a `query` needs a `parser` to read the reply",
                        Some("add e.g. `parser: {kind: key_value}`".into()),
                    );
                }
                Some(q.value.as_bytes().to_vec())
            }
            None => None,
        };
        UartDevice { parser, query }
    }

    /// The `parser:` of a uart device; `cx` is `parser`.
    fn parser(&mut self, cx: &Cx, pf: &ParserFile) -> Option<Parser> {
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
            self.error(&cx.at(key), loc, not_for(key), None);
        }
        let parser = match kind {
            ParserKindName::KeyValue => self.key_value_parser(cx, pf),
            ParserKindName::Json => Parser::Json,
            ParserKindName::Regex => {
                let Some(pat) = &pf.pattern else {
                    self.error(
                        cx,
                        &pf.kind,
                        "a `regex` parser needs `pattern`",
                        Some(r#"add e.g. `pattern: '^CO2=(?P<co2>\d+)'`"#.into()),
                    );
                    return None;
                };
                let pcx = cx.at("pattern");
                let re = self.regex(&pcx, pat, "pattern", &pat.value)?;
                if re.capture_names().flatten().next().is_none() {
                    self.error(
                        &pcx,
                        pat,
                        "the pattern has no named group, so it yields no field",
                        Some("name each value: `(?P<temp>[-0-9.]+)`".into()),
                    );
                }
                Parser::Regex(re)
            }
        };
        Some(parser)
    }

    /// A `key_value` parser: its two separators.
    fn key_value_parser(&mut self, cx: &Cx, pf: &ParserFile) -> Parser {
        let pair = pf.pair_separator.as_ref().map_or(";", |x| x.value.as_str());
        let kv = pf.kv_separator.as_ref().map_or("=", |x| x.value.as_str());
        if let Some(x) = pf.pair_separator.as_ref().filter(|x| x.value.is_empty()) {
            self.error(
                &cx.at("pair_separator"),
                x,
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
                &cx.at("kv_separator"),
                x,
                "the key/value separator is blank",
                Some(r#"e.g. `kv_separator: "="` or `":"`"#.into()),
            );
        }
        Parser::KeyValue {
            pair_separator: pair.to_string(),
            kv_separator: kv.to_string(),
        }
    }

    /// UART keys on a point of another bus kind (`bus`: "a Modbus", "a gpio").
    pub(super) fn no_uart_keys(&mut self, cx: &Cx, p: &PointFile, bus: &str) {
        self.reject_keys(
            cx,
            &uart_point_keys(p),
            |key| format!("`{key}` applies to UART points only; this device is on {bus} bus"),
            "put the point on a device of a `kind: uart` bus, or remove the key",
        );
    }

    /// The UART half of a point: type, field and command.
    pub(super) fn uart_part(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> (ValueType, UartPoint) {
        self.reject_keys(
            cx,
            &foreign_point_keys(p),
            |key| format!("`{key}` does not apply to a UART point"),
            "a UART point reads `field` of a parsed line; `command`, `params`, `ack`, `ack_timeout` make it writable",
        );
        let ty = value_type(p.ty.as_ref().map_or(TypeName::F64, |t| t.value), || {
            ValueType::String {
                len: self.int_in(
                    &cx.at("length"),
                    p.length.as_ref(),
                    "string length",
                    (1, 65535),
                    255,
                ) as u16,
            }
        });
        self.length_only_for_strings(cx, p, ty);
        let field = self.uart_field(cx, p, parser, parser_failed);
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
                    &cx.at("params").at(k),
                    m,
                    format!("`{k}` is filled in by the command itself"),
                    Some("give the parameter another name".into()),
                );
            }
        }
        let command = match &p.command {
            None => {
                self.reject_keys(
                    cx,
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
            Some(c) => self.uart_command(cx, p, c, params),
        };
        (ty, UartPoint { field, command })
    }

    /// `field`: what it names depends on the device's parser.
    fn uart_field(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> Option<FieldRef> {
        let fcx = cx.at("field");
        match (&p.field, parser) {
            (None, _) => {
                if p.command.is_none() {
                    self.error(
                        cx,
                        &p.topic,
                        "a UART point needs `field` (or `command`, for a write-only point)",
                        Some("add `field: <key, group name or JSON path>`".into()),
                    );
                }
                None
            }
            (Some(_), None) if parser_failed => None,
            (Some(f), None) => {
                self.error(
                    &fcx,
                    f,
                    "`field` needs the device's `parser`",
                    Some("add e.g. `parser: {kind: key_value}` to the device".into()),
                );
                None
            }
            (Some(f), Some(Parser::KeyValue { .. })) if f.value.trim().is_empty() => {
                self.error(&fcx, f, "the field is empty", None);
                None
            }
            (Some(f), Some(Parser::KeyValue { .. })) => {
                Some(FieldRef::Name(f.value.trim().to_string()))
            }
            (Some(f), Some(Parser::Json)) => match FieldPath::parse(&f.value) {
                Ok(fp) => Some(FieldRef::Path(fp)),
                Err(e) => {
                    self.error(
                        &fcx,
                        f,
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
                        &fcx,
                        f,
                        format!("the parser's pattern has no group named `{}`", f.value),
                        Some(hint),
                    );
                    None
                }
            }
        }
    }

    /// `command` (a template over `value`, `raw` and `params`), `ack`, `ack_timeout`.
    fn uart_command(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        c: &Spanned<String>,
        params: BTreeMap<String, String>,
    ) -> Option<UartCommand> {
        let ccx = cx.at("command");
        let template = match Template::parse(&c.value) {
            Ok(t) => t,
            Err(e) => {
                self.error(&ccx, c, format!("command template: {e}"), None);
                return None;
            }
        };
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
                    &ccx,
                    c,
                    format!("the command template names an unknown field `{{{f}}}`"),
                    Some(hint),
                );
            }
        }
        let ack = p
            .ack
            .as_ref()
            .and_then(|a| self.regex(&cx.at("ack"), a, "ack pattern", &a.value));
        let ack_timeout = p.ack_timeout.as_ref().map(|t| {
            self.positive_duration(&cx.at("ack_timeout"), Some(t), Duration::from_secs(1))
        });
        if let (Some(t), None) = (&p.ack_timeout, &p.ack) {
            self.error(
                &cx.at("ack_timeout"),
                t,
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
}
