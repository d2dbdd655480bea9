//! `dcronctl`: the dcron operator tool (work in progress).

fn main() {
    eprintln!("dcronctl: no commands implemented yet");
    std::process::exit(2);
}
