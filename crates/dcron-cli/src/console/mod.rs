//! `dcronctl console`: a web page that shows the cluster (nodes, tasks, owners, upcoming and
//! recent fires) and steers it (pause, resume, trigger now, mark deleted, reuse), live.
//!
//! ```text
//!   browser ──GET /, /api/state, /api/timeline──▶ routes ──▶ view::state ──▶ ops (as `nodes`, `tasks`)
//!           ──POST /api/tasks/{name}/{action}───▶ routes ──▶ admin / ops (as `pause`, `trigger`, `delete`…)
//!           ◀──────── GET /api/events (SSE) ───── hub ◀── watch::run (as `dcronctl watch`)
//! ```
//!
//! Everything goes through the functions the CLI commands use, over one registry client. The
//! page, its script and style are compiled into the binary (no CDN, works offline).
//!
//! Safety: the console listens on loopback by default and then answers only requests whose
//! `Host` is an IP address or `localhost` (a DNS-rebinding page cannot reach it). A
//! non-loopback listen address needs an access token ([`auth::check_listen`]) that every
//! request must carry (`Authorization: Bearer`, or once `/?token=…`, which a browser trades for
//! an `HttpOnly` session cookie). State-changing requests are `POST`s with the page's
//! per-process CSRF token in a header. Neither the token nor any registry credential is ever
//! written to the page: the registry is named by its URL without user information.

pub mod auth;
pub mod hub;
pub mod routes;
pub mod view;

use std::future::{Future, IntoFuture};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dcron_core::{Registry, Strategy};
use tokio::sync::watch as signal;

use crate::duration::parse_duration;
use crate::error::{CliError, CliResult, EXIT_OK};
use crate::secret::{Secret, Secrets};
use crate::target::RegistryTarget;

/// Where the console listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Environment variable read when `--console-token` is not given.
pub const ENV_CONSOLE_TOKEN: &str = "DCRON_CONSOLE_TOKEN";

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

/// `dcronctl console`'s options.
#[derive(Args, Clone, Debug)]
pub struct ConsoleArgs {
    /// Address to serve on; an address that is not loopback needs --console-token
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Access token every request must carry (at least 8 characters); prefer the environment
    /// [env: DCRON_CONSOLE_TOKEN]
    #[arg(long, value_name = "TOKEN", value_parser = parse_secret)]
    pub console_token: Option<Secret>,
    /// Assignment strategy owners are computed with (use the cluster's)
    #[arg(long, value_name = "STRATEGY", default_value = "consistent", value_parser = parse_strategy)]
    pub strategy: Strategy,
    /// How often claims, pauses and results are polled for the live feed
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// What a console serves and how.
pub struct ConsoleConfig {
    /// Address to listen on (port 0: any free port; see [`Console::local_addr`]).
    pub listen: SocketAddr,
    /// The access token; required when `listen` is not a loopback address.
    pub token: Option<Secret>,
    /// The registry client (from [`RegistryTarget::connect`]).
    pub registry: Arc<dyn Registry>,
    /// How the page names the registry: never with credentials.
    pub registry_name: String,
    /// Credentials to scrub from every message the page receives.
    pub secrets: Secrets,
    /// The strategy owners are computed with.
    pub strategy: Strategy,
    /// How often the live feed polls claims, pauses and status records.
    pub interval: Duration,
}

impl ConsoleConfig {
    /// A loopback console on [`DEFAULT_LISTEN`] for `registry`, reached through `target` (its
    /// URL without credentials and its namespace name the registry on the page; its secrets are
    /// scrubbed), with the default strategy and a 1 s feed interval.
    pub fn new(registry: Arc<dyn Registry>, target: &RegistryTarget) -> Self {
        let registry_name = match target.namespace() {
            Some(ns) => format!("{target} (namespace {ns})"),
            None => target.to_string(),
        };
        ConsoleConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            registry,
            registry_name,
            secrets: target.secrets().clone(),
            strategy: Strategy::Consistent,
            interval: Duration::from_secs(1),
        }
    }
}

/// What every request handler shares.
pub struct AppState {
    guard: auth::Guard,
    hub: Arc<hub::Hub>,
    registry: Arc<dyn Registry>,
    registry_name: String,
    strategy: Strategy,
    secrets: Secrets,
    index_html: String,
    shutdown: signal::Receiver<bool>,
}

/// A console bound to its address, ready to [`run`](Console::run).
pub struct Console {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    state: Arc<AppState>,
    interval: Duration,
    shutdown: signal::Sender<bool>,
}

impl Console {
    /// Checks the configuration and binds the listen address.
    ///
    /// # Errors
    /// A usage error (exit code 2) for a non-loopback address without a token or a token
    /// shorter than [`auth::MIN_TOKEN_LEN`]; failed (1) when the address cannot be bound.
    pub async fn bind(config: ConsoleConfig) -> CliResult<Self> {
        auth::check_listen(config.listen.ip(), config.token.as_ref())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", config.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", config.listen)))?;
        let guard = auth::Guard::new(config.token, local_addr.port())?;
        let index_html = routes::render_index(guard.csrf(), &config.registry_name);
        let (shutdown, shutdown_rx) = signal::channel(false);
        let state = Arc::new(AppState {
            guard,
            hub: Arc::new(hub::Hub::new(config.secrets.clone())),
            registry: config.registry,
            registry_name: config.registry_name,
            strategy: config.strategy,
            secrets: config.secrets,
            index_html,
            shutdown: shutdown_rx,
        });
        Ok(Console {
            listener,
            local_addr,
            state,
            interval: config.interval,
            shutdown,
        })
    }

    /// The address the console listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `stop` completes, then closes the event streams and finishes the requests
    /// in flight. The live feed runs inside this future (it is not `Send`): await it, or join
    /// it with other work, rather than spawning it.
    ///
    /// # Errors
    /// Failed (exit code 1) when the server stops on an I/O error.
    pub async fn run(self, stop: impl Future<Output = ()>) -> CliResult<()> {
        let Console {
            listener,
            state,
            interval,
            shutdown,
            ..
        } = self;
        // The feed runs in this task, beside the server (the watch's callbacks are not `Send`).
        let feed = state
            .hub
            .clone()
            .run(state.registry.clone(), interval, state.shutdown.clone());
        let mut closing = state.shutdown.clone();
        let server = axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(async move {
                let _ = closing.wait_for(|s| *s).await;
            })
            .into_future();
        let serving = async {
            tokio::pin!(server);
            let served = tokio::select! {
                r = &mut server => r,
                () = stop => {
                    let _ = shutdown.send(true);
                    server.await
                }
            };
            // Also when the server failed: the feed must end too.
            let _ = shutdown.send(true);
            served
        };
        let (served, ()) = tokio::join!(serving, feed);
        served.map_err(|e| CliError::failed(format!("the console stopped: {e}")))
    }
}

/// Binds and serves a console until `stop` completes.
///
/// # Errors
/// As [`Console::bind`] and [`Console::run`].
pub async fn serve(config: ConsoleConfig, stop: impl Future<Output = ()>) -> CliResult<()> {
    Console::bind(config).await?.run(stop).await
}

/// `dcronctl console`: checks the options, connects to `target` (waiting at most `timeout`),
/// serves the console, printing its address, until `stop` completes; answers the exit code.
/// `env` looks up [`ENV_CONSOLE_TOKEN`] when `--console-token` is not given.
pub async fn run_command(
    args: &ConsoleArgs,
    target: &RegistryTarget,
    timeout: Duration,
    env: &dyn Fn(&str) -> Option<String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> i32 {
    let token = args
        .console_token
        .clone()
        .or_else(|| env(ENV_CONSOLE_TOKEN).map(Secret::new))
        .filter(|t| !t.is_empty());
    let mut secrets = target.secrets().clone();
    if let Some(t) = &token {
        secrets.add(t.expose());
    }
    let with_token = token.is_some();
    let result = async {
        // Bad options are usage errors even when the registry is unreachable.
        auth::check_listen(args.listen.ip(), token.as_ref())?;
        if args.interval.is_zero() {
            return Err(CliError::usage("--interval must be greater than zero"));
        }
        let registry = target.connect(timeout).await?;
        let mut config = ConsoleConfig::new(registry, target);
        config.listen = args.listen;
        config.token = token;
        config.strategy = args.strategy;
        config.interval = args.interval;
        config.secrets = secrets.clone();
        let name = config.registry_name.clone();
        let console = Console::bind(config).await?;
        let addr = console.local_addr();
        let hint = if with_token {
            " (open it once with ?token=<your token>)"
        } else {
            ""
        };
        let _ = writeln!(
            stdout,
            "dcronctl console for {name} on http://{addr}/{hint}; Ctrl-C to stop"
        );
        let _ = stdout.flush();
        console.run(stop).await
    }
    .await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => crate::app::report_error(stderr, &e.scrubbed(&secrets)),
    }
}
