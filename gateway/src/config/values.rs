//! Value types shared by both files: spans, durations, sizes, one-or-many.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A value with the line and column where the file wrote it, for error messages.
///
/// serde-saphyr's own `Spanned` keeps two full locations per value (80 bytes); with every
/// key of a point spanned, a mapping of 10 000 points held about 30 MB while it was read,
/// and that start-up peak stayed in the process's resident set. This keeps 8 bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    line: u32,
    column: u32,
}

impl<T> Spanned<T> {
    /// 1-based line (0 when unknown).
    pub fn line(&self) -> u64 {
        u64::from(self.line)
    }

    /// 1-based column (0 when unknown).
    pub fn column(&self) -> u64 {
        u64::from(self.column)
    }

    // Device profiles (#25): values a profile puts into a device carry the location of
    // what they stand for (the device's `topic_prefix`, the profile's `unit`).
    /// `value` as if written at `(line, column)`.
    pub(crate) fn at(value: T, (line, column): (u64, u64)) -> Self {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Spanned {
            value,
            line: clamp(line),
            column: clamp(column),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Spanned {
            line: clamp(s.referenced.line()),
            column: clamp(s.referenced.column()),
            value: s.value,
        })
    }
}

/// Longest duration accepted anywhere (keeps deadline arithmetic far from overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written the human way: `500ms`, `1s`, `5m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim()).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}`: write it like `500ms`, `1s`, `5m`, `1h 30m`"
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration `{s}` is longer than 365 days"
            )));
        }
        Ok(HumanDuration(d))
    }
}

/// One value or a list of them (`mappings: casa.yaml` or `mappings: [a.yaml, b.yaml]`).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// All values.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A size written the human way: `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse `64MiB`, `64 MB`, `1g`, `4096`.
    pub fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return None,
        };
        let v = n * mult as f64;
        (0.0..1e15).contains(&v).then_some(ByteSize(v as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size `{s}`: write it like `64MiB`, `512KiB` or `1GiB`"
                ))
            }),
        }
    }
}
