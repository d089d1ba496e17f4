//! Bounded reading: a header may lie about its size; we never allocate more than
//! the file could actually hold.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{format_err, io_err, Error, Result};

/// deflate cannot expand data by more than about 1032:1; anything claiming more
/// than this many bytes per compressed byte is a lie (or a bomb).
const MAX_DEFLATE_RATIO: usize = 1100;

/// Open a file, transparently gunzipping it if it starts with the gzip magic.
/// Returns the reader and the most payload bytes the file can possibly yield.
pub(crate) fn open_maybe_gzip(path: &Path) -> Result<(Box<dyn Read>, usize)> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len() as usize;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut reader, &mut magic).map_err(io_err(path))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(reader);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((
            Box::new(GzDecoder::new(chained)),
            len.saturating_mul(MAX_DEFLATE_RATIO),
        ))
    } else {
        Ok((Box::new(chained), len))
    }
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Read exactly `expected` payload bytes and check nothing follows.
///
/// `max_possible` bounds what the source could hold; a header claiming more is
/// rejected before any allocation.
pub(crate) fn read_exact_payload(
    reader: &mut dyn Read,
    expected: usize,
    max_possible: usize,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>> {
    if expected > max_possible {
        return Err(format_err(
            path,
            format!(
                "{what} claims {expected} bytes of data but the file can hold at most {max_possible}: truncated or corrupt"
            ),
        ));
    }
    ensure_fits(path, expected as u64)?;
    let mut data = Vec::with_capacity(expected);
    let read = reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| stream_err(path, e))?;
    if read < expected {
        return Err(format_err(
            path,
            format!("truncated: {what} promises {expected} bytes of data, the file holds {read}"),
        ));
    }
    if read > expected {
        return Err(format_err(
            path,
            format!("{what} promises {expected} bytes of data but more follows: sizes disagree with the file length"),
        ));
    }
    Ok(data)
}

/// Refuse data that cannot fit in the memory left, before reading it: a clear
/// error now instead of the out-of-memory killer later.
pub(crate) fn ensure_fits(path: &Path, bytes: u64) -> Result<()> {
    gauntlet_core::ensure_memory(
        bytes,
        "the data",
        "use a machine with more memory, or a subset of the data",
    )
    .map_err(|e| format_err(path, e.to_string()))
}

/// An I/O error while decoding: corrupt compressed data is a format problem.
pub(crate) fn stream_err(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            format_err(path, format!("corrupt compressed data: {e}"))
        }
        std::io::ErrorKind::UnexpectedEof => format_err(path, "truncated compressed data"),
        _ => io_err(path)(e),
    }
}
