//! Who owns each session: the user who made it (issue #21). rmqtt resumes a session for
//! whoever connects with its client id and passes the login; the front (`front.rs`)
//! asks here first and, when another user (or anonymous against named) connects with
//! that id, starts the session clean, so that no subscription, queued message or Will
//! crosses users. An owner is recorded only once its login succeeded (the broker's
//! CONNACK), so a refused login changes nothing.

use std::{collections::HashMap, sync::Mutex};

/// One owner: the user (`None`: anonymous) and when it was recorded (a serial number,
/// also the token that [`Owners::release`] takes).
struct Entry {
    user: Option<Box<str>>,
    serial: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<str>, Entry>,
    serial: u64,
}

/// The owners of the sessions by client id, at most `cap` of them: when full, the
/// eighth recorded longest ago are forgotten (the broker keeps fewer sessions than
/// that, and removes the oldest offline ones first).
pub struct Owners {
    inner: Mutex<Inner>,
    cap: usize,
}

impl Owners {
    /// An empty map that holds at most `cap` owners (at least 8).
    pub fn new(cap: usize) -> Owners {
        Owners {
            inner: Mutex::default(),
            cap: cap.max(8),
        }
    }

    /// The owner of `client_id`'s session: `None` when unknown, `Some(None)` when an
    /// anonymous client made it.
    pub fn get(&self, client_id: &str) -> Option<Option<String>> {
        let inner = self.inner.lock().ok()?;
        inner
            .map
            .get(client_id)
            .map(|e| e.user.as_deref().map(str::to_string))
    }

    /// Record `user` (`None`: anonymous) as the owner of `client_id`'s session; returns
    /// the token with which the front forgets it again when the session ends.
    pub fn set(&self, client_id: &str, user: Option<&str>) -> u64 {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        inner.serial += 1;
        let serial = inner.serial;
        if !inner.map.contains_key(client_id) && inner.map.len() >= self.cap {
            evict_oldest(&mut inner.map, self.cap / 8);
        }
        inner.map.insert(
            client_id.into(),
            Entry {
                user: user.map(Into::into),
                serial,
            },
        );
        serial
    }

    /// Forget `client_id`'s owner if it is still the one recorded with `token` (a
    /// session that ended with its connection; a newer owner stays).
    pub fn release(&self, client_id: &str, token: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.map.get(client_id).is_some_and(|e| e.serial == token) {
                inner.map.remove(client_id);
            }
        }
    }

    /// Every owner, for saving: (client id, user).
    pub fn snapshot(&self) -> Vec<(String, Option<String>)> {
        self.inner.lock().map_or_else(
            |_| Vec::new(),
            |inner| {
                inner
                    .map
                    .iter()
                    .map(|(c, e)| (c.to_string(), e.user.as_deref().map(str::to_string)))
                    .collect()
            },
        )
    }

    /// How many owners are recorded.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Remove the `n` (at least one) entries recorded longest ago.
fn evict_oldest(map: &mut HashMap<Box<str>, Entry>, n: usize) {
    let mut serials: Vec<u64> = map.values().map(|e| e.serial).collect();
    let n = n.clamp(1, serials.len());
    let (_, &mut cut, _) = serials.select_nth_unstable(n - 1);
    map.retain(|_, e| e.serial > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_recorded_replaced_and_released() {
        let o = Owners::new(100);
        assert_eq!(o.get("ha"), None);
        let t = o.set("ha", Some("homeassistant"));
        assert_eq!(o.get("ha"), Some(Some("homeassistant".into())));
        let t2 = o.set("ha", None);
        assert_eq!(o.get("ha"), Some(None));
        // The first connection ending does not forget the newer owner.
        o.release("ha", t);
        assert_eq!(o.get("ha"), Some(None));
        o.release("ha", t2);
        assert_eq!(o.get("ha"), None);
        assert!(o.is_empty());
    }

    #[test]
    fn a_full_map_forgets_the_oldest() {
        let o = Owners::new(64);
        for i in 0..64 {
            o.set(&format!("c{i}"), Some("u"));
        }
        o.set("c0", Some("v")); // a replacement does not evict
        assert_eq!(o.len(), 64);
        o.set("new", None);
        assert_eq!(o.len(), 64 - 8 + 1);
        assert_eq!(o.get("c1"), None, "among the oldest");
        assert_eq!(o.get("c0"), Some(Some("v".into())), "recorded again lately");
        assert_eq!(o.get("c63"), Some(Some("u".into())));
        assert_eq!(o.snapshot().len(), o.len());
    }
}
