//! `gauntlet`: a thin command line over the Gauntlet library crates.
//!
//! Exit codes (ripgrep's convention): 0 success, 1 ran but a gate failed, 2 error.

mod cli;
mod demo;
mod eval;
mod gate;
mod info;
mod journal;
mod poison;
mod progress;
mod report;
mod scan;
mod summary;
mod toolbox;
mod train;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

// Attack and training steps allocate and free large tensors every step; glibc
// returns them to the kernel and pays a page fault per page on the next step.
// mimalloc keeps them: the CNN gradient step ran 1.9x faster with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Parsing spawns no threads, so the thread count can still be set afterwards.
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if err.use_stderr()
                && err.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            eprintln!("error: {}", usage_error_line(&err));
            return ExitCode::from(2);
        }
        // --help, --version, or `gauntlet` alone: clap prints them as usual.
        Err(err) => err.exit(),
    };
    gauntlet_core::configure_threads(cli.threads);
    match cli::run(cli) {
        Ok(code) => code,
        // Ctrl-C: the message saying how to resume is already printed.
        Err(err) if err.downcast_ref::<journal::Interrupted>().is_some() => ExitCode::from(130),
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each said once: library errors carry the
/// operating system's reason in their message and as their source, and a context
/// may repeat the message it wraps.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let mut text = cause.to_string().replace('\n', " ");
        // A parser quoting a megabyte-long line must not flood the terminal.
        if text.chars().count() > 400 {
            text = text.chars().take(400).collect::<String>() + "…";
        }
        match parts.last_mut() {
            Some(last) if last.ends_with(&text) => {}
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
    }
    parts.join(": ")
}

/// A command-line error on one line, like every other error: clap's message and
/// its hints (possible values, a similar flag), without the usage block.
fn usage_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut line = String::new();
    for part in rendered.lines().map(str::trim).filter(|l| {
        !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
    }) {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line
}
