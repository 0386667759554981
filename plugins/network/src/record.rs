//! The records src/bpf/network.bpf.c writes, native endian: `struct sock_record` (the
//! iterator's, one per socket and holder) and `struct conn_event` (the ring buffer's, one
//! per reported connect or accept). Each field is a named byte range; the tests check
//! every range and size against the structs as the compiled program's BTF describes them
//! (the skeleton's `types`), so a C struct changed without this file fails the tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use crate::model::{Holder, SocketRow, Transport};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `struct sock_record`.
pub mod sock {
    use std::ops::Range;
    pub const TGID: Range<usize> = 0..4;
    pub const FD: Range<usize> = 4..8;
    pub const INODE: Range<usize> = 8..16;
    pub const NETNS: Range<usize> = 16..20;
    pub const FAMILY: usize = 20;
    pub const PROTOCOL: usize = 21;
    pub const STATE: usize = 22;
    pub const LOCAL_PORT: Range<usize> = 24..26;
    pub const REMOTE_PORT: Range<usize> = 26..28;
    pub const LOCAL_ADDR: Range<usize> = 28..44;
    pub const REMOTE_ADDR: Range<usize> = 44..60;
    /// With the tail padding the C compiler adds (the struct is 8-byte aligned).
    pub const LEN: usize = 64;
}

/// `struct conn_event`.
pub mod conn {
    use std::ops::Range;
    pub const TS_NS: Range<usize> = 0..8;
    pub const FOLDED: Range<usize> = 8..16;
    pub const TGID: Range<usize> = 16..20;
    pub const UID: Range<usize> = 20..24;
    pub const NETNS: Range<usize> = 24..28;
    pub const DIRECTION: usize = 28;
    pub const FAMILY: usize = 29;
    pub const LOCAL_PORT: Range<usize> = 32..34;
    pub const REMOTE_PORT: Range<usize> = 34..36;
    pub const LOCAL_ADDR: Range<usize> = 36..52;
    pub const REMOTE_ADDR: Range<usize> = 52..68;
    pub const COMM: Range<usize> = 68..84;
    pub const LEN: usize = 88;
}

/// `DIR_*` in the C program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Connect,
    Accept,
}

/// One connect or accept the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    pub ts_ns: u64,
    /// Connections of the same key folded since the key was last reported.
    pub folded: u64,
    pub pid: u32,
    pub uid: u32,
    pub netns: u64,
    pub direction: Direction,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub comm: String,
}

fn bytes<const N: usize>(b: &[u8], r: Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(r) {
        if src.len() == N {
            out.copy_from_slice(src);
        }
    }
    out
}

fn u16_at(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_ne_bytes(bytes(b, r))
}

fn u32_at(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_ne_bytes(bytes(b, r))
}

fn u64_at(b: &[u8], r: Range<usize>) -> u64 {
    u64::from_ne_bytes(bytes(b, r))
}

/// An address as the kernel keeps it: IPv4 in the first four bytes (network order), or
/// sixteen bytes of IPv6. An IPv4-mapped IPv6 address (a dual-stack socket talking to an
/// IPv4 peer) stays IPv6, as `ss` prints it.
fn addr(family: u8, raw: [u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(raw)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One iterator record; `None` for a record of the wrong size or an unknown family or
/// protocol (counted by the caller).
pub fn parse_sock(b: &[u8]) -> Option<SocketRow> {
    if b.len() != sock::LEN {
        return None;
    }
    let family = b[sock::FAMILY];
    Some(SocketRow {
        inode: u64_at(b, sock::INODE),
        netns: u64::from(u32_at(b, sock::NETNS)),
        transport: Transport::from_protocol(b[sock::PROTOCOL])?,
        state: b[sock::STATE],
        local: addr(
            family,
            bytes(b, sock::LOCAL_ADDR),
            u16_at(b, sock::LOCAL_PORT),
        )?,
        remote: addr(
            family,
            bytes(b, sock::REMOTE_ADDR),
            u16_at(b, sock::REMOTE_PORT),
        )?,
        holder: Some(Holder {
            pid: u32_at(b, sock::TGID),
            fd: u32_at(b, sock::FD) as i32,
        }),
    })
}

/// One ring buffer record; `None` when malformed.
pub fn parse_conn(b: &[u8]) -> Option<ConnEvent> {
    if b.len() < conn::LEN {
        return None;
    }
    let family = b[conn::FAMILY];
    let direction = match b[conn::DIRECTION] {
        1 => Direction::Connect,
        2 => Direction::Accept,
        _ => return None,
    };
    let comm = &b[conn::COMM];
    let comm = &comm[..comm.iter().position(|&c| c == 0).unwrap_or(comm.len())];
    Some(ConnEvent {
        ts_ns: u64_at(b, conn::TS_NS),
        folded: u64_at(b, conn::FOLDED),
        pid: u32_at(b, conn::TGID),
        uid: u32_at(b, conn::UID),
        netns: u64::from(u32_at(b, conn::NETNS)),
        direction,
        local: addr(
            family,
            bytes(b, conn::LOCAL_ADDR),
            u16_at(b, conn::LOCAL_PORT),
        )?,
        remote: addr(
            family,
            bytes(b, conn::REMOTE_ADDR),
            u16_at(b, conn::REMOTE_PORT),
        )?,
        comm: String::from_utf8_lossy(comm).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ranges_are_the_c_structs() {
        assert_eq!(size_of::<types::sock_record>(), sock::LEN);
        assert_eq!(offset_of!(types::sock_record, tgid), sock::TGID.start);
        assert_eq!(offset_of!(types::sock_record, fd), sock::FD.start);
        assert_eq!(offset_of!(types::sock_record, inode), sock::INODE.start);
        assert_eq!(offset_of!(types::sock_record, netns), sock::NETNS.start);
        assert_eq!(offset_of!(types::sock_record, family), sock::FAMILY);
        assert_eq!(offset_of!(types::sock_record, protocol), sock::PROTOCOL);
        assert_eq!(offset_of!(types::sock_record, state), sock::STATE);
        assert_eq!(
            offset_of!(types::sock_record, local_port),
            sock::LOCAL_PORT.start
        );
        assert_eq!(
            offset_of!(types::sock_record, remote_port),
            sock::REMOTE_PORT.start
        );
        assert_eq!(
            offset_of!(types::sock_record, local_addr),
            sock::LOCAL_ADDR.start
        );
        assert_eq!(
            offset_of!(types::sock_record, remote_addr),
            sock::REMOTE_ADDR.start
        );

        assert_eq!(size_of::<types::conn_event>(), conn::LEN);
        assert_eq!(offset_of!(types::conn_event, ts_ns), conn::TS_NS.start);
        assert_eq!(offset_of!(types::conn_event, folded), conn::FOLDED.start);
        assert_eq!(offset_of!(types::conn_event, tgid), conn::TGID.start);
        assert_eq!(offset_of!(types::conn_event, uid), conn::UID.start);
        assert_eq!(offset_of!(types::conn_event, netns), conn::NETNS.start);
        assert_eq!(offset_of!(types::conn_event, direction), conn::DIRECTION);
        assert_eq!(offset_of!(types::conn_event, family), conn::FAMILY);
        assert_eq!(
            offset_of!(types::conn_event, local_port),
            conn::LOCAL_PORT.start
        );
        assert_eq!(
            offset_of!(types::conn_event, remote_port),
            conn::REMOTE_PORT.start
        );
        assert_eq!(
            offset_of!(types::conn_event, local_addr),
            conn::LOCAL_ADDR.start
        );
        assert_eq!(
            offset_of!(types::conn_event, remote_addr),
            conn::REMOTE_ADDR.start
        );
        assert_eq!(offset_of!(types::conn_event, comm), conn::COMM.start);
    }

    #[test]
    fn a_socket_record_parses_and_garbage_does_not() {
        let mut b = vec![0u8; sock::LEN];
        b[sock::TGID].copy_from_slice(&42u32.to_ne_bytes());
        b[sock::FD].copy_from_slice(&7i32.to_ne_bytes());
        b[sock::INODE].copy_from_slice(&99u64.to_ne_bytes());
        b[sock::FAMILY] = AF_INET;
        b[sock::PROTOCOL] = 6;
        b[sock::STATE] = 1;
        b[sock::LOCAL_PORT].copy_from_slice(&8080u16.to_ne_bytes());
        b[sock::REMOTE_PORT].copy_from_slice(&50000u16.to_ne_bytes());
        b[sock::LOCAL_ADDR.start..sock::LOCAL_ADDR.start + 4].copy_from_slice(&[127, 0, 0, 1]);
        b[sock::REMOTE_ADDR.start..sock::REMOTE_ADDR.start + 4].copy_from_slice(&[10, 0, 0, 2]);
        let row = parse_sock(&b).unwrap();
        assert_eq!(row.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(row.remote, "10.0.0.2:50000".parse().unwrap());
        assert_eq!(row.holder, Some(Holder { pid: 42, fd: 7 }));
        assert_eq!(row.inode, 99);
        b[sock::FAMILY] = 1;
        assert_eq!(parse_sock(&b), None, "AF_UNIX is not ours");
        assert_eq!(parse_sock(&b[..10]), None);
        assert_eq!(parse_conn(&b[..10]), None);
        assert_eq!(parse_conn(&[0xff; conn::LEN]), None);
    }
}
