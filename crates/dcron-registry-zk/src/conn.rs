//! One ZooKeeper session: the `zookeeper-async` client plus what that client leaves to its user.
//!
//! `zookeeper-async` 5 reconnects by itself, but after a reconnect it neither re-sends the
//! authentication nor re-registers watches, and after a session expiry it silently opens a new
//! session. [`Conn`] fills those gaps: it re-authenticates after every (re)connect, counts
//! connections in a [`tokio::sync::watch`] so watchers re-arm and report a resync, remembers
//! that the session expired (which ends a node lease), bounds every request with a timeout,
//! passes every request through the optional [`FaultInjector`], and maps the client's errors
//! into [`dcron_core::Error`] with the operation and the path.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcron_core::{Error, Result};
use tokio::sync::watch;
use zookeeper_async::{
    Acl, CreateMode, Permission, Stat, WatchedEvent, ZkError, ZkState, ZooKeeper,
};

use crate::faults::{Fault, FaultInjector};

pub(crate) const BACKEND: &str = "zookeeper";

/// A ZooKeeper error answer with what was being done: the `source` of the mapped errors.
#[derive(Debug)]
pub(crate) struct ZkFailure {
    pub(crate) op: &'static str,
    pub(crate) path: String,
    pub(crate) code: ZkError,
}

impl std::fmt::Display for ZkFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            // zookeeper-async folds every error code it does not know into `Unimplemented`.
            ZkError::Unimplemented => write!(
                f,
                "{} `{}`: the server answered an error code this client does not know \
                 (or Unimplemented)",
                self.op, self.path
            ),
            code => write!(f, "{} `{}`: {code:?}", self.op, self.path),
        }
    }
}

impl std::error::Error for ZkFailure {}

/// Maps a client error of `op` on `path` into the dcron error.
///
/// Connection loss, timeouts, a moved or expired session and a read-only server are
/// [`Error::Unavailable`] (retryable); `NoAuth`/`AuthFailed` are [`Error::AccessDenied`];
/// bad arguments (a value over `jute.maxbuffer`, an invalid ACL) are
/// [`Error::InvalidArgument`]; every other code, including codes the client does not know, is
/// [`Error::Backend`] naming the operation, the path and the code.
pub(crate) fn map_err(code: ZkError, op: &'static str, path: &str) -> Error {
    let failure = ZkFailure {
        op,
        path: path.to_string(),
        code,
    };
    match code {
        ZkError::ConnectionLoss
        | ZkError::OperationTimeout
        | ZkError::SessionExpired
        | ZkError::SessionMoved
        | ZkError::NotReadOnly => Error::Unavailable {
            message: format!("zookeeper: {failure}"),
            source: Some(Box::new(failure)),
        },
        ZkError::NoAuth | ZkError::AuthFailed => {
            Error::AccessDenied(format!("zookeeper: {failure}"))
        }
        ZkError::BadArguments | ZkError::InvalidACL => {
            Error::InvalidArgument(format!("zookeeper refused the request: {failure}"))
        }
        _ => Error::Backend {
            backend: BACKEND,
            message: failure.to_string(),
            source: Some(Box::new(failure)),
        },
    }
}

/// What the connection listener saw, shared with the [`Conn`].
#[derive(Debug, Default)]
struct Flags {
    expired: AtomicBool,
    closed: AtomicBool,
}

/// The ACLs a connection creates znodes with.
pub(crate) fn acl_for(digest: bool, world_readable: bool) -> Vec<Acl> {
    if !digest {
        return Acl::open_unsafe().clone();
    }
    let mut acl = Acl::creator_all().clone();
    if world_readable {
        acl.push(Acl::new(Permission::READ, "world", "anyone"));
    }
    acl
}

/// How a connection is opened.
pub(crate) struct ConnSpec<'a> {
    pub(crate) hosts: &'a str,
    pub(crate) session_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) digest: Option<&'a (String, String)>,
    pub(crate) acl: Vec<Acl>,
    pub(crate) faults: Option<FaultInjector>,
}

/// One session on the ensemble.
pub(crate) struct Conn {
    zk: Arc<ZooKeeper>,
    acl: Vec<Acl>,
    auth: Option<Vec<u8>>,
    op_timeout: Duration,
    flags: Arc<Flags>,
    faults: Option<FaultInjector>,
    /// Bumped after every (re)connect once authentication was re-sent.
    ready: watch::Receiver<u64>,
    /// Held so the re-auth task ends when the connection is dropped.
    _alive: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("expired", &self.flags.expired.load(Ordering::Relaxed))
            .field("closed", &self.flags.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn ignore_event(_: WatchedEvent) {}

impl Conn {
    /// Connects with a session of `spec.session_timeout`, authenticates, and checks that the
    /// server answers.
    pub(crate) async fn open(spec: ConnSpec<'_>) -> Result<Arc<Conn>> {
        let hosts = spec.hosts;
        let connecting = ZooKeeper::connect_with_retry_time(
            hosts,
            spec.session_timeout,
            ignore_event,
            Duration::from_millis(250),
        );
        let zk = match tokio::time::timeout(spec.connect_timeout, connecting).await {
            Ok(Ok(zk)) => Arc::new(zk),
            Ok(Err(ZkError::BadArguments)) => {
                return Err(Error::InvalidArgument(format!(
                    "zookeeper connect string {hosts:?} does not parse"
                )))
            }
            Ok(Err(e)) => return Err(map_err(e, "connect", hosts)),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "zookeeper: no connection to {hosts} within {:?}",
                    spec.connect_timeout
                )))
            }
        };
        let auth = spec.digest.map(|(u, p)| format!("{u}:{p}").into_bytes());
        let flags = Arc::new(Flags::default());
        let (state_tx, mut state_rx) = watch::channel(0u64);
        {
            let flags = flags.clone();
            #[allow(deprecated)]
            zk.add_listener(move |state| match state {
                ZkState::Connected | ZkState::ConnectedReadOnly => {
                    state_tx.send_modify(|g| *g += 1);
                }
                // zookeeper-async reports an expired session as `NotConnected`, then opens a new
                // session on its own: whatever was tied to the old one is gone.
                ZkState::NotConnected => flags.expired.store(true, Ordering::Release),
                ZkState::Closed => flags.closed.store(true, Ordering::Release),
                _ => {}
            });
        }
        // Re-authenticate after every reconnect, then tell the watchers to re-arm.
        let (ready_tx, ready_rx) = watch::channel(0u64);
        let (alive_tx, mut alive_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let weak = Arc::downgrade(&zk);
            let auth = auth.clone();
            let mut seen = *state_rx.borrow_and_update();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut alive_rx => return,
                        changed = state_rx.changed() => if changed.is_err() { return },
                    }
                    let generation = *state_rx.borrow_and_update();
                    if generation == seen {
                        continue;
                    }
                    seen = generation;
                    let Some(zk) = weak.upgrade() else { return };
                    if let Some(auth) = &auth {
                        if let Err(e) = zk.add_auth("digest", auth.clone()).await {
                            tracing::warn!(error = ?e, "zookeeper: re-authentication failed");
                        }
                    }
                    drop(zk);
                    ready_tx.send_modify(|g| *g = generation);
                }
            });
        }
        let conn = Arc::new(Conn {
            zk,
            acl: spec.acl,
            auth,
            op_timeout: spec.op_timeout,
            flags,
            faults: spec.faults,
            ready: ready_rx,
            _alive: alive_tx,
        });
        // The first requests wait for the handshake: they prove the server is there. A server
        // still starting accepts connections and drops them: retry until the connect deadline.
        let deadline = tokio::time::Instant::now() + spec.connect_timeout;
        loop {
            match conn.handshake().await {
                Ok(()) => return Ok(conn),
                Err(e @ Error::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "zookeeper: server not ready yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    conn.close().await;
                    return Err(e);
                }
            }
        }
    }

    async fn handshake(&self) -> Result<()> {
        if let Some(auth) = &self.auth {
            let auth = auth.clone();
            self.timed("/", &|zk: Arc<ZooKeeper>| {
                let auth = auth.clone();
                async move { zk.add_auth("digest", auth).await }
            })
            .await?
            .map_err(|e| map_err(e, "authenticate", "/"))?;
        }
        self.timed("/", &|zk: Arc<ZooKeeper>| async move {
            zk.exists("/", false).await
        })
        .await?
        .map_err(|e| map_err(e, "exists", "/"))?;
        Ok(())
    }

    /// A receiver bumped after every reconnect (once authentication was re-sent).
    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.ready.clone()
    }

    /// Whether the session expired or was closed (everything tied to it is gone).
    pub(crate) fn session_ended(&self) -> bool {
        self.flags.expired.load(Ordering::Acquire) || self.flags.closed.load(Ordering::Acquire)
    }

    /// Clears the expiry flag once the new session was taken into account.
    pub(crate) fn clear_expiry(&self) {
        self.flags.expired.store(false, Ordering::Release);
    }

    /// Runs one request of `op` on `path` with the operation timeout and the fault injector.
    /// Client errors listed in `expected` come back as the inner `Err`; the others are mapped
    /// into [`Error`]. A `NoAuth` answer right after a reconnect (before authentication was
    /// re-sent) is retried once after authenticating again.
    pub(crate) async fn call_or<T, F, Fut>(
        &self,
        op: &'static str,
        path: &str,
        expected: &[ZkError],
        f: F,
    ) -> Result<std::result::Result<T, ZkError>>
    where
        F: Fn(Arc<ZooKeeper>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        let mut res = self.faulty(op, path, &f).await?;
        if let (Err(ZkError::NoAuth), Some(auth)) = (&res, &self.auth) {
            let auth = auth.clone();
            self.timed(path, &|zk: Arc<ZooKeeper>| {
                let auth = auth.clone();
                async move { zk.add_auth("digest", auth).await }
            })
            .await?
            .map_err(|e| map_err(e, "authenticate", path))?;
            res = self.faulty(op, path, &f).await?;
        }
        match res {
            Ok(v) => Ok(Ok(v)),
            Err(e) if expected.contains(&e) => Ok(Err(e)),
            Err(e) => Err(map_err(e, op, path)),
        }
    }

    /// [`Conn::call_or`] with no expected client error.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, path: &str, f: F) -> Result<T>
    where
        F: Fn(Arc<ZooKeeper>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        self.call_or(op, path, &[], f)
            .await?
            .map_err(|e| map_err(e, op, path))
    }

    /// Creates the empty persistent znode `path` (a directory) unless it exists.
    pub(crate) async fn ensure_dir(&self, path: &str) -> Result<()> {
        self.create(
            path,
            Vec::new(),
            CreateMode::Persistent,
            None,
            &[ZkError::NodeExists],
        )
        .await?
        .ok();
        Ok(())
    }

    /// Creates a znode with the connection's ACL (a TTL znode when `ttl` is given); answers its
    /// `Stat`.
    pub(crate) async fn create(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: CreateMode,
        ttl: Option<Duration>,
        expected: &[ZkError],
    ) -> Result<std::result::Result<(String, Stat), ZkError>> {
        let acl = self.acl.clone();
        self.call_or("create", path, expected, |zk| {
            let (path, data, acl) = (path.to_string(), data.clone(), acl.clone());
            async move {
                match ttl {
                    Some(ttl) => zk.create2_ttl(&path, data, acl, mode, ttl).await,
                    None => zk.create2(&path, data, acl, mode).await,
                }
            }
        })
        .await
    }

    /// Deletes a znode (`version` `None` matches any).
    pub(crate) async fn delete(
        &self,
        path: &str,
        version: Option<i32>,
        expected: &[ZkError],
    ) -> Result<std::result::Result<(), ZkError>> {
        self.call_or("delete", path, expected, |zk| {
            let path = path.to_string();
            async move { zk.delete(&path, version).await }
        })
        .await
    }

    /// The `Stat` of a znode, `None` when absent.
    pub(crate) async fn exists(&self, path: &str) -> Result<Option<Stat>> {
        self.call("exists", path, |zk| {
            let path = path.to_string();
            async move { zk.exists(&path, false).await }
        })
        .await
    }

    /// The data and `Stat` of a znode, `None` when absent.
    pub(crate) async fn get_data(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>> {
        Ok(self
            .call_or("get_data", path, &[ZkError::NoNode], |zk| {
                let path = path.to_string();
                async move { zk.get_data(&path, false).await }
            })
            .await?
            .ok())
    }

    /// Replaces a znode's data (`version` `None` matches any).
    pub(crate) async fn set_data(
        &self,
        path: &str,
        data: Vec<u8>,
        version: Option<i32>,
        expected: &[ZkError],
    ) -> Result<std::result::Result<Stat, ZkError>> {
        self.call_or("set_data", path, expected, |zk| {
            let (path, data) = (path.to_string(), data.clone());
            async move { zk.set_data(&path, data, version).await }
        })
        .await
    }

    /// The children of a znode; empty when it does not exist.
    pub(crate) async fn children(&self, path: &str) -> Result<Vec<String>> {
        Ok(self
            .call_or("get_children", path, &[ZkError::NoNode], |zk| {
                let path = path.to_string();
                async move { zk.get_children(&path, false).await }
            })
            .await?
            .unwrap_or_default())
    }

    /// Runs one request through the fault injector, then with the timeout.
    async fn faulty<T, F, Fut>(
        &self,
        op: &'static str,
        path: &str,
        f: &F,
    ) -> Result<std::result::Result<T, ZkError>>
    where
        F: Fn(Arc<ZooKeeper>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        let fault = self.faults.as_ref().and_then(FaultInjector::next);
        if fault == Some(Fault::Fail) {
            return Err(Error::unavailable(format!(
                "zookeeper: {op} `{path}` not sent (injected fault)"
            )));
        }
        let res = self.timed(path, f).await;
        if fault == Some(Fault::DropReply) {
            return Err(Error::unavailable(format!(
                "zookeeper: the reply to {op} `{path}` was lost (injected fault)"
            )));
        }
        res
    }

    /// Runs one request with the timeout; the outer error is the timeout, the inner the client's.
    async fn timed<T, F, Fut>(&self, path: &str, f: &F) -> Result<std::result::Result<T, ZkError>>
    where
        F: Fn(Arc<ZooKeeper>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        tokio::time::timeout(self.op_timeout, f(self.zk.clone()))
            .await
            .map_err(|_| {
                Error::unavailable(format!(
                    "zookeeper: no answer within {:?} at `{path}`",
                    self.op_timeout
                ))
            })
    }

    /// Closes the session (its ephemeral znodes are deleted by the server). Best effort.
    pub(crate) async fn close(&self) {
        self.flags.closed.store(true, Ordering::Release);
        let _ = tokio::time::timeout(self.op_timeout, self.zk.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_semantic_variants() {
        for e in [
            ZkError::ConnectionLoss,
            ZkError::OperationTimeout,
            ZkError::SessionExpired,
            ZkError::SessionMoved,
            ZkError::NotReadOnly,
        ] {
            let mapped = map_err(e, "get_data", "/p");
            assert!(mapped.is_retryable(), "{e:?} → {mapped:?}");
        }
        for e in [ZkError::NoAuth, ZkError::AuthFailed] {
            assert!(
                matches!(map_err(e, "create", "/p"), Error::AccessDenied(m) if m.contains("/p"))
            );
        }
        assert!(matches!(
            map_err(ZkError::BadArguments, "set_data", "/p"),
            Error::InvalidArgument(_)
        ));
        match map_err(ZkError::NotEmpty, "delete", "/ns/tasks/x") {
            Error::Backend {
                backend, message, ..
            } => {
                assert_eq!(backend, "zookeeper");
                assert!(
                    message.contains("/ns/tasks/x") && message.contains("delete"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Codes the client does not know arrive as `Unimplemented`: a backend error saying so,
        // never `Unsupported`.
        match map_err(ZkError::Unimplemented, "create", "/x") {
            Error::Backend { message, .. } => {
                assert!(message.contains("does not know"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn acls_follow_the_credentials() {
        assert_eq!(acl_for(false, true), *Acl::open_unsafe());
        assert_eq!(acl_for(true, false), *Acl::creator_all());
        let readable = acl_for(true, true);
        assert_eq!(readable.len(), 2);
    }
}
