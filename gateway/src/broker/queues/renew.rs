//! Offline sessions made anew, through rmqtt's public API: for a restored session, and
//! for one that has taken in many messages while offline.
//!
//! rmqtt wakes a session's delivery loop with one signal per queued message, on a
//! channel that only the session's (gone) connection reads: while a session is offline,
//! every message queued for it leaves about 130 bytes there, whether it stays queued or is
//! dropped (measured: +6.5 MB RSS per 50 000 messages to an offline session that holds
//! 1 000; an offline Home Assistant with a reading a second grows by 11 MB a day).
//! Nothing outside rmqtt can reach that channel. So once an offline session has taken in
//! [`RENEW_AFTER`] × its queue length, it is replaced by a new offline session with the
//! same client id, owner, subscriptions, expiry and messages, and the old one's loop is
//! ended (as a takeover ends it) together with its channel.

use std::{sync::Arc, time::Duration};

use rmqtt::{
    context::ServerContext,
    inflight::MomentStatus,
    session::{Session, SessionState},
    types::{
        ClientId, ConnectInfo, DisconnectInfo, Id, ListenerConfig, Message, SessionSubs, Subscribe,
        Tx, UserName,
    },
};
use tracing::debug;

use super::Queues;
use crate::broker::store::persistent_expiry;

/// An offline session is made anew after it took in this many times its queue length.
pub(crate) const RENEW_AFTER: usize = 2;

/// What a new offline session is made of.
pub(crate) struct Offline<'a> {
    pub(crate) client_id: &'a str,
    /// Its owner.
    pub(crate) user: Option<&'a str>,
    pub(crate) created_ms: i64,
    /// How long it lasts unless its client comes back.
    pub(crate) expiry: Duration,
    pub(crate) listen_cfg: ListenerConfig,
    pub(crate) listener_id: u16,
}

/// A new offline session running rmqtt's offline loop (not registered yet): an MQTT 5
/// CONNECT without a Will and with the time left as its session expiry, disconnected
/// now, so that the expiry rmqtt computes (and a snapshot reads back) is this one.
pub(crate) async fn offline_session(
    scx: &ServerContext,
    o: &Offline<'_>,
) -> rmqtt::Result<(Session, Tx)> {
    let now = rmqtt::utils::timestamp_millis();
    let id = Id::new(
        scx.node.id(),
        o.listener_id,
        None,
        None,
        ClientId::from(o.client_id),
        o.user.map(UserName::from),
    );
    let left = u32::try_from(o.expiry.as_secs()).unwrap_or(u32::MAX).max(1);
    let connect = rmqtt::codec::v5::Connect {
        clean_start: false,
        keep_alive: 60,
        session_expiry_interval_secs: left,
        auth_method: None,
        auth_data: None,
        request_problem_info: false,
        request_response_info: false,
        receive_max: None,
        topic_alias_max: 0,
        user_properties: Vec::new(),
        max_packet_size: None,
        last_will: None,
        client_id: ClientId::from(o.client_id),
        username: o.user.map(UserName::from),
        password: None,
        cert: None,
    };
    let conn_info = Arc::new(ConnectInfo::V5(id.clone(), Box::new(connect)));
    let fitter =
        scx.extends
            .fitter_mgr()
            .await
            .create(conn_info.clone(), id.clone(), o.listen_cfg.clone());
    let session = Session::new(
        id,
        scx.clone(),
        fitter.max_mqueue_len(),
        o.listen_cfg.clone(),
        fitter.clone(),
        None,
        fitter.max_inflight(),
        o.created_ms,
        conn_info,
        false,
        false,
        false,
        now,
        SessionSubs::new(),
        Some(DisconnectInfo::new(now)),
        None,
    )
    .await?;
    let tx = SessionState::offline_restart(session.clone(), Duration::from_secs(u64::from(left)))
        .await?;
    Ok((session, tx))
}

/// Replace the offline session `old` by a new one (see the module); whether it was.
pub(crate) async fn renew(scx: &ServerContext, queues: &Queues, old: &Session) -> bool {
    // A pending MQTT 5 Will with a delay would be lost with the old loop: not renewed.
    let will_pending = old
        .connect_info()
        .await
        .ok()
        .and_then(|c| c.last_will().and_then(|w| w.will_delay_interval()))
        .is_some();
    let Some(expiry) = persistent_expiry(old).await.filter(|_| !will_pending) else {
        return false;
    };
    let now = rmqtt::utils::timestamp_millis();
    let gone = old.disconnected_at().await.unwrap_or(now);
    let left = Duration::from_millis(u64::try_from(now - gone).unwrap_or(0));
    let Some(left) = expiry.checked_sub(left).filter(|l| !l.is_zero()) else {
        return false;
    };
    let entry = scx.extends.shared().await.entry(old.id.clone());
    // A client connecting now holds the lock: it takes the session over instead.
    let Ok(mut locked) = entry.try_lock().await else {
        return false;
    };
    if locked.id_same() != Some(true) || locked.is_connected().await {
        return false;
    }
    let Some(old_tx) = locked.tx() else {
        return false;
    };
    let user = old.id.username.as_ref().map(|u| u.to_string());
    let spec = Offline {
        client_id: &old.id.client_id,
        user: user.as_deref(),
        created_ms: old.created_at().await.unwrap_or(now),
        expiry: left,
        listen_cfg: old.listen_cfg().clone(),
        listener_id: old.id.lid,
    };
    let Ok((new, new_tx)) = offline_session(scx, &spec).await else {
        return false;
    };
    let subs: Vec<Subscribe> = match old.subscriptions().await {
        Ok(subs) => subs
            .read()
            .await
            .iter()
            .map(|(tf, opts)| Subscribe {
                topic_filter: tf.clone(),
                opts: opts.clone(),
            })
            .collect(),
        Err(_) => return false,
    };
    let inflight = match old.out_inflight().try_write() {
        Ok(mut w) => w.to_inflight_messages(),
        Err(_) => Vec::new(),
    };
    // From here to the kick nothing yields: no message can be routed to either session
    // meanwhile. Messages go to the new one from the `set` on; what the old loop still
    // had in its channel it queues before it answers the kick, and is moved after.
    if locked.set(new.clone(), new_tx).await.is_err() {
        return false;
    }
    for m in inflight {
        // UnComplete: the client has the message (PUBREC came); only PUBREL was owed.
        if m.status != MomentStatus::UnComplete {
            let mut p = m.publish;
            p.dup = false;
            let _ = new.deliver_queue().push((m.from, p));
        }
    }
    move_queue(old, &new);
    let (ack, acked) = tokio::sync::oneshot::channel();
    let kicked = old_tx
        .unbounded_send(Message::Kick(ack, new.id.clone(), false, false))
        .is_ok();
    // Under the new session's id: the router keeps the id it was given, and removes a
    // route only for that id (when the session ends or its client starts clean).
    let by_new = scx.extends.shared().await.entry(new.id.clone());
    for s in &subs {
        if let Err(e) = by_new.subscribe(s).await {
            debug!(client = ?old.id.client_id, error = %e, "Subscription not renewed.");
        }
    }
    drop(locked);
    if kicked {
        let _ = tokio::time::timeout(Duration::from_secs(5), acked).await;
    }
    move_queue(old, &new);
    queues.track(&new);
    true
}

/// Move what `from`'s queue holds to the end of `to`'s, in order.
fn move_queue(from: &Session, to: &Session) {
    while let Some(m) = from.deliver_queue().pop() {
        if to.deliver_queue().push(m).is_err() {
            break;
        }
    }
}
