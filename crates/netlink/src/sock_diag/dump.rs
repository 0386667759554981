//! The sock_diag socket: open (here or in another network namespace), dump, stream.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{netlink, sockopt, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

use super::{dump_request, messages, Family, InetSocket, Message, Protocol};

/// The receive buffer. The kernel sizes each dump datagram to the largest `recv` it has
/// seen from us, capped near 32 KiB; a larger buffer costs nothing and can never be
/// outgrown, so `MSG_TRUNC` is a counted anomaly, not a loss we plan for.
const RECV_BUFFER_BYTES: usize = 64 * 1024;

/// How long one `recv` may wait. A dump of 300,000 sockets returns a datagram every few
/// microseconds; a silent kernel for this long means the dump is stuck.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// What a dump saw besides the sockets it handed over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DumpStats {
    pub datagrams: u64,
    /// Netlink messages, sockets and control messages alike.
    pub messages: u64,
    /// Sockets handed to the callback.
    pub sockets: u64,
    /// Messages that could not be parsed (a truncated or garbled message, an unknown
    /// family); the dump goes on past them.
    pub parse_errors: u64,
    /// Datagrams longer than the receive buffer (`MSG_TRUNC`): their tail was lost.
    pub truncated_datagrams: u64,
    /// Messages of another request (an earlier sequence number): skipped.
    pub stale_messages: u64,
    /// `NLMSG_OVERRUN` messages: the kernel says it lost data.
    pub overruns: u64,
    /// Whether the kernel flagged the dump `NLM_F_DUMP_INTR`: its tables changed under
    /// it. A dump is never a snapshot anyway: sockets that open or close during it may
    /// or may not appear.
    pub interrupted: bool,
}

impl DumpStats {
    /// Adds another dump's counts (the four family/protocol dumps of one snapshot).
    pub fn add(&mut self, other: &DumpStats) {
        self.datagrams += other.datagrams;
        self.messages += other.messages;
        self.sockets += other.sockets;
        self.parse_errors += other.parse_errors;
        self.truncated_datagrams += other.truncated_datagrams;
        self.stale_messages += other.stale_messages;
        self.overruns += other.overruns;
        self.interrupted |= other.interrupted;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(io::Error),
    /// The namespace fd is not a network namespace, the caller lacks `CAP_SYS_ADMIN`,
    /// or a helper thread could not be started. A namespace that is gone cannot get
    /// here: an open `ns/net` fd keeps it alive; opening that file is what fails.
    #[error("cannot enter the network namespace (the fd must be an open /proc/<pid>/ns/net, and entering needs CAP_SYS_ADMIN): {0}")]
    Namespace(io::Error),
    #[error("sending the sock_diag dump request failed: {0}")]
    Send(io::Error),
    #[error("receiving the sock_diag dump failed: {0}")]
    Recv(io::Error),
    #[error("the kernel sent nothing for {0:?} in the middle of a sock_diag dump; the socket is unusable, open a new one")]
    Timeout(Duration),
    #[error("the kernel refused the {family:?}/{protocol:?} sock_diag dump: {source} (ENOENT: load the tcp_diag/udp_diag module)")]
    Kernel {
        family: Family,
        protocol: Protocol,
        source: io::Error,
    },
    #[error("an earlier dump on this socket was cut short; open a new socket")]
    Poisoned,
}

/// A `NETLINK_SOCK_DIAG` socket and its receive buffer, reused across dumps. It dumps
/// the network namespace it was opened in.
pub struct DiagSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// Set while a dump is in flight: one cut short by a timeout leaves the kernel's
    /// dump running, and the kernel refuses a second (`EBUSY`).
    poisoned: bool,
}

impl DiagSocket {
    /// Opens a socket in the caller's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be created (no `NETLINK_SOCK_DIAG` in this kernel, or
    /// out of file descriptors).
    pub fn open() -> Result<Self, DiagError> {
        Ok(Self::from_fd(open_fd().map_err(DiagError::Open)?))
    }

    /// Opens a socket in the network namespace `netns` (an open `/proc/<pid>/ns/net`).
    ///
    /// A netlink socket belongs to the namespace it was created in, so a short-lived
    /// thread enters the namespace, creates the socket and exits; the caller's threads
    /// never change namespace. Dumps then run on whichever thread the caller likes.
    ///
    /// # Errors
    /// [`DiagError::Namespace`] when the namespace cannot be entered,
    /// [`DiagError::Open`] when the socket cannot be created there.
    pub fn open_in_netns(netns: impl AsFd) -> Result<Self, DiagError> {
        let netns = netns.as_fd();
        let fd = std::thread::scope(|scope| {
            let helper = std::thread::Builder::new()
                .name("hids-netns".to_owned())
                .spawn_scoped(scope, move || {
                    rustix::thread::move_into_link_name_space(
                        netns,
                        Some(LinkNameSpaceType::Network),
                    )
                    .map_err(|e| DiagError::Namespace(e.into()))?;
                    open_fd().map_err(DiagError::Open)
                })
                .map_err(DiagError::Namespace)?;
            helper.join().unwrap_or_else(|_| {
                Err(DiagError::Namespace(io::Error::other(
                    "the namespace helper thread panicked",
                )))
            })
        })?;
        Ok(Self::from_fd(fd))
    }

    fn from_fd(fd: OwnedFd) -> Self {
        DiagSocket {
            fd,
            buf: vec![0u8; RECV_BUFFER_BYTES],
            seq: 0,
            poisoned: false,
        }
    }

    /// Dumps the `family`/`protocol` sockets whose state bit is set in `states`
    /// ([`super::state_bit`], [`super::ALL_STATES`]), calling `on_socket` for each as
    /// its datagram arrives: nothing is collected, memory stays at one receive buffer.
    ///
    /// # Errors
    /// I/O errors, a timeout (the socket is then unusable: [`DiagError::Poisoned`]
    /// from then on), or the kernel's refusal. Unparsable messages are not errors: they
    /// are counted in [`DumpStats::parse_errors`].
    pub fn dump(
        &mut self,
        family: Family,
        protocol: Protocol,
        states: u32,
        mut on_socket: impl FnMut(&InetSocket),
    ) -> Result<DumpStats, DiagError> {
        if self.poisoned {
            return Err(DiagError::Poisoned);
        }
        self.seq = self.seq.wrapping_add(1);
        let request = dump_request(family, protocol, states, self.seq);
        loop {
            match rustix::net::send(&self.fd, &request, SendFlags::empty()) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(DiagError::Send(e.into())),
            }
        }
        self.poisoned = true;
        let mut stats = DumpStats::default();
        loop {
            let (len, full_len) =
                match rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::TRUNC) {
                    Ok(got) => got,
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => return Err(DiagError::Timeout(RECV_TIMEOUT)),
                    Err(e) => return Err(DiagError::Recv(e.into())),
                };
            stats.datagrams += 1;
            if full_len > len {
                stats.truncated_datagrams += 1;
            }
            let end = receive_datagram(
                &self.buf[..len],
                self.seq,
                protocol,
                &mut stats,
                &mut on_socket,
            );
            if let Some(errno) = end {
                self.poisoned = false;
                if errno == 0 {
                    return Ok(stats);
                }
                return Err(DiagError::Kernel {
                    family,
                    protocol,
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
}

/// Hands the sockets of one datagram to `on_socket` and counts the rest. Returns the
/// errno that ended the dump (0 for success), or `None` when more datagrams follow.
fn receive_datagram(
    datagram: &[u8],
    seq: u32,
    protocol: Protocol,
    stats: &mut DumpStats,
    on_socket: &mut impl FnMut(&InetSocket),
) -> Option<i32> {
    for received in messages(datagram, protocol) {
        stats.messages += 1;
        let received = match received {
            Ok(r) => r,
            Err(_) => {
                stats.parse_errors += 1;
                continue;
            }
        };
        if received.seq != seq {
            stats.stale_messages += 1;
            continue;
        }
        stats.interrupted |= received.interrupted;
        match received.message {
            Message::Socket(socket) => {
                stats.sockets += 1;
                on_socket(&socket);
            }
            Message::Done(errno) => return Some(errno),
            // 0 is an acknowledgement, which a dump does not ask for: ignore it.
            Message::Error(0) => {}
            Message::Error(errno) => return Some(errno),
            Message::Overrun => stats.overruns += 1,
            Message::Ignored => {}
        }
    }
    None
}

fn open_fd() -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(RECV_TIMEOUT))?;
    Ok(fd)
}
