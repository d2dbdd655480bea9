//! The factory a backend implements, the context every case receives, and the helpers cases use.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use dcron_core::{Error, Lease, Node, RecordKind, Registry};

/// The environment variable that turns a skip for an unreachable server into a failure (CI sets
/// it to `1`).
pub const REQUIRE_ENV: &str = "DCRON_TEST_REQUIRE";

/// Whether [`REQUIRE_ENV`] is set to `1`.
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// The fault-injection hooks a [`RegistryFactory`] offers, declared up front so that
/// `conformance_main!` reports the cases needing a missing hook as ignored before running
/// anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Hooks {
    /// [`RegistryFactory::restart_server`] is implemented.
    pub restart_server: bool,
    /// [`RegistryFactory::expire_lease`] is implemented.
    pub expire_lease: bool,
    /// [`RegistryFactory::write_raw_task`] is implemented.
    pub write_raw_task: bool,
    /// The kinds [`RegistryFactory::write_raw`] writes (empty: none).
    pub write_raw: &'static [RawKind],
}

/// A kind of value a backend stores, for [`RegistryFactory::write_raw`]: the hostile cases
/// plant arbitrary bytes as each kind the backend's key layout has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RawKind {
    /// A node's registration record, named by the node id (written with a live lease or TTL,
    /// as a registration would be, where the layout ties node records to one).
    Node,
    /// A task record, named by the task name (what [`RegistryFactory::write_raw_task`] writes).
    Task,
    /// A tombstone, named by the task name.
    Tombstone,
    /// The stored claim of the fire `(name, instant(0))`: the fire record the backend keeps
    /// for it, with its index entry where the layout has one.
    Claim,
    /// The native life of the name (generation and live-since), for a backend keeping lives
    /// in a place of their own.
    Life,
    /// The running slot of the name.
    Slot,
    /// A record of one of the core's kinds (pause, trigger-now, status, life), named by its
    /// record key.
    Record(RecordKind),
}

impl RawKind {
    /// Every kind, in the order the hostile cases list them.
    pub const ALL: [RawKind; 10] = [
        RawKind::Node,
        RawKind::Task,
        RawKind::Tombstone,
        RawKind::Claim,
        RawKind::Life,
        RawKind::Slot,
        RawKind::Record(RecordKind::Pause),
        RawKind::Record(RecordKind::Trigger),
        RawKind::Record(RecordKind::Status),
        RawKind::Record(RecordKind::Life),
    ];
}

impl std::fmt::Display for RawKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawKind::Node => f.write_str("node record"),
            RawKind::Task => f.write_str("task record"),
            RawKind::Tombstone => f.write_str("tombstone"),
            RawKind::Claim => f.write_str("claim"),
            RawKind::Life => f.write_str("life"),
            RawKind::Slot => f.write_str("running slot"),
            RawKind::Record(kind) => write!(f, "{kind} record"),
        }
    }
}

impl Hooks {
    /// No hook.
    pub fn none() -> Self {
        Hooks::default()
    }

    /// These hooks and [`RegistryFactory::restart_server`].
    pub fn with_restart_server(mut self) -> Self {
        self.restart_server = true;
        self
    }

    /// These hooks and [`RegistryFactory::expire_lease`].
    pub fn with_expire_lease(mut self) -> Self {
        self.expire_lease = true;
        self
    }

    /// These hooks and [`RegistryFactory::write_raw_task`].
    pub fn with_write_raw_task(mut self) -> Self {
        self.write_raw_task = true;
        self
    }

    /// These hooks and [`RegistryFactory::write_raw`] for `kinds` (a factory writing raw task
    /// records this way declares [`RawKind::Task`] and may leave `write_raw_task` to its
    /// default, which it then also offers).
    pub fn with_write_raw(mut self, kinds: &'static [RawKind]) -> Self {
        self.write_raw = kinds;
        if kinds.contains(&RawKind::Task) {
            self.write_raw_task = true;
        }
        self
    }
}

/// Builds registry clients for the conformance suite, plus optional fault-injection hooks.
///
/// Implement [`RegistryFactory::name`] and [`RegistryFactory::open`]; override the rest where the
/// backend can offer it, and declare the hooks you implement in [`RegistryFactory::hooks`]. A
/// hook left at its default answers [`Error::Unsupported`] and the cases that need it are
/// skipped with the reason printed.
#[async_trait]
pub trait RegistryFactory: Send + Sync + 'static {
    /// The backend's name, printed in reports.
    fn name(&self) -> &'static str;

    /// Opens a client on `namespace`. Called several times with the same namespace to get
    /// independent clients that share the stored state.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached: the case is skipped with the
    /// reason printed, or fails when `DCRON_TEST_REQUIRE=1`.
    async fn open(&self, namespace: &str) -> dcron_core::Result<Arc<dyn Registry>>;

    /// The smallest node TTL (and claim retention) the backend honours (Consul: 10 s).
    fn min_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Extra time after a TTL or retention before the expiry must have happened.
    fn expiry_slack(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// The hooks this factory implements, or `None` (the default) when it does not say.
    ///
    /// `conformance_main!` reports a case needing an undeclared-missing hook as ignored without
    /// running it. With `None` such cases run, and a hook answering [`Error::Unsupported`] is a
    /// skip discovered at run time: reported as ignored, or a failure with
    /// `DCRON_TEST_REQUIRE=1` (declare the hooks so that CI knows what must run).
    fn hooks(&self) -> Option<Hooks> {
        None
    }

    /// Restarts the server, keeping its persisted data; returns once the restart was initiated
    /// (the suite polls until the registry answers again).
    ///
    /// # Errors
    /// [`Error::Unsupported`] (the default) when the factory cannot do it.
    async fn restart_server(&self) -> dcron_core::Result<()> {
        Err(Error::Unsupported {
            operation: "restart_server",
        })
    }

    /// Makes the lease (session) expire now, as if the server had timed it out.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (the default) when the factory cannot do it.
    async fn expire_lease(&self, namespace: &str, lease: &Lease) -> dcron_core::Result<()> {
        let _ = (namespace, lease);
        Err(Error::Unsupported {
            operation: "expire_lease",
        })
    }

    /// Stores `bytes` as the task record of `name`, bypassing encoding (to plant corrupt values).
    /// The default writes through [`RegistryFactory::write_raw`] with [`RawKind::Task`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the factory cannot do it.
    async fn write_raw_task(
        &self,
        namespace: &str,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        match self.write_raw(namespace, RawKind::Task, name, bytes).await {
            Err(Error::Unsupported { .. }) => Err(Error::Unsupported {
                operation: "write_raw_task",
            }),
            other => other,
        }
    }

    /// Stores `bytes` straight into the server as the value of `kind` named `name` (a node id,
    /// a task name or a record key), under the key the backend's layout uses, bypassing the
    /// registry's encoding and its size checks: what a hostile or broken client could write.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (the default) for a kind the factory cannot write;
    /// [`Error::InvalidArgument`] when the server itself refuses the value (e.g. larger than
    /// its own request limit): the case then goes on without it.
    async fn write_raw(
        &self,
        namespace: &str,
        kind: RawKind,
        name: &str,
        bytes: &[u8],
    ) -> dcron_core::Result<()> {
        let _ = (namespace, kind, name, bytes);
        Err(Error::Unsupported {
            operation: "write_raw",
        })
    }
}

/// Why a case did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseError {
    /// The registry broke the contract; the message says how.
    Failed(String),
    /// The case could not run here (a missing server or capability); the reason says why.
    Skipped(String),
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaseError::Failed(msg) => write!(f, "FAILED: {msg}"),
            CaseError::Skipped(reason) => write!(f, "skipped: {reason}"),
        }
    }
}

impl std::error::Error for CaseError {}

impl From<Error> for CaseError {
    /// An unexpected registry error fails the case.
    fn from(e: Error) -> Self {
        CaseError::Failed(format!("unexpected registry error: {e} ({e:?})"))
    }
}

/// What every case returns.
pub type CaseResult = Result<(), CaseError>;

/// Fails the case with a formatted message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::CaseError::Failed(format!($($fmt)+)));
        }
    };
}

/// Fails the case unless both sides are equal, printing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::CaseError::Failed(format!(
                        "{}: left {:?} != right {:?}",
                        format!($($fmt)+),
                        l,
                        r
                    )));
                }
            }
        }
    };
}

/// Fails the case unless the result is an error matching the pattern.
#[macro_export]
macro_rules! ensure_err {
    ($result:expr, $pattern:pat, $($fmt:tt)+) => {
        match $result {
            Err($pattern) => {}
            other => {
                return Err($crate::CaseError::Failed(format!(
                    "{}: expected Err({}), got {:?}",
                    format!($($fmt)+),
                    stringify!($pattern),
                    other
                )));
            }
        }
    };
}

/// What one case gets: clients on its own fresh namespace, a second namespace for isolation
/// checks, the factory's timing hints and its hooks.
pub struct CaseContext {
    factory: Arc<dyn RegistryFactory>,
    case: String,
    namespace: String,
    other_namespace: String,
    other_used: AtomicBool,
    /// Namespaces opened with [`CaseContext::open_derived`], cleaned up after the case.
    derived: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for CaseContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseContext")
            .field("backend", &self.factory.name())
            .field("case", &self.case)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl CaseContext {
    /// A context for `case` with a fresh namespace `dcron-test-<case>-<8 hex>`.
    pub fn new(factory: Arc<dyn RegistryFactory>, case: &str) -> Self {
        let short: String = case
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        let random = uuid::Uuid::new_v4().simple().to_string();
        let namespace = format!("dcron-test-{short}-{}", &random[..8]);
        // The other namespace extends this one, so a backend that matches keys by a bare prefix
        // is caught by the isolation cases.
        let other_namespace = format!("{namespace}-b");
        CaseContext {
            factory,
            case: case.to_string(),
            namespace,
            other_namespace,
            other_used: AtomicBool::new(false),
            derived: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The case's name.
    pub fn case(&self) -> &str {
        &self.case
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.factory.name()
    }

    /// The case's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A second namespace, distinct from [`CaseContext::namespace`] (and extending it).
    pub fn other_namespace(&self) -> &str {
        &self.other_namespace
    }

    /// Opens a new, independent client on the case's namespace.
    ///
    /// # Errors
    /// [`CaseError::Skipped`] when the server is unavailable (a failure when
    /// `DCRON_TEST_REQUIRE=1`), [`CaseError::Failed`] for any other error.
    pub async fn open(&self) -> Result<Arc<dyn Registry>, CaseError> {
        open_client(self.factory.as_ref(), &self.namespace).await
    }

    /// Opens a new client on [`CaseContext::other_namespace`] (cleaned up after the case too).
    ///
    /// # Errors
    /// As [`CaseContext::open`].
    pub async fn open_other(&self) -> Result<Arc<dyn Registry>, CaseError> {
        self.other_used.store(true, Ordering::Release);
        open_client(self.factory.as_ref(), &self.other_namespace).await
    }

    /// Opens a client on the namespace `<namespace><suffix>` (e.g. `-x`, `/tasks`, `:tasks`),
    /// cleaned up after the case: a namespace whose name extends this case's, to catch a
    /// backend that matches keys by a bare prefix. `Ok(None)` when the factory refuses such a
    /// namespace name with [`Error::InvalidArgument`] (it then cannot collide).
    ///
    /// # Errors
    /// As [`CaseContext::open`].
    pub async fn open_derived(&self, suffix: &str) -> Result<Option<Arc<dyn Registry>>, CaseError> {
        let namespace = format!("{}{suffix}", self.namespace);
        match self.factory.open(&namespace).await {
            Err(Error::InvalidArgument(_)) => Ok(None),
            opened => {
                if let Ok(mut derived) = self.derived.lock() {
                    derived.push(namespace);
                }
                opened_client(self.factory.as_ref(), opened).map(Some)
            }
        }
    }

    /// The smallest TTL the backend honours.
    pub fn min_ttl(&self) -> Duration {
        self.factory.min_ttl()
    }

    /// The extra time after a TTL before expiry must have happened.
    pub fn expiry_slack(&self) -> Duration {
        self.factory.expiry_slack()
    }

    /// The longest a TTL-based expiry may take: [`CaseContext::min_ttl`] plus
    /// [`CaseContext::expiry_slack`].
    pub fn expiry_bound(&self) -> Duration {
        self.min_ttl() + self.expiry_slack()
    }

    /// Restarts the server through the factory.
    ///
    /// # Errors
    /// [`CaseError::Skipped`] when the factory does not offer it.
    pub async fn restart_server(&self) -> Result<(), CaseError> {
        hook(self.factory.restart_server().await, "restart_server")
    }

    /// Expires a lease now through the factory.
    ///
    /// # Errors
    /// [`CaseError::Skipped`] when the factory does not offer it.
    pub async fn expire_lease(&self, lease: &Lease) -> Result<(), CaseError> {
        hook(
            self.factory.expire_lease(&self.namespace, lease).await,
            "expire_lease",
        )
    }

    /// Writes raw bytes as a task record through the factory.
    ///
    /// # Errors
    /// [`CaseError::Skipped`] when the factory does not offer it.
    pub async fn write_raw_task(&self, name: &str, bytes: &[u8]) -> Result<(), CaseError> {
        hook(
            self.factory
                .write_raw_task(&self.namespace, name, bytes)
                .await,
            "write_raw_task",
        )
    }

    /// Writes raw bytes as a value of `kind` through the factory: `Ok(true)` when written,
    /// `Ok(false)` when the server itself refused the value ([`Error::InvalidArgument`]).
    ///
    /// # Errors
    /// [`CaseError::Skipped`] when the factory does not write this kind.
    pub async fn write_raw(
        &self,
        kind: RawKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<bool, CaseError> {
        match self
            .factory
            .write_raw(&self.namespace, kind, name, bytes)
            .await
        {
            Err(Error::InvalidArgument(_)) => Ok(false),
            other => hook(other, "write_raw").map(|()| true),
        }
    }

    /// The kinds the factory declares it writes raw ([`Hooks::write_raw`]); `None` when it
    /// declares no hooks.
    pub fn raw_kinds(&self) -> Option<&'static [RawKind]> {
        self.factory.hooks().map(|h| h.write_raw)
    }

    /// A node record with an id unique to this case (`<prefix>-<8 hex>`), status `Starting`.
    pub fn node(&self, prefix: &str) -> Node {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Node::new(format!("{prefix}-{}", &random[..8]), now_millis())
    }

    /// Removes what the case left in its namespaces (best effort; errors are ignored).
    pub async fn cleanup(&self) {
        if let Ok(reg) = self.factory.open(&self.namespace).await {
            let _ = reg.cleanup_all().await;
        }
        if self.other_used.load(Ordering::Acquire) {
            if let Ok(reg) = self.factory.open(&self.other_namespace).await {
                let _ = reg.cleanup_all().await;
            }
        }
        let derived = self.derived.lock().map(|d| d.clone()).unwrap_or_default();
        for namespace in derived {
            if let Ok(reg) = self.factory.open(&namespace).await {
                let _ = reg.cleanup_all().await;
            }
        }
    }
}

async fn open_client(
    factory: &dyn RegistryFactory,
    namespace: &str,
) -> Result<Arc<dyn Registry>, CaseError> {
    opened_client(factory, factory.open(namespace).await)
}

/// Maps the answer of [`RegistryFactory::open`] to a case result: unavailable is a skip (a
/// failure when servers are required), any other error a failure.
fn opened_client(
    factory: &dyn RegistryFactory,
    opened: dcron_core::Result<Arc<dyn Registry>>,
) -> Result<Arc<dyn Registry>, CaseError> {
    match opened {
        Ok(reg) => Ok(reg),
        Err(e @ Error::Unavailable { .. }) => {
            if servers_required() {
                Err(CaseError::Failed(format!(
                    "{} server unreachable and {REQUIRE_ENV}=1: {e}",
                    factory.name()
                )))
            } else {
                Err(CaseError::Skipped(format!(
                    "{} server unreachable: {e}",
                    factory.name()
                )))
            }
        }
        Err(e) => Err(CaseError::Failed(format!(
            "opening a {} client failed: {e}",
            factory.name()
        ))),
    }
}

fn hook(result: dcron_core::Result<()>, name: &str) -> Result<(), CaseError> {
    match result {
        Ok(()) => Ok(()),
        Err(Error::Unsupported { .. }) => Err(CaseError::Skipped(format!(
            "the factory does not offer the `{name}` hook"
        ))),
        Err(e) => Err(CaseError::Failed(format!("the `{name}` hook failed: {e}"))),
    }
}

/// Now, truncated to the millisecond (what claim keys and most stores keep).
pub fn now_millis() -> DateTime<Utc> {
    let ms = Utc::now().timestamp_millis();
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A task record with a name and a schedule, created now (`created_at` set to
/// [`now_millis`]): what a node writes, and what an exactly-once registry requires to start
/// the task's life.
pub fn task_meta(name: impl Into<String>, cron_format: impl Into<String>) -> dcron_core::TaskMeta {
    let mut meta = dcron_core::TaskMeta::new(name, cron_format);
    meta.created_at = Some(now_millis());
    meta
}

/// A fixed instant `offset_ms` milliseconds after 2030-01-01T00:00:00Z, for fire keys.
pub fn instant(offset_ms: i64) -> DateTime<Utc> {
    const BASE_MS: i64 = 1_893_456_000_000;
    Utc.timestamp_millis_opt(BASE_MS + offset_ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// [`wait_until`](crate::wait_until) for a case: whether `condition` held within `within`,
/// so that the case fails with its own message; an error from the condition ends the wait.
///
/// # Errors
/// The first error the condition returns.
pub(crate) async fn reached<F, Fut>(within: Duration, condition: F) -> Result<bool, CaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, CaseError>>,
{
    match crate::wait::wait_until("a case condition", within, condition).await {
        Ok(()) => Ok(true),
        Err(crate::wait::WaitError::TimedOut { .. }) => Ok(false),
        Err(crate::wait::WaitError::Failed(e)) => Err(e),
    }
}

/// [`holds_until`](crate::holds_until) for a case condition (errors are [`CaseError`]s).
///
/// # Errors
/// The first error the condition returns.
pub(crate) async fn holds_until<F, Fut>(
    until: tokio::time::Instant,
    condition: F,
) -> Result<bool, CaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, CaseError>>,
{
    crate::wait::holds_until(until, condition).await
}

/// Whether a node id is in the registry's live node list.
///
/// # Errors
/// A failed listing.
pub async fn node_listed(reg: &dyn Registry, id: &str) -> Result<bool, CaseError> {
    Ok(reg.list_nodes().await?.items.iter().any(|n| n.id == id))
}

/// Claims `fires` for `node` (epoch 1) in the current lives of their tasks, starting a life at
/// [`instant`]`(0)` for a task without one; each fire's deadline is a day after its instant.
/// What most claim cases need when the lives themselves are not under test.
///
/// # Errors
/// The registry's errors.
pub async fn claim_fires(
    reg: &dyn Registry,
    node: &str,
    fires: &[dcron_core::FireKey],
    retention: Duration,
) -> dcron_core::Result<Vec<dcron_core::ClaimOutcome>> {
    claim_as(reg, &dcron_core::Claimant::new(node, 1), fires, retention).await
}

/// [`claim_fires`] for any claimant (a node id and an epoch).
///
/// # Errors
/// The registry's errors.
pub async fn claim_as(
    reg: &dyn Registry,
    claimant: &dcron_core::Claimant,
    fires: &[dcron_core::FireKey],
    retention: Duration,
) -> dcron_core::Result<Vec<dcron_core::ClaimOutcome>> {
    let mut tasks: Vec<(String, DateTime<Utc>)> = Vec::new();
    for f in fires {
        if !tasks.iter().any(|(t, _)| *t == f.task) {
            tasks.push((f.task.clone(), instant(0)));
        }
    }
    let lives = if tasks.is_empty() {
        Vec::new()
    } else {
        reg.ensure_lives(&tasks).await?
    };
    let requests: Vec<dcron_core::ClaimRequest> = fires
        .iter()
        .map(|f| {
            let generation = tasks
                .iter()
                .position(|(t, _)| *t == f.task)
                .and_then(|i| lives.get(i))
                .map_or(0, |l| l.generation);
            dcron_core::ClaimRequest::new(
                f.clone(),
                generation,
                f.instant + chrono::Duration::days(1),
                retention,
            )
        })
        .collect();
    reg.claim(claimant, &requests).await
}
