//! The ring buffer's records, as src/bpf/process.bpf.c writes them: `struct exec_event`
//! and `struct small_event`, native endian. Each field is a named byte range; a view
//! checks a record's length once and reads the fields by name; [`parse`] turns a record
//! into a capture event. The test `ranges_are_the_c_structs` checks every range and
//! size against the structs as the compiled program's BTF describes them (the
//! skeleton's `types`), so a C struct changed without this file fails the tests.

use std::ops::Range;

use crate::capture::{KernelExec, Raw};

type Field = Range<usize>;

/// Record kinds (`kind`), as the `EV_*` defines in process.bpf.c.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const UID: u32 = 4;
    pub const GID: u32 = 5;
    pub const SID: u32 = 6;
    /// Entries of the `drops` map: one per kind, some unused.
    pub const COUNT: u32 = 8;
}

/// Bits of `exec_event.flags`, as the `FLAG_*` defines.
mod flag {
    pub const ARGS_TRUNCATED: u32 = 1;
    pub const ARGS_UNREADABLE: u32 = 2;
    pub const FILENAME_TRUNCATED: u32 = 4;
    pub const EXE_DELETED: u32 = 8;
    pub const CWD_DELETED: u32 = 16;
    pub const EXE_UNRESOLVED: u32 = 32;
    pub const CWD_UNRESOLVED: u32 = 64;
}

/// The kernel side's own bound on the argument area it reads (`ARGS_CAP`).
pub const ARGS_CAP: usize = 24 * 1024;
/// Its bound on the path given to execve, NUL included (`FILENAME_CAP`).
const FILENAME_CAP: usize = 4096;
/// Its bound on each resolved path (`PATH_CAP`).
const PATH_CAP: usize = 4096;

/// What `/proc/<pid>/exe` and `/proc/<pid>/cwd` append to the path of an unlinked file.
const DELETED_SUFFIX: &[u8] = b" (deleted)";

/// The fields every record starts with.
mod header {
    use std::ops::Range;
    pub const TS_NS: Range<usize> = 0..8;
    pub const KIND: Range<usize> = 8..12;
    pub const PID: Range<usize> = 12..16;
    pub const LEN: usize = PID.end;
}

/// `struct small_event`: fork (`a` = parent), exit (`a` = wait status), uid (`a` = ruid,
/// `b` = euid), gid (`a` = rgid, `b` = egid), sid.
mod small {
    use std::ops::Range;
    pub const A: Range<usize> = 16..20;
    pub const B: Range<usize> = 20..24;
    pub const LEN: usize = B.end;
}

/// `struct exec_event` up to `data`: then `args_len` bytes of NUL-separated arguments,
/// `filename_len` bytes of the path given to execve (with its NUL), `exe_len` bytes of
/// the executable's resolved path and `cwd_len` bytes of the working directory.
mod exec {
    use std::ops::Range;
    pub const START_BOOTTIME_NS: Range<usize> = 16..24;
    pub const CGROUP_ID: Range<usize> = 24..32;
    pub const TID: Range<usize> = 32..36;
    pub const PPID: Range<usize> = 36..40;
    pub const UID: Range<usize> = 40..44;
    pub const EUID: Range<usize> = 44..48;
    pub const GID: Range<usize> = 48..52;
    pub const EGID: Range<usize> = 52..56;
    pub const LOGINUID: Range<usize> = 56..60;
    pub const SESSIONID: Range<usize> = 60..64;
    pub const SID: Range<usize> = 64..68;
    pub const TTY_MAJOR: Range<usize> = 68..72;
    pub const TTY_MINOR: Range<usize> = 72..76;
    pub const PID_NS: Range<usize> = 76..80;
    pub const FLAGS: Range<usize> = 80..84;
    pub const ARGS_LEN: Range<usize> = 84..88;
    pub const FILENAME_LEN: Range<usize> = 88..92;
    pub const EXE_LEN: Range<usize> = 92..96;
    pub const CWD_LEN: Range<usize> = 96..100;
    pub const COMM: Range<usize> = 100..116;
    /// Where `data` begins (`EXEC_HEADER_BYTES` in C).
    pub const DATA: usize = COMM.end;
}

/// One record as it comes: read by named field, after its length was checked.
#[derive(Clone, Copy)]
struct Buffer<'a>(&'a [u8]);

impl<'a> Buffer<'a> {
    /// A record at least `len` bytes long.
    fn new_checked(b: &'a [u8], len: usize) -> Option<Self> {
        (b.len() >= len).then_some(Buffer(b))
    }

    /// Within the length checked: every range used is inside it.
    fn u32(self, f: Field) -> u32 {
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.0[f]);
        u32::from_ne_bytes(n)
    }

    fn u64(self, f: Field) -> u64 {
        let mut n = [0u8; 8];
        n.copy_from_slice(&self.0[f]);
        u64::from_ne_bytes(n)
    }
}

/// Parses one record. `None` for a record of the wrong size or an unknown kind: the
/// program and this parser are built together, so that is a bug, counted, never a panic.
pub fn parse(b: &[u8]) -> Option<Raw> {
    let rec = Buffer::new_checked(b, header::LEN)?;
    let (ts_ns, pid) = (rec.u64(header::TS_NS), rec.u32(header::PID));
    match rec.u32(header::KIND) {
        kind::EXEC => parse_exec(b, ts_ns, pid),
        k if b.len() == small::LEN => parse_small(rec, k, ts_ns, pid),
        _ => None,
    }
}

fn parse_small(rec: Buffer<'_>, kind: u32, ts_ns: u64, pid: u32) -> Option<Raw> {
    let (a, b) = (rec.u32(small::A), rec.u32(small::B));
    Some(match kind {
        kind::FORK => Raw::Fork {
            ts_ns,
            parent: a,
            child: pid,
        },
        kind::EXIT => Raw::Exit {
            ts_ns,
            pid,
            exit_code: a,
        },
        kind::UID => Raw::Uid {
            ts_ns,
            pid,
            ruid: a,
            euid: b,
        },
        kind::GID => Raw::Gid {
            ts_ns,
            pid,
            rgid: a,
        },
        kind::SID => Raw::Sid { ts_ns, pid },
        _ => return None,
    })
}

fn parse_exec(b: &[u8], ts_ns: u64, pid: u32) -> Option<Raw> {
    let rec = Buffer::new_checked(b, exec::DATA)?;
    let flags = rec.u32(exec::FLAGS);
    let mut data = Data(&b[exec::DATA..]);
    let args = data.take(rec.u32(exec::ARGS_LEN), ARGS_CAP)?;
    let filename = data.take(rec.u32(exec::FILENAME_LEN), FILENAME_CAP)?;
    let exe = data.take(rec.u32(exec::EXE_LEN), PATH_CAP)?;
    let cwd = data.take(rec.u32(exec::CWD_LEN), PATH_CAP)?;
    let exec = KernelExec {
        start_boottime_ns: rec.u64(exec::START_BOOTTIME_NS),
        cgroup_id: rec.u64(exec::CGROUP_ID),
        tid: rec.u32(exec::TID),
        ppid: rec.u32(exec::PPID),
        uid: rec.u32(exec::UID),
        euid: rec.u32(exec::EUID),
        gid: rec.u32(exec::GID),
        egid: rec.u32(exec::EGID),
        loginuid: rec.u32(exec::LOGINUID),
        sessionid: rec.u32(exec::SESSIONID),
        sid: rec.u32(exec::SID),
        tty: (rec.u32(exec::TTY_MAJOR), rec.u32(exec::TTY_MINOR)),
        pid_ns: rec.u32(exec::PID_NS),
        comm: until_nul(&b[exec::COMM]).to_vec(),
        args: args.to_vec(),
        args_truncated: flags & flag::ARGS_TRUNCATED != 0,
        args_unreadable: flags & flag::ARGS_UNREADABLE != 0,
        // The kernel copies the path with its NUL.
        filename: until_nul(filename).to_vec(),
        filename_truncated: flags & flag::FILENAME_TRUNCATED != 0,
        exe: resolved_path(exe, flags, flag::EXE_DELETED, flag::EXE_UNRESOLVED),
        cwd: resolved_path(cwd, flags, flag::CWD_DELETED, flag::CWD_UNRESOLVED),
        shed: false,
    };
    Some(Raw::KernelExec {
        ts_ns,
        pid,
        exec: Box::new(exec),
    })
}

/// The variable-length part of an exec record, taken field by field.
struct Data<'a>(&'a [u8]);

impl<'a> Data<'a> {
    /// The next `len` bytes; `None` past the record or past the kernel's own bound.
    fn take(&mut self, len: u32, cap: usize) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok().filter(|&n| n <= cap)?;
        if self.0.len() < len {
            return None;
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(field)
    }
}

/// A path the kernel resolved, as `/proc` shows it: with " (deleted)" when the file was
/// unlinked, empty when the kernel could not resolve it (the caller falls back).
fn resolved_path(path: &[u8], flags: u32, deleted: u32, unresolved: u32) -> Vec<u8> {
    if flags & unresolved != 0 || path.is_empty() {
        return Vec::new();
    }
    let suffix = if flags & deleted != 0 {
        DELETED_SUFFIX
    } else {
        b""
    };
    let mut out = Vec::with_capacity(path.len() + suffix.len());
    out.extend_from_slice(path);
    out.extend_from_slice(suffix);
    out
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

#[cfg(test)]
mod tests;
