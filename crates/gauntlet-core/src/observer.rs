/// Progress reporting for long work (a CLI draws progress bars from it; library
/// users can ignore it with [`NoProgress`]). Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// A phase starts with `total` units of work (samples, batches, ...).
    fn start(&self, _phase: &str, _total: u64) {}
    /// `done` more units finished; `status` is a short live summary (e.g. loss).
    fn advance(&self, _done: u64, _status: &str) {}
    /// The phase ended; `summary` is a one-line result.
    fn finish(&self, _summary: &str) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Observer for NoProgress {}
