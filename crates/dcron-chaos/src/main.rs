//! `chaos`: multi-process fault runs against real registries (work in progress).

fn main() {
    eprintln!("chaos: not implemented yet");
    std::process::exit(2);
}
