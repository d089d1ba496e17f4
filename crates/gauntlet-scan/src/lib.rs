//! Scan model files before anything loads them: PyTorch checkpoints and raw
//! pickles (every imported global listed, dangerous ones flagged, nothing
//! executed — ProtectAI ModelScan's approach), safetensors headers (sizes,
//! dtypes, offsets in bounds, no overlaps, no gaps) and ONNX graphs (external-data
//! locations that escape the model's directory, absurd tensor sizes).
//!
//! ```no_run
//! let report = gauntlet_scan::scan_file(std::path::Path::new("model.pt")).unwrap();
//! if report.worst() >= Some(gauntlet_scan::Severity::High) {
//!     eprintln!("refusing {}: {:?}", report.path, report.findings);
//! }
//! ```

mod onnx;
mod pickle;
mod safetensors;
mod tar;
mod zipdir;

use std::io::Read;
use std::path::Path;

use serde::Serialize;

pub use pickle::{walk, Import, Walk};

/// Errors: the file could not be read at all. (What is wrong *inside* a readable
/// file is a [`Finding`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a format the scanner knows.
    #[error(
        "{path}: not a PyTorch checkpoint, pickle, safetensors or ONNX file (first bytes {head})"
    )]
    UnknownFormat {
        /// The file.
        path: String,
        /// Its first bytes, hex.
        head: String,
    },
}

/// Result with the scan [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How bad a finding is; what a file was scanned as (the record's vocabulary).
pub use gauntlet_record::{ScanFormat, Severity};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Where in the file (an archive member, `header`).
    pub location: String,
    /// What, in one sentence.
    pub message: String,
}

/// The result of scanning one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// The file as given.
    pub path: String,
    /// What the file was scanned as.
    pub format: ScanFormat,
    /// Every global the pickles import, as `module.name` (pickle formats).
    pub imports: Vec<String>,
    /// What is wrong; empty for a clean file.
    pub findings: Vec<Finding>,
    /// The load decision: deny by default. True when any pickle imports
    /// something outside the allow-list of tensor-rebuild callables (whatever
    /// severity a person would give it) or any finding is high or critical.
    pub refuse: bool,
}

impl ScanReport {
    /// What a run record says about the scan of the model it loaded.
    pub fn to_record(&self) -> gauntlet_record::ModelScanRecord {
        gauntlet_record::ModelScanRecord {
            format: self.format,
            worst: self.worst(),
            findings: self
                .findings
                .iter()
                .map(|f| format!("{}: {} ({})", f.severity.as_str(), f.message, f.location))
                .collect(),
            imports: self.imports.clone(),
        }
    }

    /// The most severe finding.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Whether a loader should refuse the file unless told otherwise (see
    /// [`ScanReport::refuse`]).
    pub fn is_dangerous(&self) -> bool {
        self.refuse
    }
}

/// Globals a PyTorch or NumPy checkpoint needs to rebuild tensors: importing them
/// runs no user code.
const ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Size",
    "torch.device",
    "torch.dtype",
    "torch.float32",
    "torch.float16",
    "torch.bfloat16",
    "torch.float64",
    "torch.int64",
    "torch.int32",
    "torch.uint8",
    "torch.bool",
    // `torch.load`s its argument: allowed only because every byte and string
    // payload of a pickle that imports it is scanned as a checkpoint in turn.
    "torch.storage._load_from_bytes",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "builtins.bytearray",
    "__builtin__.set",
    "_codecs.encode",
];

/// Modules (and their submodules) whose import means code execution or I/O.
const CRITICAL_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "runpy",
    "socket",
    "shutil",
    "pty",
    "importlib",
    "pickle",
    "_pickle",
    "dill",
    "marshal",
    "ctypes",
    "multiprocessing",
    "webbrowser",
    "http",
    "urllib",
    "requests",
    "ftplib",
    "smtplib",
    "telnetlib",
    "code",
    "codeop",
    "pdb",
    "bdb",
    "timeit",
    "asyncio",
    "threading",
    "signal",
    "tempfile",
    "pathlib",
    "glob",
    "io",
    "zipimport",
    "platform",
];

/// Builtins that evaluate code or reach arbitrary attributes.
const CRITICAL_BUILTINS: &[&str] = &[
    "eval",
    "exec",
    "compile",
    "__import__",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "apply",
    "execfile",
    "file",
];

/// The allow-list, as `module.name` (besides it, `torch.*Storage` classes
/// and the legacy typed tensor classes such as `torch.FloatTensor`).
pub fn allow_list() -> &'static [&'static str] {
    ALLOWED
}

/// `torch.*Storage`, or a legacy typed tensor class (`torch.FloatTensor`, …,
/// named in old checkpoints' tensor records): classes, not deserialisers.
fn is_torch_storage(module: &str, name: &str) -> bool {
    module == "torch"
        && (name.ends_with("Storage")
            || name
                .strip_suffix("Tensor")
                .is_some_and(|kind| storage_element_size(&format!("{kind}Storage")).is_some()))
}

/// How dangerous importing `module.name` is.
pub fn classify(import: &Import) -> Option<Severity> {
    let full = format!("{}.{}", import.module, import.name);
    if ALLOWED.contains(&full.as_str()) || is_torch_storage(&import.module, &import.name) {
        return None;
    }
    let root = import.module.split('.').next().unwrap_or("");
    if matches!(root, "builtins" | "__builtin__" | "__builtins__")
        && CRITICAL_BUILTINS.contains(&import.name.as_str())
    {
        return Some(Severity::Critical);
    }
    if CRITICAL_MODULES.contains(&root) {
        return Some(Severity::Critical);
    }
    Some(Severity::Medium)
}

fn pickle_findings(location: &str, walk: &Walk, findings: &mut Vec<Finding>) {
    for import in &walk.imports {
        if let Some(severity) = classify(import) {
            findings.push(Finding {
                severity,
                location: location.into(),
                message: match severity {
                    Severity::Critical => format!(
                        "imports {}.{}: loading this file in Python runs code",
                        import.module, import.name
                    ),
                    _ => format!(
                        "imports {}.{}, which is not a tensor-rebuild function on the allow-list",
                        import.module, import.name
                    ),
                },
            });
        }
    }
    if let Some(why) = &walk.frame_violation {
        findings.push(Finding {
            severity: Severity::High,
            location: location.into(),
            message: format!(
                "inconsistent pickle framing ({why}): Python's unpicklers read it in ways no scanner can follow"
            ),
        });
    } else if walk.readings > 1 {
        findings.push(Finding {
            severity: Severity::Low,
            location: location.into(),
            message: format!(
                "reads straddle FRAME ends (no pickler writes that): CPython's unpicklers read it {} ways, and the imports of all of them are checked",
                walk.readings
            ),
        });
    }
    if walk.extension_codes > 0 {
        findings.push(Finding {
            severity: Severity::High,
            location: location.into(),
            message: format!(
                "{} EXT opcode import(s): the callable comes from copyreg's extension registry at load time",
                walk.extension_codes
            ),
        });
    }
    if walk.dynamic_globals > 0 {
        findings.push(Finding {
            severity: Severity::High,
            location: location.into(),
            message: format!(
                "{} STACK_GLOBAL import(s) with computed names: what they import cannot be known without running the pickle",
                walk.dynamic_globals
            ),
        });
    }
    if let Some(why) = &walk.malformed {
        findings.push(Finding {
            severity: Severity::High,
            location: location.into(),
            message: format!("malformed pickle: {why}"),
        });
    }
}

/// The most bytes read from one archive member (a pickle, not tensor data):
/// bounds memory on zip bombs.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// How many checkpoints deep embedded payloads are followed (a payload handed
/// to `torch.storage._load_from_bytes` is itself a checkpoint).
const MAX_DEPTH: usize = 3;

/// Pickles `torch.load` reads from a legacy (non-zip) checkpoint: magic number,
/// protocol, system info, the object, the storage keys; raw storage bytes
/// follow. `pickle.load` reads only the first.
const LEGACY_PICKLES: usize = 5;

/// Scan one file: the format is recognised from its content, not its name.
pub fn scan_file(path: &Path) -> Result<ScanReport> {
    let shown = path.display().to_string();
    let io = |source| Error::Io {
        path: shown.clone(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    // A tar header's magic sits at byte 257.
    let mut head = Vec::with_capacity(512);
    (&mut file).take(512).read_to_end(&mut head).map_err(io)?;
    let got = head.len();
    let head = head.as_slice();
    let header_len = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    let mut report = ScanReport {
        path: shown.clone(),
        // Every branch below that does not return an error sets it.
        format: ScanFormat::Pickle,
        imports: Vec::new(),
        findings: Vec::new(),
        refuse: false,
    };
    // safetensors: an 8-byte header length, then the JSON header's '{'. Checked
    // first: its first byte can look like a pickle opcode.
    if got >= 9 && head[8] == b'{' && header_len.is_some_and(|n| n <= size - 8) {
        report.format = ScanFormat::Safetensors;
        safetensors::check(path, size, &mut report.findings).map_err(io)?;
    } else if head.starts_with(b"PK\x03\x04") {
        report.format = ScanFormat::PytorchZip;
        scan_zip(|| std::fs::File::open(path), size, "", 0, &mut report).map_err(io)?;
    } else if tar::is_tar(head) {
        report.format = ScanFormat::PytorchTar;
        scan_tar(&mut file, size, &mut report);
    } else if head.starts_with(NPY_MAGIC) {
        report.format = ScanFormat::Npy;
        let bytes = read_bounded(path, size).map_err(io)?;
        scan_npy("array", &bytes, 0, &mut report);
    } else if head.first() == Some(&0x08) {
        // ONNX: a ModelProto starts with ir_version (field 1, varint).
        report.format = ScanFormat::Onnx;
        if size > 2 << 30 {
            report.findings.push(Finding {
                severity: Severity::High,
                location: "model".into(),
                message: format!("{size} bytes: larger than protobuf's 2 GiB limit"),
            });
        } else {
            let bytes = std::fs::read(path).map_err(io)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            onnx::check(&bytes, dir, &mut report.findings);
        }
    } else if head.first() == Some(&0x80) || matches!(head.first(), Some(b'(' | b'c' | b'}' | b']'))
    {
        let bytes = read_bounded(path, size).map_err(io)?;
        scan_pickle_file(&bytes, &mut report);
    } else if let Some(bytes) = (size <= MAX_PICKLE_BYTES)
        .then(|| std::fs::read(path))
        .transpose()
        .map_err(io)?
        .filter(|bytes| onnx::is_model(bytes))
    {
        // ONNX whose first field is not ir_version (protobuf allows any order).
        report.format = ScanFormat::Onnx;
        let dir = path.parent().unwrap_or(Path::new("."));
        onnx::check(&bytes, dir, &mut report.findings);
    } else if let Some(bytes) =
        Some(read_bounded(path, size).map_err(io)?).filter(|bytes| walks_as_pickle(bytes))
    {
        // A pickle may start with any opcode (`S`, `V`, `I`, ...): whatever
        // walks as one — it reaches STOP or imports something — is one.
        scan_pickle_file(&bytes, &mut report);
    } else if got >= 9 && head[8] == b'{' {
        // A safetensors header whose length runs past the end of the file.
        report.format = ScanFormat::Safetensors;
        let header_len = header_len.unwrap_or(u64::MAX);
        report
            .findings
            .push(safetensors::header_past_end(header_len, size));
    } else {
        return Err(Error::UnknownFormat {
            path: shown,
            head: head.iter().take(9).map(|b| format!("{b:02x}")).collect(),
        });
    }
    if report.format != ScanFormat::PytorchZip {
        let mut file = std::fs::File::open(path).map_err(io)?;
        scan_zip_view(&mut file, size, &mut report);
    }
    report.imports.sort();
    report.imports.dedup();
    // Medium is given to imports outside the allow-list and to nothing else.
    report.refuse = report.worst() >= Some(Severity::Medium);
    Ok(report)
}

/// A whole file of pickles: one (`pickle`) or a legacy `torch.save` stream.
fn scan_pickle_file(bytes: &[u8], report: &mut ScanReport) {
    let pickles = scan_pickle_stream("", bytes, 0, report);
    report.format = if pickles > 1 {
        ScanFormat::PytorchLegacy
    } else {
        ScanFormat::Pickle
    };
}

/// Whether bytes that no other format claims are a pickle: the walk reaches
/// `STOP`, or imports something before it fails.
fn walks_as_pickle(bytes: &[u8]) -> bool {
    let walk = pickle::walk(bytes);
    (walk.malformed.is_none() && walk.consumed > 1)
        || !walk.imports.is_empty()
        || walk.dynamic_globals > 0
        || walk.extension_codes > 0
}

/// A zip archive as `torch.load` (`.pkl` members are pickles) and `numpy.load`
/// (`.npy` members may hold pickled object arrays) read it; `open` gives a
/// fresh reader over the same bytes. `prefix` names where an embedded archive
/// sits.
fn scan_zip<R: Read + std::io::Seek>(
    open: impl Fn() -> std::io::Result<R>,
    size: u64,
    prefix: &str,
    depth: usize,
    report: &mut ScanReport,
) -> std::io::Result<()> {
    let mut archive = match zip::ZipArchive::new(open()?) {
        Ok(archive) => archive,
        Err(e) => {
            report.findings.push(Finding {
                severity: Severity::High,
                location: format!("{prefix}archive"),
                message: format!("not a readable zip archive: {e}"),
            });
            return Ok(());
        }
    };
    let mut scanned = 0;
    for k in 0..archive.len() {
        let Ok(mut member) = archive.by_index(k) else {
            report.findings.push(Finding {
                severity: Severity::High,
                location: format!("{prefix}archive member {k}"),
                message: "unreadable archive member".into(),
            });
            continue;
        };
        let name = member.name().to_string();
        let npy = name.ends_with(".npy");
        if !name.ends_with(".pkl") && !npy {
            continue;
        }
        let location = format!("{prefix}{name}");
        let mut bytes = Vec::new();
        let read = (&mut member)
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut bytes);
        if read.is_err() || bytes.len() as u64 > MAX_PICKLE_BYTES {
            report.findings.push(Finding {
                severity: Severity::High,
                location,
                message: "pickle member is unreadable or larger than 256 MiB".into(),
            });
            continue;
        }
        if npy {
            scan_npy(&location, &bytes, depth, report);
        } else {
            scan_pickle(&location, &bytes, depth, report);
        }
        scanned += 1;
    }
    scanned += duplicated_and_escaping_members(&mut open()?, size, prefix, depth, report);
    if scanned == 0 && depth == 0 {
        report.findings.push(Finding {
            severity: Severity::Low,
            location: "archive".into(),
            message: "zip archive without a .pkl member: not a PyTorch checkpoint".into(),
        });
    }
    Ok(())
}

/// A file of another format that is also a zip archive: Python's `zipfile`
/// finds an archive by its end record, so data in front of it (a pickle, a
/// safetensors file) does not stop `zipfile`-based loaders from opening it.
/// Its pickle and `.npy` members are scanned too. Only an end record whose
/// directory lists members with valid local headers counts (tensor bytes may
/// contain the 4-byte signature by chance).
fn scan_zip_view<R: Read + std::io::Seek>(file: &mut R, size: u64, report: &mut ScanReport) {
    let Some(entries) = zipdir::entries(file, size) else {
        return;
    };
    if entries.is_empty() || entries.iter().any(|e| zipdir::extent(file, e).is_none()) {
        return;
    }
    report.findings.push(Finding {
        severity: Severity::Low,
        location: "zip view".into(),
        message: format!(
            "also a zip archive of {} member(s) (Python's zipfile opens it): scanned as one too",
            entries.len()
        ),
    });
    let mut budget = MAX_PICKLE_BYTES;
    for entry in &entries {
        let npy = entry.name.ends_with(".npy");
        if !(npy || entry.name.ends_with(".pkl")) || budget == 0 {
            continue;
        }
        let location = format!("zip view: {}", entry.name);
        match zipdir::read(file, entry, budget) {
            Some(bytes) => {
                budget = budget.saturating_sub((bytes.len() as u64).max(1));
                if npy {
                    scan_npy(&location, &bytes, 0, report);
                } else {
                    scan_pickle(&location, &bytes, 0, report);
                }
            }
            None => report.findings.push(Finding {
                severity: Severity::High,
                location,
                message: "unreadable member of the zip view".into(),
            }),
        }
    }
}

/// A legacy tar checkpoint: its `storages`, `tensors` and `pickle` members
/// (every copy of a repeated name), each read as `torch.load`'s legacy reader
/// reads it (see [`scan_tar_records`]).
fn scan_tar(file: &mut std::fs::File, size: u64, report: &mut ScanReport) {
    let Some(members) = tar::members(file, size) else {
        report.findings.push(Finding {
            severity: Severity::High,
            location: "archive".into(),
            message: "malformed tar header".into(),
        });
        return;
    };
    let mut budget = MAX_PICKLE_BYTES;
    for member in members
        .iter()
        .filter(|m| tar::PICKLED.contains(&m.name.trim_start_matches("./")))
    {
        match tar::read(file, member, budget) {
            Some(bytes) if budget > 0 => {
                budget = budget.saturating_sub((bytes.len() as u64).max(1));
                let prefix = format!("{}: ", member.name);
                match member.name.trim_start_matches("./") {
                    "storages" => scan_tar_records(&prefix, &bytes, TarRecords::Storages, report),
                    "tensors" => scan_tar_records(&prefix, &bytes, TarRecords::Tensors, report),
                    _ => {
                        scan_pickle_stream(&prefix, &bytes, 0, report);
                    }
                }
            }
            _ => report.findings.push(Finding {
                severity: Severity::High,
                location: member.name.clone(),
                message: format!(
                    "unreadable, or past the {} MiB read for pickles",
                    MAX_PICKLE_BYTES >> 20
                ),
            }),
        }
    }
    if !members
        .iter()
        .any(|m| m.name.trim_start_matches("./") == "pickle")
    {
        report.findings.push(Finding {
            severity: Severity::Low,
            location: "archive".into(),
            message: "tar archive without a 'pickle' member: not a PyTorch checkpoint".into(),
        });
    }
}

/// The two record layouts of a legacy tar checkpoint's members.
#[derive(Clone, Copy)]
enum TarRecords {
    /// `storages`: a count, then per storage a pickle `(key, location,
    /// storage type)` followed by the storage as `_new_with_file` reads it
    /// (an int64 element count, then the elements).
    Storages,
    /// `tensors`: a count, then per tensor a pickle `(key, storage id, tensor
    /// type)` followed by int32 ndim, 4 padding bytes, ndim int64 sizes, ndim
    /// int64 strides and an int64 storage offset.
    Tensors,
}

/// Bytes per element of a legacy `torch.*Storage` class (`None`: unknown).
fn storage_element_size(name: &str) -> Option<u64> {
    Some(match name.strip_suffix("Storage")? {
        "Double" | "Long" | "ComplexFloat" | "Cdouble" => 8,
        "ComplexDouble" => 16,
        "Float" | "Int" | "QInt32" => 4,
        "Half" | "BFloat16" | "Short" => 2,
        "Char" | "Byte" | "Bool" | "QUInt8" | "QInt8" | "QUInt4x2" | "QUInt2x4" | "Untyped" => 1,
        _ => return None,
    })
}

/// A pickle that is just a non-negative integer (how the legacy writer
/// stores counts): its value and length.
fn counted_pickle(bytes: &[u8]) -> Option<(u64, usize)> {
    let body = match bytes {
        [0x80, _, rest @ ..] => (rest, 2),
        rest => (rest, 0),
    };
    let ((value, width), start) = match body.0 {
        [b'K', v, ..] => ((u64::from(*v), 2), body.1),
        [b'M', a, b, ..] => ((u64::from(u16::from_le_bytes([*a, *b])), 3), body.1),
        [b'J', a, b, c, d, ..] => (
            (u64::try_from(i32::from_le_bytes([*a, *b, *c, *d])).ok()?, 5),
            body.1,
        ),
        _ => return None,
    };
    (bytes.get(start + width) == Some(&b'.')).then_some((value, start + width + 1))
}

/// A legacy tar member as `torch.load` reads it: every pickle in it is
/// scanned, the raw records between them skipped by their own sizes. Where
/// the layout cannot be followed (an unknown storage type, a record past the
/// end), the rest is scanned as a plain pickle stream and a low finding says
/// where reading stopped.
fn scan_tar_records(prefix: &str, bytes: &[u8], kind: TarRecords, report: &mut ScanReport) {
    let stopped = |report: &mut ScanReport, at: usize, why: &str| {
        report.findings.push(Finding {
            severity: Severity::Low,
            location: format!("{prefix}byte {at}"),
            message: format!("cannot follow the legacy records past here ({why})"),
        });
    };
    let Some((count, mut at)) = counted_pickle(bytes) else {
        scan_pickle_stream(prefix, bytes, 0, report);
        return;
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    for record in 0..count {
        if at >= bytes.len() {
            stopped(report, at, &format!("{record} of {count} records present"));
            return;
        }
        let location = format!("{prefix}record {} at byte {at}", record + 1);
        let walk = scan_pickle_walk(&location, &bytes[at..], 0, report, true);
        if walk.malformed.is_some() || walk.consumed == 0 {
            return;
        }
        at += walk.consumed;
        let skip = match kind {
            TarRecords::Storages => {
                let element = walk
                    .imports
                    .iter()
                    .filter(|i| i.module == "torch")
                    .find_map(|i| storage_element_size(&i.name));
                let (Some(element), Some(numel)) = (element, u64_at(at)) else {
                    stopped(report, at, "unknown storage type or no element count");
                    scan_pickle_walk(
                        &format!("{prefix}byte {at}"),
                        &bytes[at..],
                        0,
                        report,
                        false,
                    );
                    return;
                };
                numel.checked_mul(element).and_then(|n| n.checked_add(8))
            }
            TarRecords::Tensors => bytes
                .get(at..at + 4)
                .and_then(|b| u64::try_from(i32::from_le_bytes(b.try_into().ok()?)).ok())
                .and_then(|ndim| ndim.checked_mul(16)?.checked_add(16)),
        };
        match skip
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| at.checked_add(n))
        {
            Some(next) if next <= bytes.len() => at = next,
            _ => {
                stopped(report, at, "a record runs past the end of the member");
                return;
            }
        }
    }
    if let (TarRecords::Storages, true) = (kind, at >= bytes.len()) {
        // torch.load stops at the end of the file, having run nothing more.
        stopped(report, at, "the member ends before its storage views");
        return;
    }
    if let TarRecords::Storages = kind {
        // Then the storage views: one more pickle that torch.load runs.
        let location = format!("{prefix}storage views at byte {at}");
        let walk = scan_pickle_walk(&location, bytes.get(at..).unwrap_or(&[]), 0, report, true);
        if walk.malformed.is_some() {
            return;
        }
        at += walk.consumed;
    }
    if at < bytes.len() {
        // Nothing torch.load reads, but a pickle hidden there is still looked at.
        stopped(report, at, "bytes after the last record");
        scan_pickle_walk(
            &format!("{prefix}byte {at}"),
            &bytes[at..],
            0,
            report,
            false,
        );
    }
}

/// A legacy stream as `torch.load` reads it: up to [`LEGACY_PICKLES`] pickles
/// back to back, whatever opcode each starts with (protocol 0 has no header).
/// Every one is scanned, a malformed one included: the opcodes before the
/// point where loading fails have already run. Returns the whole pickles read.
fn scan_pickle_stream(prefix: &str, bytes: &[u8], depth: usize, report: &mut ScanReport) -> usize {
    let mut offset = 0;
    let (mut read, mut pickles) = (0, 0);
    while offset < bytes.len() && read < LEGACY_PICKLES {
        let location = format!("{prefix}pickle {} at byte {offset}", read + 1);
        let walk = scan_pickle_walk(&location, &bytes[offset..], depth, report, read == 0);
        read += 1;
        if walk.malformed.is_some() || walk.consumed == 0 {
            break;
        }
        pickles += 1;
        offset += walk.consumed;
    }
    pickles
}

/// One pickle: its imports, findings, and the payloads it would deserialise.
fn scan_pickle(location: &str, bytes: &[u8], depth: usize, report: &mut ScanReport) {
    scan_pickle_walk(location, bytes, depth, report, true);
}

/// [`scan_pickle`], returning the walk. A malformed pickle that is not the
/// first of a stream is where loading stops with an error (raw storage bytes
/// after a legacy checkpoint's pickles, say): its imports count, its
/// malformation alone is low.
fn scan_pickle_walk(
    location: &str,
    bytes: &[u8],
    depth: usize,
    report: &mut ScanReport,
    first: bool,
) -> Walk {
    let walk = pickle::walk(bytes);
    let before = report.findings.len();
    pickle_findings(location, &walk, &mut report.findings);
    if !first {
        for finding in &mut report.findings[before..] {
            if finding.message.starts_with("malformed pickle") {
                finding.severity = Severity::Low;
            }
        }
    }
    report.imports.extend(imports_of(&walk));
    let deserialises = walk
        .imports
        .iter()
        .any(|i| i.module == "torch.storage" && i.name == "_load_from_bytes");
    if deserialises {
        for (k, payload) in walk.payloads.iter().enumerate() {
            let Some(raw) = bytes.get(payload.range.clone()) else {
                continue;
            };
            let embedded: std::borrow::Cow<[u8]> = if payload.text {
                // Latin-1 back to bytes; a string with wider characters cannot
                // be such a payload.
                let text = String::from_utf8_lossy(raw);
                match text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect()
                {
                    Some(bytes) => std::borrow::Cow::Owned(bytes),
                    None => continue,
                }
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            scan_embedded(
                &format!("{location} payload {}: ", k + 1),
                &embedded,
                depth + 1,
                report,
            );
        }
    }
    walk
}

/// Bytes that `torch.load` would be handed: a zip checkpoint or a legacy
/// stream. Short payloads (names, dtypes) are skipped: no pickle that imports
/// anything is under 8 bytes.
fn scan_embedded(prefix: &str, bytes: &[u8], depth: usize, report: &mut ScanReport) {
    if bytes.len() < 8 {
        return;
    }
    if depth > MAX_DEPTH {
        report.findings.push(Finding {
            severity: Severity::High,
            location: prefix.trim_end_matches(": ").into(),
            message: format!("checkpoints nested more than {MAX_DEPTH} deep"),
        });
        return;
    }
    if bytes.starts_with(b"PK\x03\x04") {
        let open = || Ok::<_, std::io::Error>(std::io::Cursor::new(bytes));
        // Reading from memory cannot fail.
        let _ = scan_zip(open, bytes.len() as u64, prefix, depth, report);
    } else {
        scan_pickle_stream(prefix, bytes, depth, report);
    }
}

/// `.npy` magic.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// A `.npy` array: with an object dtype its data is a pickle (what
/// `numpy.load(..., allow_pickle=True)` unpickles).
fn scan_npy(location: &str, bytes: &[u8], depth: usize, report: &mut ScanReport) {
    let header = (|| {
        let major = *bytes.get(6)?;
        let (len, start): (usize, usize) = if major == 1 {
            (
                usize::from(u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?)),
                10,
            )
        } else {
            let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
            (usize::try_from(len).ok()?, 12)
        };
        let end = start.checked_add(len)?;
        Some((bytes.get(start..end)?, end))
    })();
    let Some((header, data_start)) = header else {
        report.findings.push(Finding {
            severity: Severity::High,
            location: location.into(),
            message: "malformed .npy header".into(),
        });
        return;
    };
    if npy_has_objects(&String::from_utf8_lossy(header)) {
        scan_pickle(
            &format!("{location} (object array)"),
            &bytes[data_start..],
            depth,
            report,
        );
    }
}

/// Whether a `.npy` header's `descr` holds an object type (`O`, `|O`, `<O8`,
/// or such a field of a structured dtype): the quoted type codes are checked,
/// not field names.
fn npy_has_objects(header: &str) -> bool {
    let Some(descr) = header.split("'descr':").nth(1) else {
        return true;
    };
    let descr = descr.split("'fortran_order'").next().unwrap_or(descr);
    let descr = descr.split("'shape'").next().unwrap_or(descr);
    // Quoted strings alternate with what lies between them; a quoted string
    // right after `(` is a field name, any other one a type code.
    let parts: Vec<&str> = descr.split(['\'', '"']).collect();
    parts
        .iter()
        .enumerate()
        .skip(1)
        .step_by(2)
        .any(|(k, quoted)| {
            let name = parts[k - 1].trim_end().ends_with('(');
            let code = quoted.trim_start_matches(['<', '>', '|', '=']);
            !name
                && code
                    .strip_prefix('O')
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
        })
}

/// Findings from the archive's own central directory (the `zip` crate shows one
/// member per name): names that escape the extraction directory, and names held
/// by more than one member — every copy of such a pickle is scanned, since the
/// loaders disagree on which copy they read. Returns the pickles scanned.
fn duplicated_and_escaping_members<R: Read + std::io::Seek>(
    file: &mut R,
    size: u64,
    prefix: &str,
    depth: usize,
    report: &mut ScanReport,
) -> usize {
    let Some(entries) = zipdir::entries(file, size) else {
        return 0;
    };
    let mut scanned = 0;
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for entry in &entries {
        *seen.entry(entry.name.as_str()).or_default() += 1;
        if escapes_directory(&entry.name) {
            report.findings.push(Finding {
                severity: Severity::High,
                location: format!("{prefix}{}", entry.name),
                message: "member name escapes the archive's directory (absolute or '..')".into(),
            });
        }
    }
    let mut duplicated: Vec<(&str, usize)> = seen.into_iter().filter(|&(_, n)| n > 1).collect();
    duplicated.sort();
    // All copies together are read within one member's budget: thousands of
    // copies of a compressed bomb must not multiply the work.
    let mut budget = MAX_PICKLE_BYTES;
    for (name, copies) in duplicated {
        report.findings.push(Finding {
            severity: Severity::High,
            location: format!("{prefix}{name}"),
            message: format!(
                "{copies} members share this name: loaders differ on which one they read"
            ),
        });
        if !name.ends_with(".pkl") {
            continue;
        }
        for (copy, entry) in entries.iter().filter(|e| e.name == name).enumerate() {
            let location = format!("{prefix}{name} (copy {})", copy + 1);
            if budget == 0 {
                report.findings.push(Finding {
                    severity: Severity::High,
                    location,
                    message: format!(
                        "duplicated pickle members exceed {} MiB together: the rest were not scanned",
                        MAX_PICKLE_BYTES >> 20
                    ),
                });
                break;
            }
            match zipdir::read(file, entry, budget) {
                Some(bytes) => {
                    budget = budget.saturating_sub((bytes.len() as u64).max(1));
                    scan_pickle(&location, &bytes, depth, report);
                    scanned += 1;
                }
                None => report.findings.push(Finding {
                    severity: Severity::High,
                    location,
                    message: "unreadable copy of a duplicated pickle member".into(),
                }),
            }
        }
    }
    scanned += overlapping_and_hidden_members(file, size, &entries, prefix, depth, budget, report);
    scanned
}

/// Members whose bytes overlap another's (a reader trusting one header sees
/// other data than one trusting the next; overlapping members are also how
/// zip bombs multiply their output), and members that only a streaming reader
/// finds: local headers walked from the start of the file that the central
/// directory does not list. Both are high; hidden pickles are scanned within
/// what is left of `budget`. Returns the pickles scanned.
fn overlapping_and_hidden_members<R: Read + std::io::Seek>(
    file: &mut R,
    size: u64,
    entries: &[zipdir::Entry],
    prefix: &str,
    depth: usize,
    mut budget: u64,
    report: &mut ScanReport,
) -> usize {
    let mut extents: Vec<(u64, u64, &str)> = entries
        .iter()
        .filter_map(|e| Some((e.offset(), zipdir::extent(file, e)?, e.name.as_str())))
        .collect();
    extents.sort_unstable();
    let overlaps: Vec<(&str, &str)> = extents
        .windows(2)
        .filter(|pair| pair[1].0 < pair[0].1)
        .map(|pair| (pair[0].2, pair[1].2))
        .collect();
    if let Some(&(first, second)) = overlaps.first() {
        report.findings.push(Finding {
            severity: Severity::High,
            location: format!("{prefix}{second}"),
            message: format!(
                "member's bytes overlap those of {first} ({} overlapping pair(s) in the archive)",
                overlaps.len()
            ),
        });
    }
    let listed: std::collections::HashSet<u64> = entries.iter().map(|e| e.offset()).collect();
    let mut scanned = 0;
    for entry in zipdir::local_entries(file, size) {
        if listed.contains(&entry.offset()) {
            continue;
        }
        let location = format!("{prefix}{} (at byte {})", entry.name, entry.offset());
        report.findings.push(Finding {
            severity: Severity::High,
            location: location.clone(),
            message: "member missing from the central directory: streaming readers see it, zipfile and torch.load do not".into(),
        });
        if entry.name.ends_with(".pkl") && budget > 0 {
            if let Some(bytes) = zipdir::read(file, &entry, budget) {
                budget = budget.saturating_sub((bytes.len() as u64).max(1));
                scan_pickle(&location, &bytes, depth, report);
                scanned += 1;
            }
        }
    }
    scanned
}

/// Whether a relative path from a model file (an archive member's name, an ONNX
/// external-data location) would reach outside the directory it is resolved
/// against: absolute on any platform, a drive letter, or a `..` component.
fn escapes_directory(name: &str) -> bool {
    Path::new(name).is_absolute()
        || name.starts_with(['/', '\\'])
        || name.as_bytes().get(1) == Some(&b':')
        || name.split(['/', '\\']).any(|part| part == "..")
}

fn imports_of(walk: &Walk) -> Vec<String> {
    walk.imports
        .iter()
        .map(|i| format!("{}.{}", i.module, i.name))
        .collect()
}

fn read_bounded(path: &Path, size: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size.min(MAX_PICKLE_BYTES) as usize);
    std::fs::File::open(path)?
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
