//! Golden tests of Home Assistant discovery: every folder under `tests/discovery/` (at
//! the workspace root) is a case with a `gateway.yaml`, its mapping file(s) and
//! `expected/`, which holds one pretty-printed JSON file per discovery config, at the
//! config topic's path (`expected/homeassistant/sensor/<unique_id>/config.json`).
//!
//! The configs derived from the case must be exactly those files. `FIELDLINK_BLESS=1`
//! writes them instead (review the diff before committing).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

fn cases() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/discovery"));
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// Every file under `dir`, by its path relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            files(root, &p, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("below the root")
                .to_string_lossy()
                .into_owned();
            out.insert(rel, fs::read_to_string(&p).expect("read an expected file"));
        }
    }
}

#[test]
fn discovery_configs_are_the_golden_files() {
    let bless = std::env::var_os("FIELDLINK_BLESS").is_some();
    let cases = cases();
    assert!(!cases.is_empty(), "no discovery cases");
    for case in cases {
        let checked = fieldlink::config::load(&case.join("gateway.yaml"))
            .unwrap_or_else(|d| panic!("{}: {d:?}", case.display()));
        let mut got = BTreeMap::new();
        for c in fieldlink::homeassistant::configs(&checked.model) {
            let text = serde_json::to_string_pretty(&c.payload).expect("JSON") + "\n";
            assert!(
                got.insert(format!("{}.json", c.topic), text).is_none(),
                "{}: config topic {} twice",
                case.display(),
                c.topic
            );
        }
        let expected_dir = case.join("expected");
        if bless {
            let _ = fs::remove_dir_all(&expected_dir);
            for (rel, text) in &got {
                let p = expected_dir.join(rel);
                fs::create_dir_all(p.parent().expect("a parent")).expect("create dirs");
                fs::write(&p, text).expect("write");
            }
            continue;
        }
        let mut want = BTreeMap::new();
        files(&expected_dir, &expected_dir, &mut want);
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}: configs missing {missing:?}, unexpected {extra:?}",
            case.display()
        );
        for (rel, text) in &got {
            assert_eq!(
                text,
                &want[rel],
                "{}: {rel} differs (FIELDLINK_BLESS=1 rewrites the golden files)",
                case.display()
            );
        }
    }
}
