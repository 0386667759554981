//! Event sinks. Each takes events as complete JSON objects and writes them one per line
//! (or one per message). Sinks are blocking and run on the pipeline's own thread, so a
//! slow destination never stalls the agent's supervisor.
//!
//! Deliberately absent: batching policy and loss accounting, which belong to the
//! pipeline that drives the sinks.

pub mod kafka;
pub mod spool;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;

/// A destination for events.
pub trait Sink: Send {
    /// A short name for logs and status (`stdout`, `file:/var/log/hids/events.json`).
    fn name(&self) -> &str;

    /// Accepts one event: a JSON object without a trailing newline.
    ///
    /// # Errors
    /// When the destination refuses the write; the caller counts the event as dropped.
    fn write(&mut self, event: &[u8]) -> io::Result<()>;

    /// Pushes out what is buffered. Called when the pipeline has nothing queued.
    ///
    /// # Errors
    /// When the destination refuses the write.
    fn flush(&mut self) -> io::Result<()>;
}

/// JSON lines on the agent's stdout. Writes go to a duplicate of fd 1 rather than
/// `io::stdout()`, whose line buffering would cost one syscall per event.
pub struct StdoutSink {
    out: BufWriter<File>,
}

impl StdoutSink {
    /// # Errors
    /// When fd 1 is not open.
    pub fn new() -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(StdoutSink {
            out: BufWriter::with_capacity(64 * 1024, File::from(fd)),
        })
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write(&mut self, event: &[u8]) -> io::Result<()> {
        self.out.write_all(event)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// JSON lines in a file, rotated by size: `events.json` → `events.json.1` → ... →
/// `events.json.<keep>`, the oldest removed. A reader can follow the current file
/// name across rotations, as with logrotate.
pub struct FileSink {
    path: std::path::PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    written: u64,
    label: String,
}

impl FileSink {
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(path: &std::path::Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_owned(),
            max_bytes: max_bytes.max(4096),
            keep,
            out: BufWriter::with_capacity(64 * 1024, file),
            written,
            label: format!("file:{}", path.display()),
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            std::path::PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
            std::fs::rename(&self.path, name(1))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.written = 0;
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.label
    }

    fn write(&mut self, event: &[u8]) -> io::Result<()> {
        if self.written > 0 && self.written + event.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(event)?;
        self.out.write_all(b"\n")?;
        self.written += event.len() as u64 + 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_rotates_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut sink = FileSink::open(&path, 4096, 2).unwrap();
        let event = format!("{{\"x\":\"{}\"}}", "a".repeat(1000));
        for _ in 0..20 {
            sink.write(event.as_bytes()).unwrap();
        }
        sink.flush().unwrap();
        assert!(path.exists());
        assert!(dir.path().join("events.json.1").exists());
        assert!(dir.path().join("events.json.2").exists());
        assert!(!dir.path().join("events.json.3").exists(), "only 2 kept");
        for f in ["events.json", "events.json.1"] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(text.len() <= 4096);
            assert!(
                text.lines().all(|l| l.starts_with('{') && l.ends_with('}')),
                "whole lines only"
            );
        }
    }
}
