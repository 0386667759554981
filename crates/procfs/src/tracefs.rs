//! Syscall tracepoints (the network plugin's connect/accept, the process plugin's
//! set*id) are found by name in tracefs (`/sys/kernel/tracing/events/syscalls/...`),
//! which libbpf reads to attach them. systemd mounts it at boot, but a container host or
//! a minimal VM may not have it: then the plugin mounts it, as
//! `mount -t tracefs nodev /sys/kernel/tracing` would. Without it, those events would be
//! off on such hosts with nothing but a warning.

use std::path::Path;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// What was found or done, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Tracefs {
    Present,
    Mounted,
    Unavailable(String),
}

/// Makes sure tracefs (or the legacy debugfs path libbpf also reads) is there.
pub fn ensure() -> Tracefs {
    let present = |root: &str| Path::new(root).join("events/syscalls").is_dir();
    if present(TRACEFS) || present("/sys/kernel/debug/tracing") {
        return Tracefs::Present;
    }
    match rustix::mount::mount(
        "nodev",
        TRACEFS,
        "tracefs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        None,
    ) {
        Ok(()) if present(TRACEFS) => Tracefs::Mounted,
        Ok(()) => Tracefs::Unavailable(format!(
            "tracefs mounted at {TRACEFS} has no syscall events (kernel without \
             CONFIG_FTRACE_SYSCALLS)"
        )),
        Err(e) => Tracefs::Unavailable(format!("cannot mount tracefs at {TRACEFS}: {e}")),
    }
}
