//! The connection to the upstream broker: rumqttc's options (persistent session, Last
//! Will, packet sizes, credentials) and the rustls configuration (ring as the provider).

use std::sync::Arc;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::UpstreamError;
use crate::model::{Model, Tls, Upstream};

/// Packet ids rumqttc cycles through: far more than [`WINDOW`](super::WINDOW), so an id is
/// never reused while its message waits for its acknowledgement.
pub(super) const PKID_RANGE: u16 = 4096;

/// The rumqttc QoS of a 0–2 level.
pub(super) fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The rustls client configuration (ring as the crypto provider).
pub fn tls_config(t: &Tls) -> Result<rustls::ClientConfig, UpstreamError> {
    let err = |e: &dyn std::fmt::Display| UpstreamError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(UpstreamError::Tls(
                    "no trusted root certificates on this system: set `ca_file`".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots);
    match &t.client {
        Some((cert, key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert).collect();
            let key = PrivateKeyDer::from_pem_slice(key.0.as_bytes()).map_err(|e| err(&e))?;
            builder
                .with_client_auth_cert(chain.map_err(|e| err(&e))?, key)
                .map_err(|e| err(&e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Connection options for the upstream broker.
pub fn options(model: &Model, u: &Upstream) -> Result<MqttOptions, UpstreamError> {
    let mut o = MqttOptions::new(u.client_id.clone(), u.host.clone(), u.port);
    o.set_keep_alive(u.keepalive);
    // A persistent session: the broker keeps the subscription (and the packet ids it
    // still expects) across reconnects.
    o.set_clean_session(false);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    o.set_inflight(PKID_RANGE);
    if let Some(user) = &u.username {
        let pw = u.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        o.set_credentials(user.clone(), pw);
    }
    if let Some(t) = &u.tls {
        let cfg = tls_config(t)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(cfg))));
    }
    let topics = model.topics();
    o.set_last_will(LastWill::new(
        topics.upstream(&topics.status()),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}
