//! The schemas refuse only what `check` refuses, and their bounds are `check`'s: every key
//! of a schema is written, alone, into small valid files of every bus kind; whatever the
//! schema refuses there, `check` must refuse too (an editor never marks a file that runs),
//! and an integer key's `minimum` and `maximum` are the first and last values `check`
//! takes.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod schema_common;
use schema_common::{complaints, keys, validator, Key};

/// A small valid mapping file: one bus with `bus`, one device with `device`, one point
/// with `point`.
fn mapping(bus: Value, device: Value, point: Value) -> Value {
    let mut bus = merge(json!({ "id": "b" }), bus);
    let mut device = merge(json!({ "id": "d", "bus": "b" }), device);
    device["points"] = json!([merge(json!({ "topic": "t/x" }), point)]);
    bus["id"] = "b".into();
    json!({ "buses": [bus], "devices": [device] })
}

fn merge(mut base: Value, more: Value) -> Value {
    if let (Some(b), Value::Object(m)) = (base.as_object_mut(), more) {
        b.extend(m);
    }
    base
}

/// Mapping files that `check` takes, one per kind of bus and of point.
fn mappings() -> Vec<(&'static str, Value)> {
    let tcp = || json!({ "kind": "modbus_tcp", "host": "127.0.0.1" });
    let holding = |more: Value| merge(json!({ "table": "holding", "address": 0 }), more);
    let uart = || json!({ "kind": "uart", "path": "/dev/ttyS8" });
    let json_parser = || json!({ "parser": { "kind": "json" } });
    let gpio = || json!({ "kind": "gpio", "backend": "simulated" });
    vec![
        ("modbus_tcp", mapping(tcp(), json!({}), holding(json!({})))),
        (
            "modbus_tcp, bool",
            mapping(tcp(), json!({}), holding(json!({ "type": "bool" }))),
        ),
        (
            "modbus_tcp, writable",
            mapping(tcp(), json!({}), holding(json!({ "writable": true }))),
        ),
        (
            "modbus_tcp, string",
            mapping(
                tcp(),
                json!({}),
                holding(json!({ "type": "string", "length": 2 })),
            ),
        ),
        (
            "modbus_rtu",
            mapping(
                json!({ "kind": "modbus_rtu", "path": "/dev/ttyS9" }),
                json!({}),
                holding(json!({})),
            ),
        ),
        (
            "modbus_rtu_over_tcp",
            mapping(
                json!({ "kind": "modbus_rtu_over_tcp", "host": "127.0.0.1", "port": 8899 }),
                json!({}),
                holding(json!({})),
            ),
        ),
        (
            "uart",
            mapping(uart(), json_parser(), json!({ "field": "v" })),
        ),
        (
            "uart, string",
            mapping(
                uart(),
                json_parser(),
                json!({ "field": "v", "type": "string" }),
            ),
        ),
        ("gpio", mapping(gpio(), json!({}), json!({ "pin": 17 }))),
        (
            "gpio, output",
            mapping(gpio(), json!({}), json!({ "pin": 17, "mode": "output" })),
        ),
    ]
}

/// Gateway files that `check` takes.
fn gateways() -> Vec<(&'static str, Value)> {
    let base = json!({ "id": "t", "mappings": "m.yaml" });
    vec![
        ("gateway", base.clone()),
        (
            "gateway, upstream",
            merge(
                base.clone(),
                json!({ "mqtt": { "upstream": { "url": "mqtt://127.0.0.1:1883" } } }),
            ),
        ),
        (
            "gateway, one subscription",
            merge(
                base,
                json!({ "mqtt": { "embedded": { "max_subscriptions": 1 } } }),
            ),
        ),
    ]
}

/// `check`'s errors for a gateway file and one mapping file (JSON is YAML).
fn check(gateway: &Value, mapping: &Value) -> Vec<String> {
    let text = |v: &Value| serde_json::to_string_pretty(v).expect("JSON");
    let m = text(mapping);
    match fieldlink::config::check_sources(Path::new("/t/gateway.yaml"), &text(gateway), |_, _| {
        vec![(PathBuf::from("/t/m.yaml"), m)]
    }) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .filter(|d| d.severity == fieldlink::config::Severity::Error)
            .map(ToString::to_string)
            .collect(),
    }
}

/// The files of one schema: (label, gateway file, mapping file, the one of them the
/// schema is for).
fn files(schema: &str) -> Vec<(&'static str, Value, Value)> {
    let gateway = gateways().remove(0).1;
    let mapping = mappings().remove(0).1;
    match schema {
        "gateway" => gateways()
            .into_iter()
            .map(|(l, g)| (l, g, mapping.clone()))
            .collect(),
        _ => mappings()
            .into_iter()
            .map(|(l, m)| (l, gateway.clone(), m))
            .collect(),
    }
}

/// `doc` with `value` at a key's path (the first item of a list), objects made on the way.
fn with(doc: &Value, key: &Key, value: Value) -> Value {
    let mut doc = doc.clone();
    let mut at = &mut doc;
    let (last, parents) = key.path.split_last().expect("a key has a name");
    for p in parents {
        at = if p == "[]" {
            if !at.is_array() || at.as_array().is_some_and(Vec::is_empty) {
                *at = json!([{}]);
            }
            &mut at[0]
        } else {
            if !at[p.as_str()].is_object() && !at[p.as_str()].is_array() {
                at[p.as_str()] = json!({});
            }
            &mut at[p.as_str()]
        };
    }
    at[last.as_str()] = value;
    doc
}

/// A value a key's schema takes on its own: its default, example or first allowed value,
/// else one of its type.
fn sample(s: &Value) -> Value {
    if let Some(v) = s.get("default").or_else(|| s["examples"].get(0)) {
        return v.clone();
    }
    if let Some(c) = s.get("const").or_else(|| s["enum"].get(0)) {
        return c.clone();
    }
    for alt in ["oneOf", "anyOf"] {
        if let Some(v) = s[alt].as_array().and_then(|a| a.first()) {
            return sample(v);
        }
    }
    let types: Vec<&str> = match &s["type"] {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::String(t) => vec![t.as_str()],
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("integer") => s.get("minimum").cloned().unwrap_or(json!(1)),
        Some("number") => json!(1),
        Some("boolean") => json!(true),
        Some("string") => json!("x"),
        Some("object") => json!({}),
        Some("array") => json!([]),
        _ => Value::Null,
    }
}

/// What `check` and the schema (of the file `schema`, compiled as `v`) say of the files.
fn verdicts(
    (schema, v): (&str, &jsonschema::Validator),
    gateway: &Value,
    mapping: &Value,
) -> (Vec<String>, Vec<(String, String)>) {
    let doc = if schema == "gateway" {
        gateway
    } else {
        mapping
    };
    (check(gateway, mapping), complaints(v, doc))
}

#[test]
fn the_base_files_are_valid() {
    for schema in ["gateway", "mapping"] {
        let v = validator(schema);
        for (label, gateway, mapping) in files(schema) {
            let (errors, complaints) = verdicts((schema, &v), &gateway, &mapping);
            assert!(errors.is_empty(), "{label}: check: {errors:?}");
            assert!(complaints.is_empty(), "{label}: schema: {complaints:?}");
        }
    }
}

#[test]
fn what_the_schemas_refuse_check_refuses() {
    let mut problems = Vec::new();
    let mut refused = 0;
    for schema in ["gateway", "mapping"] {
        let all = keys(&schema_common::schema(schema));
        let v = validator(schema);
        for (label, gateway, mapping) in files(schema) {
            for key in &all {
                for value in [sample(&key.schema), Value::Null] {
                    let (g, m) = match schema {
                        "gateway" => (with(&gateway, key, value.clone()), mapping.clone()),
                        _ => (gateway.clone(), with(&mapping, key, value.clone())),
                    };
                    let (errors, complaints) = verdicts((schema, &v), &g, &m);
                    if complaints.is_empty() {
                        continue;
                    }
                    refused += 1;
                    if errors.is_empty() {
                        problems.push(format!(
                            "{label}: `{}: {value}`: `check` takes it, the schema says {complaints:?}",
                            key.dotted()
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The keys of one bus kind in the files of another, at least.
    assert!(refused > 100, "only {refused} refusals exercised");
}

#[test]
fn integer_bounds_are_those_check_takes() {
    let mut problems = Vec::new();
    let mut bounded = 0;
    for schema in ["gateway", "mapping"] {
        for key in keys(&schema_common::schema(schema)) {
            let s = &key.schema;
            // Durations and sizes (with a `pattern`) are checked by their own tests.
            if s.get("pattern").is_some() {
                continue;
            }
            let (Some(lo), Some(hi)) = (s["minimum"].as_i64(), s["maximum"].as_i64()) else {
                continue;
            };
            bounded += 1;
            let takes = |v: i64| {
                files(schema).iter().any(|(_, g, m)| {
                    let (g, m) = match schema {
                        "gateway" => (with(g, &key, v.into()), m.clone()),
                        _ => (g.clone(), with(m, &key, v.into())),
                    };
                    check(&g, &m).is_empty()
                })
            };
            for v in [lo, hi] {
                if !takes(v) {
                    problems.push(format!(
                        "`{}: {v}`: within the schema's bounds, `check` refuses it",
                        key.dotted()
                    ));
                }
            }
            for v in [lo - 1, hi + 1] {
                if takes(v) {
                    problems.push(format!(
                        "`{}: {v}`: outside the schema's bounds, `check` takes it",
                        key.dotted()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(bounded >= 25, "only {bounded} bounded keys");
}
