//! Parser for the process events connector (`linux/connector.h`, `linux/cn_proc.h`).
//!
//! A datagram holds netlink messages; each connector message is
//!
//! ```text
//! nlmsghdr   16 bytes  len u32, type u16 (NLMSG_DONE), flags u16, seq u32, pid u32
//! cn_msg     20 bytes  id.idx u32 (1), id.val u32 (1), seq u32, ack u32, len u16, flags u16
//! proc_event 16 bytes  what u32, cpu u32, timestamp_ns u64 (CLOCK_MONOTONIC)
//!            + event_data, a union whose size depends on `what`
//! ```
//!
//! All integers are in host byte order. Trailing fields that newer kernels added (the
//! parent of an exiting process, 4.x) are optional; an event type we do not know is
//! returned as [`EventData::Unknown`], so a newer kernel never breaks the reader.

use thiserror::Error;

pub const CN_IDX_PROC: u32 = 1;
pub const CN_VAL_PROC: u32 = 1;
pub const PROC_CN_MCAST_LISTEN: u32 = 1;
pub const PROC_CN_MCAST_IGNORE: u32 = 2;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const CN_MSG_LEN: usize = 20;
const PROC_EVENT_HDR_LEN: usize = 16;

const PROC_EVENT_NONE: u32 = 0x0000_0000;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_PTRACE: u32 = 0x0000_0100;
const PROC_EVENT_GID: u32 = 0x0000_0040;
const PROC_EVENT_SID: u32 = 0x0000_0080;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_COREDUMP: u32 = 0x4000_0000;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// One process event from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEvent {
    /// The CPU the event was produced on; `u32::MAX` on acks from kernels before 4.x,
    /// which bypass the per-CPU numbering.
    pub cpu: u32,
    /// `ktime_get_ns()` when the kernel produced the event: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// The connector header's sequence number: the kernel's per-CPU event counter, so a
    /// gap on one CPU is a count of events lost.
    pub cn_seq: u32,
    pub cn_ack: u32,
    pub data: EventData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventData {
    /// Answer to a subscription request; `err` is an errno (0 for success).
    Ack {
        err: u32,
    },
    Fork {
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    Exec {
        pid: u32,
        tgid: u32,
    },
    Uid {
        pid: u32,
        tgid: u32,
        ruid: u32,
        euid: u32,
    },
    Gid {
        pid: u32,
        tgid: u32,
        rgid: u32,
        egid: u32,
    },
    Sid {
        pid: u32,
        tgid: u32,
    },
    Ptrace {
        pid: u32,
        tgid: u32,
        tracer_pid: u32,
        tracer_tgid: u32,
    },
    Comm {
        pid: u32,
        tgid: u32,
        comm: [u8; 16],
    },
    Coredump {
        pid: u32,
        tgid: u32,
        parent_pid: Option<u32>,
        parent_tgid: Option<u32>,
    },
    Exit {
        pid: u32,
        tgid: u32,
        /// The wait status as the kernel keeps it: `code << 8` or the signal number.
        exit_code: u32,
        exit_signal: u32,
        parent_pid: Option<u32>,
        parent_tgid: Option<u32>,
    },
    Unknown {
        what: u32,
    },
}

/// What a datagram can hold besides events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Event(ProcEvent),
    /// `NLMSG_ERROR` with this errno (negative in the kernel, positive here).
    Error(i32),
    /// `NLMSG_OVERRUN`: the kernel says data was lost.
    Overrun,
    /// A message for another connector id, or a no-op: not ours, skipped.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("netlink message header truncated ({0} bytes left)")]
    TruncatedHeader(usize),
    #[error("netlink message length {len} is invalid for the {avail} bytes left")]
    BadLength { len: usize, avail: usize },
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn need(what: &'static str, b: &[u8], len: usize) -> Result<(), ParseError> {
    if b.len() < len {
        return Err(ParseError::Truncated {
            what,
            need: len,
            have: b.len(),
        });
    }
    Ok(())
}

/// Iterates over the netlink messages of one datagram. A framing error ends the
/// iteration after being yielded once: the rest of that datagram cannot be trusted.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        rest: datagram,
        failed: false,
    }
}

pub struct Messages<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let result = self.next_message();
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

impl Messages<'_> {
    fn next_message(&mut self) -> Result<Message, ParseError> {
        let b = self.rest;
        if b.len() < NLMSG_HDRLEN {
            return Err(ParseError::TruncatedHeader(b.len()));
        }
        let len = u32_at(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(ParseError::BadLength {
                len,
                avail: b.len(),
            });
        }
        let msg_type = u16_at(b, 4);
        let body = &b[NLMSG_HDRLEN..len];
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        let advance = (len + 3) & !3;
        self.rest = &b[advance.min(b.len())..];
        match msg_type {
            NLMSG_DONE => parse_connector(body),
            NLMSG_ERROR => {
                need("nlmsgerr", body, 4)?;
                Ok(Message::Error(-(u32_at(body, 0) as i32)))
            }
            NLMSG_OVERRUN => Ok(Message::Overrun),
            NLMSG_NOOP => Ok(Message::Ignored),
            _ => Ok(Message::Ignored),
        }
    }
}

/// Parses one connector message (the body after the netlink header).
///
/// # Errors
/// [`ParseError::Truncated`] when the body is shorter than its headers say.
pub fn parse_connector(body: &[u8]) -> Result<Message, ParseError> {
    need("cn_msg", body, CN_MSG_LEN)?;
    let idx = u32_at(body, 0);
    let val = u32_at(body, 4);
    if idx != CN_IDX_PROC || val != CN_VAL_PROC {
        return Ok(Message::Ignored);
    }
    let cn_seq = u32_at(body, 8);
    let cn_ack = u32_at(body, 12);
    let data_len = u16_at(body, 16) as usize;
    let data = &body[CN_MSG_LEN..];
    need("connector payload", data, data_len)?;
    let ev = &data[..data_len];
    need("proc_event", ev, PROC_EVENT_HDR_LEN)?;
    let what = u32_at(ev, 0);
    let cpu = u32_at(ev, 4);
    let timestamp_ns = u64_at(ev, 8);
    Ok(Message::Event(ProcEvent {
        cpu,
        timestamp_ns,
        cn_seq,
        cn_ack,
        data: event_data(what, &ev[PROC_EVENT_HDR_LEN..])?,
    }))
}

/// Parses `event_data`, the union after the `proc_event` header, by its type `what`.
fn event_data(what: u32, d: &[u8]) -> Result<EventData, ParseError> {
    let opt = |off: usize| (d.len() >= off + 4).then(|| u32_at(d, off));
    Ok(match what {
        PROC_EVENT_NONE => {
            need("ack", d, 4)?;
            EventData::Ack { err: u32_at(d, 0) }
        }
        PROC_EVENT_FORK => {
            need("fork", d, 16)?;
            EventData::Fork {
                parent_pid: u32_at(d, 0),
                parent_tgid: u32_at(d, 4),
                child_pid: u32_at(d, 8),
                child_tgid: u32_at(d, 12),
            }
        }
        PROC_EVENT_EXEC => {
            need("exec", d, 8)?;
            EventData::Exec {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
            }
        }
        PROC_EVENT_UID => {
            need("uid", d, 16)?;
            EventData::Uid {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                ruid: u32_at(d, 8),
                euid: u32_at(d, 12),
            }
        }
        PROC_EVENT_GID => {
            need("gid", d, 16)?;
            EventData::Gid {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                rgid: u32_at(d, 8),
                egid: u32_at(d, 12),
            }
        }
        PROC_EVENT_SID => {
            need("sid", d, 8)?;
            EventData::Sid {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
            }
        }
        PROC_EVENT_PTRACE => {
            need("ptrace", d, 16)?;
            EventData::Ptrace {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                tracer_pid: u32_at(d, 8),
                tracer_tgid: u32_at(d, 12),
            }
        }
        PROC_EVENT_COMM => {
            need("comm", d, 24)?;
            let mut comm = [0u8; 16];
            comm.copy_from_slice(&d[8..24]);
            EventData::Comm {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                comm,
            }
        }
        PROC_EVENT_COREDUMP => {
            need("coredump", d, 8)?;
            EventData::Coredump {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                parent_pid: opt(8),
                parent_tgid: opt(12),
            }
        }
        PROC_EVENT_EXIT => {
            need("exit", d, 16)?;
            EventData::Exit {
                pid: u32_at(d, 0),
                tgid: u32_at(d, 4),
                exit_code: u32_at(d, 8),
                exit_signal: u32_at(d, 12),
                parent_pid: opt(16),
                parent_tgid: opt(20),
            }
        }
        other => EventData::Unknown { what: other },
    })
}

/// Builds the datagram that subscribes to (`PROC_CN_MCAST_LISTEN`) or unsubscribes from
/// (`PROC_CN_MCAST_IGNORE`) process events. The 4-byte form is used because every kernel
/// since 2.6.15 accepts it; the event-type filter (6.6+) would silently subscribe to
/// nothing on older kernels.
///
/// `token` goes in both `seq` and `ack`: the kernel answers with an ack event whose
/// `ack` is `token + 1` (its `seq` is overwritten with the per-CPU event counter on
/// current kernels, so only `ack` identifies the answer).
pub fn subscription_request(
    op: u32,
    token: u32,
    port_id: u32,
) -> [u8; NLMSG_HDRLEN + CN_MSG_LEN + 4] {
    let mut b = [0u8; NLMSG_HDRLEN + CN_MSG_LEN + 4];
    let total = b.len() as u32;
    b[0..4].copy_from_slice(&total.to_ne_bytes());
    b[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    // flags 0
    b[8..12].copy_from_slice(&token.to_ne_bytes());
    b[12..16].copy_from_slice(&port_id.to_ne_bytes());
    b[16..20].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    b[20..24].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    b[24..28].copy_from_slice(&token.to_ne_bytes());
    b[28..32].copy_from_slice(&token.to_ne_bytes());
    b[32..34].copy_from_slice(&4u16.to_ne_bytes());
    // flags 0
    b[36..40].copy_from_slice(&op.to_ne_bytes());
    b
}

#[cfg(all(test, target_endian = "little"))]
mod tests;
