//! The capture thread: picks the backend (`--capture`), falls back from eBPF to the
//! proc connector when allowed, and says once which one runs, or why none can.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use clap::ValueEnum;
use hids_netlink::{ProcSocket, SocketOptions};

use crate::capture::ebpf::{self, EbpfOptions, IdsHook, Refused};
use crate::capture::{cn_proc, Batch, CaptureConfig, Counters};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Auto,
    Ebpf,
    #[value(name = "cn_proc")]
    CnProc,
}

/// What the capture thread reports once events flow.
pub struct Started {
    pub backend: &'static str,
    /// Why eBPF is not in use although it was allowed.
    pub fallback: Option<String>,
    /// Where credential and session changes come from: `fentry`, `syscall_tracepoints`,
    /// `cn_proc`, `unavailable`, or `not_wanted` (none in `--emit`).
    pub ids_capture: &'static str,
}

/// Everything the capture thread owns.
pub struct CaptureThread {
    pub choice: Backend,
    pub cfg: CaptureConfig,
    pub ebpf: EbpfOptions,
    /// Kernel receive buffer of the proc connector socket.
    pub recv_buffer_bytes: usize,
    /// Credential or session changes are wanted.
    pub emit_ids: bool,
    pub tx: mpsc::SyncSender<Batch>,
    pub counters: Arc<Counters>,
    pub shutdown: Arc<AtomicBool>,
    /// Told once: the backend that runs, or why none can.
    pub started: mpsc::Sender<anyhow::Result<Started>>,
}

impl CaptureThread {
    /// Runs the chosen backend until shutdown.
    ///
    /// # Errors
    /// When the backend fails after it started; failures to start go to `started`.
    pub fn run(self) -> anyhow::Result<()> {
        let mut fallback = None;
        if self.choice != Backend::CnProc {
            match self.run_ebpf() {
                Ok(result) => return result,
                Err(Refused(why)) if self.choice == Backend::Ebpf => {
                    let _ = self.started.send(Err(anyhow::anyhow!(
                        "eBPF capture was asked for (--capture ebpf) but {why}; \
                         use --capture auto to fall back to the proc connector"
                    )));
                    return Ok(());
                }
                Err(Refused(why)) => fallback = Some(why),
            }
        }
        self.run_cn_proc(fallback)
    }

    fn run_ebpf(&self) -> Result<anyhow::Result<()>, Refused> {
        let on_ready = |ids: IdsHook| {
            let ids_capture = match &ids {
                IdsHook::Missing { why } => self.spawn_ids_capture(why),
                IdsHook::NotWanted => "not_wanted",
                hook @ (IdsHook::Fentry | IdsHook::SyscallTracepoints { .. }) => {
                    tracing::info!(
                        "credential and session changes (setuid, setgid, setsid): from {}",
                        hook.describe()
                    );
                    if matches!(hook, IdsHook::Fentry) {
                        "fentry"
                    } else {
                        "syscall_tracepoints"
                    }
                }
            };
            let _ = self.started.send(Ok(Started {
                backend: "ebpf",
                fallback: None,
                ids_capture,
            }));
        };
        ebpf::run(
            &self.ebpf,
            &self.cfg,
            self.emit_ids,
            self.tx.clone(),
            self.counters.clone(),
            self.shutdown.clone(),
            on_ready,
        )
    }

    fn run_cn_proc(self, fallback: Option<String>) -> anyhow::Result<()> {
        let sock = match ProcSocket::open(&SocketOptions {
            recv_buffer_bytes: self.recv_buffer_bytes,
            recv_timeout: Duration::from_millis(500),
        }) {
            Ok(sock) => sock,
            Err(e) => {
                let _ = self.started.send(Err(anyhow::anyhow!(
                    "cannot subscribe to the kernel's process events ({e}); this needs \
                     root (CAP_NET_ADMIN) in the host's initial namespaces and a kernel \
                     with CONFIG_PROC_EVENTS{}",
                    fallback
                        .as_deref()
                        .map(|f| format!("; eBPF: {f}"))
                        .unwrap_or_default()
                )));
                return Ok(());
            }
        };
        let _ = self.started.send(Ok(Started {
            backend: "cn_proc",
            fallback,
            ids_capture: if self.emit_ids {
                "cn_proc"
            } else {
                "not_wanted"
            },
        }));
        cn_proc::run(sock, self.tx, self.cfg, self.counters, self.shutdown)
    }

    /// Where eBPF can hook credential changes neither with fentry nor with the syscall
    /// tracepoints, setuid, setgid and setsid come from the proc connector, which reports
    /// them on every kernel (at the price of a message the kernel builds for every fork,
    /// exec and exit on the host); exec, fork and exit stay eBPF's.
    ///
    /// Returns where they come from now (`cn_proc`, or `unavailable`), for the stats.
    fn spawn_ids_capture(&self, why: &str) -> &'static str {
        let cfg = CaptureConfig {
            only_ids: true,
            ..self.cfg.clone()
        };
        let (tx, counters, shutdown) = (
            self.tx.clone(),
            self.counters.clone(),
            self.shutdown.clone(),
        );
        let spawned = ProcSocket::open(&SocketOptions {
            recv_buffer_bytes: self.recv_buffer_bytes.min(1 << 20),
            recv_timeout: Duration::from_millis(500),
        })
        .map_err(anyhow::Error::from)
        .and_then(|sock| {
            Ok(std::thread::Builder::new()
                .name("capture-ids".into())
                .spawn(move || cn_proc::run(sock, tx, cfg, counters, shutdown))?)
        });
        match spawned {
            Ok(_) => {
                tracing::info!(
                    "credential and session changes (setuid, setgid, setsid): from the proc \
                     connector; eBPF cannot hook them here ({why})"
                );
                "cn_proc"
            }
            Err(e) => {
                tracing::warn!(
                    "setuid, setgid and setsid are not reported: eBPF cannot hook them ({why}) \
                     and the proc connector failed: {e:#}"
                );
                "unavailable"
            }
        }
    }
}
