//! Event sinks. Each takes events as complete JSON objects and writes them one per line
//! (or one per message). Sinks are blocking and run on the pipeline's own thread, so a
//! slow destination never stalls the agent's supervisor.
//!
//! Deliberately absent: batching policy and loss accounting, which belong to the
//! pipeline that drives the sinks.

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
