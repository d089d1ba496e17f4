//! Containing a dependency's panic: some numeric libraries panic on inputs they
//! should refuse (linfa's LOBPCG sorts NaN eigenvalues with `expect`). A caller
//! with a fallback catches that panic and goes on; the user should not see a
//! panic message and backtrace for a case the run handled.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a closure under [`contain_panic`].
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// Run `work`; a panic inside it becomes `Err(message)` and prints nothing.
///
/// The process's panic hook is wrapped once so that it stays silent only for
/// panics on a thread inside `contain_panic`; every other panic (other threads,
/// or outside this call) is reported as before. `work` must not leave shared
/// state half-updated on a panic (it is treated as unwind-safe).
pub fn contain_panic<T>(work: impl FnOnce() -> T) -> std::result::Result<T, String> {
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINED.with(|c| c.replace(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(work));
    CONTAINED.with(|c| c.set(was));
    outcome.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_values_pass_through() {
        assert_eq!(contain_panic(|| 7), Ok(7));
        let caught = contain_panic(|| -> u32 { panic!("NaN values in array") });
        assert_eq!(caught, Err("NaN values in array".to_string()));
        let formatted = contain_panic(|| -> u32 { panic!("value {}", 3) });
        assert_eq!(formatted, Err("value 3".to_string()));
        // Nested use restores the outer state.
        let nested = contain_panic(|| contain_panic(|| -> u8 { panic!("inner") }).is_err());
        assert_eq!(nested, Ok(true));
        assert!(!CONTAINED.with(Cell::get));
    }
}
