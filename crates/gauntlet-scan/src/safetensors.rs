//! safetensors header validation: the JSON header's size, every tensor's dtype,
//! shape and offsets, and that the data section is covered exactly once.

use std::io::Read;
use std::path::Path;

use crate::{Finding, Severity};

/// Headers larger than this are refused (the format's own readers use 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Every dtype the format defines (safetensors 0.6) and its width in bits; a
/// tensor of a sub-byte type must fill whole bytes.
const DTYPE_BITS: &[(&str, u64)] = &[
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
];

fn dtype_bits(dtype: &str) -> Option<u64> {
    DTYPE_BITS
        .iter()
        .find(|(name, _)| *name == dtype)
        .map(|&(_, bits)| bits)
}

/// The finding for a header length that runs past the end of a file whose
/// first header byte is there (`{` after the 8-byte length): a safetensors
/// file cut short, or one that lies about its header.
pub(crate) fn header_past_end(header_len: u64, size: u64) -> Finding {
    Finding {
        severity: Severity::High,
        location: "header".into(),
        message: format!(
            "header length {header_len} runs past the end of the file ({size} bytes): truncated or not what it claims"
        ),
    }
}

/// Check the header of the safetensors file at `path` (`size` bytes long).
pub(crate) fn check(path: &Path, size: u64, findings: &mut Vec<Finding>) -> std::io::Result<()> {
    let mut bad = |message: String| {
        findings.push(Finding {
            severity: Severity::High,
            location: "header".into(),
            message,
        })
    };
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > size - 8 {
        bad(format!(
            "header length {header_len} exceeds the file ({size} bytes) or the 100 MB limit"
        ));
        return Ok(());
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let data_len = size - 8 - header_len;
    let value: serde_json::Value = match serde_json::from_slice(&header) {
        Ok(v) => v,
        Err(e) => {
            bad(format!("header is not valid JSON: {e}"));
            return Ok(());
        }
    };
    let Some(entries) = value.as_object() else {
        bad("header is not a JSON object".into());
        return Ok(());
    };
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if !entry
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()))
            {
                bad("__metadata__ must map strings to strings".into());
            }
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let Some(element_bits) = dtype_bits(dtype) else {
            bad(format!(
                "tensor '{name}': unknown dtype '{dtype}', expected one of {}",
                DTYPE_BITS
                    .iter()
                    .map(|d| d.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        };
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else {
            bad(format!(
                "tensor '{name}': shape is not a list of non-negative integers"
            ));
            continue;
        };
        let offsets: Option<Vec<u64>> = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|o| o.iter().map(|d| d.as_u64()).collect());
        let Some([start, end]) = offsets
            .as_deref()
            .and_then(|o| <[u64; 2]>::try_from(o).ok())
        else {
            bad(format!(
                "tensor '{name}': data_offsets must be [start, end]"
            ));
            continue;
        };
        if start > end || end > data_len {
            bad(format!(
                "tensor '{name}': data_offsets [{start}, {end}] fall outside the {data_len}-byte data section"
            ));
            continue;
        }
        let bits = shape
            .iter()
            .try_fold(element_bits, |acc, &d| acc.checked_mul(d));
        if bits.is_some_and(|b| b % 8 != 0) {
            bad(format!(
                "tensor '{name}': shape {shape:?} of {dtype} is not a whole number of bytes"
            ));
            continue;
        }
        let bytes = bits.map(|b| b / 8);
        if bytes != Some(end - start) {
            bad(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {} bytes, its offsets span {}",
                bytes.map_or("more than 2^64".to_string(), |b| b.to_string()),
                end - start
            ));
            continue;
        }
        spans.push((start, end, name.clone()));
    }
    spans.sort();
    let mut covered = 0u64;
    for (start, end, name) in &spans {
        if *start < covered {
            bad(format!("tensor '{name}' overlaps the tensor before it (starts at {start}, previous ends at {covered})"));
        } else if *start > covered {
            bad(format!(
                "{} unused bytes before tensor '{name}' (a gap at {covered}..{start})",
                start - covered
            ));
        }
        covered = covered.max(*end);
    }
    if covered < data_len && findings.iter().all(|f| f.severity < Severity::High) {
        findings.push(Finding {
            severity: Severity::High,
            location: "header".into(),
            message: format!(
                "{} bytes after the last tensor are not described by the header",
                data_len - covered
            ),
        });
    }
    Ok(())
}
