//! What the plugin knows of a socket, whichever way it was read: [`SocketRow`] is one
//! socket with one holder, as the BPF iterator and the `/proc` join both produce them;
//! [`group_by_socket`] turns holders of the same socket into one entry.

use std::net::SocketAddr;

pub use hids_netlink::sock_diag::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn from_protocol(protocol: u8) -> Option<Transport> {
        match protocol {
            6 => Some(Transport::Tcp),
            17 => Some(Transport::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// A process holding a socket under a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
}

/// One socket and one of its holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    pub inode: u64,
    pub netns: u64,
    pub transport: Transport,
    /// The kernel's state number (TCP's; UDP uses `TCP_CLOSE` for unconnected and
    /// `TCP_ESTABLISHED` for connected sockets).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `None` when no process holds it any more (a dying connection, or one whose
    /// holder the `/proc` walk could not see).
    pub holder: Option<Holder>,
}

impl SocketRow {
    /// A listening socket: TCP in LISTEN, or UDP with no peer.
    pub fn is_listener(&self) -> bool {
        match self.transport {
            Transport::Tcp => self.state == TCP_LISTEN,
            Transport::Udp => {
                self.state == TCP_CLOSE && self.remote.port() == 0 && self.local.port() != 0
            }
        }
    }

    /// The state as `ss` names it, in lower case.
    pub fn state_name(&self) -> &'static str {
        match self.transport {
            Transport::Udp if self.state == TCP_CLOSE => "unconnected",
            _ => hids_netlink::sock_diag::state_name(self.state),
        }
    }
}

/// Sorts rows by socket, then holder, and calls `each` once per socket with all its
/// holders (the first being the lowest pid). Rows of a socket without holder come as an
/// empty slice. A socket is its inode *and* its ends: the kernel's inode counter is
/// 32-bit, so two sockets of a busy host can share a number, and must not be merged.
pub fn group_by_socket(rows: &mut [SocketRow], mut each: impl FnMut(&SocketRow, &[Holder])) {
    let socket = |r: &SocketRow| (r.inode, r.netns, r.transport, r.local, r.remote);
    rows.sort_unstable_by_key(|r| (socket(r), r.holder));
    let mut holders = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let key = socket(&rows[start]);
        let end = rows[start..]
            .iter()
            .position(|r| socket(r) != key)
            .map_or(rows.len(), |n| start + n);
        holders.clear();
        holders.extend(rows[start..end].iter().filter_map(|r| r.holder));
        holders.dedup();
        each(&rows[start], &holders);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(inode: u64, pid: Option<u32>) -> SocketRow {
        SocketRow {
            inode,
            netns: 1,
            transport: Transport::Tcp,
            state: TCP_ESTABLISHED,
            local: "127.0.0.1:1000".parse().unwrap(),
            remote: "127.0.0.1:2000".parse().unwrap(),
            holder: pid.map(|pid| Holder { pid, fd: 3 }),
        }
    }

    #[test]
    fn holders_of_one_socket_are_grouped_lowest_pid_first() {
        let mut rows = vec![
            row(2, Some(9)),
            row(1, Some(5)),
            row(2, Some(4)),
            row(3, None),
        ];
        let mut seen = Vec::new();
        group_by_socket(&mut rows, |r, h| {
            seen.push((r.inode, h.iter().map(|h| h.pid).collect::<Vec<_>>()))
        });
        assert_eq!(seen, vec![(1, vec![5]), (2, vec![4, 9]), (3, vec![])]);
    }

    #[test]
    fn sockets_sharing_an_inode_number_stay_apart() {
        let mut other = row(1, Some(9));
        other.remote = "127.0.0.1:3000".parse().unwrap();
        let mut rows = vec![row(1, Some(5)), other];
        let mut seen = 0;
        group_by_socket(&mut rows, |_, h| {
            seen += 1;
            assert_eq!(h.len(), 1);
        });
        assert_eq!(seen, 2);
    }

    #[test]
    fn listeners_and_state_names() {
        let mut r = row(1, None);
        assert_eq!(r.state_name(), "established");
        r.state = TCP_LISTEN;
        assert!(r.is_listener());
        assert_eq!(r.state_name(), "listen");
        r.transport = Transport::Udp;
        r.state = TCP_CLOSE;
        r.remote = "0.0.0.0:0".parse().unwrap();
        assert!(r.is_listener());
        assert_eq!(r.state_name(), "unconnected");
        r.state = 200;
        assert_eq!(r.state_name(), "unknown");
    }
}
