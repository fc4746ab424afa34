//! The embedded broker's store (`mqtt.embedded.persistence`): what clients stored in the
//! broker, kept across restarts, upgrades and crashes.
//!
//! Kept: clients' retained messages (never the gateway's own topics: it republishes
//! those itself and must never publish a stale value) and persistent sessions (client id,
//! owning user, subscriptions with their options, the QoS 1/2 messages queued or in
//! flight, the expiry), within the queue bounds.
//!
//! Written in the background every `autosave_interval` when something changed, and once
//! more at shutdown: the snapshot is taken on the broker's thread (payloads are shared,
//! not copied) and written on tokio's blocking pool to `broker.store.tmp`, fsynced,
//! renamed over `broker.store`, and the directory fsynced: a crash at any moment leaves
//! the previous file or the new one, whole. Every record carries a CRC besides: a file
//! damaged anyway (a torn write on a file system that reorders, a bad block) gives back
//! the records before the damage; the file is reported (ERROR, with path and reason) and
//! set aside as `broker.store.corrupt-<time>`. Nothing here stops the gateway.
//!
//! Read (on the broker's thread, before its listener opens) every time a broker is
//! built: at start, and after a failure the rebuilt broker gets what was last saved.

mod convert;
mod format;

use std::{
    fs::{self, File},
    io::{self, BufReader, BufWriter},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use rmqtt::context::ServerContext;
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{debug, error, info};

pub(crate) use convert::persistent_expiry;
pub use convert::Restored;
pub(crate) use format::Snapshot;

use convert::{restore, Keep, RestoreRules};

use super::{
    policy::{ClientRetained, Policy},
    queues::Queues,
};
use crate::{
    health::BrokerStats,
    model::{Model, Persistence},
    topics::LiveContract,
};

/// The gateway's handle on the store: a save at shutdown.
#[derive(Clone, Debug, Default)]
pub struct Saver(Option<mpsc::Sender<oneshot::Sender<()>>>);

impl Saver {
    /// Write the store now and wait, up to `wait`, until it is on disk (nothing without
    /// persistence).
    pub async fn save(&self, wait: Duration) {
        let Some(tx) = &self.0 else {
            return;
        };
        let (done, written) = oneshot::channel();
        let _ = tokio::time::timeout(wait, async {
            if tx.send(done).await.is_ok() {
                let _ = written.await;
            }
        })
        .await;
    }
}

/// The broker's end of the store, kept by the supervisor across rebuilds.
pub(crate) struct StoreEnd {
    cfg: Persistence,
    stats: Arc<BrokerStats>,
    requests: Arc<Mutex<mpsc::Receiver<oneshot::Sender<()>>>>,
    /// A failure was logged and no save succeeded since (one ERROR per streak).
    failing: Arc<AtomicBool>,
}

/// The gateway's and the broker's ends of the store (`None`: persistence off).
pub(crate) fn pair(
    cfg: Option<&Persistence>,
    stats: &Arc<BrokerStats>,
) -> (Saver, Option<StoreEnd>) {
    stats.offline.persistence.store(cfg.is_some(), Relaxed);
    let Some(cfg) = cfg else {
        return (Saver(None), None);
    };
    let (tx, rx) = mpsc::channel(4);
    (
        Saver(Some(tx)),
        Some(StoreEnd {
            cfg: cfg.clone(),
            stats: stats.clone(),
            requests: Arc::new(Mutex::new(rx)),
            failing: Arc::default(),
        }),
    )
}

/// What reading the store gave.
pub(crate) struct Loaded {
    pub(crate) snapshot: Snapshot,
    /// The file was damaged: what could be read should be written anew soon.
    pub(crate) damaged: bool,
}

impl StoreEnd {
    /// Read the store: what it holds; nothing for a missing file. An unreadable or damaged
    /// file is reported and set aside (what came before the damage is kept).
    pub(crate) fn load(&self) -> Loaded {
        load(&self.cfg.file)
    }

    /// Save at every interval when something changed (`changes` moved), and when the
    /// gateway asks, until the broker's runtime ends.
    fn run(
        &self,
        scx: ServerContext,
        keep: Keep,
        (queues, retained): (Arc<Queues>, Arc<ClientRetained>),
        damaged: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (requests, interval) = (self.requests.clone(), self.cfg.autosave_interval);
        let writer = Writer {
            path: self.cfg.file.clone(),
            stats: self.stats.clone(),
            failing: self.failing.clone(),
        };
        async move {
            let mut requests = requests.lock().await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // What was just read is on disk already (unless it was damaged).
            let mut written = (!damaged).then(|| queues.changes.load(Relaxed));
            loop {
                let reply = tokio::select! {
                    _ = tick.tick() => None,
                    r = requests.recv() => r,
                };
                let now = queues.changes.load(Relaxed);
                if reply.is_none() && written == Some(now) {
                    continue;
                }
                let snap = convert::snapshot(&scx, &keep, &queues, retained.topics()).await;
                if writer.write(snap).await {
                    written = Some(now);
                }
                if let Some(r) = reply {
                    let _ = r.send(());
                }
            }
        }
    }
}

/// What restoring needs from the broker being built.
pub(crate) struct Rules<'a> {
    /// Rights: a restored subscription its owner may no longer make is left out.
    pub(crate) policy: &'a Policy,
    /// The clients' retained bounds, which restored messages count against; the store
    /// saves the retained messages of the topics it counts.
    pub(crate) retained: &'a Arc<ClientRetained>,
    /// The listener's settings, which restored sessions get.
    pub(crate) listen_cfg: rmqtt::types::ListenerConfig,
    /// Its id.
    pub(crate) listener_id: u16,
    /// Most offline sessions kept.
    pub(crate) max_sessions: usize,
}

impl StoreEnd {
    /// The store of a new broker: what it holds put back (before the listener opens), and
    /// the task that saves started. What was restored.
    pub(crate) async fn start(
        &self,
        scx: &ServerContext,
        model: &Model,
        contract: &LiveContract,
        rules: &Rules<'_>,
        queues: &Arc<Queues>,
    ) -> Restored {
        let (restored, damaged) = self.restore(scx, model, contract, rules, queues).await;
        let keep = Keep {
            gateway_client_id: model.mqtt.client_id.clone(),
            contract: contract.clone(),
        };
        let ends = (queues.clone(), rules.retained.clone());
        tokio::spawn(self.run(scx.clone(), keep, ends, damaged));
        restored
    }

    /// Read the store and put what it holds back into `scx`, before the listener opens.
    /// What was restored (the sessions' owners with it), and whether the file was damaged
    /// (what could be read is then written anew at the first interval).
    async fn restore(
        &self,
        scx: &ServerContext,
        model: &Model,
        contract: &LiveContract,
        rules: &Rules<'_>,
        queues: &Queues,
    ) -> (Restored, bool) {
        let loaded = self.load();
        let keep = Keep {
            gateway_client_id: model.mqtt.client_id.clone(),
            contract: contract.clone(),
        };
        let admit = |topic: &str, len: usize| rules.retained.admit(topic, true, len);
        let may_subscribe = |user: Option<&str>, client: &str, filter: &str| {
            rules
                .policy
                .may_subscribe(rules.policy.acl_user(user), client, filter)
        };
        let r = RestoreRules {
            keep: &keep,
            listen_cfg: rules.listen_cfg.clone(),
            listener_id: rules.listener_id,
            max_sessions: rules.max_sessions,
            admit_retained: &admit,
            may_subscribe: &may_subscribe,
        };
        let had = !loaded.snapshot.is_empty();
        let restored = restore(scx, loaded.snapshot, &r, queues).await;
        let o = &self.stats.offline;
        o.restored_retained
            .fetch_add(restored.retained as u64, Relaxed);
        o.restored_sessions
            .fetch_add(restored.owners.len() as u64, Relaxed);
        o.restored_messages
            .fetch_add(restored.messages as u64, Relaxed);
        if had {
            info!(
                path = %self.cfg.file.display(),
                retained = restored.retained,
                sessions = restored.owners.len(),
                messages = restored.messages,
                "Broker store restored."
            );
        }
        (restored, loaded.damaged)
    }
}

/// Writes snapshots to the store file.
struct Writer {
    path: PathBuf,
    stats: Arc<BrokerStats>,
    failing: Arc<AtomicBool>,
}

impl Writer {
    /// Write `snap` (on the blocking pool); whether it is on disk. A failure is logged once
    /// until a write succeeds again.
    async fn write(&self, snap: Snapshot) -> bool {
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || write_file(&path, &snap))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        let o = &self.stats.offline;
        match result {
            Ok(None) => true,
            Ok(Some(bytes)) => {
                o.saves.fetch_add(1, Relaxed);
                o.store_bytes.store(bytes, Relaxed);
                o.last_save_ms
                    .store(rmqtt::utils::timestamp_millis().max(0) as u64, Relaxed);
                if self.failing.swap(false, Relaxed) {
                    info!(path = %self.path.display(), "Broker store written again.");
                } else {
                    debug!(path = %self.path.display(), bytes, "Broker store written.");
                }
                true
            }
            Err(e) => {
                o.save_failures.fetch_add(1, Relaxed);
                if !self.failing.swap(true, Relaxed) {
                    error!(path = %self.path.display(), error = %e, "Broker store not written; retrying at every interval.");
                }
                false
            }
        }
    }
}

/// Write `snap` to `path` through a temporary file, fsynced, renamed, and the directory
/// fsynced; the bytes written, or `None` when there was nothing to write (an empty
/// snapshot and no file yet).
fn write_file(path: &Path, snap: &Snapshot) -> io::Result<Option<u64>> {
    if snap.is_empty() && !path.exists() {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = sibling(path, "tmp");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        // Clients' messages: readable by the gateway's user only.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut w = BufWriter::with_capacity(256 << 10, file);
    let n = format::write(&mut w, snap)?;
    let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(Some(n))
}

/// `<path>.<suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Read the store at `path` (see [`StoreEnd::load`]).
fn load(path: &Path) -> Loaded {
    let empty = || Loaded {
        snapshot: Snapshot::default(),
        damaged: false,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return empty(),
        Err(e) => {
            // Not readable (permissions): left where it is, nothing restored, and the
            // next save will fail and say so too.
            error!(path = %path.display(), error = %e, "Broker store cannot be read; starting without it.");
            return empty();
        }
    };
    match format::read(&mut BufReader::with_capacity(256 << 10, file)) {
        Ok(c) => match c.damage {
            None => Loaded {
                snapshot: c.snapshot,
                damaged: false,
            },
            Some(why) => {
                let aside = set_aside(path);
                error!(
                    path = %path.display(),
                    reason = %why,
                    set_aside = %aside,
                    retained = c.snapshot.retained.len(),
                    sessions = c.snapshot.sessions.len(),
                    "Broker store damaged; what came before the damage is restored."
                );
                Loaded {
                    snapshot: c.snapshot,
                    damaged: true,
                }
            }
        },
        Err(e) => {
            let aside = set_aside(path);
            error!(path = %path.display(), reason = %e, set_aside = %aside, "Broker store unreadable; starting without it.");
            Loaded {
                snapshot: Snapshot::default(),
                damaged: true,
            }
        }
    }
}

/// Rename a bad store to `<name>.corrupt-<time>`; where it went (or why not).
fn set_aside(path: &Path) -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let to = sibling(path, &format!("corrupt-{stamp}"));
    match fs::rename(path, &to) {
        Ok(()) => to.display().to_string(),
        Err(e) => format!("not renamed: {e}"),
    }
}

/// The store's `changes` counter moved for something a hook saw (a client's retained
/// message, a subscription, a session starting or ending).
pub(crate) fn touch(changes: &AtomicU64) {
    changes.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_file_is_set_aside_and_its_good_records_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.store");
        let snap = Snapshot {
            saved_ms: 5,
            retained: vec![format::Message {
                topic: "a/b".into(),
                payload: bytes::Bytes::from_static(b"1"),
                retain: true,
                ..Default::default()
            }],
            sessions: Vec::new(),
        };
        assert!(write_file(&path, &snap).expect("write").is_some());
        let l = load(&path);
        assert!(!l.damaged);
        assert_eq!(l.snapshot, snap);
        // Cut off the end record: the retained message survives, the file goes aside.
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("cut");
        let l = load(&path);
        assert!(l.damaged);
        assert_eq!(l.snapshot.retained, snap.retained);
        assert!(!path.exists(), "set aside");
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            aside.iter().any(|n| n.starts_with("broker.store.corrupt-")),
            "{aside:?}"
        );
        // Garbage: nothing restored, also set aside.
        fs::write(&path, b"garbage").expect("write");
        let l = load(&path);
        assert!(l.damaged && l.snapshot.is_empty() && !path.exists());
    }

    #[test]
    fn nothing_is_written_for_an_empty_broker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("broker.store");
        assert_eq!(write_file(&path, &Snapshot::default()).expect("ok"), None);
        assert!(!path.exists());
    }
}
