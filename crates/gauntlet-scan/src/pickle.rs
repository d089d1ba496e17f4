//! Walk pickle opcodes (protocols 0–5) without executing anything, listing every
//! global the pickle would import — what `pickle.load` would call.

/// A global the pickle imports (`GLOBAL`, `INST` or `STACK_GLOBAL`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Import {
    /// Module, e.g. `torch._utils`.
    pub module: String,
    /// Name in the module, e.g. `_rebuild_tensor_v2`.
    pub name: String,
}

/// What the walk found: imports, and anything that stopped it early.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Walk {
    /// Every import, in order of appearance (duplicates kept once).
    pub imports: Vec<Import>,
    /// `STACK_GLOBAL`s whose module or name are not constants (they are
    /// computed at load time, which no scanner can check).
    pub dynamic_globals: usize,
    /// Why the walk could not finish (truncated, unknown opcode), if it did not.
    pub malformed: Option<String>,
    /// Bytes consumed (the pickle ends at its `STOP`).
    pub consumed: usize,
    /// Why this pickle's readings could not all be checked, if they could
    /// not: CPython's unpicklers disagree on a read that straddles the end of
    /// its `FRAME` (see [`walk`]); when a pickle has more such reads than
    /// [`MAX_READINGS`] allows to follow, or its readings end at different
    /// bytes, no static reading can be trusted.
    pub frame_violation: Option<String>,
    /// How many readings of the pickle were walked: 1 for every pickle a
    /// pickler writes; more when reads straddle frame ends (all of them are
    /// in `imports`).
    pub readings: usize,
    /// `EXT1`/`EXT2`/`EXT4` opcodes: imports named by a number that
    /// `copyreg`'s extension registry resolves at load time.
    pub extension_codes: usize,
    /// Where the pickle's byte and string payloads lie (what a deserialising
    /// callable such as `torch.storage._load_from_bytes` would be handed).
    pub payloads: Vec<Payload>,
}

/// A byte or string argument inside a pickle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Its bytes in the pickle.
    pub range: std::ops::Range<usize>,
    /// A string (UTF-8 in the pickle; Python 2 era checkpoints hand bytes
    /// over as Latin-1 text through `_codecs.encode`) rather than bytes.
    pub text: bool,
}

/// Values the walk tracks: enough to resolve `STACK_GLOBAL` operands.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    /// Shared, so `DUP` and memo reads of a long string copy a pointer, not
    /// the string (a pickle of a few MB could otherwise ask for gigabytes).
    Text(std::rc::Rc<str>),
    Mark,
    Other,
}

/// The most readings [`walk`] follows before giving up on a pickle whose
/// frames are inconsistent (each straddling read doubles them).
pub const MAX_READINGS: usize = 32;

/// A cursor over the pickle that reads as CPython's C unpickler does at frame
/// boundaries. Inside a `FRAME` the unpickler holds the frame in a buffer.
/// A read that runs past the buffer's end goes back to the file, and what it
/// gets depends on the source: `pickle.loads` and a file whose buffer happens
/// to hold more bytes read on as if there were no frame ("flat"); a file
/// without `peek` (the `io.BytesIO` that `torch.load` hands each zip member
/// to) drops the rest of the frame and reads from the frame's end
/// ("discard"). Counted byte payloads (`BINBYTES`, `BYTEARRAY8`) always read
/// flat (`readinto`). The pure-Python unpickler raises instead, which is a
/// prefix of either. Each straddling read is a choice, taken from `choices`
/// (flat when absent) and counted in `straddles`.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the current frame's buffer ends.
    frame_end: Option<usize>,
    /// `true` at index k: the k-th straddling read discards.
    choices: &'a [bool],
    straddles: usize,
}

impl<'a> Reader<'a> {
    /// At a read that straddles the frame end: the next choice, and the
    /// frame is over either way.
    fn straddle(&mut self, reaches: usize) -> bool {
        let Some(end) = self.frame_end else {
            return false;
        };
        if self.at >= end || reaches <= end {
            return false;
        }
        let discard = self.choices.get(self.straddles).copied().unwrap_or(false);
        self.straddles += 1;
        self.frame_end = None;
        if discard {
            self.at = end;
        }
        discard
    }
    fn leave_finished_frame(&mut self) {
        if self.frame_end.is_some_and(|end| self.at >= end) {
            self.frame_end = None;
        }
    }
    /// Take `n` bytes without a frame check.
    fn raw(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    /// A fixed-size read (CPython's `_Unpickler_Read`).
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        self.straddle(self.at.saturating_add(n));
        let slice = self.raw(n)?;
        self.leave_finished_frame();
        Some(slice)
    }
    /// A counted byte payload (CPython's `_Unpickler_ReadInto`): always flat.
    fn take_into(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.raw(n)?;
        self.leave_finished_frame();
        Some(slice)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn uint(&mut self, width: usize) -> Option<u64> {
        let b = self.take(width)?;
        let mut value = 0u64;
        for (k, &byte) in b.iter().enumerate() {
            value |= u64::from(byte) << (8 * k);
        }
        Some(value)
    }
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes.get(self.at..)?;
        let newline = rest.iter().position(|&b| b == b'\n');
        // A line whose newline is not in the frame's buffer straddles it
        // (a missing newline reads up to the end of the data).
        let reaches = newline.map_or(usize::MAX, |n| self.at + n + 1);
        let newline = if self.straddle(reaches) {
            self.bytes.get(self.at..)?.iter().position(|&b| b == b'\n')
        } else {
            newline
        };
        let start = self.at;
        let end = start + newline?;
        self.at = end + 1;
        self.leave_finished_frame();
        Some(&self.bytes[start..end])
    }
    /// A length-prefixed string or integer (read with `_Unpickler_Read`).
    fn sized(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(width)?).ok()?;
        self.take(len)
    }
    /// A length-prefixed argument, its place recorded as a payload; `into`
    /// for the counted byte opcodes CPython reads with `readinto`.
    fn payload(
        &mut self,
        width: usize,
        text: bool,
        into: bool,
        out: &mut Walk,
    ) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(width)?).ok()?;
        let bytes = if into {
            self.take_into(len)?
        } else {
            self.take(len)?
        };
        let start = self.at - len;
        out.payloads.push(Payload {
            range: start..start + len,
            text,
        });
        Some(bytes)
    }
    /// A `FRAME` of `len` bytes: one nested in a buffer that still holds it
    /// changes nothing; one that does not fit straddles.
    fn frame(&mut self, len: u64) -> Option<()> {
        let len = usize::try_from(len).ok()?;
        match self.frame_end {
            Some(outer) if self.at < outer && self.at.checked_add(len)? <= outer => {}
            _ => {
                self.straddle(self.at.checked_add(len)?);
                let end = self.at.checked_add(len)?;
                // The unpickler reads the whole frame before running it.
                self.bytes.get(self.at..end)?;
                self.frame_end = Some(end);
            }
        }
        Some(())
    }
}

fn text(bytes: &[u8]) -> std::rc::Rc<str> {
    std::rc::Rc::from(String::from_utf8_lossy(bytes).as_ref())
}

fn owned(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Walk one pickle starting at the beginning of `bytes`, every way CPython's
/// unpicklers can read it: a pickle whose reads straddle its frame ends is
/// read once per combination of choices at those reads (up to
/// [`MAX_READINGS`]), and the imports of every reading are reported.
pub fn walk(bytes: &[u8]) -> Walk {
    let (mut merged, straddles) = walk_reading(bytes, &[]);
    // Each further reading discards at one straddle more than a reading
    // already walked, after that reading's own choices.
    let mut pending: Vec<(Vec<bool>, usize)> = vec![(Vec::new(), straddles)];
    let mut seen = merged
        .imports
        .iter()
        .cloned()
        .collect::<std::collections::HashSet<_>>();
    merged.readings = 1;
    while let Some((choices, straddles)) = pending.pop() {
        for k in choices.len()..straddles {
            if merged.readings == MAX_READINGS {
                merged
                    .frame_violation
                    .get_or_insert(format!("more than {MAX_READINGS} ways to read its frames"));
                return merged;
            }
            let mut next = choices.clone();
            next.resize(k, false);
            next.push(true);
            let (reading, straddles) = walk_reading(bytes, &next);
            merged.readings += 1;
            if reading.consumed != merged.consumed {
                merged.frame_violation.get_or_insert(format!(
                    "it ends at byte {} or at byte {} depending on how its frames are read",
                    merged.consumed, reading.consumed
                ));
            }
            for import in reading.imports {
                if seen.insert(import.clone()) {
                    merged.imports.push(import);
                }
            }
            merged.dynamic_globals = merged.dynamic_globals.max(reading.dynamic_globals);
            merged.extension_codes = merged.extension_codes.max(reading.extension_codes);
            for payload in reading.payloads {
                if !merged.payloads.contains(&payload) {
                    merged.payloads.push(payload);
                }
            }
            pending.push((next, straddles));
        }
    }
    merged
}

/// One reading of the pickle: the walk, and how many straddling reads it met.
fn walk_reading(bytes: &[u8], choices: &[bool]) -> (Walk, usize) {
    let mut out = Walk::default();
    let mut reader = Reader {
        bytes,
        at: 0,
        frame_end: None,
        choices,
        straddles: 0,
    };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u64, Value> = std::collections::HashMap::new();
    // Imports seen, so that a pickle of a million GLOBALs is checked in
    // linear time.
    let mut seen = std::collections::HashSet::new();
    let mut add = |out: &mut Walk, module: String, name: String| {
        let import = Import { module, name };
        if seen.insert(import.clone()) {
            out.imports.push(import);
        }
    };
    // Pop to the last mark (the mark included).
    fn pop_mark(stack: &mut Vec<Value>) {
        while let Some(v) = stack.pop() {
            if v == Value::Mark {
                break;
            }
        }
    }
    loop {
        let start = reader.at;
        let Some(op) = reader.byte() else {
            out.malformed = Some(format!("truncated: no STOP opcode by byte {start}"));
            break;
        };
        let ok: Option<()> = (|| {
            match op {
                b'.' => {}
                b'(' => stack.push(Value::Mark),
                b'0' => {
                    stack.pop();
                }
                b'1' => pop_mark(&mut stack),
                b'2' => {
                    let top = stack.last().cloned().unwrap_or(Value::Other);
                    stack.push(top);
                }
                // Newline-terminated arguments.
                b'F' | b'I' | b'L' | b'P' => {
                    reader.line()?;
                    stack.push(Value::Other);
                }
                b'S' | b'V' => {
                    let raw = reader.line()?;
                    let trimmed = raw
                        .strip_prefix(b"'")
                        .and_then(|r| r.strip_suffix(b"'"))
                        .or_else(|| raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")))
                        .unwrap_or(raw);
                    stack.push(Value::Text(text(trimmed)));
                }
                b'c' | b'i' => {
                    let module = owned(reader.line()?);
                    let name = owned(reader.line()?);
                    if op == b'i' {
                        pop_mark(&mut stack);
                    }
                    add(&mut out, module, name);
                    stack.push(Value::Other);
                }
                b'J' => {
                    reader.take(4)?;
                    stack.push(Value::Other);
                }
                b'K' => {
                    reader.take(1)?;
                    stack.push(Value::Other);
                }
                b'M' => {
                    reader.take(2)?;
                    stack.push(Value::Other);
                }
                b'G' => {
                    reader.take(8)?;
                    stack.push(Value::Other);
                }
                b'N' | b'\x88' | b'\x89' | b')' | b']' | b'}' | b'\x8f' => stack.push(Value::Other),
                // BINSTRING/SHORT_BINSTRING are Python 2 byte strings.
                b'T' | b'X' => {
                    let s = reader.payload(4, op == b'X', false, &mut out)?;
                    stack.push(if op == b'X' {
                        Value::Text(text(s))
                    } else {
                        Value::Other
                    });
                }
                b'U' | b'\x8c' => {
                    let s = reader.payload(1, op == b'\x8c', false, &mut out)?;
                    stack.push(if op == b'\x8c' {
                        Value::Text(text(s))
                    } else {
                        Value::Other
                    });
                }
                b'B' => {
                    reader.payload(4, false, true, &mut out)?;
                    stack.push(Value::Other);
                }
                b'C' => {
                    reader.payload(1, false, true, &mut out)?;
                    stack.push(Value::Other);
                }
                b'\x8a' => {
                    reader.sized(1)?;
                    stack.push(Value::Other);
                }
                b'\x8b' => {
                    reader.sized(4)?;
                    stack.push(Value::Other);
                }
                b'\x8d' => {
                    let s = reader.payload(8, true, false, &mut out)?;
                    stack.push(Value::Text(text(s)));
                }
                b'\x8e' | b'\x96' => {
                    reader.payload(8, false, true, &mut out)?;
                    stack.push(Value::Other);
                }
                b'\x95' => {
                    let len = reader.uint(8)?;
                    reader.frame(len)?;
                }
                b'\x80' => {
                    reader.take(1)?;
                }
                // EXT1/2/4: a global named by its extension code.
                b'\x82' | b'\x83' | b'\x84' => {
                    reader.take(match op {
                        b'\x82' => 1,
                        b'\x83' => 2,
                        _ => 4,
                    })?;
                    out.extension_codes += 1;
                    stack.push(Value::Other);
                }
                // Memo.
                b'p' => {
                    let key = owned(reader.line()?).trim().parse::<u64>().ok()?;
                    memo.insert(key, stack.last().cloned().unwrap_or(Value::Other));
                }
                b'q' | b'r' => {
                    let key = reader.uint(if op == b'q' { 1 } else { 4 })?;
                    memo.insert(key, stack.last().cloned().unwrap_or(Value::Other));
                }
                b'\x94' => {
                    let key = memo.len() as u64;
                    memo.insert(key, stack.last().cloned().unwrap_or(Value::Other));
                }
                b'g' => {
                    let key = owned(reader.line()?).trim().parse::<u64>().ok()?;
                    stack.push(memo.get(&key).cloned().unwrap_or(Value::Other));
                }
                b'h' | b'j' => {
                    let key = reader.uint(if op == b'h' { 1 } else { 4 })?;
                    stack.push(memo.get(&key).cloned().unwrap_or(Value::Other));
                }
                b'\x93' => {
                    let name = stack.pop();
                    let module = stack.pop();
                    match (module, name) {
                        (Some(Value::Text(module)), Some(Value::Text(name))) => {
                            add(&mut out, module.to_string(), name.to_string())
                        }
                        _ => out.dynamic_globals += 1,
                    }
                    stack.push(Value::Other);
                }
                // Stack shuffling without arguments: collapse to one opaque value.
                b't' | b'l' | b'd' | b'\x91' => {
                    pop_mark(&mut stack);
                    stack.push(Value::Other);
                }
                b'e' | b'u' | b'\x90' => pop_mark(&mut stack),
                b'o' => {
                    pop_mark(&mut stack);
                    stack.push(Value::Other);
                }
                b'a' | b's' | b'b' => {
                    let n = if op == b's' { 2 } else { 1 };
                    for _ in 0..n {
                        stack.pop();
                    }
                }
                b'R' | b'\x81' => {
                    stack.pop();
                    stack.pop();
                    stack.push(Value::Other);
                }
                b'\x92' => {
                    stack.pop();
                    stack.pop();
                    stack.pop();
                    stack.push(Value::Other);
                }
                b'Q' => {
                    stack.pop();
                    stack.push(Value::Other);
                }
                b'\x85' => {
                    stack.pop();
                    stack.push(Value::Other);
                }
                b'\x86' | b'\x87' => {
                    let n = if op == b'\x86' { 2 } else { 3 };
                    for _ in 0..n {
                        stack.pop();
                    }
                    stack.push(Value::Other);
                }
                b'\x97' => stack.push(Value::Other),
                b'\x98' => {}
                _ => return None,
            }
            Some(())
        })();
        if ok.is_none() {
            out.malformed = Some(format!(
                "opcode 0x{op:02x} at byte {start} is unknown or its argument runs past the end"
            ));
            break;
        }
        if op == b'.' {
            break;
        }
    }
    out.consumed = reader.at;
    (out, reader.straddles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(walk: &Walk) -> Vec<String> {
        walk.imports
            .iter()
            .map(|i| format!("{}.{}", i.module, i.name))
            .collect()
    }

    #[test]
    fn protocol_0_global_and_reduce() {
        // pickle.dumps of a __reduce__ returning (os.system, ('echo hi',)), protocol 0.
        let bytes = b"cposix\nsystem\np0\n(Vecho hi\np1\ntp2\nRp3\n.";
        let walk = walk(bytes);
        assert_eq!(imports(&walk), ["posix.system"]);
        assert!(walk.malformed.is_none());
        assert_eq!(walk.consumed, bytes.len());
    }

    #[test]
    fn protocol_4_stack_global_through_the_memo() {
        // \x80\x04 FRAME, SHORT_BINUNICODE 'builtins' MEMOIZE, SHORT_BINUNICODE 'eval'
        // MEMOIZE, STACK_GLOBAL, ... then the same global again via BINGET.
        let mut bytes = vec![0x80, 4, 0x95];
        bytes.extend(0u64.to_le_bytes());
        bytes.extend([0x8c, 8]);
        bytes.extend(b"builtins");
        bytes.push(0x94);
        bytes.extend([0x8c, 4]);
        bytes.extend(b"eval");
        bytes.push(0x94);
        bytes.push(0x93);
        bytes.extend([b'h', 0, b'h', 1, 0x93]);
        bytes.extend([0x8c, 1, b'x', 0x85, b'R', b'.']);
        let walk = walk(&bytes);
        assert_eq!(imports(&walk), ["builtins.eval"]);
        assert_eq!(walk.dynamic_globals, 0);
    }

    #[test]
    fn truncated_and_unknown_opcodes_are_reported() {
        assert!(walk(b"cos\nsys").malformed.is_some());
        assert!(walk(b"\xff").malformed.is_some());
        assert!(
            walk(b"X\xff\xff\xff\x7f").malformed.is_some(),
            "a length past the end"
        );
        assert!(walk(b"").malformed.is_some());
    }

    fn framed(len: u64, rest: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x80, 4, 0x95];
        bytes.extend(len.to_le_bytes());
        bytes.extend(rest);
        bytes
    }

    #[test]
    fn consistent_frames_and_unframed_data_have_one_reading() {
        // The frame holds exactly its opcodes; then a payload written outside
        // any frame (as CPython does for large objects).
        let fine = walk(&framed(1, b"NB\x03\x00\x00\x00abc00."));
        assert!(
            fine.frame_violation.is_none() && fine.malformed.is_none(),
            "{fine:?}"
        );
        assert_eq!(fine.readings, 1);
        // An argument that starts where its frame ends is read from the
        // file by every unpickler: no straddle.
        assert_eq!(walk(&framed(1, b"K\x05.")).readings, 1);
        // A frame nested in a buffer that still holds it.
        let mut nested = framed(12, b"N");
        nested.extend(&framed(1, b"N0.")[2..]);
        let nested = walk(&nested);
        assert_eq!((nested.readings, nested.malformed), (1, None));
    }

    #[test]
    fn a_read_straddling_its_frame_is_read_both_ways() {
        // CPython's io.BytesIO reading drops "mac" and imports os.system;
        // pickle.loads imports macos.system (fickling's straddle variant).
        let line = walk(&framed(4, b"cmacos\nsystem\n."));
        assert_eq!(line.readings, 2);
        assert_eq!(imports(&line), ["macos.system", "os.system"]);
        // A BINBYTES length split by the frame end: read flat, the bytes
        // swallow a GLOBAL; read as BytesIO does, the length is 1 and the
        // GLOBAL runs (fickling's frame-boundary divergence).
        let mut swallowed = b"B\x07\x01\x00\x00\x00xcos\nsystem\n0".to_vec();
        swallowed.extend([b'N'; 249]);
        swallowed.push(b'.');
        let hidden = walk(&framed(2, &swallowed));
        assert_eq!(imports(&hidden), ["os.system"]);
        assert_eq!((hidden.readings, hidden.frame_violation), (2, None));
        // The byte payload itself reads flat (readinto): no choice there.
        assert_eq!(
            walk(&framed(5, b"B\x14\x00\x00\x00AAAAAAAAAAAAAAAAAAAA.")).readings,
            1
        );
    }

    #[test]
    fn too_many_straddles_or_diverging_ends_cannot_be_trusted() {
        // Six straddling lines: 64 readings.
        let mut many = vec![0x80, 4];
        for _ in 0..6 {
            many.push(0x95);
            many.extend(2u64.to_le_bytes());
            many.extend(b"Vab\n0");
        }
        many.push(b'.');
        let many = walk(&many);
        assert_eq!(many.readings, MAX_READINGS);
        assert!(many.frame_violation.is_some());
        // Readings that end at different bytes (a stream's next pickle would
        // start at either).
        let diverging = walk(&framed(2, b"B\x07\x01\x00\x00\x00x."));
        assert!(diverging.frame_violation.is_some(), "{diverging:?}");
    }
}
