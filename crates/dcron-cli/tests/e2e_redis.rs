//! `dcronctl` end to end: the built binary against a real Redis (`DCRON_TEST_REDIS_URL`, started
//! by `scripts/test`), next to an in-process dcron node on the same namespace. Without the
//! variable the Redis tests skip with a message, unless `DCRON_TEST_REQUIRE=1`, which makes them
//! fail. The tests that need no server (bad URL, unreachable registry) always run.

use std::ffi::OsStr;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcron_core::{Dcron, DcronEvent, SkipReason};
use dcron_registry_redis::RedisRegistry;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

const TASK: &str = "e2e-every-second";

/// Every variable `dcronctl` reads, removed so the developer's environment cannot leak in.
const CLI_ENV: [&str; 9] = [
    "DCRON_REGISTRY_URL",
    "DCRON_NAMESPACE",
    "DCRON_REGISTRY_USER",
    "DCRON_REGISTRY_PASSWORD",
    "DCRON_ETCD_USER",
    "DCRON_ETCD_PASSWORD",
    "DCRON_ZK_DIGEST",
    "CONSUL_HTTP_TOKEN",
    "RUST_LOG",
];

fn redis_url() -> Option<String> {
    match std::env::var("DCRON_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("DCRON_TEST_REQUIRE").as_deref() != Ok("1"),
                "DCRON_TEST_REQUIRE=1 but DCRON_TEST_REDIS_URL is not set (scripts/services/redis.sh sets it)"
            );
            eprintln!("skipping: DCRON_TEST_REDIS_URL is not set (run scripts/test or scripts/services/redis.sh)");
            None
        }
    }
}

fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcronctl"));
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    cmd.args(args).kill_on_drop(true);
    cmd
}

async fn run<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command(args).output())
        .await
        .unwrap_or_else(|_| panic!("dcronctl {args:?} did not finish in 60 s"))
        .unwrap_or_else(|e| panic!("dcronctl {args:?} did not start: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code and, on failure, the one-line `dcronctl: …` error.
fn expect_code(out: &Output, code: i32, what: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {stdout:?} stderr {stderr:?}"
    );
    if code != 0 {
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr:?}");
        assert!(stderr.starts_with("dcronctl: "), "{what}: {stderr:?}");
        assert!(stdout.is_empty(), "{what}: nothing on stdout: {stdout:?}");
    }
}

fn json(out: &Output, what: &str) -> Value {
    expect_code(out, 0, what);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// Runs `args` until `check` accepts the JSON answer, or fails after `within`.
async fn poll_json(
    args: &[String],
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let value = json(&run(args).await, what);
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {within:?}; last answer {value:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn task_row<'a>(tasks: &'a Value, name: &str) -> Option<&'a Value> {
    tasks["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

/// Waits until `events` yields an event accepted by `matches`.
async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<DcronEvent>,
    within: Duration,
    what: &str,
    matches: impl Fn(&DcronEvent) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("{what}: no such event in {within:?}"),
            Ok(Ok(ev)) if matches(&ev) => return,
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("{what}: event stream ended: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operate_a_task_through_the_binary() {
    let Some(url) = redis_url() else { return };
    let ns = format!("dcronctl-e2e-{}", uuid::Uuid::new_v4().simple());
    let base = ["--registry", url.as_str(), "--namespace", ns.as_str()];
    let with =
        |args: &[&str]| -> Vec<String> { base.iter().chain(args).map(|s| s.to_string()).collect() };
    macro_rules! ctl {
        ($($a:expr),* $(,)?) => {
            run(&with(&[$($a),*])).await
        };
    }
    macro_rules! args {
        ($($a:expr),* $(,)?) => { with(&[$($a),*]) };
    }

    // An empty namespace.
    let tasks = json(&ctl!("tasks", "--json"), "tasks on an empty namespace");
    assert_eq!(tasks["tasks"], Value::Array(vec![]));
    let empty = ctl!("nodes");
    expect_code(&empty, 0, "nodes");
    assert_eq!(text(&empty.stdout), "no live nodes in this namespace\n");

    // Add a task with a seconds schedule; a second add conflicts; bad input is a usage error.
    let added = ctl!("add", TASK, "--cron", "*/1 * * * * *", "--payload", "hello");
    expect_code(&added, 0, "add");
    assert!(
        text(&added.stdout).starts_with(&format!("added task `{TASK}`")),
        "{}",
        text(&added.stdout)
    );
    expect_code(
        &ctl!("add", TASK, "--cron", "@hourly"),
        5,
        "add an existing task",
    );
    expect_code(&ctl!("add", "other", "--cron", "61 * * * *"), 2, "bad cron");
    expect_code(
        &ctl!("add", "other", "--cron", "@hourly", "--zone", "Mars/Base"),
        2,
        "bad zone",
    );
    expect_code(&ctl!("add", "a/b", "--cron", "@hourly"), 2, "bad task name");

    let tasks = json(&ctl!("tasks", "--json"), "tasks");
    let row = task_row(&tasks, TASK).expect("the task is listed");
    assert_eq!(row["schedule"], "*/1 * * * * *");
    assert_eq!(row["zone"], "UTC");
    assert_eq!(row["state"], "active");
    assert_eq!(row["payload"], "hello");
    assert!(row["next_fire"].is_string(), "{row:#}");
    assert!(row["owner"].is_null(), "no node yet: {row:#}");

    // Tags: stored with the task, shown, and filtered on (every tag given must be carried).
    expect_code(
        &ctl!(
            "add",
            "tagged-a",
            "--cron",
            "@hourly",
            "--tag",
            "billing",
            "--tag",
            "team:ops",
            "--max-concurrent",
            "2"
        ),
        0,
        "add with tags",
    );
    expect_code(
        &ctl!("add", "tagged-b", "--cron", "@hourly", "--tag", "billing"),
        0,
        "add with a tag",
    );
    expect_code(
        &ctl!("add", "tagged-c", "--cron", "@hourly", "--tag", "no spaces"),
        2,
        "a bad tag",
    );
    let names = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .expect("tasks array")
            .iter()
            .map(|t| t["name"].as_str().expect("name").to_string())
            .collect()
    };
    let billing = json(&ctl!("tasks", "--json", "--tag", "billing"), "tasks --tag");
    assert_eq!(names(&billing), ["tagged-a", "tagged-b"]);
    let both = json(
        &ctl!("tasks", "--json", "--tag", "billing", "--tag", "team:ops"),
        "tasks --tag --tag",
    );
    assert_eq!(names(&both), ["tagged-a"]);
    assert_eq!(
        both["tasks"][0]["tags"],
        serde_json::json!(["billing", "team:ops"])
    );
    let table = ctl!("tasks", "--tag", "team:ops");
    expect_code(&table, 0, "tasks --tag as a table");
    let table = text(&table.stdout);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("TAGS")),
        "{table}"
    );
    assert!(
        table.contains("billing,team:ops") && !table.contains("tagged-b"),
        "{table}"
    );
    for t in ["tagged-a", "tagged-b"] {
        expect_code(&ctl!("cleanup", t, "--yes"), 0, "cleanup a tagged task");
    }

    // A node on the same Redis and namespace runs it.
    let runs: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let registry = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");
    let seen = runs.clone();
    let node = Dcron::builder(registry)
        .node_name("e2e")
        .ttl(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(300))
        .status_interval(Duration::from_millis(300))
        .task_run_fn(move |ctx| {
            let seen = seen.clone();
            async move {
                if let Ok(mut runs) = seen.lock() {
                    runs.push((ctx.payload().to_string(), ctx.token));
                }
                Ok(())
            }
        })
        .build()
        .expect("node");
    let mut events = node.events();
    node.start().await.expect("started");
    let id = node.node_id().to_string();

    let nodes = poll_json(
        &args!("nodes", "--json"),
        Duration::from_secs(30),
        "the node works and owns the task",
        |v| {
            v["nodes"].as_array().is_some_and(|n| {
                n.iter().any(|n| {
                    n["id"] == id.as_str() && n["status"] == "working" && n["owned_tasks"] == 1
                })
            })
        },
    )
    .await;
    assert_eq!(nodes["strategy"], "consistent");

    // Its fires show up in `claims`, run by the node.
    let claims = poll_json(
        &args!("claims", TASK, "--json"),
        Duration::from_secs(30),
        "a claim for the task",
        |v| v["claims"].as_array().is_some_and(|c| !c.is_empty()),
    )
    .await;
    assert_eq!(claims["task"], TASK);
    assert_eq!(claims["claims"][0]["node"], id.as_str());
    let human = ctl!("claims", TASK, "--limit", "1");
    expect_code(&human, 0, "claims as a table");
    let table = text(&human.stdout);
    assert!(table.starts_with("FIRE") && table.contains(&id), "{table}");

    // `tasks` now shows the owner, the last fire and (once the owner wrote it) the last result.
    let tasks = poll_json(
        &args!("tasks", "--json"),
        Duration::from_secs(30),
        "the last result",
        |v| task_row(v, TASK).is_some_and(|r| r["last_result"] == "ok"),
    )
    .await;
    let row = task_row(&tasks, TASK).expect("listed");
    assert_eq!(row["owner"], id.as_str());
    assert_eq!(row["last_fire"]["node"], id.as_str());
    assert!(runs.lock().expect("runs").iter().all(|(p, _)| p == "hello"));
    let human = ctl!("tasks");
    expect_code(&human, 0, "tasks as a table");
    let table = text(&human.stdout);
    assert!(
        table.starts_with("NAME") && table.contains(TASK) && table.contains("active"),
        "{table}"
    );

    // `watch` reports the fires as JSON lines.
    let mut watch = command(&args!(
        "watch",
        "--json",
        "--interval",
        "200ms",
        "--for",
        "60s"
    ));
    watch.stdout(std::process::Stdio::piped());
    let mut child = watch.spawn().expect("watch starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut fire, mut result) = (false, false);
    while !(fire && result) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("fire and result events in time")
            .expect("readable")
            .expect("watch still running");
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if ev["task"] != TASK {
            continue;
        }
        if ev["event"] == "fire" {
            assert_eq!(ev["node"], id.as_str());
            fire = true;
        } else if ev["event"] == "result" {
            assert_eq!(
                (&ev["node"], &ev["result"]),
                (&Value::from(id.as_str()), &Value::from("ok"))
            );
            result = true;
        }
    }
    child.kill().await.expect("watch stopped");
    let short = ctl!("watch", "--for", "300ms");
    expect_code(&short, 0, "watch --for ends by itself");

    // Trigger runs it once now, with the request id as the fencing token.
    let triggered = json(&ctl!("trigger", TASK, "--json"), "trigger");
    let trigger_id = triggered["id"].as_u64().expect("id");
    wait_run(&runs, trigger_id, "trigger").await;

    // Pause: the node skips the fires; resume.
    let paused = ctl!("pause", TASK);
    expect_code(&paused, 0, "pause");
    assert!(text(&paused.stdout).starts_with(&format!("paused task `{TASK}`")));
    wait_event(&mut events, Duration::from_secs(30), "a fire skipped while paused", |e| {
        matches!(e, DcronEvent::Skipped { fire, reason: SkipReason::Paused } if fire.task == TASK)
    })
    .await;
    let tasks = json(&ctl!("tasks", "--json"), "tasks while paused");
    assert_eq!(task_row(&tasks, TASK).expect("listed")["state"], "paused");
    let resumed = json(&ctl!("resume", TASK, "--json"), "resume");
    assert_eq!(resumed["was_paused"], true);
    let tasks = json(&ctl!("tasks", "--json"), "tasks after resume");
    assert_eq!(task_row(&tasks, TASK).expect("listed")["state"], "active");

    // Delete: tombstoned everywhere, shown as deleted; deleting again is fine.
    let deleted = ctl!("delete", TASK, "--yes");
    expect_code(&deleted, 0, "delete");
    assert!(text(&deleted.stdout).starts_with(&format!("marked task `{TASK}` deleted")));
    let tasks = json(&ctl!("tasks", "--json"), "tasks after delete");
    let row = task_row(&tasks, TASK).expect("still listed");
    assert_eq!(row["state"], "deleted");
    assert!(row["deleted_at"].is_string() && row["owner"].is_null() && row["next_fire"].is_null());
    assert_eq!(
        json(&ctl!("delete", TASK, "--json"), "delete again")["already"],
        true
    );
    expect_code(
        &ctl!("add", TASK, "--cron", "@hourly"),
        5,
        "add a deleted task",
    );
    expect_code(&ctl!("trigger", TASK), 5, "trigger a deleted task");

    // Reuse, force-add, cleanup.
    expect_code(&ctl!("reuse", TASK), 0, "reuse");
    expect_code(&ctl!("reuse", TASK), 4, "reuse a live task");
    expect_code(
        &ctl!(
            "force-add",
            TASK,
            "--cron",
            "@hourly",
            "--zone",
            "Europe/Berlin",
            "--yes"
        ),
        0,
        "force-add",
    );
    let tasks = json(&ctl!("tasks", "--json"), "tasks after force-add");
    assert_eq!(
        task_row(&tasks, TASK).expect("listed")["zone"],
        "Europe/Berlin"
    );
    let assignment = json(
        &ctl!("assignment", "--strategy", "round-robin", "--json"),
        "assignment",
    );
    assert_eq!(assignment["strategy"], "round-robin");
    assert!(assignment["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .any(|n| n["id"] == id.as_str()));
    expect_code(&ctl!("cleanup", TASK, "-y"), 0, "cleanup");
    let tasks = json(&ctl!("tasks", "--json"), "tasks after cleanup");
    assert!(task_row(&tasks, TASK).is_none(), "{tasks:#}");

    // Unknown tasks.
    for args in [
        vec!["claims", "no-such-task"],
        vec!["delete", "no-such-task"],
        vec!["pause", "no-such-task"],
        vec!["cleanup", "no-such-task"],
    ] {
        let out = run(&with(&args)).await;
        expect_code(&out, 4, &format!("{args:?}"));
        assert!(
            text(&out.stderr).contains("unknown task `no-such-task`"),
            "{}",
            text(&out.stderr)
        );
    }

    node.stop().await.expect("stopped");
    // The namespace is left empty.
    let admin = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");
    dcron_core::Registry::cleanup_all(&admin)
        .await
        .expect("cleaned");
}

#[tokio::test]
async fn bad_urls_are_usage_errors() {
    for url in [
        "redis//127.0.0.1",
        "redis://127.0.0.1:notaport",
        "memory://",
        "ftp://h",
        "consul://u:pw@h",
    ] {
        let out = run(&["--registry", url, "nodes"]).await;
        expect_code(&out, 2, url);
    }
    let out = run(&["nodes"]).await;
    expect_code(&out, 2, "no registry");
    assert!(text(&out.stderr).contains("DCRON_REGISTRY_URL"));
    let out = run(&[
        "--registry",
        "redis://127.0.0.1:1",
        "assignment",
        "--strategy",
        "nope",
    ])
    .await;
    expect_code(&out, 2, "unknown strategy");
    let out = run(&[
        "--registry",
        "redis://u:sekr3t-pw@h",
        "--password=sekr3t-two",
        "nodes",
        "--bogus",
    ])
    .await;
    expect_code(&out, 2, "unknown flag");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--bogus") && !stderr.contains("sekr3t"),
        "{stderr}"
    );
    // Bad input is refused before the registry is contacted.
    let out = run(&[
        "--registry",
        "redis://127.0.0.1:1",
        "add",
        "t",
        "--cron",
        "not cron",
    ])
    .await;
    expect_code(&out, 2, "bad cron with an unreachable registry");
}

/// The size limits of `dcronctl` (see `dcron_cli::limits`) through the binary: exit code 2,
/// one line naming the limit, and nothing sent (the registry is unreachable on purpose). An
/// inline payload over the limit cannot be passed at all (Linux refuses a single argument over
/// 128 KiB): the unit tests cover that check.
#[tokio::test]
async fn oversized_input_is_a_usage_error_before_the_registry_is_contacted() {
    let unreachable = "redis://127.0.0.1:1";
    let add = |name: String, extra: Vec<String>| {
        let mut args = vec![
            "--registry".to_string(),
            unreachable.to_string(),
            "add".to_string(),
            name,
            "--cron".to_string(),
            "@hourly".to_string(),
        ];
        args.extend(extra);
        args
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "an argument over 8 KiB",
            vec![
                "--registry".into(),
                unreachable.into(),
                "delete".into(),
                "n".repeat(dcron_cli::limits::MAX_ARG_BYTES + 1),
            ],
            "8192 bytes",
        ),
        (
            "a task name over 200 bytes",
            add("n".repeat(201), Vec::new()),
            "200 bytes",
        ),
        (
            "a cron text over 1024 bytes",
            vec![
                "--registry".into(),
                unreachable.into(),
                "add".into(),
                "t".into(),
                "--cron".into(),
                "*".repeat(1025),
            ],
            "1024 bytes",
        ),
    ];
    for (what, args, says) in cases {
        let out = run(&args).await;
        expect_code(&out, 2, what);
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    // A payload file over the limit: refused from its size, never read (a sparse 1 GiB file).
    let dir = std::env::temp_dir().join(format!("dcronctl-e2e-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("payload.txt");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse file");
    let out = run(&add(
        "t".into(),
        vec!["--payload-file".into(), path.display().to_string()],
    ))
    .await;
    expect_code(&out, 2, "a payload file over 256 KiB");
    assert!(text(&out.stderr).contains("1073741824 bytes"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unreachable_registry_is_exit_3_without_credentials() {
    let secret = "sup3r-s3cret-pw";
    let url = format!("redis://admin:{secret}@127.0.0.1:1/0");
    let out = run(&["--registry", &url, "--timeout", "2s", "tasks"]).await;
    expect_code(&out, 3, "unreachable");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("redis://127.0.0.1:1/0") && stderr.contains("unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");

    // Credentials from flags and the environment are not echoed either.
    let mut cmd = command(&[
        "--registry",
        "redis://127.0.0.1:1",
        "--password",
        secret,
        "nodes",
    ]);
    cmd.env("DCRON_REGISTRY_USER", "ops");
    let out = cmd.output().await.expect("ran");
    expect_code(&out, 3, "unreachable with --password");
    assert!(!text(&out.stderr).contains(secret));
}

/// Runs `dcronctl` under a pseudo-terminal (util-linux `script`), so that its standard input
/// is a terminal, typing `answer`. `None` when `script` is not installed.
async fn run_on_terminal(args: &[String], answer: &str) -> Option<Output> {
    let probe = Command::new("script").arg("--version").output().await;
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        eprintln!("skipping the terminal case: util-linux `script` is not installed");
        return None;
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let line = std::iter::once(env!("CARGO_BIN_EXE_dcronctl").to_string())
        .chain(args.iter().cloned())
        .map(|a| quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    cmd.args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("script started");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, answer.as_bytes())
        .await
        .expect("answer typed");
    // Keep the terminal open until dcronctl is done: `script` ends the session at end of input.
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("dcronctl under script finished in 60 s")
        .expect("script ran");
    drop(stdin);
    Some(out)
}

fn last_line(bytes: &[u8]) -> String {
    text(bytes)
        .trim_end()
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

/// `delete`, `cleanup` and `force-add` over an existing task: `--dry-run` prints the plan and
/// changes nothing; without `--yes` and without a terminal they refuse and change nothing;
/// with `--yes` they act; on a terminal they ask.
#[tokio::test]
async fn destructive_commands_show_the_plan_and_need_confirmation() {
    const GUARDED: &str = "e2e-guarded";
    let Some(url) = redis_url() else { return };
    let ns = format!("dcronctl-e2e-{}", uuid::Uuid::new_v4().simple());
    let base = ["--registry", url.as_str(), "--namespace", ns.as_str()];
    let with =
        |args: &[&str]| -> Vec<String> { base.iter().chain(args).map(|s| s.to_string()).collect() };
    macro_rules! ctl {
        ($($a:expr),* $(,)?) => {
            run(&with(&[$($a),*])).await
        };
    }
    let registry = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");
    let reg: &dyn dcron_core::Registry = &registry;
    let refused = |out: &Output, action: &str, what: &str| {
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{action} task `{GUARDED}` will change")),
            "{what}: the plan is shown: {stderr}"
        );
        let last = last_line(&out.stderr);
        assert!(
            last.starts_with(&format!("dcronctl: refusing to {action} task `{GUARDED}`"))
                && last.contains("pass --yes"),
            "{what}: {last}"
        );
    };

    expect_code(
        &ctl!("add", GUARDED, "--cron", "@hourly", "--payload", "p"),
        0,
        "add",
    );
    dcron_core::admin::pause_task(reg, GUARDED, chrono::Utc::now())
        .await
        .expect("paused");

    // delete
    let out = ctl!("delete", GUARDED, "--dry-run");
    expect_code(&out, 0, "delete --dry-run");
    let plan = text(&out.stdout);
    assert!(
        plan.starts_with(&format!("delete task `{GUARDED}` will change 1 record:\n"))
            && plan.contains("dynamic task (`@hourly` in UTC")
            && plan.ends_with("dry run: nothing was changed\n"),
        "{plan}"
    );
    let dry = json(
        &ctl!("delete", GUARDED, "--dry-run", "--json"),
        "delete --dry-run --json",
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["plan"]["changes"][0]["kind"], "tombstone");
    assert!(reg.get_tombstone(GUARDED).await.expect("read").is_none());
    refused(&ctl!("delete", GUARDED), "delete", "delete without --yes");
    assert!(reg.get_tombstone(GUARDED).await.expect("read").is_none());
    let out = ctl!("delete", GUARDED, "--yes");
    expect_code(&out, 0, "delete --yes");
    assert!(text(&out.stderr).contains("will change 1 record"));
    assert!(reg.get_tombstone(GUARDED).await.expect("read").is_some());
    // Nothing left to change: no confirmation needed.
    expect_code(&ctl!("delete", GUARDED), 0, "delete a deleted task");

    // force-add over the existing (deleted) task
    let force = ["force-add", GUARDED, "--cron", "*/7 * * * * *"];
    let out = run(&with(&[&force[..], &["--dry-run"]].concat())).await;
    expect_code(&out, 0, "force-add --dry-run");
    let plan = text(&out.stdout);
    assert!(
        plan.starts_with(&format!(
            "force-add task `{GUARDED}` will change 2 records:\n"
        )) && plan.contains("`@hourly` in UTC")
            && plan.contains("`*/7 * * * * *` in UTC")
            && plan.contains("deletion mark"),
        "{plan}"
    );
    let unchanged = |meta: Option<dcron_core::TaskMeta>| {
        assert_eq!(meta.expect("record kept").cron_format, "@hourly");
    };
    unchanged(reg.get_task(GUARDED).await.expect("read"));
    refused(
        &run(&with(&force)).await,
        "force-add",
        "force-add without --yes",
    );
    unchanged(reg.get_task(GUARDED).await.expect("read"));
    assert!(reg.get_tombstone(GUARDED).await.expect("read").is_some());
    expect_code(
        &run(&with(&[&force[..], &["--yes"]].concat())).await,
        0,
        "force-add --yes",
    );
    let meta = reg.get_task(GUARDED).await.expect("read").expect("record");
    assert_eq!(meta.cron_format, "*/7 * * * * *");
    assert!(reg.get_tombstone(GUARDED).await.expect("read").is_none());
    // force-add of a free name replaces nothing: no confirmation needed.
    expect_code(
        &ctl!("force-add", "e2e-free", "--cron", "@daily"),
        0,
        "force-add of a new name",
    );

    // cleanup
    let out = ctl!("cleanup", GUARDED, "--dry-run");
    expect_code(&out, 0, "cleanup --dry-run");
    let plan = text(&out.stdout);
    assert!(
        plan.starts_with(&format!(
            "cleanup task `{GUARDED}` will change 2 records:\n"
        )) && plan.contains("task record (`*/7 * * * * *` in UTC")
            && plan.contains("pause record")
            && plan.contains("this cannot be undone"),
        "{plan}"
    );
    assert!(reg.get_task(GUARDED).await.expect("read").is_some());
    refused(
        &ctl!("cleanup", GUARDED),
        "cleanup",
        "cleanup without --yes",
    );
    assert!(reg.get_task(GUARDED).await.expect("read").is_some());
    assert!(dcron_core::admin::is_paused(reg, GUARDED)
        .await
        .expect("read"));

    // On a terminal it asks: anything but yes cancels, yes applies.
    if let Some(out) = run_on_terminal(&with(&["cleanup", GUARDED]), "n\n").await {
        let all = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "answered no: {all}");
        assert!(
            all.contains("apply these changes? [y/N]") && all.contains("cancelled"),
            "{all}"
        );
        assert!(reg.get_task(GUARDED).await.expect("read").is_some());
        let out = run_on_terminal(&with(&["cleanup", GUARDED]), "y\n")
            .await
            .expect("script");
        let all = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "answered yes: {all}");
        assert!(all.contains("removed every trace"), "{all}");
    } else {
        expect_code(&ctl!("cleanup", GUARDED, "--yes"), 0, "cleanup --yes");
    }
    assert!(reg.get_task(GUARDED).await.expect("read").is_none());
    assert!(!dcron_core::admin::is_paused(reg, GUARDED)
        .await
        .expect("read"));

    reg.cleanup_all().await.expect("cleaned");
}

/// The pending trigger requests of the namespace, read straight from the registry.
async fn pending_triggers(registry: &RedisRegistry) -> Vec<dcron_core::TriggerRecord> {
    dcron_core::admin::pending_triggers(registry)
        .await
        .expect("trigger records listed")
        .items
}

/// Waits until the node ran a fire whose fencing token is `token` (a trigger's request id).
async fn wait_run(runs: &Mutex<Vec<(String, u64)>>, token: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runs.lock().expect("runs").iter().any(|(_, t)| *t == token) {
        assert!(
            Instant::now() < deadline,
            "{what}: the triggered run did not happen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tasks_owners_freshness_and_consumed_triggers() {
    const STATIC: &str = "e2e-static-every-second";
    const DYNAMIC: &str = "e2e-dynamic-hourly";
    let Some(url) = redis_url() else { return };
    let ns = format!("dcronctl-e2e-{}", uuid::Uuid::new_v4().simple());
    let base = ["--registry", url.as_str(), "--namespace", ns.as_str()];
    let with =
        |args: &[&str]| -> Vec<String> { base.iter().chain(args).map(|s| s.to_string()).collect() };
    let admin = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");

    // A trigger nobody can take yet is written, and the operator is told it waits.
    expect_code(
        &run(&with(&["add", DYNAMIC, "--cron", "@hourly"])).await,
        0,
        "add",
    );
    let early = run(&with(&["trigger", DYNAMIC, "--json"])).await;
    let early_id = json(&early, "trigger without nodes")["id"]
        .as_u64()
        .expect("id");
    assert!(
        text(&early.stderr).contains("no working node can run"),
        "{}",
        text(&early.stderr)
    );
    assert_eq!(pending_triggers(&admin).await.len(), 1);

    // A node with a static task and a handler for dynamic ones.
    let runs: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let registry = RedisRegistry::builder(url.as_str())
        .namespace(ns.as_str())
        .build()
        .expect("registry");
    let seen = runs.clone();
    let node = Dcron::builder(registry)
        .node_name("e2e-static")
        .ttl(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(300))
        .status_interval(Duration::from_millis(300))
        .task_run_fn(move |ctx| {
            let seen = seen.clone();
            async move {
                if let Ok(mut runs) = seen.lock() {
                    runs.push((ctx.name().to_string(), ctx.token));
                }
                Ok(())
            }
        })
        .build()
        .expect("node");
    let seen = runs.clone();
    node.add_func(STATIC, "*/1 * * * * *", move |ctx| {
        let seen = seen.clone();
        async move {
            if let Ok(mut runs) = seen.lock() {
                runs.push((ctx.name().to_string(), ctx.token));
            }
            Ok(())
        }
    })
    .await
    .expect("static task");
    node.start().await.expect("started");
    let id = node.node_id().to_string();

    // The waiting request is consumed by the owner: run once, and gone from the registry.
    wait_run(&runs, early_id, "the trigger made before any node").await;
    assert_eq!(pending_triggers(&admin).await, vec![]);

    // `tasks` lists the static task (once it ran, the registry knows it), marked static.
    let tasks = poll_json(
        &with(&["tasks", "--json"]),
        Duration::from_secs(30),
        "the static task is listed",
        |v| task_row(v, STATIC).is_some_and(|r| r["last_result"] == "ok"),
    )
    .await;
    let row = task_row(&tasks, STATIC).expect("listed");
    assert_eq!(
        (
            &row["origin"],
            &row["state"],
            &row["owner"],
            &row["schedule"]
        ),
        (
            &Value::from("static"),
            &Value::from("active"),
            &Value::from(id.as_str()),
            &Value::Null
        ),
        "{row:#}"
    );
    assert_eq!(
        task_row(&tasks, DYNAMIC).expect("listed")["origin"],
        "dynamic"
    );
    let table = text(&run(&with(&["tasks"])).await.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with(STATIC))
        .unwrap_or_else(|| panic!("no static line: {table}"));
    assert!(line.contains("static") && line.contains(&id), "{table}");

    // `nodes` counts the static task too, and shows the record's last_alive and its age.
    let before = dcron_core::Registry::list_nodes(&admin)
        .await
        .expect("nodes")
        .items;
    let nodes = json(&run(&with(&["nodes", "--json"])).await, "nodes");
    let after = dcron_core::Registry::list_nodes(&admin)
        .await
        .expect("nodes")
        .items;
    let row = nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("node listed: {nodes:#}"));
    assert_eq!(
        row["owned_tasks"], 2,
        "the dynamic and the static task: {row:#}"
    );
    let shown: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(row["last_alive"].clone()).expect("an instant");
    assert!(
        before
            .iter()
            .chain(&after)
            .any(|n| n.id == id && n.last_alive == shown),
        "last_alive {shown} is the record's ({before:?} / {after:?})"
    );
    assert!(row["last_alive_age"].is_string(), "{row:#}");
    let table = text(&run(&with(&["nodes"])).await.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no node line: {table}"));
    // The age reads `(4s ago)`, or `(now)` within a second of a write.
    assert!(
        line.ends_with("  2") && (line.contains(" ago)") || line.contains("(now)")),
        "{table}"
    );

    // Triggering the static task through the binary: it runs once and leaves no record.
    let triggered = json(&run(&with(&["trigger", STATIC, "--json"])).await, "trigger");
    let trigger_id = triggered["id"].as_u64().expect("id");
    wait_run(&runs, trigger_id, "the static task's trigger").await;
    // The owner deletes the request before it starts the run: nothing is left now.
    assert_eq!(pending_triggers(&admin).await, vec![]);

    node.stop().await.expect("stopped");
    dcron_core::Registry::cleanup_all(&admin)
        .await
        .expect("cleaned");
}
