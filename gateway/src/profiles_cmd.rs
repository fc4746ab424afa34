//! `fieldlink profiles`: the device profiles a configuration can use (name, manufacturer,
//! model, kind, point count), and `fieldlink profiles show NAME`, one profile's file as
//! shipped (or the user's own).

use std::{io::Write, path::PathBuf};

use crate::config::{self, Diagnostic, ProfilesError, Severity};

/// `fieldlink profiles` flags.
#[derive(Debug, clap::Args)]
pub struct ProfilesArgs {
    /// What to do; without it, list them.
    #[command(subcommand)]
    pub command: Option<ProfilesCommand>,
    /// A gateway file: its `profiles:` directories are listed too.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

/// `fieldlink profiles` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ProfilesCommand {
    /// Print a profile's file as shipped (or your own, with --config): its line numbers
    /// are those `check` names.
    Show {
        /// The profile's name (`eastron-sdm630`).
        name: String,
    },
}

/// Exit code for an unknown profile name (EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for a configuration that does not load (EX_CONFIG).
const EX_CONFIG: u8 = 78;

/// Run `fieldlink profiles`: results on `out`, problems on `err`; the exit code.
pub fn run(args: &ProfilesArgs, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let config = args.config.as_deref();
    let result = match &args.command {
        None => config::list_profiles(config).map(|(list, warnings)| {
            print_list(&list, out);
            warnings
        }),
        Some(ProfilesCommand::Show { name }) => {
            config::profile_text(name, config).map(|(text, _)| {
                let _ = out.write_all(text.as_bytes());
                Vec::new()
            })
        }
    };
    match result {
        Ok(warnings) => {
            for w in warnings {
                let _ = writeln!(err, "{w}");
            }
            0
        }
        Err(ProfilesError::Unknown { name, suggestion }) => {
            let hint = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => "`fieldlink profiles` lists them".into(),
            };
            let _ = writeln!(err, "error: unknown profile `{name}`; {hint}");
            EX_USAGE
        }
        Err(ProfilesError::Config(diags)) => {
            report(&diags, err);
            EX_CONFIG
        }
    }
}

/// The diagnostics of a configuration that does not load, and the summary line.
fn report(diags: &[Diagnostic], err: &mut impl Write) {
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let _ = writeln!(err, "{errors} error(s); the configuration was not loaded.");
}

/// The list as a table, its columns as wide as their longest entry.
fn print_list(list: &[config::ProfileSummary], out: &mut impl Write) {
    if list.is_empty() {
        let _ = writeln!(out, "No profiles.");
        return;
    }
    let header = ["NAME", "MANUFACTURER", "MODEL", "KIND", "POINTS", "FROM"];
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.manufacturer.clone(),
                p.model.clone(),
                p.kind.to_string(),
                p.points.to_string(),
                p.source.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else if i == 4 {
                s.push_str(&format!("{c:>w$}  "));
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s
    };
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
}
