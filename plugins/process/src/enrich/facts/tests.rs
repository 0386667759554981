use super::*;

/// `/proc/<pid>/stat` of `cat`, pid 3440: parent 3438, session 1054, on pts/1 (tty_nr
/// 34817), started 28692 ticks after boot.
const STAT: &[u8] = b"3440 (cat) R 3438 3438 1054 34817 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 28692 3133440 387 18446744073709551615 94469826875392 0\n";

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn snapshot() -> Box<Snapshot> {
    Box::new(Snapshot {
        cmdline: b"cat\0/etc/hostname\0".to_vec(),
        cmdline_truncated: true,
        exe: Some(b"/usr/bin/cat".to_vec()),
        stat: Some(STAT.to_vec()),
        status: Some(b"Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n".to_vec()),
        cwd: Some(b"/home/a".to_vec()),
        cgroup: Some(b"0::/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n".to_vec()),
        pid_ns: Some(b"pid:[4026531836]".to_vec()),
        loginuid: Some(b"1000".to_vec()),
    })
}

/// An exec long after every start time in these tests.
fn late() -> u64 {
    crate::capture::monotonic_ns()
}

#[test]
fn proc_snapshot_gives_every_fact() {
    let f = from_proc(&Clocks::now(), late(), Ok(snapshot()), false);
    assert_eq!(
        f,
        Facts {
            ppid: Some(3438),
            start_ticks: Some(28692),
            comm: Some("cat".into()),
            session: Some(1054),
            tty: Some((136, 1)),
            args: Some(vec!["cat".into(), "/etc/hostname".into()]),
            args_truncated: true,
            exe: Some("/usr/bin/cat".into()),
            cwd: Some("/home/a".into()),
            container: Some(ID.into()),
            pid_ns: Some(4026531836),
            ids: Some(Ids {
                ruid: 1000,
                euid: 0,
                rgid: 100
            }),
            login: Some(1000),
            incomplete: None,
        }
    );
}

#[test]
fn proc_snapshot_that_cannot_be_trusted_is_left_out_with_the_reason() {
    let clocks = Clocks::now();
    let superseded = from_proc(&clocks, late(), Ok(snapshot()), true);
    assert_eq!(superseded, Facts::missing("superseded"));
    let gone = from_proc(&clocks, late(), Err(Gap::Exited), false);
    assert_eq!(gone, Facts::missing("exited"));
    let backlog = from_proc(&clocks, late(), Err(Gap::Backlog), false);
    assert_eq!(backlog, Facts::missing("backlog"));
    // The process in /proc started after the exec: the pid was reused.
    let reused = from_proc(&clocks, 0, Ok(snapshot()), false);
    assert_eq!(reused, Facts::missing("reused"));
}

#[test]
fn a_zombie_has_no_arguments_but_the_rest() {
    let mut snap = snapshot();
    snap.cmdline.clear();
    let f = from_proc(&Clocks::now(), late(), Ok(snap), false);
    assert_eq!(f.incomplete, Some("exited"));
    assert_eq!(f.args, None);
    assert_eq!(f.ppid, Some(3438));
}

fn kernel() -> KernelExec {
    KernelExec {
        ppid: 3438,
        // 28692 ticks, as in STAT.
        start_boottime_ns: 28692 * (1_000_000_000 / procfs::TICKS_PER_SEC),
        uid: 1000,
        euid: 0,
        gid: 100,
        loginuid: u32::MAX,
        sid: 1054,
        tty: (0, 0),
        pid_ns: 4026531836,
        comm: b"cat".to_vec(),
        args: b"cat\0/etc/hostname\0".to_vec(),
        filename: b"/bin/cat".to_vec(),
        ..KernelExec::default()
    }
}

#[test]
fn kernel_record_alone_gives_every_fact() {
    let mut k = kernel();
    k.exe = b"/usr/bin/cat".to_vec();
    k.cwd = b"/home/a".to_vec();
    let f = from_kernel(&k);
    assert_eq!(f.args, Some(vec!["cat".into(), "/etc/hostname".into()]));
    assert_eq!((f.ppid, f.session, f.tty), (Some(3438), Some(1054), None));
    assert_eq!(f.login, None, "loginuid unset");
    assert_eq!(f.start_ticks, Some(28692));
    assert_eq!(f.exe.as_deref(), Some("/usr/bin/cat"));
    assert_eq!(f.cwd.as_deref(), Some("/home/a"));
    assert_eq!(f.container, None, "from the cgroup id, the caller's");
    assert_eq!(f.incomplete, None);
}

#[test]
fn proc_fills_what_the_kernel_left_out_for_the_same_process() {
    let mut k = kernel();
    k.cwd = b"/srv".to_vec();
    let mut f = from_kernel(&k);
    assert_eq!((f.exe.as_deref(), f.cwd.as_deref()), (None, Some("/srv")));
    assert!(supplement(&mut f, &k, &snapshot()));
    assert!(!f.args_truncated, "the kernel's flag, not the snapshot's");
    assert_eq!(f.exe.as_deref(), Some("/usr/bin/cat"));
    assert_eq!(f.cwd.as_deref(), Some("/srv"), "the kernel's is kept");
    assert_eq!(f.container.as_deref(), Some(ID));
}

#[test]
fn proc_of_another_process_is_ignored() {
    let mut k = kernel();
    k.start_boottime_ns += 1_000_000_000;
    k.args_unreadable = true;
    let mut f = from_kernel(&k);
    assert!(!supplement(&mut f, &k, &snapshot()));
    assert_eq!((f.exe, f.cwd, f.container), (None, None, None));
    assert_eq!(f.args, None);
    assert_eq!(f.incomplete, Some("args_unreadable"));
    assert_eq!(f.comm.as_deref(), Some("cat"));
}

#[test]
fn an_exec_shed_for_the_queue_budget_keeps_its_place_without_arguments() {
    let mut k = kernel();
    k.exe = b"/usr/bin/cat".to_vec();
    k.shed();
    assert!(k.args.is_empty());
    let f = from_kernel(&k);
    assert_eq!(f.args, None);
    assert_eq!(f.incomplete, Some("backlog"));
    assert_eq!(f.exe.as_deref(), Some("/usr/bin/cat"));
    assert_eq!(f.ppid, Some(3438));
}
