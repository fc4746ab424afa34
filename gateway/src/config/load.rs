//! The entry points: [`load`] a gateway file from disk or [`check_sources`] from text,
//! collecting every problem of every file.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    embedded, parse_yaml, profile_use, resolve_mappings, Cx, Diagnostic, GatewayFile, MappingFile,
    ParseProblem, Severity, Validator,
};
use crate::model::{Bus, Model};

/// A valid model plus the warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    /// The model.
    pub model: Model,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

/// Give every point its slot (its index in [`Model::points`] order) and share the buses.
fn number_points(buses: Vec<Bus>) -> Vec<Arc<Bus>> {
    let mut slot = 0u32;
    buses
        .into_iter()
        .map(|mut b| {
            for d in &mut b.devices {
                // Not shared yet: make_mut never copies here.
                for p in &mut Arc::make_mut(d).points {
                    p.slot = slot;
                    slot += 1;
                }
            }
            Arc::new(b)
        })
        .collect()
}

/// Load and validate the gateway file at `path` and every mapping file it names.
pub fn load(path: &Path) -> Result<Checked, Vec<Diagnostic>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                path: String::new(),
                message: format!("cannot read the gateway file: {e}"),
                hint: Some("pass the right file with --config".into()),
            }])
        }
    };
    check_sources(path, &text, |entries, diags| {
        let base = path.parent().unwrap_or(Path::new("."));
        let (files, missing) = resolve_mappings(base, entries);
        for m in missing {
            diags.push((format!("mapping file {m}"), None));
        }
        files
            .into_iter()
            .filter_map(|f| match std::fs::read_to_string(&f) {
                Ok(t) => Some((f, t)),
                Err(e) => {
                    diags.push((format!("cannot read `{}`: {e}", f.display()), None));
                    None
                }
            })
            .collect()
    })
}

/// Problems found while resolving mapping files: (message, hint).
pub type ResolveProblems = Vec<(String, Option<String>)>;

/// Validate a gateway file's text; `resolve` turns its `mappings:` entries into
/// `(path, text)` pairs (from disk, or from memory for `fieldlink demo`).
pub fn check_sources(
    gateway_path: &Path,
    gateway_text: &str,
    resolve: impl FnOnce(&[String], &mut ResolveProblems) -> Vec<(PathBuf, String)>,
) -> Result<Checked, Vec<Diagnostic>> {
    let mut v = Validator::default();
    let gw_file = gateway_path.to_path_buf();
    let gw: GatewayFile = match parse_yaml(gateway_text) {
        Ok(g) => g,
        Err(p) => {
            v.parse_problem(&gw_file, p);
            return Err(v.diags);
        }
    };
    let mut problems = Vec::new();
    let sources = resolve(&gw.mappings.value.to_vec(), &mut problems);
    for (msg, hint) in problems {
        v.error(&Cx::new(&gw_file).at("mappings"), &gw.mappings, msg, hint);
    }
    let mut files = vec![gw_file.clone()];
    let mut mappings = Vec::new();
    for (path, text) in sources {
        files.push(path.clone());
        match parse_yaml::<MappingFile>(&text) {
            Ok(m) => mappings.push((path, m)),
            Err(p) => v.parse_problem(&path, p),
        }
    }
    v.parse_failed = files.len() - 1 != mappings.len();
    // Device profiles (#25): the user's profiles read, then every device using one
    // expanded before validation; what is found about the points it gave is moved to
    // where it is written once validation is done.
    v.upstream = gw.mqtt.upstream.is_some();
    let (mut profiles, profile_files) = v.profiles(&Cx::new(&gw_file), &gw);
    let uses = v.expand_profiles(&mut mappings, &mut profiles);
    files.extend(profile_files);
    let header = v.gateway(&Cx::new(&gw_file), &gw);
    let names = header.as_ref().map(|h| {
        crate::topics::Topics::new(
            &h.base_topic,
            &h.id,
            h.homeassistant
                .as_ref()
                .map(|ha| (ha.discovery_prefix.as_str(), ha.embedded, ha.upstream)),
            h.mqtt.upstream.as_ref().map_or("", |u| u.prefix.as_str()),
        )
    });
    let buses = v.mappings(&mappings, names.as_ref());
    let modbus_server = gw.modbus_server.as_ref().map(|s| {
        let embedded = header.as_ref().and_then(|h| h.mqtt.embedded.as_ref());
        let cx = Cx::new(&gw_file).at("modbus_server");
        v.modbus_server(&cx, s, embedded, (&buses, &mappings))
    });
    profile_use::remap(&mut v.diags, &uses);
    // Report in file order, then by position.
    v.diags.sort_by_key(|d| {
        (
            files
                .iter()
                .position(|f| *f == d.file)
                .unwrap_or(usize::MAX),
            d.line,
            d.column,
        )
    });
    if v.diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(v.diags);
    }
    let Some(h) = header else {
        return Err(v.diags);
    };
    let model = Model {
        gateway_id: h.id,
        base_topic: h.base_topic,
        mqtt: h.mqtt,
        diagnostics_interval: h.diagnostics_interval,
        buses: number_points(buses),
        homeassistant: h.homeassistant,
        commissioning: h.commissioning,
        modbus_server,
    };
    embedded::warnings(&model, &gw_file, &gw.mqtt.embedded, &mut v.diags);
    Ok(Checked {
        model,
        warnings: v.diags,
        files,
    })
}

impl Validator {
    /// A file that did not parse: its first structural problem.
    fn parse_problem(&mut self, file: &Path, p: ParseProblem) {
        self.push(
            Severity::Error,
            file,
            (p.line, p.column),
            p.path,
            p.message,
            p.hint,
        );
    }
}
