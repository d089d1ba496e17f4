//! Legacy `tar` checkpoints: `torch.load` first tries the oldest `torch.save`
//! format, a tar archive whose members `storages`, `tensors` and `pickle` are
//! unpickled (`_legacy_load`). Only those members are read; ustar, PAX `path`
//! records and GNU long names are understood, so a member cannot hide behind a
//! long name.

use std::io::{Read, Seek, SeekFrom};

/// One regular member.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// The members `torch.load` unpickles.
pub(crate) const PICKLED: &[&str] = &["storages", "tensors", "pickle"];

const BLOCK: u64 = 512;
/// A tar of a model checkpoint has a handful of members.
const MAX_MEMBERS: usize = 1 << 16;

/// Whether a file's first block is a ustar header (`ustar` at byte 257).
pub(crate) fn is_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar")
}

fn field(block: &[u8], range: std::ops::Range<usize>) -> String {
    let raw = &block[range];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// An octal size field (or GNU base-256 when its top bit is set).
fn size_field(raw: &[u8]) -> Option<u64> {
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return raw[1..]
            .iter()
            .try_fold(0u64, |v, &b| v.checked_mul(256)?.checked_add(u64::from(b)));
    }
    let text = String::from_utf8_lossy(raw);
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// The regular members in order (a name given twice appears twice: tarfile
/// extracts the last); `None` when a header is malformed.
pub(crate) fn members<R: Read + Seek>(file: &mut R, size: u64) -> Option<Vec<Member>> {
    let mut members = Vec::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    while members.len() < MAX_MEMBERS && at + BLOCK <= size {
        let mut block = [0u8; BLOCK as usize];
        file.seek(SeekFrom::Start(at)).ok()?;
        file.read_exact(&mut block).ok()?;
        if block.iter().all(|&b| b == 0) {
            break;
        }
        let len = size_field(&block[124..136])?;
        let data = at + BLOCK;
        if data.checked_add(len)? > size {
            return None;
        }
        let kind = block[156];
        match kind {
            // PAX extended header: `LEN path=NAME\n` records; GNU long name.
            b'x' | b'L' => {
                let mut body = vec![0u8; usize::try_from(len.min(1 << 20)).ok()?];
                file.read_exact(&mut body).ok()?;
                long_name = if kind == b'L' {
                    Some(field(&body, 0..body.len()))
                } else {
                    String::from_utf8_lossy(&body)
                        .lines()
                        .find_map(|record| record.split_once(" path=").map(|(_, p)| p.to_string()))
                };
            }
            b'0' | 0 => {
                let name = long_name.take().unwrap_or_else(|| {
                    let (prefix, name) = (field(&block, 345..500), field(&block, 0..100));
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                });
                members.push(Member {
                    name,
                    offset: data,
                    size: len,
                });
            }
            _ => long_name = None,
        }
        at = data + len.div_ceil(BLOCK) * BLOCK;
    }
    Some(members)
}

/// A member's bytes, at most `limit` of them.
pub(crate) fn read<R: Read + Seek>(file: &mut R, member: &Member, limit: u64) -> Option<Vec<u8>> {
    file.seek(SeekFrom::Start(member.offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(member.size.min(limit))
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}
