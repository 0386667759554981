//! Event sinks. Each takes events as complete JSON objects and writes them one per line
//! (or one per message). Sinks are blocking and run on the pipeline's own thread, so a
//! slow destination never stalls the agent's supervisor.
//!
//! Deliberately absent: batching policy and loss accounting, which belong to the
//! pipeline that drives the sinks.

pub mod kafka;
pub mod spool;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

/// A destination for events.
pub trait Sink: Send {
    /// A short name for logs and status (`stdout`, `file:/var/log/hids/events.json`).
    fn name(&self) -> &str;

    /// Accepts one event: a JSON object without a trailing newline. Events may be
    /// gathered and written later, in one go.
    ///
    /// # Errors
    /// When the destination refuses a write: the error says how many events were lost
    /// (this one among them).
    fn write(&mut self, event: &[u8]) -> Result<(), SinkError>;

    /// Pushes out what is buffered. Called when the pipeline has nothing queued.
    ///
    /// # Errors
    /// When the destination refuses the write: the events buffered are lost, and the
    /// error says how many.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// A write or flush that failed, and the events it lost.
#[derive(Debug, thiserror::Error)]
#[error("{source} ({lost_events} event(s) lost)")]
pub struct SinkError {
    #[source]
    pub source: io::Error,
    pub lost_events: u64,
}

/// Events gathered as lines and written in one go, so a busy sink costs one write per
/// batch rather than per event. Unlike `BufWriter`, it knows how many events a failed
/// write lost, and drops them rather than retrying them forever in front of new ones.
struct Lines {
    file: File,
    buf: Vec<u8>,
    events: u64,
}

/// Gathered bytes are written once past this.
const LINES_BYTES: usize = 64 << 10;

impl Lines {
    fn new(file: File) -> Self {
        Lines {
            file,
            buf: Vec::with_capacity(LINES_BYTES),
            events: 0,
        }
    }

    fn push(&mut self, event: &[u8]) -> Result<(), SinkError> {
        self.buf.extend_from_slice(event);
        self.buf.push(b'\n');
        self.events += 1;
        if self.buf.len() >= LINES_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.buf);
        let lost_events = std::mem::take(&mut self.events);
        self.buf.clear();
        written.map_err(|source| SinkError {
            source,
            lost_events,
        })
    }
}
/// JSON lines on the agent's stdout. Writes go to a duplicate of fd 1 rather than
/// `io::stdout()`, whose line buffering would cost one syscall per event.
pub struct StdoutSink {
    out: Lines,
}

impl StdoutSink {
    /// # Errors
    /// When fd 1 is not open.
    pub fn new() -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(StdoutSink {
            out: Lines::new(File::from(fd)),
        })
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn write(&mut self, event: &[u8]) -> Result<(), SinkError> {
        self.out.push(event)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush()
    }
}

/// JSON lines in a file, rotated by size: `events.json` → `events.json.1` → ... →
/// `events.json.<keep>`, the oldest removed. A reader can follow the current file
/// name across rotations, as with logrotate. Files are created 0600: events hold every
/// process's arguments.
pub struct FileSink {
    path: std::path::PathBuf,
    max_bytes: u64,
    keep: u32,
    out: Lines,
    written: u64,
    label: String,
}

impl FileSink {
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(path: &std::path::Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_private(path)?;
        let written = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_owned(),
            max_bytes: max_bytes.max(4096),
            keep,
            out: Lines::new(file),
            written,
            label: format!("file:{}", path.display()),
        })
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.out.flush()?;
        self.reopen().map_err(|source| SinkError {
            source,
            lost_events: 0,
        })
    }

    fn reopen(&mut self) -> io::Result<()> {
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
        self.out = Lines::new(open_private(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for appending, 0600 (also a file an older version made readable by all).
fn open_private(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.label
    }

    fn write(&mut self, event: &[u8]) -> Result<(), SinkError> {
        if self.written > 0 && self.written + event.len() as u64 + 1 > self.max_bytes {
            self.rotate().map_err(|mut e| {
                e.lost_events += 1;
                e
            })?;
        }
        self.out.push(event)?;
        self.written += event.len() as u64 + 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
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
