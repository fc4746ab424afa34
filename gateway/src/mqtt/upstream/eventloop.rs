//! The event-loop driver: rumqttc's event loop runs in a task of its own (its `poll` must
//! never be cancelled) and reports what the upstream task needs as [`Link`] events. A lost
//! connection is retried with exponential backoff and full jitter.

use std::time::{Duration, Instant};

use fieldlink_drivers::backoff::Backoff;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Packet, Request};
use tokio::sync::mpsc;
use tracing::warn;

/// Shortest wait between connection attempts (before jitter halves it at random).
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Longest wait between connection attempts (before jitter halves it at random).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection that stayed up this long starts the backoff afresh when it drops.
const STABLE: Duration = Duration::from_secs(30);

/// What the event loop reports to the upstream task.
pub(super) enum Link {
    /// The broker accepted the connection (CONNACK).
    Connected,
    /// A publish was written with this packet id (0 for QoS 0).
    Written(u16),
    /// The broker acknowledged this packet id (PUBACK).
    Acked(u16),
    /// A message from the broker (a command): topic and payload.
    Message(String, Vec<u8>),
    /// The connection dropped; `unwritten` publishes were still in rumqttc's request
    /// channel and were discarded with its retransmission list.
    Lost {
        error: String,
        refused: bool,
        unwritten: usize,
    },
    /// The DISCONNECT asked for at shutdown was written.
    Closed,
}

/// Describe a connection error for a person.
fn explain(e: &ConnectionError) -> (String, bool) {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => (
            "broker refused the connection: bad user name or password".into(),
            true,
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => (
            "broker refused the connection: not authorized (wrong user name or password, or this user or client id is not allowed)".into(),
            true,
        ),
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            ("broker refused the connection: client id rejected".into(), true)
        }
        ConnectionError::ConnectionRefused(c) => {
            (format!("broker refused the connection: {c:?}"), true)
        }
        ConnectionError::Tls(t) => (format!("TLS: {t}"), false),
        other => (other.to_string(), false),
    }
}

/// The bookkeeping events among rumqttc's events.
fn translate(ev: Event) -> Option<Link> {
    match ev {
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Some(Link::Written(pkid)),
        Event::Incoming(Packet::PubAck(a)) => Some(Link::Acked(a.pkid)),
        _ => None,
    }
}

/// Small deterministic jitter source (no extra dependency needed).
fn jitter(seed: &mut u64, max_ms: u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(*seed % max_ms.max(1))
}

/// Exponential backoff with full jitter: each wait is between half the current step and
/// the whole of it; the step doubles up to [`MAX_BACKOFF`].
struct Retry {
    backoff: Backoff,
    seed: u64,
}

impl Retry {
    fn new(seed: u64) -> Retry {
        Retry {
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt; `stable` (the connection had stayed up for
    /// [`STABLE`]) starts the backoff afresh.
    fn next_wait(&mut self, stable: bool) -> Duration {
        if stable {
            self.backoff.reset();
        }
        let ms = self.backoff.next_delay().as_millis() as u64;
        Duration::from_millis(ms / 2) + jitter(&mut self.seed, ms / 2 + 1)
    }
}

/// Drives rumqttc's event loop and reports to the upstream task.
struct Driver {
    eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Link>,
    retry: Retry,
    up_since: Option<Instant>,
}

/// Drive rumqttc's event loop in a task of its own until the upstream task is gone or the
/// connection was closed with a DISCONNECT.
pub(super) fn spawn_eventloop(eventloop: EventLoop, tx: mpsc::UnboundedSender<Link>) {
    let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9);
    let driver = Driver {
        eventloop,
        tx,
        retry: Retry::new(seed),
        up_since: None,
    };
    tokio::spawn(driver.run());
}

impl Driver {
    async fn run(mut self) {
        loop {
            if self.tx.is_closed() {
                return;
            }
            let link = match self.eventloop.poll().await {
                Ok(ev) => match self.on_event(ev) {
                    Some(l) => l,
                    None => continue,
                },
                Err(e) => {
                    if !self.on_error(&e) {
                        return;
                    }
                    let stable = self.up_since.take().is_some_and(|t| t.elapsed() > STABLE);
                    tokio::time::sleep(self.retry.next_wait(stable)).await;
                    continue;
                }
            };
            let closed = matches!(link, Link::Closed);
            if self.tx.send(link).is_err() || closed {
                return;
            }
        }
    }

    /// The [`Link`] event of one of rumqttc's events, if it is one.
    fn on_event(&mut self, ev: Event) -> Option<Link> {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.up_since = Some(Instant::now());
                Some(Link::Connected)
            }
            Event::Outgoing(rumqttc::Outgoing::AwaitAck(pkid)) => {
                // Cannot happen with PKID_RANGE ≫ WINDOW; the message then waits in
                // rumqttc and the upstream task's bookkeeping would be off by one.
                warn!(pkid, "Upstream packet id collision.");
                None
            }
            Event::Incoming(Packet::Publish(p)) => Some(Link::Message(p.topic, p.payload.to_vec())),
            Event::Outgoing(rumqttc::Outgoing::Disconnect) => Some(Link::Closed),
            other => translate(other),
        }
    }

    /// Report a lost connection (`false` when the upstream task is gone).
    fn on_error(&mut self, e: &ConnectionError) -> bool {
        // rumqttc may still hold events of the dead connection (a publish it wrote just
        // before the write failed): report them before the loss, in order.
        let stale: Vec<Event> = self.eventloop.state.events.drain(..).collect();
        for ev in stale {
            if let Some(l) = translate(ev) {
                if self.tx.send(l).is_err() {
                    return false;
                }
            }
        }
        // Our queue sends again whatever was not acknowledged: empty rumqttc's
        // retransmission list (keeping QoS 2 releases and subscriptions).
        let mut unwritten = 0;
        self.eventloop.pending.retain(|r| match r {
            Request::Publish(p) => {
                if p.pkid == 0 {
                    unwritten += 1;
                }
                false
            }
            _ => true,
        });
        let (error, refused) = explain(e);
        self.tx
            .send(Link::Lost {
                error,
                refused,
                unwritten,
            })
            .is_ok()
    }
}

/// Ask rumqttc for a clean DISCONNECT and wait, until `deadline`, for the event-loop task
/// to report it was written ([`Link::Closed`]) or to end.
pub(super) async fn disconnect(
    client: &AsyncClient,
    link: &mut mpsc::UnboundedReceiver<Link>,
    deadline: tokio::time::Instant,
) {
    let _ = tokio::time::timeout_at(deadline, client.disconnect()).await;
    loop {
        match tokio::time::timeout_at(deadline, link.recv()).await {
            Ok(Some(l)) if !matches!(l, Link::Closed) => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_within_each_doubling_step_and_reset_after_a_stable_connection() {
        let mut r = Retry::new(42);
        let mut step = MIN_BACKOFF;
        for _ in 0..10 {
            let w = r.next_wait(false);
            assert!(
                w >= step / 2 && w <= step,
                "{w:?} outside {step:?}/2..={step:?}"
            );
            step = (step * 2).min(MAX_BACKOFF);
        }
        let w = r.next_wait(true);
        assert!(w >= MIN_BACKOFF / 2 && w <= MIN_BACKOFF, "reset: {w:?}");
    }
}
