//! Smoke test of the `latency` command through the built binary: a tiny workload on both
//! systems must print both summaries and the ratio line, with fires recorded. No timing is
//! asserted: the machine may be slow or busy.

use std::process::Command;

use dcron_bench::summary::Summary;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcron-bench"))
}

#[test]
fn latency_prints_every_system_and_the_ratios() {
    let dir = std::env::temp_dir().join(format!("dcron-bench-smoke-{}", std::process::id()));
    let plot = dir.join("latency.svg");
    let output = bench()
        .args(["latency", "--tasks", "20", "--seconds", "2", "--plot"])
        .arg(&plot)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let summaries: Vec<Summary> = stdout.lines().filter_map(Summary::parse).collect();
    assert_eq!(summaries.len(), 4, "{stdout}");
    for (summary, system) in summaries
        .iter()
        .zip(["dcron", "tokio-cron-scheduler", "tokio-timers"])
    {
        assert_eq!(summary.get("run"), Some("latency"), "{stdout}");
        assert_eq!(summary.get("system"), Some(system), "{stdout}");
        for key in [
            "fires",
            "expected",
            "missed",
            "duplicates",
            "unexpected",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "cpu_us_per_fire",
            "rss_bytes_per_task",
        ] {
            assert!(summary.number(key).is_some(), "no numeric {key}: {stdout}");
        }
        assert!(summary.number("fires").unwrap_or(0.0) > 0.0, "{stdout}");
    }
    for key in ["duplicates", "missed", "unexpected"] {
        assert_eq!(summaries[0].number(key), Some(0.0), "dcron {key}: {stdout}");
    }
    let ratio = &summaries[3];
    assert_eq!(ratio.get("run"), Some("latency-ratio"), "{stdout}");
    for key in [
        "p50_ratio",
        "p99_ratio",
        "max_ratio",
        "cpu_per_fire_ratio",
        "tokio_timers_p99_ms",
    ] {
        assert!(ratio.get(key).is_some(), "no {key}: {stdout}");
    }
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(
        svg.contains("<svg")
            && svg.contains("tokio-cron-scheduler")
            && svg.contains("tokio-timers")
    );
    std::fs::remove_dir_all(&dir).expect("temporary directory removed");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        vec!["latency", "--tasks", "ten", "--seconds", "1"],
        vec!["latency", "--tasks", "10"],
        vec!["failover", "--backend", "nope"],
        vec!["frobnicate"],
        vec![],
    ] {
        let output = bench().args(&args).output().expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--help") || stderr.contains("Usage:"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    let output = bench().arg("help").output().expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    for command in ["latency", "redis", "scale", "failover", "registry"] {
        assert!(stdout.contains(command), "{command}: {stdout}");
    }
}

#[test]
fn unreachable_redis_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let output = bench()
        .args([
            "redis",
            "--nodes",
            "1",
            "--tasks",
            "1",
            "--seconds",
            "1",
            "--url",
            "redis://127.0.0.1:1",
        ])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(not(feature = "etcd"))]
#[test]
fn a_backend_left_out_of_the_build_is_a_clear_error() {
    let output = bench()
        .args(["failover", "--backend", "etcd"])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--features etcd"), "{stderr}");
}

#[test]
fn registry_refuses_consul_and_names_a_missing_feature() {
    let output = bench()
        .args(["registry", "--backend", "consul"])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no real Consul agent"), "{stderr}");
    if cfg!(not(feature = "postgres")) {
        let output = bench()
            .args(["registry", "--backend", "postgres"])
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("--features postgres"), "{stderr}");
    }
}

#[test]
fn scale_with_a_join_prints_the_cluster_figures() {
    // Two nodes on one MemoryRegistry, then a third joins: the same code path as
    // `scale --backend redis --nodes 3`, without a server.
    let output = bench()
        .args([
            "scale",
            "--backend",
            "memory",
            "--nodes",
            "2",
            "--tasks",
            "300",
            "--seconds",
            "1",
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let summary = stdout
        .lines()
        .filter_map(Summary::parse)
        .find(|s| s.get("run") == Some("scale"))
        .unwrap_or_else(|| panic!("no scale summary: {stdout}"));
    assert_eq!(summary.get("backend"), Some("memory"), "{stdout}");
    assert_eq!(summary.number("nodes"), Some(2.0), "{stdout}");
    for key in ["duplicates", "missed", "unexpected"] {
        assert_eq!(summary.number(key), Some(0.0), "{key}: {stdout}");
    }
    for key in ["start_s", "settle_s", "join_moved_ratio", "bytes_per_task"] {
        assert!(summary.number(key).is_some(), "no numeric {key}: {stdout}");
    }
    // A join moves some tasks to the new node, never none.
    assert!(summary.number("moved").unwrap_or(0.0) > 0.0, "{stdout}");
}

#[test]
fn unreachable_redis_cluster_is_a_clear_error() {
    let output = bench()
        .args([
            "registry",
            "--backend",
            "redis-cluster",
            "--url",
            "redis://127.0.0.1:1,redis://127.0.0.1:2",
        ])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Redis Cluster"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
