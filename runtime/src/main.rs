//! The `outpost` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser as _;
use outpost::cli::{execute, init_logging, Cli};

/// jemalloc for Rust's allocations; with the unprefixed `malloc` it also serves librdkafka,
/// sled and the other C parts. Against glibc's malloc: forwarding to Kafka takes 1.6 instead
/// of 2.4 us of CPU per record (`outpost bench forward`), resident memory of `run --simulate`
/// is about the same (~60 MB); mimalloc was as fast but kept ~180 MB resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("outpost: {e}");
        return ExitCode::from(e.exit_code());
    }
    let stdin = Box::new(std::io::BufReader::new(std::io::stdin()));
    match execute(cli, stdin, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
