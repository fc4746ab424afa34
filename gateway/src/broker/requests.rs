//! Commissioning requests (`<base>/bus/<id>/request`) in the rights check.
//!
//! The topic is the gateway's, like every name under `<base>`: with an `acl_file`, a
//! client may send a request when the file grants it write on the topic; without one,
//! only a client connected over loopback (on the gateway's own machine) may. A retained
//! request is refused (it would run again for nobody).
//!
//! The answer goes to the MQTT 5 Response Topic, with the Correlation Data, or for a
//! 3.1.1 client to the `response_topic` of the JSON body. The gateway publishes it for the
//! client, so it goes only where the client may publish itself, and never on one of the
//! gateway's own names: otherwise nowhere. Refused requests reach the gateway too, which
//! answers why.

use rmqtt::{session::Session, types::Publish};
use serde::Deserialize;

use super::{
    link::{ReplyTo, Requester},
    policy::Policy,
};

/// Longest response topic taken, in bytes.
const MAX_RESPONSE_TOPIC: usize = 1024;

/// The body's `response_topic`, the rest of the body aside.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    response_topic: Option<String>,
}

/// A publish on a commissioning request topic: who sent it, whether it may, and where
/// the answer may go. `None`: not a request topic.
pub(crate) fn check(policy: &Policy, s: &Session, p: &Publish) -> Option<Requester> {
    if !policy.is_request(&p.topic) {
        return None;
    }
    let client_id = &*s.id.client_id;
    let user = policy.acl_user(s.id.username.as_deref());
    let mut refused = policy
        .may_request(user, client_id, s.id.remote_addr, &p.topic)
        .err();
    if refused.is_none() && p.retain {
        refused =
            Some("a commissioning request is not retained: publish it without the retain flag");
    }
    Some(Requester {
        client_id: client_id.to_string(),
        // The user the login proved (none without a users file).
        user: user.map(str::to_string),
        reply: reply_to(policy, user, client_id, p),
        refused,
    })
}

/// Where the answer to `p` goes: its Response Topic (MQTT 5) or its body's
/// `response_topic`, when the client may publish there and it is none of the gateway's
/// names.
fn reply_to(policy: &Policy, user: Option<&str>, client_id: &str, p: &Publish) -> Option<ReplyTo> {
    let props = p.properties.as_ref();
    let topic = match props.and_then(|pp| pp.response_topic.as_ref()) {
        Some(t) => t.to_string(),
        None => {
            serde_json::from_slice::<Body>(&p.payload)
                .ok()?
                .response_topic?
        }
    };
    let acceptable = topic_name_ok(&topic)
        && !policy.is_gateway_name(&topic)
        && policy.may_publish(user, client_id, &topic);
    if !acceptable {
        tracing::debug!(client = ?client_id, topic = ?topic, "Response topic refused.");
        return None;
    }
    Some(ReplyTo {
        topic,
        correlation: props.and_then(|pp| pp.correlation_data.clone()),
    })
}

/// A topic a message may be published on: not empty, bounded, no wildcard, no NUL, not
/// the broker's (`$`).
fn topic_name_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_RESPONSE_TOPIC
        && !t.starts_with('$')
        && !t.contains(['+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use super::*;
    use crate::{broker::acl::Acl, topics::LiveContract};

    /// The policy of a gateway `t` with an embedded broker, and `acl` as its rights file.
    fn policy(acl: Option<&str>) -> Policy {
        let checked = crate::config::check_sources(
            std::path::Path::new("/g.yaml"),
            "id: t\nmappings: m.yaml\ncommissioning: true\n",
            |_, _| {
                vec![(
                    "m.yaml".into(),
                    "buses:\n  - { id: b, kind: modbus_tcp, host: 127.0.0.1 }\ndevices:\n  - { id: d, bus: b, points: [{ topic: casa/x, table: holding, address: 0 }] }\n".into(),
                )]
            },
        )
        .expect("valid");
        let model = checked.model;
        let mut e = model.mqtt.embedded.clone().expect("embedded broker");
        e.acl = acl.map(|a| Arc::new(Acl::parse(a).expect("acl")));
        Policy::new(&model, &e, LiveContract::new(&model))
    }

    #[test]
    fn without_an_acl_file_only_loopback_clients_may_send_requests() {
        let p = policy(None);
        let t = "fieldlink/t/bus/b/request";
        assert!(p.is_request(t) && p.is_gateway_name(t));
        assert!(!p.is_request("fieldlink/t/bus/b/request/x"));
        assert!(!p.is_gateway_name("fieldlink/t/bus/b/request/x"));
        assert!(!p.is_request("casa/x") && p.is_gateway_name("casa/x"));
        for ok in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let a: SocketAddr = ok.parse().expect("addr");
            assert_eq!(p.may_request(None, "c", Some(a), t), Ok(()), "{ok}");
        }
        for no in [Some("192.168.1.7:5000"), Some("[fe80::1]:5000"), None] {
            let a: Option<SocketAddr> = no.map(|n| n.parse().expect("addr"));
            let e = p.may_request(None, "c", a, t).expect_err("refused");
            assert!(e.contains("only clients on this machine"), "{no:?}: {e}");
        }
    }

    #[test]
    fn with_an_acl_file_its_write_right_decides_wherever_the_client_is() {
        let p = policy(Some(
            "user installer\ntopic write fieldlink/t/bus/+/request\nuser guest\ntopic read #\n",
        ));
        let t = "fieldlink/t/bus/b/request";
        let lan: SocketAddr = "192.168.1.7:5000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(p.may_request(Some("installer"), "c", Some(lan), t), Ok(()));
        let e = p
            .may_request(Some("guest"), "c", Some(local), t)
            .expect_err("no write right");
        assert!(
            e.contains("the acl_file grants this client no write"),
            "{e}"
        );
    }

    #[test]
    fn response_topics_must_be_topic_names() {
        assert!(topic_name_ok("fieldlink-cli/me"));
        for bad in ["", "a/+", "a/#", "$SYS/x", "a\0b"] {
            assert!(!topic_name_ok(bad), "{bad:?}");
        }
        assert!(!topic_name_ok(&"a".repeat(MAX_RESPONSE_TOPIC + 1)));
    }
}
