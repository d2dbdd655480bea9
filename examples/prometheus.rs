//! Exporting dcron's metrics for Prometheus: the `metrics` facade's Prometheus recorder, a
//! scrape endpoint on loopback, and two nodes running a few tasks (one failing, one paused).
//!
//! `cargo run -p examples --example prometheus [-- --serve-seconds <n>]`
//!
//! It serves `http://127.0.0.1:<port>/metrics` while the nodes run (8 s by default), scrapes it
//! once itself, prints the `dcron_*` series, and ends with a `summary` line.

use std::time::Duration;

use dcron_core::{Dcron, MemoryRegistry, SecondsField};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every request on `listener` with the current exposition text.
async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // One read is enough for a scrape's request line; the body is not used.
            let _ = socket.read(&mut buf).await;
            let body = handle.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        });
    }
}

async fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

async fn node(name: &str, registry: &MemoryRegistry) -> dcron_core::Result<Dcron> {
    let node = Dcron::builder(registry.clone())
        .node_name(name)
        .seconds(SecondsField::Optional)
        .ttl(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(500))
        .error_handler(|_, _| {})
        .build()?;
    node.add_func("every-second", "* * * * * *", |_| async { Ok(()) })
        .await?;
    node.add_func("failing", "*/2 * * * * *", |_| async {
        Err("downstream unavailable".into())
    })
    .await?;
    node.add_func("paused", "* * * * * *", |_| async { Ok(()) })
        .await?;
    node.start().await?;
    Ok(node)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut serve_seconds = 8u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve-seconds" => {
                serve_seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| (1..=3600).contains(v))
                    .ok_or("--serve-seconds needs a number of seconds in 1..=3600")?;
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/metrics for {serve_seconds} s");
    let server = tokio::spawn(serve(listener, handle.clone()));

    let registry = MemoryRegistry::new();
    let a = node("a", &registry).await?;
    let b = node("b", &registry).await?;
    a.pause_task("paused").await?;
    tokio::time::sleep(Duration::from_secs(serve_seconds)).await;
    let text = scrape(addr).await?;
    a.stop().await?;
    b.stop().await?;
    server.abort();

    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("dcron_")).collect();
    for line in &series {
        println!("{line}");
    }
    let mut families: Vec<&str> = series
        .iter()
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    families.sort();
    families.dedup();
    println!(
        "summary series={} families={}",
        series.len(),
        families.len()
    );
    if !families
        .iter()
        .any(|f| f.starts_with("dcron_fires_executed_total"))
        || !families
            .iter()
            .any(|f| f.starts_with("dcron_registry_call_seconds"))
    {
        return Err("expected fire and registry metrics in the scrape".into());
    }
    Ok(())
}
