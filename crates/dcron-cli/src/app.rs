//! Running one parsed command line: resolve the registry, run the command, print the result,
//! answer the exit code.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::cli::{AddArgs, Cli, Command};
use crate::duration::{format_instant, relative};
use crate::error::{CliError, CliResult, EXIT_OK};
use crate::ops::{self, AddRequest};
use crate::render;
use crate::target::{ConnectArgs, RegistryTarget};
use crate::watch::{self, WatchOptions};

/// Prints the one-line error for `err` on `stderr` and answers its exit code.
pub fn report_error(stderr: &mut dyn Write, err: &CliError) -> i32 {
    let _ = writeln!(stderr, "dcronctl: {}", err.message());
    err.exit_code()
}

fn to_json<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// What a command prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Printed {
    /// Standard output.
    pub stdout: String,
    /// Warning lines for standard error (without the `dcronctl: ` prefix).
    pub warnings: Vec<String>,
}

impl Printed {
    fn out(stdout: String) -> Self {
        Printed {
            stdout,
            warnings: Vec::new(),
        }
    }
}

fn read_add_request(args: &AddArgs) -> CliResult<AddRequest> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read payload file `{}`: {e}",
                    path.display()
                ))
            })?;
            String::from_utf8(bytes).map_err(|_| {
                CliError::usage(format!(
                    "payload file `{}` is not UTF-8 text",
                    path.display()
                ))
            })?
        }
        (None, None) => String::new(),
    };
    Ok(AddRequest {
        name: args.name.clone(),
        cron: args.cron.clone(),
        zone: args.zone.clone(),
        payload,
        one_shot: args.one_shot,
    })
}

/// Checks what can be checked before contacting the registry, so that bad input is a usage
/// error even when the registry is unreachable.
fn precheck(command: &Command) -> CliResult<()> {
    let now = Utc::now();
    match command {
        Command::Add(a) | Command::ForceAdd(a) => {
            ops::build_meta(&read_add_request(a)?, now)?;
        }
        Command::Delete(d) => dcron_core::validate_task_name(&d.name)?,
        Command::Reuse(n) | Command::Cleanup(n) => dcron_core::validate_task_name(&n.name)?,
        Command::Pause(n) | Command::Resume(n) | Command::Trigger(n) => {
            dcron_core::validate_task_name(&n.name)?
        }
        Command::Claims(c) => dcron_core::validate_task_name(&c.name)?,
        Command::Watch(w) => {
            for t in &w.tasks {
                dcron_core::validate_task_name(t)?;
            }
            if w.interval.is_zero() {
                return Err(CliError::usage("--interval must be greater than zero"));
            }
        }
        Command::Nodes(_) | Command::Tasks(_) | Command::Assignment(_) => {}
    }
    Ok(())
}

fn added_message(
    verb: &str,
    meta: &dcron_core::TaskMeta,
) -> (String, Option<chrono::DateTime<Utc>>) {
    let now = Utc::now();
    let next = dcron_core::Schedule::parse(
        &meta.cron_format,
        meta.time_zone.as_deref(),
        dcron_core::SecondsField::Optional,
    )
    .ok()
    .and_then(|s| s.next_after(now));
    let zone = meta.time_zone.as_deref().unwrap_or("UTC");
    let next_text = match next {
        Some(n) => format!("next fire {} ({})", format_instant(n), relative(n, now)),
        None => "no future fire".into(),
    };
    (
        format!(
            "{verb} task `{}`: `{}` in {zone}, {next_text}\n",
            meta.name, meta.cron_format
        ),
        next,
    )
}

/// Runs a command that answers once (every command but `watch`).
///
/// # Errors
/// The command's [`CliError`].
pub async fn execute(
    registry: &dyn dcron_core::Registry,
    command: &Command,
    json: bool,
) -> CliResult<Printed> {
    let now = Utc::now();
    let printed = match command {
        Command::Nodes(s) => {
            let r = ops::nodes(registry, s.strategy, now).await?;
            let mut warnings = render::corrupt_warnings(&r.corrupt);
            warnings.extend(r.warning.clone().map(|w| format!("warning: {w}")));
            Printed {
                stdout: if json {
                    to_json(&r)
                } else {
                    render::nodes(&r, now)
                },
                warnings,
            }
        }
        Command::Tasks(s) => {
            let r = ops::tasks(registry, s.strategy, now).await?;
            let mut warnings = render::corrupt_warnings(&r.corrupt);
            warnings.extend(r.warning.clone().map(|w| format!("warning: {w}")));
            Printed {
                stdout: if json {
                    to_json(&r)
                } else {
                    render::tasks(&r, now)
                },
                warnings,
            }
        }
        Command::Add(a) | Command::ForceAdd(a) => {
            let force = matches!(command, Command::ForceAdd(_));
            let meta = ops::add(registry, &read_add_request(a)?, force, now).await?;
            let (verb, action) = if force {
                ("force-added", "force_added")
            } else {
                ("added", "added")
            };
            let (text, next) = added_message(verb, &meta);
            Printed::out(if json {
                to_json(&json!({
                    "action": action,
                    "task": meta.name,
                    "next_fire": next,
                    "record": meta,
                }))
            } else {
                text
            })
        }
        Command::Delete(d) => {
            let o = ops::delete(registry, &d.name, d.allow_static, now).await?;
            Printed::out(if json {
                to_json(&json!({
                    "action": "deleted",
                    "task": o.task,
                    "deleted_at": o.deleted_at,
                    "already": o.already,
                }))
            } else if o.already {
                format!(
                    "task `{}` was already marked deleted at {}\n",
                    o.task,
                    format_instant(o.deleted_at)
                )
            } else {
                format!(
                    "marked task `{}` deleted at {}: it fires nowhere until reused, force-added or cleaned up\n",
                    o.task,
                    format_instant(o.deleted_at)
                )
            })
        }
        Command::Reuse(n) => {
            ops::reuse(registry, &n.name).await?;
            Printed::out(if json {
                to_json(&json!({"action": "reused", "task": n.name}))
            } else {
                format!("task `{}` is no longer marked deleted\n", n.name)
            })
        }
        Command::Cleanup(n) => {
            ops::cleanup(registry, &n.name).await?;
            Printed::out(if json {
                to_json(&json!({"action": "cleaned_up", "task": n.name}))
            } else {
                format!(
                    "removed every trace of task `{}` (record, deletion mark, claims)\n",
                    n.name
                )
            })
        }
        Command::Pause(n) => {
            let already = crate::admin::pause(registry, &n.name, n.allow_static, now).await?;
            Printed::out(if json {
                to_json(&json!({"action": "paused", "task": n.name, "already": already}))
            } else if already {
                format!("task `{}` was already paused\n", n.name)
            } else {
                format!(
                    "paused task `{}`: its fires are skipped on every node until it is resumed\n",
                    n.name
                )
            })
        }
        Command::Resume(n) => {
            let was = crate::admin::resume(registry, &n.name, n.allow_static, now).await?;
            Printed::out(if json {
                to_json(&json!({"action": "resumed", "task": n.name, "was_paused": was}))
            } else if was {
                format!("resumed task `{}`\n", n.name)
            } else {
                format!("task `{}` was not paused\n", n.name)
            })
        }
        Command::Trigger(n) => {
            let triggered = crate::admin::trigger(registry, &n.name, n.allow_static, now).await?;
            let t = &triggered.record;
            Printed {
                stdout: if json {
                    to_json(&json!({
                        "action": "triggered",
                        "task": t.task,
                        "id": t.id,
                        "requested_at": t.requested_at,
                    }))
                } else {
                    format!(
                        "triggered task `{}` (request {}): its owner runs it once within a poll interval and removes the request\n",
                        t.task, t.id
                    )
                },
                warnings: triggered
                    .warning
                    .map(|w| format!("warning: {w}"))
                    .into_iter()
                    .collect(),
            }
        }
        Command::Claims(c) => {
            let r = ops::claims(registry, &c.name, c.limit).await?;
            Printed::out(if json {
                to_json(&r)
            } else {
                render::claims(&r, now)
            })
        }
        Command::Assignment(s) => {
            let r = ops::assignment(registry, s.strategy).await?;
            let warnings = r
                .warning
                .clone()
                .map(|w| format!("warning: {w}"))
                .into_iter()
                .collect();
            Printed {
                stdout: if json {
                    to_json(&r)
                } else {
                    render::assignment(&r)
                },
                warnings,
            }
        }
        Command::Watch(_) => {
            return Err(CliError::failed("watch streams: use app::run"));
        }
    };
    Ok(printed)
}

/// Resolves when the process is asked to stop (Ctrl-C, SIGTERM) or after `limit`.
pub async fn stop_signal(limit: Option<Duration>) {
    let limit = async {
        match limit {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = limit => {}
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Runs a parsed command line against the environment `env`, writing to `stdout`/`stderr`,
/// and answers the exit code. `stop` ends `watch` (pass [`stop_signal`]).
pub async fn run<F>(
    cli: Cli,
    env: &dyn Fn(&str) -> Option<String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stop: impl FnOnce(Option<Duration>) -> F,
) -> i32
where
    F: Future<Output = ()>,
{
    let g = &cli.global;
    let args = ConnectArgs {
        registry: g.registry.clone(),
        namespace: g.namespace.clone(),
        user: g.user.clone(),
        password: g.password.clone(),
        token: g.token.clone(),
    };
    let target = match RegistryTarget::resolve(&args, env) {
        Ok(t) => t,
        Err(e) => return report_error(stderr, &e),
    };
    let secrets = target.secrets().clone();
    if let Err(e) = precheck(&cli.command) {
        return report_error(stderr, &e.scrubbed(&secrets));
    }
    let registry = match target.connect(g.timeout).await {
        Ok(r) => r,
        Err(e) => return report_error(stderr, &e),
    };
    if let Command::Watch(w) = &cli.command {
        let opts = WatchOptions {
            interval: w.interval,
            extra_tasks: w.tasks.clone(),
            ..WatchOptions::default()
        };
        let json = g.json;
        let mut emit = |ev: &watch::Stamped| {
            let line = if json {
                serde_json::to_string(ev).unwrap_or_default()
            } else {
                ev.line()
            };
            writeln!(stdout, "{}", secrets.scrub(&line))
                .and_then(|()| stdout.flush())
                .is_ok()
        };
        let mut warn = |w: &str| {
            let _ = writeln!(stderr, "dcronctl: {}", secrets.scrub(w));
        };
        let result = watch::run(registry, &opts, stop(w.duration), &mut emit, &mut warn).await;
        return match result {
            Ok(()) => EXIT_OK,
            Err(e) => report_error(stderr, &e.scrubbed(&secrets)),
        };
    }
    match execute(registry.as_ref(), &cli.command, g.json).await {
        Ok(p) => {
            for w in &p.warnings {
                let _ = writeln!(stderr, "dcronctl: {}", secrets.scrub(w));
            }
            // A closed stdout (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(p.stdout.as_bytes());
            let _ = stdout.flush();
            EXIT_OK
        }
        Err(e) => report_error(stderr, &e.scrubbed(&secrets)),
    }
}
