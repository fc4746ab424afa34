//! Compiles the shipped device profiles into the binary: every `*.yaml` file of
//! `mappings/profiles/` becomes an entry of a table `(name, text)` (the name is the file
//! name without `.yaml`), so a new profile needs no code change. Without the directory
//! (a checkout where it is empty: git keeps no empty directories) the table is empty.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = manifest.join("../mappings/profiles");
    // A directory here: cargo re-runs this script when any file in it changes, is added
    // or is removed (and on every build while it does not exist; the table is then only
    // rewritten when it changed, so the crate is not rebuilt for it).
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_str()?.to_string();
                    let full = p.canonicalize().ok()?;
                    Some((stem, full))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from(
        "/// The shipped profiles: (name, the file's text), sorted by name.\n\
         pub(crate) static SHIPPED: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &files {
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("shipped_profiles.rs");
    if fs::read_to_string(&dest).is_ok_and(|old| old == out) {
        return;
    }
    if let Err(e) = fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
