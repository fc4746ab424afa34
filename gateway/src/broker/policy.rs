//! Who may connect to the embedded broker and what each client may do: the login check
//! and the rights check built around rmqtt's hooks (rmqtt has the hook points, not the
//! Mosquitto-style files).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rmqtt::{
    codec::v5::SubscribeAckReason,
    hook::{Handler, HookResult, Parameter, ReturnType},
    session::Session,
    types::{AuthResult, ConnectInfo, Publish, PublishAclResult, Subscribe, SubscribeAclResult},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{acl::Acl, link::ClientCommand, passwd::Users};
use crate::{
    broker::passwd::constant_eq, health::BrokerStats, model::EmbeddedBroker, topics::LiveContract,
    Model,
};

/// The decisions, from the validated configuration.
pub(crate) struct Policy {
    users: Option<Arc<Users>>,
    acl: Option<Arc<Acl>>,
    allow_anonymous: bool,
    /// The gateway's client id is reserved; with the secret (known only to this process,
    /// used by the start-up probe) a login is a superuser.
    gateway_client_id: String,
    gateway_secret: Arc<str>,
    /// Topics only the gateway publishes (points, their `/set/result` and `/get/result`,
    /// status, availability and diagnostics), and `<topic>/set` of every writable point
    /// and `<topic>/get` of every point, whose publishes go to the gateway; a reload
    /// replaces it.
    contract: LiveContract,
    /// Clients connected at once, the gateway not counted.
    max_connections: usize,
}

impl Policy {
    /// The policy for `model`'s embedded broker.
    pub(crate) fn new(model: &Model, e: &EmbeddedBroker, contract: LiveContract) -> Policy {
        Policy {
            users: e.users.clone(),
            acl: e.acl.clone(),
            allow_anonymous: e.allow_anonymous,
            gateway_client_id: model.mqtt.client_id.clone(),
            gateway_secret: e.secret.0.as_str().into(),
            contract,
            max_connections: e.max_connections,
        }
    }

    fn login(&self, client_id: &str, user: Option<&str>, password: Option<&[u8]>) -> Login {
        if client_id == self.gateway_client_id {
            return match password {
                Some(p) if constant_eq(p, self.gateway_secret.as_bytes()) => Login::Gateway,
                _ => Login::Refused("client id reserved for the gateway"),
            };
        }
        match (user, &self.users) {
            (Some(u), Some(users)) => {
                if users.verify(u, password.unwrap_or_default()) {
                    Login::User
                } else {
                    Login::BadPassword
                }
            }
            // Without a users file a user name proves nothing: the client is anonymous.
            (_, None) | (None, Some(_)) if self.allow_anonymous => Login::User,
            (None, Some(_)) | (_, None) => Login::Refused("anonymous clients are not allowed"),
        }
    }

    /// The user name that rights apply to: without a users file nobody proved a name,
    /// so every client is anonymous.
    pub(crate) fn acl_user<'a>(&self, user: Option<&'a str>) -> Option<&'a str> {
        self.users.as_ref().and(user)
    }

    /// Whether a client may publish on `topic` (the gateway is a superuser and never
    /// asks).
    pub(crate) fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        if topic.starts_with('$') || self.contract.get().protects(topic) {
            return false;
        }
        match &self.acl {
            Some(acl) => acl.may_publish(user, client_id, topic),
            None => true,
        }
    }

    /// Whether a client (from `addr`) may send a commissioning request on `topic`
    /// (`<base>/bus/<id>/request`): the rights file's write right, or without one, a
    /// client connected over loopback (this machine). `Err`: why not.
    pub(crate) fn may_request(
        &self,
        user: Option<&str>,
        client_id: &str,
        addr: Option<SocketAddr>,
        topic: &str,
    ) -> Result<(), &'static str> {
        match &self.acl {
            Some(acl) if acl.may_publish(user, client_id, topic) => Ok(()),
            Some(_) => Err(
                "not authorised: the acl_file grants this client no write on the \
                 request topic",
            ),
            None if addr.is_some_and(|a| a.ip().to_canonical().is_loopback()) => Ok(()),
            None => Err(
                "not authorised: without an acl_file, only clients on this machine \
                 (loopback) may send commissioning requests",
            ),
        }
    }

    /// Whether `topic` is a commissioning request topic (`<base>/bus/<id>/request`).
    pub(crate) fn is_request(&self, topic: &str) -> bool {
        matches!(
            self.contract.get().classify(topic),
            Some(crate::topics::Role::BusRequest(_))
        )
    }

    /// Whether `topic` is one of the names of the gateway's topic contract.
    pub(crate) fn is_gateway_name(&self, topic: &str) -> bool {
        self.contract.get().classify(topic).is_some()
    }

    /// Whether a client's `payload` on `topic` would pass for one of the gateway's Home
    /// Assistant entities or devices (`discovery`).
    pub(crate) fn claims_gateway(&self, topic: &str, payload: &[u8]) -> bool {
        super::discovery::claims_gateway(&self.contract.get(), topic, payload)
    }

    /// Whether the gateway hears publishes on `topic`: the `<topic>/set` of a writable
    /// point, the `<topic>/get` of a point, or Home Assistant's status.
    pub(crate) fn is_command(&self, topic: &str) -> bool {
        let c = self.contract.get();
        c.commands.contains_key(topic) || c.reads(topic) || c.heard.contains(topic)
    }

    /// Whether a client may receive a message on `topic`: checked on every delivery
    /// (`delivery`), only with a rights file.
    pub(crate) fn may_read(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        match &self.acl {
            Some(acl) => {
                client_id == self.gateway_client_id
                    || acl.may_read(self.acl_user(user), client_id, topic)
            }
            None => true,
        }
    }

    /// Whether a client may subscribe to `filter`.
    pub(crate) fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        match &self.acl {
            Some(acl) => acl.may_subscribe(user, client_id, filter),
            None => true,
        }
    }
}

enum Login {
    Gateway,
    User,
    BadPassword,
    Refused(&'static str),
}

/// Refusals already logged, so that a client retrying every second logs once a minute.
struct Refusals {
    last: HashMap<(String, &'static str), Instant>,
    /// Start of the current minute and the lines logged in it.
    window: Instant,
    in_window: u32,
}

/// Most refusal lines logged per minute (the counter in diagnostics counts them all).
const REFUSALS_PER_MINUTE: u32 = 20;

/// How long one refusal (client id and reason) stays quiet after it was logged.
const REFUSAL_QUIET: Duration = Duration::from_secs(60);
/// Most refusals remembered; a flood of random client ids starts over instead of growing.
const REFUSALS_KEPT: usize = 1024;

impl Refusals {
    fn should_log(&mut self, client_id: &str, reason: &'static str) -> bool {
        let now = Instant::now();
        // At most REFUSALS_PER_MINUTE lines a minute in all, whatever the client ids.
        if now.duration_since(self.window) >= REFUSAL_QUIET {
            self.window = now;
            self.in_window = 0;
        }
        if self.in_window >= REFUSALS_PER_MINUTE {
            return false;
        }
        if self.last.len() >= REFUSALS_KEPT {
            self.last
                .retain(|_, t| now.duration_since(*t) < REFUSAL_QUIET);
            if self.last.len() >= REFUSALS_KEPT {
                self.last.clear();
            }
        }
        let key = (client_id.to_string(), reason);
        match self.last.get(&key) {
            Some(t) if now.duration_since(*t) < REFUSAL_QUIET => false,
            _ => {
                self.last.insert(key, now);
                self.in_window += 1;
                true
            }
        }
    }
}

/// The rmqtt hook handler: logins, rights, connection logs and the counters.
pub(crate) struct Guard {
    policy: Arc<Policy>,
    stats: Arc<BrokerStats>,
    online: Arc<Online>,
    retained: Arc<ClientRetained>,
    refusals: Mutex<Refusals>,
    /// Where allowed publishes on `.../set` and `.../get` go: the gateway's command
    /// router.
    commands: mpsc::Sender<ClientCommand>,
}

/// Most retained topics that clients (not the gateway) may keep in the broker: a client
/// can neither fill the memory nor the retained store the gateway's values need.
pub(crate) const CLIENT_RETAINED_TOPICS: usize = 10_000;
/// Most bytes of retained payload that clients may keep.
pub(crate) const CLIENT_RETAINED_BYTES: usize = 16 * 1024 * 1024;

/// The retained messages clients keep, by topic (payload length), and their total.
#[derive(Default)]
pub(crate) struct ClientRetained(Mutex<(HashMap<String, usize>, usize)>);

impl ClientRetained {
    /// The topics clients keep a retained message on.
    pub(crate) fn topics(&self) -> Vec<String> {
        self.0
            .lock()
            .map_or(Vec::new(), |g| g.0.keys().cloned().collect())
    }

    /// Bytes of retained payload clients keep now.
    pub(crate) fn bytes(&self) -> usize {
        self.0.lock().map_or(0, |g| g.1)
    }

    /// Whether a client's publish may go on: a retained message fits the bounds, or
    /// replaces or clears one already counted. Other messages always may.
    pub(crate) fn admit(&self, topic: &str, retain: bool, len: usize) -> bool {
        if !retain {
            return true;
        }
        let Ok(mut guard) = self.0.lock() else {
            return false;
        };
        let (topics, bytes) = &mut *guard;
        let old = topics.get(topic).copied();
        if len == 0 {
            if let Some(o) = old {
                topics.remove(topic);
                *bytes -= o;
                // Cleared: the map does not keep the room of thousands gone.
                if topics.len() * 4 < topics.capacity() {
                    topics.shrink_to_fit();
                }
            }
            return true;
        }
        let after = *bytes - old.unwrap_or(0) + len;
        if after > CLIENT_RETAINED_BYTES
            || (old.is_none() && topics.len() >= CLIENT_RETAINED_TOPICS)
        {
            return false;
        }
        topics.insert(topic.to_string(), len);
        *bytes = after;
        true
    }
}

/// The connected sessions (by client id and creation time), so that the count stays
/// right whether a session ends with rmqtt's disconnect hook or is reaped.
#[derive(Default)]
pub(crate) struct Online(Mutex<HashSet<(String, i64)>>);

impl Online {
    fn len(&self) -> usize {
        self.0.lock().map_or(0, |s| s.len())
    }

    fn insert(&self, id: &rmqtt::types::Id, stats: &BrokerStats) {
        if let Ok(mut set) = self.0.lock() {
            // A session taken over by a new connection with the same id ends without a
            // disconnect hook: forget it here.
            set.retain(|(c, _)| *c != *id.client_id);
            set.insert((id.client_id.to_string(), id.create_time));
            stats.clients.store(set.len() as i64, Relaxed);
        }
    }

    /// Forget a session; whether it was counted.
    pub(crate) fn remove(&self, id: &rmqtt::types::Id, stats: &BrokerStats) -> bool {
        match self.0.lock() {
            Ok(mut set) => {
                let was = set.remove(&(id.client_id.to_string(), id.create_time));
                stats.clients.store(set.len() as i64, Relaxed);
                was
            }
            Err(_) => false,
        }
    }
}

impl Guard {
    pub(crate) fn new(
        policy: Arc<Policy>,
        stats: Arc<BrokerStats>,
        online: Arc<Online>,
        retained: Arc<ClientRetained>,
        commands: mpsc::Sender<ClientCommand>,
    ) -> Guard {
        Guard {
            policy,
            stats,
            online,
            retained,
            commands,
            refusals: Mutex::new(Refusals {
                last: HashMap::new(),
                window: Instant::now(),
                in_window: 0,
            }),
        }
    }

    /// Hand an allowed command or read request to the gateway (this is its only way in:
    /// the gateway is not a subscriber of its own broker). Only the writable points' `/set`
    /// topics and the points' `/get` topics are taken; other applications' `.../set`
    /// traffic is none of the gateway's business. Dropped and counted when the gateway is
    /// that far behind.
    fn command(&self, topic: &str, payload: &bytes::Bytes) {
        self.forward(ClientCommand {
            topic: topic.to_string(),
            payload: payload.clone(),
            request: None,
        });
    }

    /// Hand a client's message to the gateway; dropped and counted when it is that far
    /// behind.
    fn forward(&self, c: ClientCommand) {
        if let Err(e) = self.commands.try_send(c) {
            self.stats.dropped_commands.fetch_add(1, Relaxed);
            let topic = e.into_inner().topic;
            tracing::debug!(topic = ?topic, "Command dropped: the gateway is busy.");
        }
    }

    fn refused(
        &self,
        client_id: &str,
        user: Option<&str>,
        addr: Option<SocketAddr>,
        why: &'static str,
    ) {
        self.stats.refused_logins.fetch_add(1, Relaxed);
        let log = self
            .refusals
            .lock()
            .map(|mut r| r.should_log(client_id, why))
            .unwrap_or(false);
        if log {
            warn!(
                client = ?client_id,
                user = ?user.unwrap_or("-"),
                addr = %addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
                reason = why,
                "Login refused."
            );
        }
    }
}

fn addr_text(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_string(), |a| a.to_string())
}

impl Guard {
    /// The login check: user and password, the connection limit, the Last Will's topic.
    fn authenticate(&self, c: &ConnectInfo) -> AuthResult {
        let id = c.id();
        let user = c.username().map(|u| &**u);
        let will = c.last_will().map(|w| match w {
            rmqtt::types::LastWill::V3(w) => (w.topic.to_string(), w.message.clone()),
            rmqtt::types::LastWill::V5(w) => (w.topic.to_string(), w.message.clone()),
        });
        let login = self
            .policy
            .login(&id.client_id, user, c.password().map(|p| &p[..]));
        let login = match login {
            // The gateway is not a client of its own broker (see `link`).
            Login::User if self.online.len() >= self.policy.max_connections => {
                Login::Refused("too many clients (max_connections)")
            }
            // A Last Will is published by the broker without a publish check: refuse a
            // client whose Will it may not publish (as Mosquitto 2).
            Login::User
                if will.as_ref().is_some_and(|(t, m)| {
                    !self
                        .policy
                        .may_publish(self.policy.acl_user(user), &id.client_id, t)
                        || self.policy.claims_gateway(t, m)
                }) =>
            {
                Login::Refused("Last Will on a topic the client may not publish")
            }
            other => other,
        };
        match login {
            Login::Gateway => AuthResult::Allow(true, None),
            Login::User => AuthResult::Allow(false, None),
            Login::BadPassword => {
                self.refused(
                    &id.client_id,
                    user,
                    id.remote_addr,
                    "wrong user name or password",
                );
                // "Not authorised" (CONNACK 5), as Mosquitto answers it.
                AuthResult::NotAuthorized
            }
            Login::Refused(why) => {
                self.refused(&id.client_id, user, id.remote_addr, why);
                AuthResult::NotAuthorized
            }
        }
    }

    /// The rights check of a subscription.
    fn subscribe(&self, s: &Session, sub: &Subscribe) -> SubscribeAclResult {
        let user = self.policy.acl_user(s.id.username.as_deref());
        if self
            .policy
            .may_subscribe(user, &s.id.client_id, &sub.topic_filter)
        {
            SubscribeAclResult::new_success(sub.opts.qos(), None)
        } else {
            self.stats.denied_subscriptions.fetch_add(1, Relaxed);
            tracing::debug!(client = ?&*s.id.client_id, filter = ?&*sub.topic_filter, "Subscription denied.");
            SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
        }
    }

    /// The rights check of a publish; an allowed one on a command topic goes to the
    /// gateway (a denied one is never written).
    fn publish(&self, s: &Session, p: &Publish) -> PublishAclResult {
        // Commissioning requests: to the gateway, refused ones too (it answers why).
        if let Some(request) = super::requests::check(&self.policy, s, p) {
            let refused = request.refused.is_some();
            self.forward(ClientCommand {
                topic: p.topic.to_string(),
                payload: p.payload.clone(),
                request: Some(Box::new(request)),
            });
            return if refused {
                self.stats.denied_publishes.fetch_add(1, Relaxed);
                PublishAclResult::rejected(false, Some("not authorized".into()))
            } else {
                PublishAclResult::allow()
            };
        }
        let user = self.policy.acl_user(s.id.username.as_deref());
        let allowed = self.policy.may_publish(user, &s.id.client_id, &p.topic)
            && !self.policy.claims_gateway(&p.topic, &p.payload)
            && self.retained.admit(&p.topic, p.retain, p.payload.len());
        if allowed {
            if self.policy.is_command(&p.topic) {
                self.command(&p.topic, &p.payload);
            }
            PublishAclResult::allow()
        } else {
            self.stats.denied_publishes.fetch_add(1, Relaxed);
            tracing::debug!(client = ?&*s.id.client_id, topic = ?&*p.topic, "Publish denied.");
            PublishAclResult::rejected(false, Some("not authorized".into()))
        }
    }

    /// A client connected (`up`) or disconnected (with `reason`).
    fn presence(&self, s: &Session, up: bool, reason: Option<&dyn std::fmt::Display>) {
        if up {
            self.online.insert(&s.id, &self.stats);
            self.stats.connects.fetch_add(1, Relaxed);
        } else {
            self.online.remove(&s.id, &self.stats);
        }
        if s.id.client_id == self.policy.gateway_client_id {
            return;
        }
        let (client, user) = (&*s.id.client_id, s.id.username.as_deref().unwrap_or("-"));
        let addr = addr_text(s.id.remote_addr);
        match reason {
            None => info!(client = ?client, user = ?user, addr = %addr, "Client connected."),
            Some(r) => {
                // The reason's text can quote what the client sent.
                let reason = r.to_string();
                info!(client = ?client, user = ?user, addr = %addr, reason = ?reason, "Client disconnected.");
            }
        }
    }
}

#[async_trait]
impl Handler for Guard {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(c) => {
                (false, Some(HookResult::AuthResult(self.authenticate(c))))
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => (
                false,
                Some(HookResult::SubscribeAclResult(self.subscribe(s, sub))),
            ),
            Parameter::MessagePublishCheckAcl(s, p) => (
                false,
                Some(HookResult::PublishAclResult(self.publish(s, p))),
            ),
            Parameter::ClientConnected(s) => {
                self.presence(s, true, None);
                (true, acc)
            }
            Parameter::ClientDisconnected(s, reason) => {
                self.presence(s, false, Some(reason));
                (true, acc)
            }
            Parameter::MessagePublish(_, from, p) => {
                self.stats.messages_received.fetch_add(1, Relaxed);
                // A Last Will skips the publish check (its topic was checked at login), so
                // a Will on a command topic (a fail-safe "pump off") reaches the gateway
                // here.
                if matches!(from.typ(), rmqtt::types::FromType::LastWill)
                    && self.policy.is_command(&p.topic)
                {
                    self.command(&p.topic, &p.payload);
                }
                (true, acc)
            }
            Parameter::MessageDelivered(..) => {
                self.stats.messages_sent.fetch_add(1, Relaxed);
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_retained_bounds() {
        let r = ClientRetained::default();
        assert!(
            r.admit("a", false, CLIENT_RETAINED_BYTES * 2),
            "not retained"
        );
        assert!(r.admit("a", true, CLIENT_RETAINED_BYTES));
        assert!(!r.admit("b", true, 1), "bytes full");
        assert!(r.admit("a", true, 10), "a replacement fits");
        assert!(r.admit("a", true, 0), "a clear");
        for i in 0..CLIENT_RETAINED_TOPICS {
            assert!(r.admit(&format!("t/{i}"), true, 1));
        }
        assert!(!r.admit("one-more", true, 1), "topics full");
        assert!(r.admit("t/0", true, 2), "an existing topic still updates");
    }
}
