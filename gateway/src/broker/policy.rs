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
    types::{AuthResult, PublishAclResult, SubscribeAclResult},
};
use tracing::{info, warn};

use super::{acl::Acl, passwd::Users};
use crate::{broker::passwd::constant_eq, health::BrokerStats, model::EmbeddedBroker, Model};

/// The decisions, from the validated configuration.
pub(crate) struct Policy {
    users: Option<Arc<Users>>,
    acl: Option<Arc<Acl>>,
    allow_anonymous: bool,
    /// The gateway's own client: its id is reserved, and with the secret it may publish
    /// the gateway's topics.
    gateway_client_id: String,
    gateway_secret: Arc<str>,
    /// Topics only the gateway publishes: points, their `/set/result`, status,
    /// availability and diagnostics.
    protected: HashSet<String>,
}

impl Policy {
    /// The policy for `model`'s embedded broker.
    pub(crate) fn new(model: &Model, e: &EmbeddedBroker) -> Policy {
        let mut protected: HashSet<String> = HashSet::new();
        for p in model.points() {
            protected.insert(p.topic.clone());
            protected.insert(p.result_topic());
        }
        for d in model.devices() {
            protected.insert(model.availability_topic(&d.id));
        }
        protected.insert(model.status_topic());
        protected.insert(model.diagnostics_topic());
        Policy {
            users: e.users.clone(),
            acl: e.acl.clone(),
            allow_anonymous: e.allow_anonymous,
            gateway_client_id: model.mqtt.client_id.clone(),
            gateway_secret: e.secret.0.as_str().into(),
            protected,
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

    /// Whether a client may publish on `topic` (the gateway is a superuser and never
    /// asks).
    pub(crate) fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        if topic.starts_with('$') || self.protected.contains(topic) {
            return false;
        }
        match &self.acl {
            Some(acl) => acl.may_publish(user, client_id, topic),
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
}

/// How long one refusal (client id and reason) stays quiet after it was logged.
const REFUSAL_QUIET: Duration = Duration::from_secs(60);
/// Most refusals remembered; a flood of random client ids starts over instead of growing.
const REFUSALS_KEPT: usize = 1024;

impl Refusals {
    fn should_log(&mut self, client_id: &str, reason: &'static str) -> bool {
        let now = Instant::now();
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
    refusals: Mutex<Refusals>,
}

/// The connected sessions (by client id and creation time), so that the count stays
/// right whether a session ends with rmqtt's disconnect hook or is reaped.
#[derive(Default)]
pub(crate) struct Online(Mutex<HashSet<(String, i64)>>);

impl Online {
    fn insert(&self, id: &rmqtt::types::Id, stats: &BrokerStats) {
        if let Ok(mut set) = self.0.lock() {
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
    pub(crate) fn new(policy: Arc<Policy>, stats: Arc<BrokerStats>, online: Arc<Online>) -> Guard {
        Guard {
            policy,
            stats,
            online,
            refusals: Mutex::new(Refusals {
                last: HashMap::new(),
            }),
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
            .unwrap_or(true);
        if log {
            warn!(
                client = %client_id,
                user = user.unwrap_or("-"),
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

#[async_trait]
impl Handler for Guard {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(c) => {
                let id = c.id();
                let user = c.username().map(|u| &**u);
                let result =
                    match self
                        .policy
                        .login(&id.client_id, user, c.password().map(|p| &p[..]))
                    {
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
                    };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let user = s.id.username.as_deref();
                if self
                    .policy
                    .may_subscribe(user, &s.id.client_id, &sub.topic_filter)
                {
                    (
                        false,
                        Some(HookResult::SubscribeAclResult(
                            SubscribeAclResult::new_success(sub.opts.qos(), None),
                        )),
                    )
                } else {
                    self.stats.denied_subscriptions.fetch_add(1, Relaxed);
                    tracing::debug!(client = %s.id.client_id, filter = %sub.topic_filter, "Subscription denied.");
                    (
                        false,
                        Some(HookResult::SubscribeAclResult(
                            SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized),
                        )),
                    )
                }
            }
            Parameter::MessagePublishCheckAcl(s, p) => {
                let user = s.id.username.as_deref();
                if self.policy.may_publish(user, &s.id.client_id, &p.topic) {
                    (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::allow())),
                    )
                } else {
                    self.stats.denied_publishes.fetch_add(1, Relaxed);
                    tracing::debug!(client = %s.id.client_id, topic = %p.topic, "Publish denied.");
                    (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::rejected(
                            false,
                            Some("not authorized".into()),
                        ))),
                    )
                }
            }
            Parameter::ClientConnected(s) => {
                self.online.insert(&s.id, &self.stats);
                self.stats.connects.fetch_add(1, Relaxed);
                if s.id.client_id != self.policy.gateway_client_id {
                    info!(
                        client = %s.id.client_id,
                        user = s.id.username.as_deref().unwrap_or("-"),
                        addr = %addr_text(s.id.remote_addr),
                        "Client connected."
                    );
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(s, reason) => {
                self.online.remove(&s.id, &self.stats);
                if s.id.client_id != self.policy.gateway_client_id {
                    info!(
                        client = %s.id.client_id,
                        user = s.id.username.as_deref().unwrap_or("-"),
                        addr = %addr_text(s.id.remote_addr),
                        reason = %reason,
                        "Client disconnected."
                    );
                }
                (true, acc)
            }
            Parameter::MessagePublish(..) => {
                self.stats.messages_received.fetch_add(1, Relaxed);
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
