//! `ShutdownSignal` turns SIGINT and SIGTERM into a value instead of ending the process.
//!
//! One test in its own binary: the handlers it installs are process-wide and stay installed,
//! and the signals it sends reach every listener of the process.
#![cfg(unix)]

use std::time::Duration;

use dcron_core::{Dcron, MemoryRegistry, NodeState, Registry, Shutdown, ShutdownSignal};

/// Sends `signal` to this process with the system's `kill`.
fn send(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_are_reported_not_fatal() {
    let mut signal = ShutdownSignal::listen().expect("install the handlers");

    send("TERM");
    let got = tokio::time::timeout(Duration::from_secs(10), signal.recv())
        .await
        .expect("SIGTERM seen within 10 s")
        .expect("listening works");
    assert_eq!(got, Shutdown::Terminate);

    send("INT");
    let got = tokio::time::timeout(Duration::from_secs(10), signal.recv())
        .await
        .expect("SIGINT seen within 10 s")
        .expect("listening works");
    assert_eq!(got, Shutdown::Interrupt);
    assert_eq!(got.to_string(), "interrupt (Ctrl-C)");

    // A node run until a stop request stops gracefully on SIGTERM: unregistered, `stopped`.
    let registry = MemoryRegistry::new();
    let node = Dcron::builder(registry.clone())
        .node_name("signalled")
        .build()
        .expect("build");
    node.add_func("tick", "* * * * * *", |_ctx| async { Ok(()) })
        .await
        .expect("add");
    let running = tokio::spawn({
        let node = node.clone();
        async move { node.run_until_shutdown().await }
    });
    // Ready means started, and the handlers are installed before the start.
    node.ready().await.expect("ready");
    assert_eq!(registry.list_nodes().await.expect("list").items.len(), 1);
    send("TERM");
    let got = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped within 10 s")
        .expect("join")
        .expect("run_until_shutdown");
    assert_eq!(got, Shutdown::Terminate);
    assert_eq!(node.state(), NodeState::Stopped);
    assert!(registry.list_nodes().await.expect("list").items.is_empty());
}
