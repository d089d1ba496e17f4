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
    /// An opcode that straddles the end of its `FRAME`, or a `FRAME` opened
    /// inside another: CPython's pickler writes neither, and CPython's file
    /// unpickler then reads the bytes differently from a sequential reader
    /// (it can run opcodes hidden in what looks like a byte string; CPython
    /// issue 154848). No static reading can be trusted.
    pub frame_violation: Option<String>,
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

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
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
        let end = rest.iter().position(|&b| b == b'\n')?;
        self.at += end + 1;
        Some(&rest[..end])
    }
    /// A length-prefixed payload whose length must fit in what is left.
    fn sized(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(width)?).ok()?;
        self.take(len)
    }
    /// [`Reader::sized`], its place recorded as a payload.
    fn payload(&mut self, width: usize, text: bool, out: &mut Walk) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(width)?).ok()?;
        let start = self.at;
        let bytes = self.take(len)?;
        out.payloads.push(Payload {
            range: start..start + len,
            text,
        });
        Some(bytes)
    }
}

fn text(bytes: &[u8]) -> std::rc::Rc<str> {
    std::rc::Rc::from(String::from_utf8_lossy(bytes).as_ref())
}

fn owned(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Walk one pickle starting at the beginning of `bytes`.
pub fn walk(bytes: &[u8]) -> Walk {
    let mut out = Walk::default();
    let mut reader = Reader { bytes, at: 0 };
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
    // Where the current FRAME ends (None outside frames: large objects are
    // legitimately written between frames).
    let mut frame_end: Option<usize> = None;
    loop {
        let start = reader.at;
        if frame_end.is_some_and(|end| start >= end) {
            frame_end = None;
        }
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
                    let s = reader.payload(4, op == b'X', &mut out)?;
                    stack.push(if op == b'X' {
                        Value::Text(text(s))
                    } else {
                        Value::Other
                    });
                }
                b'U' | b'\x8c' => {
                    let s = reader.payload(1, op == b'\x8c', &mut out)?;
                    stack.push(if op == b'\x8c' {
                        Value::Text(text(s))
                    } else {
                        Value::Other
                    });
                }
                b'B' => {
                    reader.payload(4, false, &mut out)?;
                    stack.push(Value::Other);
                }
                b'C' => {
                    reader.payload(1, false, &mut out)?;
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
                    let s = reader.payload(8, true, &mut out)?;
                    stack.push(Value::Text(text(s)));
                }
                b'\x8e' | b'\x96' => {
                    reader.payload(8, false, &mut out)?;
                    stack.push(Value::Other);
                }
                b'\x95' => {
                    let len = reader.uint(8)?;
                    if let Some(end) = frame_end {
                        out.frame_violation.get_or_insert(format!(
                            "a FRAME opens at byte {start}, inside the frame ending at byte {end}"
                        ));
                    }
                    frame_end = Some(
                        reader
                            .at
                            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX)),
                    );
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
        if let Some(end) = frame_end.filter(|&end| op != b'\x95' && reader.at > end) {
            out.frame_violation.get_or_insert(format!(
                "opcode 0x{op:02x} at byte {start} runs past the end of its FRAME at byte {end}"
            ));
        }
        if op == b'.' {
            break;
        }
    }
    out.consumed = reader.at;
    out
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

    #[test]
    fn opcodes_straddling_their_frame_are_violations_and_unframed_data_is_not() {
        let frame = |len: u64| {
            let mut bytes = vec![0x80, 4, 0x95];
            bytes.extend(len.to_le_bytes());
            bytes
        };
        // The frame holds exactly its opcodes; then a payload written outside
        // any frame (as CPython does for large objects).
        let mut fine = frame(1);
        fine.push(b'N');
        fine.extend([b'B', 3, 0, 0, 0]);
        fine.extend(b"abc");
        fine.extend([b'0', b'0', b'.']);
        let fine = walk(&fine);
        assert!(
            fine.frame_violation.is_none() && fine.malformed.is_none(),
            "{fine:?}"
        );
        // BININT1's argument lies past the frame's end.
        let mut straddle = frame(1);
        straddle.extend([b'K', 5, b'.']);
        assert!(walk(&straddle).frame_violation.is_some());
        // A frame opened inside another.
        let mut nested = frame(20);
        nested.push(b'N');
        nested.extend(&frame(1)[2..]);
        nested.extend([b'N', b'.']);
        assert!(walk(&nested).frame_violation.is_some());
    }
}
