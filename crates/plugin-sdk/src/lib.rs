//! What a plugin links to talk to the master: the hello exchange, framed event and health
//! output on stdout, control input on stdin, and logging to stderr in the form the
//! master forwards. Blocking I/O on plain threads: a plugin needs no async runtime.
//!
//! Run by hand from a terminal (stdin is a TTY), a plugin built on this SDK runs
//! standalone: events are printed as JSON lines, host identity is read locally. This is
//! for debugging; under the master everything is framed.
//!
//! Deliberately absent: anything about etcd or Kafka. Plugins know only their master.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use hids_types::event::{Host, Producer};
use hids_wire::{
    Control, Kind, MasterHello, PluginHello, WireError, DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("no hello from the master on stdin: {0}")]
    NoHello(#[source] WireError),
    #[error("the master closed stdin before saying hello")]
    ClosedBeforeHello,
    #[error("the master speaks protocol {0}, this plugin speaks {PROTOCOL_VERSION}")]
    Protocol(u32),
    #[error("cannot use stdin/stdout: {0}")]
    Io(#[from] io::Error),
}

/// How the plugin was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Under the master: framed stdout, control frames on stdin.
    Supervised,
    /// By hand from a terminal: JSON lines on stdout.
    Standalone,
}

/// Requests held for the plugin to take. An operator's command, not a data path: a
/// plugin busy for a whole snapshot still finds the next few waiting; beyond that they
/// are dropped and counted.
const REQUEST_QUEUE: usize = 16;

/// What the master asks of a running plugin, besides stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Take a full snapshot now. `id` is the operator's command id: put it on what the
    /// snapshot reports, so the operator can find the answer.
    Snapshot { id: String },
}

/// A connected plugin.
pub struct Session {
    pub mode: Mode,
    /// The master's hello (in standalone mode, one made up from local facts).
    pub hello: MasterHello,
    output: Output,
    shutdown: Arc<AtomicBool>,
    requests: Option<Receiver<Request>>,
    requests_dropped: Arc<AtomicU64>,
}

impl Session {
    /// Performs the hello exchange (or detects standalone mode) and starts the control
    /// reader thread.
    ///
    /// # Errors
    /// When the master does not open with a valid hello, or speaks another protocol.
    pub fn connect(name: &str, version: &str) -> Result<Session, SdkError> {
        Self::connect_with(name, version, Arc::new(AtomicBool::new(false)))
    }

    /// The same, with a shutdown flag made earlier: a plugin that must be capturing
    /// before it says hello (the master takes the hello as "ready") hands its workers
    /// the flag first.
    ///
    /// # Errors
    /// As [`Session::connect`].
    pub fn connect_with(
        name: &str,
        version: &str,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Session, SdkError> {
        let stdin = io::stdin();
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        if stdin.is_terminal() {
            return Self::standalone(name, shutdown);
        }
        let mut input = File::from(stdin.as_fd().try_clone_to_owned()?);
        let mut payload = Vec::new();
        let hello: MasterHello = loop {
            match hids_wire::read_frame(&mut input, DEFAULT_MAX_PAYLOAD, &mut payload) {
                Ok(Some(h)) if h.kind == Kind::Hello => {
                    break hids_wire::decode("hello", &payload).map_err(SdkError::NoHello)?;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(SdkError::ClosedBeforeHello),
                Err(e) => return Err(SdkError::NoHello(e)),
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(SdkError::Protocol(hello.protocol));
        }
        let output = Output::new(stdout, Mode::Supervised);
        let answer = PluginHello {
            protocol: PROTOCOL_VERSION,
            name: name.to_owned(),
            version: version.to_owned(),
        };
        output.frame(
            Kind::Hello,
            &serde_json::to_vec(&answer).unwrap_or_default(),
        )?;
        output.flush()?;
        let (tx, requests) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        let requests_dropped = Arc::new(AtomicU64::new(0));
        let pass_on = PassOn {
            tx,
            dropped: requests_dropped.clone(),
        };
        let flag = shutdown.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || read_control(input, flag, &pass_on))?;
        Ok(Session {
            mode: Mode::Supervised,
            hello,
            output,
            shutdown,
            requests: Some(requests),
            requests_dropped,
        })
    }

    /// Standalone whatever stdin is: JSON lines on stdout, host identity read locally.
    /// For one-shot modes (`--once`) that scripts and benchmarks run with stdin
    /// redirected.
    ///
    /// # Errors
    /// When stdout cannot be used.
    pub fn standalone(name: &str, shutdown: Arc<AtomicBool>) -> Result<Session, SdkError> {
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let hello = MasterHello {
            protocol: PROTOCOL_VERSION,
            plugin: name.to_owned(),
            host_id: hids_procfs::host::machine_id().unwrap_or_else(|_| "unknown".into()),
            hostname: hids_procfs::host::hostname(),
            run_id: hids_wire::new_run_id(),
            labels: Default::default(),
        };
        Ok(Session {
            mode: Mode::Standalone,
            hello,
            output: Output::new(stdout, Mode::Standalone),
            shutdown,
            requests: None,
            requests_dropped: Arc::default(),
        })
    }

    /// Where events and health go; cheap to clone and share between threads.
    pub fn output(&self) -> Output {
        self.output.clone()
    }

    /// Who this plugin's events come from, as the master's hello names it: the envelope
    /// of every event the plugin writes.
    pub fn producer(&self) -> Producer {
        Producer {
            host: Host {
                id: self.hello.host_id.as_str().into(),
                hostname: self.hello.hostname.as_str().into(),
            },
            labels: Arc::new(self.hello.labels.clone()),
            plugin: self.hello.plugin.as_str().into(),
            run_id: self.hello.run_id.as_str().into(),
        }
    }

    /// Set when the master asked us to stop or went away (stdin closed).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The master's requests ([`Request`]), to be received by the plugin. Taken once:
    /// `None` on a second call, and in standalone mode, where nobody sends any. While
    /// nobody takes them, up to 16 wait; more are dropped and counted.
    pub fn requests(&mut self) -> Option<Receiver<Request>> {
        self.requests.take()
    }

    /// How many requests were dropped because the plugin left 16 waiting (or dropped
    /// its receiver): a figure for the plugin's stats.
    pub fn requests_dropped(&self) -> Arc<AtomicU64> {
        self.requests_dropped.clone()
    }
}

/// Hands requests to the plugin without ever blocking the control reader: a plugin that
/// does not take them must not keep it from seeing a shutdown.
struct PassOn {
    tx: SyncSender<Request>,
    dropped: Arc<AtomicU64>,
}

impl PassOn {
    fn send(&self, request: Request) {
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) =
            self.tx.try_send(request)
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                "dropping the master's request {r:?}: {REQUEST_QUEUE} are already waiting \
                 or the plugin takes none ({dropped} dropped so far)"
            );
        }
    }
}

fn read_control(mut input: impl Read, shutdown: Arc<AtomicBool>, requests: &PassOn) {
    let mut payload = Vec::new();
    loop {
        match hids_wire::read_frame(&mut input, DEFAULT_MAX_PAYLOAD, &mut payload) {
            Ok(Some(h)) if h.kind == Kind::Control => {
                match hids_wire::decode::<Control>("control", &payload) {
                    Ok(Control::Shutdown) => break,
                    Ok(Control::Snapshot { id }) => requests.send(Request::Snapshot { id }),
                    Err(e) => tracing::warn!("ignoring control frame: {e}"),
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::error!("control stream from the master is broken: {e}");
                break;
            }
        }
    }
    shutdown.store(true, Ordering::SeqCst);
}

/// Framed (or, standalone, line-based) output to stdout. Frames are written whole under
/// a lock, so threads never interleave them. Writes block when the master is slow: the
/// caller's bounded queue in front of this is where pressure turns into counted drops.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<Frames>>,
    mode: Mode,
}

/// Frames gathered for one write to stdout (per burst, or per [`FRAMES_BYTES`]): the
/// master wakes once per write, not once per event.
struct Frames {
    file: File,
    buf: Vec<u8>,
}

/// Gathered bytes are written out once past this, flush or not.
const FRAMES_BYTES: usize = 56 << 10;
/// The buffer's room: an event of up to the difference lands without growing it.
const FRAMES_CAPACITY: usize = 64 << 10;

impl Frames {
    /// Writes out what is gathered when it is past the bound.
    fn written_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= FRAMES_BYTES {
            self.write_out()
        } else {
            Ok(())
        }
    }

    /// Whatever the outcome, the buffer is empty after: on an error the master is gone.
    /// Room grown for a huge event is given back.
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.buf);
        self.buf.clear();
        if self.buf.capacity() > 4 * FRAMES_CAPACITY {
            self.buf.shrink_to(FRAMES_CAPACITY);
        }
        written
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let _ = self.write_out();
    }
}

impl Output {
    fn new(file: File, mode: Mode) -> Self {
        Output {
            inner: Arc::new(Mutex::new(Frames {
                file,
                buf: Vec::with_capacity(FRAMES_CAPACITY),
            })),
            mode,
        }
    }

    /// JSON lines into `file`, as standalone mode writes them: for a plugin's tests.
    pub fn lines(file: File) -> Self {
        Output::new(file, Mode::Standalone)
    }

    /// Writes one event (a JSON object). Call [`Output::flush`] when the burst is over.
    ///
    /// # Errors
    /// When stdout is closed: the master is gone and the plugin should exit.
    pub fn event(&self, json: &[u8]) -> io::Result<()> {
        self.frame(Kind::Event, json)
    }

    /// Serializes one event (an object: JSON on one line, as the master wants it)
    /// straight into the output, behind its frame header: no copy of it, no buffer of
    /// the caller's. Call [`Output::flush`] when the burst is over.
    ///
    /// # Errors
    /// When stdout is closed, or `event` cannot be serialized (nothing of it is written).
    pub fn serialize_event<T: Serialize + ?Sized>(&self, event: &T) -> io::Result<()> {
        let mut frames = self.lock();
        match self.mode {
            Mode::Supervised => hids_wire::encode_frame_with(Kind::Event, &mut frames.buf, |buf| {
                serde_json::to_writer(buf, event).map_err(|source| WireError::Payload {
                    what: "event",
                    source,
                })
            })
            .map_err(io_error)?,
            Mode::Standalone => {
                let start = frames.buf.len();
                if let Err(e) = serde_json::to_writer(&mut frames.buf, event) {
                    frames.buf.truncate(start);
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
                }
                frames.buf.push(b'\n');
            }
        }
        frames.written_if_full()
    }

    /// Sends the plugin's counters to the master, which shows them in its status.
    ///
    /// # Errors
    /// When stdout is closed.
    pub fn health(&self, json: &[u8]) -> io::Result<()> {
        if self.mode == Mode::Standalone {
            return Ok(());
        }
        self.frame(Kind::Health, json)?;
        self.flush()
    }

    fn frame(&self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        let mut frames = self.lock();
        match self.mode {
            Mode::Supervised => {
                hids_wire::encode_frame(kind, payload, &mut frames.buf).map_err(io_error)?;
            }
            Mode::Standalone => {
                frames.buf.extend_from_slice(payload);
                frames.buf.push(b'\n');
            }
        }
        frames.written_if_full()
    }

    /// # Errors
    /// When stdout is closed.
    pub fn flush(&self) -> io::Result<()> {
        self.lock().write_out()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io_error(e: WireError) -> io::Error {
    match e {
        WireError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other),
    }
}

/// A plugin's exit status from its run: success, also when the master closed our stdout
/// (it is gone or stopping us: nothing left to report to); otherwise the error, logged.
pub fn exit_code(result: io::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr as `LEVEL message`, the form the master parses and forwards under the
/// plugin's name (it adds the time). `level` is `error`, `warn`, `info`, `debug`, `trace`.
pub fn init_logging(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(level)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_frames(commands: &[Control]) -> Vec<u8> {
        let mut stream = Vec::new();
        for c in commands {
            let body = serde_json::to_vec(c).unwrap_or_default();
            hids_wire::encode_frame(Kind::Control, &body, &mut stream)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        stream
    }

    #[test]
    fn snapshot_requests_are_passed_on_bounded_and_shutdown_still_stops() {
        let mut commands: Vec<Control> = (0..20)
            .map(|i| Control::Snapshot {
                id: format!("c{i}"),
            })
            .collect();
        commands.push(Control::Shutdown);
        commands.push(Control::Snapshot { id: "late".into() });
        let (tx, rx) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let pass_on = PassOn {
            tx,
            dropped: dropped.clone(),
        };
        read_control(&control_frames(&commands)[..], shutdown.clone(), &pass_on);
        assert!(shutdown.load(Ordering::SeqCst));
        let got: Vec<Request> = rx.try_iter().collect();
        assert_eq!(got.len(), REQUEST_QUEUE);
        assert_eq!(got[0], Request::Snapshot { id: "c0".into() });
        assert_eq!(dropped.load(Ordering::Relaxed), 4, "20 sent, 16 held");
    }

    #[derive(Serialize)]
    struct Ev<'a> {
        seq: u64,
        args: &'a [&'a str],
    }

    #[test]
    fn events_serialized_in_place_are_whole_frames_in_order() {
        let file = tempfile::tempfile().unwrap();
        let out = Output::new(file.try_clone().unwrap(), Mode::Supervised);
        let args = ["/bin/echo", "a \"quoted\"\nline", "\u{1F600}"];
        // Past the bound, so some are written before the flush.
        for seq in 0..1000 {
            out.serialize_event(&Ev { seq, args: &args }).unwrap();
        }
        out.event(br#"{"raw":1}"#).unwrap();
        out.health(br#"{"ok":true}"#).unwrap();
        let mut stream = Vec::new();
        let mut file = file;
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut stream).unwrap();
        let mut rest = &stream[..];
        for seq in 0..1000 {
            let (h, payload) = hids_wire::split_frame(rest, DEFAULT_MAX_PAYLOAD)
                .unwrap()
                .unwrap();
            assert_eq!(h.kind, Kind::Event);
            assert_eq!(
                payload,
                serde_json::to_vec(&Ev { seq, args: &args }).unwrap()
            );
            rest = &rest[hids_wire::HEADER_LEN + payload.len()..];
        }
        let (h, payload) = hids_wire::split_frame(rest, DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert_eq!((h.kind, payload), (Kind::Event, &br#"{"raw":1}"#[..]));
        rest = &rest[hids_wire::HEADER_LEN + payload.len()..];
        let (h, _) = hids_wire::split_frame(rest, DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.kind, Kind::Health, "health is written at once");
    }

    #[test]
    fn standalone_events_are_lines_and_dropping_the_output_writes_them() {
        let file = tempfile::tempfile().unwrap();
        let out = Output::lines(file.try_clone().unwrap());
        out.serialize_event(&Ev {
            seq: 1,
            args: &["a"],
        })
        .unwrap();
        out.event(br#"{"raw":2}"#).unwrap();
        drop(out);
        let mut text = String::new();
        let mut file = file;
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"seq\":1,\"args\":[\"a\"]}\n{\"raw\":2}\n");
    }

    #[test]
    fn requests_nobody_takes_are_counted_and_stdin_closed_still_stops() {
        let (tx, rx) = std::sync::mpsc::sync_channel(REQUEST_QUEUE);
        drop(rx);
        let dropped = Arc::new(AtomicU64::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let pass_on = PassOn {
            tx,
            dropped: dropped.clone(),
        };
        let stream = control_frames(&[Control::Snapshot { id: "a".into() }]);
        read_control(&stream[..], shutdown.clone(), &pass_on);
        assert!(
            shutdown.load(Ordering::SeqCst),
            "end of stream: the master is gone"
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
    }
}
