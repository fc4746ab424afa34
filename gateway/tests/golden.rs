//! Golden tests of the configuration checker (`fieldlink check`).
//!
//! Every folder under `tests/golden/` (at the workspace root) is one case: a
//! `gateway.yaml`, the mapping file(s) it lists, and `expected.txt` holding the exact
//! diagnostics, one per line, in the `FILE:LINE:COL: field.path: message; hint` format
//! with paths relative to the case folder (`mapping.yaml:7:18: ...`).
//!
//! * A case whose `expected.txt` has at least one error line must fail to load, and its
//!   full diagnostic list (errors, then warnings) must match.
//! * A case whose `expected.txt` has only `warning:` lines (or is empty) must load, and its
//!   warnings must match.
//!
//! The same cases are run through the binary too, from inside the case folder, so its
//! output can be compared line for line and its exit code (78 on error, 0 otherwise)
//! checked.

use std::{
    fs,
    path::{Path, PathBuf, MAIN_SEPARATOR},
    process::{Command, Output},
};

use fieldlink::config::{self, Diagnostic, Severity};

/// Where the cases live.
fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden"))
}

/// The workspace root (where `mappings/` lives).
fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every case folder, sorted by name.
fn cases() -> Vec<PathBuf> {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("read a directory entry of tests/golden")
                .path()
        })
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn case_name(case: &Path) -> String {
    case.file_name().map_or_else(
        || case.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The lines of `expected.txt`, trailing whitespace and newlines removed.
fn expected_lines(case: &Path) -> Result<Vec<String>, String> {
    let path = case.join("expected.txt");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .trim_end()
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn is_warning_line(line: &str) -> bool {
    line.contains(": warning: ")
}

/// True when the case expects at least one error (not only warnings).
fn expects_error(lines: &[String]) -> bool {
    lines.iter().any(|l| !is_warning_line(l))
}

/// A diagnostic in the `Display` format, with every path below `case` written relative
/// to it (the file of the diagnostic and any path quoted in the message or hint).
fn render(case: &Path, d: &Diagnostic) -> String {
    let prefix = format!("{}{MAIN_SEPARATOR}", case.display());
    let relative = |s: &str| s.replace(&prefix, "");
    let file = d.file.strip_prefix(case).unwrap_or(&d.file);
    let mut line = format!("{}:{}:{}: ", file.display(), d.line, d.column);
    if !d.path.is_empty() {
        line.push_str(&d.path);
        line.push_str(": ");
    }
    if d.severity == Severity::Warning {
        line.push_str("warning: ");
    }
    line.push_str(&relative(&d.message));
    if let Some(h) = &d.hint {
        line.push_str("; ");
        line.push_str(&relative(h));
    }
    line
}

fn show(lines: &[String]) -> String {
    if lines.is_empty() {
        "    (nothing)".to_string()
    } else {
        lines
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Run `fieldlink check --config gateway.yaml` inside the case folder.
fn run_check(dir: &Path, config: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .current_dir(dir)
        .args(["check", "--config", config])
        .output()
        .expect("run the fieldlink binary")
}

fn fail_if_any(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_cases_match_expected() {
    let cases = cases();
    assert!(
        cases.len() >= 15,
        "expected at least 15 golden cases in {}, found {}",
        golden_dir().display(),
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case_name(case);
        let expected = match expected_lines(case) {
            Ok(l) => l,
            Err(e) => {
                println!("--- {name}: {e}");
                failures.push(format!("{name} ({e})"));
                continue;
            }
        };
        let result = config::load(&case.join("gateway.yaml"));
        let loaded = result.is_ok();
        let diags = match &result {
            Ok(checked) => &checked.warnings,
            Err(diags) => diags,
        };
        let actual: Vec<String> = diags.iter().map(|d| render(case, d)).collect();
        let mut problems = Vec::new();
        if loaded == expects_error(&expected) {
            problems.push(if loaded {
                "the configuration loaded, but errors were expected"
            } else {
                "the configuration was rejected, but only warnings were expected"
            });
        }
        if actual != expected {
            problems.push("the diagnostics differ");
        }
        if !problems.is_empty() {
            println!(
                "--- {name}: {}\n  expected:\n{}\n  actual:\n{}",
                problems.join("; "),
                show(&expected),
                show(&actual)
            );
            failures.push(name);
        }
    }
    fail_if_any("golden diagnostics", &failures);
}

#[test]
fn check_exits_78_on_every_error_case() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases() {
        let name = case_name(case);
        let expected = match expected_lines(case) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name} ({e})"));
                continue;
            }
        };
        if !expects_error(&expected) {
            continue;
        }
        checked += 1;
        let out = run_check(case, "gateway.yaml");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<String> = stderr.lines().map(|l| l.trim_end().to_string()).collect();
        // The last line is the summary: `N error(s); the configuration was not loaded.`
        let summary = lines.pop().unwrap_or_default();
        let errors = expected.iter().filter(|l| !is_warning_line(l)).count();
        let want_summary = format!("{errors} error(s); the configuration was not loaded.");
        let mut problems = Vec::new();
        if out.status.code() != Some(78) {
            problems.push(format!("exit status {:?}, expected 78", out.status.code()));
        }
        if lines != expected {
            problems.push(format!(
                "stderr differs\n  expected:\n{}\n  actual:\n{}",
                show(&expected),
                show(&lines)
            ));
        }
        if summary != want_summary {
            problems.push(format!(
                "summary line `{summary}`, expected `{want_summary}`"
            ));
        }
        if !out.stdout.is_empty() {
            problems.push(format!(
                "unexpected stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        if !problems.is_empty() {
            println!("--- {name}: {}", problems.join("\n"));
            failures.push(name);
        }
    }
    assert!(checked > 0, "no error case found");
    fail_if_any("`fieldlink check` on error cases", &failures);
}

#[test]
fn check_accepts_shipped_examples() {
    let out = run_check(&workspace_root(), "mappings/gateway.yaml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "`fieldlink check --config mappings/gateway.yaml` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK:"), "no `OK:` summary in:\n{stdout}");
    assert!(
        !stdout.contains(": warning: "),
        "the shipped example should not warn:\n{stdout}"
    );

    // The cases that expect only warnings are valid too: exit 0, the warnings on stdout.
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases() {
        let name = case_name(case);
        let Ok(expected) = expected_lines(case) else {
            continue; // reported by golden_cases_match_expected
        };
        if expects_error(&expected) {
            continue;
        }
        checked += 1;
        let out = run_check(case, "gateway.yaml");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let warnings: Vec<String> = stdout
            .lines()
            .filter(|l| is_warning_line(l))
            .map(|l| l.trim_end().to_string())
            .collect();
        let mut problems = Vec::new();
        if out.status.code() != Some(0) {
            problems.push(format!(
                "exit status {:?}, expected 0; stderr:\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !stdout.lines().any(|l| l.starts_with("OK:")) {
            problems.push(format!("no `OK:` summary in stdout:\n{stdout}"));
        }
        if warnings != expected {
            problems.push(format!(
                "warnings differ\n  expected:\n{}\n  actual:\n{}",
                show(&expected),
                show(&warnings)
            ));
        }
        if !problems.is_empty() {
            println!("--- {name}: {}", problems.join("\n"));
            failures.push(name);
        }
    }
    assert!(checked > 0, "no warning-only case found");
    fail_if_any("`fieldlink check` on warning-only cases", &failures);
}
