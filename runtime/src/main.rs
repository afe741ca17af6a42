//! The `outpost` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::Parser as _;
use outpost::cli::{execute, init_logging, Cli};

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
