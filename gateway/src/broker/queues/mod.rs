//! Messages held for offline persistent sessions: bounded by count and bytes per session
//! (`max_queued_messages`, `max_queued_bytes`) and by bytes for all of them
//! (`max_queued_bytes_total`).
//!
//! rmqtt 0.24 bounds a session's queue by count only. Built around it: its
//! `OfflineMessage` hook runs just before a message is queued for an offline session, and
//! a session's queue is reachable (`Session::deliver_queue`, with `pop` at the front and
//! `push` at the back). For each offline session this module keeps the sizes of what its
//! queue holds, in order (and of the in-flight messages it went offline with, which are
//! older), and before a QoS 1 or 2 message is queued it makes room by popping the oldest.
//! A QoS 0 message that does not fit cannot be refused (the hook has no say, rmqtt queues
//! it right after): it is marked, and taken out with the queue rebuilt without it, once a
//! few have gathered, before the client's CONNECT takes the queue over, and every second.
//! Every message dropped is counted by reason in `broker.offline` of the diagnostics.
//!
//! Everything here runs on the broker's one thread; the lock is never held across an
//! `.await`, so nothing else touches a queue between a hook and the push that follows it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
};

use rmqtt::{
    session::Session,
    types::{ConnectInfo, MessageQueueType, OutInflightType, Publish},
};

use crate::{health::BrokerStats, model::QueueLimits};

mod hook;
mod renew;

pub(crate) use renew::{offline_session, Offline};

pub(crate) use hook::start;

/// Marked QoS 0 messages of one session taken out once this many have gathered...
const PURGE_COUNT: usize = 64;
/// ...or once they hold this many bytes...
const PURGE_BYTES: usize = 64 << 10;
/// ...or once all sessions' marked messages hold this many.
const PURGE_ALL_BYTES: usize = 1 << 20;

/// rmqtt's own count bound for a session's queue: room for the marked QoS 0 messages
/// above ours, so that rmqtt never drops on its own (its policy would pop behind our back).
pub(crate) fn rmqtt_queue_len(limits: &QueueLimits) -> usize {
    limits.max_messages + PURGE_COUNT
}

/// Memory the broker spends on a queued message besides its topic, payload and
/// properties (measured: about 520 bytes for 16-byte messages, RSS over 20 000 of them).
pub(crate) const MESSAGE_OVERHEAD: usize = 512;

/// Bytes of a message as the bounds count them: topic, payload, MQTT 5 properties, and
/// [`MESSAGE_OVERHEAD`].
pub(crate) fn message_bytes(p: &Publish) -> usize {
    let props = p.properties.as_ref().map_or(0, |pp| {
        pp.content_type.as_ref().map_or(0, |s| s.len())
            + pp.response_topic.as_ref().map_or(0, |s| s.len())
            + pp.correlation_data.as_ref().map_or(0, |b| b.len())
            + pp.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    });
    p.topic.len() + p.payload.len() + props + MESSAGE_OVERHEAD
}

/// One message in a session's queue: its size, and whether it is marked to go.
struct Item {
    size: usize,
    doomed: bool,
}

/// What one offline session holds.
struct Held {
    /// The session's `Id::create_time` (a client id may come back as a new session).
    created: i64,
    /// The session (to make it anew, see `renew`).
    session: Session,
    /// Messages it took in since it went offline or was made anew.
    taken: usize,
    queue: MessageQueueType,
    inflight: OutInflightType,
    /// Sizes of the in-flight messages it went offline with, oldest first.
    inflight_sizes: VecDeque<usize>,
    /// Sizes of the messages in its queue, oldest first.
    items: VecDeque<Item>,
    /// Every byte held, marked messages included.
    bytes: usize,
    doomed: usize,
    doomed_bytes: usize,
}

impl Held {
    /// Messages that count against the bounds (marked ones are on their way out).
    fn count(&self) -> usize {
        self.items.len() - self.doomed + self.inflight_sizes.len()
    }
    fn live_bytes(&self) -> usize {
        self.bytes - self.doomed_bytes
    }
}

/// Why messages were dropped (the counters in `broker.offline.dropped`).
#[derive(Clone, Copy)]
enum Why {
    Qos0,
    Oldest,
    Total,
    Oversized,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Held>,
}

impl State {
    /// Bytes held by all sessions, marked messages included.
    fn bytes(&self) -> usize {
        self.sessions.values().map(|h| h.bytes).sum()
    }
    /// Bytes of the marked messages of all sessions.
    fn doomed_bytes(&self) -> usize {
        self.sessions.values().map(|h| h.doomed_bytes).sum()
    }
    /// Bytes that count against the total.
    fn live_bytes(&self) -> usize {
        self.bytes() - self.doomed_bytes()
    }
}

/// The bounds and what every offline session holds.
pub(crate) struct Queues {
    limits: QueueLimits,
    pub(crate) stats: Arc<BrokerStats>,
    /// Bumped on every change (the store saves when it moved).
    pub(crate) changes: Arc<AtomicU64>,
    state: Mutex<State>,
}

impl Queues {
    pub(crate) fn new(limits: QueueLimits, stats: Arc<BrokerStats>) -> Queues {
        Queues {
            limits,
            stats,
            changes: Arc::default(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent sizes.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_drop(&self, why: Why, n: u64) {
        let o = &self.stats.offline;
        match why {
            Why::Qos0 => o.dropped_qos0.fetch_add(n, Relaxed),
            Why::Oldest => o.dropped_oldest.fetch_add(n, Relaxed),
            Why::Total => o.dropped_total.fetch_add(n, Relaxed),
            Why::Oversized => o.dropped_oversized.fetch_add(n, Relaxed),
        };
    }

    /// Refresh the gauges in the diagnostics, and note a change for the store.
    fn changed(&self, st: &State) {
        let o = &self.stats.offline;
        let messages: usize = st.sessions.values().map(Held::count).sum();
        o.sessions.store(st.sessions.len() as u64, Relaxed);
        o.messages.store(messages as u64, Relaxed);
        o.bytes.store(st.live_bytes() as u64, Relaxed);
        self.changes.fetch_add(1, Relaxed);
    }

    /// Start holding for `s`, which just went offline (or was restored): measure what it
    /// holds and bring it within the bounds, oldest first.
    pub(crate) fn track(&self, s: &Session) {
        let mut held = Held {
            created: s.id.create_time,
            session: s.clone(),
            taken: 0,
            queue: s.deliver_queue().clone(),
            inflight: s.out_inflight().clone(),
            inflight_sizes: VecDeque::new(),
            items: VecDeque::new(),
            bytes: 0,
            doomed: 0,
            doomed_bytes: 0,
        };
        if let Ok(mut inflight) = held.inflight.try_write() {
            for m in inflight.clone_inflight_messages() {
                held.inflight_sizes.push_back(message_bytes(&m.publish));
            }
        }
        rescan(&mut held);
        let mut st = self.lock();
        st.sessions.insert(s.id.client_id.to_string(), held);
        self.within_bounds(&mut st, &s.id.client_id, 0);
        self.changed(&st);
    }

    /// Whether `s` is the offline session held for its client id.
    pub(crate) fn holds(&self, s: &Session) -> bool {
        self.lock()
            .sessions
            .get(&*s.id.client_id)
            .is_some_and(|h| h.created == s.id.create_time)
    }

    /// Stop holding for client `client_id` (its session went online again or ended);
    /// with `created`, only if it is still that session.
    pub(crate) fn forget(&self, client_id: &str, created: Option<i64>) {
        let mut st = self.lock();
        let same = st
            .sessions
            .get(client_id)
            .is_some_and(|h| created.is_none_or(|c| c == h.created));
        if same {
            st.sessions.remove(client_id);
            self.changed(&st);
        }
    }

    /// A client is connecting: take the marked messages out of its offline session before
    /// the session is handed over.
    pub(crate) fn connecting(&self, c: &ConnectInfo) {
        let mut st = self.lock();
        if let Some(h) = st.sessions.get_mut(&**c.client_id()) {
            if purge(h) > 0 {
                self.changed(&st);
            }
        }
    }

    /// Take every marked message out (every second, and before a snapshot).
    pub(crate) fn purge_all(&self) {
        let mut st = self.lock();
        let freed: usize = st.sessions.values_mut().map(purge).sum();
        if freed > 0 {
            self.changed(&st);
        }
    }

    /// A connected client's queue (messages wait there while its in-flight window is
    /// full): the oldest go until it is within `max_queued_messages` and, with the
    /// in-flight ones, within `max_queued_bytes`. (rmqtt logs a WARN for each when the
    /// client catches up: a wakeup finds the queue shorter than it was.)
    pub(crate) fn bound_online(&self, s: &Session) {
        let mut bytes = 0;
        if let Ok(mut inflight) = s.out_inflight().try_write() {
            bytes = inflight
                .clone_inflight_messages()
                .iter()
                .map(|m| message_bytes(&m.publish))
                .sum();
        }
        // Popped and pushed back with no `.await` between: the session cannot run.
        let q = s.deliver_queue();
        let mut sizes = VecDeque::with_capacity(q.len());
        for _ in 0..q.len() {
            let Some(m) = q.pop() else {
                break;
            };
            let size = message_bytes(&m.1);
            if q.push(m).is_ok() {
                sizes.push_back(size);
                bytes += size;
            }
        }
        let mut dropped = 0;
        while bytes > self.limits.max_bytes || sizes.len() > self.limits.max_messages {
            let (Some(_), Some(size)) = (q.pop(), sizes.pop_front()) else {
                break;
            };
            bytes -= size;
            dropped += 1;
        }
        self.count_drop(Why::Oldest, dropped);
    }

    /// rmqtt is about to queue `p` for the offline session `s`: make room for it, or mark
    /// it to go (a QoS 0 message that does not fit, or one larger than a session may hold).
    pub(crate) fn offline_message(&self, s: &Session, p: &Publish) {
        if !self.holds(s) {
            self.track(s);
        }
        let size = message_bytes(p);
        let qos0 = matches!(p.qos, rmqtt::types::QoS::AtMostOnce);
        let id = &*s.id.client_id;
        let mut st = self.lock();
        tidy(&mut st, id);
        let Some(h) = st.sessions.get(id) else {
            return;
        };
        let fits_session =
            h.count() < self.limits.max_messages && h.live_bytes() + size <= self.limits.max_bytes;
        let fits_total = st.live_bytes() + size <= self.limits.max_bytes_total;
        let doom = if size > self.limits.max_bytes {
            Some(Why::Oversized)
        } else if qos0 && !fits_session {
            Some(Why::Qos0)
        } else if qos0 && !fits_total {
            Some(Why::Total)
        } else if qos0 {
            None
        } else {
            // QoS 1 and 2: the oldest go first, of this session, then of the session
            // holding the most.
            self.within_bounds(&mut st, id, size);
            (st.live_bytes() + size > self.limits.max_bytes_total).then_some(Why::Total)
        };
        let full = rmqtt_queue_len(&self.limits);
        let Some(h) = st.sessions.get_mut(id) else {
            return;
        };
        h.taken += 1;
        if h.queue.len() >= full {
            // Never expected (marked messages go before there are this many): rmqtt
            // applies its own policy, refusing QoS 0 and dropping the oldest otherwise.
            if qos0 {
                self.count_drop(doom.unwrap_or(Why::Qos0), 1);
                return;
            }
            if let Some(item) = h.items.pop_front() {
                h.bytes -= item.size;
                if item.doomed {
                    h.doomed -= 1;
                    h.doomed_bytes -= item.size;
                } else {
                    self.count_drop(Why::Oldest, 1);
                }
            }
        }
        h.items.push_back(Item {
            size,
            doomed: doom.is_some(),
        });
        h.bytes += size;
        if let Some(why) = doom {
            self.count_drop(why, 1);
            h.doomed += 1;
            h.doomed_bytes += size;
        }
        self.changed(&st);
    }

    /// The offline sessions that took in enough messages to be made anew.
    pub(crate) fn due_for_renewal(&self) -> Vec<Session> {
        let due = renew::RENEW_AFTER * rmqtt_queue_len(&self.limits);
        self.lock()
            .sessions
            .values()
            .filter(|h| h.taken >= due)
            .map(|h| h.session.clone())
            .collect()
    }

    /// Drop the oldest messages until session `id` has room for `incoming` more bytes and
    /// one more message (0: just within its bounds), then until all sessions together
    /// have; the total takes from whichever session holds the most.
    fn within_bounds(&self, st: &mut State, id: &str, incoming: usize) {
        let extra = usize::from(incoming > 0);
        let mut dropped = 0;
        while let Some(h) = st.sessions.get_mut(id) {
            if h.count() + extra <= self.limits.max_messages
                && h.live_bytes() + incoming <= self.limits.max_bytes
            {
                break;
            }
            match evict(h) {
                Some(doomed) => dropped += u64::from(!doomed),
                None => break,
            }
        }
        self.count_drop(Why::Oldest, dropped);
        let mut dropped = 0;
        while st.live_bytes() + incoming > self.limits.max_bytes_total {
            let Some(h) = st
                .sessions
                .values_mut()
                .filter(|h| h.live_bytes() > 0)
                .max_by_key(|h| h.live_bytes())
            else {
                break;
            };
            match evict(h) {
                Some(doomed) => dropped += u64::from(!doomed),
                None => break,
            }
        }
        self.count_drop(Why::Total, dropped);
    }
}

/// Before a new message for session `id`: the sizes still match its queue, and marked
/// messages have not gathered beyond the thresholds.
fn tidy(st: &mut State, id: &str) {
    if let Some(h) = st.sessions.get_mut(id) {
        if h.items.len() != h.queue.len() {
            // Something took messages without us (never seen): measure again.
            rescan(h);
        }
        if h.doomed >= PURGE_COUNT || h.doomed_bytes >= PURGE_BYTES {
            purge(h);
        }
    }
    if st.doomed_bytes() >= PURGE_ALL_BYTES {
        st.sessions.values_mut().for_each(|h| {
            purge(h);
        });
    }
}

/// Take the oldest message out of `h` (in flight first: those are older than anything
/// queued); whether it was a marked one.
fn evict(h: &mut Held) -> Option<bool> {
    if let Some(&size) = h.inflight_sizes.front() {
        if let Ok(mut inflight) = h.inflight.try_write() {
            if inflight.pop_front().is_some() {
                h.inflight_sizes.pop_front();
                h.bytes -= size;
                return Some(false);
            }
        }
        // Gone meanwhile, or busy: count it as gone from here on.
        h.bytes -= h.inflight_sizes.iter().sum::<usize>();
        h.inflight_sizes.clear();
    }
    h.queue.pop()?;
    let item = h.items.pop_front()?;
    h.bytes -= item.size;
    if item.doomed {
        h.doomed -= 1;
        h.doomed_bytes -= item.size;
    }
    Some(item.doomed)
}

/// Rebuild `h`'s queue without its marked messages; the bytes that freed.
fn purge(h: &mut Held) -> usize {
    if h.doomed == 0 {
        return 0;
    }
    if h.items.len() != h.queue.len() {
        // Out of step (never seen): which ones were marked is unknown now.
        rescan(h);
        return 0;
    }
    let n = h.queue.len().min(h.items.len());
    let mut freed = 0;
    for _ in 0..n {
        let (Some(m), Some(item)) = (h.queue.pop(), h.items.pop_front()) else {
            break;
        };
        // Pushing back what was just popped always fits.
        if item.doomed || h.queue.push(m).is_err() {
            freed += item.size;
        } else {
            h.items.push_back(item);
        }
    }
    h.bytes -= freed;
    h.doomed = 0;
    h.doomed_bytes = 0;
    freed
}

/// Measure `h`'s queue anew (nothing marked; the in-flight sizes are kept).
fn rescan(h: &mut Held) {
    let n = h.queue.len();
    let mut items = VecDeque::with_capacity(n);
    for _ in 0..n {
        let Some(m) = h.queue.pop() else {
            break;
        };
        let size = message_bytes(&m.1);
        if h.queue.push(m).is_ok() {
            items.push_back(Item {
                size,
                doomed: false,
            });
        }
    }
    h.items = items;
    h.doomed = 0;
    h.doomed_bytes = 0;
    h.bytes =
        h.inflight_sizes.iter().sum::<usize>() + h.items.iter().map(|i| i.size).sum::<usize>();
}
