//! rpm's own "ndb" package file, `Packages.db` (rpm's lib/backend/ndb/rpmpkg.c).
//! Everything is little-endian; the file is cut in 16-byte blocks.
//!
//! ```text
//! 0     header, 32 bytes: magic "RpmP", version 0, generation, slot pages, next index
//! 32    slots up to the end of the slot pages (4096 bytes each), 16 bytes a slot:
//!       magic "Slot", package index, block offset (0: free slot), block count
//! then  blobs, each at its slot's block offset and filling its block count:
//!       head: magic "BlbS", package index, timestamp, blob length   (16 bytes)
//!       the header blob, zero padding to the block end minus the tail
//!       tail: adler32 of head, blob and padding, blob length, magic "BlbE" (12 bytes)
//! ```
//!
//! A blob is read whole in one `pread` and checked (magics, index, length, adler32) before
//! its header is parsed: a blob rpm was writing when we read it fails the checksum and
//! is counted skipped, never half-read. LZO-compressed blobs (a build option nobody ships
//! on) are not supported: they fail the header parse and are counted.

use std::path::Path;

use super::{corrupt, open_limited, read_exact_at, Collector, Endian, RpmError, RpmLimits};

const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"RpmP");
const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"Slot");
const BLOB_HEAD_MAGIC: u32 = u32::from_le_bytes(*b"BlbS");
const BLOB_TAIL_MAGIC: u32 = u32::from_le_bytes(*b"BlbE");
const VERSION: u32 = 0;

const HEADER_LEN: usize = 32;
const SLOT_LEN: usize = 16;
const BLOCK_LEN: u64 = 16;
const SLOT_PAGE_LEN: usize = 4096;
const BLOB_HEAD_LEN: usize = 16;
const BLOB_TAIL_LEN: usize = 12;

/// Header fields (offsets into the first 32 bytes).
const HEADER_MAGIC_AT: usize = 0;
const HEADER_VERSION_AT: usize = 4;
const HEADER_SLOT_PAGES_AT: usize = 12;

/// Slot fields.
const SLOT_MAGIC_AT: usize = 0;
const SLOT_INDEX_AT: usize = 4;
const SLOT_BLOCK_OFFSET_AT: usize = 8;
const SLOT_BLOCK_COUNT_AT: usize = 12;

/// Blob head and tail fields.
const HEAD_MAGIC_AT: usize = 0;
const HEAD_INDEX_AT: usize = 4;
const HEAD_LEN_AT: usize = 12;
const TAIL_ADLER_AT: usize = 0;
const TAIL_LEN_AT: usize = 4;
const TAIL_MAGIC_AT: usize = 8;

const LE: Endian = Endian::Little;

/// One used slot: where a package's blob is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    package_index: u32,
    block_offset: u32,
    block_count: u32,
}

/// Reads every package blob of the ndb file at `path` into `collector`.
///
/// Fails on a bad file header or slot magic, or a slot pointing past the end of the file
/// (rpm calls that a truncated database too); a bad blob is counted skipped.
pub(super) fn read(
    path: &Path,
    limits: &RpmLimits,
    collector: &mut Collector,
) -> Result<(), RpmError> {
    let (file, file_len) = open_limited(path, limits)?;
    let slots = read_slots(&file, path, file_len)?;
    let mut block = Vec::new();
    for slot in slots {
        match read_blob(&file, path, slot, limits, &mut block)? {
            Ok(blob) => collector.header(blob)?,
            Err(reason) => collector.skip(&format!("package {}: {reason}", slot.package_index)),
        }
    }
    Ok(())
}

fn read_slots(file: &std::fs::File, path: &Path, file_len: u64) -> Result<Vec<Slot>, RpmError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_at(file, path, &mut header, 0)?;
    let field = |at| LE.u32_at(&header, at).unwrap_or_default();
    if field(HEADER_MAGIC_AT) != HEADER_MAGIC {
        return Err(corrupt(path, "no ndb magic"));
    }
    if field(HEADER_VERSION_AT) != VERSION {
        return Err(corrupt(
            path,
            format!("ndb version {}", field(HEADER_VERSION_AT)),
        ));
    }
    let slot_pages = u64::from(field(HEADER_SLOT_PAGES_AT));
    // The slot pages must fit in the file (which open_limited bounded): this bounds the loop.
    if slot_pages == 0 || slot_pages * SLOT_PAGE_LEN as u64 > file_len {
        return Err(corrupt(
            path,
            format!("{slot_pages} slot pages in a file of {file_len} bytes"),
        ));
    }
    let file_blocks = file_len / BLOCK_LEN;
    let first_blob_block = slot_pages * (SLOT_PAGE_LEN as u64 / BLOCK_LEN);
    let mut slots = Vec::new();
    let mut page = vec![0u8; SLOT_PAGE_LEN];
    for page_number in 0..slot_pages {
        read_exact_at(file, path, &mut page, page_number * SLOT_PAGE_LEN as u64)?;
        // The file header takes the first two slots of page 0.
        let first = if page_number == 0 { HEADER_LEN } else { 0 };
        for raw in page[first..].chunks_exact(SLOT_LEN) {
            let field = |at| LE.u32_at(raw, at).unwrap_or_default();
            if field(SLOT_MAGIC_AT) != SLOT_MAGIC {
                return Err(corrupt(
                    path,
                    format!("bad slot magic in slot page {page_number}"),
                ));
            }
            let slot = Slot {
                package_index: field(SLOT_INDEX_AT),
                block_offset: field(SLOT_BLOCK_OFFSET_AT),
                block_count: field(SLOT_BLOCK_COUNT_AT),
            };
            if slot.block_offset == 0 {
                continue;
            }
            let end = u64::from(slot.block_offset) + u64::from(slot.block_count);
            if end > file_blocks {
                return Err(corrupt(
                    path,
                    format!(
                        "truncated: package {} ends past the file",
                        slot.package_index
                    ),
                ));
            }
            if slot.package_index == 0
                || slot.block_count == 0
                || u64::from(slot.block_offset) < first_blob_block
            {
                return Err(corrupt(
                    path,
                    format!("bad slot for package {}", slot.package_index),
                ));
            }
            slots.push(slot);
        }
    }
    Ok(slots)
}

/// The header blob of `slot`, read into `block`; the inner error says why the blob is
/// skipped, the outer one is an I/O failure.
fn read_blob<'b>(
    file: &std::fs::File,
    path: &Path,
    slot: Slot,
    limits: &RpmLimits,
    block: &'b mut Vec<u8>,
) -> Result<Result<&'b [u8], String>, RpmError> {
    let block_len = u64::from(slot.block_count) * BLOCK_LEN;
    let max_block = (limits.max_header_bytes + BLOB_HEAD_LEN + BLOB_TAIL_LEN) as u64 + BLOCK_LEN;
    if block_len > max_block {
        return Ok(Err(format!(
            "blob of {block_len} bytes over the header limit"
        )));
    }
    if block_len < (BLOB_HEAD_LEN + BLOB_TAIL_LEN) as u64 {
        return Ok(Err("blob smaller than its head and tail".into()));
    }
    // Bounded just above by max_header_bytes, a usize.
    block.resize(block_len as usize, 0);
    read_exact_at(file, path, block, u64::from(slot.block_offset) * BLOCK_LEN)?;
    Ok(check_blob(block, slot.package_index))
}

/// The blob inside a whole block, after checking its head, tail and checksum.
fn check_blob(block: &[u8], package_index: u32) -> Result<&[u8], String> {
    let head = |at| LE.u32_at(block, at).unwrap_or_default();
    if head(HEAD_MAGIC_AT) != BLOB_HEAD_MAGIC {
        return Err("bad blob magic".into());
    }
    if head(HEAD_INDEX_AT) != package_index {
        return Err(format!(
            "blob of package {} in its slot",
            head(HEAD_INDEX_AT)
        ));
    }
    let blob_len = head(HEAD_LEN_AT) as usize;
    let tail_at = block.len() - BLOB_TAIL_LEN;
    if blob_len > tail_at - BLOB_HEAD_LEN {
        return Err(format!("blob length {blob_len} past its block"));
    }
    let tail = |at| LE.u32_at(&block[tail_at..], at).unwrap_or_default();
    if tail(TAIL_MAGIC_AT) != BLOB_TAIL_MAGIC || tail(TAIL_LEN_AT) as usize != blob_len {
        return Err("bad blob tail".into());
    }
    if adler32(&block[..tail_at]) != tail(TAIL_ADLER_AT) {
        return Err("blob checksum mismatch (torn or corrupt)".into());
    }
    Ok(&block[BLOB_HEAD_LEN..BLOB_HEAD_LEN + blob_len])
}

/// Adler-32 (RFC 1950), as rpm checks its blobs with.
fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    // The largest run before the sums can overflow a u32 (zlib's NMAX).
    const RUN: usize = 5552;
    let (mut low, mut high) = (1u32, 0u32);
    for run in bytes.chunks(RUN) {
        for &byte in run {
            low += u32::from(byte);
            high += low;
        }
        low %= MOD;
        high %= MOD;
    }
    (high << 16) | low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler32_matches_the_definition() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        // All 0xff bytes: the worst case for the deferred modulo. Checked against the
        // definition (a modulo every byte).
        let long = vec![0xffu8; 100_000];
        let (mut low, mut high) = (1u64, 0u64);
        for &byte in &long {
            low = (low + u64::from(byte)) % 65521;
            high = (high + low) % 65521;
        }
        assert_eq!(adler32(&long), ((high << 16) | low) as u32);
    }

    #[test]
    fn a_blob_with_a_wrong_checksum_is_refused() {
        let blob = b"some header";
        let mut block = Vec::new();
        block.extend_from_slice(&BLOB_HEAD_MAGIC.to_le_bytes());
        block.extend_from_slice(&7u32.to_le_bytes());
        block.extend_from_slice(&0u32.to_le_bytes());
        block.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        block.extend_from_slice(blob);
        block.resize(48 - BLOB_TAIL_LEN, 0);
        let sum = adler32(&block);
        block.extend_from_slice(&sum.to_le_bytes());
        block.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        block.extend_from_slice(&BLOB_TAIL_MAGIC.to_le_bytes());
        assert_eq!(check_blob(&block, 7), Ok(&blob[..]));
        assert!(check_blob(&block, 8).is_err());
        let mut torn = block.clone();
        torn[20] ^= 1;
        assert!(check_blob(&torn, 7).unwrap_err().contains("checksum"));
        let mut long = block.clone();
        long[HEAD_LEN_AT..HEAD_LEN_AT + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(check_blob(&long, 7).is_err());
    }
}
