//! The eBPF side (src/bpf/network.bpf.c): loading it with whatever this kernel allows,
//! walking every socket with the task_file iterator, and the ring buffer of connect and
//! accept events.
//!
//! Loading tries the most capable set first and steps down: the iterator with the
//! connect/accept syscall tracepoints, then the iterator alone, then the tracepoints
//! alone (kernels before 5.8 have no iterators). What is missing is said once, in the
//! log and the stats.

use std::cell::RefCell;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, OpenObject, RingBuffer};

use crate::model::SocketRow;
use crate::record::{self, ConnEvent};
use crate::skel::{types, NetworkSkel, NetworkSkelBuilder};

/// Indexes of the kernel's `counters` map (`C_*` in the C program).
mod counter {
    pub const EMITTED: u32 = 0;
    pub const FOLDED: u32 = 1;
    pub const RING_FULL: u32 = 2;
    pub const CONNECT_TABLE_FULL: u32 = 3;
}

/// Connect/accept events taken from the ring in one poll at most; the rest wait in the
/// ring (where they are counted if it fills).
const MAX_BATCH: usize = 8192;

#[derive(Debug, Clone)]
pub struct BpfOptions {
    /// Ring buffer of connect/accept events, bytes.
    pub ring_buffer_bytes: usize,
    /// Keys (process, direction, peer) the kernel's fold table holds.
    pub fold_entries: u32,
    /// A key is reported at most once per this.
    pub fold_window: Duration,
    /// Whether to attach the connect/accept probes at all.
    pub live: bool,
}

/// Which programs a set loads: an iterator (the direct one, or the compat one for
/// kernels before 5.11), and the live probes or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Set {
    iter: Option<IterProg>,
    /// The iter/task listener walker (bpf_loop and bpf_rdonly_cast: Linux 6.2+).
    listeners: bool,
    live: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IterProg {
    Direct,
    Compat,
}

impl Set {
    /// From the most capable down. Without live probes wanted, only iterators.
    fn ladder(live: bool) -> Vec<Set> {
        let iters = [
            (Some(IterProg::Direct), true),
            (Some(IterProg::Direct), false),
            (Some(IterProg::Compat), false),
        ];
        let with = |live| {
            iters.iter().map(move |&(iter, listeners)| Set {
                iter,
                listeners,
                live,
            })
        };
        let mut sets = Vec::new();
        if live {
            sets.extend(with(true));
        }
        sets.extend(with(false));
        if live {
            sets.push(Set {
                iter: None,
                listeners: false,
                live: true,
            });
        }
        sets
    }
}

/// The loaded programs.
pub struct Kernel {
    skel: NetworkSkel<'static>,
    iter: Option<Link>,
    /// The listener walker, where the kernel takes it.
    listeners: Option<Link>,
    _live: Vec<Link>,
    /// Why the iterator or the live probes are missing, if they are.
    pub missing: Vec<String>,
    live: bool,
}

/// What the kernel counted for the live events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    pub emitted: u64,
    pub folded: u64,
    pub ring_buffer_full: u64,
    /// connect(2) calls in flight that found the per-thread table full: not reported.
    pub connect_table_full: u64,
}

/// Counts of one iterator walk.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkStats {
    pub records: u64,
    /// Records beyond the row bound: read (the walk goes on to its end) but not kept.
    pub over_limit: u64,
    /// Listener walks that overflowed the kernel's per-process output (over 511
    /// listeners in one process) and were done again by the task_file iterator.
    pub listener_walker_overflow: u64,
    pub malformed: u64,
    pub eagain: u64,
}

impl Kernel {
    /// Loads and attaches what this kernel allows.
    ///
    /// # Errors
    /// When neither the iterator nor the live probes can be used: why, for the log.
    pub fn load(opts: &BpfOptions) -> Result<Kernel, String> {
        quiet_libbpf();
        let mut errors = Vec::new();
        for set in Set::ladder(opts.live) {
            // Each attempt needs its own object storage, which the loaded skeleton
            // borrows for as long as the plugin runs: a few hundred bytes, once.
            let object: &'static mut MaybeUninit<OpenObject> =
                Box::leak(Box::new(MaybeUninit::uninit()));
            match open_and_load(object, opts, set) {
                Ok(skel) => match attach(skel, set, opts.live) {
                    Ok(mut kernel) => {
                        kernel.missing.extend(errors);
                        return Ok(kernel);
                    }
                    Err(e) => errors.push(format!("{set:?}: {e}")),
                },
                Err(e) => errors.push(format!("{set:?}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    pub fn has_iterator(&self) -> bool {
        self.iter.is_some()
    }

    /// Walks every open socket of every process, appending the ones whose state is in
    /// the masks (bit N = state N) to `rows`.
    ///
    /// # Errors
    /// When the iterator cannot be created or read (not `EAGAIN`, which is retried and
    /// counted).
    ///
    /// When only listeners are asked for and the kernel took the listener walker, that
    /// one runs: it reads each process's descriptor table itself instead of visiting
    /// every descriptor through the task_file iterator.
    pub fn walk(
        &mut self,
        tcp_states: u32,
        udp_states: u32,
        max_rows: usize,
        rows: &mut Vec<SocketRow>,
    ) -> io::Result<WalkStats> {
        let listeners_only = tcp_states == 1 << crate::model::TCP_LISTEN
            && udp_states == 1 << crate::model::TCP_CLOSE;
        if let Some(data) = self.skel.maps.data_data.as_deref_mut() {
            data.tcp_states = tcp_states;
            data.udp_states = udp_states;
        }
        let mut stats = WalkStats::default();
        if let (Some(fast), true) = (&self.listeners, listeners_only) {
            let before = rows.len();
            match read_records(fast, max_rows, rows, &mut stats) {
                Ok(()) => return Ok(stats),
                // The listener walker writes one task's records in one go, and the
                // kernel gives one object 32 KiB: a process with more than 511
                // listeners (a media server's UDP ports) does not fit. The task_file
                // iterator writes one record per descriptor and always fits.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::TOOBIG.raw_os_error()) => {
                    rows.truncate(before);
                    stats = WalkStats {
                        listener_walker_overflow: 1,
                        ..WalkStats::default()
                    };
                }
                Err(e) => return Err(e),
            }
        }
        let link = self
            .iter
            .as_ref()
            .ok_or_else(|| io::Error::other("the socket iterator is not loaded"))?;
        read_records(link, max_rows, rows, &mut stats)?;
        Ok(stats)
    }

    /// A reader of the connect/accept ring buffer that appends to `sink`; `None` when
    /// the live probes are not attached.
    ///
    /// # Errors
    /// When libbpf cannot map the ring buffer.
    pub fn ring(
        &self,
        sink: Rc<RefCell<Vec<ConnEvent>>>,
        malformed: Rc<RefCell<u64>>,
    ) -> Result<Option<RingBuffer<'static>>, String> {
        if !self.live {
            return Ok(None);
        }
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&self.skel.maps.events, move |data: &[u8]| {
                let mut batch = sink.borrow_mut();
                match record::parse_conn(data) {
                    Some(ev) => batch.push(ev),
                    None => *malformed.borrow_mut() += 1,
                }
                // One poll would drain the whole ring: stop at the batch bound (what is
                // left waits in the ring, whose size bounds it in bytes).
                if batch.len() >= MAX_BATCH {
                    -1
                } else {
                    0
                }
            })
            .map_err(|e| format!("cannot read the ring buffer: {e}"))?;
        builder
            .build()
            .map(Some)
            .map_err(|e| format!("cannot read the ring buffer: {e}"))
    }

    /// Sums the kernel's per-CPU counters (they only grow).
    pub fn counters(&self) -> KernelCounters {
        let read = |k: u32| -> u64 {
            let Ok(Some(per_cpu)) = self
                .skel
                .maps
                .counters
                .lookup_percpu(&k.to_ne_bytes(), MapFlags::ANY)
            else {
                return 0;
            };
            per_cpu
                .iter()
                .filter_map(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
                .sum()
        };
        KernelCounters {
            emitted: read(counter::EMITTED),
            folded: read(counter::FOLDED),
            ring_buffer_full: read(counter::RING_FULL),
            connect_table_full: read(counter::CONNECT_TABLE_FULL),
        }
    }
}

/// Reads one walk of an iterator link to its end.
fn read_records(
    link: &Link,
    max_rows: usize,
    rows: &mut Vec<SocketRow>,
    stats: &mut WalkStats,
) -> io::Result<()> {
    let mut iter = Iter::new(link).map_err(io::Error::other)?;
    // Records never straddle reads: the kernel copies whole records, so a buffer that
    // is a multiple of the record size is filled with whole ones.
    let mut buf = vec![0u8; record::sock::LEN * 4096];
    loop {
        let n = match iter.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) => {
                stats.eagain += 1;
                if stats.eagain > 1000 {
                    return Err(e);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        for chunk in buf[..n].chunks(record::sock::LEN) {
            stats.records += 1;
            match record::parse_sock(chunk) {
                Some(_) if rows.len() >= max_rows => stats.over_limit += 1,
                Some(row) => rows.push(row),
                None => stats.malformed += 1,
            }
        }
    }
}

fn quiet_libbpf() {
    // libbpf explains a refused program at length (the verifier log); the outcome is
    // reported once, by the caller.
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |level, msg| {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!("libbpf: {msg}"),
            _ => tracing::trace!("libbpf: {msg}"),
        }
    })));
}

fn open_and_load(
    object: &'static mut MaybeUninit<OpenObject>,
    opts: &BpfOptions,
    set: Set,
) -> Result<NetworkSkel<'static>, libbpf_rs::Error> {
    let mut open = NetworkSkelBuilder::default().open(object)?;
    let ring = opts
        .ring_buffer_bytes
        .clamp(4096, 1 << 30)
        .next_power_of_two();
    open.maps.events.set_max_entries(ring as u32)?;
    open.maps.folds.set_max_entries(opts.fold_entries.max(64))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.fold_ns = u64::try_from(opts.fold_window.as_nanos()).unwrap_or(u64::MAX);
    }
    let live = set.live;
    open.progs
        .dump_sockets
        .set_autoload(set.iter == Some(IterProg::Direct));
    open.progs
        .dump_sockets_compat
        .set_autoload(set.iter == Some(IterProg::Compat));
    open.progs.dump_listeners.set_autoload(set.listeners);
    open.progs.on_connect_enter.set_autoload(live);
    open.progs.on_connect_exit.set_autoload(live);
    open.progs.on_accept_exit.set_autoload(live);
    open.progs.on_accept4_exit.set_autoload(live);
    open.load()
}

fn attach(
    skel: NetworkSkel<'static>,
    set: Set,
    wanted_live: bool,
) -> Result<Kernel, libbpf_rs::Error> {
    let mut kernel = Kernel {
        iter: None,
        listeners: None,
        _live: Vec::new(),
        missing: Vec::new(),
        live: false,
        skel,
    };
    let progs = &kernel.skel.progs;
    match set.iter {
        None => kernel.missing.push(
            "the kernel has no task_file iterator: snapshots read sock_diag and /proc".into(),
        ),
        Some(IterProg::Direct) => kernel.iter = Some(progs.dump_sockets.attach()?),
        Some(IterProg::Compat) => kernel.iter = Some(progs.dump_sockets_compat.attach()?),
    }
    if set.listeners {
        kernel.listeners = Some(progs.dump_listeners.attach()?);
    }
    if !set.live {
        if wanted_live {
            kernel
                .missing
                .push("no connect/accept events: the syscall tracepoints were refused".into());
        }
    } else {
        for prog in [
            &progs.on_connect_enter,
            &progs.on_connect_exit,
            &progs.on_accept_exit,
            &progs.on_accept4_exit,
        ] {
            kernel._live.push(prog.attach()?);
        }
        kernel.live = true;
    }
    Ok(kernel)
}

// The C structs live in the skeleton's BTF; keep the type names in use so a rename in C
// fails here too.
#[allow(dead_code)]
fn _layouts(_: types::sock_record, _: types::conn_event) {}
