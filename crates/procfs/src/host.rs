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

/// The host's own addresses, loopback and link-local excluded: IPv4 from
/// `/proc/net/fib_trie` (the kernel's local routes), IPv6 from `/proc/net/if_inet6`.
pub fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(b) = fs::read("/proc/net/fib_trie") {
        for a in crate::parse_fib_trie_local(&b) {
            if !a.is_loopback() && !out.contains(&a.to_string()) {
                out.push(a.to_string());
            }
        }
    }
    if let Ok(b) = fs::read("/proc/net/if_inet6") {
        out.extend(
            crate::parse_if_inet6_global(&b)
                .iter()
                .map(ToString::to_string),
        );
    }
    out
}
