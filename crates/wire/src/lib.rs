//! Frames between the master and its plugins, over the plugin's stdin (control, down) and
//! stdout (hello, events, health, up). stderr stays plain text: it is the plugin's log.
//!
//! Every frame is an 8-byte header and a payload:
//!
//! ```text
//! offset 0  2 bytes  magic "HF" (0x48 0x46): garbage is caught at the first frame
//! offset 2  1 byte   kind (1 hello, 2 event, 3 health, 4 control)
//! offset 3  1 byte   flags, 0 for now
//! offset 4  4 bytes  payload length, little endian, at most the reader's limit
//! offset 8  payload  JSON: one document per frame
//! ```
//!
//! The protocol version is agreed once, in the hello exchange, not repeated per frame.
//! A frame of an unknown kind is skipped by its length, so a newer plugin can talk to an
//! older master. This crate does blocking I/O over `Read`/`Write` only; async callers
//! parse the header with [`Header::parse`] and read the payload themselves.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 2] = *b"HF";
pub const HEADER_LEN: usize = 8;
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default bound on one payload: an exec event with a 128 KiB argv fits with room to spare.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;
/// The environment variable naming a supervised plugin's own state directory
/// (`<state_dir>/plugins/<name>`, 0700), for what it must remember across restarts.
pub const PLUGIN_STATE_DIR_ENV: &str = "HIDS_PLUGIN_STATE_DIR";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello,
    Event,
    Health,
    Control,
    Unknown(u8),
}

impl Kind {
    pub fn to_byte(self) -> u8 {
        match self {
            Kind::Hello => 1,
            Kind::Event => 2,
            Kind::Health => 3,
            Kind::Control => 4,
            Kind::Unknown(b) => b,
        }
    }

    pub fn from_byte(b: u8) -> Kind {
        match b {
            1 => Kind::Hello,
            2 => Kind::Event,
            3 => Kind::Health,
            4 => Kind::Control,
            other => Kind::Unknown(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a frame: expected magic 48 46, found {0:02x} {1:02x}")]
    BadMagic(u8, u8),
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("malformed {what} payload: {source}")]
    Payload {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub len: u32,
}

impl Header {
    /// Checks the magic and the length limit.
    ///
    /// # Errors
    /// [`WireError::BadMagic`] when the bytes are not a frame header,
    /// [`WireError::TooLarge`] when the announced payload exceeds `max_payload`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, WireError> {
        if bytes[0..2] != MAGIC {
            return Err(WireError::BadMagic(bytes[0], bytes[1]));
        }
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if len > max_payload {
            return Err(WireError::TooLarge {
                len: u64::from(len),
                max: max_payload,
            });
        }
        Ok(Header {
            kind: Kind::from_byte(bytes[2]),
            flags: bytes[3],
            len,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let len = self.len.to_le_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            self.kind.to_byte(),
            self.flags,
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }
}

/// Appends one frame to `out`.
///
/// # Errors
/// [`WireError::TooLarge`] when the payload does not fit a u32 length.
pub fn encode_frame(kind: Kind, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_frame_with(kind, out, |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// Appends one frame whose payload `write` appends to `out` in place (a serializer
/// writing straight into an output buffer): the header is reserved first and its length
/// filled in after, so the payload is never copied. On an error `out` is left as it was.
///
/// # Errors
/// The error of `write`, and [`WireError::TooLarge`] when the payload does not fit a u32
/// length.
pub fn encode_frame_with(
    kind: Kind,
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let written = write(out).and_then(|()| {
        let len = out.len() - start - HEADER_LEN;
        u32::try_from(len).map_err(|_| WireError::TooLarge {
            len: len as u64,
            max: u32::MAX,
        })
    });
    match written {
        Ok(len) => {
            let header = Header {
                kind,
                flags: 0,
                len,
            };
            out[start..start + HEADER_LEN].copy_from_slice(&header.encode());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// The frame at the start of `bytes`, when it is there whole: its header and payload.
/// `Ok(None)` when `bytes` holds less than a whole frame (read more and look again).
/// For readers that take frames straight out of their read buffer.
///
/// # Errors
/// Header errors as in [`Header::parse`], as soon as the header is there.
pub fn split_frame(bytes: &[u8], max_payload: u32) -> Result<Option<(Header, &[u8])>, WireError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(head, max_payload)?;
    let end = HEADER_LEN + header.len as usize;
    Ok(bytes.get(HEADER_LEN..end).map(|payload| (header, payload)))
}

/// Writes one frame with a single `write_all`, so frames from several threads sharing a
/// locked writer never interleave.
///
/// # Errors
/// I/O errors of `w`, and [`WireError::TooLarge`].
pub fn write_frame<W: Write>(w: &mut W, kind: Kind, payload: &[u8]) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame(kind, payload, &mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame into `payload` (replacing its contents).
///
/// Returns `Ok(None)` on a clean end of stream between frames.
///
/// # Errors
/// [`WireError::Truncated`] when the stream ends inside a frame; header errors as in
/// [`Header::parse`]; I/O errors of `r`.
pub fn read_frame<R: Read>(
    r: &mut R,
    max_payload: u32,
    payload: &mut Vec<u8>,
) -> Result<Option<Header>, WireError> {
    let mut head = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut head[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let header = Header::parse(&head, max_payload)?;
    payload.clear();
    payload.resize(header.len as usize, 0);
    r.read_exact(payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Truncated,
        _ => WireError::Io(e),
    })?;
    Ok(Some(header))
}

/// The master's opening frame to a plugin: who it is and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterHello {
    pub protocol: u32,
    /// The name the plugin is declared under (its events carry it as `hids.plugin`).
    pub plugin: String,
    pub host_id: String,
    pub hostname: String,
    /// Fresh for every start of the plugin; events carry it as `hids.run_id`.
    pub run_id: String,
    /// The host's labels from the agent's config; events carry them as ECS `labels`.
    /// Absent from an older master: no labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The plugin's answer to [`MasterHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginHello {
    pub protocol: u32,
    pub name: String,
    pub version: String,
}

/// Commands from the master to a plugin. A plugin built before a command existed logs
/// "ignoring control frame" for it and carries on, so new commands need no new protocol
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Control {
    /// Finish what is queued and exit.
    Shutdown,
    /// Take a full snapshot now (an operator's `snapshot` command); `id` is the
    /// command's id, for the plugin to put on what it reports.
    Snapshot { id: String },
}

/// A fresh run id: 16 hex digits from the kernel's random source. The master gives one
/// to each start of a plugin; with `event.sequence` it names every event uniquely.
pub fn new_run_id() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    // Never all zeros, even without /dev/urandom: mix in the pid and the time.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:016x}",
        u64::from_ne_bytes(b) ^ t ^ u64::from(std::process::id())
    )
}

/// Parses a JSON payload of the given frame kind.
///
/// # Errors
/// [`WireError::Payload`] when the payload is not the expected document.
pub fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    payload: &'a [u8],
) -> Result<T, WireError> {
    serde_json::from_slice(payload).map_err(|source| WireError::Payload { what, source })
}

#[cfg(test)]
mod tests;
