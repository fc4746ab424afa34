//! Users from a password file in Mosquitto's format, made with `mosquitto_passwd`.
//!
//! One `user:hash` line per user. Two hash forms are accepted, the two that
//! `mosquitto_passwd` writes:
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (Mosquitto 2.0's default);
//! - `$6$<salt>$<hash>`: SHA-512 of the password followed by the salt (Mosquitto 1.x).
//!
//! Salt and hash are standard base64. A plain-text password is refused: the file must be
//! hashed (`mosquitto_passwd -U file`).

use std::{collections::HashMap, fmt, path::Path};

use super::LineError;
use base64::{engine::general_purpose::STANDARD, Engine};
use sha2::{Digest, Sha512};

/// How one password is stored.
#[derive(Clone, PartialEq)]
enum Hash {
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The users of the embedded broker, by name.
#[derive(Clone, Default, PartialEq)]
pub struct Users {
    users: HashMap<String, Hash>,
}

impl fmt::Debug for Users {
    // Never print hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} user(s))", self.users.len())
    }
}

/// Most PBKDF2 iterations accepted: a hostile file must not make every login a
/// second-long computation (`mosquitto_passwd` writes 101; Mosquitto itself caps lower).
const MAX_ITERATIONS: u32 = 1_000_000;

fn b64(s: &str, what: &str, line: u64) -> Result<Vec<u8>, LineError> {
    STANDARD.decode(s).map_err(|_| LineError {
        line,
        message: format!("the {what} is not base64"),
    })
}

fn parse_hash(h: &str, line: u64) -> Result<Hash, LineError> {
    let err = |message: &str| LineError {
        line,
        message: message.to_string(),
    };
    let parsed = parse_parts(h, line)?;
    let (Hash::Pbkdf2 { salt, hash, .. } | Hash::Sha512 { salt, hash }) = &parsed;
    // An empty hash would match every password.
    if salt.is_empty() || hash.len() != 64 {
        return Err(err(
            "the salt is empty or the hash is not 64 bytes (SHA-512)",
        ));
    }
    Ok(parsed)
}

fn parse_parts(h: &str, line: u64) -> Result<Hash, LineError> {
    let err = |message: &str| LineError {
        line,
        message: message.to_string(),
    };
    let parts: Vec<&str> = h.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|i| (1..=MAX_ITERATIONS).contains(i))
                .ok_or_else(|| {
                    err("the PBKDF2 iteration count is not a number from 1 to 1000000")
                })?;
            Ok(Hash::Pbkdf2 {
                iterations,
                salt: b64(salt, "salt", line)?,
                hash: b64(hash, "hash", line)?,
            })
        }
        ["", "6", salt, hash] => Ok(Hash::Sha512 {
            salt: b64(salt, "salt", line)?,
            hash: b64(hash, "hash", line)?,
        }),
        _ => Err(err(
            "the password is not hashed: hash the file with `mosquitto_passwd -U <file>`",
        )),
    }
}

impl Users {
    /// Parse the text of a password file.
    pub fn parse(text: &str) -> Result<Users, Vec<LineError>> {
        let mut users = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i as u64 + 1;
            let l = raw.trim_end_matches('\r');
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let Some((name, hash)) = l.split_once(':') else {
                errors.push(LineError {
                    line,
                    message: "expected `user:hash`, as `mosquitto_passwd` writes".into(),
                });
                continue;
            };
            if name.is_empty() {
                errors.push(LineError {
                    line,
                    message: "empty user name".into(),
                });
                continue;
            }
            match parse_hash(hash.trim(), line) {
                Ok(h) => {
                    if users.insert(name.to_string(), h).is_some() {
                        errors.push(LineError {
                            line,
                            message: format!("user `{name}` appears twice"),
                        });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Users { users })
        } else {
            Err(errors)
        }
    }

    /// Read and parse a password file.
    pub fn load(path: &Path) -> Result<Users, Vec<LineError>> {
        super::load_file(path, Users::parse)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `password` is `user`'s password. Unknown users and wrong passwords are
    /// both `false`; the comparison takes the same time wherever the hashes differ.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(h) = self.users.get(user) else {
            return false;
        };
        match h {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                constant_eq(&d.finalize(), hash)
            }
        }
    }
}

/// Compare without returning early at the first different byte.
pub(crate) fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `mosquitto_passwd -c -b pw casa 'segredo 1'` (Mosquitto 2.0.11).
    const CASA: &str = "casa:$7$101$eBVz4WS9wocgUAXc$t5PQW5kRUXa+G+ur9AlHUdUgfJRTipohiVL39Ef09abU53x1zGzZ2SeHquJrF83zA9GLTjifkuroxqo0+Hjd7Q==";

    #[test]
    fn pbkdf2_line_from_mosquitto_passwd() {
        let u = Users::parse(CASA).expect("parses");
        assert!(u.verify("casa", b"segredo 1"));
        assert!(!u.verify("casa", b"segredo 2"));
        assert!(!u.verify("casa", b""));
        assert!(!u.verify("other", b"segredo 1"));
    }

    #[test]
    fn sha512_form() {
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!(
            "old:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(d.finalize())
        );
        let u = Users::parse(&line).expect("parses");
        assert!(u.verify("old", b"pw"));
        assert!(!u.verify("old", b"pW"));
    }

    #[test]
    fn errors_name_their_lines() {
        let text = format!("# users\n\n{CASA}\nplain:secret\nnocolon\n:x\n{CASA}\n");
        let e = Users::parse(&text).expect_err("bad lines");
        let lines: Vec<u64> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        assert!(e[0].message.contains("mosquitto_passwd -U"), "{}", e[0]);
        assert!(e[3].message.contains("twice"), "{}", e[3]);
    }

    #[test]
    fn an_empty_hash_is_refused() {
        assert!(Users::parse("u:$7$101$c2FsdA==$").is_err());
        assert!(Users::parse("u:$6$$").is_err());
    }

    #[test]
    fn debug_never_shows_hashes() {
        let u = Users::parse(CASA).expect("parses");
        let s = format!("{u:?}");
        assert!(!s.contains("t5PQ"), "{s}");
        assert_eq!(s, "Users(1 user(s))");
    }
}
