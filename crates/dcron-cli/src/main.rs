//! `dcronctl`: the dcron operator tool. See the crate README for commands, URLs and exit codes.

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;
use dcron_cli::error::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use dcron_cli::secret::Secrets;
use dcron_cli::{app, Cli};

fn main() {
    // Oversized arguments are refused before clap sees them (see `dcron_cli::limits`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = dcron_cli::limits::check_args(&args) {
        eprintln!("dcronctl: {}", e.message());
        std::process::exit(e.exit_code());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
                    let _ = e.print();
                    EXIT_OK
                }
                ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    EXIT_USAGE
                }
                _ => {
                    // One line: clap's first line without its `error: ` prefix, without any
                    // credential that was on the command line.
                    let args: Vec<String> = std::env::args_os()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect();
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("invalid command line");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    let first = Secrets::from_args(&args).scrub(first);
                    eprintln!("dcronctl: {first} (see dcronctl --help)");
                    EXIT_USAGE
                }
            };
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dcronctl: cannot start the async runtime: {e}");
            std::process::exit(EXIT_FAILED);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let code = runtime.block_on(async {
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        app::run(cli, &env, &mut stdout, &mut stderr, app::stop_signal).await
    });
    // Registry clients may keep background tasks; do not wait for them.
    runtime.shutdown_background();
    std::process::exit(code);
}
