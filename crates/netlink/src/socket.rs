//! The proc connector socket: open, subscribe, receive.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{sockopt, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::proc_connector::{
    messages, subscription_request, EventData, Message, CN_IDX_PROC, PROC_CN_MCAST_IGNORE,
    PROC_CN_MCAST_LISTEN,
};

/// How to open the socket.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Kernel receive buffer. A burst of execs waits here while we are busy; past it the
    /// kernel drops and we see `ENOBUFS`. Set with `SO_RCVBUFFORCE` (root) so that
    /// `net.core.rmem_max` does not cap it, falling back to `SO_RCVBUF`.
    pub recv_buffer_bytes: usize,
    /// How long one `recv` may block, so the reader can notice shutdown.
    pub recv_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer_bytes: 8 << 20,
            recv_timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Nothing to read right now (or the timeout passed).
    #[error("no data")]
    WouldBlock,
    /// The kernel dropped messages because our buffer was full. Counted loss, not fatal.
    #[error("receive buffer overrun: the kernel dropped events")]
    Overrun,
    #[error("recv on the proc connector failed: {0}")]
    Io(#[from] io::Error),
}

/// A subscribed process events socket. Dropping it unsubscribes.
pub struct ProcSocket {
    fd: OwnedFd,
    port_id: u32,
    buf: Vec<u8>,
}

impl ProcSocket {
    /// Opens the connector socket and subscribes to process events, waiting up to two
    /// seconds for the kernel to acknowledge.
    ///
    /// # Errors
    /// When the socket cannot be opened or bound, or the kernel refuses the subscription
    /// (`EPERM`: the caller lacks `CAP_NET_ADMIN` in the initial namespaces).
    pub fn open(opts: &SocketOptions) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::CONNECTOR),
        )?;
        if sockopt::set_socket_recv_buffer_size_force(&fd, opts.recv_buffer_bytes).is_err() {
            sockopt::set_socket_recv_buffer_size(&fd, opts.recv_buffer_bytes)?;
        }
        let port_id = std::process::id();
        // Port id 0 lets the kernel pick a unique one: several readers may share a pid.
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, CN_IDX_PROC))?;
        let port_id = match rustix::net::getsockname(&fd) {
            Ok(addr) => SocketAddrNetlink::try_from(addr)
                .map(|a| a.pid())
                .unwrap_or(port_id),
            Err(_) => port_id,
        };
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(opts.recv_timeout))?;
        let mut sock = ProcSocket {
            fd,
            port_id,
            buf: vec![0u8; 64 * 1024],
        };
        sock.subscribe()?;
        Ok(sock)
    }

    fn subscribe(&mut self) -> io::Result<()> {
        let token = self.port_id;
        let req = subscription_request(PROC_CN_MCAST_LISTEN, token, self.port_id);
        rustix::net::send(&self.fd, &req, SendFlags::empty())?;
        // The kernel answers with an ack event whose `ack` is our token + 1; other
        // listeners' acks and ordinary events may arrive first.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let datagram = match self.recv(false) {
                Ok(d) => d,
                Err(RecvError::WouldBlock | RecvError::Overrun) => continue,
                Err(RecvError::Io(e)) => return Err(e),
            };
            for msg in messages(datagram).flatten() {
                match msg {
                    Message::Event(ev) if ev.cn_ack == token.wrapping_add(1) => {
                        if let EventData::Ack { err } = ev.data {
                            if err == 0 {
                                return Ok(());
                            }
                            return Err(io::Error::from_raw_os_error(err as i32));
                        }
                    }
                    Message::Error(errno) if errno != 0 => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    _ => {}
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not acknowledge the proc connector subscription",
        ))
    }

    /// Waits until a datagram is queued, at most `timeout`. Returns whether one is.
    ///
    /// # Errors
    /// When `poll` fails for another reason than a signal.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one datagram. With `dont_wait`, returns [`RecvError::WouldBlock`] at once
    /// when nothing is queued; otherwise blocks up to the configured timeout.
    ///
    /// # Errors
    /// [`RecvError::Overrun`] when the kernel dropped events; I/O errors otherwise.
    pub fn recv(&mut self, dont_wait: bool) -> Result<&[u8], RecvError> {
        let flags = if dont_wait {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
        loop {
            match rustix::net::recv(&self.fd, &mut self.buf[..], flags) {
                Ok((n, _)) => return Ok(&self.buf[..n]),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Err(RecvError::WouldBlock),
                Err(Errno::NOBUFS) => return Err(RecvError::Overrun),
                Err(e) => return Err(RecvError::Io(e.into())),
            }
        }
    }
}

impl Drop for ProcSocket {
    fn drop(&mut self) {
        // The kernel keeps a global listener count that gates event generation; tell it
        // we are gone. Best effort: the socket closes either way.
        let req = subscription_request(PROC_CN_MCAST_IGNORE, 0, self.port_id);
        let _ = rustix::net::send(&self.fd, &req, SendFlags::empty());
    }
}
