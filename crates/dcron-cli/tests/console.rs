//! `dcronctl console` in a real browser: a headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver by `fantoccini`, against a console on a 3-node
//! cluster on the real Redis of `DCRON_TEST_REDIS_URL`. Without the variable, or without
//! `chromedriver`, the browser test skips with a message, unless `DCRON_TEST_REQUIRE=1`, which
//! makes it fail. The access-token and CSRF tests use plain HTTP against a console over an
//! in-memory registry and always run.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, Request, StatusCode};
use dcron_cli::console::{Console, ConsoleConfig};
use dcron_cli::ops::{self, AddRequest};
use dcron_cli::secret::{Secret, Secrets};
use dcron_cli::target::{ConnectArgs, RegistryTarget};
use dcron_core::{Dcron, MemoryRegistry, PutMode, Registry, Strategy, TaskMeta};
use dcron_registry_redis::RedisRegistry;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::time::Instant;

const FAST: &str = "report-every-3s";
const PAUSED: &str = "hourly-report";
const TRIGGERED: &str = "on-demand";
const BERLIN: &str = "nightly-backup";
const STATIC: &str = "static-every-2s";

fn required() -> bool {
    std::env::var("DCRON_TEST_REQUIRE").as_deref() == Ok("1")
}

fn skip(why: &str) {
    assert!(!required(), "DCRON_TEST_REQUIRE=1 but {why}");
    eprintln!("skipping: {why}");
}

fn redis_url() -> Option<String> {
    match std::env::var("DCRON_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            skip("DCRON_TEST_REDIS_URL is not set (run scripts/test or scripts/services/redis.sh)");
            None
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Polls `check` every 100 ms until it answers `Some`, or fails after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 client.
type Http = hyper_util::client::legacy::Client<HttpConnector, axum::body::Body>;

fn http() -> Http {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method url` with `headers`; `None` when the server cannot be reached (yet).
async fn try_send(
    http: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(axum::body::Body::empty()).expect("request");
    let resp = http.request(req).await.ok()?;
    let (parts, body) = resp.into_parts();
    // Event streams never end: only their status and headers are read.
    let streaming = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = if streaming {
        String::new()
    } else {
        let bytes = axum::body::to_bytes(axum::body::Body::new(body), 1 << 24)
            .await
            .ok()?;
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn send(http: &Http, method: Method, url: &str, headers: &[(&str, &str)]) -> Answer {
    try_send(http, method.clone(), url, headers)
        .await
        .unwrap_or_else(|| panic!("{method} {url}: no answer"))
}

/// The workspace's target directory (where `console.png` goes).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// A chromedriver child on a free loopback port, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn start_driver(binary: &PathBuf) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let client = http();
    let status = format!("{url}/status");
    wait_for("chromedriver ready", Duration::from_secs(30), || async {
        let r = try_send(&client, Method::GET, &status, &[]).await?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["value"]["ready"] == true).then_some(())
    })
    .await;
    Driver { _child: child, url }
}

async fn browser(driver: &Driver) -> Client {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1700",
    ];
    args.push("--lang=en-US");
    let mut chrome = json!({ "args": args });
    if std::path::Path::new("/usr/bin/chromium").is_file() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// The trimmed text of every element matching `css` (empty on any WebDriver error, e.g. a row
/// replaced while it was read: the callers poll).
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let Ok(found) = client.find_all(Locator::Css(css)).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in found {
        match e.text().await {
            Ok(t) => out.push(t.trim().to_string()),
            Err(_) => return Vec::new(),
        }
    }
    out
}

async fn attr(client: &Client, css: &str, name: &str) -> Option<String> {
    client
        .find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()
        .flatten()
}

/// Clicks the action button of a task's row, then the confirmation dialog's button.
async fn act(client: &Client, task: &str, action: &str) {
    let css = format!(r#"#tasks tr[data-task="{task}"] button[data-action="{action}"]"#);
    wait_for(
        &format!("click {action} on {task}"),
        Duration::from_secs(20),
        || async {
            client
                .find(Locator::Css(&css))
                .await
                .ok()?
                .click()
                .await
                .ok()
        },
    )
    .await;
    wait_for("confirm", Duration::from_secs(20), || async {
        let yes = client.find(Locator::Css("#confirm-yes")).await.ok()?;
        yes.is_displayed().await.ok()?.then_some(())?;
        yes.click().await.ok()
    })
    .await;
}

async fn start_node(url: &str, ns: &str, i: usize) -> Dcron {
    let registry = RedisRegistry::builder(url)
        .namespace(ns)
        .build()
        .expect("registry");
    let node = Dcron::builder(registry)
        .node_name(format!("console-{i}"))
        .ttl(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(300))
        .status_interval(Duration::from_millis(300))
        .task_run_fn(|_ctx| async { Ok(()) })
        .build()
        .expect("node");
    node.add_func(STATIC, "*/2 * * * * *", |_ctx| async { Ok(()) })
        .await
        .expect("static task");
    node.start().await.expect("started");
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_and_steers_a_three_node_cluster() {
    let Some(url) = redis_url() else { return };
    let Some(chromedriver) = which("chromedriver") else {
        skip("chromedriver is not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let ns = format!("console-e2e-{}", uuid::Uuid::new_v4().simple());
    let admin = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");

    // Dynamic tasks, written with the same function as `dcronctl add`.
    let now = chrono::Utc::now();
    for (name, cron, zone) in [
        (FAST, "*/3 * * * * *", None),
        (PAUSED, "@hourly", None),
        (TRIGGERED, "0 0 0 1 1 *", None),
        (BERLIN, "0 30 2 * * *", Some("Europe/Berlin")),
    ] {
        let req = AddRequest {
            name: name.into(),
            cron: cron.into(),
            zone: zone.map(str::to_string),
            ..AddRequest::default()
        };
        ops::add(&admin, &req, false, now).await.expect("added");
    }
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(start_node(&url, &ns, i).await);
    }
    let mut ids: Vec<String> = nodes.iter().map(|n| n.node_id().to_string()).collect();
    ids.sort();

    // The console connects from a URL as every `dcronctl` command does.
    let args = ConnectArgs {
        registry: Some(Secret::new(url.clone())),
        namespace: Some(ns.clone()),
        ..ConnectArgs::default()
    };
    let target = RegistryTarget::resolve(&args, &|_| None).expect("target");
    let registry = target
        .connect(Duration::from_secs(5))
        .await
        .expect("connected");
    let mut config = ConsoleConfig::new(registry, &target);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.interval = Duration::from_millis(300);
    let console = Console::bind(config).await.expect("bound");
    let page = format!("http://{}/", console.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    let drive = async {
        let driver = start_driver(&chromedriver).await;
        let client = browser(&driver).await;
        client.goto(&page).await.expect("page opens");

        // The three nodes, working, each owning some of the five tasks.
        let shown = wait_for("three working nodes", Duration::from_secs(30), || async {
            let rows = texts(&client, "#nodes tbody tr[data-node] td.status").await;
            (rows.len() == 3 && rows.iter().all(|s| s == "working")).then_some(())?;
            let mut listed = Vec::new();
            for id in &ids {
                let css = format!(r#"#nodes tr[data-node="{id}"]"#);
                listed.push(attr(&client, &css, "data-node").await?);
            }
            Some(listed)
        })
        .await;
        assert_eq!(shown, ids);
        // Reads go through wait_for: a live update re-renders the tables, and an element read
        // while it is replaced is stale (`texts` then answers nothing).
        let owned: Vec<usize> = wait_for("owned counts", Duration::from_secs(30), || async {
            // The static task counts once the console knows it (after its first fire).
            let counts = texts(&client, "#nodes tbody tr td.owned").await;
            let counts: Vec<usize> = counts
                .iter()
                .map(|t| t.parse().ok())
                .collect::<Option<_>>()?;
            (counts.len() == 3 && counts.iter().sum::<usize>() == 5).then_some(counts)
        })
        .await;
        assert_eq!(owned.iter().sum::<usize>(), 5, "{owned:?}");

        // Every task with an owner among the nodes, the static one included once it ran.
        for task in [FAST, PAUSED, TRIGGERED, BERLIN, STATIC] {
            let css = format!(r#"#tasks tr[data-task="{task}"] td.owner"#);
            let owner = wait_for(
                &format!("owner of {task}"),
                Duration::from_secs(30),
                || async {
                    let t = texts(&client, &css).await.pop()?;
                    ids.contains(&t).then_some(t)
                },
            )
            .await;
            assert!(ids.contains(&owner));
        }
        let static_row = format!(r#"#tasks tr[data-task="{STATIC}"]"#);
        let origin = wait_for("the static task's origin", Duration::from_secs(30), || {
            attr(&client, &static_row, "data-origin")
        })
        .await;
        assert_eq!(origin, "static");
        let zone = wait_for(
            "the Berlin task's zone",
            Duration::from_secs(30),
            || async {
                let zone = texts(
                    &client,
                    &format!(r#"#tasks tr[data-task="{BERLIN}"] td:nth-child(3)"#),
                )
                .await;
                (!zone.is_empty()).then_some(zone)
            },
        )
        .await;
        assert_eq!(zone, ["Europe/Berlin"]);
        let previews = wait_for(
            "the next fires of the fast task",
            Duration::from_secs(30),
            || async {
                let previews = texts(
                    &client,
                    &format!(r#"#tasks tr[data-task="{FAST}"] ul.fires li"#),
                )
                .await;
                (!previews.is_empty()).then_some(previews)
            },
        )
        .await;
        assert_eq!(previews.len(), 5, "{previews:?}");

        // Pause from the page: the pause is in the registry.
        assert!(!dcron_core::admin::is_paused(&admin, PAUSED)
            .await
            .expect("read"));
        act(&client, PAUSED, "pause").await;
        wait_for(
            "the pause in the registry",
            Duration::from_secs(20),
            || async {
                dcron_core::admin::is_paused(&admin, PAUSED)
                    .await
                    .ok()?
                    .then_some(())
            },
        )
        .await;
        let css = format!(r#"#tasks tr[data-task="{PAUSED}"]"#);
        wait_for(
            "the page shows the pause",
            Duration::from_secs(20),
            || async { (attr(&client, &css, "data-state").await? == "paused").then_some(()) },
        )
        .await;
        wait_for(
            "the pause's result shown",
            Duration::from_secs(10),
            || async {
                let flash = texts(&client, "#flash").await;
                flash
                    .iter()
                    .any(|f| f.starts_with("paused task"))
                    .then_some(())
            },
        )
        .await;

        // Trigger now: a run of a task that never fired appears in the timeline.
        let css = format!(r#"#timeline-list li[data-task="{TRIGGERED}"]"#);
        assert!(texts(&client, &css).await.is_empty(), "never fired before");
        act(&client, TRIGGERED, "trigger").await;
        let run = wait_for(
            "the triggered run in the timeline",
            Duration::from_secs(30),
            || async { texts(&client, &css).await.pop() },
        )
        .await;
        assert!(run.contains(TRIGGERED) && run.contains(": ok"), "{run}");
        assert!(ids.iter().any(|id| run.contains(id.as_str())), "{run}");
        // Scheduled fires of the fast task are on the chart too.
        wait_for(
            "a fire of the fast task",
            Duration::from_secs(20),
            || async {
                let css = format!(r#"#timeline-list li[data-task="{FAST}"][data-kind="fire"]"#);
                texts(&client, &css).await.pop()
            },
        )
        .await;
        wait_for("the live badge", Duration::from_secs(10), || async {
            (texts(&client, "#live").await.pop()? == "live").then_some(())
        })
        .await;

        let png = client.screenshot().await.expect("screenshot");
        let dir = target_dir();
        std::fs::create_dir_all(&dir).expect("target dir");
        std::fs::write(dir.join("console.png"), png).expect("console.png written");

        // A POST without the page's CSRF token changes nothing.
        let forged = send(
            &http(),
            Method::POST,
            &format!("{page}api/tasks/{PAUSED}/resume"),
            &[],
        )
        .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert!(dcron_core::admin::is_paused(&admin, PAUSED)
            .await
            .expect("read"));

        client.close().await.expect("session closed");
    };
    let run = console.run(async {
        let _ = stopped.await;
    });
    let checks = async {
        drive.await;
        let _ = stop.send(());
    };
    let (served, ()) = tokio::join!(run, checks);
    served.expect("the console stopped cleanly");
    for n in nodes {
        n.stop().await.expect("node stopped");
    }
    admin.cleanup_all().await.expect("namespace cleaned");
}

/// Serves `registry` on `listen` (with `token`) while `checks` runs against its address.
async fn with_console<F, Fut>(
    registry: Arc<dyn Registry>,
    listen: SocketAddr,
    token: Option<&str>,
    checks: F,
) where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = ConsoleConfig {
        listen,
        token: token.map(Secret::new),
        registry,
        registry_name: "memory".into(),
        secrets: Secrets::new(),
        strategy: Strategy::Consistent,
        interval: Duration::from_millis(100),
    };
    let console = Console::bind(config).await.expect("bound");
    let addr = SocketAddr::from(([127, 0, 0, 1], console.local_addr().port()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = console.run(async {
        let _ = stopped.await;
    });
    let (served, ()) = tokio::join!(run, async {
        checks(addr).await;
        let _ = stop.send(());
    });
    served.expect("the console stopped cleanly");
}

fn csrf_of(page: &str) -> String {
    let start = page
        .find(r#"name="dcron-csrf" content=""#)
        .expect("csrf meta")
        + 27;
    page[start..].split('"').next().expect("value").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_console_needs_its_token() {
    const TOKEN: &str = "console-token-for-tests";
    let reg = Arc::new(MemoryRegistry::new());
    let mut job = TaskMeta::new("job", "@hourly");
    job.created_at = Some(chrono::Utc::now());
    reg.put_task(&job, PutMode::CreateOnly).await.expect("put");
    let any = SocketAddr::from(([0, 0, 0, 0], 0));

    // Without a token, a non-loopback console refuses to start.
    let refused = Console::bind(ConsoleConfig {
        listen: any,
        token: None,
        registry: reg.clone(),
        registry_name: "memory".into(),
        secrets: Secrets::new(),
        strategy: Strategy::Consistent,
        interval: Duration::from_secs(1),
    })
    .await
    .err()
    .expect("refused");
    assert_eq!(
        refused.exit_code(),
        dcron_cli::error::EXIT_USAGE,
        "{refused}"
    );

    let admin = reg.clone();
    with_console(reg, any, Some(TOKEN), |addr| async move {
        let http = http();
        let base = format!("http://{addr}");
        let get = |path: &str, headers: &[(&str, &str)]| {
            let url = format!("{base}{path}");
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let http = http.clone();
            async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                send(&http, Method::GET, &url, &h).await
            }
        };
        let post = |path: &str, headers: &[(&str, &str)]| {
            let url = format!("{base}{path}");
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let http = http.clone();
            async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                send(&http, Method::POST, &url, &h).await
            }
        };
        let bearer = format!("Bearer {TOKEN}");
        let auth = ("authorization", bearer.as_str());
        for path in [
            "/",
            "/api/state",
            "/api/timeline",
            "/api/events",
            "/assets/app.js",
        ] {
            let r = get(path, &[]).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "GET {path} without the token"
            );
            let r = get(path, &[("authorization", "Bearer console-token-for-testX")]).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "GET {path} with a wrong token"
            );
            let r = get(path, &[auth]).await;
            assert_eq!(r.status, StatusCode::OK, "GET {path} with the token");
        }
        let r = post("/api/tasks/job/pause", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // With the token: the page, which never contains it.
        let r = get("/", &[auth]).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.body;
        assert!(page.contains("dcron console") && !page.contains(TOKEN));
        let state = get("/api/state", &[auth]).await;
        assert_eq!(state.status, StatusCode::OK);
        assert_eq!(state.json()["tasks"][0]["name"], "job");

        // A browser presents the token once and gets a session cookie that is not the token.
        let login = get(&format!("/?token={TOKEN}"), &[]).await;
        assert_eq!(login.status, StatusCode::SEE_OTHER);
        assert_eq!(login.headers["location"], "/");
        let cookie = login.headers["set-cookie"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            cookie.contains("HttpOnly") && !cookie.contains(TOKEN),
            "{cookie}"
        );
        let pair = cookie.split(';').next().expect("pair").to_string();
        let with_cookie = ("cookie", pair.as_str());
        let r = get("/api/state", &[with_cookie]).await;
        assert_eq!(r.status, StatusCode::OK);

        // Actions: the token alone is not enough, the page's CSRF token is required too.
        let r = post("/api/tasks/job/pause", &[with_cookie]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(!dcron_core::admin::is_paused(admin.as_ref(), "job")
            .await
            .expect("read"));
        let csrf = csrf_of(&page);
        let with_csrf = ("x-dcron-csrf", csrf.as_str());
        let r = post(
            "/api/tasks/job/pause",
            &[with_cookie, with_csrf, ("origin", "http://evil.example")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "a foreign origin");
        assert!(!dcron_core::admin::is_paused(admin.as_ref(), "job")
            .await
            .expect("read"));
        let r = post("/api/tasks/job/pause", &[with_cookie, with_csrf]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(dcron_core::admin::is_paused(admin.as_ref(), "job")
            .await
            .expect("read"));
        let r = post("/api/tasks/nope/trigger", &[auth, with_csrf]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "an unknown task is a typed error: {}",
            r.body
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_console_answers_only_to_local_host_names() {
    let reg = Arc::new(MemoryRegistry::new());
    with_console(
        reg,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        |addr| async move {
            let url = format!("http://{addr}/api/state");
            let ok = send(&http(), Method::GET, &url, &[]).await;
            assert_eq!(ok.status, StatusCode::OK);
            let rebound = send(&http(), Method::GET, &url, &[("host", "evil.example")]).await;
            assert_eq!(rebound.status, StatusCode::MISDIRECTED_REQUEST);
        },
    )
    .await;
}
