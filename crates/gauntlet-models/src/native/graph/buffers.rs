//! Buffers reused across passes: an attack runs the same plan thousands of
//! times on batches of the same size, and fresh multi-megabyte allocations cost
//! a page fault per 4 KiB (a tenth of a ResNet step when measured).

use std::cell::RefCell;
use std::sync::Mutex;

/// Most buffers kept between passes: enough for the slots and gradients of a
/// large transformer (a pass never holds more than its own peak).
const KEEP: usize = 4096;

/// Free buffers (activations in f32, max-pooling winners in u32), handed out by size.
#[derive(Debug)]
pub(crate) struct BufferPool<T = f32> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T> Default for BufferPool<T> {
    fn default() -> Self {
        Self {
            free: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Copy + Default> BufferPool<T> {
    /// A buffer of `len` values whose contents are unspecified (every kernel
    /// writes all of its output).
    pub(crate) fn take(&self, len: usize) -> Vec<T> {
        let reused = self.free.lock().ok().and_then(|mut free| {
            // The smallest buffer that holds `len` without growing.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i)?;
            Some(free.swap_remove(best))
        });
        match reused {
            Some(mut buffer) => {
                buffer.truncate(len);
                buffer
            }
            None => vec![T::default(); len],
        }
    }

    /// A buffer of `len` zeros.
    pub(crate) fn take_zeroed(&self, len: usize) -> Vec<T> {
        let mut buffer = self.take(len);
        buffer.fill(T::default());
        buffer
    }

    /// Frees every kept buffer (before other work that needs the memory).
    pub(crate) fn clear(&self) {
        if let Ok(mut free) = self.free.lock() {
            free.clear();
            free.shrink_to_fit();
        }
    }

    /// How many buffers are kept (for tests: passes must not leave more).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().map_or(0, |free| free.len())
    }

    /// Returns a buffer for reuse.
    pub(crate) fn give(&self, mut buffer: Vec<T>) {
        if buffer.capacity() == 0 {
            return;
        }
        // Keep the full length so the next `take` need not grow it.
        buffer.resize(buffer.capacity(), T::default());
        if let Ok(mut free) = self.free.lock() {
            if free.len() < KEEP {
                free.push(buffer);
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` with this thread's scratch buffer of at least `len` values
/// (contents unspecified), e.g. an im2col matrix.
pub(crate) fn with_scratch<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            work(&mut scratch[..len])
        }
        // Re-entered on the same thread (a nested parallel loop): a fresh buffer.
        Err(_) => work(&mut vec![0.0; len]),
    })
}
