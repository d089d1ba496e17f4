//! MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST, ...), raw or gzipped.
//!
//! Format (LeCun): a big-endian header `0x00 0x00 <dtype> <ndim>`, then `ndim`
//! big-endian u32 sizes, then the data. Only unsigned bytes (`dtype = 0x08`) occur
//! in the image datasets we read.

use std::io::Read;
use std::path::Path;

use crate::error::{format_err, io_err, Result};
use crate::reader::{open_maybe_gzip, read_exact_payload};

/// An IDX array of unsigned bytes.
pub(crate) struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Read an IDX file whose array must have `expected_ndim` dimensions.
pub(crate) fn read_idx(path: &Path, expected_ndim: usize) -> Result<IdxArray> {
    let (mut reader, max_payload) = open_maybe_gzip(path)?;
    let mut magic = [0u8; 4];
    read_header(&mut reader, &mut magic, path)?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format_err(
            path,
            format!(
                "bad magic {:02x}{:02x}{:02x}{:02x}, expected an IDX header starting 0000",
                magic[0], magic[1], magic[2], magic[3]
            ),
        ));
    }
    if magic[2] != 0x08 {
        return Err(format_err(
            path,
            format!(
                "IDX data type 0x{:02x} is not supported, expected 0x08 (unsigned byte)",
                magic[2]
            ),
        ));
    }
    let ndim = magic[3] as usize;
    if ndim != expected_ndim {
        return Err(format_err(
            path,
            format!("IDX array has {ndim} dimensions, expected {expected_ndim}"),
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut size = [0u8; 4];
        read_header(&mut reader, &mut size, path)?;
        dims.push(u32::from_be_bytes(size) as usize);
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format_err(path, format!("IDX sizes {dims:?} overflow")))?;
    let data = read_exact_payload(&mut reader, total, max_payload, path, "IDX header")?;
    Ok(IdxArray { dims, data })
}

fn read_header(reader: &mut dyn Read, buf: &mut [u8], path: &Path) -> Result<()> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format_err(path, "truncated: file ends inside the IDX header")
        } else {
            io_err(path)(e)
        }
    })
}
