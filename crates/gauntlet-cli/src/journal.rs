//! Ctrl-C for journaled evaluations: the journal itself is
//! [`gauntlet_eval::FileJournal`]; here the handler that asks it to stop, and the
//! error `main` turns into exit code 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Set by the Ctrl-C handler; a journaled run stops before its next batch.
fn interrupted_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// Stop cleanly on Ctrl-C (installed once per process): finish the batch in flight,
/// keep the journal, exit with a message saying how to resume. Returns the flag the
/// journal watches.
pub(crate) fn install_interrupt_handler() -> Arc<AtomicBool> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let flag = interrupted_flag();
    INSTALLED.call_once(|| {
        let handler_flag = flag.clone();
        // Without a handler Ctrl-C still kills the run; the journal stays valid.
        let _ = ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst));
    });
    flag
}

/// The run stopped on Ctrl-C; `main` exits 130 for it.
#[derive(Debug)]
pub(crate) struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
