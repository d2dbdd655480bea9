//! TLS and credentials against harness-owned servers: a CA and a server certificate for
//! `localhost` are made at test time (rcgen); the server accepts TLS connections only
//! (`hostssl` in `pg_hba.conf`), or asks for a SCRAM password.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::OwnedServer;
use dcron_core::{Error, PutMode, Registry, TaskMeta, TaskMetaEvent};
use dcron_registry_postgres::{PostgresRegistry, PostgresRegistryConfig, SslMode};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate it signed, valid for the DNS name `localhost` only.
fn make_pki(ca_name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A server with `ssl = on` that refuses connections without TLS.
fn tls_server(pki: &Pki) -> Option<OwnedServer> {
    let conf = [
        "ssl = on".to_string(),
        "ssl_cert_file = '{dir}/server.crt'".to_string(),
        "ssl_key_file = '{dir}/server.key'".to_string(),
        "hba_file = '{dir}/hba_tls.conf'".to_string(),
    ];
    let hba = b"local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
    let files: [(&str, &[u8], u32); 3] = [
        ("server.crt", pki.cert_pem.as_bytes(), 0o644),
        ("server.key", pki.key_pem.as_bytes(), 0o600),
        ("hba_tls.conf", hba, 0o644),
    ];
    match OwnedServer::start(&conf, &files) {
        Ok(s) => Some(s),
        Err(e) => {
            common::skip(&format!("harness PostgreSQL with TLS: {e}"));
            None
        }
    }
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcron-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

async fn connect(
    url: String,
    mode: SslMode,
    root: Option<&PathBuf>,
) -> dcron_core::Result<PostgresRegistry> {
    let mut config = PostgresRegistryConfig::new(url)
        .ignore_environment()
        .namespace("tls")
        .ssl_mode(mode)
        .connect_timeout(Duration::from_secs(5))
        .command_timeout(Duration::from_secs(10));
    if let Some(root) = root {
        config = config.ssl_root_cert(root);
    }
    config.connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_only_to_the_named_certified_server() {
    let pki = make_pki("dcron test CA");
    let Some(server) = tls_server(&pki) else {
        return;
    };
    let ca = write_temp("ca.pem", &pki.ca_pem);
    let other_ca = write_temp("other.pem", &make_pki("another CA").ca_pem);
    let port = server.port();
    let by_name = format!("postgres://postgres@localhost:{port}/postgres");
    let by_ip = format!("postgres://postgres@127.0.0.1:{port}/postgres");

    // verify-full with the right CA and host name: pooled calls and watches work over TLS.
    let reg = connect(by_name.clone(), SslMode::VerifyFull, Some(&ca))
        .await
        .expect("verify-full to localhost");
    let mut watch = reg.watch_tasks().await.expect("watch over TLS");
    let mut meta = TaskMeta::new("secure", "@hourly");
    meta.created_at = Some(chrono::Utc::now());
    reg.put_task(&meta, PutMode::CreateOnly).await.expect("put");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("delivered");
    assert!(matches!(event, Some(TaskMetaEvent::Put(m)) if m.name == "secure"));

    // The URL's own parameters work the same way.
    let url_params = format!(
        "{by_name}?sslmode=verify-full&sslrootcert={}",
        ca.display().to_string().replace('/', "%2F")
    );
    PostgresRegistryConfig::new(url_params)
        .ignore_environment()
        .namespace("tls")
        .connect()
        .await
        .expect("sslmode and sslrootcert from the URL");

    // The certificate does not name 127.0.0.1: verify-full refuses, verify-ca accepts.
    let refused = connect(by_ip.clone(), SslMode::VerifyFull, Some(&ca))
        .await
        .expect_err("the certificate does not name 127.0.0.1");
    assert!(!refused.is_retryable(), "{refused:?}");
    connect(by_ip.clone(), SslMode::VerifyCa, Some(&ca))
        .await
        .expect("verify-ca ignores the name");

    // Another CA: refused in both verifying modes.
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let refused = connect(by_name.clone(), mode, Some(&other_ca))
            .await
            .expect_err("certificate from another CA");
        assert!(matches!(refused, Error::Backend { .. }), "{refused:?}");
    }
    // Without a root, verifying modes are a configuration error.
    assert!(matches!(
        connect(by_name.clone(), SslMode::VerifyFull, None).await,
        Err(Error::InvalidArgument(_))
    ));
    // require encrypts without verifying; disable is refused by the server (hostssl only).
    connect(by_ip.clone(), SslMode::Require, None)
        .await
        .expect("require without a root");
    let plain = connect(by_ip, SslMode::Disable, None)
        .await
        .expect_err("plain text refused");
    assert!(matches!(plain, Error::AccessDenied(_)), "{plain:?}");
    let _ = std::fs::remove_dir_all(ca.parent().expect("dir"));
    let _ = std::fs::remove_dir_all(other_ca.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_from_the_url_or_a_password_file() {
    let conf = ["hba_file = '{dir}/hba_scram.conf'".to_string()];
    let hba = b"local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    let files: [(&str, &[u8], u32); 1] = [("hba_scram.conf", hba, 0o644)];
    let server = match OwnedServer::start(&conf, &files) {
        Ok(s) => s,
        Err(e) => return common::skip(&format!("harness PostgreSQL: {e}")),
    };
    server
        .psql(
            "CREATE ROLE app LOGIN PASSWORD 's3cr3t-pw'; GRANT CREATE ON DATABASE postgres TO app;",
        )
        .expect("create role");
    let port = server.port();
    let base = format!("postgres://app@127.0.0.1:{port}/postgres");
    let cfg = |url: String| {
        PostgresRegistryConfig::new(url)
            .ignore_environment()
            .ssl_mode(SslMode::Disable)
            .namespace("auth")
    };
    let reg = cfg(format!(
        "postgres://app:s3cr3t-pw@127.0.0.1:{port}/postgres"
    ))
    .connect()
    .await
    .expect("password from the URL");
    assert!(!format!("{reg:?}").contains("s3cr3t-pw"));
    let wrong = cfg(format!("postgres://app:nope@127.0.0.1:{port}/postgres"))
        .connect()
        .await
        .expect_err("wrong password");
    assert!(matches!(wrong, Error::AccessDenied(_)), "{wrong:?}");
    assert!(!wrong.to_string().contains("nope"));
    let missing = cfg(base.clone()).connect().await.expect_err("no password");
    assert!(matches!(missing, Error::AccessDenied(_)), "{missing:?}");
    let pgpass = write_temp(
        "pgpass",
        &format!("127.0.0.1:{port}:postgres:app:s3cr3t-pw\n"),
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let from_file = cfg(base)
        .password_file(&pgpass)
        .connect()
        .await
        .expect("password from the password file");
    from_file.ping().await.expect("ping");
    let _ = std::fs::remove_dir_all(pgpass.parent().expect("dir"));
}
