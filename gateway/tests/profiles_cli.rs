//! `fieldlink profiles` as a user runs it: the list (shipped profiles, and with
//! `--config` the gateway file's own directories), `show NAME` printing a profile's file
//! byte for byte, an unknown name (exit 64, did-you-mean) and a gateway file that does not
//! load (exit 78).

use std::{path::Path, process::Command};

const PROFILE: &str = "\
# My meter.
profile:
  name: acme-pm10
  manufacturer: Acme
  model: PM10 three-phase
  kind: energy_meter
points:
  - { key: voltage, table: input, address: 0, type: f32, unit: V }
  - { key: power, table: input, address: 12, type: f32, unit: W }
";

/// Run the binary with `args` in `dir`: exit code, stdout, stderr.
fn fieldlink(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run the fieldlink binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A gateway file with `profiles: mine`, the profile in `mine/`.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("mine")).expect("mkdir");
    std::fs::write(dir.path().join("mine/acme-pm10.yaml"), PROFILE).expect("write");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "id: t\nmappings: m.yaml\nprofiles: mine\n",
    )
    .expect("write");
    dir
}

#[test]
fn lists_the_profiles_of_the_configuration_and_shows_one() {
    let dir = setup();
    let (code, out, err) = fieldlink(dir.path(), &["profiles", "--config", "gateway.yaml"]);
    assert_eq!(code, Some(0), "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME"), "{out}");
    for col in ["MANUFACTURER", "MODEL", "KIND", "POINTS"] {
        assert!(header.contains(col), "{header}");
    }
    let row = out
        .lines()
        .find(|l| l.starts_with("acme-pm10 "))
        .unwrap_or_else(|| panic!("no acme-pm10 in:\n{out}"));
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            "acme-pm10",
            "Acme",
            "PM10 three-phase",
            "energy_meter",
            "2",
            "mine/acme-pm10.yaml"
        ]
    );
    // Without --config, only the shipped ones: not this one.
    let (code, out, _) = fieldlink(dir.path(), &["profiles"]);
    assert_eq!(code, Some(0));
    assert!(!out.contains("acme-pm10"), "{out}");

    let (code, out, err) = fieldlink(
        dir.path(),
        &["profiles", "show", "acme-pm10", "--config", "gateway.yaml"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, PROFILE, "the file as written");
}

#[test]
fn an_unknown_name_exits_64_with_a_did_you_mean() {
    let dir = setup();
    let (code, out, err) = fieldlink(
        dir.path(),
        &["profiles", "show", "acme-pm01", "--config", "gateway.yaml"],
    );
    assert_eq!(code, Some(64));
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim_end(),
        "error: unknown profile `acme-pm01`; did you mean `acme-pm10`?"
    );
}

#[test]
fn a_broken_profile_directory_exits_78_with_its_diagnostics() {
    let dir = setup();
    std::fs::write(
        dir.path().join("mine/acme-pm10.yaml"),
        PROFILE.replace("kind: energy_meter", "kind: energy_metre"),
    )
    .expect("write");
    let (code, out, err) = fieldlink(dir.path(), &["profiles", "--config", "gateway.yaml"]);
    assert_eq!(code, Some(78));
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "mine/acme-pm10.yaml:6:9: profile.kind: unknown value `energy_metre`; did you mean `energy_meter`?",
            "1 error(s); the configuration was not loaded.",
        ]
    );
}
