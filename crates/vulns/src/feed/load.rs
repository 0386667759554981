//! Reading feed paths: files, directories and zips, each file told apart by its first
//! bytes, each read through byte limits, each published whole or not at all.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use super::{debian, osv, Affected, Batch, FeedFormat, FeedLimits, FeedLoad, FileReport, Interner};

/// Bytes read to tell the format: the tracker's first key is a package name, an OSV
/// object's first key one of a dozen fields; pretty-printed input wastes some.
const SNIFF_BYTES: u64 = 64 << 10;

/// OSV's top-level fields: an object starting with one of them is an OSV record, not a
/// tracker file (whose keys are Debian source packages).
const OSV_FIELDS: &[&str] = &[
    "schema_version",
    "id",
    "modified",
    "published",
    "withdrawn",
    "aliases",
    "related",
    "upstream",
    "summary",
    "details",
    "severity",
    "affected",
    "references",
    "credits",
    "database_specific",
];

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Tracker,
    Osv,
    Zip,
}

/// Loads every path, in order, until the advisory cap; see [`super::Feeds::load`].
pub(super) fn load_all(paths: &[PathBuf], limits: &FeedLimits) -> (Vec<Affected>, FeedLoad) {
    let mut loader = Loader {
        limits: limits.clone(),
        // Positions in the index are u32.
        cap: limits.max_advisories.min(u32::MAX as usize),
        records: Vec::new(),
        strings: Interner::default(),
        report: FeedLoad::default(),
    };
    for path in paths {
        let file = loader.load_path(path);
        tracing::info!(
            path = %path.display(),
            advisories = file.advisories,
            skipped = file.skipped.total(),
            files_failed = file.files_failed,
            error = file.error.as_deref().unwrap_or(""),
            "vulnerability feed loaded"
        );
        loader.report.files.push(file);
    }
    loader.records.shrink_to_fit();
    (loader.records, loader.report)
}

struct Loader {
    limits: FeedLimits,
    cap: usize,
    records: Vec<Affected>,
    strings: Interner,
    report: FeedLoad,
}

impl Loader {
    fn load_path(&mut self, path: &Path) -> FileReport {
        let mut file = FileReport {
            path: path.to_path_buf(),
            format: None,
            advisories: 0,
            skipped: Default::default(),
            first_skip: None,
            files: 0,
            files_failed: 0,
            error: None,
        };
        let published_before = self.records.len();
        let outcome = match std::fs::metadata(path) {
            Err(e) => Err(format!("cannot read: {e}")),
            Ok(meta) if meta.is_dir() => self.load_directory(path, &mut file),
            Ok(_) => self.load_file(path, &mut file),
        };
        if let Err(reason) = outcome {
            // A directory or zip that fails as a whole takes back its good members too.
            self.records.truncate(published_before);
            file.advisories = 0;
            self.report.problem(path.to_path_buf(), reason.clone());
            file.error = Some(reason);
        }
        file
    }

    /// A single file: the tracker, OSV, or a zip of OSV files.
    fn load_file(&mut self, path: &Path, file: &mut FileReport) -> Result<(), String> {
        let mut handle = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let size = handle.metadata().map_err(|e| e.to_string())?.len();
        if size > self.limits.max_file_bytes {
            return Err(too_large(size, self.limits.max_file_bytes));
        }
        let mut head = [0u8; 4];
        let magic_len = (&handle).read(&mut head).map_err(|e| e.to_string())?;
        if is_zip(&head[..magic_len]) {
            file.format = Some(FeedFormat::OsvZip);
            return self.load_zip(path, handle, file);
        }
        handle.rewind().map_err(|e| format!("cannot read: {e}"))?;
        let total = Cell::new(self.limits.max_total_bytes);
        file.files = 1;
        self.load_member(handle, &total, file).map(drop)
    }

    /// A directory of OSV `*.json` files (not recursive: `all.zip` is flat). Each
    /// member is published whole or not at all, on its own.
    fn load_directory(&mut self, path: &Path, file: &mut FileReport) -> Result<(), String> {
        file.format = Some(FeedFormat::OsvDirectory);
        let mut members = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| format!("cannot list: {e}"))? {
            let entry = entry.map_err(|e| format!("cannot list: {e}"))?;
            let member = entry.path();
            let is_json = member.extension().is_some_and(|ext| ext == "json");
            if is_json && entry.file_type().is_ok_and(|t| !t.is_dir()) {
                if members.len() >= self.limits.max_files {
                    return Err(too_many(self.limits.max_files));
                }
                members.push(member);
            }
        }
        members.sort();
        let total = Cell::new(self.limits.max_total_bytes);
        for member in members {
            file.files += 1;
            let outcome = File::open(&member)
                .map_err(|e| format!("cannot open: {e}"))
                .and_then(|handle| self.load_member(handle, &total, file));
            if let Err(reason) = outcome {
                file.files_failed += 1;
                self.report.problem(member, reason);
            }
            if total.get() == 0 {
                return Err(over_total(self.limits.max_total_bytes));
            }
        }
        Ok(())
    }

    /// An OSV `all.zip`: members are inflated through the same byte limits as files
    /// (the sizes the archive claims are not trusted), so a zip bomb costs at most
    /// `max_file_bytes` per member and `max_total_bytes` in all.
    fn load_zip(&mut self, path: &Path, handle: File, file: &mut FileReport) -> Result<(), String> {
        let mut archive = zip::ZipArchive::new(BufReader::new(handle))
            .map_err(|e| format!("not a readable zip: {e}"))?;
        if archive.len() > self.limits.max_files {
            return Err(too_many(self.limits.max_files));
        }
        let total = Cell::new(self.limits.max_total_bytes);
        for index in 0..archive.len() {
            let mut member_path = path.to_path_buf();
            let outcome = match archive.by_index(index) {
                Err(e) => Err(format!("cannot read member {index}: {e}")),
                Ok(member) if member.is_dir() || !member.name().ends_with(".json") => continue,
                Ok(member) => {
                    member_path.push(member.name());
                    file.files += 1;
                    self.load_member(member, &total, file)
                        .and_then(|content| match content {
                            // A directory holds the members it publishes: no nesting.
                            Content::Zip => Err("a zip inside a zip".to_string()),
                            Content::Tracker | Content::Osv => Ok(()),
                        })
                }
            };
            if let Err(reason) = outcome {
                file.files_failed += 1;
                self.report.problem(member_path, reason);
            }
            if total.get() == 0 {
                return Err(over_total(self.limits.max_total_bytes));
            }
        }
        Ok(())
    }

    /// Reads one JSON document (a file or a member) and publishes its records if, and
    /// only if, all of it parsed.
    fn load_member(
        &mut self,
        reader: impl Read,
        total: &Cell<u64>,
        file: &mut FileReport,
    ) -> Result<Content, String> {
        let limited = Limited {
            inner: reader,
            file_left: self.limits.max_file_bytes,
            file_limit: self.limits.max_file_bytes,
            total_left: total,
            total_limit: self.limits.max_total_bytes,
        };
        let mut buffered = BufReader::with_capacity(64 << 10, limited);
        let mut prefix = Vec::new();
        (&mut buffered)
            .take(SNIFF_BYTES)
            .read_to_end(&mut prefix)
            .map_err(|e| e.to_string())?;
        let content = sniff(&prefix)?;
        // A lone file is named by what it holds, even if it then fails to parse.
        file.format.get_or_insert(match content {
            Content::Tracker => FeedFormat::DebianTracker,
            Content::Osv | Content::Zip => FeedFormat::Osv,
        });
        let reader = Cursor::new(prefix).chain(buffered);
        let room = self.cap.saturating_sub(self.records.len());
        let mut batch = Batch::new(room, &mut self.strings);
        match content {
            Content::Tracker => debian::parse(reader, &mut batch)?,
            Content::Osv => osv::parse(reader, &mut batch)?,
            Content::Zip => return Err("a zip inside a directory".into()),
        }
        file.advisories += batch.records.len() as u64;
        file.skipped.add(&batch.skipped);
        if file.first_skip.is_none() {
            file.first_skip = batch.first_skip;
        }
        if self.records.is_empty() {
            // The common case (one tracker file): no copy of ~10^5 records.
            std::mem::swap(&mut self.records, &mut batch.records);
        } else {
            self.records.append(&mut batch.records);
        }
        Ok(content)
    }
}

fn is_zip(head: &[u8]) -> bool {
    // Local file header, or the end record of an empty archive.
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

fn too_large(size: u64, limit: u64) -> String {
    format!("{size} bytes, larger than max_file_bytes ({limit})")
}

fn too_many(limit: usize) -> String {
    format!("more than max_files ({limit}) files")
}

fn over_total(limit: u64) -> String {
    format!("more than max_total_bytes ({limit}) read in all")
}

/// Tells the tracker from OSV by the first key of the top-level object (see
/// [`OSV_FIELDS`]); an array is OSV.
///
/// # Errors
/// When the prefix is empty, not JSON, or too short to tell.
fn sniff(prefix: &[u8]) -> Result<Content, String> {
    if is_zip(prefix) {
        return Ok(Content::Zip);
    }
    let text = prefix.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(prefix);
    let mut rest = skip_space(text);
    match rest.first() {
        None => return Err("empty".into()),
        Some(b'[') => return Ok(Content::Osv),
        Some(b'{') => rest = skip_space(&rest[1..]),
        Some(_) => return Err("not JSON: neither an object nor an array".into()),
    }
    let key = match rest.first() {
        // `{}`: an empty tracker, harmless either way.
        Some(b'}') => return Ok(Content::Tracker),
        Some(b'"') => {
            let end = string_end(&rest[1..]).ok_or_else(undecided)?;
            let key = &rest[1..1 + end];
            rest = skip_space(&rest[2 + end..]);
            key
        }
        Some(_) => return Err("not JSON: an object key is not a string".into()),
        None => return Err(undecided()),
    };
    match rest.first() {
        Some(b':') => rest = skip_space(&rest[1..]),
        Some(_) => return Err("not JSON: no ':' after the first key".into()),
        None => return Err(undecided()),
    }
    let is_osv_field = OSV_FIELDS.iter().any(|f| f.as_bytes() == key);
    match rest.first() {
        None => Err(undecided()),
        Some(b'{') if !is_osv_field => Ok(Content::Tracker),
        Some(_) => Ok(Content::Osv),
    }
}

fn undecided() -> String {
    format!("cannot tell the format from the first {SNIFF_BYTES} bytes")
}

fn skip_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Where the string starting after an opening quote ends (index of the closing quote).
fn string_end(bytes: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (index, &byte) in bytes.iter().enumerate() {
        match (escaped, byte) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(index),
            _ => {}
        }
    }
    None
}

/// Fails the read once a file passes `max_file_bytes` or a path `max_total_bytes`, so
/// neither a file that grows while read nor an inflating zip member can exceed them.
struct Limited<'t, R> {
    inner: R,
    file_left: u64,
    file_limit: u64,
    total_left: &'t Cell<u64>,
    total_limit: u64,
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)? as u64;
        if n > self.file_left {
            return Err(io::Error::other(format!(
                "larger than max_file_bytes ({})",
                self.file_limit
            )));
        }
        if n > self.total_left.get() {
            self.total_left.set(0);
            return Err(io::Error::other(over_total(self.total_limit)));
        }
        self.file_left -= n;
        self.total_left.set(self.total_left.get() - n);
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_formats_apart() {
        let cases: &[(&[u8], Result<Content, ()>)] = &[
            (b"{\"0ad\": {\"CVE-2020-0001\": {}}}", Ok(Content::Tracker)),
            (b"  {\n  \"bash\" :\n {", Ok(Content::Tracker)),
            (b"{}", Ok(Content::Tracker)),
            (b"{\"id\": \"GHSA-x\"}", Ok(Content::Osv)),
            (
                b"{\"database_specific\": {}, \"id\": \"x\"}",
                Ok(Content::Osv),
            ),
            (b"\xEF\xBB\xBF[{\"id\": 1}]", Ok(Content::Osv)),
            (b"PK\x03\x04rest", Ok(Content::Zip)),
            (b"{\"a\\\"b\": {", Ok(Content::Tracker)),
            (b"", Err(())),
            (b"   ", Err(())),
            (b"garbage", Err(())),
            (b"{\"truncated", Err(())),
            (b"{\"bash\"", Err(())),
            (b"{\"bash\" 1", Err(())),
            (b"{1: 2}", Err(())),
        ];
        for (prefix, expected) in cases {
            assert_eq!(
                sniff(prefix).map_err(|_| ()),
                *expected,
                "{}",
                String::from_utf8_lossy(prefix)
            );
        }
    }
}
