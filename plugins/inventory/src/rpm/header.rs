//! rpm's header blob, as every database backend stores it: the header of a package file
//! without its 8-byte magic.
//!
//! ```text
//! 0   il: u32 BE     number of index entries
//! 4   dl: u32 BE     bytes in the data store
//! 8   il x 16 bytes  index entries: tag i32, type u32, offset i32, count u32 (all BE)
//! 8 + 16*il          data store, dl bytes; an entry's offset is relative to it
//! ```
//!
//! Only the few tags an inventory needs are looked up; everything else (regions, file
//! lists, signatures) is ignored, not validated. Every offset and count is checked
//! against the data store before it is used: a lying header is an error, never a read
//! out of bounds.

use std::fmt;

const TAG_NAME: i32 = 1000;
const TAG_VERSION: i32 = 1001;
const TAG_RELEASE: i32 = 1002;
const TAG_EPOCH: i32 = 1003;
const TAG_ARCH: i32 = 1022;
const TAG_SOURCERPM: i32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

/// Bytes of one index entry.
const ENTRY_LEN: usize = 16;
/// The il and dl counts in front of the index.
const PREAMBLE_LEN: usize = 8;
/// rpm's own ceilings (`HEADER_TAGS_MAX`, `HEADER_DATA_MAX` in lib/header_internal.h):
/// a header over them is one rpm itself would refuse.
const MAX_INDEX_ENTRIES: u32 = 0xffff;
const MAX_DATA_BYTES: u32 = 0x0fff_ffff;

/// The fields of a header an inventory line is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeaderFields {
    pub name: String,
    pub epoch: Option<u32>,
    pub version: String,
    pub release: String,
    /// Empty when the header has none (`gpg-pubkey`).
    pub arch: String,
    /// `bash-5.1.8-6.el9.src.rpm`; empty when the header has none.
    pub source_rpm: String,
}

/// Why a header blob was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeaderError {
    /// Shorter than its own il/dl counts say.
    Truncated { needed: u64, len: usize },
    /// Counts beyond rpm's own ceilings.
    Counts { il: u32, dl: u32 },
    /// A wanted tag's entry points outside the data store, has the wrong type, or its
    /// string has no terminating NUL.
    BadEntry { tag: i32, reason: &'static str },
    /// NAME, VERSION or RELEASE absent.
    Missing { tag: i32 },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Truncated { needed, len } => {
                write!(f, "header of {len} bytes, its counts need {needed}")
            }
            HeaderError::Counts { il, dl } => {
                write!(f, "header counts out of range (il {il}, dl {dl})")
            }
            HeaderError::BadEntry { tag, reason } => write!(f, "header tag {tag}: {reason}"),
            HeaderError::Missing { tag } => write!(f, "header has no tag {tag}"),
        }
    }
}

/// One index entry, as read.
#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: i32,
    kind: u32,
    offset: i32,
    count: u32,
}

/// Reads NAME, EPOCH, VERSION, RELEASE, ARCH and SOURCERPM from a header blob.
///
/// Fails when the blob is shorter than its counts, a wanted entry lies about where its
/// data is, or NAME/VERSION/RELEASE is missing.
pub(super) fn parse(blob: &[u8]) -> Result<HeaderFields, HeaderError> {
    let (index, data) = split(blob)?;
    let mut fields = HeaderFields {
        name: String::new(),
        epoch: None,
        version: String::new(),
        release: String::new(),
        arch: String::new(),
        source_rpm: String::new(),
    };
    let mut seen_name = false;
    let mut seen_version = false;
    let mut seen_release = false;
    // Bounded by il, itself at most MAX_INDEX_ENTRIES and covered by the blob.
    for raw in index.chunks_exact(ENTRY_LEN) {
        let entry = Entry {
            tag: be_i32(raw, 0),
            kind: be_u32(raw, 4),
            offset: be_i32(raw, 8),
            count: be_u32(raw, 12),
        };
        match entry.tag {
            TAG_NAME if !seen_name => {
                fields.name = string(data, entry)?;
                seen_name = true;
            }
            TAG_VERSION if !seen_version => {
                fields.version = string(data, entry)?;
                seen_version = true;
            }
            TAG_RELEASE if !seen_release => {
                fields.release = string(data, entry)?;
                seen_release = true;
            }
            TAG_EPOCH if fields.epoch.is_none() => fields.epoch = Some(int32(data, entry)?),
            TAG_ARCH if fields.arch.is_empty() => fields.arch = string(data, entry)?,
            TAG_SOURCERPM if fields.source_rpm.is_empty() => {
                fields.source_rpm = string(data, entry)?
            }
            _ => {}
        }
    }
    for (seen, tag) in [
        (seen_name, TAG_NAME),
        (seen_version, TAG_VERSION),
        (seen_release, TAG_RELEASE),
    ] {
        if !seen {
            return Err(HeaderError::Missing { tag });
        }
    }
    Ok(fields)
}

/// The index entries and the data store, after checking that the blob holds both.
fn split(blob: &[u8]) -> Result<(&[u8], &[u8]), HeaderError> {
    let truncated = |needed: u64| HeaderError::Truncated {
        needed,
        len: blob.len(),
    };
    let (Some(il), Some(dl)) = (blob.get(0..4), blob.get(4..8)) else {
        return Err(truncated(PREAMBLE_LEN as u64));
    };
    let il = u32::from_be_bytes([il[0], il[1], il[2], il[3]]);
    let dl = u32::from_be_bytes([dl[0], dl[1], dl[2], dl[3]]);
    if il == 0 || il > MAX_INDEX_ENTRIES || dl > MAX_DATA_BYTES {
        return Err(HeaderError::Counts { il, dl });
    }
    // In u64: il * 16 + dl cannot overflow there, whatever the counts say.
    let index_len = u64::from(il) * ENTRY_LEN as u64;
    let needed = PREAMBLE_LEN as u64 + index_len + u64::from(dl);
    if needed > blob.len() as u64 {
        return Err(truncated(needed));
    }
    // Both fit in the blob, so in usize.
    let data_start = PREAMBLE_LEN + index_len as usize;
    let index = &blob[PREAMBLE_LEN..data_start];
    let data = &blob[data_start..data_start + dl as usize];
    Ok((index, data))
}

/// The entry's data from its offset to the end of the store, after checking the offset.
fn data_at(data: &[u8], entry: Entry) -> Result<&[u8], HeaderError> {
    let bad = |reason| HeaderError::BadEntry {
        tag: entry.tag,
        reason,
    };
    let offset = usize::try_from(entry.offset).map_err(|_| bad("negative offset"))?;
    if entry.count == 0 {
        return Err(bad("count 0"));
    }
    data.get(offset..)
        .filter(|rest| !rest.is_empty())
        .ok_or(bad("offset past the data store"))
}

fn string(data: &[u8], entry: Entry) -> Result<String, HeaderError> {
    if entry.kind != TYPE_STRING {
        return Err(HeaderError::BadEntry {
            tag: entry.tag,
            reason: "not a string",
        });
    }
    let rest = data_at(data, entry)?;
    let Some(end) = rest.iter().position(|&byte| byte == 0) else {
        return Err(HeaderError::BadEntry {
            tag: entry.tag,
            reason: "string without NUL",
        });
    };
    // Names and versions are ASCII; a stray byte is shown, not a reason to drop the package.
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn int32(data: &[u8], entry: Entry) -> Result<u32, HeaderError> {
    if entry.kind != TYPE_INT32 {
        return Err(HeaderError::BadEntry {
            tag: entry.tag,
            reason: "not an int32",
        });
    }
    let rest = data_at(data, entry)?;
    match rest.get(0..4) {
        Some(bytes) => Ok(be_u32(bytes, 0)),
        None => Err(HeaderError::BadEntry {
            tag: entry.tag,
            reason: "int32 past the data store",
        }),
    }
}

/// `raw` is a 16-byte index entry, or a slice checked to hold 4 bytes at `at`.
fn be_u32(raw: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&raw[at..at + 4]);
    u32::from_be_bytes(bytes)
}

fn be_i32(raw: &[u8], at: usize) -> i32 {
    be_u32(raw, at) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header blob: `entries` are (tag, type, offset, count), `data` the store.
    fn blob(entries: &[(i32, u32, i32, u32)], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes()); // il
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()); // dl
        for &(tag, kind, offset, count) in entries {
            out.extend_from_slice(&tag.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    /// data store: "bash\0" @0, "5.1.8\0" @5, "6.el9\0" @11, "x86_64\0" @17,
    /// pad to 24, epoch 1 @24, "bash-5.1.8-6.el9.src.rpm\0" @28.
    fn bash() -> Vec<u8> {
        let mut data = b"bash\x005.1.8\x006.el9\x00x86_64\x00".to_vec();
        data.resize(24, 0);
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(b"bash-5.1.8-6.el9.src.rpm\x00");
        blob(
            &[
                (TAG_NAME, TYPE_STRING, 0, 1),
                (TAG_VERSION, TYPE_STRING, 5, 1),
                (TAG_RELEASE, TYPE_STRING, 11, 1),
                (TAG_ARCH, TYPE_STRING, 17, 1),
                (TAG_EPOCH, TYPE_INT32, 24, 1),
                (TAG_SOURCERPM, TYPE_STRING, 28, 1),
            ],
            &data,
        )
    }

    #[test]
    fn reads_the_wanted_tags() {
        let fields = parse(&bash()).unwrap();
        assert_eq!(
            fields,
            HeaderFields {
                name: "bash".into(),
                epoch: Some(1),
                version: "5.1.8".into(),
                release: "6.el9".into(),
                arch: "x86_64".into(),
                source_rpm: "bash-5.1.8-6.el9.src.rpm".into(),
            }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let whole = bash();
        for len in 0..whole.len() {
            assert!(
                parse(&whole[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn lying_offsets_and_counts_are_errors() {
        let data = b"bash\x00";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "offset past the store",
                blob(&[(TAG_NAME, TYPE_STRING, 5, 1)], data),
            ),
            (
                "offset far past",
                blob(&[(TAG_NAME, TYPE_STRING, i32::MAX, 1)], data),
            ),
            (
                "negative offset",
                blob(&[(TAG_NAME, TYPE_STRING, -4, 1)], data),
            ),
            ("no NUL", blob(&[(TAG_NAME, TYPE_STRING, 0, 1)], b"bash")),
            ("wrong type", blob(&[(TAG_NAME, TYPE_INT32, 0, 1)], data)),
            ("count 0", blob(&[(TAG_NAME, TYPE_STRING, 0, 0)], data)),
            (
                "epoch past the end",
                blob(&[(TAG_EPOCH, TYPE_INT32, 2, 1)], data),
            ),
            ("no name", blob(&[(TAG_ARCH, TYPE_STRING, 0, 1)], data)),
        ];
        for (what, bytes) in cases {
            assert!(parse(&bytes).is_err(), "{what}: parsed");
        }
    }

    #[test]
    fn counts_beyond_the_blob_or_rpms_ceilings_are_errors() {
        let mut huge_il = bash();
        huge_il[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&huge_il), Err(HeaderError::Counts { .. })));
        let mut huge_dl = bash();
        huge_dl[4..8].copy_from_slice(&(MAX_DATA_BYTES + 1).to_be_bytes());
        assert!(matches!(parse(&huge_dl), Err(HeaderError::Counts { .. })));
        let mut long_il = bash();
        long_il[0..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(matches!(
            parse(&long_il),
            Err(HeaderError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&blob(&[], b"")),
            Err(HeaderError::Counts { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic generator: the point is coverage of odd counts.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = bash();
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let _ = parse(&bytes);
        }
    }
}
