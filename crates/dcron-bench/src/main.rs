//! `dcron-bench`: whole-system benchmark runs (work in progress).

fn main() {
    eprintln!("dcron-bench: no runs implemented yet");
    std::process::exit(2);
}
