//! Which keys go with which bus kind, in the mapping schema. `check` rejects a key that
//! does not apply to its bus kind; the schema says the same where it can see the kind:
//! a bus by its `kind`, a device or a point by a key that only one kind takes (a point
//! with `pin` is a GPIO point, whatever its device's bus). A key written as null is
//! left alone, as the parser leaves it.

use serde_json::{json, Map, Value};

use crate::config::{gpio, modbus, uart, BusKindName};

/// Every bus kind.
const BUS_KINDS: [BusKindName; 5] = [
    BusKindName::ModbusTcp,
    BusKindName::ModbusRtu,
    BusKindName::ModbusRtuOverTcp,
    BusKindName::Uart,
    BusKindName::Gpio,
];

/// A bus kind's name and the keys its buses take besides `id` and `kind` (the lists
/// `check` uses).
fn bus_kind(kind: BusKindName) -> (&'static str, &'static [&'static str]) {
    match kind {
        BusKindName::ModbusTcp => ("modbus_tcp", modbus::TCP_BUS_KEYS),
        BusKindName::ModbusRtu => ("modbus_rtu", modbus::RTU_BUS_KEYS),
        BusKindName::ModbusRtuOverTcp => ("modbus_rtu_over_tcp", modbus::RTU_OVER_TCP_BUS_KEYS),
        BusKindName::Uart => ("uart", uart::BUS_KEYS),
        BusKindName::Gpio => ("gpio", gpio::BUS_KEYS),
    }
}

/// Device keys that put a device on a `uart` bus, and those that are errors there.
const UART_DEVICE: (&[&str], &[&str]) = (
    &["parser", "query"],
    &[
        "unit",
        "max_gap",
        "write_multiple",
        "max_read_registers",
        "max_read_bits",
    ],
);

/// The keys of GPIO points only.
const GPIO_POINT_KEYS: &[&str] = &[
    "pin",
    "mode",
    "pull",
    "active_low",
    "debounce",
    "initial",
    "on_shutdown",
    "pulse",
];

/// The keys of UART points only.
const UART_POINT_KEYS: &[&str] = &["field", "command", "params", "ack", "ack_timeout"];

/// The keys of Modbus points only.
const MODBUS_POINT_KEYS: &[&str] = &[
    "table",
    "address",
    "word_order",
    "bit",
    "poll_interval",
    "write_address",
];

/// Number keys that are errors on a GPIO point (one line, on or off).
const NUMBER_POINT_KEYS: &[&str] = &[
    "length",
    "scale",
    "offset",
    "precision",
    "deadband",
    "min",
    "max",
];

/// Each kind of point: its name, the keys that make a point one, the keys it refuses.
fn point_kinds() -> [(&'static str, &'static [&'static str], Vec<&'static str>); 3] {
    [
        (
            "a GPIO point",
            GPIO_POINT_KEYS,
            [MODBUS_POINT_KEYS, NUMBER_POINT_KEYS, UART_POINT_KEYS].concat(),
        ),
        (
            "a Modbus point",
            MODBUS_POINT_KEYS,
            [GPIO_POINT_KEYS, UART_POINT_KEYS].concat(),
        ),
        (
            "a UART point",
            UART_POINT_KEYS,
            [MODBUS_POINT_KEYS, GPIO_POINT_KEYS].concat(),
        ),
    ]
}

/// The mapping schema's kind rules: on buses, devices and points.
pub(super) fn mapping(schema: &mut Value) {
    let bus = &mut schema["properties"]["buses"]["items"];
    let keys: Vec<String> = property_names(bus)
        .into_iter()
        .filter(|k| k != "id" && k != "kind")
        .collect();
    let rules = BUS_KINDS
        .iter()
        .map(|&k| {
            let (name, allowed) = bus_kind(k);
            let refused = keys.iter().filter(|k| !allowed.contains(&k.as_str()));
            let takes = allowed.join(", ");
            json!({
                "if": { "properties": { "kind": { "const": name } }, "required": ["kind"] },
                "then": { "properties": refuse(refused, |key| format!(
                    "`{key}` does not apply to a {name} bus; a {name} bus takes: {takes}"
                )) },
            })
        })
        .collect();
    add_rules(bus, rules);

    let device = &mut schema["properties"]["devices"]["items"];
    let (marks, refused) = UART_DEVICE;
    let rule = when_any(marks, refused.iter(), |key| {
        format!("`{key}` does not apply to a device on a uart bus (one with `parser` or `query`)")
    });
    add_rules(device, vec![rule]);

    let point = &mut device["properties"]["points"]["items"];
    let rules = point_kinds()
        .into_iter()
        .map(|(what, marks, refused)| {
            let by = marks.join("`, `");
            when_any(marks, refused.iter(), |key| {
                format!("`{key}` does not apply to {what} (a point with `{by}`)")
            })
        })
        .collect();
    add_rules(point, rules);
}

/// The keys a schema's `properties` name.
fn property_names(schema: &Value) -> Vec<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// `refused` keys may only be null (as good as absent), with `message` when they are not.
fn refuse<'a, S: AsRef<str> + 'a>(
    refused: impl Iterator<Item = &'a S>,
    message: impl Fn(&str) -> String,
) -> Map<String, Value> {
    refused
        .map(|k| {
            let k = k.as_ref();
            (
                k.to_string(),
                // `doNotSuggest`: an editor offers the key only where it applies.
                json!({ "type": "null", "errorMessage": message(k), "doNotSuggest": true }),
            )
        })
        .collect()
}

/// When any of `marks` is present and not null, the `refused` keys are refused.
fn when_any<'a>(
    marks: &[&str],
    refused: impl Iterator<Item = &'a &'static str>,
    message: impl Fn(&str) -> String,
) -> Value {
    let present: Vec<Value> = marks
        .iter()
        .map(|m| {
            let not_null = json!({ "not": { "type": "null" }, "doNotSuggest": true });
            json!({ "required": [m], "properties": { *m: not_null } })
        })
        .collect();
    json!({
        "if": { "anyOf": present },
        "then": { "properties": refuse(refused, message) },
    })
}

/// Add `rules` to a schema's `allOf`.
fn add_rules(schema: &mut Value, rules: Vec<Value>) {
    if let Some(o) = schema.as_object_mut() {
        if let Value::Array(all) = o.entry("allOf").or_insert_with(|| json!([])) {
            all.extend(rules);
        }
    }
}
