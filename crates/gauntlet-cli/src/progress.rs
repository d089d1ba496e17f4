//! Progress bars on a terminal; plain one-line summaries otherwise; nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Mutex;

use gauntlet_core::Observer;
use indicatif::{ProgressBar, ProgressStyle};

pub struct CliProgress {
    quiet: bool,
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl CliProgress {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }
}

impl Observer for CliProgress {
    fn start(&self, phase: &str, total: u64) {
        if self.quiet || !self.terminal {
            return;
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(phase.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, done: u64, status: &str) {
        if let Ok(slot) = self.bar.lock() {
            if let Some(bar) = slot.as_ref() {
                bar.inc(done);
                if !status.is_empty() {
                    bar.set_message(status.to_string());
                }
            }
        }
    }

    fn finish(&self, summary: &str) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
        if !self.quiet && !summary.is_empty() {
            eprintln!("{summary}");
        }
    }
}
