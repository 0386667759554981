//! Parser for inet socket dumps over `NETLINK_SOCK_DIAG` (`linux/sock_diag.h`,
//! `linux/inet_diag.h`), the interface `ss` uses.
//!
//! A request is one message, `SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`:
//!
//! ```text
//! nlmsghdr         16 bytes  len u32, type u16 (20), flags u16 (REQUEST|DUMP), seq u32, pid u32
//! inet_diag_req_v2 56 bytes  family u8, protocol u8, ext u8, pad u8, states u32,
//!                            inet_diag_sockid (48 bytes, zero: match every socket)
//! ```
//!
//! The kernel answers with datagrams of `inet_diag_msg` messages (flag `NLM_F_MULTI`),
//! then `NLMSG_DONE`:
//!
//! ```text
//! inet_diag_msg    72 bytes  family u8, state u8, timer u8, retrans u8,
//!                            inet_diag_sockid: sport be16, dport be16, src [u8; 16],
//!                              dst [u8; 16], if u32, cookie [u32; 2]
//!                            expires u32, rqueue u32, wqueue u32, uid u32, inode u32
//!                  + attributes (none asked for; skipped)
//! ```
//!
//! Ports and addresses are big-endian, everything else host order. An IPv4 socket
//! uses the first 4 bytes of each address. An IPv6 socket talking IPv4 reports
//! IPv4-mapped addresses (`::ffff:a.b.c.d`), kept as the kernel gives them, as `ss`
//! prints them; `ip().to_canonical()` gives the IPv4 form.
//!
//! The socket glue is [`DiagSocket`]; everything else here is pure functions over
//! byte slices.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use thiserror::Error;

mod dump;

pub use dump::{DiagError, DiagSocket, DumpStats};

pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub const NLMSG_HDRLEN: usize = 16;
pub const INET_DIAG_REQ_V2_LEN: usize = 56;
pub const INET_DIAG_MSG_LEN: usize = 72;
/// Request plus its netlink header: the whole datagram we send.
pub const REQUEST_LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Set by the kernel when the tables changed under a dump (some kernels, some tables).
const NLM_F_DUMP_INTR: u16 = 0x10;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// TCP states (`include/net/tcp_states.h`). UDP sockets reuse them: unconnected ones
/// are [`TCP_CLOSE`], connected ones [`TCP_ESTABLISHED`].
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;
pub const TCP_BOUND_INACTIVE: u8 = 13;

/// The `states` mask that matches every socket, whatever states future kernels add.
pub const ALL_STATES: u32 = u32::MAX;

/// The `states` bit of one state: `state_bit(TCP_LISTEN)` dumps listeners only.
pub const fn state_bit(state: u8) -> u32 {
    if state < 32 {
        1 << state
    } else {
        0
    }
}

/// The lower-case name of a state, as the plugin reports it (`"established"`,
/// `"listen"`, `"time_wait"`); `"unknown"` for a state this code does not know.
pub fn state_name(state: u8) -> &'static str {
    match state {
        TCP_ESTABLISHED => "established",
        TCP_SYN_SENT => "syn_sent",
        TCP_SYN_RECV => "syn_recv",
        TCP_FIN_WAIT1 => "fin_wait1",
        TCP_FIN_WAIT2 => "fin_wait2",
        TCP_TIME_WAIT => "time_wait",
        TCP_CLOSE => "close",
        TCP_CLOSE_WAIT => "close_wait",
        TCP_LAST_ACK => "last_ack",
        TCP_LISTEN => "listen",
        TCP_CLOSING => "closing",
        TCP_NEW_SYN_RECV => "new_syn_recv",
        TCP_BOUND_INACTIVE => "bound_inactive",
        _ => "unknown",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn raw(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn raw(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
}

/// One socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetSocket {
    pub family: Family,
    /// Not in the reply: the protocol the dump asked for.
    pub protocol: Protocol,
    /// A TCP state (`TCP_*`); see [`state_name`].
    pub state: u8,
    /// This socket's end (`ss`'s "Local").
    pub local: SocketAddr,
    /// The peer (`ss`'s "Peer"); unspecified address and port 0 when unconnected.
    pub remote: SocketAddr,
    /// The socket's inode (`socket:[N]` in `/proc/<pid>/fd`); 0 for sockets no file
    /// holds: `TIME_WAIT`, `NEW_SYN_RECV` request sockets, orphans.
    pub inode: u64,
    pub uid: u32,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`), 0 for none. Also the
    /// scope id of a link-local IPv6 address.
    pub interface: u32,
    /// The kernel's socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`): unique per
    /// socket for the life of the boot, unlike the inode.
    pub cookie: u64,
}

/// One message of a reply datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Socket(InetSocket),
    /// `NLMSG_DONE`: the dump is over. Carries the dump's errno (0 when it succeeded).
    Done(i32),
    /// `NLMSG_ERROR` with this errno (negative in the kernel, positive here; 0 is an
    /// acknowledgement).
    Error(i32),
    /// `NLMSG_OVERRUN`: the kernel says data was lost.
    Overrun,
    /// A no-op or a type we do not know: skipped.
    Ignored,
}

/// A message with the header fields the dump loop checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub seq: u32,
    /// `NLM_F_DUMP_INTR`: the kernel says the dump may be inconsistent.
    pub interrupted: bool,
    pub message: Message,
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
    #[error("unknown address family {0} in inet_diag_msg")]
    UnknownFamily(u8),
}

fn u16_ne(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_ne(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u16_be(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
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

/// Builds the dump request for one family and protocol, the sockets whose state bit is
/// set in `states` (see [`state_bit`], [`ALL_STATES`]).
pub fn dump_request(
    family: Family,
    protocol: Protocol,
    states: u32,
    seq: u32,
) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: addressed to the kernel.
    b[16] = family.raw();
    b[17] = protocol.raw();
    // idiag_ext 0: no extensions, the smallest replies; pad 0.
    b[20..24].copy_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid all zero: no filter.
    b
}

/// Iterates over the netlink messages of one reply datagram. `protocol` is the one the
/// request asked for (replies do not carry it). A framing error ends the iteration
/// after being yielded once: the rest of that datagram cannot be trusted. An error in
/// one socket message is yielded and the iteration goes on with the next message.
pub fn messages(datagram: &[u8], protocol: Protocol) -> Messages<'_> {
    Messages {
        rest: datagram,
        protocol,
        failed: false,
    }
}

pub struct Messages<'a> {
    rest: &'a [u8],
    protocol: Protocol,
    failed: bool,
}

impl Iterator for Messages<'_> {
    type Item = Result<Received, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < NLMSG_HDRLEN {
            self.failed = true;
            return Some(Err(ParseError::TruncatedHeader(b.len())));
        }
        let len = u32_ne(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.failed = true;
            return Some(Err(ParseError::BadLength {
                len,
                avail: b.len(),
            }));
        }
        let msg_type = u16_ne(b, 4);
        let flags = u16_ne(b, 6);
        let seq = u32_ne(b, 8);
        let body = &b[NLMSG_HDRLEN..len];
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        let advance = (len + 3) & !3;
        self.rest = &b[advance.min(b.len())..];
        let message = match msg_type {
            SOCK_DIAG_BY_FAMILY => match parse_inet_diag_msg(body, self.protocol) {
                Ok(socket) => Message::Socket(socket),
                Err(e) => return Some(Err(e)),
            },
            NLMSG_DONE => Message::Done(errno_at_start(body)),
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Some(Err(ParseError::Truncated {
                        what: "nlmsgerr",
                        need: 4,
                        have: body.len(),
                    }));
                }
                Message::Error(errno_at_start(body))
            }
            NLMSG_OVERRUN => Message::Overrun,
            NLMSG_NOOP => Message::Ignored,
            _ => Message::Ignored,
        };
        Some(Ok(Received {
            seq,
            interrupted: flags & NLM_F_DUMP_INTR != 0,
            message,
        }))
    }
}

/// The kernel puts a negative errno (an `int`) first in `NLMSG_DONE` and
/// `NLMSG_ERROR`; an empty `NLMSG_DONE` (old kernels) means success.
fn errno_at_start(body: &[u8]) -> i32 {
    if body.len() < 4 {
        return 0;
    }
    (u32_ne(body, 0) as i32).wrapping_neg()
}

/// Parses one `inet_diag_msg` (the body after the netlink header). Attributes after the
/// fixed part are ignored.
///
/// # Errors
/// [`ParseError::Truncated`] when the body is shorter than the fixed part,
/// [`ParseError::UnknownFamily`] when it is neither IPv4 nor IPv6.
pub fn parse_inet_diag_msg(body: &[u8], protocol: Protocol) -> Result<InetSocket, ParseError> {
    need("inet_diag_msg", body, INET_DIAG_MSG_LEN)?;
    let family = match body[0] {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        other => return Err(ParseError::UnknownFamily(other)),
    };
    let interface = u32_ne(body, 40);
    let cookie = u64::from(u32_ne(body, 44)) | (u64::from(u32_ne(body, 48)) << 32);
    let local = socket_addr(family, &body[8..24], u16_be(body, 4), interface);
    let remote = socket_addr(family, &body[24..40], u16_be(body, 6), interface);
    Ok(InetSocket {
        family,
        protocol,
        state: body[1],
        local,
        remote,
        inode: u64::from(u32_ne(body, 68)),
        uid: u32_ne(body, 64),
        interface,
        cookie,
    })
}

/// `addr` is the 16-byte `idiag_src`/`idiag_dst`, network order.
fn socket_addr(family: Family, addr: &[u8], port: u16, interface: u32) -> SocketAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&addr[..16]);
    match family {
        Family::V4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), port),
        Family::V6 => {
            let ip = Ipv6Addr::from(a);
            // Only a link-local address needs its interface to mean anything.
            let scope = if ip.is_unicast_link_local() {
                interface
            } else {
                0
            };
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope))
        }
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests;
