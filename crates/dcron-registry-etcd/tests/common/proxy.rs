//! A TCP proxy in front of a server, for losing replies on purpose: every request still reaches
//! the server (and is applied), but once a request carrying a chosen marker has gone through,
//! the client hears nothing back and times out. [`Proxy::cut`] then drops every proxied
//! connection, so the client reconnects and never reads a stale reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
    /// Bytes that, seen in a request, start swallowing replies.
    marker: Mutex<Option<Vec<u8>>>,
    swallow_replies: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// A proxy on a free loopback port; stopped (with its connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let handle = tokio::spawn(pump(client, server, accept_state.clone()));
                if let Ok(mut connections) = accept_state.connections.lock() {
                    connections.retain(|c| !c.is_finished());
                    connections.push(handle);
                }
            }
        });
        Ok(Proxy {
            addr,
            state,
            accept,
        })
    }

    /// `127.0.0.1:<port>` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From the first request that contains `marker` on (replies to earlier requests still
    /// arrive), what the server sends is read and thrown away, until [`Proxy::disarm`].
    pub fn swallow_replies_after(&self, marker: &[u8]) {
        if let Ok(mut m) = self.state.marker.lock() {
            *m = Some(marker.to_vec());
        }
    }

    /// Stops swallowing replies.
    pub fn disarm(&self) {
        if let Ok(mut m) = self.state.marker.lock() {
            *m = None;
        }
        self.state.swallow_replies.store(false, Ordering::SeqCst);
    }

    /// Whether a request with the marker went through (replies are being swallowed).
    pub fn triggered(&self) -> bool {
        self.state.swallow_replies.load(Ordering::SeqCst)
    }

    /// Closes every proxied connection (new ones are still accepted).
    pub fn cut(&self) {
        if let Ok(mut connections) = self.state.connections.lock() {
            for c in connections.drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies both ways until either side closes; server bytes are dropped while swallowing.
async fn pump(client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let hit = state.marker.lock().ok().is_some_and(|m| {
                        m.as_ref()
                            .is_some_and(|m| buf[..n].windows(m.len()).any(|w| w == m.as_slice()))
                    });
                    // Set before the request is forwarded: its reply cannot come earlier.
                    if hit {
                        state.swallow_replies.store(true, Ordering::SeqCst);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if state.swallow_replies.load(Ordering::SeqCst) {
                        continue;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
