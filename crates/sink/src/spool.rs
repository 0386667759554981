//! The disk spool: events waiting for Kafka, in segment files, in order.
//!
//! A segment is a file `<20-digit id>.spool` of records `[len u32 LE][crc32 u32 LE]
//! [payload]`. Records are appended to the newest segment and read from the oldest. A
//! `kill -9` in the middle of a write leaves at most one partial record at the end of the
//! newest segment: at the next start it is cut off and reported, everything before it is
//! kept. When the spool would grow past its bound the oldest segment is removed and its
//! records handed back to the caller, who declares them as dropped.
//!
//! Nothing is lost without the caller being told: every record is either written (whole)
//! or handed back in a [`Handback`]. A write that fails (disk full) cuts the segment back
//! to its last whole record, so a half-written record never hides the ones after it.
//!
//! Durability: [`Spool::flush`] hands records to the kernel (safe from a crash of the
//! agent); [`Spool::sync`] forces them to disk (safe from a power cut), and a segment is
//! synced when it is closed. The caller decides how often to sync. Files are created
//! 0600 in a 0700 directory: events hold every process's arguments.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// One record at most this large: an event is bounded far below it.
const MAX_RECORD: u32 = 16 << 20;
/// Records are gathered in memory up to this many bytes before a write.
const PENDING_BYTES: usize = 64 << 10;

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
}

/// What opening the spool found and repaired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes of a partial or corrupt record cut from the end of a segment.
    pub truncated_bytes: u64,
    /// Segments that had such a tail cut.
    pub truncated_segments: u64,
}

/// Records the spool gives back instead of keeping: the caller declares them lost.
#[derive(Debug, Default)]
pub struct Handback {
    /// The oldest segments' records, removed to stay within the bound.
    pub evicted: Vec<Vec<u8>>,
    /// Records that could not be written (disk full, an I/O error).
    pub unwritten: Vec<Vec<u8>>,
    /// Records lost without their bytes: an evicted segment that could not be read.
    pub unreadable: u64,
    /// The first error met, for the log.
    pub error: Option<io::Error>,
}

impl Handback {
    pub fn is_empty(&self) -> bool {
        self.evicted.is_empty()
            && self.unwritten.is_empty()
            && self.unreadable == 0
            && self.error.is_none()
    }

    fn absorb(&mut self, other: Handback) {
        self.evicted.extend(other.evicted);
        self.unwritten.extend(other.unwritten);
        self.unreadable += other.unreadable;
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    file: Option<File>,
    /// Whole records not yet written to `file` (counted in its segment already).
    pending: Vec<u8>,
    /// Written since the last sync.
    unsynced: bool,
    /// What internal steps gave back, for the next call that returns a [`Handback`].
    owed: Handback,
    /// The segment handed out by [`Spool::oldest`] and not removed yet: on its way to
    /// Kafka, so eviction takes the next one (evicting it would declare lost events
    /// that are being delivered).
    pinned: Option<u64>,
    next_id: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, checking every segment and cutting a partial
    /// record off the end of any.
    ///
    /// # Errors
    /// When the directory cannot be created or read.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> io::Result<(Spool, Recovery)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // A spool made by an older version may be readable by all: not any more.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".spool")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = segment_path(dir, id);
            let (good, records, total) = scan(&path)?;
            if good < total {
                OpenOptions::new().write(true).open(&path)?.set_len(good)?;
                recovery.truncated_bytes += total - good;
                recovery.truncated_segments += 1;
            }
            if records == 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            recovery.segments += 1;
            recovery.records += records;
            segments.push_back(Segment {
                id,
                path,
                bytes: good,
                records,
            });
        }
        let next_id = segments.back().map_or(1, |s| s.id + 1);
        Ok((
            Spool {
                dir: dir.to_owned(),
                max_bytes: max_bytes.max(segment_bytes * 2),
                segment_bytes: segment_bytes.max(4096),
                segments,
                file: None,
                pending: Vec::new(),
                unsynced: false,
                owed: Handback::default(),
                pinned: None,
                next_id,
            },
            recovery,
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The most the spool holds before it drops its oldest segment.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends one record. What the spool could not keep comes back: the records of
    /// segments removed to stay within the bound (oldest first), and records a failed
    /// write could not put on disk (possibly this one).
    pub fn append(&mut self, payload: &[u8]) -> Handback {
        let mut back = std::mem::take(&mut self.owed);
        let record_bytes = (HEADER + payload.len()) as u64;
        while self.bytes() + record_bytes > self.max_bytes && self.drop_oldest(&mut back) {}
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + record_bytes > self.segment_bytes || self.file.is_none());
        if rotate {
            self.close_segment(&mut back);
            if let Err(e) = self.start_segment() {
                back.unwritten.push(payload.to_vec());
                back.fail(e);
                return back;
            }
        }
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.pending.extend_from_slice(payload);
        if let Some(s) = self.segments.back_mut() {
            s.bytes += record_bytes;
            s.records += 1;
        }
        if self.pending.len() >= PENDING_BYTES {
            self.write_pending(&mut back);
        }
        back
    }

    /// Hands appended records to the kernel, so a `kill -9` of the agent loses none of
    /// them. What could not be written comes back.
    pub fn flush(&mut self) -> Handback {
        let mut back = std::mem::take(&mut self.owed);
        self.write_pending(&mut back);
        back
    }

    /// [`Spool::flush`], then forces the newest segment to disk, so a power cut loses
    /// none of what was appended before.
    pub fn sync(&mut self) -> Handback {
        let mut back = self.flush();
        if self.unsynced {
            if let Some(f) = &self.file {
                match f.sync_data() {
                    Ok(()) => self.unsynced = false,
                    Err(e) => back.fail(e),
                }
            }
        }
        back
    }

    fn write_pending(&mut self, back: &mut Handback) {
        if self.pending.is_empty() {
            return;
        }
        let written = match &mut self.file {
            Some(f) => f.write_all(&self.pending),
            None => Err(io::Error::other("no open segment")),
        };
        match written {
            Ok(()) => self.unsynced = true,
            Err(e) => {
                // Cut the segment back to its last whole record (an append-mode file
                // writes at its new end afterwards) and give the records back.
                let records = split_records(&self.pending);
                if let Some(seg) = self.segments.back_mut() {
                    seg.bytes = seg.bytes.saturating_sub(self.pending.len() as u64);
                    seg.records = seg.records.saturating_sub(records.len() as u64);
                    if let Some(f) = &self.file {
                        if let Err(cut) = f.set_len(seg.bytes) {
                            back.fail(cut);
                            // The file's end is unknown now: write no more to it.
                            self.file = None;
                        }
                    }
                }
                back.unwritten.extend(records);
                back.fail(e);
            }
        }
        self.pending.clear();
        if self.segments.back().is_some_and(|s| s.records == 0) {
            if let Some(seg) = self.segments.pop_back() {
                self.file = None;
                let _ = std::fs::remove_file(&seg.path);
            }
        }
    }

    /// Writes and syncs the newest segment before no more is appended to it: a closed
    /// segment is on disk.
    fn close_segment(&mut self, back: &mut Handback) {
        if self.file.is_some() {
            back.absorb(self.sync());
        }
        self.file = None;
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        // The new name must survive a power cut too, or the synced records in it would.
        File::open(&self.dir)?.sync_all()?;
        self.file = Some(file);
        self.segments.push_back(Segment {
            id,
            path,
            bytes: 0,
            records: 0,
        });
        Ok(())
    }

    /// Removes the oldest segment that is neither the open one nor pinned, handing its
    /// records back; false when there is none (the spool then exceeds its bound by at
    /// most the pinned segment until that one is delivered).
    fn drop_oldest(&mut self, back: &mut Handback) -> bool {
        let evictable = self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .position(|s| Some(s.id) != self.pinned);
        let Some(seg) = evictable.and_then(|i| self.segments.remove(i)) else {
            return false;
        };
        match read_segment(&seg.path) {
            Ok(records) => back.evicted.extend(records),
            Err(e) => {
                back.unreadable += seg.records;
                back.fail(e);
            }
        }
        if let Err(e) = std::fs::remove_file(&seg.path) {
            back.fail(e);
        }
        true
    }

    /// The oldest segment's records, to send. The newest segment is closed first when it
    /// is the only one, so appends go on into a new one meanwhile.
    ///
    /// # Errors
    /// When the segment cannot be read.
    pub fn oldest(&mut self) -> io::Result<Option<(u64, Vec<Vec<u8>>)>> {
        if self.segments.len() == 1 {
            let mut back = Handback::default();
            self.close_segment(&mut back);
            self.owed.absorb(back);
        }
        let Some(seg) = self.segments.front() else {
            return Ok(None);
        };
        self.pinned = Some(seg.id);
        Ok(Some((seg.id, read_segment(&seg.path)?)))
    }

    /// Every record of segment `id` was delivered: remove it.
    ///
    /// # Errors
    /// When the file cannot be removed.
    pub fn remove(&mut self, id: u64) -> io::Result<()> {
        if self.pinned == Some(id) {
            self.pinned = None;
        }
        if let Some(pos) = self.segments.iter().position(|s| s.id == id) {
            if let Some(seg) = self.segments.remove(pos) {
                if self.segments.is_empty() {
                    self.file = None;
                    self.pending.clear();
                }
                std::fs::remove_file(&seg.path)?;
            }
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spool"))
}

/// The payloads of the whole records in `buf` (the spool's own pending bytes).
fn split_records(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    while let Ok(Some(_)) = next_record(&mut buf, &mut payload) {
        out.push(std::mem::take(&mut payload));
    }
    out
}

/// (bytes of whole valid records, their count, file size).
fn scan(path: &Path) -> io::Result<(u64, u64, u64)> {
    let mut f = File::open(path)?;
    let total = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    let mut r = io::BufReader::new(f);
    let mut good = 0u64;
    let mut records = 0u64;
    let mut payload = Vec::new();
    while let Some(len) = next_record(&mut r, &mut payload)? {
        good += (HEADER + len) as u64;
        records += 1;
    }
    Ok((good, records, total))
}

fn read_segment(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut r = io::BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    let mut payload = Vec::new();
    while next_record(&mut r, &mut payload)?.is_some() {
        out.push(std::mem::take(&mut payload));
    }
    Ok(out)
}

/// Reads one whole, checksummed record; `None` at the end or at a partial or corrupt one.
fn next_record<R: Read>(r: &mut R, payload: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut header = [0u8; HEADER];
    if !read_exact_or_eof(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // The pipeline never spools an empty event, and a zero-filled tail (what a power cut
    // can leave where the file grew) would otherwise read as valid empty records: crc32
    // of nothing is 0.
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    payload.clear();
    payload.resize(len as usize, 0);
    if !read_exact_or_eof(r, payload)? || crc32fast::hash(payload) != crc {
        return Ok(None);
    }
    Ok(Some(len as usize))
}

fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one segment file a test's spool holds.
    fn only_segment(dir: &Path) -> PathBuf {
        let mut entries = std::fs::read_dir(dir).expect("spool dir");
        entries.next().expect("a segment").expect("readable").path()
    }

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 4096).unwrap();
        assert_eq!(rec, Recovery::default());
        for i in 0..100 {
            assert!(s
                .append(format!("event-{i:04}-{}", "x".repeat(100)).as_bytes())
                .is_empty());
        }
        assert!(s.flush().is_empty());
        let mut seen = Vec::new();
        while let Some((id, records)) = s.oldest().unwrap() {
            seen.extend(records);
            s.remove(id).unwrap();
        }
        assert_eq!(seen.len(), 100);
        assert!(seen[0].starts_with(b"event-0000"));
        assert!(seen[99].starts_with(b"event-0099"));
        assert!(s.is_empty());
    }

    #[test]
    fn a_partial_record_is_cut_and_reported_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
            for i in 0..10 {
                assert!(s.append(format!("event-{i}").as_bytes()).is_empty());
            }
            assert!(s.flush().is_empty());
        }
        // A kill -9 in the middle of the next write: a header and half a payload.
        let seg = only_segment(dir.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 0]).unwrap();
        f.write_all(b"only part").unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.truncated_bytes, 8 + 9);
        assert_eq!(rec.truncated_segments, 1);
        let (_, records) = s.oldest().unwrap().unwrap();
        assert_eq!(records.len(), 10);
        // And the spool goes on working after the cut.
        assert!(s.append(b"after").is_empty());
        assert!(s.flush().is_empty());
        assert_eq!(s.records(), 11);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment_and_says_which_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 3 * 4096, 4096).unwrap();
        let mut dropped = Vec::new();
        for i in 0..200 {
            dropped.extend(
                s.append(format!("event-{i:04}-{}", "y".repeat(200)).as_bytes())
                    .evicted,
            );
        }
        assert!(!dropped.is_empty());
        assert!(dropped[0].starts_with(b"event-0000"), "the oldest go first");
        assert!(s.bytes() <= 3 * 4096);
        let kept = s.records();
        assert_eq!(
            kept + dropped.len() as u64,
            200,
            "every record is either kept or handed back"
        );
    }

    #[test]
    fn corrupt_bytes_are_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
            assert!(s.append(b"good-1").is_empty());
            assert!(s.append(b"good-2").is_empty());
            assert!(s.flush().is_empty());
        }
        let seg = only_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.records, 1);
        assert_eq!(s.oldest().unwrap().unwrap().1, vec![b"good-1".to_vec()]);
    }

    #[test]
    fn a_failed_write_hands_its_records_back_and_hides_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert!(s.append(b"kept-1").is_empty());
        assert!(s.flush().is_empty());
        // The disk fills up: every write from now on fails (ENOSPC).
        s.file = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        assert!(s.append(b"lost-1").is_empty(), "gathered, not written yet");
        assert!(s.append(b"lost-2").is_empty());
        let back = s.flush();
        assert_eq!(back.unwritten, vec![b"lost-1".to_vec(), b"lost-2".to_vec()]);
        assert!(back.error.is_some());
        assert_eq!(s.records(), 1, "only what is on disk is counted");
        // Space again: the spool goes on, and every record written is readable.
        assert!(s.append(b"kept-2").is_empty());
        assert!(s.flush().is_empty());
        drop(s);
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        let mut seen = Vec::new();
        while let Some((id, records)) = s.oldest().unwrap() {
            seen.extend(records);
            s.remove(id).unwrap();
        }
        assert_eq!(seen, vec![b"kept-1".to_vec(), b"kept-2".to_vec()]);
    }

    #[test]
    fn eviction_is_handed_back_even_when_the_write_after_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 3 * 4096, 4096).unwrap();
        let record = "z".repeat(1000);
        for _ in 0..11 {
            assert!(s.append(record.as_bytes()).evicted.is_empty());
        }
        assert!(s.flush().is_empty());
        s.file = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let mut back = Handback::default();
        for _ in 0..8 {
            back.absorb(s.append(record.as_bytes()));
        }
        back.absorb(s.flush());
        assert!(!back.evicted.is_empty(), "the bound still holds");
        let kept = s.records();
        let given_back = (back.evicted.len() + back.unwritten.len()) as u64;
        assert_eq!(kept + given_back, 19, "every record is kept or handed back");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let (mut s, _) = Spool::open(&spool_dir, 1 << 20, 1 << 16).unwrap();
        assert!(s.append(b"secret argv").is_empty());
        assert!(s.sync().is_empty());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool_dir), 0o700);
        let seg = only_segment(&spool_dir);
        assert_eq!(mode(&seg), 0o600);
    }

    #[test]
    fn a_zero_filled_tail_is_cut_not_read_as_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
            assert!(s.append(b"whole").is_empty());
            assert!(s.sync().is_empty());
        }
        let seg = only_segment(dir.path());
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let (_, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.records, 1);
        assert_eq!(rec.truncated_bytes, 4096);
    }

    #[test]
    fn the_segment_being_delivered_is_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 3 * 4096, 4096).unwrap();
        let record = "w".repeat(1000);
        for _ in 0..8 {
            assert!(s.append(record.as_bytes()).is_empty());
        }
        let (sending, _) = s.oldest().unwrap().unwrap();
        let mut evicted = 0;
        for _ in 0..40 {
            evicted += s.append(record.as_bytes()).evicted.len();
        }
        assert!(evicted > 0, "the bound still holds");
        let (still, _) = s.oldest().unwrap().unwrap();
        assert_eq!(still, sending, "the segment on its way to Kafka was kept");
    }
}
