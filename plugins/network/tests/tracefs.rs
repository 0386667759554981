//! A host without tracefs mounted (a minimal VM, a container host: this project's own
//! test machine boots that way) still gets connect/accept events: the plugin mounts
//! tracefs, where libbpf finds the syscall tracepoints. Its own test binary: it
//! unmounts tracefs, which no other test of a running binary may see.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{actions, btf, network_agent, NO_BTF};
use hids_test_support::{require_root, skip_unless};

fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/kernel/tracing"))
}

#[test]
fn without_tracefs_the_plugin_mounts_it_and_reports_connects() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    if tracefs_mounted() {
        let unmounted =
            rustix::mount::unmount("/sys/kernel/tracing", rustix::mount::UnmountFlags::empty());
        skip_unless!(
            unmounted.is_ok(),
            "tracefs is mounted and busy (a tracer is running): cannot take it away"
        );
    }
    assert!(!tracefs_mounted());
    let agent = network_agent(&[
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = listener.accept().unwrap();
    let events = agent.wait_events("a connect", Duration::from_secs(20), |evs| {
        !actions(evs, "connect", port).is_empty()
    });
    assert_eq!(actions(&events, "connect", port).len(), 1);
    assert!(tracefs_mounted(), "the plugin mounted tracefs");
    assert!(
        agent.stderr_contains_soon("mounted tracefs", Duration::from_secs(5)),
        "and said so"
    );
}
