//! `simulate`: runs the deterministic cluster simulator over many seeds and checks the
//! exactly-once invariants after each.
//!
//! ```text
//! simulate --seeds <n> [--from <first seed>] [--jobs <threads>] [--broken-claims] [--verbose]
//! simulate --seed <s> [--broken-claims] [--journal]  # replay one seed, printing its fault plan
//!                                                   # (and every node event with --journal)
//! ```
//!
//! The last line is `summary seeds=<n> fires=<n> duplicates=<n> missed=<n> unexpected=<n>
//! violations=<n> lost_in_flight=<n> lost_replies=<n> freezes=<n> frozen_in_flight=<n>
//! overlap_runs=<n> overlaps=<n> overlaps_after_revocation=<n>`;
//! the exit status is 1 when any seed violated an invariant (a duplicate, a miss, an unexpected
//! fire and two overlapping runs of the `Skip` task each are one), 2 on bad arguments.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use dcron_testkit::sim::{run_seed, SeedOutcome, SimOptions};

const USAGE: &str = "usage: simulate --seeds <n> [--from <seed>] [--jobs <threads>] [--broken-claims] [--verbose]\n       simulate --seed <s> [--broken-claims] [--journal]";

/// Parsed command line.
#[derive(Debug)]
struct Args {
    from: u64,
    count: u64,
    single: bool,
    jobs: usize,
    broken: bool,
    verbose: bool,
    journal: bool,
}

fn number(flag: &str, value: Option<String>) -> Result<u64, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse::<u64>()
        .map_err(|_| format!("{flag}: `{v}` is not a non-negative integer"))
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        from: 0,
        count: 0,
        single: false,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        broken: false,
        verbose: false,
        journal: false,
    };
    let mut seeds_given = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => {
                args.count = number("--seeds", it.next())?;
                seeds_given = true;
            }
            "--from" => args.from = number("--from", it.next())?,
            "--seed" => {
                args.from = number("--seed", it.next())?;
                args.count = 1;
                args.single = true;
                seeds_given = true;
            }
            "--jobs" => {
                args.jobs = number("--jobs", it.next())?.clamp(1, 64) as usize;
            }
            "--broken-claims" => args.broken = true,
            "--journal" => args.journal = true,
            "--verbose" | "-v" => args.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !seeds_given {
        return Err("give --seeds <n> or --seed <s>".into());
    }
    if args.from.checked_add(args.count).is_none() {
        return Err("--from + --seeds overflows".into());
    }
    Ok(args)
}

fn report_violation(o: &SeedOutcome, broken: bool) {
    println!(
        "VIOLATION seed={} ({} violations)",
        o.seed,
        o.verdict.violations.len()
    );
    for v in o.verdict.violations.iter().take(20) {
        println!("  {v}");
    }
    if o.verdict.violations.len() > 20 {
        println!("  … {} more", o.verdict.violations.len() - 20);
    }
    print!("fault schedule of {}", o.plan);
    println!("replay: {}", o.replay_command(broken));
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("simulate: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The simulator makes nodes fail on purpose (a panicking clock): keep those panics quiet,
    // report the others as usual.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        if !message.contains("simulated fatal failure") {
            default_hook(info);
        }
    }));
    let started = Instant::now();
    let next = AtomicU64::new(args.from);
    let end = args.from + args.count;
    let fires = AtomicU64::new(0);
    let duplicates = AtomicU64::new(0);
    let missed = AtomicU64::new(0);
    let unexpected = AtomicU64::new(0);
    let lost_replies = AtomicU64::new(0);
    let freezes = AtomicU64::new(0);
    let overlap_runs = AtomicU64::new(0);
    let overlaps = AtomicU64::new(0);
    let revoked = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let frozen_lost = AtomicU64::new(0);
    let expected = AtomicU64::new(0);
    let violations = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let print = Mutex::new(());
    let jobs = args.jobs.min(args.count.max(1) as usize);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    break;
                }
                let opts = SimOptions {
                    broken_claims: args.broken,
                    journal: args.journal,
                    ..SimOptions::new(seed)
                };
                let t0 = Instant::now();
                let outcome = match run_seed(&opts) {
                    Ok(o) => o,
                    Err(e) => {
                        let _g = print.lock();
                        println!("ERROR seed={seed}: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                let v = &outcome.verdict;
                fires.fetch_add(v.executions as u64, Ordering::SeqCst);
                duplicates.fetch_add(v.duplicates.len() as u64, Ordering::SeqCst);
                missed.fetch_add(v.missed.len() as u64, Ordering::SeqCst);
                unexpected.fetch_add(v.unexpected.len() as u64, Ordering::SeqCst);
                lost_replies.fetch_add(v.lost_replies, Ordering::SeqCst);
                freezes.fetch_add(v.freezes as u64, Ordering::SeqCst);
                overlap_runs.fetch_add(v.overlap_runs as u64, Ordering::SeqCst);
                overlaps.fetch_add(v.overlaps as u64, Ordering::SeqCst);
                revoked.fetch_add(v.overlaps_after_revocation as u64, Ordering::SeqCst);
                lost.fetch_add(v.lost_in_flight.len() as u64, Ordering::SeqCst);
                frozen_lost.fetch_add(v.frozen_in_flight.len() as u64, Ordering::SeqCst);
                expected.fetch_add(v.expected as u64, Ordering::SeqCst);
                let _g = print.lock();
                if args.single {
                    print!("fault schedule of {}", outcome.plan);
                }
                if args.verbose || args.single {
                    println!(
                        "seed={seed} fires={} expected={} duplicates={} missed={} unexpected={} lost_in_flight={} excused={} processes={} violations={} digest={:016x} wall={}ms",
                        v.executions,
                        v.expected,
                        v.duplicates.len(),
                        v.missed.len(),
                        v.unexpected.len(),
                        v.lost_in_flight.len(),
                        v.excused,
                        outcome.processes,
                        v.violations.len(),
                        outcome.digest,
                        t0.elapsed().as_millis()
                    );
                }
                if args.journal {
                    for (ms, who, what) in &outcome.journal {
                        println!("journal {ms:>7} {who:>6} {what}");
                    }
                }
                if !v.is_clean() {
                    violations.fetch_add(1, Ordering::SeqCst);
                    report_violation(&outcome, args.broken);
                }
            });
        }
    });
    let violations = violations.load(Ordering::SeqCst) + errors.load(Ordering::SeqCst);
    println!(
        "figures expected={} lost_in_flight={} errors={} jobs={jobs} wall={:.1}s",
        expected.load(Ordering::SeqCst),
        lost.load(Ordering::SeqCst),
        errors.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    println!(
        "summary seeds={} fires={} duplicates={} missed={} unexpected={} violations={} lost_in_flight={} lost_replies={} freezes={} frozen_in_flight={} overlap_runs={} overlaps={} overlaps_after_revocation={}",
        args.count,
        fires.load(Ordering::SeqCst),
        duplicates.load(Ordering::SeqCst),
        missed.load(Ordering::SeqCst),
        unexpected.load(Ordering::SeqCst),
        violations,
        lost.load(Ordering::SeqCst),
        lost_replies.load(Ordering::SeqCst),
        freezes.load(Ordering::SeqCst),
        frozen_lost.load(Ordering::SeqCst),
        overlap_runs.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst),
        revoked.load(Ordering::SeqCst),
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
