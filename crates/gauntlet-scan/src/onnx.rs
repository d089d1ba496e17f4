//! ONNX: walk the protobuf wire format (no schema compiler needed) to every tensor
//! — initializers, sparse initializers, constant and sparse attributes, subgraphs,
//! model-local functions (their nodes and default attributes) and training
//! graphs — and check external-data locations and declared sizes. Fields are read
//! in whatever order the file holds them.

use std::path::Path;

use crate::{Finding, Severity};

/// Elements beyond this in one tensor are absurd for a model file (2^40 ≈ 10^12).
const MAX_ELEMENTS: u128 = 1 << 40;
/// Nested graphs deeper than this are refused (a hostile file could recurse forever).
const MAX_DEPTH: usize = 64;

/// One protobuf field: number and payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl<'a> Iterator for Fields<'a> {
    /// `Err(())` when the wire format is broken.
    type Item = Result<(u64, Field<'a>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let parsed = (|| {
            let key = varint(self.bytes, &mut self.at)?;
            let field = match key & 7 {
                0 => Field::Varint(varint(self.bytes, &mut self.at)?),
                1 => {
                    self.at = self.at.checked_add(8).filter(|&e| e <= self.bytes.len())?;
                    Field::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(self.bytes, &mut self.at)?).ok()?;
                    let end = self
                        .at
                        .checked_add(len)
                        .filter(|&e| e <= self.bytes.len())?;
                    let payload = &self.bytes[self.at..end];
                    self.at = end;
                    Field::Bytes(payload)
                }
                5 => {
                    self.at = self.at.checked_add(4).filter(|&e| e <= self.bytes.len())?;
                    Field::Fixed
                }
                _ => return None,
            };
            Some((key >> 3, field))
        })();
        match parsed {
            Some(item) => Some(Ok(item)),
            None => {
                self.at = self.bytes.len();
                Some(Err(()))
            }
        }
    }
}

fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { bytes, at: 0 }
}

struct Scan<'p> {
    dir: &'p Path,
    findings: Vec<Finding>,
    tensors: usize,
}

impl Scan<'_> {
    fn flag(&mut self, severity: Severity, location: &str, message: String) {
        self.findings.push(Finding {
            severity,
            location: location.into(),
            message,
        });
    }

    fn malformed(&mut self, location: &str) {
        self.flag(
            Severity::High,
            location,
            "malformed protobuf (truncated or impossible field)".into(),
        );
    }

    fn graph(&mut self, bytes: &[u8], depth: usize) {
        if depth > MAX_DEPTH {
            self.flag(
                Severity::High,
                "graph",
                format!("subgraphs nested deeper than {MAX_DEPTH}"),
            );
            return;
        }
        for item in fields(bytes) {
            match item {
                Err(()) => return self.malformed("graph"),
                Ok((5, Field::Bytes(t))) => self.tensor(t, "initializer"),
                Ok((15, Field::Bytes(sparse))) => self.sparse(sparse, "sparse initializer"),
                Ok((1, Field::Bytes(node))) => self.node(node, depth),
                _ => {}
            }
        }
    }

    fn node(&mut self, bytes: &[u8], depth: usize) {
        for item in fields(bytes) {
            match item {
                Err(()) => return self.malformed("node"),
                Ok((5, Field::Bytes(attribute))) => self.attribute(attribute, depth),
                _ => {}
            }
        }
    }

    /// An AttributeProto: tensors (`t`, `tensors`), sparse tensors
    /// (`sparse_tensor`, `sparse_tensors`) and graphs (`g`, `graphs`).
    fn attribute(&mut self, bytes: &[u8], depth: usize) {
        for inner in fields(bytes) {
            match inner {
                Err(()) => return self.malformed("node attribute"),
                Ok((5 | 10, Field::Bytes(t))) => self.tensor(t, "constant"),
                Ok((6 | 11, Field::Bytes(g))) => self.graph(g, depth + 1),
                Ok((22 | 23, Field::Bytes(sparse))) => self.sparse(sparse, "sparse constant"),
                _ => {}
            }
        }
    }

    /// A SparseTensorProto: its values and indices are tensors.
    fn sparse(&mut self, bytes: &[u8], kind: &str) {
        for inner in fields(bytes) {
            match inner {
                Ok((1 | 2, Field::Bytes(t))) => self.tensor(t, kind),
                Err(()) => return self.malformed(kind),
                _ => {}
            }
        }
    }

    /// A FunctionProto (a model-local function): its nodes and the default
    /// values of its attributes.
    fn function(&mut self, bytes: &[u8]) {
        for item in fields(bytes) {
            match item {
                Err(()) => return self.malformed("function"),
                Ok((7, Field::Bytes(node))) => self.node(node, 1),
                Ok((11, Field::Bytes(attribute))) => self.attribute(attribute, 1),
                _ => {}
            }
        }
    }

    /// A TrainingInfoProto: its initialization and algorithm graphs.
    fn training(&mut self, bytes: &[u8]) {
        for item in fields(bytes) {
            match item {
                Err(()) => return self.malformed("training info"),
                Ok((1 | 2, Field::Bytes(graph))) => self.graph(graph, 1),
                _ => {}
            }
        }
    }

    fn tensor(&mut self, bytes: &[u8], kind: &str) {
        self.tensors += 1;
        let mut name = String::new();
        let mut dims: Vec<i64> = Vec::new();
        let mut external: Vec<(String, String)> = Vec::new();
        for item in fields(bytes) {
            match item {
                Err(()) => return self.malformed(kind),
                Ok((1, Field::Varint(d))) => dims.push(d as i64),
                Ok((1, Field::Bytes(packed))) => {
                    let mut at = 0;
                    while at < packed.len() {
                        match varint(packed, &mut at) {
                            Some(d) => dims.push(d as i64),
                            None => return self.malformed(kind),
                        }
                    }
                }
                Ok((8, Field::Bytes(n))) => name = String::from_utf8_lossy(n).into_owned(),
                Ok((13, Field::Bytes(entry))) => {
                    let (mut key, mut value) = (String::new(), String::new());
                    for inner in fields(entry) {
                        match inner {
                            Ok((1, Field::Bytes(k))) => {
                                key = String::from_utf8_lossy(k).into_owned()
                            }
                            Ok((2, Field::Bytes(v))) => {
                                value = String::from_utf8_lossy(v).into_owned()
                            }
                            Err(()) => return self.malformed(kind),
                            _ => {}
                        }
                    }
                    external.push((key, value));
                }
                _ => {}
            }
        }
        let location = format!("{kind} '{name}'");
        if dims.iter().any(|&d| d < 0) {
            self.flag(
                Severity::High,
                &location,
                format!("negative dimension in {dims:?}"),
            );
        } else {
            let elements = dims
                .iter()
                .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128));
            if elements.is_none_or(|e| e > MAX_ELEMENTS) {
                self.flag(
                    Severity::High,
                    &location,
                    format!("declares an absurd size {dims:?} (more than 2^40 elements)"),
                );
            }
        }
        for (key, value) in &external {
            match key.as_str() {
                "location" => self.external_location(&location, value),
                "offset" | "length" => match value.parse::<u64>() {
                    Ok(v) if v > (1 << 44) => self.flag(
                        Severity::High,
                        &location,
                        format!("external data {key} {v} is absurd (more than 16 TiB)"),
                    ),
                    Ok(_) => {}
                    Err(_) => self.flag(
                        Severity::High,
                        &location,
                        format!("external data {key} '{value}' is not a number"),
                    ),
                },
                _ => {}
            }
        }
    }

    /// External data must stay in the model's directory: no absolute paths, no `..`.
    fn external_location(&mut self, location: &str, value: &str) {
        let path = Path::new(value);
        if crate::escapes_directory(value) {
            self.flag(
                Severity::Critical,
                location,
                format!("external data location '{value}' escapes the model's directory (loading it reads an arbitrary file)"),
            );
            return;
        }
        // A symlink inside the directory can still point out of it.
        if let (Ok(dir), Ok(target)) = (self.dir.canonicalize(), self.dir.join(path).canonicalize())
        {
            if !target.starts_with(&dir) {
                self.flag(
                    Severity::Critical,
                    location,
                    format!(
                        "external data location '{value}' resolves outside the model's directory"
                    ),
                );
            }
        }
    }
}

/// Scan an ONNX model's bytes; `dir` is the model's directory.
pub(crate) fn check(bytes: &[u8], dir: &Path, findings: &mut Vec<Finding>) {
    let mut scan = Scan {
        dir,
        findings: Vec::new(),
        tensors: 0,
    };
    let mut graphs = 0;
    for item in fields(bytes) {
        match item {
            Err(()) => {
                scan.malformed("model");
                break;
            }
            Ok((7, Field::Bytes(graph))) => {
                graphs += 1;
                scan.graph(graph, 0);
            }
            Ok((20, Field::Bytes(training))) => scan.training(training),
            Ok((25, Field::Bytes(function))) => scan.function(function),
            _ => {}
        }
    }
    if graphs == 0 && scan.findings.is_empty() {
        scan.flag(
            Severity::High,
            "model",
            "no graph: not an ONNX model".into(),
        );
    }
    findings.extend(scan.findings);
}

/// Whether `bytes` read as a ModelProto: every top-level field well formed, and
/// a graph among them (whatever order the writer put the fields in).
pub(crate) fn is_model(bytes: &[u8]) -> bool {
    let mut graph = false;
    for item in fields(bytes) {
        match item {
            Err(()) => return false,
            Ok((7, Field::Bytes(_))) => graph = true,
            Ok(_) => {}
        }
    }
    graph
}
