//! A loopback TCP proxy that can cut its traffic: the chaos run's network partition.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from a loopback port to `upstream` until cut.
///
/// While cut, open connections are closed and new ones are accepted and closed at once (a
/// client sees resets, as after a network failure). Dropping the proxy stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1` (a free port) and forwards to `upstream` (`host:port`).
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(upstream: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            // Runs until the proxy is dropped (the task is aborted then).
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let rx = cuts.subscribe();
                if *rx.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(forward(client, upstream, rx));
            }
        });
        Ok(Proxy { addr, cut, task })
    }

    /// The `127.0.0.1:port` clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection, now and until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Whether traffic is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_replace(true);
    }
}

async fn forward(mut client: TcpStream, upstream: String, mut cut: watch::Receiver<bool>) {
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await;
    let Ok(Ok(mut server)) = connect else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_restore() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = echo.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            for _ in 0..8 {
                let Ok((mut s, _)) = echo.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(upstream).await.expect("proxy");
        let round_trip = |addr: SocketAddr| async move {
            let mut c = TcpStream::connect(addr).await.ok()?;
            c.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(buf)
        };
        assert_eq!(round_trip(proxy.addr()).await, Some(*b"ping"));
        proxy.cut();
        assert!(proxy.is_cut());
        assert_eq!(round_trip(proxy.addr()).await, None);
        proxy.restore();
        assert_eq!(round_trip(proxy.addr()).await, Some(*b"ping"));
    }
}
