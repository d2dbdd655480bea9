//! `dcronctl` over TLS: the built binary against a TLS-only `redis-server` this test starts
//! itself (`--port 0`, `--tls-port`, `--tls-auth-clients yes`) with a CA and certificates made
//! at test time by `rcgen`. With `--tls-ca`, `--tls-cert` and `--tls-key` (or the `DCRON_TLS_*`
//! variables) `nodes` and `tasks` answer; without the client certificate, or with another CA,
//! the command fails with a one-line message naming the certificate problem. Bad TLS files are
//! usage errors (exit 2) naming the file. Without a `redis-server` binary the server cases skip
//! with a message, unless `DCRON_TEST_REQUIRE=1`, which makes them fail.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Every variable `dcronctl` reads, removed so the developer's environment cannot leak in.
const CLI_ENV: [&str; 12] = [
    "DCRON_REGISTRY_URL",
    "DCRON_NAMESPACE",
    "DCRON_REGISTRY_USER",
    "DCRON_REGISTRY_PASSWORD",
    "DCRON_ETCD_USER",
    "DCRON_ETCD_PASSWORD",
    "DCRON_ZK_DIGEST",
    "DCRON_TLS_CA",
    "DCRON_TLS_CERT",
    "DCRON_TLS_KEY",
    "CONSUL_HTTP_TOKEN",
    "RUST_LOG",
];

/// The exit code of a usage error.
const EXIT_USAGE: i32 = 2;

/// The PEM files of one throwaway CA, written into a directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    /// A CA named `name`, a server certificate for `localhost`/`127.0.0.1` and a client
    /// certificate, written under `dir` with the file names prefixed by `tag`.
    fn new(name: &str, dir: &Path, tag: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let signed = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, "dcron");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = signed(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = signed(vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{tag}-{file}"));
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
        }
    }
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("dcronctl-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS-only `redis-server` requiring client certificates, killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_server_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
}

/// Starts the server, or `None` (skip) when there is no `redis-server` and
/// `DCRON_TEST_REQUIRE` is not `1`.
fn start_tls_redis(pki: &Pki, dir: &Path) -> Option<TlsRedis> {
    let Some(binary) = redis_server_binary() else {
        assert!(
            std::env::var("DCRON_TEST_REQUIRE").as_deref() != Ok("1"),
            "DCRON_TEST_REQUIRE=1 but no redis-server binary (PATH or /usr/bin)"
        );
        eprintln!("skipping: no redis-server binary (PATH or /usr/bin)");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", "0", "--save", ""])
        .args(["--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&pki.server_key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca)
        .args(["--tls-auth-clients", "yes", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let server = TlsRedis { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

fn dcronctl<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcronctl"));
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run dcronctl")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failure with `code` whose one-line message contains every `needle`.
fn assert_fails(out: &Output, code: i32, needles: &[&str], what: &str) {
    let (stdout, stderr) = text(out);
    eprintln!("{what}: exit {:?}: {}", out.status.code(), stderr.trim());
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {stdout:?} stderr {stderr:?}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{what}: `{needle}` not in {stderr:?}"
        );
    }
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{what}: one line: {stderr:?}"
    );
    assert!(stderr.len() < 500, "{what}: a short message: {stderr:?}");
}

#[test]
fn ca_and_client_certificate_connect_and_their_absence_is_named() {
    let dir = TempDir::new();
    let pki = Pki::new("dcronctl test CA", &dir.0, "good");
    let other = Pki::new("another CA", &dir.0, "other");
    let Some(server) = start_tls_redis(&pki, &dir.0) else {
        return;
    };
    let url = format!("rediss://localhost:{}", server.port);
    let base = |cmd: &str| -> Vec<String> {
        vec![
            "--registry".into(),
            url.clone(),
            "--namespace".into(),
            "tls".into(),
            "--timeout".into(),
            "3s".into(),
            "--json".into(),
            cmd.into(),
        ]
    };
    let with = |mut args: Vec<String>, flags: &[(&str, &Path)]| {
        for (flag, path) in flags {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        args
    };

    // The CA and the client certificate, as flags: both commands answer.
    for cmd in ["nodes", "tasks"] {
        let args = with(
            base(cmd),
            &[
                ("--tls-ca", &pki.ca),
                ("--tls-cert", &pki.client_cert),
                ("--tls-key", &pki.client_key),
            ],
        );
        let out = dcronctl(&args, &[]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{cmd}: {stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout)
            .unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {stdout}"));
    }
    // The same through the environment.
    let out = dcronctl(
        &base("nodes"),
        &[
            ("DCRON_TLS_CA", &pki.ca),
            ("DCRON_TLS_CERT", &pki.client_cert),
            ("DCRON_TLS_KEY", &pki.client_key),
        ],
    );
    assert!(out.status.success(), "env: {}", text(&out).1);

    // No client certificate, or one from another CA: the server refuses it.
    let refused = "server refused the client certificate";
    let out = dcronctl(&with(base("nodes"), &[("--tls-ca", &pki.ca)]), &[]);
    assert_fails(&out, 1, &[refused], "no client certificate");
    let out = dcronctl(
        &with(
            base("tasks"),
            &[
                ("--tls-ca", &pki.ca),
                ("--tls-cert", &other.client_cert),
                ("--tls-key", &other.client_key),
            ],
        ),
        &[],
    );
    assert_fails(&out, 1, &[refused], "client certificate of another CA");
    // A CA that did not sign the server's certificate: we refuse the server.
    let out = dcronctl(
        &with(
            base("nodes"),
            &[
                ("--tls-ca", &other.ca),
                ("--tls-cert", &pki.client_cert),
                ("--tls-key", &pki.client_key),
            ],
        ),
        &[],
    );
    assert_fails(
        &out,
        1,
        &["server certificate failed verification"],
        "wrong CA",
    );
}

#[test]
fn bad_tls_files_are_usage_errors_naming_the_file() {
    let dir = TempDir::new();
    let pki = Pki::new("dcronctl test CA", &dir.0, "good");
    let missing = dir.0.join("no-such-ca.pem");
    let not_pem = dir.0.join("not-pem.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let run = |url: &str, flags: &[(&str, &Path)]| {
        let mut args = vec!["--registry".to_string(), url.to_string()];
        for (flag, path) in flags {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        args.push("nodes".into());
        dcronctl(&args, &[])
    };
    let url = "rediss://127.0.0.1:1";
    let shown = missing.display().to_string();
    assert_fails(
        &run(url, &[("--tls-ca", &missing)]),
        EXIT_USAGE,
        &["--tls-ca", &shown, "cannot open"],
        "missing CA file",
    );
    let shown = not_pem.display().to_string();
    assert_fails(
        &run(
            url,
            &[("--tls-cert", &not_pem), ("--tls-key", &pki.client_key)],
        ),
        EXIT_USAGE,
        &["--tls-cert", &shown, "not PEM"],
        "certificate not PEM",
    );
    assert_fails(
        &run(url, &[("--tls-cert", &pki.client_cert)]),
        EXIT_USAGE,
        &["--tls-cert needs --tls-key"],
        "certificate without key",
    );
    assert_fails(
        &run(url, &[("--tls-key", &pki.client_key)]),
        EXIT_USAGE,
        &["--tls-key needs --tls-cert"],
        "key without certificate",
    );
    // A missing file named through the environment is named too.
    let out = dcronctl(&["--registry", url, "nodes"], &[("DCRON_TLS_CA", &missing)]);
    assert_fails(
        &out,
        EXIT_USAGE,
        &[&missing.display().to_string()],
        "missing CA file from DCRON_TLS_CA",
    );
    // TLS files with a plain-text URL: the fix is named.
    assert_fails(
        &run("redis://127.0.0.1:1", &[("--tls-ca", &pki.ca)]),
        EXIT_USAGE,
        &["rediss://"],
        "redis:// with --tls-ca",
    );
    assert_fails(
        &run("etcd://127.0.0.1:1", &[("--tls-ca", &pki.ca)]),
        EXIT_USAGE,
        &["etcd+https://"],
        "etcd:// with --tls-ca",
    );
}

/// An etcd serving its clients over TLS only and requiring client certificates from its CA
/// (`--client-cert-auth`), killed on drop.
struct TlsEtcd {
    child: Child,
    port: u16,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_binary() -> Option<PathBuf> {
    std::env::var_os("DCRON_TEST_ETCD_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("etcd"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts the server, or `None` (skip) when there is no etcd binary and `DCRON_TEST_REQUIRE`
/// is not `1`. Readiness is the caller's to poll (over TLS).
fn start_tls_etcd(pki: &Pki, dir: &Path) -> Option<TlsEtcd> {
    let Some(binary) = etcd_binary() else {
        assert!(
            std::env::var("DCRON_TEST_REQUIRE").as_deref() != Ok("1"),
            "DCRON_TEST_REQUIRE=1 but no etcd binary (DCRON_TEST_ETCD_BIN, PATH or /usr/bin)"
        );
        eprintln!("skipping: no etcd binary (DCRON_TEST_ETCD_BIN, PATH or /usr/bin)");
        return None;
    };
    let port = free_port();
    let client = format!("https://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(binary)
        .args(["--name", "tls"])
        .arg("--data-dir")
        .arg(dir.join("etcd-data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .args(["--initial-cluster-state", "new"])
        .arg(format!("--cert-file={}", pki.server_cert.display()))
        .arg(format!("--key-file={}", pki.server_key.display()))
        .arg(format!("--trusted-ca-file={}", pki.ca.display()))
        .arg("--client-cert-auth")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    Some(TlsEtcd { child, port })
}

#[test]
fn etcd_over_tls_with_ca_and_client_certificate() {
    let dir = TempDir::new();
    let pki = Pki::new("dcronctl etcd CA", &dir.0, "good");
    let other = Pki::new("another CA", &dir.0, "other");
    let Some(server) = start_tls_etcd(&pki, &dir.0) else {
        return;
    };
    let url = format!("etcd+https://localhost:{}", server.port);
    let args = |cmd: &str, files: &[(&str, &Path)]| {
        let mut args: Vec<String> = ["--registry", &url, "--namespace", "tls", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--timeout".into(), "2s".into(), cmd.into()]);
        for (flag, path) in files {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
        args
    };
    let full = [
        ("--tls-ca", pki.ca.as_path()),
        ("--tls-cert", pki.client_cert.as_path()),
        ("--tls-key", pki.client_key.as_path()),
    ];
    // Polls until the server answers (it starts in the background), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = dcronctl(&args("nodes", &full), &[]);
        if out.status.success() || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "nodes over TLS: {stderr}");
    serde_json::from_str::<serde_json::Value>(&stdout).expect("nodes: JSON");
    let out = dcronctl(&args("tasks", &full), &[]);
    assert!(out.status.success(), "tasks over TLS: {}", text(&out).1);

    // No client certificate: the server refuses the handshake, and the message says so.
    let out = dcronctl(&args("nodes", &[("--tls-ca", pki.ca.as_path())]), &[]);
    assert_fails(
        &out,
        1,
        &["server refused the client certificate"],
        "etcd, no client certificate",
    );
    // Another CA: we refuse the server's certificate.
    let out = dcronctl(
        &args(
            "nodes",
            &[
                ("--tls-ca", other.ca.as_path()),
                ("--tls-cert", pki.client_cert.as_path()),
                ("--tls-key", pki.client_key.as_path()),
            ],
        ),
        &[],
    );
    assert_fails(
        &out,
        1,
        &["server certificate failed verification"],
        "etcd, wrong CA",
    );
}
