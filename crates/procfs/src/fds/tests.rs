#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use super::*;
use proptest::prelude::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;

#[test]
fn socket_links() {
    assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
    assert_eq!(parse_socket_link(b"socket:[0]"), Some(0));
    assert_eq!(
        parse_socket_link(b"socket:[18446744073709551615]"),
        Some(u64::MAX)
    );
    for not in [
        &b"socket:[18446744073709551616]"[..], // overflows
        b"socket:[]",
        b"socket:[12a]",
        b"socket:[+1]",
        b"socket:[1",
        b"socket:[1] ",
        b"pipe:[12345]",
        b"anon_inode:[eventpoll]",
        b"/tmp/socket:[1]",
        b"",
    ] {
        assert_eq!(
            parse_socket_link(not),
            None,
            "{}",
            String::from_utf8_lossy(not)
        );
    }
}

#[test]
fn namespace_links() {
    assert_eq!(parse_ns_link(b"net:[4026531840]", "net"), Some(4026531840));
    assert_eq!(parse_ns_link(b"pid:[4026531836]", "net"), None);
    assert_eq!(parse_ns_link(b"net:4026531840", "net"), None);
    assert_eq!(parse_ns_link(b"network:[1]", "net"), None);
}

proptest! {
    #[test]
    fn arbitrary_links_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_socket_link(&bytes);
        let _ = parse_ns_link(&bytes, "net");
    }

    #[test]
    fn socket_links_round_trip(inode: u64) {
        prop_assert_eq!(parse_socket_link(format!("socket:[{inode}]").as_bytes()), Some(inode));
    }
}

/// A proc root made of plain directories and symlinks: readlinkat reads them the same.
fn fake_root(processes: &[(u32, &[(u32, &str)])]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (pid, fds) in processes {
        let dir = root.path().join(pid.to_string()).join("fd");
        std::fs::create_dir_all(&dir).unwrap();
        for (fd, target) in *fds {
            symlink(target, dir.join(fd.to_string())).unwrap();
        }
    }
    root
}

fn owners_of(map: &SocketOwners, inode: u64) -> Vec<FdOwner> {
    let mut all: Vec<_> = map[&inode].iter().collect();
    all.sort_unstable_by_key(|o| (o.pid, o.fd));
    all
}

#[test]
fn maps_inodes_to_every_holder() {
    let root = fake_root(&[
        (
            10,
            &[
                (0, "/dev/null"),
                (3, "socket:[100]"),
                (4, "socket:[101]"),
                (5, "pipe:[7]"),
            ],
        ),
        (20, &[(3, "socket:[100]"), (9, "socket:[100]")]),
    ]);
    std::fs::write(root.path().join("20/fd/not-a-number"), b"").unwrap();
    std::fs::create_dir(root.path().join("self")).unwrap();
    let (map, stats) =
        socket_owners(root.path().to_str().unwrap(), &WalkOptions::default(), None).unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!(
        owners_of(&map, 100),
        [
            FdOwner { pid: 10, fd: 3 },
            FdOwner { pid: 20, fd: 3 },
            FdOwner { pid: 20, fd: 9 }
        ]
    );
    assert_eq!(map[&100].first(), FdOwner { pid: 10, fd: 3 });
    assert_eq!(map[&101].len(), 1);
    assert_eq!(stats.processes_walked, 2);
    assert_eq!(stats.fds_read, 6);
    assert_eq!(stats.socket_fds, 4);
    assert_eq!(stats.unreadable_entries, 0);
}

#[test]
fn filters_and_bounds_are_counted() {
    let fds: Vec<(u32, String)> = (0..50)
        .map(|fd| (fd, format!("socket:[{}]", 1000 + fd)))
        .collect();
    let fds: Vec<(u32, &str)> = fds.iter().map(|(fd, t)| (*fd, t.as_str())).collect();
    let root = fake_root(&[(1, &fds), (2, &[(7, "socket:[5]")])]);
    // A pid listed but gone by the time its fd directory is opened.
    std::fs::create_dir(root.path().join("3")).unwrap();
    let root = root.path().to_str().unwrap().to_owned();

    let only: HashSet<u64> = [1003, 5].into();
    let (map, stats) = socket_owners(&root, &WalkOptions::default(), Some(&only)).unwrap();
    assert_eq!(map.keys().copied().collect::<HashSet<_>>(), only);
    assert_eq!((stats.fds_read, stats.socket_fds), (51, 51));
    assert_eq!(stats.processes_vanished, 1);

    let capped = WalkOptions {
        max_fds_per_process: 10,
        ..WalkOptions::default()
    };
    let (map, stats) = socket_owners(&root, &capped, None).unwrap();
    assert_eq!(map.len(), 11);
    assert_eq!((stats.processes_capped, stats.fds_read), (1, 11));
    assert!(stats.fds_skipped >= 1);

    let few_inodes = WalkOptions {
        max_fds_per_process: 1000,
        max_inodes: 20,
        ..WalkOptions::default()
    };
    let (map, stats) = socket_owners(&root, &few_inodes, None).unwrap();
    assert_eq!(map.len(), 20);
    assert_eq!(stats.inodes_dropped, 31);
}

#[test]
fn threads_find_what_one_thread_finds() {
    let processes: Vec<(u32, Vec<(u32, String)>)> = (1..=30)
        .map(|pid| {
            let fds = (0..20)
                .map(|fd| (fd, format!("socket:[{}]", (pid * 7 + fd) % 100)))
                .collect();
            (pid, fds)
        })
        .collect();
    let borrowed: Vec<Vec<(u32, &str)>> = processes
        .iter()
        .map(|(_, fds)| fds.iter().map(|(fd, t)| (*fd, t.as_str())).collect())
        .collect();
    let spec: Vec<(u32, &[(u32, &str)])> = processes
        .iter()
        .zip(&borrowed)
        .map(|((pid, _), fds)| (*pid, fds.as_slice()))
        .collect();
    let root = fake_root(&spec);
    let root = root.path().to_str().unwrap().to_owned();
    let (one, one_stats) = socket_owners(&root, &WalkOptions::default(), None).unwrap();
    let three = WalkOptions {
        threads: 3,
        ..WalkOptions::default()
    };
    let (many, many_stats) = socket_owners(&root, &three, None).unwrap();
    assert_eq!(one, many);
    assert_eq!(one_stats, many_stats);
    assert_eq!(one.len(), 100);
    assert_eq!(one_stats.fds_read, 600);
}

#[test]
fn finds_our_own_sockets_in_the_real_proc() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
    let only: HashSet<u64> = [inode].into();
    let (map, stats) = socket_owners("/proc", &WalkOptions::default(), Some(&only)).unwrap();
    assert_eq!(
        owners_of(&map, inode),
        [FdOwner {
            pid: std::process::id(),
            fd: listener.as_raw_fd() as u32
        }]
    );
    assert!(
        stats.processes_walked > 1 && stats.fds_read > 3,
        "{stats:?}"
    );

    let me = FdOwner {
        pid: std::process::id(),
        fd: listener.as_raw_fd() as u32,
    };
    let (mine, stats) =
        socket_owners_of("/proc", &[me.pid, u32::MAX], &WalkOptions::default(), None);
    assert_eq!(mine[&inode].first(), me);
    assert_eq!((stats.processes_walked, stats.processes_vanished), (1, 1));
    assert!(holds_socket("/proc", me, inode));
    assert!(!holds_socket("/proc", me, inode + 1));
    drop(listener);
    assert!(!holds_socket("/proc", me, inode));
}

#[test]
fn a_huge_fd_table_is_cut_and_the_rest_counted_exactly() {
    let sockets: Vec<_> = (0..40)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let limits = WalkOptions {
        max_fds_per_process: 5,
        ..WalkOptions::default()
    };
    let (_, stats) = socket_owners("/proc", &limits, Some(&HashSet::new())).unwrap();
    // Our process alone has more than 40 fds past the cap; 6.2+ counts them exactly.
    assert!(stats.processes_capped >= 1);
    assert!(stats.fds_skipped >= 35, "{stats:?}");
    drop(sockets);
}

#[test]
fn one_representative_per_network_namespace() {
    let root = tempfile::tempdir().unwrap();
    for (pid, ns) in [
        (7, "net:[4026532000]"),
        (1, "net:[4026531840]"),
        (5, "net:[4026531840]"),
        (9, "garbage"),
    ] {
        let dir = root.path().join(format!("{pid}/ns"));
        std::fs::create_dir_all(&dir).unwrap();
        symlink(ns, dir.join("net")).unwrap();
    }
    std::fs::create_dir(root.path().join("11")).unwrap(); // gone mid-scan
    let got = net_namespaces(root.path().to_str().unwrap()).unwrap();
    assert_eq!(got, [(4026531840, 1), (4026532000, 7)]);

    let own = rustix::fs::stat("/proc/self/ns/net").unwrap().st_ino;
    let live = net_namespaces("/proc").unwrap();
    assert!(live.iter().any(|&(inode, _)| inode == own), "{live:?}");
}
