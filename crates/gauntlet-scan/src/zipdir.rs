//! The zip central directory read directly. The `zip` crate keeps one entry per
//! name, but an archive may hold several members of the same name (Python's
//! `zipfile`, and so `torch.load`'s fallback readers, open the last one): a
//! second `data.pkl` is a place to hide a pickle from a scanner that reads the
//! first. Here every central-directory entry is listed, so duplicated and
//! escaping names are findings and every copy of a pickle is scanned.

use std::io::{Read, Seek, SeekFrom};

/// One central-directory entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub name: String,
    method: u16,
    compressed: u64,
    local_offset: u64,
}

const EOCD: u32 = 0x0605_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// The end record is 22 bytes plus a comment of at most 65 535.
const TAIL: u64 = 22 + 65_535;
/// A central directory larger than this is not a model checkpoint's.
const MAX_DIRECTORY: u64 = 64 << 20;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every entry of the central directory, in order; `None` when the archive
/// has no end record, uses zip64 fields, or its directory is malformed (the
/// `zip` crate's reading stands alone then).
pub(crate) fn entries<R: Read + Seek>(file: &mut R, size: u64) -> Option<Vec<Entry>> {
    let tail_len = size.min(TAIL);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(size - tail_len)).ok()?;
    file.read_exact(&mut tail).ok()?;
    let end = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == Some(EOCD))?;
    let count = u16_at(&tail, end + 10)?;
    let directory_size = u32_at(&tail, end + 12)?;
    let directory_offset = u32_at(&tail, end + 16)?;
    if count == u16::MAX || directory_size == u32::MAX || directory_offset == u32::MAX {
        return None;
    }
    let (directory_size, directory_offset) =
        (u64::from(directory_size), u64::from(directory_offset));
    if directory_size > MAX_DIRECTORY || directory_offset.checked_add(directory_size)? > size {
        return None;
    }
    let mut directory = vec![0u8; directory_size as usize];
    file.seek(SeekFrom::Start(directory_offset)).ok()?;
    file.read_exact(&mut directory).ok()?;
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 46 <= directory.len() && u32_at(&directory, at) == Some(CENTRAL) {
        let method = u16_at(&directory, at + 10)?;
        let compressed = u32_at(&directory, at + 20)?;
        let name_len = usize::from(u16_at(&directory, at + 28)?);
        let extra_len = usize::from(u16_at(&directory, at + 30)?);
        let comment_len = usize::from(u16_at(&directory, at + 32)?);
        let local_offset = u32_at(&directory, at + 42)?;
        if compressed == u32::MAX || local_offset == u32::MAX {
            return None;
        }
        let name = directory.get(at + 46..at + 46 + name_len)?;
        entries.push(Entry {
            name: String::from_utf8_lossy(name).into_owned(),
            method,
            compressed: u64::from(compressed),
            local_offset: u64::from(local_offset),
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Some(entries)
}

/// The member's bytes, decompressed, at most `limit` of them; `None` when its
/// local header is missing or its method is neither stored nor deflate.
pub(crate) fn read<R: Read + Seek>(file: &mut R, entry: &Entry, limit: u64) -> Option<Vec<u8>> {
    let mut header = [0u8; 30];
    file.seek(SeekFrom::Start(entry.local_offset)).ok()?;
    file.read_exact(&mut header).ok()?;
    if u32_at(&header, 0) != Some(LOCAL) {
        return None;
    }
    let skip = u64::from(u16_at(&header, 26)?) + u64::from(u16_at(&header, 28)?);
    file.seek(SeekFrom::Current(i64::try_from(skip).ok()?))
        .ok()?;
    // Compressed bytes read are bounded too: a pickle deflates by far less
    // than 64:1, so a longer stream is a bomb and is cut (then malformed).
    let raw = file.take(entry.compressed.min(limit.saturating_mul(64)));
    let mut bytes = Vec::new();
    match entry.method {
        0 => raw.take(limit).read_to_end(&mut bytes).ok()?,
        8 => flate2::read::DeflateDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut bytes)
            .ok()?,
        _ => return None,
    };
    Some(bytes)
}

/// The entries a streaming reader finds walking local headers from the start
/// of the file (Java's `ZipInputStream`, `unzip` reading a pipe): it never
/// looks at the central directory, so an archive can show it members the
/// directory does not list. The walk stops at the first byte that is not a
/// local header, or at an entry whose size only a trailing data descriptor
/// gives; at most `MAX_LOCAL_ENTRIES`.
pub(crate) fn local_entries<R: Read + Seek>(file: &mut R, size: u64) -> Vec<Entry> {
    const MAX_LOCAL_ENTRIES: usize = 1 << 20;
    let mut entries = Vec::new();
    let mut at = 0u64;
    while entries.len() < MAX_LOCAL_ENTRIES && at.saturating_add(30) <= size {
        let mut header = [0u8; 30];
        if file.seek(SeekFrom::Start(at)).is_err() || file.read_exact(&mut header).is_err() {
            break;
        }
        let (
            Some(LOCAL),
            Some(flags),
            Some(method),
            Some(compressed),
            Some(name_len),
            Some(extra_len),
        ) = (
            u32_at(&header, 0),
            u16_at(&header, 6),
            u16_at(&header, 8),
            u32_at(&header, 18),
            u16_at(&header, 26),
            u16_at(&header, 28),
        )
        else {
            break;
        };
        if flags & 0x8 != 0 && compressed == 0 {
            break;
        }
        let mut name = vec![0u8; usize::from(name_len)];
        if file.read_exact(&mut name).is_err() {
            break;
        }
        entries.push(Entry {
            name: String::from_utf8_lossy(&name).into_owned(),
            method,
            compressed: u64::from(compressed),
            local_offset: at,
        });
        at = at + 30 + u64::from(name_len) + u64::from(extra_len) + u64::from(compressed);
    }
    entries
}

/// Where the member's bytes end (its local header, name, extra field and
/// compressed data); `None` when the local header is unreadable.
pub(crate) fn extent<R: Read + Seek>(file: &mut R, entry: &Entry) -> Option<u64> {
    let mut header = [0u8; 30];
    file.seek(SeekFrom::Start(entry.local_offset)).ok()?;
    file.read_exact(&mut header).ok()?;
    let skip = u64::from(u16_at(&header, 26)?) + u64::from(u16_at(&header, 28)?);
    Some(entry.local_offset + 30 + skip + entry.compressed)
}

impl Entry {
    /// Where its local header starts.
    pub(crate) fn offset(&self) -> u64 {
        self.local_offset
    }
}
