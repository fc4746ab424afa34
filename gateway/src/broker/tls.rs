//! The TLS listener: rmqtt's own TLS feature would bring aws-lc (a C library that the
//! cross builds for the Pi cannot take easily), so TLS ends here, in rustls with ring
//! as the upstream side uses, and the plain MQTT stream goes through the front
//! (`front.rs`) to rmqtt's listener on loopback, which expects a PROXY protocol header
//! first. That header carries the client's real address, so logs and the policy see
//! the client, not 127.0.0.1.

use std::{net::SocketAddr, sync::Arc};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::BrokerError;
use crate::model::EmbeddedTls;

/// The rustls server configuration for `t` (already checked to parse by validation).
fn server_config(t: &EmbeddedTls) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&t.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(t.key.0.as_bytes()).map_err(|e| e.to_string())?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())
}

/// A PROXY protocol v1 header for a connection from `src` to `dst`.
pub(crate) fn proxy_header(src: SocketAddr, dst: SocketAddr) -> String {
    let family = if src.is_ipv4() && dst.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    let ip = |a: SocketAddr| match (family, a) {
        ("TCP6", SocketAddr::V4(v4)) => v4.ip().to_ipv6_mapped().to_string(),
        (_, a) => a.ip().to_string(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        ip(src),
        ip(dst),
        src.port(),
        dst.port()
    )
}

/// Bind the TLS listener on `addr` (`t.listen`, or where a rebuilt broker listened
/// before), so that a taken address is an error at start.
pub(crate) async fn bind(
    t: &EmbeddedTls,
    addr: SocketAddr,
) -> Result<(TcpListener, TlsAcceptor), BrokerError> {
    let config = server_config(t).map_err(|e| BrokerError::Bind {
        addr,
        source: std::io::Error::other(format!("TLS certificate or key: {e}")),
    })?;
    let listener = TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            BrokerError::AddrInUse { addr }
        } else {
            BrokerError::Bind { addr, source }
        }
    })?;
    Ok((listener, TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers() {
        let a: SocketAddr = "192.168.1.7:50000".parse().expect("addr");
        let b: SocketAddr = "192.168.1.2:8883".parse().expect("addr");
        assert_eq!(
            proxy_header(a, b),
            "PROXY TCP4 192.168.1.7 192.168.1.2 50000 8883\r\n"
        );
        let c: SocketAddr = "[fe80::1]:4000".parse().expect("addr");
        assert_eq!(
            proxy_header(c, b),
            "PROXY TCP6 fe80::1 ::ffff:192.168.1.2 4000 8883\r\n"
        );
    }
}
