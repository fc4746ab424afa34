//! Topic rights of the embedded broker's clients: a rights file in Mosquitto's
//! `acl_file` format, the defaults without one, and the topics only the gateway may write.
//!
//! ```text
//! # rules before the first `user` line are for anonymous clients
//! topic read casa/#
//! user homeassistant
//! topic read #
//! topic write casa/+/+/set
//! topic readwrite homeassistant/#
//! # `pattern` rules are for every client; %u is the user name, %c the client id
//! pattern readwrite devices/%c/#
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default when omitted) or `deny`. A `deny`
//! rule wins over any grant. With a rights file, what it does not grant is refused.
//!
//! Subscriptions are checked as a whole when made: a filter is allowed when a read rule
//! covers it entirely (`casa/#` covers `casa/terreo/+`, not `#`) and no deny rule could
//! match a topic it receives. Every delivered message is checked again ([`Acl::may_read`],
//! as Mosquitto does), so a subscription that outlives its user (a session taken over
//! by another user) delivers nothing the new user may not read.

use std::{collections::HashMap, path::Path};

use super::LineError;

/// What a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Subscribe.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, whatever other rules grant.
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One rule: an access and a topic filter (with `%u`/`%c` in patterns).
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    access: Access,
    filter: String,
}

/// The parsed rights file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Whether `filter` is a valid MQTT topic filter (`#` last and alone, `+` alone).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['#', '+']),
    })
}

/// Whether every topic that `f` matches is matched by `p` (both filters; a plain topic
/// is a filter without wildcards). Wildcards in the first level do not reach topics that
/// start with `$`, as in MQTT.
pub fn covers(p: &str, f: &str) -> bool {
    if f.starts_with('$') && (p.starts_with('#') || p.starts_with('+')) {
        return false;
    }
    let p: Vec<&str> = p.split('/').collect();
    let f: Vec<&str> = f.split('/').collect();
    covers_levels(&p, &f)
}

fn covers_levels(p: &[&str], f: &[&str]) -> bool {
    let (mut p, mut f) = (p, f);
    loop {
        match (p.first(), f.first()) {
            (Some(&"#"), _) | (None, None) => return true,
            (Some(p0), Some(f0)) => {
                let ok = if *p0 == "+" { *f0 != "#" } else { p0 == f0 };
                if !ok {
                    return false;
                }
                (p, f) = (&p[1..], &f[1..]);
            }
            _ => return false,
        }
    }
}

/// Whether some topic matches both filters.
pub fn intersects(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    intersects_levels(&a, &b)
}

fn intersects_levels(a: &[&str], b: &[&str]) -> bool {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.first(), b.first()) {
            (Some(&"#"), _) | (_, Some(&"#")) | (None, None) => return true,
            (Some(x), Some(y)) if *x == "+" || *y == "+" || x == y => {
                (a, b) = (&a[1..], &b[1..]);
            }
            _ => return false,
        }
    }
}

/// Whether topic name `topic` matches `filter`; in a pattern (`with` = user name and
/// client id) `%u` and `%c` stand for them. Allocates nothing.
fn matches_topic(filter: &str, topic: &str, with: Option<(&str, &str)>) -> bool {
    if topic.starts_with('$') && (filter.starts_with('#') || filter.starts_with('+')) {
        return false;
    }
    match with {
        Some((u, c)) if filter.contains('%') => matches_pattern(filter, topic, u, c),
        _ => matches_plain(filter.as_bytes(), topic.as_bytes()),
    }
}

/// [`matches_topic`] for a filter without `%u`/`%c`: one walk over both, byte by byte
/// (it runs for every rule of every delivered message).
fn matches_plain(f: &[u8], t: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    loop {
        // At the start of a level in both.
        match f.get(i) {
            Some(b'#') if i + 1 == f.len() => return true,
            Some(b'+') if matches!(f.get(i + 1), None | Some(b'/')) => {
                i += 1;
                while t.get(j).is_some_and(|b| *b != b'/') {
                    j += 1;
                }
            }
            _ => {
                while let Some(b) = f.get(i).filter(|b| **b != b'/') {
                    if t.get(j) != Some(b) {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                if t.get(j).is_some_and(|b| *b != b'/') {
                    return false;
                }
            }
        }
        match (i == f.len(), j == t.len()) {
            (true, true) => return true,
            (false, false) => (i, j) = (i + 1, j + 1),
            // `a/#` matches `a` too.
            (false, true) => return f.get(i..) == Some(b"/#"),
            (true, false) => return false,
        }
    }
}

/// [`matches_topic`] for a pattern with `%u` or `%c`, level by level.
fn matches_pattern(filter: &str, topic: &str, user: &str, client: &str) -> bool {
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) | (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) => {
                if !level_expands_to(fl, user, client, tl) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whether pattern level `level`, with `%u` and `%c` replaced by `user` and `client`,
/// is `topic_level`.
fn level_expands_to(level: &str, user: &str, client: &str, topic_level: &str) -> bool {
    let (mut p, mut t) = (level, topic_level);
    while !p.is_empty() {
        let (part, rest) = if let Some(r) = p.strip_prefix("%u") {
            (user, r)
        } else if let Some(r) = p.strip_prefix("%c") {
            (client, r)
        } else {
            let n = p.chars().next().map_or(1, char::len_utf8);
            (&p[..n], &p[n..])
        };
        match t.strip_prefix(part) {
            Some(after) => t = after,
            None => return false,
        }
        p = rest;
    }
    t.is_empty()
}

fn parse_rule(rest: &str, line: u64, pattern: bool) -> Result<Rule, LineError> {
    let err = |message: String| LineError { line, message };
    let rest = rest.trim();
    let (access, filter) = match rest.split_once(char::is_whitespace) {
        Some((a, t)) if ["read", "write", "readwrite", "deny"].contains(&a) => (
            match a {
                "read" => Access::Read,
                "write" => Access::Write,
                "readwrite" => Access::ReadWrite,
                _ => Access::Deny,
            },
            t.trim(),
        ),
        _ if ["read", "write", "readwrite", "deny"].contains(&rest) => {
            return Err(err(format!("`{rest}` needs a topic after it")))
        }
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err(err("a topic is missing".into()));
    }
    if !valid_filter(filter) {
        return Err(err(format!(
            "`{filter}` is not a valid topic filter: `#` must be the last level and `+` a whole level"
        )));
    }
    if !pattern && (filter.contains("%u") || filter.contains("%c")) {
        return Err(err(format!(
            "`{filter}` uses %u or %c, which only `pattern` rules replace"
        )));
    }
    Ok(Rule {
        access,
        filter: filter.to_string(),
    })
}

impl Acl {
    /// Parse a rights file's text, collecting every problem.
    pub fn parse(text: &str) -> Result<Acl, Vec<LineError>> {
        let mut acl = Acl::default();
        let mut errors = Vec::new();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i as u64 + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (word, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            match word {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        errors.push(LineError {
                            line,
                            message: "`user` needs a name".into(),
                        });
                    }
                    acl.users.entry(name.to_string()).or_default();
                    user = Some(name.to_string());
                }
                "topic" => match parse_rule(rest, line, false) {
                    Ok(r) => match &user {
                        Some(u) => acl.users.entry(u.clone()).or_default().push(r),
                        None => acl.anonymous.push(r),
                    },
                    Err(e) => errors.push(e),
                },
                "pattern" => match parse_rule(rest, line, true) {
                    Ok(r) => acl.patterns.push(r),
                    Err(e) => errors.push(e),
                },
                other => errors.push(LineError {
                    line,
                    message: format!(
                        "unknown directive `{other}`{}",
                        crate::config::did_you_mean(
                            other,
                            ["user", "topic", "pattern"].into_iter()
                        )
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default()
                    ),
                }),
            }
        }
        if errors.is_empty() {
            Ok(acl)
        } else {
            Err(errors)
        }
    }

    /// Read and parse a rights file.
    pub fn load(path: &Path) -> Result<Acl, Vec<LineError>> {
        super::load_file(path, Acl::parse)
    }

    /// The user names that have a `user` block.
    pub fn user_names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// The rules that apply to a client, patterns with `%u` and `%c` replaced. A pattern
    /// whose replacement would be empty or contain `/`, `+` or `#` is skipped, so a user
    /// name can never widen a rule.
    fn rules<'a>(
        &'a self,
        user: Option<&'a str>,
        client_id: &'a str,
    ) -> impl Iterator<Item = (Access, std::borrow::Cow<'a, str>)> + 'a {
        let own = match user {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => self.anonymous.as_slice(),
        };
        let safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
        own.iter()
            .map(|r| (r.access, std::borrow::Cow::Borrowed(r.filter.as_str())))
            .chain(self.patterns.iter().filter_map(move |r| {
                let mut f = r.filter.clone();
                if f.contains("%u") {
                    let u = user.filter(|u| safe(u))?;
                    f = f.replace("%u", u);
                }
                if f.contains("%c") {
                    if !safe(client_id) {
                        return None;
                    }
                    f = f.replace("%c", client_id);
                }
                Some((r.access, std::borrow::Cow::Owned(f)))
            }))
    }

    /// Whether the client may publish on `topic`.
    pub fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        let mut granted = false;
        for (access, f) in self.rules(user, client_id) {
            if covers(&f, topic) {
                if access == Access::Deny {
                    return false;
                }
                granted |= access.writes();
            }
        }
        granted
    }

    /// Whether the client may subscribe to `filter`.
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let mut granted = false;
        for (access, f) in self.rules(user, client_id) {
            if access == Access::Deny {
                if intersects(&f, filter) {
                    return false;
                }
            } else if access.reads() && covers(&f, filter) {
                granted = true;
            }
        }
        granted
    }

    /// Whether the client may read `topic` (a message's topic name): the check on every
    /// delivery, as Mosquitto makes it. The same rules as a subscription to exactly
    /// `topic`, without allocating (it runs for every message delivered).
    pub fn may_read(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        let own = match user {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => self.anonymous.as_slice(),
        };
        let mut granted = false;
        for r in own {
            if matches_topic(&r.filter, topic, None) {
                if r.access == Access::Deny {
                    return false;
                }
                granted |= r.access.reads();
            }
        }
        // As in `rules`: a pattern whose replacement would be empty or hold `/`, `+`
        // or `#` does not apply.
        let safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#']);
        let (u, c) = (
            user.filter(|u| safe(u)),
            Some(client_id).filter(|c| safe(c)),
        );
        for r in &self.patterns {
            if (u.is_none() && r.filter.contains("%u")) || (c.is_none() && r.filter.contains("%c"))
            {
                continue;
            }
            let with = (u.unwrap_or_default(), c.unwrap_or_default());
            if matches_topic(&r.filter, topic, Some(with)) {
                if r.access == Access::Deny {
                    return false;
                }
                granted |= r.access.reads();
            }
        }
        granted
    }

    /// Whether anonymous clients may publish on some `<topic>/set` of `topics`.
    pub fn anonymous_may_command<'a>(&self, mut topics: impl Iterator<Item = &'a str>) -> bool {
        topics.any(|t| self.may_publish(None, "", &crate::topics::Topics::set(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_and_intersection() {
        assert!(covers("#", "casa/terreo/temp"));
        assert!(covers("casa/#", "casa"));
        assert!(covers("casa/#", "casa/+/temp"));
        assert!(!covers("casa/#", "#"));
        assert!(covers("casa/+/set", "casa/x/set"));
        assert!(!covers("casa/+/set", "casa/+/+"));
        assert!(!covers("casa/+", "casa/#"));
        assert!(!covers("#", "$SYS/broker/uptime"));
        assert!(covers("$SYS/#", "$SYS/broker/uptime"));
        assert!(intersects("casa/secret", "casa/#"));
        assert!(intersects("casa/+/x", "casa/a/+"));
        assert!(!intersects("casa/a", "casa/b"));
        assert!(!intersects("casa/a", "casa/a/b"));
    }

    const FILE: &str = "\
# anonymous
topic read public/#

user homeassistant
topic read #
topic write casa/+/set
topic deny casa/segredo

user nodered
topic casa/#
pattern write devices/%u/#
";

    #[test]
    fn mosquitto_semantics() {
        let a = Acl::parse(FILE).expect("parses");
        // anonymous: only what comes before the first `user`
        assert!(a.may_subscribe(None, "x", "public/#"));
        assert!(!a.may_subscribe(None, "x", "casa/#"));
        assert!(!a.may_publish(None, "x", "public/a"));
        // homeassistant
        assert!(a.may_publish(Some("homeassistant"), "ha", "casa/luz/set"));
        assert!(!a.may_publish(Some("homeassistant"), "ha", "casa/luz"));
        assert!(a.may_subscribe(Some("homeassistant"), "ha", "casa/luz/+"));
        // a deny rule refuses any subscription that could see it
        assert!(!a.may_subscribe(Some("homeassistant"), "ha", "#"));
        assert!(!a.may_subscribe(Some("homeassistant"), "ha", "casa/segredo"));
        // readwrite is the default; patterns for everyone, %u replaced
        assert!(a.may_publish(Some("nodered"), "nr", "casa/luz/set"));
        assert!(a.may_publish(Some("nodered"), "nr", "devices/nodered/x"));
        assert!(!a.may_publish(Some("nodered"), "nr", "devices/other/x"));
        assert!(a.may_publish(Some("homeassistant"), "ha", "devices/homeassistant/x"));
        // a user name with a wildcard never widens a pattern
        assert!(!a.may_publish(Some("+"), "c", "devices/a/x"));
        // an unknown user gets only the patterns
        assert!(!a.may_subscribe(Some("stranger"), "s", "casa/#"));
        assert!(!a.anonymous_may_command(["casa/luz"].into_iter()));
    }

    #[test]
    fn a_topic_matches_a_filter_as_the_filter_covers_it() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "+/b", "a/+/c", "a/b", "a//b", "+/+", "a/", "/#",
            "$SYS/#", "a/bc", "ab",
        ];
        let topics = [
            "", "a", "a/", "a/b", "a/bc", "ab", "a/b/c", "a//b", "/", "/a", "$SYS/x", "a/c/c",
        ];
        for f in filters {
            for t in topics {
                assert_eq!(matches_topic(f, t, None), covers(f, t), "{f} {t}");
            }
        }
    }

    #[test]
    fn reading_a_topic_is_subscribing_to_exactly_it() {
        let a = Acl::parse(&format!(
            "{FILE}\nuser garagem\ntopic write casa/garagem/luz/set\npattern read x/%u-%c/#\npattern deny casa/%c\n"
        ))
        .expect("parses");
        let topics = [
            "public/a",
            "casa/luz",
            "casa/segredo",
            "casa/luz/set",
            "casa/garagem/luz/set",
            "devices/nodered/x",
            "devices/homeassistant/x",
            "x/garagem-g1/y",
            "x/garagem-g1",
            "x/garagem-g2/y",
            "casa/g1",
            "casa",
            "$SYS/broker/uptime",
            "",
            "/",
            "casa//luz",
            "casa/",
            "casab",
            "homeassistant",
            "homeassistant/sensor/x/config",
            "$SYS",
            "devices/nodered",
        ];
        for user in [
            None,
            Some("homeassistant"),
            Some("nodered"),
            Some("garagem"),
            Some("x"),
        ] {
            for client in ["g1", "ha", "a/b", ""] {
                for t in topics {
                    assert_eq!(
                        a.may_read(user, client, t),
                        a.may_subscribe(user, client, t),
                        "{user:?} {client} {t}"
                    );
                }
            }
        }
        assert!(a.may_read(Some("homeassistant"), "ha", "casa/luz"));
        assert!(!a.may_read(Some("homeassistant"), "ha", "casa/segredo"));
        assert!(!a.may_read(Some("garagem"), "g1", "casa/luz"));
        assert!(!a.may_read(Some("garagem"), "g1", "casa/garagem/luz/set"));
        assert!(a.may_read(Some("garagem"), "g1", "x/garagem-g1/y"));
        assert!(!a.may_read(Some("homeassistant"), "ha", "$SYS/broker/uptime"));
    }

    #[test]
    fn errors_name_their_lines() {
        let e = Acl::parse("user a\ntopic read casa/#/x\ntopik read a\ntopic deny\ntopic %u/x\n")
            .expect_err("bad");
        let lines: Vec<u64> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(e[1].message.contains("did you mean `topic`"), "{}", e[1]);
    }
}
