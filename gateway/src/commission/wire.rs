//! A commissioning request and its answer as they travel through the running gateway's
//! embedded broker (`<base>/bus/<id>/request`): the subcommand and its arguments as one
//! JSON object, and the answer carrying what direct mode would print.
//!
//! ```text
//! {"command":"probe","unit":1,"table":"input","address":0,"count":10,"json":true}
//! {"command":"scan","units":"1-10"}
//! {"command":"write","unit":1,"table":"holding","address":5,"type":"f32","word_order":"CDAB","value":"21.5"}
//! ```
//!
//! Every field but `command` is optional, with the subcommand's defaults. A 3.1.1 client
//! adds `response_topic` (MQTT 5 clients use the Response Topic and Correlation Data); an
//! `id` is echoed in the answer:
//!
//! ```text
//! {"ok":true,"result":{...as --json prints it...},"text":"...as direct mode prints it...","id":..}
//! {"ok":false,"error":"one line","exit":77}
//! ```
//!
//! `text` is exactly what the subcommand prints on standard output with the request's
//! flags (with `"json":true`, the JSON line); `exit` is the sysexits code the command
//! ends with (77: the gateway refused the request).

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use super::{
    decode::{Cell, OrderArg, Reading, TableArg, TypeArg},
    probe::ProbeArgs,
    scan::ScanArgs,
    write::{WriteArgs, WriteTable},
    CommissionError,
};
use fieldlink_drivers::modbus::Table;

/// A request body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest {
    /// `probe`, `scan` or `write`.
    pub command: String,
    /// Unit id (probe, write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
    /// `holding`, `input`, `coil`, `discrete` (probe); `holding`, `coil` (write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// First address, 0-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<u32>,
    /// How many addresses (probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The 64-bit decodings too (probe).
    #[serde(default, skip_serializing_if = "is_false")]
    pub wide: bool,
    /// Draft `points:` of `type` (probe).
    #[serde(default, skip_serializing_if = "is_false")]
    pub yaml: bool,
    /// `text` as `--json` prints it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub json: bool,
    /// Value type (probe with `yaml`, write).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// Length in bytes of a `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u16>,
    /// `ABCD`, `CDAB`, `BADC` or `DCBA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_order: Option<String>,
    /// Unit ids to try (scan): `1-247`, `1,2,10-20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// Always FC16/FC15 (write).
    #[serde(default, skip_serializing_if = "is_false")]
    pub multiple: bool,
    /// The value (write), as a `/set` payload gives it: text, a number or a bool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    /// Where the answer goes, for MQTT 3.1.1 clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// Echoed in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Json>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The name of a flag value (`holding`, `CDAB`).
fn name<E: ValueEnum>(v: &E) -> Option<String> {
    v.to_possible_value().map(|p| p.get_name().to_string())
}

/// A flag value from its name, case aside.
fn parse<E: ValueEnum>(text: &str, field: &str) -> Result<E, CommissionError> {
    E::from_str(text, true).map_err(|_| {
        let names: Vec<String> = E::value_variants().iter().filter_map(name).collect();
        CommissionError::Usage(format!("`{field}` `{text}`: expected {}", names.join(", ")))
    })
}

fn opt<E: ValueEnum>(text: &Option<String>, field: &str) -> Result<Option<E>, CommissionError> {
    text.as_deref().map(|t| parse(t, field)).transpose()
}

/// A checked request: the subcommand's own arguments, made from the body.
#[derive(Clone, Debug)]
pub enum Asked {
    /// `probe`.
    Probe(ProbeArgs),
    /// `scan`.
    Scan(ScanArgs),
    /// `write`.
    Write(WriteArgs),
}

impl WireRequest {
    /// A body from its bytes (`Usage`: why it is not one).
    pub fn parse(payload: &[u8]) -> Result<WireRequest, CommissionError> {
        serde_json::from_slice(payload)
            .map_err(|e| CommissionError::Usage(format!("the request is not valid: {e}")))
    }

    /// `probe`'s body.
    pub fn probe(a: &ProbeArgs) -> WireRequest {
        WireRequest {
            command: "probe".into(),
            unit: Some(a.unit),
            table: name(&a.table),
            address: Some(a.address),
            count: Some(a.count),
            wide: a.wide,
            yaml: a.yaml,
            json: a.json,
            ty: a.ty.as_ref().and_then(name),
            length: a.length,
            word_order: a.word_order.as_ref().and_then(name),
            ..WireRequest::default()
        }
    }

    /// `scan`'s body.
    pub fn scan(a: &ScanArgs) -> WireRequest {
        WireRequest {
            command: "scan".into(),
            units: Some(a.units.clone()),
            json: a.json,
            ..WireRequest::default()
        }
    }

    /// `write`'s body.
    pub fn write(a: &WriteArgs) -> WireRequest {
        WireRequest {
            command: "write".into(),
            unit: Some(a.unit),
            table: name(&a.table),
            address: Some(a.address),
            ty: a.ty.as_ref().and_then(name),
            length: a.length,
            word_order: a.word_order.as_ref().and_then(name),
            multiple: a.multiple,
            json: a.json,
            value: Some(Json::String(a.value.clone())),
            ..WireRequest::default()
        }
    }

    /// The subcommand asked for, with its arguments (the subcommand checks them further).
    pub fn asked(&self) -> Result<Asked, CommissionError> {
        use CommissionError::Usage;
        let unit = |default: Option<u8>| {
            self.unit
                .or(default)
                .ok_or_else(|| Usage(format!("`{}` needs `unit`", self.command)))
        };
        match self.command.as_str() {
            "probe" => Ok(Asked::Probe(ProbeArgs {
                transport: Default::default(),
                unit: unit(Some(1))?,
                table: opt::<TableArg>(&self.table, "table")?.unwrap_or(TableArg::Holding),
                address: self
                    .address
                    .ok_or_else(|| Usage("`probe` needs `address`".into()))?,
                count: self.count.unwrap_or(10),
                wide: self.wide,
                watch: None,
                json: self.json,
                yaml: self.yaml,
                ty: opt::<TypeArg>(&self.ty, "type")?,
                length: self.length,
                word_order: opt::<OrderArg>(&self.word_order, "word_order")?,
            })),
            "scan" => Ok(Asked::Scan(ScanArgs {
                transport: Default::default(),
                units: self.units.clone().unwrap_or_else(|| "1-247".into()),
                json: self.json,
            })),
            "write" => {
                let value = match &self.value {
                    Some(Json::String(s)) => s.clone(),
                    Some(Json::Null) | None => return Err(Usage("`write` needs `value`".into())),
                    Some(other) => other.to_string(),
                };
                Ok(Asked::Write(WriteArgs {
                    transport: Default::default(),
                    unit: unit(None)?,
                    table: opt::<WriteTable>(&self.table, "table")?.unwrap_or(WriteTable::Holding),
                    address: self
                        .address
                        .ok_or_else(|| Usage("`write` needs `address`".into()))?,
                    ty: opt::<TypeArg>(&self.ty, "type")?,
                    length: self.length,
                    word_order: opt::<OrderArg>(&self.word_order, "word_order")?,
                    multiple: self.multiple,
                    json: self.json,
                    value,
                }))
            }
            other => Err(Usage(format!(
                "`command` `{other}`: expected probe, scan or write"
            ))),
        }
    }
}

/// How a request ended, as the answer carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The `--json` object, when the command got that far.
    pub result: Option<Json>,
    /// What the command printed on standard output.
    pub text: Option<String>,
    /// The error line and exit code, when it failed.
    pub error: Option<(String, u8)>,
}

/// EX_NOPERM (sysexits.h): the gateway refused the request.
pub const REFUSED: u8 = 77;

impl Answer {
    /// A refusal (exit 77).
    pub fn refused(why: impl Into<String>) -> Answer {
        Answer::failed(why, REFUSED)
    }

    /// A failure with its exit code and nothing printed.
    pub fn failed(why: impl Into<String>, exit: u8) -> Answer {
        Answer {
            result: None,
            text: None,
            error: Some((why.into(), exit)),
        }
    }

    /// The command's error.
    pub fn error(e: &CommissionError) -> Answer {
        Answer::failed(e.to_string(), e.exit_code())
    }

    /// The answer's body, with the request's `id`.
    pub fn body(&self, id: Option<&Json>) -> Vec<u8> {
        let mut b = json!({"ok": self.error.is_none()});
        if let Some(map) = b.as_object_mut() {
            if let Some(r) = &self.result {
                map.insert("result".into(), r.clone());
            }
            if let Some(t) = &self.text {
                map.insert("text".into(), json!(t));
            }
            if let Some((e, exit)) = &self.error {
                map.insert("error".into(), json!(e));
                map.insert("exit".into(), json!(exit));
            }
            if let Some(id) = id {
                map.insert("id".into(), id.clone());
            }
        }
        b.to_string().into_bytes()
    }

    /// An answer from its body (`None`: not one).
    pub fn from_body(payload: &[u8]) -> Option<Answer> {
        let j: Json = serde_json::from_slice(payload).ok()?;
        let ok = j.get("ok")?.as_bool()?;
        let error = if ok {
            None
        } else {
            let line = j.get("error")?.as_str()?.to_string();
            let exit = j
                .get("exit")
                .and_then(Json::as_u64)
                .and_then(|e| u8::try_from(e).ok())
                .unwrap_or(69);
            Some((line, exit))
        };
        Some(Answer {
            result: j.get("result").cloned(),
            text: j.get("text").and_then(Json::as_str).map(str::to_string),
            error,
        })
    }
}

/// The reading a `probe --json` object shows (for `--watch` through the gateway).
pub fn reading_of(j: &Json) -> Option<Reading> {
    let table = match j.get("table")?.as_str()? {
        "holding" => Table::Holding,
        "input" => Table::Input,
        "coil" => Table::Coil,
        "discrete" => Table::Discrete,
        _ => return None,
    };
    let rows = j.get("registers")?.as_array()?;
    let start = match rows.first() {
        Some(r) => u16::try_from(r.get("address")?.as_u64()?).ok()?,
        None => 0,
    };
    let cells = rows
        .iter()
        .map(|r| {
            if let Some(code) = r.get("exception").and_then(Json::as_u64) {
                return Some(Cell::Exception(u8::try_from(code).ok()?));
            }
            if let Some(b) = r.get("bool").and_then(Json::as_bool) {
                return Some(Cell::Bit(b));
            }
            u16::from_str_radix(r.get("raw")?.as_str()?, 16)
                .ok()
                .map(Cell::Word)
        })
        .collect::<Option<Vec<Cell>>>()?;
    Some(Reading {
        table,
        start,
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_goes_and_comes_back_the_same() {
        let a = ProbeArgs {
            transport: Default::default(),
            unit: 3,
            table: TableArg::Input,
            address: 100,
            count: 4,
            wide: true,
            watch: None,
            json: false,
            yaml: true,
            ty: Some(TypeArg::F32),
            length: None,
            word_order: Some(OrderArg::Cdab),
        };
        let w = WireRequest::probe(&a);
        let text = serde_json::to_string(&w).expect("json");
        assert_eq!(
            text,
            r#"{"command":"probe","unit":3,"table":"input","address":100,"count":4,"wide":true,"yaml":true,"type":"f32","word_order":"CDAB"}"#
        );
        let back = WireRequest::parse(text.as_bytes()).expect("parses");
        let Ok(Asked::Probe(b)) = back.asked() else {
            panic!("a probe");
        };
        assert_eq!(
            (
                b.unit,
                b.table,
                b.address,
                b.count,
                b.wide,
                b.yaml,
                b.ty,
                b.word_order
            ),
            (
                3,
                TableArg::Input,
                100,
                4,
                true,
                true,
                Some(TypeArg::F32),
                Some(OrderArg::Cdab)
            )
        );
    }

    #[test]
    fn bodies_are_checked() {
        let usage = |body: &str| match WireRequest::parse(body.as_bytes()).and_then(|w| w.asked()) {
            Err(CommissionError::Usage(why)) => why,
            other => panic!("{body}: {other:?}"),
        };
        assert!(usage(r#"{"command":"erase"}"#).contains("expected probe, scan or write"));
        assert!(usage(r#"{"command":"probe"}"#).contains("needs `address`"));
        assert!(usage(r#"{"command":"probe","address":0,"table":"x"}"#)
            .contains("expected holding, input, coil, discrete"));
        assert!(usage(r#"{"command":"write","unit":1,"address":0}"#).contains("needs `value`"));
        assert!(usage(r#"{"command":"probe","adress":0}"#).contains("unknown field"));
        assert!(usage("not json").contains("not valid"));
        // A number or a bool is a value as well as its text.
        let w = WireRequest::parse(br#"{"command":"write","unit":1,"address":0,"value":21.5}"#)
            .expect("parses");
        let Ok(Asked::Write(a)) = w.asked() else {
            panic!("a write");
        };
        assert_eq!(a.value, "21.5");
    }

    #[test]
    fn answers_carry_the_output_and_the_exit_code() {
        let a = Answer {
            result: Some(json!({"found": []})),
            text: Some("line\n".into()),
            error: Some(("no unit answered".into(), 69)),
        };
        let body = a.body(Some(&json!("x")));
        let j: Json = serde_json::from_slice(&body).expect("json");
        assert_eq!(j["ok"], false);
        assert_eq!(j["exit"], 69);
        assert_eq!(j["id"], "x");
        assert_eq!(Answer::from_body(&body), Some(a));
        let r = Answer::refused("commissioning is off");
        assert_eq!(r.error, Some(("commissioning is off".into(), 77)));
    }

    #[test]
    fn a_reading_comes_back_from_its_json() {
        let r = Reading {
            table: Table::Holding,
            start: 7,
            cells: vec![Cell::Word(0xbeef), Cell::Exception(2), Cell::Word(1)],
        };
        let j = super::super::decode::reading_json(1, &r, false);
        assert_eq!(reading_of(&j), Some(r));
        let bits = Reading {
            table: Table::Coil,
            start: 0,
            cells: vec![Cell::Bit(true), Cell::Bit(false)],
        };
        assert_eq!(
            reading_of(&super::super::decode::reading_json(1, &bits, false)),
            Some(bits)
        );
    }
}
