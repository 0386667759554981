//! The eBPF capture backend: process events recorded inside the kernel
//! (src/bpf/process.bpf.c) and read from one ring buffer ([`record`] parses them).
//!
//! The kernel side records what an exec leaves behind in memory it still holds: the
//! argument list, executable path, ids, session, tty, namespace, start time. `/proc` is
//! read afterwards only for what the kernel record lacks (working directory and cgroup
//! path), and only when the process is still the one that exec'd.

mod record;
mod skel;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use super::queue::Queue;
use super::snapshot;
use super::{Batch, CaptureConfig, Counters, Raw, RingDrops};
use record::{kind, Record, ARGS_CAP};
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

/// Loads and attaches the programs, then runs the capture loop until `shutdown` or the
/// consumer hangs up. `ready` is called once the programs are attached (events flow from
/// then on) with the optional programs that could not be attached (credential and
/// session changes); a `Refused` error before that means the caller may fall back to
/// the proc connector.
pub fn run(
    opts: &EbpfOptions,
    cfg: &CaptureConfig,
    tx: SyncSender<Batch>,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    ready: impl FnOnce(Vec<String>),
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
    let mut object = MaybeUninit::uninit();
    let mut fallback_object = MaybeUninit::uninit();
    let (mut skel, with_optional) = load(&mut object, &mut fallback_object, opts)?;
    let (links, missing) = attach(&mut skel, with_optional)?;

    let burst: RefCell<Vec<Record>> = RefCell::new(Vec::new());
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
    ready(missing);

    let mut queue = Queue::new(cfg, counters.clone());
    let mut next_drop_read = Instant::now();
    let mut poll_errors = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        let wait = queue.wait(cfg.linger);
        if let Err(e) = rb.poll(wait) {
            // EINTR is routine; anything that repeats is not.
            poll_errors += 1;
            if poll_errors >= 100 {
                return Ok(Err(anyhow::anyhow!("eBPF ring buffer keeps failing: {e}")));
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        poll_errors = 0;
        let records = std::mem::take(&mut *burst.borrow_mut());
        counters
            .ring_records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        convert(records, cfg, &counters, &mut queue);
        if queue.due(cfg.linger) && !queue.hand_over(&tx) {
            return Ok(Ok(()));
        }
        if Instant::now() >= next_drop_read {
            next_drop_read = Instant::now() + Duration::from_secs(1);
            read_drops(&skel.maps.drops, &counters.ring_drops);
        }
    }
    read_drops(&skel.maps.drops, &counters.ring_drops);
    drop(links);
    Ok(Ok(()))
}

/// Loads the programs, with the optional ones if the kernel takes them. Credential and
/// session changes hook kernel functions (fentry), which some kernels do not allow (no
/// ftrace trampolines): then the core programs load without them (`false`).
fn load<'obj>(
    object: &'obj mut MaybeUninit<OpenObject>,
    fallback_object: &'obj mut MaybeUninit<OpenObject>,
    opts: &EbpfOptions,
) -> Result<(ProcessSkel<'obj>, bool), Refused> {
    match open_and_load(object, opts, true) {
        Ok(skel) => Ok((skel, true)),
        Err(first) => match open_and_load(fallback_object, opts, false) {
            Ok(skel) => {
                tracing::debug!("eBPF: loaded without the optional programs ({first})");
                Ok((skel, false))
            }
            Err(e) => Err(refused("the kernel refused the eBPF programs", e)),
        },
    }
}

/// Attaches the core programs (or refuses) and the optional ones it can; returns the
/// links and the optional programs missing, with why.
fn attach(
    skel: &mut ProcessSkel<'_>,
    with_optional: bool,
) -> Result<(Vec<Link>, Vec<String>), Refused> {
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
    let mut missing = Vec::new();
    if with_optional {
        for (name, prog) in [
            ("commit_creds", &mut skel.progs.on_commit_creds),
            ("ksys_setsid", &mut skel.progs.on_setsid),
        ] {
            match prog.attach() {
                Ok(link) => links.push(link),
                Err(e) => missing.push(format!("{name}: {e}")),
            }
        }
    } else {
        missing.push("commit_creds, ksys_setsid: the kernel does not allow fentry".into());
    }
    Ok((links, missing))
}
fn open_and_load<'obj>(
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    opts: &EbpfOptions,
    with_optional: bool,
) -> Result<ProcessSkel<'obj>, libbpf_rs::Error> {
    let mut open = ProcessSkelBuilder::default().open(object)?;
    // The ring buffer's size must be a power of two pages.
    let ring = opts
        .ring_buffer_bytes
        .clamp(4096, 1 << 30)
        .next_power_of_two();
    open.maps.events.set_max_entries(ring as u32)?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.max_args = opts.max_args_bytes.min(ARGS_CAP) as u32;
    }
    if !with_optional {
        open.progs.on_commit_creds.set_autoload(false);
        open.progs.on_setsid.set_autoload(false);
    }
    open.load()
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

fn convert(records: Vec<Record>, cfg: &CaptureConfig, counters: &Counters, queue: &mut Queue) {
    for record in records {
        let raw = match record {
            Record::Exec { ts_ns, pid, exec } => {
                counters.execs_seen.fetch_add(1, Ordering::Relaxed);
                let over_budget = counters.queue_bytes.load(Ordering::Relaxed) >= cfg.queue_bytes;
                let snapshot = if over_budget {
                    Err(snapshot::Gap::Backlog)
                } else {
                    snapshot::supplement(&cfg.proc_root, pid).map(Box::new)
                };
                Raw::Exec {
                    ts_ns,
                    pid,
                    kernel: Some(exec),
                    snapshot,
                    read_done_ns: 0,
                    superseded: false,
                }
            }
            Record::Done(raw) => raw,
        };
        queue.push(raw);
    }
}
