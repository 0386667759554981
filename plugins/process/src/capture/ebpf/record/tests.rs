use std::mem::{offset_of, size_of, size_of_val};

use super::*;
use crate::capture::ebpf::skel::types::{exec_event, small_event};

/// A field's named range is where the compiled program's BTF lays out the C field.
macro_rules! same_range {
    ($value:expr, $ty:ty, $field:ident, $range:expr) => {
        assert_eq!(
            offset_of!($ty, $field)..offset_of!($ty, $field) + size_of_val(&$value.$field),
            $range,
            concat!("struct ", stringify!($ty), ".", stringify!($field))
        )
    };
}

#[test]
fn ranges_are_the_c_structs() {
    let e = exec_event::default();
    same_range!(e, exec_event, ts_ns, header::TS_NS);
    same_range!(e, exec_event, kind, header::KIND);
    same_range!(e, exec_event, pid, header::PID);
    same_range!(e, exec_event, start_boottime_ns, exec::START_BOOTTIME_NS);
    same_range!(e, exec_event, cgroup_id, exec::CGROUP_ID);
    same_range!(e, exec_event, tid, exec::TID);
    same_range!(e, exec_event, ppid, exec::PPID);
    same_range!(e, exec_event, uid, exec::UID);
    same_range!(e, exec_event, euid, exec::EUID);
    same_range!(e, exec_event, gid, exec::GID);
    same_range!(e, exec_event, egid, exec::EGID);
    same_range!(e, exec_event, loginuid, exec::LOGINUID);
    same_range!(e, exec_event, sessionid, exec::SESSIONID);
    same_range!(e, exec_event, sid, exec::SID);
    same_range!(e, exec_event, tty_major, exec::TTY_MAJOR);
    same_range!(e, exec_event, tty_minor, exec::TTY_MINOR);
    same_range!(e, exec_event, pid_ns, exec::PID_NS);
    same_range!(e, exec_event, flags, exec::FLAGS);
    same_range!(e, exec_event, args_len, exec::ARGS_LEN);
    same_range!(e, exec_event, filename_len, exec::FILENAME_LEN);
    same_range!(e, exec_event, exe_len, exec::EXE_LEN);
    same_range!(e, exec_event, cwd_len, exec::CWD_LEN);
    same_range!(e, exec_event, comm, exec::COMM);
    assert_eq!(offset_of!(exec_event, data), exec::DATA);
    // The data area holds every field at its cap: arguments, the path given to execve,
    // the executable's and the working directory's resolved paths.
    assert_eq!(size_of_val(&e.data), ARGS_CAP + FILENAME_CAP + 2 * PATH_CAP);

    let s = small_event::default();
    same_range!(s, small_event, ts_ns, header::TS_NS);
    same_range!(s, small_event, kind, header::KIND);
    same_range!(s, small_event, pid, header::PID);
    same_range!(s, small_event, a, small::A);
    same_range!(s, small_event, b, small::B);
    assert_eq!(size_of::<small_event>(), small::LEN);
}

/// An exec record as the kernel writes it, field by field.
fn exec_record(args: &[u8], filename: &[u8], flags: u32) -> Vec<u8> {
    exec_record_with_paths(args, filename, b"/usr/bin/true", b"/home/u", flags)
}

fn exec_record_with_paths(
    args: &[u8],
    filename: &[u8],
    exe: &[u8],
    cwd: &[u8],
    flags: u32,
) -> Vec<u8> {
    let mut b = Vec::new();
    let u32s = |b: &mut Vec<u8>, vs: &[u32]| {
        for v in vs {
            b.extend_from_slice(&v.to_ne_bytes());
        }
    };
    b.extend_from_slice(&123u64.to_ne_bytes()); // ts_ns
    u32s(&mut b, &[kind::EXEC, 4242]); // kind, pid
    b.extend_from_slice(&(7 * 10_000_000u64).to_ne_bytes()); // start_boottime_ns: 7 ticks
    b.extend_from_slice(&99u64.to_ne_bytes()); // cgroup_id
    u32s(&mut b, &[4243, 1]); // tid, ppid
    u32s(&mut b, &[1000, 0, 100, 100]); // uid, euid, gid, egid
    u32s(&mut b, &[1000, 5, 4000]); // loginuid, sessionid, sid
    u32s(&mut b, &[136, 3]); // tty_major, tty_minor: pts/3
    u32s(&mut b, &[4026531836, flags]); // pid_ns, flags
    u32s(&mut b, &[args.len() as u32, filename.len() as u32]); // args_len, filename_len
    u32s(&mut b, &[exe.len() as u32, cwd.len() as u32]); // exe_len, cwd_len
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"true");
    b.extend_from_slice(&comm); // comm, NUL-padded
    assert_eq!(b.len(), exec::DATA);
    b.extend_from_slice(args);
    b.extend_from_slice(filename);
    b.extend_from_slice(exe); // no NUL: the kernel copies the resolved paths without
    b.extend_from_slice(cwd);
    b
}

#[test]
fn exec_record_fields() {
    let b = exec_record(
        b"/bin/true\0storm-a-1\0",
        b"/bin/true\0",
        flag::ARGS_TRUNCATED,
    );
    let Some(Raw::KernelExec { ts_ns, pid, exec }) = parse(&b) else {
        panic!("not an exec: {:?}", parse(&b));
    };
    assert_eq!((ts_ns, pid), (123, 4242));
    assert_eq!(exec.tid, 4243);
    assert_eq!(exec.ppid, 1);
    assert_eq!(
        (exec.uid, exec.euid, exec.gid, exec.egid),
        (1000, 0, 100, 100)
    );
    assert_eq!((exec.loginuid, exec.sessionid, exec.sid), (1000, 5, 4000));
    assert_eq!(exec.tty, (136, 3));
    assert_eq!(exec.pid_ns, 4026531836);
    assert_eq!(exec.comm, b"true");
    assert_eq!(exec.args, b"/bin/true\0storm-a-1\0");
    assert_eq!(exec.filename, b"/bin/true");
    assert_eq!(exec.exe, b"/usr/bin/true");
    assert_eq!(exec.cwd, b"/home/u");
    assert!(exec.args_truncated && !exec.args_unreadable && !exec.filename_truncated);
    assert_eq!(exec.start_ticks(), 7);
    assert_eq!(exec.cgroup_id, 99);
}

#[test]
fn small_records() {
    let rec = |kind: u32, a: u32, b: u32| {
        let mut v = 5u64.to_ne_bytes().to_vec(); // ts_ns
        for x in [kind, 10, a, b] {
            // kind, pid, a, b
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v
    };
    let cases = [
        (
            rec(kind::FORK, 9, 0),
            Raw::Fork {
                ts_ns: 5,
                parent: 9,
                child: 10,
            },
        ),
        (
            rec(kind::EXIT, 256, 0),
            Raw::Exit {
                ts_ns: 5,
                pid: 10,
                exit_code: 256,
            },
        ),
        (
            rec(kind::UID, 1, 0),
            Raw::Uid {
                ts_ns: 5,
                pid: 10,
                ruid: 1,
                euid: 0,
            },
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(parse(&bytes), Some(want));
    }
    assert_eq!(parse(&rec(77, 0, 0)), None);
}

#[test]
fn malformed_records_are_refused() {
    let b = exec_record(b"a\0", b"/x\0", 0);
    for cut in 0..b.len() {
        assert_eq!(parse(&b[..cut]), None, "cut at {cut}");
    }
    // Lengths pointing past the record, or past the kernel's own caps.
    for (field, len) in [
        (exec::ARGS_LEN, 1000),
        (exec::FILENAME_LEN, 1000),
        (exec::EXE_LEN, 1000),
        (exec::CWD_LEN, 1000),
        (exec::ARGS_LEN, u32::MAX),
        (exec::CWD_LEN, u32::MAX),
    ] {
        let mut b = exec_record(b"a\0", b"/x\0", 0);
        b[field.clone()].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&b), None, "{field:?} = {len}");
    }
    let mut b = exec_record(b"a\0", b"/x\0", 0);
    b.resize(exec::DATA + PATH_CAP + 100, 0);
    b[exec::EXE_LEN].copy_from_slice(&(PATH_CAP as u32 + 1).to_ne_bytes());
    assert_eq!(parse(&b), None, "a path longer than the kernel's cap");
}

#[test]
fn unlinked_files_are_named_as_proc_names_them() {
    // A memfd exec from a directory removed since: the kernel flags both, user space
    // appends what readlink(/proc/<pid>/exe) and (cwd) show.
    let b = exec_record_with_paths(
        b"x\0",
        b"/proc/self/fd/3\0",
        b"/memfd:payload",
        b"/tmp/gone",
        flag::EXE_DELETED | flag::CWD_DELETED,
    );
    let Some(Raw::KernelExec { exec, .. }) = parse(&b) else {
        panic!("not an exec: {:?}", parse(&b));
    };
    assert_eq!(exec.exe, b"/memfd:payload (deleted)");
    assert_eq!(exec.cwd, b"/tmp/gone (deleted)");
    assert_eq!(exec.filename, b"/proc/self/fd/3");
}

#[test]
fn unresolved_paths_are_empty() {
    // The walk gave up (too deep, too long): nothing is guessed, user space falls back.
    let b = exec_record_with_paths(
        b"x\0",
        b"/x\0",
        b"",
        b"",
        flag::EXE_UNRESOLVED | flag::CWD_UNRESOLVED | flag::CWD_DELETED,
    );
    let Some(Raw::KernelExec { exec, .. }) = parse(&b) else {
        panic!("not an exec: {:?}", parse(&b));
    };
    assert!(exec.exe.is_empty() && exec.cwd.is_empty(), "{exec:?}");
    // The root directory is a path like any other.
    let b = exec_record_with_paths(b"x\0", b"/x\0", b"/x", b"/", 0);
    let Some(Raw::KernelExec { exec, .. }) = parse(&b) else {
        panic!("not an exec: {:?}", parse(&b));
    };
    assert_eq!(
        (exec.exe.as_slice(), exec.cwd.as_slice()),
        (&b"/x"[..], &b"/"[..])
    );
}
