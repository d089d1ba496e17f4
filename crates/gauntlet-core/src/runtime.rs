//! Process-wide CPU settings, applied once at start-up by programs (the CLI,
//! benchmarks) before any tensor work.

/// Sets how candle's and rayon's worker threads behave, unless the user already
/// chose through the environment:
///
/// - `CANDLE_BARRIER_POOL_SPIN_LIMIT`: candle 0.11 runs elementwise ops of
///   64 Ki elements or more on its own thread pool, whose workers busy-wait
///   25 000 rounds after each op. Between those ops our GEMMs run on rayon, and
///   on a 2-core machine the spinning worker takes a core from them: a gradient
///   step of the MLP ran 1.5× slower. A short spin keeps the wake-up cheap.
/// - `RAYON_NUM_THREADS` (and candle's count, which reads it): `threads` when
///   given, else the available parallelism (rayon's own default). Without it
///   candle re-reads `/proc/cpuinfo` on every matmul and convolution (to count
///   physical cores): 81 000 reads while planning one EfficientNet, a third of
///   its load time.
///
/// Call it first thing in `main`, while the process has a single thread: it
/// writes environment variables.
pub fn configure_threads(threads: Option<usize>) {
    const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN_LIMIT).is_none() {
        std::env::set_var(SPIN_LIMIT, "200");
    }
    if let Some(threads) = threads.filter(|t| *t > 0) {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    } else if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let available = std::thread::available_parallelism().map_or(1, usize::from);
        std::env::set_var("RAYON_NUM_THREADS", available.to_string());
    }
}
