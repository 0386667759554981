//! The eBPF capture backend: process events recorded inside the kernel
//! (src/bpf/process.bpf.c) and read from one ring buffer ([`record`] parses them).
//!
//! The kernel side records everything an exec event needs while the exec'ing task still
//! holds it: the argument list, the path given to execve, the executable's resolved path
//! and the working directory (walked in the kernel, as `/proc/<pid>/exe` and `cwd` would
//! show them), ids, session, tty, namespace, cgroup id, start time. Nothing is read from
//! `/proc` here, so a process that exits at once is reported as whole as any other.
//!
//! Wake-ups: the kernel wakes this thread at most once per linger (or when unread data
//! piles up), and the thread reads the ring on a timer while records come, so a storm is
//! read in batches, not record by record.

mod record;
mod skel;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, TracepointCategory};

use super::queue::Queue;
use super::{Batch, CaptureConfig, Counters, Raw, RingDrops};
use record::{kind, ARGS_CAP};
use skel::{ProcessSkel, ProcessSkelBuilder};

pub struct EbpfOptions {
    pub ring_buffer_bytes: usize,
    pub max_args_bytes: usize,
}

/// Why eBPF could not be used, in words for the log and the status.
#[derive(Debug)]
pub struct Refused(pub String);

fn refused(what: &str, e: libbpf_rs::Error) -> Refused {
    Refused(format!("{what}: {e}"))
}

/// Where credential and session changes (setuid, setgid, setsid and their variants)
/// come from, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdsHook {
    /// fentry on commit_creds and ksys_setsid: every change, whatever caused it.
    Fentry,
    /// The set*id and setsid system calls' exit tracepoints (the kernel refuses fentry).
    SyscallTracepoints { why_not_fentry: String },
    /// Not hooked by eBPF: the caller reports them another way (the proc connector).
    Missing { why: String },
    /// Not asked for.
    NotWanted,
}

impl IdsHook {
    /// How it is done, for the log and the status.
    pub fn describe(&self) -> String {
        match self {
            IdsHook::Fentry => "eBPF fentry on commit_creds and ksys_setsid".into(),
            IdsHook::SyscallTracepoints { why_not_fentry } => format!(
                "eBPF on the set*id and setsid syscall tracepoints (fentry: {why_not_fentry})"
            ),
            IdsHook::Missing { why } => format!("not from eBPF ({why})"),
            IdsHook::NotWanted => "not reported (--emit)".into(),
        }
    }
}

/// The system calls whose tracepoints carry credential changes, when fentry cannot.
const SETID_SYSCALLS: [&str; 6] = [
    "setuid",
    "setreuid",
    "setresuid",
    "setgid",
    "setregid",
    "setresgid",
];

/// How long the thread sleeps with nothing to read: any record after a quiet linger
/// wakes it, so this only bounds shutdown and the rare record whose wake-up was skipped
/// while the thread went to sleep (see `Reader`).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Loads and attaches the programs, then runs the capture loop until `shutdown` or the
/// consumer hangs up. `ready` is called once the programs are attached (events flow from
/// then on) with where credential changes come from (`want_ids`: they are wanted at
/// all); a `Refused` error before that means the caller may fall back to the proc
/// connector.
pub fn run(
    opts: &EbpfOptions,
    cfg: &CaptureConfig,
    want_ids: bool,
    tx: SyncSender<Batch>,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    ready: impl FnOnce(IdsHook),
) -> Result<anyhow::Result<()>, Refused> {
    // libbpf explains a refused program at length (the verifier log); the outcome is
    // reported once, by the caller.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |level, msg| {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!("libbpf: {msg}"),
            _ => tracing::trace!("libbpf: {msg}"),
        }
    })));
    let mut objects = [const { MaybeUninit::<OpenObject>::uninit() }; 3];
    let (mut skel, loaded, refusal) = load(&mut objects, opts, cfg, want_ids)?;
    let (links, ids) = attach(&mut skel, loaded, refusal)?;
    learn_reader_root(&skel);

    let burst: RefCell<Vec<Raw>> = RefCell::new(Vec::new());
    let parse_errors = &counters.parse_errors;
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(&skel.maps.events, |data: &[u8]| {
            match record::parse(data) {
                Some(r) => burst.borrow_mut().push(r),
                None => {
                    parse_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            0
        })
        .map_err(|e| refused("cannot read the ring buffer", e))?;
    let rb = builder
        .build()
        .map_err(|e| refused("cannot read the ring buffer", e))?;
    ready(ids);

    let mut queue = Queue::new(cfg, counters.clone());
    let mut reader = Reader::new(cfg.linger);
    let mut next_drop_read = Instant::now();
    let mut poll_errors = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        let wait = reader.wait(&queue);
        let began = Instant::now();
        // poll reads only after a wake-up; records the kernel wrote without one are
        // read by the consume, on the timeout.
        if let Err(e) = rb.poll(wait).and_then(|()| rb.consume()) {
            // EINTR is routine; anything that repeats is not.
            poll_errors += 1;
            if poll_errors >= 100 {
                return Ok(Err(anyhow::anyhow!("eBPF ring buffer keeps failing: {e}")));
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        poll_errors = 0;
        let read = take_records(&burst, &mut queue, cfg, &counters);
        reader.read(read, began.elapsed());
        if queue.due(cfg.linger) && !queue.hand_over(&tx) {
            return Ok(Ok(()));
        }
        if Instant::now() >= next_drop_read {
            next_drop_read = Instant::now() + Duration::from_secs(1);
            read_drops(&skel.maps.drops, &counters.ring_drops);
        }
    }
    // What the kernel wrote since the last read, and what waits for the linger, is
    // still reported: a stop or restart loses nothing already recorded.
    drop(links);
    let _ = rb.consume();
    take_records(&burst, &mut queue, cfg, &counters);
    queue.hand_over_before_exit(&tx);
    read_drops(&skel.maps.drops, &counters.ring_drops);
    Ok(Ok(()))
}

/// Has the kernel record this process's root directory (on_fork sees a thread of ours
/// start), so paths are named from it as `/proc` names them to us: an agent run
/// chrooted sees its chroot's files by their paths inside it. Without it they are named
/// from the root of their mount namespace, which differs only under a chroot.
fn learn_reader_root(skel: &ProcessSkel<'_>) {
    let started = std::thread::Builder::new()
        .name("hids-root".into())
        .spawn(|| ())
        .map(|thread| thread.join());
    let at = std::mem::offset_of!(skel::types::bss, reader_root_dentry);
    let recorded = skel
        .maps
        .bss
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|bss| bss.get(at..at + 8).map(|b| b.iter().any(|&x| x != 0)))
        .unwrap_or(false);
    if !recorded {
        tracing::warn!(
            thread_started = started.is_ok(),
            "the kernel did not record this process's root directory: executables and \
             working directories are named from the root of their mount namespace, \
             which differs from /proc only if the agent runs chrooted"
        );
    }
}

/// Moves the records read into the queue; returns how many. An exec that finds the
/// queue's byte budget spent (`--queue-bytes`: the consumer is far behind) is queued
/// without its argument list, reported `hids.incomplete: backlog` as the proc
/// connector's are, so a storm of long command lines cannot grow the plugin's memory
/// past the budget by more than the records' fixed parts and paths.
fn take_records(
    burst: &RefCell<Vec<Raw>>,
    queue: &mut Queue,
    cfg: &CaptureConfig,
    counters: &Counters,
) -> usize {
    let records = std::mem::take(&mut *burst.borrow_mut());
    let read = records.len();
    counters
        .ring_records
        .fetch_add(read as u64, Ordering::Relaxed);
    for mut raw in records {
        if let Raw::KernelExec { exec, .. } = &mut raw {
            counters.execs_seen.fetch_add(1, Ordering::Relaxed);
            if counters.queue_bytes.load(Ordering::Relaxed) >= cfg.queue_bytes {
                exec.shed();
            }
        }
        queue.push(raw);
    }
    read
}

/// When to read the ring. The kernel wakes this thread for a record only when it last
/// did so a linger ago or more (or the ring fills up, `wakeup_flag` in the program), so
/// while records come the thread must read on its own every linger; it may sleep until
/// woken only after a whole linger passed with nothing to read: then the next record is
/// at least a linger after the last wake-up, and wakes it.
///
/// A record whose program read the clock just before that last empty read and finished
/// writing just after it (a window of about a microsecond) gets no wake-up: it waits for
/// the idle timeout (`IDLE_WAIT`) or the next record.
struct Reader {
    linger: Duration,
    awake: bool,
}

impl Reader {
    fn new(linger: Duration) -> Self {
        // The ring buffer's poll waits whole milliseconds (rounded down): a linger of
        // 1.5 ms would wait 1 ms, never "a whole linger", and the reader never sleep.
        // Rounded up, the kernel's wake-up interval (the linger as given) stays shorter.
        let millis = linger.as_micros().div_ceil(1000).max(1);
        Reader {
            linger: Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)),
            awake: true,
        }
    }

    fn wait(&self, queue: &Queue) -> Duration {
        if !queue.is_empty() {
            queue.wait(self.linger)
        } else if self.awake {
            self.linger.max(Duration::from_millis(1))
        } else {
            IDLE_WAIT
        }
    }

    /// A read of `records` after a wait of `waited`.
    fn read(&mut self, records: usize, waited: Duration) {
        if records > 0 {
            self.awake = true;
        } else if waited >= self.linger {
            self.awake = false;
        }
    }
}

/// Which optional programs a loaded object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    /// Credential changes are wanted at all.
    ids: bool,
    fentry: bool,
    tracepoints: bool,
}

/// Loads the programs with the credential hooks the kernel takes: fentry and the
/// syscall tracepoints (fentry is attached if it can be, else the tracepoints), else the
/// tracepoints alone (kernels without BPF trampolines refuse fentry programs at load),
/// else the core programs alone. Also returns why the first choice did not load.
fn load<'obj>(
    objects: &'obj mut [MaybeUninit<OpenObject>; 3],
    opts: &EbpfOptions,
    cfg: &CaptureConfig,
    want_ids: bool,
) -> Result<(ProcessSkel<'obj>, Loaded, Option<String>), Refused> {
    let with = |fentry, tracepoints| Loaded {
        ids: want_ids,
        fentry,
        tracepoints,
    };
    let candidates = if want_ids {
        vec![with(true, true), with(false, true), with(false, false)]
    } else {
        vec![with(false, false)]
    };
    let mut first_refusal = None;
    let mut last = None;
    for (object, want) in objects.iter_mut().zip(candidates) {
        match open_and_load(object, opts, cfg, want) {
            Ok(skel) => {
                if let Some(e) = &first_refusal {
                    tracing::debug!("eBPF: loaded without some credential hooks ({e})");
                }
                return Ok((skel, want, first_refusal));
            }
            Err(e) => {
                first_refusal.get_or_insert_with(|| e.to_string());
                last = Some(e);
            }
        }
    }
    Err(Refused(format!(
        "the kernel refused the eBPF programs: {}",
        last.map_or_else(|| "no attempt".to_string(), |e| e.to_string())
    )))
}

fn open_and_load<'obj>(
    object: &'obj mut MaybeUninit<OpenObject>,
    opts: &EbpfOptions,
    cfg: &CaptureConfig,
    want: Loaded,
) -> Result<ProcessSkel<'obj>, libbpf_rs::Error> {
    let mut open = ProcessSkelBuilder::default().open(object)?;
    // The ring buffer's size must be a power of two pages.
    let ring = opts
        .ring_buffer_bytes
        .clamp(4096, 1 << 30)
        .next_power_of_two();
    open.maps.events.set_max_entries(ring as u32)?;
    // One exec record's working memory per CPU the program may run on, indexed by CPU
    // id: the highest possible id + 1, which a sparse possible mask makes larger than
    // the count of CPUs.
    let cpus = match std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|mask| highest_cpu_id(&mask))
    {
        Some(id) => id + 1,
        None => libbpf_rs::num_possible_cpus()?,
    };
    open.maps.scratch.set_max_entries(cpus as u32)?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.max_args = opts.max_args_bytes.min(ARGS_CAP) as u32;
        ro.wakeup_interval_ns = u64::try_from(cfg.linger.as_nanos()).unwrap_or(u64::MAX);
        ro.wakeup_bytes = ring as u64 / 8;
        // Our pid and pid namespace, as on_fork recognises us (see learn_reader_root).
        if let Ok(ns) = std::fs::metadata("/proc/self/ns/pid") {
            use std::os::unix::fs::MetadataExt;
            ro.reader_tgid = std::process::id();
            ro.reader_pidns_dev = ns.dev();
            ro.reader_pidns_ino = ns.ino();
        }
    }
    open.progs.on_commit_creds.set_autoload(want.fentry);
    open.progs.on_setsid.set_autoload(want.fentry);
    open.progs.on_setid_enter.set_autoload(want.tracepoints);
    open.progs.on_setuid_exit.set_autoload(want.tracepoints);
    open.progs.on_setgid_exit.set_autoload(want.tracepoints);
    open.progs.on_setsid_exit.set_autoload(want.tracepoints);
    open.load()
}

/// Attaches the core programs (or refuses) and the best credential hooks it can;
/// returns the links and where credential changes come from.
fn attach(
    skel: &mut ProcessSkel<'_>,
    loaded: Loaded,
    load_refusal: Option<String>,
) -> Result<(Vec<Link>, IdsHook), Refused> {
    let mut links = Vec::new();
    for (name, prog) in [
        ("sched_process_exec", &mut skel.progs.on_exec),
        ("sched_process_fork", &mut skel.progs.on_fork),
        ("sched_process_exit", &mut skel.progs.on_exit),
    ] {
        links.push(
            prog.attach()
                .map_err(|e| refused(&format!("cannot attach to {name}"), e))?,
        );
    }
    if !loaded.ids {
        return Ok((links, IdsHook::NotWanted));
    }
    let mut why_not_fentry = load_refusal.unwrap_or_else(|| "not loaded".into());
    if loaded.fentry {
        match attach_fentry(skel) {
            Ok(mut fentry) => {
                links.append(&mut fentry);
                return Ok((links, IdsHook::Fentry));
            }
            Err(e) => why_not_fentry = e,
        }
    }
    if !loaded.tracepoints {
        return Ok((
            links,
            IdsHook::Missing {
                why: format!("fentry: {why_not_fentry}; the syscall tracepoints did not load"),
            },
        ));
    }
    match attach_syscall_tracepoints(skel) {
        Ok(mut tps) => {
            links.append(&mut tps);
            Ok((links, IdsHook::SyscallTracepoints { why_not_fentry }))
        }
        Err(e) => Ok((
            links,
            IdsHook::Missing {
                why: format!("fentry: {why_not_fentry}; syscall tracepoints: {e}"),
            },
        )),
    }
}

fn attach_fentry(skel: &mut ProcessSkel<'_>) -> Result<Vec<Link>, String> {
    let mut links = Vec::new();
    for (name, prog) in [
        ("commit_creds", &mut skel.progs.on_commit_creds),
        ("ksys_setsid", &mut skel.progs.on_setsid),
    ] {
        links.push(prog.attach().map_err(|e| format!("{name}: {e}"))?);
    }
    Ok(links)
}

/// One program on the entry and one on the exit of every set*id call (the same
/// context layout for all), and one on setsid's exit. All or none: half of them would
/// report some changes and silently miss others.
fn attach_syscall_tracepoints(skel: &mut ProcessSkel<'_>) -> Result<Vec<Link>, String> {
    use hids_procfs::tracefs::{self, Tracefs, TRACEFS};
    match tracefs::ensure() {
        Tracefs::Present => {}
        Tracefs::Mounted => tracing::info!(
            "mounted tracefs at {TRACEFS}: the set*id and setsid syscall tracepoints are \
             found there"
        ),
        Tracefs::Unavailable(why) => return Err(why),
    }
    let tp = |prog: &libbpf_rs::ProgramMut<'_>, name: String| {
        prog.attach_tracepoint(TracepointCategory::Syscalls, &name)
            .map_err(|e| format!("{name}: {e}"))
    };
    let mut links = Vec::new();
    for call in SETID_SYSCALLS {
        links.push(tp(&skel.progs.on_setid_enter, format!("sys_enter_{call}"))?);
        let exit = if call.contains("uid") {
            &skel.progs.on_setuid_exit
        } else {
            &skel.progs.on_setgid_exit
        };
        links.push(tp(exit, format!("sys_exit_{call}"))?);
    }
    links.push(tp(&skel.progs.on_setsid_exit, "sys_exit_setsid".into())?);
    Ok(links)
}

/// The highest CPU id in a kernel CPU list (`0-3,8-11`), as in
/// `/sys/devices/system/cpu/possible`.
/// `None` when any part is not a number: then the caller asks libbpf instead.
fn highest_cpu_id(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .map(|range| range.rsplit('-').next()?.trim().parse::<usize>().ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// Sums the per-CPU drop counters: they only grow, so the sum is the total.
fn read_drops(map: &dyn MapCore, drops: &RingDrops) {
    let (mut execs, mut other) = (0u64, 0u64);
    for k in 0..kind::COUNT {
        let Ok(Some(per_cpu)) = map.lookup_percpu(&k.to_ne_bytes(), MapFlags::ANY) else {
            continue;
        };
        let sum: u64 = per_cpu
            .iter()
            .filter_map(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
            .sum();
        if k == kind::EXEC {
            execs += sum;
        } else {
            other += sum;
        }
    }
    drops.execs.store(execs, Ordering::Relaxed);
    drops.other.store(other, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_sleeps_only_after_a_whole_linger_without_records() {
        let linger = Duration::from_millis(10);
        let queue = Queue::new(&CaptureConfig::for_tests(), Arc::default());
        let mut reader = Reader::new(linger);
        // Records came: read again after a linger, woken or not.
        reader.read(3, Duration::from_millis(2));
        assert_eq!(reader.wait(&queue), linger);
        // Nothing, but the wait was cut short (a signal): a record may still be due
        // without a wake-up, so no sleeping yet.
        reader.read(0, Duration::from_millis(4));
        assert_eq!(reader.wait(&queue), linger);
        // A whole linger with nothing: the next record will wake the reader.
        reader.read(0, linger);
        assert_eq!(reader.wait(&queue), IDLE_WAIT);
        reader.read(1, Duration::from_millis(300));
        assert_eq!(reader.wait(&queue), linger);
    }

    #[test]
    fn a_linger_between_milliseconds_is_rounded_up_so_the_reader_can_sleep() {
        let queue = Queue::new(&CaptureConfig::for_tests(), Arc::default());
        let mut reader = Reader::new(Duration::from_micros(1500));
        assert_eq!(reader.wait(&queue), Duration::from_millis(2));
        // A poll of whole milliseconds that read nothing is a whole linger.
        reader.read(0, Duration::from_millis(2));
        assert_eq!(reader.wait(&queue), IDLE_WAIT);
    }

    #[test]
    fn the_scratch_map_covers_the_highest_cpu_id() {
        assert_eq!(highest_cpu_id("0-3\n"), Some(3));
        assert_eq!(highest_cpu_id("0-3,8-11"), Some(11));
        assert_eq!(highest_cpu_id("0,5"), Some(5));
        assert_eq!(highest_cpu_id(""), None);
        assert_eq!(highest_cpu_id("0-3,x"), None, "a part unread: ask libbpf");
    }
}
