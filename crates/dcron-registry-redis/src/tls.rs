//! TLS with a private CA and client certificates, and the names of handshake failures.

use dcron_core::{Error, Result};
use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::RedisTls;

/// `info` with the CA and client certificate of `tls` attached, checked now so that a bad PEM
/// is reported by `build` rather than at the first connection.
pub(crate) fn with_certificates(
    info: ConnectionInfo,
    tls: &RedisTls,
    shown_url: &str,
) -> Result<ConnectionInfo> {
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Err(Error::InvalidArgument(format!(
            "redis URL `{shown_url}`: TLS settings need a `rediss://` URL"
        )));
    }
    if let Some(ca) = &tls.ca_pem {
        let certificates = CertificateDer::pem_slice_iter(ca)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("redis TLS CA certificate: {e}")))?;
        if certificates.is_empty() {
            return Err(Error::InvalidArgument(
                "redis TLS CA certificate: the PEM holds no certificate".into(),
            ));
        }
    }
    let certificates = TlsCertificates {
        client_tls: tls.identity.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: tls.ca_pem.clone(),
    };
    let client = redis::Client::build_with_tls(info, certificates)
        .map_err(|e| Error::InvalidArgument(format!("redis TLS settings: {e}")))?;
    Ok(client.get_connection_info().clone())
}

/// What went wrong in a TLS handshake, in words, when `message` (an error's text, which
/// includes rustls's) says it was a certificate: the server's not trusted, or ours refused.
pub(crate) fn certificate_failure(message: &str) -> Option<&'static str> {
    if message.contains("invalid peer certificate") {
        Some(
            "TLS: the server certificate failed verification (not signed by the configured CA, \
             expired, or not valid for the host in the URL)",
        )
    } else if message.contains("fatal alert")
        && ["Certificate", "UnknownCA", "HandshakeFailure"]
            .iter()
            .any(|alert| message.contains(alert))
    {
        Some(
            "TLS: the server refused the client certificate (none given, or not signed by a \
             CA the server trusts)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_named() {
        assert!(
            certificate_failure("invalid peer certificate: UnknownIssuer")
                .is_some_and(|m| m.contains("server certificate"))
        );
        assert!(
            certificate_failure("received fatal alert: CertificateRequired")
                .is_some_and(|m| m.contains("client certificate"))
        );
        assert_eq!(
            certificate_failure("Connection refused (os error 111)"),
            None
        );
    }

    #[test]
    fn bad_settings_are_invalid_arguments() {
        let info = |url: &str| redis::IntoConnectionInfo::into_connection_info(url).expect("url");
        for (url, tls) in [
            ("redis://h:1", RedisTls::new()),
            (
                "rediss://h:1",
                RedisTls::new().ca_pem("no certificate here"),
            ),
            (
                "rediss://h:1",
                RedisTls::new().client_identity("not a cert", "not a key"),
            ),
        ] {
            let result = with_certificates(info(url), &tls, url);
            assert!(
                matches!(result, Err(Error::InvalidArgument(_))),
                "{url} {tls:?}: {result:?}"
            );
        }
    }
}
