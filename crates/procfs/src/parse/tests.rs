use super::*;
use proptest::prelude::*;

const STAT: &[u8] = b"3440 (cat) R 3438 3438 1054 34817 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 28692 3133440 387 18446744073709551615 94469826875392 0\n";

#[test]
fn stat_fields() {
    let s = parse_stat(STAT).unwrap();
    assert_eq!(s.pid, 3440);
    assert_eq!(s.comm, "cat");
    assert_eq!(s.state, b'R');
    assert_eq!(s.ppid, 3438);
    assert_eq!(s.pgrp, 3438);
    assert_eq!(s.session, 1054);
    assert_eq!(s.tty_nr, 34817);
    assert_eq!(s.flags, 4_194_304);
    assert!(!s.is_kernel_thread());
    assert_eq!(s.utime_ticks, 7);
    assert_eq!(s.stime_ticks, 3);
    assert_eq!(s.num_threads, 1);
    assert_eq!(s.start_ticks, 28692);
    assert_eq!(s.rss_pages, 387);
}

#[test]
fn a_kernel_thread_is_told_by_its_flags() {
    // kthreadd's stat on Linux 6.x: flags 0x208040 (PF_KTHREAD | PF_NOFREEZE | ...).
    let kthreadd = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 1 0 0 20 0 1 0 2 0 0\n";
    assert!(parse_stat(kthreadd).unwrap().is_kernel_thread());
    let me = parse_stat(&std::fs::read("/proc/self/stat").unwrap()).unwrap();
    assert!(!me.is_kernel_thread());
}

#[test]
fn stat_name_with_parens_and_spaces() {
    let line = b"7 (a) b (c) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 5\n";
    let s = parse_stat(line).unwrap();
    assert_eq!(s.comm, "a) b (c");
    assert_eq!(s.ppid, 1);
    assert_eq!(s.start_ticks, 99);
}

#[test]
fn stat_non_utf8_name() {
    let mut line = b"7 (\xff\xfe) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 5".to_vec();
    line.push(b'\n');
    assert_eq!(parse_stat(&line).unwrap().comm, "\u{fffd}\u{fffd}");
}

#[test]
fn stat_truncated_is_an_error() {
    assert!(parse_stat(b"7 (x) S 1 7").is_err());
    assert!(parse_stat(b"").is_err());
    assert!(parse_stat(b"7 x) S (").is_err());
}

#[test]
fn status_ids_and_nspid() {
    let s = parse_status(
        b"Name:\tbash\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\nNSpid:\t4242\t7\n",
    )
    .unwrap();
    assert_eq!(s.uid, [1000, 0, 0, 0]);
    assert_eq!(s.gid, [100; 4]);
    assert_eq!(s.ns_pids, vec![4242, 7]);
    assert!(parse_status(b"Name:\tx\n").is_err());
}

#[test]
fn cmdline_split_and_lossy() {
    assert_eq!(
        parse_cmdline(b"/bin/true\0storm-a-1\0"),
        vec!["/bin/true", "storm-a-1"]
    );
    assert_eq!(parse_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
    assert_eq!(
        parse_cmdline(b"nginx: worker process"),
        vec!["nginx: worker process"]
    );
    assert_eq!(parse_cmdline(b"\xff\0"), vec!["\u{fffd}"]);
    assert!(parse_cmdline(b"").is_empty());
}

#[test]
fn command_line_quotes_what_needs_it() {
    let args: Vec<String> = ["sh", "-c", "echo 'hi' there", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(command_line(&args), r#"sh -c 'echo '\''hi'\'' there' ''"#);
    let plain: Vec<String> = ["/bin/true", "storm-x-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(command_line(&plain), "/bin/true storm-x-1");
}

#[test]
fn container_ids() {
    let id = "5ff5302be688f4724435bbe964c640605ff5302be688f4724435bbe964c64060";
    for cg in [
        format!("0::/system.slice/docker-{id}.scope\n"),
        format!("4:memory:/docker/{id}\n"),
        format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n"),
        format!("0::/machine.slice/libpod-{id}.scope/container\n"),
        format!("1:cpu:/kubepods/besteffort/pod12/{id}\n"),
    ] {
        assert_eq!(
            container_id_from_cgroup(cg.as_bytes()).as_deref(),
            Some(id),
            "{cg}"
        );
    }
    assert_eq!(
        container_id_from_cgroup_path(format!("/system.slice/docker-{id}.scope").as_bytes())
            .as_deref(),
        Some(id)
    );
    assert_eq!(container_id_from_cgroup_path(b"/"), None);
    assert_eq!(container_id_from_cgroup_path(b""), None);
    let host = b"9:name=systemd:/\n4:memory:/process_api/5ff5302be688f4724435bbe964c64060\n0::/user.slice\n";
    assert_eq!(container_id_from_cgroup(host), None);
}

#[test]
fn cgroup_mounts_of_hybrid_v2_and_v1_hosts() {
    // A hybrid host (this one's): v1 controllers, the unified hierarchy beside them.
    let hybrid = b"25 31 0:23 / /sys rw - sysfs sysfs rw\n\
30 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd\n\
36 30 0:32 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory\n";
    assert_eq!(
        parse_cgroup_mounts(hybrid),
        CgroupMounts {
            v2: Some("/sys/fs/cgroup/unified".into()),
            v1: Some("/sys/fs/cgroup/memory".into()),
        }
    );
    let v2 = b"29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
    assert_eq!(
        parse_cgroup_mounts(v2),
        CgroupMounts {
            v2: Some("/sys/fs/cgroup".into()),
            v1: None,
        }
    );
    // A v1-only host without a memory hierarchy; a mount point with a space.
    let v1 = b"32 30 0:28 / /cg\\040root/pids rw - cgroup cgroup rw,pids\n";
    assert_eq!(
        parse_cgroup_mounts(v1),
        CgroupMounts {
            v2: None,
            v1: Some("/cg root/pids".into()),
        }
    );
    assert_eq!(parse_cgroup_mounts(b"junk\n- -\n"), CgroupMounts::default());
}

#[test]
fn ns_tty_loginuid() {
    assert_eq!(parse_ns_link(b"pid:[4026531836]"), Some(4026531836));
    assert_eq!(parse_ns_link(b"garbage"), None);
    assert_eq!(tty_device(34817), Some((136, 1)));
    assert_eq!(tty_name(136, 1).as_deref(), Some("pts/1"));
    assert_eq!(tty_name(4, 1).as_deref(), Some("tty1"));
    assert_eq!(tty_name(4, 64).as_deref(), Some("ttyS0"));
    assert_eq!(tty_device(0), None);
    assert_eq!(parse_loginuid(b"4294967295"), None);
    assert_eq!(parse_loginuid(b"1000\n"), Some(1000));
}

#[test]
fn id_files() {
    let passwd = b"root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    let entries: Vec<_> = parse_id_file(passwd).collect();
    assert_eq!(
        entries,
        vec![("root".to_string(), 0), ("alice".to_string(), 1000)]
    );
}

#[test]
fn local_addresses() {
    let trie = b"Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     |-- 10.0.2.15\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.0.2.15\n        /32 host LOCAL\n";
    let v4 = parse_fib_trie_local(trie);
    assert_eq!(
        v4,
        vec![
            "10.0.2.15".parse::<std::net::Ipv4Addr>().unwrap(),
            "127.0.0.1".parse().unwrap()
        ]
    );
    let inet6 = b"00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\n20010db8000000000000000000000001 02 40 00 80     eth0\n";
    assert_eq!(
        parse_if_inet6_global(inet6),
        vec!["2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_stat(&bytes);
        let _ = parse_status(&bytes);
        let _ = parse_cmdline(&bytes);
        let _ = container_id_from_cgroup(&bytes);
        let _ = container_id_from_cgroup_path(&bytes);
        let _ = parse_cgroup_mounts(&bytes);
        let _ = parse_ns_link(&bytes);
        let _ = parse_loginuid(&bytes);
        let _ = parse_id_file(&bytes).count();
        let _ = parse_fib_trie_local(&bytes);
        let _ = parse_if_inet6_global(&bytes);
    }

    #[test]
    fn stat_with_any_name(name in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut line = b"12 (".to_vec();
        line.extend_from_slice(&name);
        line.extend_from_slice(b") S 1 12 12 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 5\n");
        let s = parse_stat(&line).unwrap();
        prop_assert_eq!(s.ppid, 1);
        prop_assert_eq!(s.start_ticks, 99);
    }
}
