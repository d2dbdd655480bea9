//! Naming why a TLS connection is refused when the gRPC client cannot say.
//!
//! With TLS 1.3 a server that refuses the client certificate does so after the client's side
//! of the handshake has finished: the gRPC client then only sees "connection closed", which
//! looks like an unreachable server. When connecting fails that way, [`diagnose`] makes a
//! handshake of its own with the same settings, sends the HTTP/2 preface and reads the answer:
//! the server's alert (or its silence) names the cause.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::EtcdTls;
use crate::error::certificate_failure_in;

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Why a TLS connection to `endpoint` with `tls` is refused, when a certificate is the cause;
/// `None` when the probe connects fine, cannot connect at all, or `tls` has no CA to check with.
pub(crate) async fn diagnose(endpoint: &str, tls: &EtcdTls, within: Duration) -> Option<String> {
    let ca = tls.ca_pem.as_ref()?;
    let authority = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let authority = authority.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let name = ServerName::try_from(tls.domain.as_deref().unwrap_or(host).to_string()).ok()?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.ok()?).ok()?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots);
    let mut config = match &tls.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let probe = async {
        let tcp = TcpStream::connect(authority).await.ok()?;
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(e) => {
                return certificate_failure_in(&e.to_string()).map(|why| format!("{why} ({e})"))
            }
        };
        let mut answer = [0u8; 64];
        let read = match stream.write_all(H2_PREFACE).await {
            Ok(()) => stream.read(&mut answer).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(n) if n > 0 => None,
            Ok(_) if tls.identity.is_none() => Some(
                "TLS: the server closed the connection after the handshake without a word: it \
                 requires a client certificate and none was given"
                    .to_string(),
            ),
            Ok(_) => None,
            Err(e) => certificate_failure_in(&e.to_string()).map(|why| format!("{why} ({e})")),
        }
    };
    tokio::time::timeout(within, probe).await.ok().flatten()
}
