//! TLS for the connections: rustls (with the `ring` provider) through `tokio-postgres-rustls`,
//! configured from the libpq `sslmode`.
//!
//! | sslmode | TLS | the server is checked against |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` | when offered | nothing (as libpq) |
//! | `require` | always | the root certificate when one is configured, else nothing (as libpq) |
//! | `verify-ca` | always | the root certificate (chain only) |
//! | `verify-full` | always | the root certificate and the host name |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dcron_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SslMode;

/// What the connections use for TLS.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain text (`sslmode=disable`).
    None,
    /// rustls, with the verifier the mode asks for.
    Rustls(MakeRustlsConnect),
}

/// The `tokio-postgres` mode and the connector for `mode` with the root certificate at `root`.
///
/// # Errors
/// [`Error::InvalidArgument`] when a verifying mode has no root certificate, or the file does
/// not hold one.
pub(crate) fn connector(
    mode: SslMode,
    root: Option<&Path>,
) -> Result<(tokio_postgres::config::SslMode, Tls)> {
    use tokio_postgres::config::SslMode as Pg;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
        (SslMode::Disable, _) => return Ok((Pg::Disable, Tls::None)),
        (SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(AcceptAnyServer(provider.clone()))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(Error::InvalidArgument(format!(
                "sslmode={mode} needs a root certificate: set sslrootcert, PGSSLROOTCERT or ~/.postgresql/root.crt"
            )))
        }
        (SslMode::Require | SslMode::VerifyCa, Some(root)) => Arc::new(ChainOnly(webpki(
            root,
            provider.clone(),
        )?)),
        (SslMode::VerifyFull, Some(root)) => webpki(root, provider.clone())?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let pg_mode = match mode {
        SslMode::Allow | SslMode::Prefer => Pg::Prefer,
        _ => Pg::Require,
    };
    Ok((pg_mode, Tls::Rustls(MakeRustlsConnect::new(config))))
}

/// The standard verifier (chain and host name) over the roots in `root`.
fn webpki(root: &Path, provider: Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>> {
    let roots = load_roots(root)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("TLS root certificates: {e}")))
}

/// The roots of a PEM file, or the system's for the path `system` (libpq's spelling).
fn load_roots(root: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = if root == Path::new("system") {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "sslrootcert=system: no system root certificates found ({:?})",
                found.errors
            )));
        }
        found.certs
    } else {
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidArgument(format!(
                "sslrootcert {}: {e}",
                PathBuf::from(root).display()
            ))
        };
        CertificateDer::pem_file_iter(root)
            .map_err(|e| bad(&e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?
    };
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::InvalidArgument(format!(
            "sslrootcert {}: no usable certificate",
            root.display()
        )));
    }
    Ok(store)
}

/// libpq's `prefer`/`require` without a root: encryption without authentication. Signatures
/// are still checked, so the session is bound to the certificate presented.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; a certificate for another name is accepted. (The
/// standard verifier checks the chain first and the name last, so a name error means the
/// chain was good.)
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_need_a_root() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            assert!(matches!(
                connector(mode, None),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            connector(SslMode::VerifyFull, Some(Path::new("/nonexistent/ca.pem"))),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            connector(SslMode::Disable, None),
            Ok((tokio_postgres::config::SslMode::Disable, Tls::None))
        ));
        assert!(matches!(
            connector(SslMode::Prefer, None),
            Ok((tokio_postgres::config::SslMode::Prefer, Tls::Rustls(_)))
        ));
    }
}
