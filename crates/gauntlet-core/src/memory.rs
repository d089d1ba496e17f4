//! How much memory this process may still use, so that work too large for the
//! machine is refused with a clear message before it starts, instead of the
//! kernel's out-of-memory killer ending the run half-way.

use crate::{Error, Result};

/// Bytes this process can still allocate: the least of the kernel's
/// `MemAvailable`, the cgroup's limit less its usage (v2 and v1), and the
/// address-space limit (`ulimit -v`) less what is mapped and what the worker
/// threads yet to start will map. `None` where none of these can be read (not
/// Linux).
pub fn available_memory() -> Option<u64> {
    let mut bounds = Vec::new();
    if let Some(kib) = proc_field("/proc/meminfo", "MemAvailable:") {
        bounds.push(kib * 1024);
    }
    bounds.extend(cgroup_headroom());
    if let Some(limit) = address_space_limit() {
        let mapped = proc_field("/proc/self/status", "VmSize:").map_or(0, |kib| kib * 1024);
        bounds.push(
            limit
                .saturating_sub(mapped)
                .saturating_sub(unstarted_thread_reservation()),
        );
    }
    bounds.into_iter().min()
}

/// Refuse work that needs more memory than is available. `what` names the work
/// ("the images of data/x", "a batch of 4096 samples"), `advice` what to do
/// instead. Where the available memory cannot be read, nothing is refused.
pub fn ensure_memory(needed: u64, what: &str, advice: &str) -> Result<()> {
    match available_memory() {
        Some(available) if needed > available => Err(Error::OutOfMemory(format!(
            "{what} needs about {} of memory but only {} is available; {advice}",
            human_bytes(needed),
            human_bytes(available)
        ))),
        _ => Ok(()),
    }
}

/// Refuse a batch size whose working memory cannot fit, before any compute: a
/// clear error naming `flag` (the setting that chose it, e.g. `--batch-size`)
/// and a size that fits, instead of the out-of-memory killer part-way through a
/// run. `fixed` is what the work needs whatever the batch (training's weights,
/// gradients and optimiser state); at most `samples` are ever in one batch.
pub fn ensure_batch_fits(
    flag: &str,
    bytes_per_sample: u64,
    fixed: u64,
    batch_size: usize,
    samples: usize,
) -> Result<()> {
    let batch = batch_size.min(samples).max(1) as u64;
    let needed = bytes_per_sample.saturating_mul(batch).saturating_add(fixed);
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if needed <= available {
        return Ok(());
    }
    // A third of what would just fit leaves room for everything else (allocator
    // overhead, the data, buffers of other sizes).
    let fits = available.saturating_sub(fixed) / bytes_per_sample.max(1) / 3;
    let suggestion = if fits >= 1 {
        format!("use {flag} {fits} or less")
    } else {
        "not even one sample fits; free memory or use a larger machine".into()
    };
    let batch_text = if batch_size as u64 > batch {
        format!("{flag} {batch_size} ({batch} samples here)")
    } else {
        format!("{flag} {batch_size}")
    };
    Err(Error::OutOfMemory(format!(
        "{batch_text} needs about {} of memory ({} per sample) but only {} is available; {suggestion}",
        human_bytes(needed),
        human_bytes(bytes_per_sample),
        human_bytes(available)
    )))
}

/// `1.5 GiB`, `300.0 MiB`, `12 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.0} KiB", (b / KIB).ceil())
    }
}

/// A `Name:   1234 kB` line of a /proc file, in KiB.
fn proc_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Limit less usage of this process's memory cgroup ("max"/huge values mean none).
fn cgroup_headroom() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (limit, usage) = if id == "0" && controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read_number(&format!("{dir}/memory.max")),
                read_number(&format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read_number(&format!("{dir}/memory.limit_in_bytes")),
                read_number(&format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        // cgroup v1 writes "no limit" as a number near i64::MAX.
        if let Some(limit) = limit.filter(|&l| l < 1 << 60) {
            return Some(limit.saturating_sub(usage.unwrap_or(0)));
        }
    }
    None
}

/// Address space the compute threads not yet started will reserve: glibc gives
/// each thread that allocates its own malloc arena, a 64 MiB mapping, plus a
/// 2 MiB stack. Only the address-space limit sees these reservations (they are
/// not memory until touched), and a limit sized from `VmSize` before the thread
/// pool starts would otherwise be short by that much per thread.
fn unstarted_thread_reservation() -> u64 {
    const PER_THREAD: u64 = (64 + 2) << 20;
    let workers = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64)
        })
        .unwrap_or(1);
    let running = std::fs::read_dir("/proc/self/task").map_or(1, |tasks| tasks.count() as u64);
    // The main thread allocates from the main arena; every other running
    // thread has its reservation in `VmSize` already.
    workers.saturating_sub(running.saturating_sub(1)) * PER_THREAD
}

/// `ulimit -v`, from /proc/self/limits ("Max address space  soft  hard  bytes").
fn address_space_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_reports_some_memory_and_refuses_an_absurd_request() {
        let available = available_memory();
        if cfg!(target_os = "linux") {
            let bytes = available.unwrap_or(0);
            assert!(bytes > 1 << 20, "less than 1 MiB available? {bytes}");
            let err = ensure_memory(u64::MAX / 2, "a test", "ask for less").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("a test needs about") && text.contains("ask for less"),
                "{text}"
            );
        }
        assert!(ensure_memory(1, "one byte", "").is_ok());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(1536), "2 KiB");
        assert_eq!(human_bytes(300 << 20), "300.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
