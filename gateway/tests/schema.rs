//! The JSON Schemas of the configuration files (`fieldlink schema`, README "Editor
//! support"): the shipped copies are what the binary prints, every shipped YAML file names
//! its schema and passes it, the schemas agree with `check` on the golden cases, and
//! `mappings/REFERENCE.md` documents every key they have (and no other).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

mod schema_common;
use schema_common::{complaints, keys, schema, validator, yaml_text};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The names of the schemas the binary prints.
fn schema_names() -> Vec<&'static str> {
    fieldlink::config::schema::SCHEMAS
        .iter()
        .map(|(name, _)| *name)
        .collect()
}

/// `fieldlink schema <name>`'s output.
fn printed(name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .args(["schema", name])
        .output()
        .expect("run the fieldlink binary");
    assert!(
        out.status.success(),
        "`fieldlink schema {name}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the schema is UTF-8")
}

/// A YAML file as JSON, as an editor's language server sees it.
fn yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_text(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Which schema a YAML file is for: a gateway file names its `mappings`, a profile has
/// `profile:`, anything else is a mapping file.
fn kind_of(doc: &Value) -> &'static str {
    if doc.get("mappings").is_some() {
        "gateway"
    } else if doc.get("profile").is_some() {
        "profile"
    } else {
        "mapping"
    }
}

/// The YAML files under `dir`, sorted, subfolders included.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn shipped_schemas_are_what_the_binary_prints() {
    let dir = root().join("mappings/schema");
    let mut stale = Vec::new();
    for name in schema_names() {
        let path = dir.join(format!("{name}.json"));
        let shipped = fs::read_to_string(&path).unwrap_or_default();
        if shipped != printed(name) {
            stale.push(format!(
                "mappings/schema/{name}.json is not what the binary prints: run \
                 `cargo run -p fieldlink -- schema {name} > mappings/schema/{name}.json`"
            ));
        }
    }
    for entry in fs::read_dir(&dir).expect("mappings/schema exists") {
        let file = entry.expect("a directory entry").file_name();
        let file = file.to_string_lossy();
        let known = file
            .strip_suffix(".json")
            .is_some_and(|n| schema_names().contains(&n));
        if !known {
            stale.push(format!(
                "mappings/schema/{file} is no schema `fieldlink schema` prints"
            ));
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

#[test]
fn schemas_are_valid_draft_07() {
    for name in schema_names() {
        let s = schema(name);
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        if let Err(e) = jsonschema::meta::validate(&s) {
            panic!("the {name} schema is not a valid draft-07 schema: {e}");
        }
    }
}

#[test]
fn shipped_yaml_files_name_their_schema_and_pass_it() {
    let mappings = root().join("mappings");
    let files = yaml_files(&mappings);
    assert!(files.len() >= 2, "no YAML files in mappings/");
    let mut problems = Vec::new();
    for path in &files {
        let doc = yaml(path);
        let kind = kind_of(&doc);
        let rel = path.strip_prefix(&mappings).expect("below mappings/");
        let up = "../".repeat(rel.components().count() - 1);
        let want = format!("# yaml-language-server: $schema={up}schema/{kind}.json");
        let text = fs::read_to_string(path).expect("read it again");
        let first = text.lines().next().unwrap_or_default();
        if first != want {
            problems.push(format!(
                "mappings/{}: the first line is `{first}`, expected `{want}`",
                rel.display()
            ));
        }
        if !schema_names().contains(&kind) {
            problems.push(format!("mappings/{}: no `{kind}` schema", rel.display()));
            continue;
        }
        for (at, message) in complaints(&validator(kind), &doc) {
            problems.push(format!("mappings/{}: {at}: {message}", rel.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A golden case: its folder name and the lines of its `expected.txt`.
fn golden_cases() -> Vec<(String, PathBuf, Vec<String>)> {
    let dir = root().join("tests/golden");
    let mut cases: Vec<_> = fs::read_dir(&dir)
        .expect("tests/golden exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let expected = fs::read_to_string(p.join("expected.txt")).unwrap_or_default();
            let lines = expected.lines().map(str::to_string).collect();
            (name, p, lines)
        })
        .collect();
    cases.sort();
    cases
}

/// An error line of `expected.txt`: (file, JSON pointer of its field path, message).
fn error_line(line: &str) -> Option<(String, String, String)> {
    if line.contains(": warning: ") {
        return None;
    }
    let mut parts = line.splitn(5, ": ");
    let place = parts.next()?;
    let path = parts.next()?;
    let message = parts.next()?;
    let file = place.split(':').next()?.to_string();
    let pointer = path
        .replace("[", ".")
        .replace("]", "")
        .split('.')
        .map(|s| format!("/{s}"))
        .collect();
    Some((file, pointer, message.to_string()))
}

/// What the schema says about every YAML file of a golden case: file (its path in the
/// case, as `expected.txt` names it: `profiles/acme-pm10.yaml`) → complaints. `None` for a
/// file that is not YAML at all.
fn golden_complaints(case: &Path) -> BTreeMap<String, Option<Vec<(String, String)>>> {
    yaml_files(case)
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(case)
                .expect("below the case")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = fs::read_to_string(&path).expect("read a golden file");
            let doc = yaml_text(&text).ok();
            let found = doc.map(|doc| complaints(&validator(kind_of(&doc)), &doc));
            (name, found)
        })
        .collect()
}

/// Whether the schema's complaint at `at` is about `check`'s error at `pointer`: the same
/// key, the object holding an unknown key, or another key of the same object (a key of
/// one bus kind next to a key of another: `check` names the one foreign to the bus).
fn near(pointer: &str, at: &str) -> bool {
    let parent = |p: &str| p.rsplit_once('/').map(|(p, _)| p.to_string());
    let siblings = parent(pointer).is_some_and(|p| !p.is_empty() && Some(p) == parent(at));
    pointer == at || parent(pointer).as_deref() == Some(at) || siblings
}

/// The golden cases whose files `check` rejects for a key or a value the schema knows to
/// be wrong (each names one): unknown keys, unknown values, values out of the key's
/// range, a key its bus kind does not take, a duration that is none.
const REJECTED_BY_THE_SCHEMA: &[&str] = &[
    "01-misspelt-key",
    "02-misspelt-table",
    "03-misspelt-type",
    "04-misspelt-word-order",
    "12-unit-out-of-range",
    "13-address-beyond-end",
    "15-bit-16",
    "24-invalid-listen",
    "25-many-errors-one-file",
    "27-errors-in-several-files",
    "29-gateway-misspelt-key",
    "30-last-candidate-suggested",
    "31-bad-units-no-false-duplicate",
    "32-parse-error-no-follow-on",
    "34-gpio-errors",
    "35-gpio-modbus-keys-mixed",
    "37-rtu-errors",
    "38-uart-errors",
    "45-unit-out-of-range",
    "47-ha-misspelt-key",
    "50-broker-front-bounds",
    "55-unit-ids-by-bus-kind",
    "56-rtu-over-tcp-keys",
    "57-read-limits",
    "60-point-poll-interval",
    "61-point-poll-interval-garbage",
    "64-write-address-errors",
    "75-profile-errors-in-both-files",
    "77-profile-file-metadata",
    "85-commissioning-not-a-bool",
    "93-modbus-server-unit-0",
];

#[test]
fn golden_cases_check_accepts_pass_the_schema_and_those_about_keys_do_not() {
    let mut problems = Vec::new();
    let mut rejected = BTreeSet::new();
    for (name, dir, expected) in golden_cases() {
        let errors: Vec<_> = expected.iter().filter_map(|l| error_line(l)).collect();
        let found = golden_complaints(&dir);
        let complained = found.values().flatten().any(|c| !c.is_empty());
        if errors.is_empty() {
            for (file, c) in &found {
                for (at, message) in c.iter().flatten() {
                    problems.push(format!(
                        "{name}/{file} (valid for `check`): {at}: {message}"
                    ));
                }
            }
            continue;
        }
        if complained {
            rejected.insert(name.clone());
        }
        // Every complaint of the schema is one `check` makes too (at the key, or at the
        // object holding an unknown key).
        for (file, c) in &found {
            for (at, message) in c.iter().flatten() {
                let matched = errors
                    .iter()
                    .any(|(f, pointer, _)| f == file && near(pointer, at));
                if !matched {
                    problems.push(format!(
                        "{name}/{file}: the schema complains at {at} ({message}), `check` does not"
                    ));
                }
            }
        }
        // Every unknown key, unknown value or bad duration `check` reports, the schema
        // reports too.
        for (file, pointer, message) in &errors {
            let structural = ["unknown key", "unknown value", "invalid duration"]
                .iter()
                .any(|m| message.starts_with(m));
            let seen = found
                .get(file)
                .into_iter()
                .flatten()
                .flatten()
                .any(|(at, _)| {
                    at == pointer || pointer.rsplit_once('/').is_some_and(|(p, _)| p == at)
                });
            if structural && !seen {
                problems.push(format!(
                    "{name}/{file}: `check` reports `{message}` at {pointer}, the schema does not"
                ));
            }
        }
    }
    let listed: BTreeSet<String> = REJECTED_BY_THE_SCHEMA
        .iter()
        .map(|s| s.to_string())
        .collect();
    if rejected != listed {
        problems.push(format!(
            "the golden cases the schema rejects are {rejected:?}, the list says {listed:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The keys `mappings/REFERENCE.md`'s tables document, by schema (its `## Gateway file`,
/// `## Mapping file` and `## Profile file` parts), each with its default cells (one per row it is in). A table's keys are below the
/// path in backticks of the heading above it (``### `devices[].points[]` ``); a key after
/// a comma in the same cell is beside the first (`` `mqtt.upstream.cert_file`, `key_file` ``).
fn documented() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let text = fs::read_to_string(root().join("mappings/REFERENCE.md")).expect("REFERENCE.md");
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut part: Option<&str> = None;
    let mut prefix = String::new();
    let mut in_key_table = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            part = match title.trim() {
                "Gateway file" => Some("gateway"),
                "Mapping file" => Some("mapping"),
                "Profile file" => Some("profile"),
                _ => None,
            };
            prefix.clear();
            continue;
        }
        if line.starts_with("###") {
            prefix = line.split('`').nth(1).unwrap_or_default().to_string();
            continue;
        }
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let cells = table_cells(line);
        if cells.first().map(String::as_str) == Some("key") {
            in_key_table = true;
            continue;
        }
        let (Some(part), true) = (part, in_key_table) else {
            continue;
        };
        if cells.len() < 3 || cells[0].starts_with("---") {
            continue;
        }
        let mut first_parent = String::new();
        for (i, name) in cells[0].split(", ").enumerate() {
            let name = name.trim().trim_matches('`');
            let key = if i == 0 {
                first_parent = name
                    .rsplit_once('.')
                    .map(|(p, _)| p.to_string())
                    .unwrap_or_default();
                name.to_string()
            } else if first_parent.is_empty() {
                name.to_string()
            } else {
                format!("{first_parent}.{name}")
            };
            let full = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            out.entry(part.to_string())
                .or_default()
                .entry(full)
                .or_default()
                .push(cells[2].clone());
        }
    }
    out
}

/// The cells of a Markdown table row (`\|` inside a cell is no separator).
fn table_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut escaped = false;
    for c in line.trim().trim_start_matches('|').chars() {
        match c {
            '|' if !escaped => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
        escaped = c == '\\';
    }
    cells
}

/// What REFERENCE.md documents for the schema `name`: its own part, and for a profile the
/// mapping's point table too, for the keys of a profile point (every mapping point key
/// but `topic`, `key` instead: only `key` has a row of its own).
fn documented_for(
    documented: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    name: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut docs = documented.get(name).cloned().unwrap_or_default();
    if name == "profile" {
        let mapping = documented.get("mapping").cloned().unwrap_or_default();
        for (key, cells) in mapping {
            let Some(rest) = key.strip_prefix("devices[].points[].") else {
                continue;
            };
            if rest != "topic" {
                docs.entry(format!("points[].{rest}")).or_insert(cells);
            }
        }
    }
    docs
}

#[test]
fn reference_documents_every_key_of_the_schemas_and_no_other() {
    let documented = documented();
    let mut problems = Vec::new();
    for name in schema_names() {
        let keys = keys(&schema(name));
        let docs = documented_for(&documented, name);
        for k in keys.iter().filter(|k| !k.container) {
            if !docs.contains_key(&k.dotted()) {
                problems.push(format!("{name}: `{}` is not in REFERENCE.md", k.dotted()));
            }
        }
        let all: BTreeSet<String> = keys.iter().map(|k| k.dotted()).collect();
        for d in docs.keys().filter(|d| !all.contains(*d)) {
            problems.push(format!(
                "{name}: REFERENCE.md documents `{d}`, the schema has no such key"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn reference_defaults_are_the_schema_defaults() {
    let documented = documented();
    let mut problems = Vec::new();
    for name in schema_names() {
        let docs = documented_for(&documented, name);
        // A list's default is empty; a key in two rows (`length` of Modbus and of UART
        // points) has a default per bus kind.
        for k in keys(&schema(name)).into_iter().filter(|k| !k.container) {
            let Some([cell]) = docs.get(&k.dotted()).map(Vec::as_slice) else {
                continue;
            };
            // A default cell that is one literal: `30s`, `true`, `"\n"`.
            let literal = cell
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .filter(|c| !c.contains('`') && !c.contains('<'));
            let Some(doc_value) = literal.and_then(|l| yaml_text(l).ok()) else {
                continue;
            };
            match k.schema.get("default") {
                Some(d) if *d == doc_value => {}
                Some(d) => problems.push(format!(
                    "{name}: `{}`: REFERENCE.md says the default is {cell}, the key's `///` text {d}",
                    k.dotted()
                )),
                None => problems.push(format!(
                    "{name}: `{}`: REFERENCE.md says the default is {cell}, the key's `///` text names none",
                    k.dotted()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
