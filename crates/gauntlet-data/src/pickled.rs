//! A restricted unpickler for NumPy data pickles (CIFAR's python batches):
//! it builds dicts, lists, strings and `uint8`/integer arrays, and nothing
//! else. The only callables it accepts are NumPy's array reconstruction
//! functions and `_codecs.encode` (how Python 3 pickles bytes at protocol 2),
//! each evaluated here by Rust code; any other import refuses the file with
//! the import named, without running anything.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::error::format_err;
use crate::Result;

/// A value the unpickler can build.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A text string.
    Str(Rc<str>),
    /// A byte string (also Python 2 `str`, read as `encoding="bytes"`).
    Bytes(Rc<Vec<u8>>),
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A NumPy array.
    Array(Array),
    /// A NumPy dtype (its type string, e.g. `u1`, `<i8`).
    Dtype(String),
    /// An allowed callable.
    Callable(Callable),
}

/// The callables the unpickler evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callable {
    /// `numpy.core.multiarray._reconstruct` (`numpy._core` in NumPy 2).
    Reconstruct,
    /// `numpy.ndarray` (the class handed to `_reconstruct`).
    Ndarray,
    /// `numpy.dtype`.
    Dtype,
    /// `numpy.core.numeric._frombuffer` (protocol 5 arrays).
    FromBuffer,
    /// `_codecs.encode` (bytes at protocol 2 under Python 3).
    CodecsEncode,
}

/// The imports the unpickler accepts: `module.name` and what it builds.
pub const ALLOWED: [(&str, Callable); 9] = [
    ("numpy.core.multiarray._reconstruct", Callable::Reconstruct),
    ("numpy._core.multiarray._reconstruct", Callable::Reconstruct),
    ("numpy.ndarray", Callable::Ndarray),
    ("numpy.dtype", Callable::Dtype),
    ("numpy.core.numeric._frombuffer", Callable::FromBuffer),
    ("numpy._core.numeric._frombuffer", Callable::FromBuffer),
    ("_codecs.encode", Callable::CodecsEncode),
    // Python 2 pickles name the codec module this way too.
    ("codecs.encode", Callable::CodecsEncode),
    (
        "numpy.core._multiarray_umath._reconstruct",
        Callable::Reconstruct,
    ),
];

/// A NumPy array: shape, dtype and its raw bytes (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Type string (`u1`, `<i8`, ...).
    pub dtype: String,
    /// The bytes, `product(shape) × itemsize` of them once built.
    pub data: Rc<Vec<u8>>,
    /// Stored in Fortran order.
    pub fortran: bool,
}

impl Array {
    /// Element size for the integer dtypes the loaders use.
    pub fn item_size(&self) -> Option<usize> {
        let code = self.dtype.trim_start_matches(['<', '>', '|', '=']);
        match code {
            "u1" | "i1" | "b1" => Some(1),
            "u2" | "i2" => Some(2),
            "u4" | "i4" => Some(4),
            "u8" | "i8" => Some(8),
            _ => None,
        }
    }

    /// The elements as integers (little-endian integer dtypes only).
    pub fn integers(&self) -> Option<Vec<i64>> {
        let size = self.item_size()?;
        if self.dtype.starts_with('>') && size > 1 {
            return None;
        }
        let signed = self.dtype.contains('i');
        Some(
            self.data
                .chunks_exact(size)
                .map(|b| {
                    let mut raw = [0u8; 8];
                    raw[..size].copy_from_slice(b);
                    let value = u64::from_le_bytes(raw);
                    if signed && size < 8 {
                        let shift = 64 - 8 * size as u32;
                        ((value << shift) as i64) >> shift
                    } else {
                        value as i64
                    }
                })
                .collect(),
        )
    }
}

impl Value {
    /// The value under `key` (text or bytes) in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else {
            return None;
        };
        items.iter().find_map(|(k, v)| match k {
            Value::Str(s) if &**s == key => Some(v),
            Value::Bytes(b) if b.as_slice() == key.as_bytes() => Some(v),
            _ => None,
        })
    }
}

/// How deep containers may nest: a CIFAR batch is a dict of lists (depth 2);
/// deeper nesting could only exhaust the stack when the value is dropped.
const MAX_NESTING: usize = 32;

/// How deeply `value` nests containers, counting up to [`MAX_NESTING`] + 1.
fn nesting(value: &Value) -> usize {
    fn walk(value: &Value, depth: usize) -> usize {
        if depth > MAX_NESTING {
            return depth;
        }
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::List(items) | Value::Tuple(items) => Box::new(items.iter()),
            Value::Dict(items) => Box::new(items.iter().flat_map(|(k, v)| [k, v])),
            _ => return depth,
        };
        children
            .map(|c| walk(c, depth + 1))
            .max()
            .unwrap_or(depth + 1)
            .max(depth + 1)
    }
    walk(value, 0)
}

/// How many values copying `value` creates (strings and byte strings are
/// shared, so they count once).
fn weight(value: &Value) -> usize {
    match value {
        Value::List(items) | Value::Tuple(items) => 1 + items.iter().map(weight).sum::<usize>(),
        Value::Dict(items) => {
            1 + items
                .iter()
                .map(|(k, v)| weight(k) + weight(v))
                .sum::<usize>()
        }
        _ => 1,
    }
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
    fn uint(&mut self, width: usize) -> Option<u64> {
        let b = self.take(width)?;
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(b);
        Some(u64::from_le_bytes(raw))
    }
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes.get(self.at..)?;
        let end = rest.iter().position(|&b| b == b'\n')?;
        self.at += end + 1;
        Some(&rest[..end])
    }
    fn sized(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(self.uint(width)?).ok()?;
        self.take(len)
    }
}

/// Unpickle `bytes` (the whole file at `path`, named in errors).
pub fn unpickle(bytes: &[u8], path: &Path) -> Result<Value> {
    let mut reader = Reader { bytes, at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let bad = |at: usize, what: &str| format_err(path, format!("pickle byte {at}: {what}"));
    // DUP and the memo copy values; a pickle of a few kilobytes could
    // otherwise ask for copies of copies without end. A data pickle copies
    // next to nothing.
    let mut copy_budget = bytes.len().saturating_mul(4).saturating_add(1 << 20);
    let mut copy = |value: &Value, at: usize| -> Result<Value> {
        copy_budget = copy_budget.checked_sub(weight(value)).ok_or_else(|| {
            bad(
                at,
                "copies more values than a data pickle can hold; refused",
            )
        })?;
        Ok(value.clone())
    };
    let nested = |items: &[Value], at: usize| -> Result<()> {
        if items.iter().any(|v| nesting(v) >= MAX_NESTING) {
            return Err(bad(
                at,
                &format!("containers nested deeper than {MAX_NESTING}; refused"),
            ));
        }
        Ok(())
    };
    loop {
        let start = reader.at;
        let Some(op) = reader.take(1).map(|b| b[0]) else {
            return Err(bad(start, "ends before its STOP opcode (truncated)"));
        };
        let truncated = || bad(start, "an argument runs past the end (truncated)");
        macro_rules! pop {
            () => {
                stack
                    .pop()
                    .ok_or_else(|| bad(start, "pops an empty stack"))?
            };
        }
        macro_rules! since_mark {
            () => {{
                let mark = marks
                    .pop()
                    .ok_or_else(|| bad(start, "needs a MARK that is not there"))?;
                if mark > stack.len() {
                    return Err(bad(start, "a MARK below the stack"));
                }
                stack.split_off(mark)
            }};
        }
        match op {
            b'\x80' => {
                reader.take(1).ok_or_else(truncated)?;
            }
            b'\x95' => {
                reader.take(8).ok_or_else(truncated)?;
            }
            b'.' => {
                return stack
                    .pop()
                    .ok_or_else(|| bad(start, "STOP on an empty stack"))
            }
            b'(' => marks.push(stack.len()),
            b'0' => {
                if marks.last() == Some(&stack.len()) {
                    marks.pop();
                } else {
                    pop!();
                }
            }
            b'1' => {
                let _discarded = since_mark!();
            }
            b'2' => {
                let top = stack
                    .last()
                    .ok_or_else(|| bad(start, "DUP on an empty stack"))?;
                let top = copy(top, start)?;
                stack.push(top);
            }
            b'N' => stack.push(Value::None),
            b'\x88' => stack.push(Value::Bool(true)),
            b'\x89' => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(reader.uint(1).ok_or_else(truncated)? as i64)),
            b'M' => stack.push(Value::Int(reader.uint(2).ok_or_else(truncated)? as i64)),
            b'J' => stack.push(Value::Int(i64::from(
                reader.uint(4).ok_or_else(truncated)? as u32 as i32,
            ))),
            b'\x8a' => {
                let raw = reader.sized(1).ok_or_else(truncated)?;
                if raw.len() > 8 {
                    return Err(bad(start, "an integer wider than 64 bits"));
                }
                let mut full = [if raw.last().is_some_and(|b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                }; 8];
                full[..raw.len()].copy_from_slice(raw);
                stack.push(Value::Int(i64::from_le_bytes(full)));
            }
            b'I' | b'L' => {
                let line = reader.line().ok_or_else(truncated)?;
                let text = String::from_utf8_lossy(line);
                let text = text.trim().trim_end_matches('L');
                stack.push(match text {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    other => Value::Int(
                        other
                            .parse()
                            .map_err(|_| bad(start, "an integer that does not parse"))?,
                    ),
                });
            }
            // Python 2 str: bytes, as pickle.load(encoding="bytes") gives them.
            b'U' => stack.push(Value::Bytes(Rc::new(
                reader.sized(1).ok_or_else(truncated)?.to_vec(),
            ))),
            b'T' => stack.push(Value::Bytes(Rc::new(
                reader.sized(4).ok_or_else(truncated)?.to_vec(),
            ))),
            b'C' => stack.push(Value::Bytes(Rc::new(
                reader.sized(1).ok_or_else(truncated)?.to_vec(),
            ))),
            b'B' => stack.push(Value::Bytes(Rc::new(
                reader.sized(4).ok_or_else(truncated)?.to_vec(),
            ))),
            b'\x8e' | b'\x96' => stack.push(Value::Bytes(Rc::new(
                reader.sized(8).ok_or_else(truncated)?.to_vec(),
            ))),
            b'\x8c' => stack.push(Value::Str(text(reader.sized(1).ok_or_else(truncated)?))),
            b'X' => stack.push(Value::Str(text(reader.sized(4).ok_or_else(truncated)?))),
            b'\x8d' => stack.push(Value::Str(text(reader.sized(8).ok_or_else(truncated)?))),
            b'V' => stack.push(Value::Str(text(reader.line().ok_or_else(truncated)?))),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'\x85' | b'\x86' | b'\x87' => {
                let n = usize::from(op - b'\x84');
                if stack.len() < n {
                    return Err(bad(start, "a tuple of more items than the stack holds"));
                }
                let items = stack.split_off(stack.len() - n);
                nested(&items, start)?;
                stack.push(Value::Tuple(items));
            }
            b't' => {
                let items = since_mark!();
                nested(&items, start)?;
                stack.push(Value::Tuple(items));
            }
            b']' => stack.push(Value::List(Vec::new())),
            b'l' => {
                let items = since_mark!();
                nested(&items, start)?;
                stack.push(Value::List(items));
            }
            b'a' => {
                let item = pop!();
                nested(std::slice::from_ref(&item), start)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.push(item),
                    _ => return Err(bad(start, "APPEND to something that is not a list")),
                }
            }
            b'e' => {
                let items = since_mark!();
                nested(&items, start)?;
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err(bad(start, "APPENDS to something that is not a list")),
                }
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = since_mark!();
                nested(&items, start)?;
                stack.push(Value::Dict(pairs(items, start, path)?));
            }
            b's' => {
                let value = pop!();
                let key = pop!();
                nested(std::slice::from_ref(&key), start)?;
                nested(std::slice::from_ref(&value), start)?;
                match stack.last_mut() {
                    Some(Value::Dict(dict)) => dict.push((key, value)),
                    _ => return Err(bad(start, "SETITEM on something that is not a dict")),
                }
            }
            b'u' => {
                let items = since_mark!();
                nested(&items, start)?;
                let new = pairs(items, start, path)?;
                match stack.last_mut() {
                    Some(Value::Dict(dict)) => dict.extend(new),
                    _ => return Err(bad(start, "SETITEMS on something that is not a dict")),
                }
            }
            b'p' | b'q' | b'r' | b'\x94' => {
                let key = match op {
                    b'p' => String::from_utf8_lossy(reader.line().ok_or_else(truncated)?)
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| bad(start, "a memo key that does not parse"))?,
                    b'q' => reader.uint(1).ok_or_else(truncated)?,
                    b'r' => reader.uint(4).ok_or_else(truncated)?,
                    _ => memo.len() as u64,
                };
                let top = stack
                    .last()
                    .ok_or_else(|| bad(start, "memoizes an empty stack"))?;
                let top = copy(top, start)?;
                memo.insert(key, top);
            }
            b'g' | b'h' | b'j' => {
                let key = match op {
                    b'g' => String::from_utf8_lossy(reader.line().ok_or_else(truncated)?)
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| bad(start, "a memo key that does not parse"))?,
                    b'h' => reader.uint(1).ok_or_else(truncated)?,
                    _ => reader.uint(4).ok_or_else(truncated)?,
                };
                let value = memo
                    .get(&key)
                    .ok_or_else(|| bad(start, "reads a memo entry never written"))?;
                let value = copy(value, start)?;
                stack.push(value);
            }
            b'c' => {
                let module =
                    String::from_utf8_lossy(reader.line().ok_or_else(truncated)?).into_owned();
                let name =
                    String::from_utf8_lossy(reader.line().ok_or_else(truncated)?).into_owned();
                stack.push(global(&module, &name, path)?);
            }
            b'\x93' => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => {
                        stack.push(global(&module, &name, path)?)
                    }
                    _ => return Err(bad(start, "STACK_GLOBAL with computed names")),
                }
            }
            b'R' => {
                let args = pop!();
                let callable = pop!();
                let Value::Tuple(args) = args else {
                    return Err(bad(start, "REDUCE arguments that are not a tuple"));
                };
                let Value::Callable(callable) = callable else {
                    return Err(bad(start, "REDUCE on something that is not callable"));
                };
                stack.push(call(callable, args).map_err(|e| bad(start, &e))?);
            }
            b'b' => {
                let state = pop!();
                let target = stack
                    .last_mut()
                    .ok_or_else(|| bad(start, "BUILD on an empty stack"))?;
                build(target, state).map_err(|e| bad(start, &e))?;
            }
            other => {
                return Err(bad(
                    start,
                    &format!("opcode 0x{other:02x} is not one a NumPy data pickle uses; refused"),
                ))
            }
        }
    }
}

fn text(bytes: &[u8]) -> Rc<str> {
    Rc::from(String::from_utf8_lossy(bytes).as_ref())
}

fn pairs(items: Vec<Value>, at: usize, path: &Path) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(format_err(
            path,
            format!("pickle byte {at}: odd number of dict items"),
        ));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn global(module: &str, name: &str, path: &Path) -> Result<Value> {
    let full = format!("{module}.{name}");
    ALLOWED
        .iter()
        .find(|(allowed, _)| *allowed == full)
        .map(|(_, callable)| Value::Callable(*callable))
        .ok_or_else(|| {
            format_err(
                path,
                format!(
                    "the pickle imports {full}, which is not a NumPy array constructor; refused without running it (gauntlet scan shows every import)"
                ),
            )
        })
}

fn call(callable: Callable, args: Vec<Value>) -> std::result::Result<Value, String> {
    match (callable, args.as_slice()) {
        (Callable::Reconstruct, [Value::Callable(Callable::Ndarray), ..]) => {
            Ok(Value::Array(Array {
                shape: vec![0],
                dtype: "u1".into(),
                data: Rc::new(Vec::new()),
                fortran: false,
            }))
        }
        (Callable::Dtype, [Value::Str(code), ..]) => Ok(Value::Dtype(code.to_string())),
        (Callable::Dtype, [Value::Bytes(code), ..]) => {
            Ok(Value::Dtype(String::from_utf8_lossy(code).into_owned()))
        }
        (Callable::CodecsEncode, [Value::Str(text), Value::Str(codec)])
            if codec.eq_ignore_ascii_case("latin1") || codec.eq_ignore_ascii_case("latin-1") =>
        {
            let bytes: Option<Vec<u8>> = text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect();
            bytes
                .map(|b| Value::Bytes(Rc::new(b)))
                .ok_or_else(|| "a latin1 string with characters above U+00FF".into())
        }
        (
            Callable::FromBuffer,
            [Value::Bytes(data), Value::Dtype(dtype), Value::Tuple(shape), Value::Str(order)],
        ) => {
            let array = Array {
                shape: dims(shape)?,
                dtype: dtype.clone(),
                data: data.clone(),
                fortran: &**order == "F",
            };
            checked(array).map(Value::Array)
        }
        (callable, _) => Err(format!(
            "{callable:?} called with arguments it does not take"
        )),
    }
}

fn dims(shape: &[Value]) -> std::result::Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err("an array dimension that is not a non-negative integer".into()),
        })
        .collect()
}

fn checked(array: Array) -> std::result::Result<Array, String> {
    let size = array
        .item_size()
        .ok_or_else(|| format!("array dtype '{}' is not an integer type", array.dtype))?;
    let expected = array
        .shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or("an array shape whose size overflows")?;
    if expected != array.data.len() {
        return Err(format!(
            "array of shape {:?} ({}) needs {expected} bytes, the pickle holds {}",
            array.shape,
            array.dtype,
            array.data.len()
        ));
    }
    Ok(array)
}

fn build(target: &mut Value, state: Value) -> std::result::Result<(), String> {
    match (target, state) {
        // ndarray.__setstate__((version, shape, dtype, is_fortran, rawdata)).
        (Value::Array(array), Value::Tuple(items)) => {
            let (shape, dtype, fortran, data) = match items.as_slice() {
                [Value::Int(_), Value::Tuple(shape), Value::Dtype(dtype), Value::Bool(f), Value::Bytes(data)]
                | [Value::Tuple(shape), Value::Dtype(dtype), Value::Bool(f), Value::Bytes(data)] => {
                    (shape, dtype, *f, data)
                }
                [Value::Int(_), Value::Tuple(shape), Value::Dtype(dtype), Value::Int(f), Value::Bytes(data)] => {
                    (shape, dtype, *f != 0, data)
                }
                _ => return Err("an ndarray state this reader does not know".into()),
            };
            *array = checked(Array {
                shape: dims(shape)?,
                dtype: dtype.clone(),
                data: data.clone(),
                fortran,
            })?;
            Ok(())
        }
        // dtype.__setstate__((version, byte order, ...)).
        (Value::Dtype(code), Value::Tuple(items)) => {
            let order = match items.get(1) {
                Some(Value::Str(s)) => s.to_string(),
                Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let bare = code.trim_start_matches(['<', '>', '|', '=']).to_string();
            *code = match order.as_str() {
                ">" => format!(">{bare}"),
                "|" => format!("|{bare}"),
                _ => format!("<{bare}"),
            };
            Ok(())
        }
        _ => Err("BUILD on something other than an array or a dtype".into()),
    }
}
