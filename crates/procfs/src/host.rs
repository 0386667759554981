//! This host's identity as the kernel and systemd record it.

use std::fs;

/// The machine id (`/etc/machine-id`, else the older D-Bus copy): stable across
/// reboots and unique per installation, which is what a fleet needs as `host.id`.
///
/// # Errors
/// When neither file holds a non-empty id.
pub fn machine_id() -> std::io::Result<String> {
    let mut last = None;
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        match fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "machine-id is empty")
    }))
}

/// The kernel's host name (UTS namespace of the caller).
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
