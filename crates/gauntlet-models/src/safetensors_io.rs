//! Writing safetensors deterministically (the `safetensors` crate serialises its
//! metadata from a `HashMap`, whose order changes between runs); reading uses the
//! crate's validated parser.

use std::collections::BTreeMap;

/// Serialise f32 tensors `(shape, values)` with string metadata, byte for byte the
/// same for the same input (sorted header keys).
pub fn serialize<V: AsRef<[f32]>>(
    metadata: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, (Vec<usize>, V)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write(&mut out, metadata, tensors);
    out
}

/// [`serialize`] straight into `writer`, a bounded chunk at a time, so a large
/// file (a training checkpoint: weights, best weights and optimiser moments)
/// never exists whole in memory.
pub fn write<V: AsRef<[f32]>>(
    writer: &mut dyn std::io::Write,
    metadata: &BTreeMap<String, String>,
    tensors: &BTreeMap<String, (Vec<usize>, V)>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
    );
    let mut offset = 0usize;
    for (name, (shape, values)) in tensors {
        let len = values.as_ref().len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    // serde_json's Map is a BTreeMap here (no preserve_order feature): sorted keys.
    let mut header_bytes = serde_json::Value::Object(header).to_string().into_bytes();
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    writer.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
    writer.write_all(&header_bytes)?;
    const CHUNK: usize = 1 << 16;
    let mut bytes = Vec::with_capacity(4 * CHUNK);
    for (_, values) in tensors.values() {
        for chunk in values.as_ref().chunks(CHUNK) {
            bytes.clear();
            chunk.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
            writer.write_all(&bytes)?;
        }
    }
    Ok(())
}
