//! The connection's life as the upstream task sees it: what each [`Link`] event changes,
//! and the logs of connects and losses (a failure is logged once per kind, not at every
//! retry).

use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{eventloop::Link, publisher::Up};

impl Up {
    /// Take `first` and every event already waiting after it (before sending more).
    /// `false` once the connection was closed.
    pub(super) fn on_links(
        &mut self,
        first: Link,
        link: &mut mpsc::UnboundedReceiver<Link>,
    ) -> bool {
        if !self.on_link(first) {
            return false;
        }
        while let Ok(l) = link.try_recv() {
            if !self.on_link(l) {
                return false;
            }
        }
        true
    }

    /// One event of the event loop; `false` once the connection was closed.
    fn on_link(&mut self, link: Link) -> bool {
        match link {
            Link::Connected => self.on_connected(),
            Link::Written(pkid) => self.on_written(pkid),
            Link::Acked(pkid) => self.on_acked(pkid),
            Link::Message(topic, payload) => self.on_message(&topic, &payload),
            Link::Lost {
                error,
                refused,
                unwritten,
            } => self.on_lost(error, refused, unwritten),
            Link::Closed => return false,
        }
        true
    }

    fn on_connected(&mut self) {
        let url = self.url.as_str();
        if self.ever {
            info!(broker = %url, queued = self.spool.depth(), "Upstream reconnected.");
        } else {
            info!(broker = %url, queued = self.spool.depth(), "Upstream connected.");
        }
        self.ever = true;
        self.failing = None;
        self.start_session();
        self.stats.upstream.connected.store(true, Relaxed);
        self.stats.upstream.connects.fetch_add(1, Relaxed);
        self.subscribe();
    }

    fn on_lost(&mut self, error: String, refused: bool, unwritten: usize) {
        let url = self.url.as_str();
        if self.connected {
            warn!(broker = %url, error = %error, "Upstream connection lost.");
        } else if self.failing.as_deref() != Some(error.as_str()) {
            // Once per kind of failure, not at every retry.
            if refused {
                warn!(broker = %url, error = %error, "Upstream broker refused the connection; retrying with backoff.");
            } else {
                warn!(broker = %url, error = %error, "Cannot connect upstream; retrying with backoff.");
            }
        } else {
            debug!(broker = %url, error = %error, "Upstream connect failed.");
        }
        if !self.connected {
            self.stats.upstream.connect_failures.fetch_add(1, Relaxed);
        }
        self.failing = Some(error);
        self.connected = false;
        self.stats.upstream.connected.store(false, Relaxed);
        self.rewind_lost(unwritten);
    }
}
