//! `fieldlink scan`: which unit ids answer on a bus, and what they say they are.
//!
//! Each unit is asked for holding register 0. A reply, or any exception but 0x0A/0x0B,
//! means a device is there (it understood the request); 0x0A/0x0B come from a Modbus
//! TCP gateway and mean nobody answered behind it; silence means nobody is there. Each
//! unit found is asked for its identification (function 43 / MEI 14, the basic objects).
//! On a serial line, several `--baud` and `--parity` values are tried in turn, until one
//! combination finds a unit.

use std::{io::Write, time::Duration};

use fieldlink_drivers::modbus::{
    client::exception_name, ident, DriverError, Identification, ModbusTransport, Table,
};
use serde_json::{json, Value as Json};

use super::{
    closed,
    flags::TransportArgs,
    target::{Target, Transport},
    CommissionError,
};

/// `fieldlink scan`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScanArgs {
    /// Where the device is.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The unit ids to try: `1-247`, or a list such as `1,2,10-20`.
    #[arg(long, default_value = "1-247")]
    pub units: String,
    /// Print one JSON object: `{"found":[...],"settings":{...}}`.
    #[arg(long)]
    pub json: bool,
}

/// A unit that answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Its id.
    pub unit: u8,
    /// The exception it answered the read with, if it did.
    pub exception: Option<u8>,
    /// What it says it is; `Err`: why not (no identification, an exception...).
    pub identification: Result<Identification, String>,
}

/// The unit ids of `--units`: `1-247`, `1,2,10-20`.
pub fn units(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let n = |s: &str| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| format!("--units `{text}`: `{s}` is not a unit id (0-255)"))
        };
        let (a, b) = (n(a)?, n(b)?);
        if a > b {
            return Err(format!("--units `{text}`: {a}-{b} runs backwards"));
        }
        for u in a..=b {
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    Ok(out)
}

/// Run `fieldlink scan`.
pub async fn run(a: &ScanArgs, out: &mut impl Write) -> Result<(), CommissionError> {
    let list = units(&a.units).map_err(CommissionError::Usage)?;
    let targets = a
        .transport
        .resolve(Duration::from_millis(200), true)
        .await?;
    let mut tried = Vec::new();
    let mut garbled_total = 0;
    for target in targets {
        let transport = match target {
            Target::Direct(t) => t,
            Target::Gateway(g) => return super::client::scan(a, g, out).await,
        };
        for u in &list {
            super::check_unit(*u, &transport)?;
        }
        let mut t = transport.open();
        let (found, garbled) = one(a, &mut t, &transport, &list, &[], out).await?;
        garbled_total += garbled;
        tried.push(transport.describe());
        if !found.is_empty() {
            return report(a, out, &found, &transport, &[]);
        }
    }
    if a.json {
        say(out, &empty_json(&[]).to_string())?;
    }
    Err(nobody(&a.units, &tried, garbled_total, &[]))
}

/// Scan on one transport as `run` prints it: the line saying where (and which units the
/// gateway's devices hold: `skipped`, by unit and device), a line per unit found, and
/// the garbled replies when none was. The units found and the garbled replies.
pub(crate) async fn one<T: ModbusTransport>(
    a: &ScanArgs,
    t: &mut T,
    transport: &Transport,
    list: &[u8],
    skipped: &[(u8, String)],
    out: &mut impl Write,
) -> Result<(Vec<Found>, usize), CommissionError> {
    let endpoint = transport.describe();
    if !a.json {
        say(
            out,
            &format!(
                "Scanning units {} on {endpoint} (timeout {}).",
                a.units,
                humantime::format_duration(transport.timeout())
            ),
        )?;
        if !skipped.is_empty() {
            say(out, &skipped_line(skipped))?;
        }
    }
    let (found, garbled) = scan(t, list, &endpoint, |f| match a.json {
        true => Ok(()),
        false => say(out, &line(f)),
    })
    .await?;
    if !a.json && found.is_empty() && garbled > 0 {
        say(
            out,
            &format!(
                "{garbled} garbled repl{} at these settings.",
                if garbled == 1 { "y" } else { "ies" }
            ),
        )?;
    }
    Ok((found, garbled))
}

/// `Skipped units 1, 2: the gateway polls them (devices meter, pump).`
fn skipped_line(skipped: &[(u8, String)]) -> String {
    let units: Vec<String> = skipped.iter().map(|(u, _)| u.to_string()).collect();
    let devices: Vec<&str> = skipped.iter().map(|(_, d)| d.as_str()).collect();
    format!(
        "Skipped unit{} {}: the gateway polls {} (device{} {}).",
        if units.len() == 1 { "" } else { "s" },
        units.join(", "),
        if units.len() == 1 { "it" } else { "them" },
        if devices.len() == 1 { "" } else { "s" },
        devices.join(", ")
    )
}

/// The error when no unit answered anywhere tried.
pub(crate) fn nobody(
    units: &str,
    tried: &[String],
    garbled: usize,
    skipped: &[(u8, String)],
) -> CommissionError {
    let hint = if garbled > 0 {
        "; garbled replies came back: the baud rate or parity is probably wrong"
    } else {
        "; check the wiring, the unit ids, and on a serial line the baud rate and parity"
    };
    let skip = if skipped.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = skipped.iter().map(|(u, _)| u.to_string()).collect();
        format!("; skipped {}: the gateway polls them", ids.join(", "))
    };
    CommissionError::Unavailable(format!(
        "no unit answered (units {units} on {}{skip}){hint}",
        tried.join(", then ")
    ))
}

/// `scan --json` when no unit answered.
pub(crate) fn empty_json(skipped: &[(u8, String)]) -> Json {
    let mut j = json!({"found": [], "settings": null});
    add_skipped(&mut j, skipped);
    j
}

/// Through the gateway, the units its devices hold: `"skipped":[{"unit":1,"device":..}]`.
fn add_skipped(j: &mut Json, skipped: &[(u8, String)]) {
    if skipped.is_empty() {
        return;
    }
    let list: Vec<Json> = skipped
        .iter()
        .map(|(u, d)| json!({"unit": u, "device": d}))
        .collect();
    j["skipped"] = Json::Array(list);
}

/// Scan `list` on one transport; the units found, and how many replies were garbled.
/// `each` hears of every unit found as it is found.
pub async fn scan<T: ModbusTransport>(
    t: &mut T,
    list: &[u8],
    endpoint: &str,
    mut each: impl FnMut(&Found) -> Result<(), CommissionError>,
) -> Result<(Vec<Found>, usize), CommissionError> {
    let mut found = Vec::new();
    let mut garbled = 0;
    let mut connected = false;
    for &unit in list {
        let mut reply = t.read(unit, Table::Holding, 0, 1).await;
        if matches!(reply, Err(DriverError::NotConnected(_))) && connected {
            // The connection dropped (some gateways hang up on an absent unit): the master
            // reopens it after its first backoff step.
            tokio::time::sleep(Duration::from_millis(600)).await;
            reply = t.read(unit, Table::Holding, 0, 1).await;
        }
        let exception = match reply {
            Ok(_) => None,
            Err(DriverError::Exception {
                code: 0x0A | 0x0B, ..
            }) => {
                connected = true;
                continue;
            }
            Err(DriverError::Exception { code, .. }) => Some(code),
            Err(DriverError::Timeout(_)) | Err(DriverError::Io(_)) => {
                connected = true;
                continue;
            }
            Err(DriverError::BadReply { .. }) | Err(DriverError::Protocol(_)) => {
                connected = true;
                garbled += 1;
                continue;
            }
            Err(e @ DriverError::NotConnected(_)) => {
                return Err(super::unavailable(&e, unit, endpoint));
            }
        };
        connected = true;
        let identification = match t.read_identification(unit).await {
            Ok(id) => Ok(id),
            Err(DriverError::Exception { code, name }) => {
                Err(format!("exception {code:#04x}, {name}"))
            }
            Err(e) => Err(e.to_string()),
        };
        let f = Found {
            unit,
            exception,
            identification,
        };
        each(&f)?;
        found.push(f);
    }
    Ok((found, garbled))
}

/// The line for a unit found.
fn line(f: &Found) -> String {
    let how = match f.exception {
        None => String::new(),
        Some(code) => format!(
            " (exception {code:#04x}, {}, to a read of holding register 0)",
            exception_name(code)
        ),
    };
    let what = match &f.identification {
        Ok(id) => {
            let field = |name: &str, obj: u8| {
                id.text(obj)
                    .map(|t| format!("{name} {t:?}"))
                    .unwrap_or_else(|| format!("no {name}"))
            };
            format!(
                "{}, {}, {}",
                field("vendor", ident::VENDOR_NAME),
                field("product", ident::PRODUCT_CODE),
                field("revision", ident::REVISION)
            )
        }
        Err(why) => format!("no identification ({why})"),
    };
    format!("unit {}: answered{how}; {what}", f.unit)
}

/// The JSON of a unit's identification: the basic objects by name, `null` without one.
fn identification_json(f: &Found) -> Json {
    match &f.identification {
        Ok(id) => json!({
            "vendor": id.text(ident::VENDOR_NAME),
            "product_code": id.text(ident::PRODUCT_CODE),
            "revision": id.text(ident::REVISION),
        }),
        Err(_) => Json::Null,
    }
}

/// `scan --json` when units answered.
pub(crate) fn found_json(found: &[Found], transport: &Transport, skipped: &[(u8, String)]) -> Json {
    let list: Vec<Json> = found
        .iter()
        .map(|f| json!({"unit": f.unit, "identification": identification_json(f)}))
        .collect();
    let mut j = json!({"found": list, "settings": transport.json()});
    add_skipped(&mut j, skipped);
    j
}

/// Print what was found: the JSON object, or the line listing the units.
pub(crate) fn report(
    a: &ScanArgs,
    out: &mut impl Write,
    found: &[Found],
    transport: &Transport,
    skipped: &[(u8, String)],
) -> Result<(), CommissionError> {
    if a.json {
        return say(out, &found_json(found, transport, skipped).to_string());
    }
    let ids: Vec<String> = found.iter().map(|f| f.unit.to_string()).collect();
    say(
        out,
        &format!(
            "{} unit(s) answered on {}: {}.",
            found.len(),
            transport.describe(),
            ids.join(", ")
        ),
    )
}

/// Print a line; a closed standard output ends quietly (the caller goes on, harmlessly).
pub(crate) fn say(out: &mut impl Write, text: &str) -> Result<(), CommissionError> {
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if !closed(&e) => Err(CommissionError::Unavailable(format!(
            "standard output: {e}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lists() {
        assert_eq!(units("1-3").unwrap(), vec![1, 2, 3]);
        assert_eq!(units("5, 1-2,2").unwrap(), vec![5, 1, 2]);
        assert_eq!(units("1-247").unwrap().len(), 247);
        assert!(units("3-1").is_err());
        assert!(units("1-300").is_err());
        assert!(units("x").is_err());
    }

    #[test]
    fn skipped_units_are_named_with_their_devices() {
        let s = [(1, "meter".to_string()), (3, "pump".to_string())];
        assert_eq!(
            skipped_line(&s),
            "Skipped units 1, 3: the gateway polls them (devices meter, pump)."
        );
        assert_eq!(
            skipped_line(&s[..1]),
            "Skipped unit 1: the gateway polls it (device meter)."
        );
        let e = nobody("1-5", &["RTU /dev/x at 9600 8N1".into()], 0, &s).to_string();
        assert!(
            e.starts_with(
                "no unit answered (units 1-5 on RTU /dev/x at 9600 8N1; skipped 1, 3: the \
                 gateway polls them); check"
            ),
            "{e}"
        );
        assert_eq!(
            empty_json(&s[..1]),
            json!({"found": [], "settings": null, "skipped": [{"unit": 1, "device": "meter"}]})
        );
    }

    #[test]
    fn a_line_per_unit() {
        let f = Found {
            unit: 2,
            exception: None,
            identification: Ok(Identification {
                conformity: 0x81,
                objects: vec![(0, b"ACME".to_vec()), (1, b"PM10".to_vec())],
            }),
        };
        assert_eq!(
            line(&f),
            "unit 2: answered; vendor \"ACME\", product \"PM10\", no revision"
        );
        let g = Found {
            unit: 7,
            exception: Some(2),
            identification: Err("exception 0x01, illegal function".into()),
        };
        assert_eq!(
            line(&g),
            "unit 7: answered (exception 0x02, illegal data address, to a read of holding \
             register 0); no identification (exception 0x01, illegal function)"
        );
    }
}
