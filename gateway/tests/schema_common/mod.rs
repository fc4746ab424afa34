//! What the schema tests share: the schemas, a validator, YAML as an editor reads it, and
//! the keys a schema has.

#![allow(dead_code)] // each test file uses its part

use serde_json::Value;

/// The schema called `name`.
pub fn schema(name: &str) -> Value {
    fieldlink::config::schema::schema(name).unwrap_or_else(|| panic!("no schema `{name}`"))
}

/// A draft-07 validator of the schema called `name`.
pub fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::draft7::new(&schema(name))
        .unwrap_or_else(|e| panic!("the {name} schema does not compile: {e}"))
}

/// The schema's complaints about a document: (JSON pointer, message).
pub fn complaints(v: &jsonschema::Validator, doc: &Value) -> Vec<(String, String)> {
    v.iter_errors(doc)
        .map(|e| (e.instance_path().as_str().to_string(), e.to_string()))
        .collect()
}

/// YAML text as JSON, as an editor's language server reads it (YAML 1.2: `off` is text).
pub fn yaml_text(text: &str) -> Result<Value, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
}

/// One key of a schema: where it is (`["devices", "[]", "points", "[]", "address"]`),
/// its schema, and whether it holds keys of its own (an object with `properties`, or a
/// list of them).
pub struct Key {
    pub path: Vec<String>,
    pub schema: Value,
    pub container: bool,
}

impl Key {
    /// `devices[].points[].address`
    pub fn dotted(&self) -> String {
        dotted(&self.path)
    }
}

/// `["devices", "[]", "points"]` as `devices[].points`.
pub fn dotted(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if p == "[]" {
            s.push_str("[]");
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(p);
        }
    }
    s
}

/// Every key of `schema`, parents before their children.
pub fn keys(schema: &Value) -> Vec<Key> {
    let mut out = Vec::new();
    collect(schema, &mut Vec::new(), &mut out);
    out
}

fn collect(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Key>) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (name, s) in props {
        path.push(name.clone());
        let (inner, list) = holder(s);
        let container = inner.is_some();
        out.push(Key {
            path: path.clone(),
            schema: s.clone(),
            container,
        });
        if let Some(inner) = inner {
            if list {
                path.push("[]".into());
            }
            collect(inner, path, out);
            if list {
                path.pop();
            }
        }
        path.pop();
    }
}

/// The schema with `properties` that `s` is, or is a list of, or a nullable form of.
fn holder(s: &Value) -> (Option<&Value>, bool) {
    if s["properties"].is_object() {
        return (Some(s), false);
    }
    if s["items"]["properties"].is_object() {
        return (Some(&s["items"]), true);
    }
    for alt in s["anyOf"].as_array().into_iter().flatten() {
        if let (Some(h), list) = holder(alt) {
            return (Some(h), list);
        }
    }
    (None, false)
}
