//! MQTT topic rules: what a point topic may look like.

/// Maximum length of an MQTT topic in bytes.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// A problem with a topic name: `Err` is an error, `Ok(Some)` a warning.
pub fn check_topic(topic: &str) -> Result<Option<String>, String> {
    if topic.is_empty() {
        return Err("topic is empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "topic is {} bytes long, MQTT allows at most {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "topic `{topic}` contains a wildcard (`+` or `#`); wildcards are only for subscriptions"
        ));
    }
    if topic.contains('\0') {
        return Err("topic contains a NUL character".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "topic `{topic}` starts with `$`, which is reserved for the broker"
        ));
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let inner = if topic.starts_with('/') {
        &levels[1..]
    } else {
        &levels[..]
    };
    if let Some(i) = inner.iter().position(|l| l.is_empty()) {
        if i + 1 == inner.len() {
            return Err(format!(
                "topic `{topic}` ends with `/` (an empty last level)"
            ));
        }
        return Err(format!(
            "topic `{topic}` has an empty level (`//`) in the middle"
        ));
    }
    if topic.starts_with('/') {
        return Ok(Some(format!(
            "topic `{topic}` starts with `/`: legal and kept as written, but it creates an empty first level"
        )));
    }
    Ok(None)
}

/// True when `s` is usable as one topic level and an id (`[A-Za-z0-9_-]+`).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert_eq!(check_topic("casa/terreo/temperatura"), Ok(None));
        assert!(check_topic("/casa/terreo").unwrap().is_some());
        assert!(check_topic("casa/+/x").is_err());
        assert!(check_topic("casa/#").is_err());
        assert!(check_topic("casa//x").is_err());
        assert!(check_topic("casa/").is_err());
        assert!(check_topic(&"a".repeat(70_000)).is_err());
    }
}
