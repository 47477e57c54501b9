//! On-disk format of a reference-engine seqno-index file (`<number>.sqi`).
//!
//! A file is a sequence of records followed by a fixed-size footer. All
//! integers are little-endian. Records are sorted by seqno, strictly
//! increasing. A key may appear more than once in a file (a flush keeps every
//! version written since the previous flush); its record with the highest
//! seqno is its newest version in the file. A file always holds at least one
//! record: an empty memtable is never flushed.
//!
//! **Record** (repeated `record_count` times from offset 0, no padding):
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `seqno` | u64 LE, `1..=2^48-1`, within the footer's `low_seqno..=high_seqno`, above the previous record's |
//! | 8 | 1 | `kind` | `0` = put, `1` = tombstone (delete); any other value is corrupt |
//! | 9 | 4 | `key_len` | u32 LE, length of `key` |
//! | 13 | 4 | `value_len` | u32 LE, length of `value`; `0` for a tombstone |
//! | 17 | `key_len` | `key` | the key's bytes |
//! | 17 + `key_len` | `value_len` | `value` | the value's bytes |
//!
//! **Footer** (the last 40 bytes of the file, at offset `file_len - 40`; the
//! records fill exactly `file_len - 40` bytes before it):
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 8 | `magic` | the ASCII bytes `SEQINDEX` |
//! | 8 | 4 | `version` | u32 LE, format version, `1` |
//! | 12 | 8 | `record_count` | u64 LE, number of records, `>= 1` |
//! | 20 | 8 | `low_seqno` | u64 LE, lowest seqno the file covers, `>= 1` |
//! | 28 | 8 | `high_seqno` | u64 LE, highest seqno the file covers, `low_seqno..=2^48-1` |
//! | 36 | 4 | `crc32` | u32 LE, CRC-32 (IEEE, as `crc32fast` computes it) of every byte of the file before this field |
//!
//! `low_seqno..=high_seqno` is the range of seqnos the file *covers*, which
//! can be wider than the seqnos of its records: the reference engine's
//! flushes hold one record per seqno of their range, but a compaction output
//! covers the union of its inputs' ranges although it keeps only the newest
//! version of each key. Ranges of one store's live files never overlap; a
//! compaction input kept for a backup (see the [engine docs](super)) lies
//! inside the range of the compaction's output.
//!
//! [`write_index_file`] and [`write_index_file_durably`] write a file in this
//! format durably, e.g. for a restore tool building a data dir.
//!
//! [`read_index_file`] checks all of the above and fails with
//! [`Error::Corrupt`] (or [`Error::SeqnoOutOfRange`] for a seqno above
//! 2^48-1) naming the file and what is wrong.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub(crate) use crate::dir_sync::sync_dir;
use crate::dir_sync::{write_file_durably, Existing};
use crate::engine::check_seqno;
use crate::error::{Error, Result};

/// The magic bytes that start a footer.
pub const MAGIC: [u8; 8] = *b"SEQINDEX";

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Size in bytes of the footer at the end of every file.
pub const FOOTER_LEN: usize = 40;

/// Size in bytes of a record's fixed part (seqno, kind, key and value lengths).
pub const RECORD_HEADER_LEN: usize = 17;

const KIND_PUT: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;

/// One mutation stored in a seqno-index file: the crate's own record type.
pub use crate::record::Record;

/// The footer of a seqno-index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Number of records in the file (at least 1).
    pub record_count: u64,
    /// Lowest seqno the file covers.
    pub low_seqno: u64,
    /// Highest seqno the file covers.
    pub high_seqno: u64,
    /// CRC-32 of every byte of the file before the CRC field.
    pub crc32: u32,
}

impl Footer {
    /// Whether the file holds a record for every seqno it covers, so every
    /// version written in its range. The reference engine hands out one seqno
    /// per put or delete and its flushes keep every version, so a flushed
    /// file holds them all; a compaction output that dropped an older version
    /// of some key, or a restored store's file, does not.
    pub fn holds_every_version(&self) -> bool {
        self.record_count == self.high_seqno - self.low_seqno + 1
    }
}

/// Reads and fully verifies one seqno-index file: length, magic, checksum,
/// version, footer fields, and every record (kind, lengths, seqno inside the
/// footer's range and above the previous record's, exactly `record_count` of
/// them filling the space before the footer). A key may appear in several
/// records; they are returned in file (seqno) order.
///
/// Errors name the path and what is wrong: [`Error::Io`] if the file cannot
/// be read, [`Error::SeqnoOutOfRange`] for a seqno above 2^48-1,
/// [`Error::Corrupt`] for anything else.
pub fn read_index_file(path: &Path) -> Result<(Footer, Vec<Record>)> {
    let (footer, records, _offsets) = read_with_value_offsets(path)?;
    Ok((footer, records))
}

/// Like [`read_index_file`], also returning the byte offset of each record's
/// value in the file.
pub(crate) fn read_with_value_offsets(path: &Path) -> Result<(Footer, Vec<Record>, Vec<u64>)> {
    let bytes = fs::read(path).map_err(|e| Error::io("read", path, e))?;
    decode(path, &bytes)
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads only the footer of the file at `path` (its last 40 bytes) and
/// checks its fields, but not the checksum, which covers the whole file: for
/// reports that need a file's range, not its records. [`read_index_file`]
/// verifies everything.
pub fn read_footer(path: &Path) -> Result<Footer> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = file.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    check_len(path, len)?;
    let mut f = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut f, len - FOOTER_LEN as u64)
        .map_err(|e| Error::io("read", path, e))?;
    check_magic(path, &f)?;
    parse_footer(path, &f)
}

/// Fails unless a file of `len` bytes can hold one record and the footer.
fn check_len(path: &Path, len: u64) -> Result<()> {
    if len < (FOOTER_LEN + RECORD_HEADER_LEN) as u64 {
        return Err(corrupt(
            path,
            format!(
                "the file is {len} bytes, shorter than one record plus the {FOOTER_LEN}-byte footer (truncated?)"
            ),
        ));
    }
    Ok(())
}

/// Fails unless the footer bytes `f` start with the magic.
fn check_magic(path: &Path, f: &[u8]) -> Result<()> {
    if f[..8] != MAGIC {
        return Err(corrupt(
            path,
            "the footer magic `SEQINDEX` is not in the last 40 bytes (truncated, or not a seqno-index file)",
        ));
    }
    Ok(())
}

/// Decodes the footer bytes `f` (magic already checked) and checks every
/// field but the checksum.
fn parse_footer(path: &Path, f: &[u8]) -> Result<Footer> {
    let footer = Footer {
        version: u32_at(f, 8),
        record_count: u64_at(f, 12),
        low_seqno: u64_at(f, 20),
        high_seqno: u64_at(f, 28),
        crc32: u32_at(f, 36),
    };
    if footer.version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {} is not supported (only {FORMAT_VERSION})",
                footer.version
            ),
        ));
    }
    check_seqno(path, footer.low_seqno)?;
    check_seqno(path, footer.high_seqno)?;
    if footer.low_seqno == 0 {
        return Err(corrupt(path, "the footer's low seqno is 0; seqnos start at 1"));
    }
    if footer.low_seqno > footer.high_seqno {
        return Err(corrupt(
            path,
            format!(
                "the footer's seqno range {}..={} is inverted",
                footer.low_seqno, footer.high_seqno
            ),
        ));
    }
    let span = footer.high_seqno - footer.low_seqno + 1;
    if footer.record_count == 0 || footer.record_count > span {
        return Err(corrupt(
            path,
            format!(
                "the footer's record count {} does not fit its seqno range {}..={} (1..={span} records)",
                footer.record_count, footer.low_seqno, footer.high_seqno
            ),
        ));
    }
    Ok(footer)
}

/// Decodes and verifies the bytes of a whole file.
fn decode(path: &Path, bytes: &[u8]) -> Result<(Footer, Vec<Record>, Vec<u64>)> {
    let len = bytes.len();
    check_len(path, len as u64)?;
    let body_len = len - FOOTER_LEN;
    let f = &bytes[body_len..];
    check_magic(path, f)?;
    let stored_crc = u32_at(f, 36);
    let actual_crc = crc32fast::hash(&bytes[..len - 4]);
    if stored_crc != actual_crc {
        return Err(corrupt(
            path,
            format!("checksum mismatch: the footer says {stored_crc:#010x}, the content hashes to {actual_crc:#010x}"),
        ));
    }
    let footer = parse_footer(path, f)?;

    let mut records = Vec::new();
    let mut offsets = Vec::new();
    let mut at = 0usize;
    let mut prev: Option<u64> = None;
    while at < body_len {
        let n = records.len();
        if n as u64 == footer.record_count {
            return Err(corrupt(
                path,
                format!(
                    "{} bytes follow the {n} records the footer announces",
                    body_len - at
                ),
            ));
        }
        if body_len - at < RECORD_HEADER_LEN {
            return Err(corrupt(
                path,
                format!("record {n} at offset {at}: its header runs into the footer"),
            ));
        }
        let seqno = check_seqno(path, u64_at(bytes, at))?;
        let kind = bytes[at + 8];
        let key_len = u32_at(bytes, at + 9) as usize;
        let value_len = u32_at(bytes, at + 13) as usize;
        if seqno < footer.low_seqno || seqno > footer.high_seqno {
            return Err(corrupt(
                path,
                format!(
                    "record {n} at offset {at}: seqno {seqno} is outside the footer's range {}..={}",
                    footer.low_seqno, footer.high_seqno
                ),
            ));
        }
        if let Some(p) = prev {
            if seqno <= p {
                return Err(corrupt(
                    path,
                    format!(
                        "record {n} at offset {at}: seqno {seqno} does not follow the previous record's {p}"
                    ),
                ));
            }
        }
        let key_at = at + RECORD_HEADER_LEN;
        let value_at = key_at + key_len;
        if (body_len - key_at) < key_len || (body_len - value_at) < value_len {
            return Err(corrupt(
                path,
                format!(
                    "record {n} at offset {at}: its key ({key_len} bytes) and value ({value_len} bytes) run into the footer"
                ),
            ));
        }
        let value = match kind {
            KIND_PUT => Some(bytes[value_at..value_at + value_len].to_vec()),
            KIND_TOMBSTONE if value_len == 0 => None,
            KIND_TOMBSTONE => {
                return Err(corrupt(
                    path,
                    format!("record {n} at offset {at}: a tombstone with a {value_len}-byte value"),
                ))
            }
            other => {
                return Err(corrupt(
                    path,
                    format!("record {n} at offset {at}: unknown kind {other}"),
                ))
            }
        };
        records.push(Record {
            seqno,
            key: bytes[key_at..value_at].to_vec(),
            value,
        });
        offsets.push(value_at as u64);
        prev = Some(seqno);
        at = value_at + value_len;
    }
    if records.len() as u64 != footer.record_count {
        return Err(corrupt(
            path,
            format!(
                "the footer announces {} records, the file holds {}",
                footer.record_count,
                records.len()
            ),
        ));
    }
    Ok((footer, records, offsets))
}

/// A record to write, borrowed (from a memtable, a compaction's merge, or a
/// restore tool's [`Record`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The mutation's seqno.
    pub seqno: u64,
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(r: &'a Record) -> Self {
        RecordRef {
            seqno: r.seqno,
            key: &r.key,
            value: r.value.as_deref(),
        }
    }
}

/// What [`write_index_file`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Length of the file in bytes.
    pub len: u64,
    /// Offset of each record's value, in record order.
    pub value_offsets: Vec<u64>,
}

/// A `Write` that hashes and counts everything written through it.
struct Hashing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Encodes `records` (sorted by seqno, strictly increasing, at least one, each
/// inside `low..=high`, `1 <= low <= high`) into `w`. A key may repeat.
fn encode<W: Write>(w: W, low: u64, high: u64, records: &[RecordRef<'_>]) -> io::Result<Written> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if records.is_empty() {
        return Err(invalid("a seqno-index file must hold at least one record".into()));
    }
    if low == 0 || low > high {
        return Err(invalid(format!(
            "the seqno range {low}..={high} is empty or starts at 0; seqnos start at 1"
        )));
    }
    let mut h = Hashing {
        inner: w,
        hasher: crc32fast::Hasher::new(),
        written: 0,
    };
    let mut value_offsets = Vec::with_capacity(records.len());
    let mut prev = 0;
    for r in records {
        if r.seqno <= prev || r.seqno < low || r.seqno > high {
            return Err(invalid(format!(
                "record seqno {} is out of order or outside {low}..={high}",
                r.seqno
            )));
        }
        prev = r.seqno;
        let key_len = u32::try_from(r.key.len())
            .map_err(|_| invalid(format!("a {}-byte key is too long", r.key.len())))?;
        let (kind, value) = match r.value {
            Some(v) => (KIND_PUT, v),
            None => (KIND_TOMBSTONE, &[][..]),
        };
        let value_len = u32::try_from(value.len())
            .map_err(|_| invalid(format!("a {}-byte value is too long", value.len())))?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..8].copy_from_slice(&r.seqno.to_le_bytes());
        header[8] = kind;
        header[9..13].copy_from_slice(&key_len.to_le_bytes());
        header[13..17].copy_from_slice(&value_len.to_le_bytes());
        h.put(&header)?;
        h.put(r.key)?;
        value_offsets.push(h.written);
        h.put(value)?;
    }
    let mut footer = [0u8; FOOTER_LEN - 4];
    footer[..8].copy_from_slice(&MAGIC);
    footer[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    footer[12..20].copy_from_slice(&(records.len() as u64).to_le_bytes());
    footer[20..28].copy_from_slice(&low.to_le_bytes());
    footer[28..36].copy_from_slice(&high.to_le_bytes());
    h.put(&footer)?;
    let crc = h.hasher.clone().finalize();
    h.put(&crc.to_le_bytes())?;
    h.inner.flush()?;
    Ok(Written {
        len: h.written,
        value_offsets,
    })
}

/// Writes `records` durably as the file `dest`: to the temp file `tmp`, which
/// is fsynced and renamed to `dest`, then `dest`'s directory is fsynced. The
/// temp file is removed if anything fails. `dest` must not exist.
///
/// `records` must be at least one, sorted by seqno (strictly increasing; a
/// key may repeat), each inside `low..=high`, with `1 <= low <= high <=
/// 2^48-1`; anything else fails with an [`Error::Io`] of kind
/// `InvalidInput` (or [`Error::SeqnoOutOfRange`]) and writes nothing.
///
/// For a file the reference engine opens as part of a store, give `tmp` a
/// name starting with `.` in the same dir (recovery removes such leftovers)
/// and `dest` a [`file_name`].
pub fn write_index_file(
    tmp: &Path,
    dest: &Path,
    low: u64,
    high: u64,
    records: &[RecordRef<'_>],
) -> Result<Written> {
    check_seqno(dest, low)?;
    check_seqno(dest, high)?;
    // Numbers are never reused while a file of that number exists, and only
    // the store's flush or compaction, which are serialized, write into its
    // dir: a file already there is a bug, never overwritten.
    write_file_durably(tmp, dest, Existing::Refuse, |w| encode(w, low, high, records))
}

/// Writes `records` durably as the file `name` in `dir`, covering
/// `low..=high`, and returns its length in bytes: [`write_index_file`] with
/// the temp file `.tmp-<name>` in `dir` (removed if anything fails).
///
/// The rules on `records`, `low` and `high` are [`write_index_file`]'s;
/// `name` must be a plain file name (no `/`, not starting with `.`) and
/// `dir/name` must not exist. A store dir (`<data_dir>/kv-<id>/`) whose files
/// are written this way under [`file_name`]s, with non-overlapping ranges, is
/// opened by the reference engine as a store.
pub fn write_index_file_durably(
    dir: &Path,
    name: &str,
    records: &[Record],
    low: u64,
    high: u64,
) -> Result<u64> {
    let dest = dir.join(name);
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(Error::io(
            "write",
            &dest,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` is not a plain file name that does not start with `.`"),
            ),
        ));
    }
    let refs: Vec<RecordRef<'_>> = records.iter().map(RecordRef::from).collect();
    let written = write_index_file(&dir.join(format!(".tmp-{name}")), &dest, low, high, &refs)?;
    Ok(written.len)
}

/// Name of the seqno-index file numbered `number`: 12 zero-padded decimal
/// digits and `.sqi` (`000000000001.sqi`).
pub fn file_name(number: u64) -> String {
    format!("{number:012}.sqi")
}

/// Name of the temp file a flush or compaction writes before renaming it to
/// [`file_name`]`(number)`.
pub(crate) fn temp_file_name(number: u64) -> String {
    format!(".tmp-{number:012}.sqi")
}

/// The number of a seqno-index file name, if `name` is one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".sqi")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MAX_SEQNO;

    fn recs() -> Vec<Record> {
        vec![
            Record {
                seqno: 3,
                key: b"alpha".to_vec(),
                value: Some(b"one".to_vec()),
            },
            Record {
                seqno: 5,
                key: b"beta".to_vec(),
                value: None,
            },
            Record {
                seqno: 9,
                key: Vec::new(),
                value: Some(Vec::new()),
            },
        ]
    }

    fn refs(records: &[Record]) -> Vec<RecordRef<'_>> {
        records
            .iter()
            .map(|r| RecordRef {
                seqno: r.seqno,
                key: &r.key,
                value: r.value.as_deref(),
            })
            .collect()
    }

    fn encoded(low: u64, high: u64, records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, low, high, &refs(records)).unwrap();
        out
    }

    /// Re-seals `bytes` with a correct CRC, as a hand-crafted file would be.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }

    fn write_raw(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000000001.sqi");
        fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn round_trip_is_exact_and_offsets_point_at_values() {
        let records = recs();
        let bytes = encoded(2, 10, &records);
        let (_d, path) = write_raw(&bytes);
        let (footer, back, offsets) = read_with_value_offsets(&path).unwrap();
        assert_eq!(back, records);
        assert_eq!(
            (
                footer.version,
                footer.record_count,
                footer.low_seqno,
                footer.high_seqno
            ),
            (FORMAT_VERSION, 3, 2, 10)
        );
        assert_eq!(footer.crc32, crc32fast::hash(&bytes[..bytes.len() - 4]));
        assert_eq!(&bytes[offsets[0] as usize..offsets[0] as usize + 3], b"one");
        // 17 + 5 + 3 + 17 + 4 + 0 + 17 + 0 + 0 + 40
        assert_eq!(bytes.len(), 103);
        assert_eq!(&bytes[bytes.len() - 40..bytes.len() - 32], b"SEQINDEX");
    }

    #[test]
    fn the_footer_alone_gives_the_range_and_whether_every_version_is_held() {
        let (_d, path) = write_raw(&encoded(2, 10, &recs()));
        let footer = read_footer(&path).unwrap();
        assert_eq!(
            (footer.low_seqno, footer.high_seqno, footer.record_count),
            (2, 10, 3)
        );
        assert!(!footer.holds_every_version(), "3 records for 9 seqnos");
        let mut every = recs()[..2].to_vec();
        every.insert(
            1,
            Record {
                seqno: 4,
                key: b"alpha".to_vec(),
                value: None,
            },
        );
        let (_d, path) = write_raw(&encoded(3, 5, &every));
        assert!(
            read_footer(&path).unwrap().holds_every_version(),
            "one record per seqno"
        );
    }

    #[test]
    fn a_footer_read_refuses_a_truncated_file() {
        let bytes = encoded(2, 10, &recs());
        let (_d, path) = write_raw(&bytes[..bytes.len() - 1]);
        let err = read_footer(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains("SEQINDEX")),
            "{err}"
        );
        let (_d, path) = write_raw(&bytes[..30]);
        assert!(matches!(read_footer(&path), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encoded(1, 9, &recs());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sqi");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            let err = read_index_file(&path).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { path: p, .. } if p == &path),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let bytes = encoded(1, 9, &recs());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sqi");
        for n in 0..bytes.len() {
            fs::write(&path, &bytes[..n]).unwrap();
            let err = read_index_file(&path).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "length {n}: {err}");
            assert!(err.to_string().contains("x.sqi"), "{err}");
        }
        // Appended garbage is caught too.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        fs::write(&path, &longer).unwrap();
        assert!(matches!(read_index_file(&path), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn footer_seqno_above_48_bits_is_rejected_even_with_a_valid_crc() {
        let mut bytes = encoded(1, 9, &recs());
        let n = bytes.len();
        let high_at = n - FOOTER_LEN + 28;
        bytes[high_at..high_at + 8].copy_from_slice(&(MAX_SEQNO + 1).to_le_bytes());
        reseal(&mut bytes);
        let (_d, path) = write_raw(&bytes);
        let err = read_index_file(&path).unwrap_err();
        assert!(
            matches!(err, Error::SeqnoOutOfRange { seqno, .. } if seqno == MAX_SEQNO + 1),
            "{err}"
        );
    }

    #[test]
    fn record_seqno_above_48_bits_is_rejected_even_with_a_valid_crc() {
        let mut bytes = encoded(1, MAX_SEQNO, &recs());
        // Third record starts after 17+5+3 + 17+4+0 = 46 bytes.
        bytes[46..54].copy_from_slice(&(1u64 << 48).to_le_bytes());
        reseal(&mut bytes);
        let (_d, path) = write_raw(&bytes);
        let err = read_index_file(&path).unwrap_err();
        assert!(
            matches!(err, Error::SeqnoOutOfRange { seqno, .. } if seqno == 1 << 48),
            "{err}"
        );
    }

    #[test]
    fn sealed_but_inconsistent_files_are_corrupt() {
        type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("record outside range", Box::new(|b| b[0] = 0)),
            ("records out of order", Box::new(|b| b[25] = 9)),
            ("unknown kind", Box::new(|b| b[8] = 7)),
            (
                "version",
                Box::new(|b| {
                    let n = b.len();
                    b[n - 32] = 2;
                }),
            ),
            (
                "record count",
                Box::new(|b| {
                    let n = b.len();
                    b[n - 28] = 2;
                }),
            ),
            (
                "zero low seqno",
                Box::new(|b| {
                    let n = b.len();
                    b[n - 20] = 0;
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut bytes = encoded(1, 9, &recs());
            mutate(&mut bytes);
            reseal(&mut bytes);
            let (_d, path) = write_raw(&bytes);
            let err = read_index_file(&path).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn empty_files_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join(".tmp-1"), dir.path().join("1.sqi"));
        assert!(write_index_file(&tmp, &dest, 1, 1, &[]).is_err());
        assert!(!tmp.exists() && !dest.exists());
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(7), "000000000007.sqi");
        assert_eq!(parse_file_name("000000000007.sqi"), Some(7));
        assert_eq!(temp_file_name(5), ".tmp-000000000005.sqi");
        for bad in [
            "7.sqi",
            "00000000007.sqi",
            "0000000000a7.sqi",
            "000000000007.sq",
            ".tmp-000000000005.sqi",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
