//! NumPy `.npy` arrays (format versions 1–3) and `.npz` archives of them.
//!
//! Only what datasets need: little-endian or byte-sized integers and floats, C
//! order. Headers are checked against the bytes actually present before anything
//! is allocated.

use std::io::Read;
use std::path::Path;

use crate::error::{format_err, Result};
use crate::reader::read_exact_payload;

/// Element type of an `.npy` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NpyDtype {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl NpyDtype {
    fn parse(descr: &str) -> Option<Self> {
        // '|' = not applicable (bytes), '<' = little endian, '=' = native (we are LE).
        // By character, not byte: a hostile header may start with any UTF-8.
        let mut chars = descr.chars();
        if !matches!(chars.next(), Some('<' | '|' | '=')) {
            return None;
        }
        let code = chars.as_str();
        Some(match code {
            "u1" | "B" => Self::U8,
            "i1" | "b" => Self::I8,
            "u2" => Self::U16,
            "i2" => Self::I16,
            "u4" => Self::U32,
            "i4" => Self::I32,
            "u8" => Self::U64,
            "i8" => Self::I64,
            "f4" => Self::F32,
            "f8" => Self::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    /// Whether values are integers (labels must be).
    pub(crate) fn is_integer(self) -> bool {
        !matches!(self, Self::F32 | Self::F64)
    }
}

/// A decoded array: shape, type and raw little-endian bytes.
#[derive(Debug)]
pub(crate) struct NpyArray {
    pub shape: Vec<usize>,
    pub dtype: NpyDtype,
    pub bytes: Vec<u8>,
}

impl NpyArray {
    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Every element as f64 (exact for all supported types up to 2^53).
    pub(crate) fn to_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        let n = self.len();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let v = match self.dtype {
                NpyDtype::U8 => b[i] as f64,
                NpyDtype::I8 => b[i] as i8 as f64,
                NpyDtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as f64,
                NpyDtype::I16 => i16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as f64,
                NpyDtype::U32 => u32::from_le_bytes(le4(b, i)) as f64,
                NpyDtype::I32 => i32::from_le_bytes(le4(b, i)) as f64,
                NpyDtype::F32 => f32::from_le_bytes(le4(b, i)) as f64,
                NpyDtype::U64 => u64::from_le_bytes(le8(b, i)) as f64,
                NpyDtype::I64 => i64::from_le_bytes(le8(b, i)) as f64,
                NpyDtype::F64 => f64::from_le_bytes(le8(b, i)),
            };
            out.push(v);
        }
        out
    }
}

fn le4(b: &[u8], i: usize) -> [u8; 4] {
    [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]
}

fn le8(b: &[u8], i: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[8 * i..8 * i + 8]);
    out
}

/// Serialise an array the way `numpy.save` does (format 1.0): `descr` is a numpy
/// type string such as `"|u1"` or `"<f4"`, `data` the little-endian C-order bytes.
pub fn encode_npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_text = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An `.npz` archive (as `numpy.savez_compressed` writes: deflated members) of
/// already encoded arrays, named e.g. `"x.npy"`. The members carry a fixed
/// timestamp, so the same arrays always give the same bytes.
pub fn encode_npz(members: &[(&str, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    for (name, bytes) in members {
        zip.start_file(*name, options)
            .map_err(std::io::Error::other)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish().map_err(std::io::Error::other)?.into_inner())
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy itself refuses headers longer than this.
const MAX_HEADER_LEN: usize = 1 << 16;

/// Parse an `.npy` stream whose total size is at most `max_len` bytes.
pub(crate) fn read_npy(reader: &mut dyn Read, max_len: usize, path: &Path) -> Result<NpyArray> {
    let mut preamble = [0u8; 8];
    reader
        .read_exact(&mut preamble)
        .map_err(|_| format_err(path, "truncated: shorter than an .npy preamble"))?;
    if &preamble[..6] != MAGIC {
        return Err(format_err(
            path,
            "bad magic: expected an .npy file starting \\x93NUMPY",
        ));
    }
    let header_len = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            reader
                .read_exact(&mut len)
                .map_err(|_| format_err(path, "truncated .npy header"))?;
            u16::from_le_bytes(len) as usize
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader
                .read_exact(&mut len)
                .map_err(|_| format_err(path, "truncated .npy header"))?;
            u32::from_le_bytes(len) as usize
        }
        v => {
            return Err(format_err(
                path,
                format!(".npy format version {v} is not supported, expected 1, 2 or 3"),
            ))
        }
    };
    if header_len > MAX_HEADER_LEN || header_len > max_len {
        return Err(format_err(
            path,
            format!(".npy header length {header_len} is implausible"),
        ));
    }
    let mut header = vec![0u8; header_len];
    reader
        .read_exact(&mut header)
        .map_err(|_| format_err(path, "truncated .npy header"))?;
    let header = String::from_utf8_lossy(&header);
    let descr = dict_value(&header, "descr")
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
        .ok_or_else(|| format_err(path, ".npy header has no 'descr'"))?;
    let dtype = NpyDtype::parse(&descr).ok_or_else(|| {
        format_err(
            path,
            format!("unsupported .npy dtype '{descr}', expected little-endian u1/i1/u2/i2/u4/i4/u8/i8/f4/f8"),
        )
    })?;
    let fortran = dict_value(&header, "fortran_order")
        .ok_or_else(|| format_err(path, ".npy header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(format_err(
            path,
            "Fortran-ordered .npy arrays are not supported, save with np.ascontiguousarray",
        ));
    }
    let shape =
        parse_shape(&header).ok_or_else(|| format_err(path, ".npy header has no valid 'shape'"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format_err(path, format!(".npy shape {shape:?} overflows")))?;
    let bytes = read_exact_payload(
        reader,
        count,
        max_len,
        path,
        &format!(".npy header (shape {shape:?}, {descr})"),
    )?;
    Ok(NpyArray {
        shape,
        dtype,
        bytes,
    })
}

/// The raw text of `'key': value` in a Python dict literal (values here never nest
/// deeper than a tuple).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[start + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        return Some(&rest[..=end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let tuple = dict_value(header, "shape")?;
    let inner = tuple.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<NpyArray> {
        read_npy(&mut &bytes[..], bytes.len(), Path::new("t.npy"))
    }

    #[test]
    fn reads_what_numpy_writes() {
        let data: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let arr = parse(&encode_npy("<f4", &[2, 2], &data)).unwrap();
        assert_eq!(arr.shape, vec![2, 2]);
        assert_eq!(arr.to_f64(), vec![1.5, -2.0, 0.25, 8.0]);
    }

    #[test]
    fn one_dimensional_shapes_parse() {
        let arr = parse(&encode_npy("|u1", &[3], &[7, 8, 9])).unwrap();
        assert_eq!(arr.shape, vec![3]);
        assert_eq!(arr.to_f64(), vec![7.0, 8.0, 9.0]);
    }

    #[test]
    fn lying_shape_is_rejected_before_allocation() {
        let bytes = encode_npy("<f8", &[4_000_000_000, 1000], &[0u8; 16]);
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("can hold at most"), "{err}");
    }

    #[test]
    fn a_descr_starting_with_a_multibyte_character_is_an_error() {
        // Found by the dataset_npy/image_npy fuzz targets: slicing the byte-order
        // character off by bytes panicked.
        let mut bytes = encode_npy("|u1", &[2], &[0, 0]);
        let at = bytes.windows(3).position(|w| w == b"|u1").unwrap();
        bytes[at..at + 3].copy_from_slice("é1".as_bytes());
        let err = parse(&bytes).err().unwrap().to_string();
        assert!(err.contains("unsupported .npy dtype 'é1'"), "{err}");
    }

    #[test]
    fn truncated_data_bad_magic_and_big_endian_are_errors() {
        let bytes = encode_npy("|u1", &[10], &[1, 2, 3]);
        assert!(parse(&bytes).unwrap_err().to_string().contains("truncated"));
        assert!(parse(b"NOTNUMPYATALL")
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let be = encode_npy(">f4", &[1], &[0, 0, 0, 0]);
        assert!(parse(&be)
            .unwrap_err()
            .to_string()
            .contains("unsupported .npy dtype"));
    }
}
