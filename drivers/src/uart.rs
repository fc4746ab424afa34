//! UART line devices: sensors and boards that talk in text lines (`T=23.4;H=51.2`,
//! `{"co2": 612}`, `+0023.4 C`), not in Modbus frames.
//!
//! - [`LineFramer`] cuts the byte stream into lines at a delimiter, reassembles a line
//!   split across reads, and drops (and reports) lines longer than the limit.
//! - [`Parser`] maps one line to named fields: `key_value`, `regex` with named groups, or
//!   `json` with field paths.
//! - [`Template`] renders a command line (`"RELAY{channel} {value}\n"`) for a write.
//!
//! Nothing here touches a port: the gateway's UART task owns the port and feeds bytes in.

use std::{collections::BTreeMap, fmt};

use regex::Regex;
use thiserror::Error;

/// What the framer made of the bytes it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, delimiter removed.
    Line(Vec<u8>),
    /// A line longer than the limit was dropped; `bytes` is how much of it was seen.
    Overlong {
        /// Bytes dropped, delimiter excluded.
        bytes: usize,
    },
}

/// Cuts a byte stream into delimited lines of bounded length.
#[derive(Clone, Debug)]
pub struct LineFramer {
    delimiter: Vec<u8>,
    max_line: usize,
    buf: Vec<u8>,
    /// Inside an over-long line: bytes dropped so far (`buf` keeps only a tail that may
    /// hold the start of the delimiter).
    dropping: Option<usize>,
}

impl LineFramer {
    /// A framer for lines ending in `delimiter` (not empty) of at most `max_line` bytes.
    pub fn new(delimiter: impl Into<Vec<u8>>, max_line: usize) -> Self {
        let mut delimiter = delimiter.into();
        if delimiter.is_empty() {
            delimiter = b"\n".to_vec();
        }
        LineFramer {
            delimiter,
            max_line: max_line.max(1),
            buf: Vec::new(),
            dropping: None,
        }
    }

    /// Feed bytes; complete lines (and over-long drops) are appended to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Frame>) {
        let d = self.delimiter.len();
        while !data.is_empty() {
            // Search from where a delimiter could start, given what is buffered.
            let from = self.buf.len().saturating_sub(d - 1);
            self.buf.extend_from_slice(data);
            data = &[];
            let mut start = 0;
            let mut search = from;
            while let Some(pos) = find(&self.buf[search..], &self.delimiter) {
                let end = search + pos;
                match self.dropping.take() {
                    Some(dropped) => out.push(Frame::Overlong {
                        bytes: dropped + (end - start),
                    }),
                    None if end - start > self.max_line => {
                        out.push(Frame::Overlong { bytes: end - start })
                    }
                    None => out.push(Frame::Line(self.buf[start..end].to_vec())),
                }
                start = end + d;
                search = start;
            }
            self.buf.drain(..start);
            if self.buf.len() > self.max_line + d - 1 {
                // Too long already: keep only what may begin a delimiter.
                let keep = d - 1;
                let drop = self.buf.len() - keep;
                self.dropping = Some(self.dropping.unwrap_or(0) + drop);
                self.buf.drain(..drop);
            }
        }
    }

    /// Bytes of an unfinished line held back (including an over-long one being dropped).
    pub fn pending(&self) -> usize {
        self.buf.len() + self.dropping.unwrap_or(0)
    }

    /// Throw away an unfinished line; returns how many bytes it had (0 when none).
    pub fn discard_partial(&mut self) -> usize {
        let n = self.pending();
        self.buf.clear();
        self.dropping = None;
        n
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|b| *b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A field's value as found in a line.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Text (key/value and regex fields are always text; JSON strings).
    Text(String),
    /// A JSON number.
    Number(serde_json::Number),
    /// A JSON boolean.
    Bool(bool),
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Text(s) => f.write_str(s),
            FieldValue::Number(n) => write!(f, "{n}"),
            FieldValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A field path of the `json` parser: `co2`, `sensor.temp`, `channels[2].value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(Vec<Step>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A field path that does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid field path `{path}`: {reason}")]
pub struct PathError {
    /// The path as written.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl FieldPath {
    /// Parse `a.b[0].c`.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let err = |reason: &str| PathError {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let mut steps = Vec::new();
        if path.trim().is_empty() {
            return Err(err("it is empty"));
        }
        for part in path.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if key.is_empty() && rest.is_empty() {
                return Err(err("a key between two dots is empty"));
            }
            if !key.is_empty() {
                steps.push(Step::Key(key.to_string()));
            }
            while let Some(r) = rest.strip_prefix('[') {
                let Some(close) = r.find(']') else {
                    return Err(err("`[` without `]`"));
                };
                let n: usize = r[..close]
                    .trim()
                    .parse()
                    .map_err(|_| err("an index in `[...]` must be a number"))?;
                steps.push(Step::Index(n));
                rest = &r[close + 1..];
            }
            if !rest.is_empty() {
                return Err(err("unexpected text after `]`"));
            }
        }
        Ok(FieldPath(steps))
    }

    fn get<'a>(&self, mut v: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        for s in &self.0 {
            v = match s {
                Step::Key(k) => v.get(k.as_str())?,
                Step::Index(i) => v.get(*i)?,
            };
        }
        Some(v)
    }
}

/// How a line becomes fields.
#[derive(Clone, Debug)]
pub enum Parser {
    /// `T=23.4;H=51.2`: pairs split by `pair_separator`, key and value by `kv_separator`
    /// (surrounding spaces trimmed; a blank `pair_separator` splits at any whitespace).
    KeyValue {
        /// Between pairs.
        pair_separator: String,
        /// Between a key and its value.
        kv_separator: String,
    },
    /// A regular expression; fields are its named groups (`(?P<co2>\d+)`).
    Regex(Regex),
    /// A JSON object per line; fields are paths into it.
    Json,
}

/// Equal when of the same kind with the same settings, a regular expression by its
/// pattern (a `Regex` has no `==`).
impl PartialEq for Parser {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (
                Parser::KeyValue {
                    pair_separator: a,
                    kv_separator: b,
                },
                Parser::KeyValue {
                    pair_separator: c,
                    kv_separator: d,
                },
            ) => a == c && b == d,
            (Parser::Regex(a), Parser::Regex(b)) => a.as_str() == b.as_str(),
            (Parser::Json, Parser::Json) => true,
            _ => false,
        }
    }
}

/// Which field of a parsed line a point reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// A key (`key_value`) or a group name (`regex`).
    Name(String),
    /// A path (`json`).
    Path(FieldPath),
}

/// A line after parsing.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// Key/value pairs.
    KeyValue(Vec<(&'a str, &'a str)>),
    /// Regex captures.
    Regex(regex::Captures<'a>),
    /// A JSON document.
    Json(serde_json::Value),
}

impl Parser {
    /// Parse a line; `None` when the line does not have this parser's shape (no pair, no
    /// match, not JSON).
    pub fn parse<'a>(&self, line: &'a str) -> Option<Parsed<'a>> {
        match self {
            Parser::KeyValue {
                pair_separator,
                kv_separator,
            } => {
                let split = |s: &'a str| -> Option<(&'a str, &'a str)> {
                    let (k, v) = s.split_once(kv_separator.as_str())?;
                    let k = k.trim();
                    (!k.is_empty()).then_some((k, v.trim()))
                };
                let pairs: Vec<(&str, &str)> = if pair_separator.trim().is_empty() {
                    line.split_whitespace().filter_map(split).collect()
                } else {
                    line.split(pair_separator.as_str())
                        .filter_map(split)
                        .collect()
                };
                (!pairs.is_empty()).then_some(Parsed::KeyValue(pairs))
            }
            Parser::Regex(re) => re.captures(line).map(Parsed::Regex),
            Parser::Json => match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.is_object() || v.is_array() => Some(Parsed::Json(v)),
                _ => None,
            },
        }
    }

    /// The names a regex parser offers (its named groups).
    pub fn group_names(&self) -> Vec<String> {
        match self {
            Parser::Regex(re) => re.capture_names().flatten().map(str::to_string).collect(),
            _ => Vec::new(),
        }
    }
}

impl Parsed<'_> {
    /// The value of `field`, when the line has it.
    pub fn get(&self, field: &FieldRef) -> Option<FieldValue> {
        match (self, field) {
            (Parsed::KeyValue(pairs), FieldRef::Name(n)) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .map(|(_, v)| FieldValue::Text((*v).to_string())),
            (Parsed::Regex(c), FieldRef::Name(n)) => c
                .name(n)
                .map(|m| FieldValue::Text(m.as_str().trim().to_string())),
            (Parsed::Json(v), FieldRef::Path(p)) => match p.get(v)? {
                serde_json::Value::Number(n) => Some(FieldValue::Number(n.clone())),
                serde_json::Value::Bool(b) => Some(FieldValue::Bool(*b)),
                serde_json::Value::String(s) => Some(FieldValue::Text(s.clone())),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A command template: literal text with `{field}` placeholders (`{{` and `}}` are literal
/// braces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A template that does not parse.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{` without `}`.
    #[error("`{{` at byte {0} is not closed by `}}` (write `{{{{` for a literal brace)")]
    Unclosed(usize),
    /// `}` without `{`.
    #[error("`}}` at byte {0} has no `{{` (write `}}}}` for a literal brace)")]
    Unopened(usize),
    /// `{}`.
    #[error("`{{}}` at byte {0} names no field")]
    Empty(usize),
}

impl Template {
    /// Parse `RELAY{channel} {value}\n`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(TemplateError::Unopened(i)),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => return Err(TemplateError::Unclosed(i)),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(TemplateError::Empty(i));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template(pieces))
    }

    /// The field names used, in order of first use.
    pub fn fields(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.0 {
            if let Piece::Field(f) = p {
                if !v.contains(&f.as_str()) {
                    v.push(f);
                }
            }
        }
        v
    }

    /// Render with `values`; a field without a value renders empty (validation makes sure
    /// every field is known).
    pub fn render(&self, values: &BTreeMap<String, String>) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Field(f) => s.push_str(values.get(f).map_or("", String::as_str)),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[Frame]) -> Vec<String> {
        out.iter()
            .map(|f| match f {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::Overlong { bytes } => format!("<overlong {bytes}>"),
            })
            .collect()
    }

    #[test]
    fn framer_reassembles_split_lines_and_drops_long_ones() {
        let mut f = LineFramer::new("\r\n", 8);
        let mut out = Vec::new();
        f.push(b"T=1", &mut out);
        f.push(b"2.5\r", &mut out);
        assert!(out.is_empty());
        f.push(b"\nAB\r\n0123456789abcdef", &mut out);
        f.push(b"ghij\r", &mut out);
        f.push(b"\nok\r\n", &mut out);
        assert_eq!(
            lines(&out),
            ["T=12.5", "AB", "<overlong 20>", "ok"],
            "{out:?}"
        );
        assert_eq!(f.pending(), 0);
        f.push(b"half", &mut out);
        assert_eq!(f.discard_partial(), 4);
        // Exactly the limit is fine; one more is not.
        let mut out = Vec::new();
        f.push(b"12345678\r\n123456789\r\n", &mut out);
        assert_eq!(lines(&out), ["12345678", "<overlong 9>"]);
    }

    #[test]
    fn parsers() {
        let kv = Parser::KeyValue {
            pair_separator: ";".into(),
            kv_separator: "=".into(),
        };
        let p = kv.parse("T=23.4; H = 51.2;junk").expect("pairs");
        assert_eq!(
            p.get(&FieldRef::Name("H".into())),
            Some(FieldValue::Text("51.2".into()))
        );
        assert!(kv.parse("hello").is_none());
        let ws = Parser::KeyValue {
            pair_separator: " ".into(),
            kv_separator: ":".into(),
        };
        let p = ws.parse("co2:612  t:21.5").expect("pairs");
        assert_eq!(
            p.get(&FieldRef::Name("t".into())),
            Some(FieldValue::Text("21.5".into()))
        );
        let re = Parser::Regex(Regex::new(r"^CO2 (?P<co2>\d+) ppm").expect("regex"));
        let p = re.parse("CO2 0612 ppm").expect("match");
        assert_eq!(
            p.get(&FieldRef::Name("co2".into())),
            Some(FieldValue::Text("0612".into()))
        );
        assert_eq!(re.group_names(), ["co2"]);
        let path = FieldPath::parse("s.ch[1].v").expect("path");
        let p = Parser::Json
            .parse(r#"{"s":{"ch":[{"v":1},{"v":2.5}]}}"#)
            .expect("json");
        assert_eq!(
            p.get(&FieldRef::Path(path)).map(|v| v.to_string()),
            Some("2.5".into())
        );
        assert!(Parser::Json.parse("{nope").is_none());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a[x]").is_err());
        assert!(FieldPath::parse("[0].a").is_ok());
    }

    #[test]
    fn templates() {
        let t = Template::parse("RELAY{channel} {value}\n{{x}}").expect("template");
        assert_eq!(t.fields(), ["channel", "value"]);
        let v = BTreeMap::from([
            ("channel".to_string(), "2".to_string()),
            ("value".to_string(), "ON".to_string()),
        ]);
        assert_eq!(t.render(&v), "RELAY2 ON\n{x}");
        assert_eq!(Template::parse("A{b"), Err(TemplateError::Unclosed(1)));
        assert_eq!(Template::parse("A}"), Err(TemplateError::Unopened(1)));
        assert_eq!(Template::parse("A{ }"), Err(TemplateError::Empty(1)));
    }
}
