//! Device profiles: the shipped ones, compiled into the binary from
//! `mappings/profiles/*.yaml` (`build.rs`), and the user's own from the gateway file's
//! `profiles:` directories; each parsed with its line and column and its metadata
//! checked. A device using one is expanded in `profile_use.rs`; `fieldlink profiles`
//! lists them ([`list_profiles`], [`profile_text`]).

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    did_you_mean, parse_yaml, Cx, Diagnostic, GatewayFile, ParseProblem, ProfileFile, Severity,
    Spanned, Validator,
};

include!(concat!(env!("OUT_DIR"), "/shipped_profiles.rs"));

/// The directory shipped profiles are shown in, in messages (they are in the binary; the
/// Debian package installs copies under `/usr/share/fieldlink/profiles`, and `fieldlink
/// profiles show NAME` prints one, with the same line numbers).
pub const SHIPPED_DIR: &str = "<shipped>";

/// One profile: where it is from, its text and what it parsed to.
#[derive(Debug)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// Its file, as shown in messages (`<shipped>/<name>.yaml` for a shipped one).
    pub path: PathBuf,
    /// Compiled into the binary (not one of the user's).
    pub shipped: bool,
    /// The file's text.
    pub text: Cow<'static, str>,
    /// The file, when it parsed.
    pub file: Option<ProfileFile>,
    /// Parsed (or tried: a shipped profile that does not parse is reported once).
    tried: bool,
}

/// Every profile a configuration can use, by name; shipped ones are parsed when first
/// used.
#[derive(Debug, Default)]
pub(super) struct Library {
    profiles: BTreeMap<String, Profile>,
}

/// The shipped profile `name`'s file as shown in messages.
fn shipped_path(name: &str) -> PathBuf {
    Path::new(SHIPPED_DIR).join(format!("{name}.yaml"))
}

impl Library {
    /// The shipped profiles, not parsed yet.
    fn shipped() -> Library {
        Library::from_table(SHIPPED)
    }

    /// The profiles of a table of (name, text), as shipped ones.
    pub(super) fn from_table(table: &'static [(&'static str, &'static str)]) -> Library {
        let profiles = table
            .iter()
            .map(|(name, text)| {
                let p = Profile {
                    name: (*name).to_string(),
                    path: shipped_path(name),
                    shipped: true,
                    text: Cow::Borrowed(text),
                    file: None,
                    tried: false,
                };
                ((*name).to_string(), p)
            })
            .collect();
        Library { profiles }
    }

    /// Every name.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// Whether a profile of this name exists (parsed or not).
    pub(super) fn contains(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// The profile `name`, parsed (a shipped one on its first use, its problems reported
    /// into `v`); `None` when there is none or it does not parse.
    pub(super) fn get(&mut self, v: &mut Validator, name: &str) -> Option<&Profile> {
        let p = self.profiles.get_mut(name)?;
        if !p.tried {
            p.tried = true;
            p.file = v.parse_profile(&p.path, &p.text, name, true);
        }
        self.profiles.get(name).filter(|p| p.file.is_some())
    }

    /// A name close to `name`, for a did-you-mean.
    pub(super) fn suggest(&self, name: &str) -> Option<&str> {
        did_you_mean(name, self.names())
    }
}

impl Validator {
    /// The profiles a gateway file can use: the shipped ones and those of its `profiles:`
    /// directories (`cx` is the gateway file). Returns the library and the user's
    /// profile files read.
    pub(super) fn profiles(&mut self, cx: &Cx, gw: &GatewayFile) -> (Library, Vec<PathBuf>) {
        self.profiles_over(Library::shipped(), cx, gw)
    }

    /// [`Validator::profiles`] over the shipped profiles of `lib`.
    pub(super) fn profiles_over(
        &mut self,
        mut lib: Library,
        cx: &Cx,
        gw: &GatewayFile,
    ) -> (Library, Vec<PathBuf>) {
        let mut files = Vec::new();
        let Some(dirs) = &gw.profiles else {
            return (lib, files);
        };
        let pcx = cx.at("profiles");
        for entry in dirs.value.to_vec() {
            let dir = cx.dir().join(&entry);
            let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    })
                    .collect(),
                Err(e) => {
                    self.error(
                        &pcx,
                        dirs,
                        format!("cannot read the profile directory `{}`: {e}", dir.display()),
                        Some("`profiles:` names directories of profile files (`profiles/`)".into()),
                    );
                    continue;
                }
            };
            if found.is_empty() {
                self.warn(
                    &pcx,
                    dirs,
                    format!("directory `{entry}` holds no .yaml file"),
                );
            }
            found.sort();
            for f in found {
                self.user_profile(&mut lib, &f);
                files.push(f);
            }
        }
        (lib, files)
    }

    /// One of the user's profile files, into `lib`.
    fn user_profile(&mut self, lib: &mut Library, file: &Path) {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                self.push(
                    Severity::Error,
                    file,
                    (0, 0),
                    "",
                    format!("cannot read `{}`: {e}", file.display()),
                    None,
                );
                return;
            }
        };
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = self.parse_profile(file, &text, &stem, false);
        // A file that does not parse still takes its name: a device using it is not told
        // the profile does not exist.
        let name = parsed
            .as_ref()
            .map_or(stem, |p| p.profile.name.value.clone());
        let cx = Cx::new(file);
        let name_at = parsed
            .as_ref()
            .map_or((0, 0), |p| super::at(&p.profile.name));
        match lib.profiles.get(&name) {
            Some(old) if !old.shipped => {
                self.error(
                    &cx.at("profile.name"),
                    name_at,
                    format!(
                        "profile `{name}` is already defined in {}",
                        old.path.display()
                    ),
                    Some("give every profile its own name".into()),
                );
                return;
            }
            Some(_) => self.warn(
                &cx.at("profile.name"),
                name_at,
                format!("replaces the shipped profile `{name}`"),
            ),
            None => {}
        }
        let p = Profile {
            name: name.clone(),
            path: file.to_path_buf(),
            shipped: false,
            text: Cow::Owned(text),
            file: parsed,
            tried: true,
        };
        lib.profiles.insert(name, p);
    }

    /// Parse a profile file and check its metadata; `stem` is its file name without
    /// `.yaml`.
    pub(super) fn parse_profile(
        &mut self,
        file: &Path,
        text: &str,
        stem: &str,
        shipped: bool,
    ) -> Option<ProfileFile> {
        match parse_yaml::<ProfileFile>(text) {
            Ok(p) => {
                self.profile_meta(&Cx::new(file), &p, stem, shipped);
                Some(p)
            }
            Err(p) => {
                let p = profile_problem(p);
                self.push(
                    Severity::Error,
                    file,
                    (p.line, p.column),
                    p.path,
                    p.message,
                    p.hint,
                );
                None
            }
        }
    }

    /// A profile's metadata and point keys.
    fn profile_meta(&mut self, cx: &Cx, p: &ProfileFile, stem: &str, shipped: bool) {
        let m = &p.profile;
        let mcx = cx.at("profile");
        let name = &m.name.value;
        if !is_profile_name(name) {
            self.error(
                &mcx.at("name"),
                &m.name,
                format!("profile name `{name}` may only use lower-case letters, digits and `-`"),
                Some("name it `<manufacturer>-<model>` in lower case: `eastron-sdm630`".into()),
            );
        } else if name != stem {
            self.error(
                &mcx.at("name"),
                &m.name,
                format!("profile `{name}` is in a file named `{stem}`"),
                Some(format!("name the file `{name}.yaml`")),
            );
        }
        for (key, s) in [("manufacturer", &m.manufacturer), ("model", &m.model)] {
            self.not_blank(&mcx.at(key), s);
        }
        self.profile_document(&mcx, p, shipped);
        if let Some(s) = &m.serial {
            let scx = mcx.at("serial");
            self.int_in(
                &scx.at("baud"),
                s.baud.as_ref(),
                "baud rate",
                (300, 4_000_000),
                0,
            );
            self.int_in(
                &scx.at("data_bits"),
                s.data_bits.as_ref(),
                "data_bits",
                (7, 8),
                0,
            );
            self.int_in(
                &scx.at("stop_bits"),
                s.stop_bits.as_ref(),
                "stop_bits",
                (1, 2),
                0,
            );
        }
        self.int_in(&mcx.at("unit"), m.unit.as_ref(), "unit id", (0, 255), 0);
        let limits = [
            ("max_read_registers", &m.max_read_registers, (1, 125)),
            ("max_read_bits", &m.max_read_bits, (1, 2000)),
            ("max_gap", &m.max_gap, (0, 124)),
        ];
        for (key, f, range) in limits {
            self.int_in(&mcx.at(key), f.as_ref(), key, range, 0);
        }
        if let Some(ha) = &m.homeassistant {
            for (key, s) in [("manufacturer", &ha.manufacturer), ("model", &ha.model)] {
                if let Some(s) = s {
                    self.not_blank(&mcx.at("homeassistant").at(key), s);
                }
            }
        }
        self.profile_keys(cx, p);
    }

    /// `profile.document`: a title, and a version or a date.
    fn profile_document(&mut self, mcx: &Cx, p: &ProfileFile, shipped: bool) {
        let Some(d) = &p.profile.document else {
            if shipped {
                self.error(
                    &mcx.at("document"),
                    &p.profile.name,
                    "a shipped profile names the vendor document it was written from",
                    Some("add `document: {title: ..., version: ...}`".into()),
                );
            }
            return;
        };
        let dcx = mcx.at("document");
        self.not_blank(&dcx.at("title"), &d.title);
        if d.version.is_none() && d.date.is_none() {
            self.error(
                &dcx,
                &d.title,
                "the document needs its `version` or its `date`",
                Some("add `version: \"V1.8\"` or `date: \"2017-03-15\"`".into()),
            );
        }
        if let Some(v) = &d.version {
            self.not_blank(&dcx.at("version"), v);
        }
        if let Some(date) = d.date.as_ref().filter(|s| !is_date(&s.value)) {
            self.error(
                &dcx.at("date"),
                date,
                format!("`{}` is not a date", date.value),
                Some("write it `YYYY-MM-DD` (or `YYYY-MM`), in quotes: `\"2017-03-15\"`".into()),
            );
        }
        if let Some(url) = d
            .url
            .as_ref()
            .filter(|u| !(u.value.starts_with("https://") || u.value.starts_with("http://")))
        {
            self.error(
                &dcx.at("url"),
                url,
                format!("`{}` is not a web address", url.value),
                Some("write it in full: `https://...`".into()),
            );
        }
    }

    /// Point keys: lower snake case, each once.
    fn profile_keys(&mut self, cx: &Cx, p: &ProfileFile) {
        if p.points.is_empty() {
            self.warn(
                &cx.at("points"),
                &p.profile.name,
                "the profile has no points",
            );
        }
        let mut seen: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (i, point) in p.points.iter().enumerate() {
            let key = &point.0.topic;
            let kcx = cx.item("points", i).at("key");
            if !is_key(&key.value) {
                self.error(
                    &kcx,
                    key,
                    format!("point key `{}` is not in lower snake case", key.value),
                    Some("use lower-case letters, digits and `_`, starting with a letter: `voltage_l1`".into()),
                );
            }
            if let Some(first) = seen.get(key.value.as_str()) {
                self.error(
                    &kcx,
                    key,
                    format!(
                        "point key `{}` is already used at line {}",
                        key.value, first.0
                    ),
                    Some("every point of a profile needs its own key".into()),
                );
            } else {
                seen.insert(&key.value, super::at(key));
            }
        }
    }

    /// A text that must not be empty.
    fn not_blank(&mut self, cx: &Cx, s: &Spanned<String>) {
        if s.value.trim().is_empty() {
            self.error(cx, s, "must not be empty", None);
        }
    }
}

/// A parse problem in a profile in the words of a profile: its points have `key` where a
/// mapping point has `topic`.
fn profile_problem(mut p: ParseProblem) -> ParseProblem {
    let in_point = p.path.starts_with("points[");
    if in_point {
        p.message = p
            .message
            .replace("missing field `topic`", "a profile point needs `key`");
        if let Some(h) = &mut p.hint {
            *h = h
                .replace("`topic`", "`key`")
                .replace("keys here: topic, ", "keys here: ");
        }
    }
    p
}

/// `eastron-sdm630`: lower-case letters and digits in words joined by `-`.
fn is_profile_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `voltage_l1`: lower snake case, starting with a letter.
fn is_key(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `2017-03-15`, or as precise as the document is: `2017-03`, `2017`.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    !parts.is_empty()
        && parts.len() <= 3
        && digits(parts[0], 4)
        && parts[1..].iter().all(|p| digits(p, 2))
}

/// One line of `fieldlink profiles`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSummary {
    /// Name.
    pub name: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Kind (`energy_meter`, ...).
    pub kind: &'static str,
    /// Number of points.
    pub points: usize,
    /// `shipped`, or the user's file.
    pub source: String,
}

/// Why `fieldlink profiles` could not answer.
#[derive(Debug)]
pub enum ProfilesError {
    /// The gateway file (`--config`) or a profile in its directories has errors.
    Config(Vec<Diagnostic>),
    /// No profile of that name; a close one, if any.
    Unknown {
        /// The name asked for.
        name: String,
        /// A close name.
        suggestion: Option<String>,
    },
}

/// The library of `gateway` (the shipped profiles only without one), with the problems
/// found reading it (errors and warnings).
fn library_of(gateway: Option<&Path>) -> Result<(Library, Vec<Diagnostic>), ProfilesError> {
    let mut v = Validator::default();
    let Some(path) = gateway else {
        return Ok((Library::shipped(), Vec::new()));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ProfilesError::Config(vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the gateway file: {e}"),
            hint: Some("pass the right file with --config".into()),
        }])
    })?;
    let gw: GatewayFile = parse_yaml(&text).map_err(|p| {
        v.push(
            Severity::Error,
            path,
            (p.line, p.column),
            p.path,
            p.message,
            p.hint,
        );
        ProfilesError::Config(std::mem::take(&mut v.diags))
    })?;
    let (lib, _) = v.profiles(&Cx::new(path), &gw);
    if v.error_count() > 0 {
        return Err(ProfilesError::Config(v.diags));
    }
    Ok((lib, v.diags))
}

/// `fieldlink profiles`: every profile (shipped, and with `gateway` those of its
/// `profiles:` directories), sorted by name, and the warnings found.
pub fn list_profiles(
    gateway: Option<&Path>,
) -> Result<(Vec<ProfileSummary>, Vec<Diagnostic>), ProfilesError> {
    let (mut lib, mut warnings) = library_of(gateway)?;
    let mut v = Validator::default();
    let names: Vec<String> = lib.names().map(str::to_string).collect();
    let mut out = Vec::new();
    for name in names {
        let Some(p) = lib.get(&mut v, &name) else {
            continue;
        };
        let Some(f) = &p.file else { continue };
        out.push(ProfileSummary {
            name: name.clone(),
            manufacturer: f.profile.manufacturer.value.clone(),
            model: f.profile.model.value.clone(),
            kind: f.profile.kind.value.name(),
            points: f.points.len(),
            source: if p.shipped {
                "shipped".into()
            } else {
                p.path.display().to_string()
            },
        });
    }
    warnings.extend(v.diags);
    Ok((out, warnings))
}

/// `fieldlink profiles show NAME`: the profile's file as shipped (or the user's), and
/// where it is from.
pub fn profile_text(
    name: &str,
    gateway: Option<&Path>,
) -> Result<(String, PathBuf), ProfilesError> {
    let (lib, _) = library_of(gateway)?;
    match lib.profiles.get(name) {
        Some(p) => Ok((p.text.to_string(), p.path.clone())),
        None => Err(ProfilesError::Unknown {
            name: name.to_string(),
            suggestion: lib.suggest(name).map(str::to_string),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_dates() {
        assert!(is_profile_name("eastron-sdm630"));
        assert!(is_profile_name("xy-md02"));
        assert!(!is_profile_name("Eastron-SDM630"));
        assert!(!is_profile_name("a--b"));
        assert!(!is_profile_name("-a"));
        assert!(is_key("voltage_l1"));
        assert!(!is_key("1phase"));
        assert!(!is_key("Voltage"));
        assert!(is_date("2017-03-15"));
        assert!(is_date("2016-05"));
        assert!(!is_date("15.03.2017"));
        assert!(!is_date("2017-3-15"));
    }

    /// Every shipped profile parses, its metadata is complete and its points are valid
    /// on a Modbus device without a warning.
    #[test]
    fn every_shipped_profile_is_valid() {
        for (name, _) in SHIPPED {
            let diags = super::super::profile_use::check_profile(name, None);
            let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
            assert!(
                lines.is_empty(),
                "shipped profile {name}:\n{}",
                lines.join("\n")
            );
        }
    }
}
