//! Running one parsed command line: resolve the registry, run the command, print the result,
//! answer the exit code.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::json;

use crate::cli::{AddArgs, Cli, Command, ConfirmArgs};
use crate::duration::{format_instant, relative};
use crate::error::{CliError, CliResult, EXIT_OK};
use crate::ops::{self, AddRequest, Plan};
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
    crate::limits::check_schedule(&args.cron, args.zone.as_deref())?;
    let payload = match (&args.payload, &args.payload_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => crate::limits::read_payload_file(path)?,
        (None, None) => String::new(),
    };
    crate::limits::check_payload(&payload)?;
    Ok(AddRequest {
        name: args.name.clone(),
        cron: args.cron.clone(),
        zone: args.zone.clone(),
        payload,
        one_shot: args.one_shot,
        tags: args.tags.clone(),
        max_concurrent: args.max_concurrent,
    })
}

/// Checks what can be checked before contacting the registry, so that bad input is a usage
/// error even when the registry is unreachable.
fn precheck(command: &Command) -> CliResult<()> {
    let now = Utc::now();
    match command {
        Command::Add(a) | Command::ForceAdd(crate::cli::ForceAddArgs { task: a, .. }) => {
            ops::build_meta(&read_add_request(a)?, now)?;
        }
        Command::Delete(d) => dcron_core::validate_task_name(&d.name)?,
        Command::Reuse(n) => dcron_core::validate_task_name(&n.name)?,
        Command::Cleanup(c) => dcron_core::validate_task_name(&c.name)?,
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
        Command::Nodes(_) | Command::Tasks(_) | Command::Assignment(_) | Command::Console(_) => {}
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

/// Where the confirmation of a destructive command comes from.
pub trait Confirmer: Send {
    /// Whether a person can answer (standard input is a terminal).
    fn interactive(&self) -> bool;
    /// Reads one answer line; `None` at the end of the input.
    ///
    /// # Errors
    /// The input's errors.
    fn read_answer(&mut self) -> std::io::Result<Option<String>>;
}

/// The process's standard input: interactive when it is a terminal.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdinConfirmer;

impl Confirmer for StdinConfirmer {
    fn interactive(&self) -> bool {
        std::io::stdin().is_terminal()
    }

    fn read_answer(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line)?;
        Ok((read > 0).then_some(line))
    }
}

/// The plan of a destructive command and how it is confirmed; `None` for other commands.
///
/// # Errors
/// The plan's errors (unknown task, bad input, registry errors).
pub async fn plan(
    registry: &dyn dcron_core::Registry,
    command: &Command,
) -> CliResult<Option<(Plan, ConfirmArgs)>> {
    Ok(match command {
        Command::Delete(d) => Some((
            ops::plan_delete(registry, &d.name, d.allow_static).await?,
            d.confirm,
        )),
        Command::Cleanup(c) => Some((ops::plan_cleanup(registry, &c.name).await?, c.confirm)),
        Command::ForceAdd(f) => Some((
            ops::plan_force_add(registry, &read_add_request(&f.task)?, Utc::now()).await?,
            f.confirm,
        )),
        _ => None,
    })
}

/// Whether a planned command may go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Apply the change.
    Apply,
    /// Stop without changing anything, successfully (`--dry-run`).
    Stop,
}

/// Shows `plan` and decides whether to apply it: `--dry-run` prints it on `stdout` (as JSON
/// with `json`) and stops; otherwise it goes to `stderr` (so `stdout` stays the result) and the
/// command applies with `--yes`, asks when `confirmer` is interactive, and is refused when not.
/// A plan without changes applies at once (nothing that exists is touched).
///
/// # Errors
/// A usage error when confirmation is needed and nobody can give it (not a terminal, no
/// `--yes`); a failure when the answer is not yes.
pub fn gate(
    plan: &Plan,
    confirm: ConfirmArgs,
    json: bool,
    confirmer: &mut dyn Confirmer,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> CliResult<Gate> {
    if confirm.dry_run {
        let text = if json {
            to_json(&json!({"dry_run": true, "plan": plan}))
        } else {
            let mut t = render::plan(plan);
            t.push_str("dry run: nothing was changed\n");
            t
        };
        let _ = stdout.write_all(text.as_bytes());
        return Ok(Gate::Stop);
    }
    if plan.changes.is_empty() {
        return Ok(Gate::Apply);
    }
    let _ = stderr.write_all(render::plan(plan).as_bytes());
    if confirm.yes {
        return Ok(Gate::Apply);
    }
    if !confirmer.interactive() {
        return Err(CliError::usage(format!(
            "refusing to {} task `{}` without confirmation: standard input is not a terminal; pass --yes to apply the plan above (or --dry-run to only show it)",
            plan.action, plan.task
        )));
    }
    let _ = write!(stderr, "apply these changes? [y/N] ");
    let _ = stderr.flush();
    let answer = confirmer
        .read_answer()
        .map_err(|e| CliError::failed(format!("cannot read the answer: {e}")))?;
    if answer.is_none() {
        let _ = writeln!(stderr);
    }
    match answer.as_deref().map(|a| a.trim().to_ascii_lowercase()) {
        Some(a) if a == "y" || a == "yes" => Ok(Gate::Apply),
        _ => Err(CliError::failed(format!(
            "{} of task `{}` cancelled: nothing was changed",
            plan.action, plan.task
        ))),
    }
}

/// Runs a command that answers once (every command but `watch`). Destructive commands act
/// at once here: [`run`] shows their [`plan`] and asks first.
///
/// # Errors
/// The command's [`CliError`].
pub async fn execute(
    registry: &dyn dcron_core::Registry,
    command: &Command,
    json: bool,
) -> CliResult<Printed> {
    execute_planned(registry, command, json, None).await
}

/// [`execute`] after `plan` was shown: a `force-add` whose plan found nothing to replace only
/// creates, so a record written since the plan is not replaced unseen.
async fn execute_planned(
    registry: &dyn dcron_core::Registry,
    command: &Command,
    json: bool,
    plan: Option<&Plan>,
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
            let mut r = ops::tasks(registry, s.strategy.strategy, now).await?;
            r.tasks
                .retain(|t| s.tags.iter().all(|tag| t.tags.contains(tag)));
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
        Command::Add(a) | Command::ForceAdd(crate::cli::ForceAddArgs { task: a, .. }) => {
            let force = matches!(command, Command::ForceAdd(_));
            let mode = match (force, plan) {
                (false, _) => dcron_core::PutMode::CreateOnly,
                (true, Some(p)) if p.changes.is_empty() => dcron_core::PutMode::CreateOnly,
                (true, _) => dcron_core::PutMode::Force,
            };
            let request = read_add_request(a)?;
            let meta = match ops::put(registry, &request, mode, now).await {
                Err(e) if force && mode == dcron_core::PutMode::CreateOnly => {
                    return Err(CliError::conflict(format!(
                        "task `{}` changed since the plan was made ({}); nothing was written, run force-add again",
                        request.name,
                        e.message()
                    )))
                }
                other => other?,
            };
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
        Command::Watch(_) | Command::Console(_) => {
            return Err(CliError::failed("watch and console stream: use app::run"));
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
/// and answers the exit code. `stop` ends `watch` (pass [`stop_signal`]). Destructive commands
/// are confirmed on the process's standard input (see [`run_with`]).
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
    run_with(cli, env, stdout, stderr, stop, &mut StdinConfirmer).await
}

/// [`run`] with the confirmation of destructive commands read from `confirmer` (see
/// [`gate`]).
pub async fn run_with<F>(
    cli: Cli,
    env: &dyn Fn(&str) -> Option<String>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    stop: impl FnOnce(Option<Duration>) -> F,
    confirmer: &mut dyn Confirmer,
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
        tls: g.tls.clone(),
    };
    let target = match RegistryTarget::resolve(&args, env) {
        Ok(t) => t,
        Err(e) => return report_error(stderr, &e),
    };
    let secrets = target.secrets().clone();
    if let Err(e) = precheck(&cli.command) {
        return report_error(stderr, &e.scrubbed(&secrets));
    }
    if let Command::Console(c) = &cli.command {
        let stop = stop(None);
        return crate::console::run_command(c, &target, g.timeout, env, stdout, stderr, stop).await;
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
    let planned = match plan(registry.as_ref(), &cli.command).await {
        Ok(p) => p,
        Err(e) => return report_error(stderr, &e.scrubbed(&secrets)),
    };
    if let Some((p, confirm)) = &planned {
        // The plan holds names, schedules and instants, never a credential.
        match gate(p, *confirm, g.json, confirmer, stdout, stderr) {
            Ok(Gate::Apply) => {}
            Ok(Gate::Stop) => {
                let _ = stdout.flush();
                return EXIT_OK;
            }
            Err(e) => return report_error(stderr, &e.scrubbed(&secrets)),
        }
    }
    let plan = planned.as_ref().map(|(p, _)| p);
    match execute_planned(registry.as_ref(), &cli.command, g.json, plan).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::PlannedChange;

    /// Answers from a script, as a terminal would.
    struct Scripted {
        interactive: bool,
        answers: Vec<&'static str>,
    }

    impl Confirmer for Scripted {
        fn interactive(&self) -> bool {
            self.interactive
        }
        fn read_answer(&mut self) -> std::io::Result<Option<String>> {
            Ok(if self.answers.is_empty() {
                None
            } else {
                Some(self.answers.remove(0).to_string())
            })
        }
    }

    fn plan(changes: usize) -> Plan {
        Plan {
            action: "cleanup",
            task: "t".into(),
            changes: (0..changes)
                .map(|_| PlannedChange {
                    op: "remove",
                    kind: "claims",
                    count: 2,
                    detail: "2 retained claims".into(),
                })
                .collect(),
            undoable: false,
        }
    }

    fn gated(
        plan: &Plan,
        confirm: ConfirmArgs,
        interactive: bool,
        answers: Vec<&'static str>,
    ) -> (CliResult<Gate>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut who = Scripted {
            interactive,
            answers,
        };
        let r = gate(plan, confirm, false, &mut who, &mut out, &mut err);
        (
            r,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    const ASK: ConfirmArgs = ConfirmArgs {
        yes: false,
        dry_run: false,
    };

    #[test]
    fn the_gate_shows_the_plan_then_asks_or_refuses() {
        let p = plan(1);
        let dry = ConfirmArgs {
            dry_run: true,
            yes: true,
        };
        let (r, out, err) = gated(&p, dry, true, vec!["y"]);
        assert_eq!(
            r,
            Ok(Gate::Stop),
            "a dry run never applies, even with --yes"
        );
        assert!(
            out.starts_with("cleanup task `t` will change 2 records:"),
            "{out}"
        );
        assert!(out.ends_with("dry run: nothing was changed\n") && err.is_empty());

        let yes = ConfirmArgs {
            yes: true,
            dry_run: false,
        };
        let (r, out, err) = gated(&p, yes, false, vec![]);
        assert_eq!(r, Ok(Gate::Apply));
        assert!(out.is_empty() && err.contains("2 retained claims"), "{err}");

        let (r, _, err) = gated(&p, ASK, false, vec!["y"]);
        let e = r.expect_err("refused");
        assert_eq!(e.kind(), crate::ErrorKind::Usage);
        assert!(e.message().contains("pass --yes"), "{e}");
        assert!(!err.contains("[y/N]"), "nobody is asked: {err}");

        for yes in ["y\n", "YES\n", " yes "] {
            let (r, _, err) = gated(&p, ASK, true, vec![yes]);
            assert_eq!(r, Ok(Gate::Apply), "{yes:?}");
            assert!(err.ends_with("apply these changes? [y/N] "), "{err}");
        }
        for no in [vec!["n\n"], vec!["\n"], vec!["yep\n"], vec![]] {
            let (r, _, _) = gated(&p, ASK, true, no.clone());
            let e = r.expect_err("cancelled");
            assert_eq!(e.kind(), crate::ErrorKind::Failed, "{no:?}");
            assert!(e.message().contains("nothing was changed"), "{e}");
        }
    }

    #[test]
    fn nothing_to_change_needs_no_confirmation() {
        let (r, out, err) = gated(&plan(0), ASK, false, vec![]);
        assert_eq!(r, Ok(Gate::Apply));
        assert!(out.is_empty() && err.is_empty());
        let dry = ConfirmArgs {
            dry_run: true,
            yes: false,
        };
        let (r, out, _) = gated(&plan(0), dry, false, vec![]);
        assert_eq!(r, Ok(Gate::Stop));
        assert!(
            out.starts_with("cleanup task `t`: nothing to change"),
            "{out}"
        );
    }
}
