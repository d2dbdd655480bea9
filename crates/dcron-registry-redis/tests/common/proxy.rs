//! A TCP proxy in front of a server, for losing replies on purpose: every request still reaches
//! the server (and is applied), but while replies are swallowed the client hears nothing back
//! and times out. [`Proxy::cut`] then drops every proxied connection, so the client reconnects
//! and never reads a stale reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct State {
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

    /// While `on`, what the server sends is read and thrown away.
    pub fn swallow_replies(&self, on: bool) {
        self.state.swallow_replies.store(on, Ordering::SeqCst);
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
