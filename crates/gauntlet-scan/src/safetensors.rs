//! safetensors header validation: the JSON header's size, every tensor's dtype,
//! shape and offsets, and that the data section is covered exactly once.

use std::io::Read;
use std::path::Path;

use crate::{Finding, Severity};

/// Headers larger than this are refused (the format's own readers use 100 MB).
const MAX_HEADER: u64 = 100_000_000;

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
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
        let Some(element) = dtype_size(dtype) else {
            bad(format!("tensor '{name}': unknown dtype '{dtype}'"));
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
        let bytes = shape.iter().try_fold(element, |acc, &d| acc.checked_mul(d));
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
