use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Write `bytes` to `path` atomically: a temporary file in the same directory is
/// written, flushed to disk and renamed over the target, so readers see either the
/// old file or the complete new one, never a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] for content produced by `write` into the (buffered)
/// temporary file, so a large output (a training checkpoint, several times the
/// weights) need not exist in memory whole first.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; some filesystems cannot sync a directory,
        // and the file is complete either way.
        if let Ok(dir) = std::fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Most a TOML configuration (attack suite, gate policy) may hold.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most a JSON document (run record, baseline, manifest) may hold.
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 30;

/// Read a UTF-8 text file of at most `max_bytes`: bigger files (or endless ones,
/// such as `/dev/zero` or a pipe) are refused without reading past the limit, and
/// the memory it would take is checked first. `what` names the file's role.
pub fn read_text_limited(path: &Path, max_bytes: u64, what: &str) -> Result<String> {
    use std::io::Read;
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let too_big = || Error::TooLarge {
        path: path.to_path_buf(),
        what: what.to_string(),
        limit: crate::human_bytes(max_bytes),
    };
    let declared = file.metadata().map_err(io_err)?.len();
    if declared > max_bytes {
        return Err(too_big());
    }
    crate::ensure_memory(
        declared,
        &format!("reading {what} {}", path.display()),
        "use a machine with more memory",
    )?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| Error::NotText {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// 1-based line and column of byte `offset` in `text`, for parse errors that
/// should point at the place rather than quote it (a quoted line can be huge).
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("gauntlet-atomic-{}", std::process::id()));
        let path = dir.join("sub/out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A streamed write that fails part-way leaves the old file as it was and
    /// no temporary file behind; one that succeeds replaces it whole.
    #[test]
    fn a_failed_streamed_write_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("gauntlet-streamed-{}", std::process::id()));
        let path = dir.join("checkpoint.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |file| {
            file.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("checkpoint.bin"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        write_atomic_with(&path, |file| file.write_all(b"new content")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_reads_are_bounded_even_for_endless_files() {
        let err = read_text_limited(Path::new("/dev/zero"), 1024, "suite").unwrap_err();
        assert!(err.to_string().contains("larger than 1 KiB"), "{err}");
        let dir = tempfile_dir("limited");
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let err = read_text_limited(&big, 1024, "suite").unwrap_err();
        assert!(err.to_string().contains("big.toml"), "{err}");
        std::fs::write(&big, [b'a', 0xff, b'b']).unwrap();
        let err = read_text_limited(&big, 1024, "suite").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        std::fs::write(&big, "name = 1").unwrap();
        assert_eq!(read_text_limited(&big, 1024, "suite").unwrap(), "name = 1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(line_and_column("ab\ncd\nef", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_and_column("ab\ncd\nef", 99), (3, 3));
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gauntlet-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_into_an_unwritable_place_is_an_error() {
        let err = write_atomic(Path::new("/proc/definitely/not/here.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("here.json"), "{err}");
    }
}
