#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use super::*;
use proptest::prelude::*;

/// An established IPv4 TCP socket as the kernel sends it (x86_64, little endian), with
/// the one attribute current kernels always add (INET_DIAG_SHUTDOWN): 96 bytes.
#[rustfmt::skip]
const TCP4_DATAGRAM: [u8; 96] = [
    // nlmsghdr
    0x60, 0x00, 0x00, 0x00, // nlmsg_len 96
    0x14, 0x00,             // nlmsg_type SOCK_DIAG_BY_FAMILY
    0x02, 0x00,             // nlmsg_flags NLM_F_MULTI
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq 7
    0x2a, 0x00, 0x00, 0x00, // nlmsg_pid 42
    // inet_diag_msg
    0x02,                   // idiag_family AF_INET
    0x01,                   // idiag_state TCP_ESTABLISHED
    0x00,                   // idiag_timer
    0x00,                   // idiag_retrans
    0x1f, 0x90,             // idiag_sport 8080, big endian
    0xc3, 0x50,             // idiag_dport 50000, big endian
    127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    // idiag_src 127.0.0.1
    10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     // idiag_dst 10.1.2.3
    0x00, 0x00, 0x00, 0x00, // idiag_if
    0x01, 0x02, 0x00, 0x00, // idiag_cookie[0] 0x201
    0x05, 0x00, 0x00, 0x00, // idiag_cookie[1] 5
    0x00, 0x00, 0x00, 0x00, // idiag_expires
    0x00, 0x00, 0x00, 0x00, // idiag_rqueue
    0x00, 0x00, 0x00, 0x00, // idiag_wqueue
    0xe8, 0x03, 0x00, 0x00, // idiag_uid 1000
    0x39, 0x30, 0x00, 0x00, // idiag_inode 12345
    // rtattr INET_DIAG_SHUTDOWN
    0x05, 0x00,             // rta_len 5
    0x08, 0x00,             // rta_type 8
    0x00, 0x00, 0x00, 0x00, // value 0, padded to 4
];

/// The end of a dump: NLMSG_DONE with the dump's result 0.
#[rustfmt::skip]
const DONE: [u8; 20] = [
    0x14, 0x00, 0x00, 0x00, // nlmsg_len 20
    0x03, 0x00,             // nlmsg_type NLMSG_DONE
    0x02, 0x00,             // nlmsg_flags NLM_F_MULTI
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq 7
    0x2a, 0x00, 0x00, 0x00, // nlmsg_pid 42
    0x00, 0x00, 0x00, 0x00, // the dump's return value
];

fn all(datagram: &[u8]) -> Vec<Result<Received, ParseError>> {
    messages(datagram, Protocol::Tcp).collect()
}

fn only_socket(datagram: &[u8]) -> InetSocket {
    let all = all(datagram);
    assert_eq!(all.len(), 1, "{all:?}");
    match all[0] {
        Ok(Received {
            message: Message::Socket(s),
            ..
        }) => s,
        ref other => panic!("not a socket: {other:?}"),
    }
}

#[test]
fn golden_tcp4() {
    let s = only_socket(&TCP4_DATAGRAM);
    assert_eq!(s.family, Family::V4);
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.state, TCP_ESTABLISHED);
    assert_eq!(state_name(s.state), "established");
    assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.remote, "10.1.2.3:50000".parse().unwrap());
    assert_eq!(s.inode, 12345);
    assert_eq!(s.uid, 1000);
    assert_eq!(s.cookie, (5 << 32) | 0x201);
    assert_eq!(all(&TCP4_DATAGRAM)[0].as_ref().unwrap().seq, 7);
}

#[test]
fn golden_tcp6_keeps_mapped_addresses_and_link_local_scope() {
    let mut d = TCP4_DATAGRAM;
    d[16] = 10; // AF_INET6
    d[17] = TCP_LISTEN;
    // idiag_src ::ffff:127.0.0.1, idiag_dst fe80::1 on interface 3
    d[24..40].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
    d[40..56].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    d[56..60].copy_from_slice(&3u32.to_le_bytes());
    let s = only_socket(&d);
    assert_eq!(s.family, Family::V6);
    assert_eq!(state_name(s.state), "listen");
    assert_eq!(s.local, "[::ffff:127.0.0.1]:8080".parse().unwrap());
    assert_eq!(
        s.local.ip().to_canonical(),
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(s.remote, "[fe80::1%3]:50000".parse().unwrap());
    assert_eq!(s.interface, 3);
}

#[test]
fn golden_request() {
    let r = dump_request(Family::V6, Protocol::Udp, state_bit(TCP_LISTEN), 9);
    #[rustfmt::skip]
    let want: [u8; 24] = [
        0x48, 0x00, 0x00, 0x00, // nlmsg_len 72
        0x14, 0x00,             // SOCK_DIAG_BY_FAMILY
        0x01, 0x03,             // NLM_F_REQUEST | NLM_F_DUMP
        0x09, 0x00, 0x00, 0x00, // seq 9
        0x00, 0x00, 0x00, 0x00, // pid 0: the kernel
        0x0a,                   // sdiag_family AF_INET6
        0x11,                   // sdiag_protocol IPPROTO_UDP
        0x00, 0x00,             // idiag_ext, pad
        0x00, 0x04, 0x00, 0x00, // idiag_states 1 << TCP_LISTEN
    ];
    assert_eq!(r[..24], want);
    assert!(
        r[24..].iter().all(|&b| b == 0),
        "inet_diag_sockid must be zero"
    );
    assert_eq!(state_bit(200), 0);
}

#[test]
fn a_datagram_of_sockets_then_done() {
    let mut d = TCP4_DATAGRAM.to_vec();
    d.extend_from_slice(&TCP4_DATAGRAM);
    d.extend_from_slice(&DONE);
    let got: Vec<_> = all(&d).into_iter().map(|r| r.unwrap().message).collect();
    assert_eq!(got.len(), 3);
    assert!(matches!(got[0], Message::Socket(_)));
    assert!(matches!(got[1], Message::Socket(_)));
    assert_eq!(got[2], Message::Done(0));
}

#[test]
fn errors_are_positive_errnos() {
    let mut d = DONE;
    d[4] = 2; // NLMSG_ERROR
    d[16..20].copy_from_slice(&(-22i32).to_le_bytes());
    assert_eq!(all(&d)[0].as_ref().unwrap().message, Message::Error(22));
    let mut d = DONE;
    d[16..20].copy_from_slice(&(-4i32).to_le_bytes());
    assert_eq!(all(&d)[0].as_ref().unwrap().message, Message::Done(4));
    // Old kernels send an empty NLMSG_DONE.
    let mut d = DONE[..16].to_vec();
    d[0] = 16;
    assert_eq!(all(&d)[0].as_ref().unwrap().message, Message::Done(0));
}

#[test]
fn truncated_and_garbled_messages_are_errors_not_panics() {
    // A datagram cut in the middle of its second message (a short read).
    let mut d = TCP4_DATAGRAM.to_vec();
    d.extend_from_slice(&TCP4_DATAGRAM[..50]);
    let got = all(&d);
    assert!(got[0].is_ok());
    assert!(matches!(got[1], Err(ParseError::BadLength { .. })));
    assert_eq!(got.len(), 2);
    // A socket message whose body is too short: that message fails, the next parses.
    let mut short = TCP4_DATAGRAM[..40].to_vec();
    short[0] = 40;
    short.extend_from_slice(&TCP4_DATAGRAM);
    let got = all(&short);
    assert!(matches!(got[0], Err(ParseError::Truncated { .. })));
    assert!(got[1].is_ok());
    // An unknown family.
    let mut d = TCP4_DATAGRAM;
    d[16] = 1;
    assert_eq!(all(&d)[0], Err(ParseError::UnknownFamily(1)));
    // Flagged as interrupted.
    let mut d = TCP4_DATAGRAM;
    d[6] |= 0x10;
    assert!(all(&d)[0].as_ref().unwrap().interrupted);
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for m in messages(&bytes, Protocol::Udp) {
            let _ = m;
        }
    }

    #[test]
    fn mutated_socket_never_panics(pos in 0usize..96, byte in any::<u8>(), cut in 0usize..=96) {
        let mut d = TCP4_DATAGRAM;
        d[pos] = byte;
        for m in messages(&d[..cut], Protocol::Tcp) {
            let _ = m;
        }
    }

    #[test]
    fn ports_and_addresses_round_trip(sport: u16, dport: u16, src: [u8; 16], dst: [u8; 16], v6: bool) {
        let mut d = TCP4_DATAGRAM;
        d[16] = if v6 { 10 } else { 2 };
        d[20..22].copy_from_slice(&sport.to_be_bytes());
        d[22..24].copy_from_slice(&dport.to_be_bytes());
        d[24..40].copy_from_slice(&src);
        d[40..56].copy_from_slice(&dst);
        let s = only_socket(&d);
        prop_assert_eq!(s.local.port(), sport);
        prop_assert_eq!(s.remote.port(), dport);
        if v6 {
            prop_assert_eq!(s.local.ip(), IpAddr::V6(Ipv6Addr::from(src)));
        } else {
            prop_assert_eq!(s.local.ip(), IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])));
        }
    }
}

mod live {
    use std::collections::HashMap;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsFd;

    use super::super::*;

    fn inode(fd: impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    fn dump_by_inode(
        sock: &mut DiagSocket,
        family: Family,
        protocol: Protocol,
        states: u32,
    ) -> (HashMap<u64, InetSocket>, DumpStats) {
        let mut found = HashMap::new();
        let stats = sock
            .dump(family, protocol, states, |s| {
                found.insert(s.inode, *s);
            })
            .unwrap();
        (found, stats)
    }

    #[test]
    fn dumps_our_own_listener_connection_and_udp_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sock = DiagSocket::open().unwrap();

        let (all, stats) = dump_by_inode(&mut sock, Family::V4, Protocol::Tcp, ALL_STATES);
        // Sockets without a file (TIME_WAIT, request sockets) share inode 0.
        assert!(stats.sockets as usize >= all.len());
        assert_eq!(stats.parse_errors, 0);
        let l = all[&inode(&listener)];
        assert_eq!(
            (l.state, l.local),
            (TCP_LISTEN, listener.local_addr().unwrap())
        );
        let c = all[&inode(&client)];
        assert_eq!(c.state, TCP_ESTABLISHED);
        assert_eq!(c.local, client.local_addr().unwrap());
        assert_eq!(c.remote, client.peer_addr().unwrap());
        let s = all[&inode(&server)];
        assert_eq!((s.local, s.remote), (c.remote, c.local));
        assert_eq!(s.uid, rustix::process::geteuid().as_raw());

        let (listening, _) =
            dump_by_inode(&mut sock, Family::V4, Protocol::Tcp, state_bit(TCP_LISTEN));
        assert!(listening.contains_key(&inode(&listener)));
        assert!(listening.values().all(|s| s.state == TCP_LISTEN));

        let (udps, _) = dump_by_inode(&mut sock, Family::V4, Protocol::Udp, ALL_STATES);
        let u = udps[&inode(&udp)];
        assert_eq!((u.protocol, u.state), (Protocol::Udp, TCP_CLOSE));
        assert_eq!(u.local, udp.local_addr().unwrap());
    }

    #[test]
    fn dumps_ipv6_when_the_host_has_it() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: nothing to dump");
            return;
        };
        let mut sock = DiagSocket::open().unwrap();
        let (all, _) = dump_by_inode(&mut sock, Family::V6, Protocol::Tcp, state_bit(TCP_LISTEN));
        let l = all[&inode(&listener)];
        assert_eq!(
            (l.family, l.local),
            (Family::V6, listener.local_addr().unwrap())
        );
    }

    #[test]
    fn a_dump_of_many_sockets_spans_many_datagrams() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..300 {
            held.push(TcpStream::connect(addr).unwrap());
            held.push(listener.accept().unwrap().0);
        }
        let mut sock = DiagSocket::open().unwrap();
        let port = addr.port();
        let mut ours = 0;
        let stats = sock
            .dump(Family::V4, Protocol::Tcp, state_bit(TCP_ESTABLISHED), |s| {
                if s.local.port() == port || s.remote.port() == port {
                    ours += 1;
                }
            })
            .unwrap();
        assert_eq!(ours, 600);
        assert!(stats.datagrams > 2, "{stats:?}");
        assert_eq!((stats.parse_errors, stats.truncated_datagrams), (0, 0));
    }

    #[test]
    fn a_namespace_fd_that_is_not_one_is_an_error() {
        let not_a_namespace = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            DiagSocket::open_in_netns(&not_a_namespace),
            Err(DiagError::Namespace(_))
        ));
    }

    /// Enters a namespace made by `unshare -n` (root only), listens there, and finds
    /// that listener there and only there, even after the namespace's last process
    /// has gone (the open `ns/net` fd keeps it).
    #[test]
    fn dumps_another_network_namespace() {
        hids_test_support::skip_unless!(
            hids_test_support::is_root(),
            "needs root to create and enter a network namespace"
        );
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .unwrap();
        let ns_path = format!("/proc/{}/ns/net", child.id());
        // unshare(1) enters the namespace before it execs sleep: wait for that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ns = loop {
            let ns = std::fs::File::open(&ns_path).unwrap();
            let own = rustix::fs::stat("/proc/self/ns/net").unwrap().st_ino;
            if inode(&ns) != own {
                break ns;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unshare -n never took effect"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let listener = std::thread::scope(|s| {
            s.spawn(|| {
                rustix::thread::move_into_link_name_space(ns.as_fd(), None).unwrap();
                TcpListener::bind("0.0.0.0:0").unwrap()
            })
            .join()
            .unwrap()
        });
        child.kill().unwrap();
        child.wait().unwrap();

        let mut inside = DiagSocket::open_in_netns(&ns).unwrap();
        let (there, _) = dump_by_inode(&mut inside, Family::V4, Protocol::Tcp, ALL_STATES);
        assert_eq!(there.len(), 1, "{there:?}");
        assert_eq!(
            there[&inode(&listener)].local,
            listener.local_addr().unwrap()
        );
        let mut here = DiagSocket::open().unwrap();
        let (host, _) = dump_by_inode(&mut here, Family::V4, Protocol::Tcp, ALL_STATES);
        assert!(!host.contains_key(&inode(&listener)));
    }
}
