//! The disk spool: events waiting for Kafka, in segment files, in order.
//!
//! A segment is a file `<20-digit id>.spool` of records `[len u32 LE][crc32 u32 LE]
//! [payload]`. Records are appended to the newest segment and read from the oldest. A
//! `kill -9` in the middle of a write leaves at most one partial record at the end of the
//! newest segment: at the next start it is cut off and reported, everything before it is
//! kept. When the spool would grow past its bound the oldest segment is removed and its
//! records handed back to the caller, who declares them as dropped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;
/// One record at most this large: an event is bounded far below it.
const MAX_RECORD: u32 = 16 << 20;

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
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    next_id: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`, checking every segment and cutting a partial
    /// record off the end of any.
    ///
    /// # Errors
    /// When the directory cannot be created or read.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> io::Result<(Spool, Recovery)> {
        std::fs::create_dir_all(dir)?;
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
                writer: None,
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

    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Appends one record. Returns the records of segments removed to stay within the
    /// bound (oldest first): the caller declares them dropped.
    ///
    /// # Errors
    /// When the segment cannot be written (disk full): the record is not spooled.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let record_bytes = (HEADER + payload.len()) as u64;
        let mut dropped = Vec::new();
        while self.bytes() + record_bytes > self.max_bytes && self.segments.len() > 1 {
            dropped.extend(self.drop_oldest()?);
        }
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + record_bytes > self.segment_bytes || self.writer.is_none());
        if rotate {
            self.start_segment()?;
        }
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        w.write_all(&header)?;
        w.write_all(payload)?;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += record_bytes;
            s.records += 1;
        }
        Ok(dropped)
    }

    /// Hands written records to the kernel, so a `kill -9` of the agent loses nothing.
    ///
    /// # Errors
    /// When the write fails.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    fn start_segment(&mut self) -> io::Result<()> {
        self.flush()?;
        let id = self.next_id;
        self.next_id += 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.writer = Some(BufWriter::with_capacity(64 * 1024, file));
        self.segments.push_back(Segment {
            id,
            path,
            bytes: 0,
            records: 0,
        });
        Ok(())
    }

    fn drop_oldest(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(Vec::new());
        };
        let records = read_segment(&seg.path)?;
        std::fs::remove_file(&seg.path)?;
        if self.segments.is_empty() {
            self.writer = None;
        }
        Ok(records)
    }

    /// The oldest segment's records, to send. The newest segment is closed first when it
    /// is the only one, so appends go on into a new one meanwhile.
    ///
    /// # Errors
    /// When the segment cannot be read.
    pub fn oldest(&mut self) -> io::Result<Option<(u64, Vec<Vec<u8>>)>> {
        if self.segments.len() == 1 {
            self.flush()?;
            self.writer = None;
        }
        let Some(seg) = self.segments.front() else {
            return Ok(None);
        };
        Ok(Some((seg.id, read_segment(&seg.path)?)))
    }

    /// Every record of segment `id` was delivered: remove it.
    ///
    /// # Errors
    /// When the file cannot be removed.
    pub fn remove(&mut self, id: u64) -> io::Result<()> {
        if let Some(pos) = self.segments.iter().position(|s| s.id == id) {
            if let Some(seg) = self.segments.remove(pos) {
                if self.segments.is_empty() {
                    self.writer = None;
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
    if len > MAX_RECORD {
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

    #[test]
    fn records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 4096).unwrap();
        assert_eq!(rec, Recovery::default());
        for i in 0..100 {
            assert!(s
                .append(format!("event-{i:04}-{}", "x".repeat(100)).as_bytes())
                .unwrap()
                .is_empty());
        }
        s.flush().unwrap();
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
                s.append(format!("event-{i}").as_bytes()).unwrap();
            }
            s.flush().unwrap();
        }
        // A kill -9 in the middle of the next write: a header and half a payload.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&100u32.to_le_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 0]).unwrap();
        f.write_all(b"only part").unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.truncated_bytes, 8 + 9);
        let (_, records) = s.oldest().unwrap().unwrap();
        assert_eq!(records.len(), 10);
        // And the spool goes on working after the cut.
        s.append(b"after").unwrap();
        s.flush().unwrap();
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
                    .unwrap(),
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
            s.append(b"good-1").unwrap();
            s.append(b"good-2").unwrap();
            s.flush().unwrap();
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (mut s, rec) = Spool::open(dir.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(rec.records, 1);
        assert_eq!(s.oldest().unwrap().unwrap().1, vec![b"good-1".to_vec()]);
    }
}
