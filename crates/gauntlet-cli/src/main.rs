//! `gauntlet`: a thin command line over the Gauntlet library crates.
//!
//! Exit codes (ripgrep's convention): 0 success, 1 ran but a gate failed, 2 error.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
