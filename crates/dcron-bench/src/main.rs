//! `dcron-bench`: whole-system benchmark runs. `dcron-bench help` lists the commands; each
//! prints `summary key=value …` lines. Bad arguments are reported with the usage text and exit
//! status 2; a run that fails exits with status 1.

use std::process::ExitCode;

use dcron_bench::cli;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) if e.is_help() => {
            println!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match dcron_bench::run(command, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dcron-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
