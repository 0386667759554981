//! Tests that cannot run on this machine, counted rather than silently passed.

use std::io::Write as _;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A test that cannot run here. Outside CI it says why on stderr, records the skip in
/// the file named by `HIDS_TEST_SKIPS` (scripts/test counts them at the end, since
/// `cargo test` hides a passing test's output) and the test passes. Under `CI` (root on
/// a BTF kernel with etcd and tansu, where everything can run) a skip is a failure: a
/// green run must mean everything was tested.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run here ({reason}), and CI must run every test");
    }
    eprintln!("skipped: {test}: {reason}");
    if let Some(path) = std::env::var_os("HIDS_TEST_SKIPS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// Skips (see [`skip`]) the calling test unless `$cond` holds.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $reason:expr) => {
        if !$cond {
            $crate::skip($reason);
            return;
        }
    };
}

/// Skips (see [`skip`]) a test that needs root (the kernel's process events).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::skip_unless!($crate::is_root(), "needs root for the proc connector")
    };
}
