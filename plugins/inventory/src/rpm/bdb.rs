//! rpm's Berkeley DB `Packages` file: a BDB hash database (libdb's dbinc/db_page.h),
//! keys the 4-byte package numbers, values the header blobs. Read page by page with
//! `pread`, without libdb and without its environment (`__db.*` files, locks).
//!
//! ```text
//! page 0, hash meta page:  12 magic 0x061561 (its byte order is the file's),
//!                          20 page size, 24 encryption algorithm, 25 page type (8),
//!                          26 meta flags (0x01: page checksums), 32 last page number
//! every page:              16 next page, 20 entry count (u16), 22 high free offset /
//!                          overflow length (u16), 25 page type; then (after 6 bytes of
//!                          checksum when the meta flags say so) the u16 item offsets
//! hash page (type 13, 2):  items in key/value pairs; item i spans from its offset to the
//!                          offset of item i-1 (the page end for item 0); first byte the
//!                          item type: 1 inline bytes, 3 off-page (4 page, 8 total length)
//! overflow page (type 7):  the overflow length bytes after the header, chained by next
//! ```
//!
//! Every page of the file is scanned for hash pages in order, which needs no knowledge of
//! the bucket layout; values off-page are followed through their overflow chain, bounded
//! by the page count and by the total length the item announces.

use std::fs::File;
use std::path::Path;

use super::{corrupt, open_limited, read_exact_at, Collector, Endian, RpmError, RpmLimits};

const HASH_MAGIC: u32 = 0x0006_1561;

const META_MAGIC_AT: usize = 12;
const META_PAGE_SIZE_AT: usize = 20;
const META_ENCRYPTION_AT: usize = 24;
const META_FLAGS_AT: usize = 26;
const META_LAST_PAGE_AT: usize = 32;
/// All of the meta page this reader needs (and the smallest page size).
const META_LEN: usize = 512;
const META_FLAG_CHECKSUM: u8 = 0x01;

const PAGE_NEXT_AT: usize = 16;
const PAGE_ENTRIES_AT: usize = 20;
/// On overflow pages, the bytes of data the page holds.
const PAGE_OVERFLOW_LEN_AT: usize = 22;
const PAGE_TYPE_AT: usize = 25;
const PAGE_HEADER_LEN: usize = 26;
/// The checksum after the page header when the database has page checksums (2 bytes of
/// alignment, 4 of checksum).
const PAGE_CHECKSUM_LEN: usize = 6;

const PAGE_TYPE_HASH_UNSORTED: u8 = 2;
const PAGE_TYPE_OVERFLOW: u8 = 7;
const PAGE_TYPE_HASH_META: u8 = 8;
const PAGE_TYPE_HASH: u8 = 13;

const ITEM_KEYDATA: u8 = 1;
const ITEM_OFFPAGE: u8 = 3;
const OFFPAGE_PAGE_AT: usize = 4;
const OFFPAGE_LEN_AT: usize = 8;
const OFFPAGE_ITEM_LEN: usize = 12;

/// Hash pages are scanned this many bytes at a time.
const SCAN_CHUNK_BYTES: usize = 256 << 10;

/// What the meta page says about the file.
#[derive(Debug, Clone, Copy)]
struct Layout {
    endian: Endian,
    page_size: usize,
    /// Page header plus checksum: where the item offsets start.
    page_overhead: usize,
    page_count: u64,
}

/// Reads every header blob of the BDB hash file at `path` into `collector`.
///
/// Fails when the meta page is not a hash database's or the file is shorter than its
/// last page number says; a value that cannot be read is counted skipped.
pub(super) fn read(
    path: &Path,
    limits: &RpmLimits,
    collector: &mut Collector,
) -> Result<(), RpmError> {
    let (file, file_len) = open_limited(path, limits)?;
    let layout = read_meta(&file, path, file_len)?;
    let pages_per_chunk = (SCAN_CHUNK_BYTES / layout.page_size).max(1) as u64;
    let mut chunk = Vec::new();
    let mut first = 1u64;
    while first < layout.page_count {
        let pages = pages_per_chunk.min(layout.page_count - first);
        // Bounded by SCAN_CHUNK_BYTES (or one page).
        chunk.resize(pages as usize * layout.page_size, 0);
        read_exact_at(&file, path, &mut chunk, first * layout.page_size as u64)?;
        for page in chunk.chunks_exact(layout.page_size) {
            let kind = page[PAGE_TYPE_AT];
            if kind == PAGE_TYPE_HASH || kind == PAGE_TYPE_HASH_UNSORTED {
                read_hash_page(&file, path, layout, page, limits, collector)?;
            }
        }
        first += pages;
    }
    Ok(())
}

fn read_meta(file: &File, path: &Path, file_len: u64) -> Result<Layout, RpmError> {
    let mut meta = [0u8; META_LEN];
    read_exact_at(file, path, &mut meta, 0)?;
    let endian = [Endian::Little, Endian::Big]
        .into_iter()
        .find(|endian| endian.u32_at(&meta, META_MAGIC_AT) == Some(HASH_MAGIC))
        .ok_or_else(|| corrupt(path, "not a Berkeley DB hash file"))?;
    let field = |at| endian.u32_at(&meta, at).unwrap_or_default();
    let page_size = field(META_PAGE_SIZE_AT);
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(corrupt(path, format!("page size {page_size}")));
    }
    if meta[META_ENCRYPTION_AT] != 0 {
        return Err(corrupt(path, "encrypted"));
    }
    if meta[PAGE_TYPE_AT] != PAGE_TYPE_HASH_META {
        return Err(corrupt(
            path,
            format!("meta page of type {}", meta[PAGE_TYPE_AT]),
        ));
    }
    let page_count = u64::from(field(META_LAST_PAGE_AT)) + 1;
    if page_count * u64::from(page_size) > file_len {
        return Err(corrupt(
            path,
            format!("truncated: {page_count} pages of {page_size} bytes in {file_len} bytes"),
        ));
    }
    let checksum = if meta[META_FLAGS_AT] & META_FLAG_CHECKSUM != 0 {
        PAGE_CHECKSUM_LEN
    } else {
        0
    };
    Ok(Layout {
        endian,
        page_size: page_size as usize,
        page_overhead: PAGE_HEADER_LEN + checksum,
        page_count,
    })
}

/// The bytes of item `index` of a hash page, type byte first; `None` when its offsets
/// do not fit the page.
fn item(layout: Layout, page: &[u8], entries: usize, index: usize) -> Option<&[u8]> {
    let offset_at = |i: usize| {
        layout
            .endian
            .u16_at(page, layout.page_overhead + 2 * i)
            .map(usize::from)
    };
    let start = offset_at(index)?;
    let end = if index == 0 {
        layout.page_size
    } else {
        offset_at(index - 1)?
    };
    let items_start = layout.page_overhead + 2 * entries;
    (items_start <= start && start < end && end <= page.len()).then(|| &page[start..end])
}

fn read_hash_page(
    file: &File,
    path: &Path,
    layout: Layout,
    page: &[u8],
    limits: &RpmLimits,
    collector: &mut Collector,
) -> Result<(), RpmError> {
    let entries = usize::from(
        layout
            .endian
            .u16_at(page, PAGE_ENTRIES_AT)
            .unwrap_or_default(),
    );
    if layout.page_overhead + 2 * entries > page.len() {
        collector.skip(&"hash page with more entries than fit");
        return Ok(());
    }
    let mut value = Vec::new();
    // Key/value pairs; bounded by the entry count checked to fit the page.
    for pair in 0..entries / 2 {
        let (Some(key), Some(data)) = (
            item(layout, page, entries, 2 * pair),
            item(layout, page, entries, 2 * pair + 1),
        ) else {
            collector.skip(&"hash item offsets outside the page");
            continue;
        };
        // Key 0 holds rpm's next package number, not a header.
        if key == [ITEM_KEYDATA, 0, 0, 0, 0] {
            continue;
        }
        match data[0] {
            ITEM_KEYDATA if data.len() - 1 > limits.max_header_bytes => {
                collector.skip(&"inline value over the header limit")
            }
            ITEM_KEYDATA => collector.header(&data[1..])?,
            ITEM_OFFPAGE => match read_overflow(file, path, layout, data, limits, &mut value)? {
                Ok(()) => collector.header(&value)?,
                Err(reason) => collector.skip(&reason),
            },
            other => collector.skip(&format!("hash item of type {other}")),
        }
    }
    Ok(())
}

/// Follows an off-page item's overflow chain into `value`; the inner error says why the
/// value is skipped, the outer one is an I/O failure.
fn read_overflow(
    file: &File,
    path: &Path,
    layout: Layout,
    item: &[u8],
    limits: &RpmLimits,
    value: &mut Vec<u8>,
) -> Result<Result<(), String>, RpmError> {
    if item.len() < OFFPAGE_ITEM_LEN {
        return Ok(Err("short off-page item".into()));
    }
    let field = |at| layout.endian.u32_at(item, at).unwrap_or_default();
    let mut page_number = u64::from(field(OFFPAGE_PAGE_AT));
    let total = field(OFFPAGE_LEN_AT) as usize;
    if total > limits.max_header_bytes {
        return Ok(Err(format!("value of {total} bytes over the header limit")));
    }
    value.clear();
    let mut page = vec![0u8; layout.page_size];
    // A chain visits each page at most once; longer means a cycle.
    for _ in 0..layout.page_count {
        if page_number == 0 || page_number >= layout.page_count {
            return Ok(Err(format!(
                "overflow chain to page {page_number} of {}",
                layout.page_count
            )));
        }
        read_exact_at(file, path, &mut page, page_number * layout.page_size as u64)?;
        if page[PAGE_TYPE_AT] != PAGE_TYPE_OVERFLOW {
            return Ok(Err(format!(
                "overflow chain reaches a page of type {}",
                page[PAGE_TYPE_AT]
            )));
        }
        let len = usize::from(
            layout
                .endian
                .u16_at(&page, PAGE_OVERFLOW_LEN_AT)
                .unwrap_or_default(),
        );
        let data = page.get(layout.page_overhead..layout.page_overhead + len);
        match data {
            Some(data) if value.len() + data.len() <= total => value.extend_from_slice(data),
            _ => return Ok(Err("overflow page longer than its page or its value".into())),
        }
        page_number = u64::from(
            layout
                .endian
                .u32_at(&page, PAGE_NEXT_AT)
                .unwrap_or_default(),
        );
        if page_number == 0 {
            return Ok(if value.len() == total {
                Ok(())
            } else {
                Err(format!(
                    "overflow chain of {} bytes for a value of {total}",
                    value.len()
                ))
            });
        }
    }
    Ok(Err("overflow chain loops".into()))
}
