//! The network plugin under the agent: connect/accept events with the right process
//! (blocking and non-blocking connects, IPv4 and IPv6, `accept` and `accept4`), folded in
//! the kernel and reported again once their window has passed, and listeners reported as
//! they open and close, never as closed while they are open. Needs root and a kernel
//! with BTF (CI has both); elsewhere the tests say so and pass, under CI they fail.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd as _, BorrowedFd};
use std::time::{Duration, Instant};

use common::{actions, btf, network_agent, once, stats, NO_BTF};
use hids_test_support::{require_root, skip_unless, Agent};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde_json::Value;

#[test]
fn connects_and_accepts_name_the_process_and_repeats_are_folded() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent = network_agent(&["--stats-interval-secs", "1", "--fold-window-secs", "600"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let rounds = 50;
    let mut held = Vec::new();
    for _ in 0..rounds {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        held.push((client, server));
    }
    let events = agent.wait_events("a connect and an accept", Duration::from_secs(20), |evs| {
        !actions(evs, "connect", port).is_empty() && !actions(evs, "accept", port).is_empty()
    });
    let connects = actions(&events, "connect", port);
    let accepts = actions(&events, "accept", port);
    assert_eq!(
        connects.len(),
        1,
        "one connect reported, the rest folded: {connects:#?}"
    );
    assert_eq!(
        accepts.len(),
        1,
        "one accept reported, the rest folded: {accepts:#?}"
    );
    let (c, a) = (connects[0], accepts[0]);
    assert_eq!(c["process"]["pid"], me, "{c:#}");
    assert_eq!(a["process"]["pid"], me, "{a:#}");
    assert_eq!(c["network"]["direction"], "egress");
    assert_eq!(a["network"]["direction"], "ingress");
    assert_eq!(c["network"]["transport"], "tcp");
    assert_eq!(c["network"]["type"], "ipv4");
    assert_eq!(c["destination"]["ip"], "127.0.0.1");
    assert_eq!(
        a["source"]["port"], port,
        "an accept's source is this host's end"
    );
    assert_eq!(c["user"]["id"], "0");
    assert_eq!(c["hids"]["socket"]["folded"], 0);
    // The kernel folded the other 49 of each, and says so.
    agent.wait_status("the folded count", Duration::from_secs(20), |s| {
        let live = &Agent::plugin(s, "network")["health"]["live"];
        live["folded"].as_u64().unwrap_or(0) >= 2 * (rounds - 1)
    });
}

#[test]
fn listeners_are_reported_as_they_open_and_close() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent = network_agent(&["--listen-interval-secs", "1", "--connections", "false"]);
    // The first scan is a snapshot of what already listens.
    agent.wait_events(
        "the first listener snapshot",
        Duration::from_secs(20),
        |evs| {
            evs.iter()
                .any(|e| e["event"]["action"] == "listening" && e["hids"]["snapshot"] == true)
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let events = agent.wait_events("the new listener", Duration::from_secs(20), |evs| {
        !actions(evs, "listening", port).is_empty()
    });
    let opened = actions(&events, "listening", port);
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(opened[0]["event"]["kind"], "event");
    assert_eq!(opened[0]["process"]["pid"], std::process::id());
    assert_eq!(opened[0]["hids"]["socket"]["state"], "listen");
    drop(listener);
    let events = agent.wait_events("the closed listener", Duration::from_secs(20), |evs| {
        !actions(evs, "listener_closed", port).is_empty()
    });
    let closed = actions(&events, "listener_closed", port);
    assert_eq!(closed[0]["process"]["pid"], std::process::id());
    assert_eq!(closed[0]["source"]["port"], port);
}

/// The one `action` event for `port`, made by this process.
fn only_one<'a>(events: &'a [Value], action: &str, port: u16) -> &'a Value {
    let seen = actions(events, action, port);
    assert_eq!(seen.len(), 1, "one {action} for port {port}: {seen:#?}");
    assert_eq!(
        seen[0]["process"]["pid"],
        std::process::id(),
        "{:#}",
        seen[0]
    );
    seen[0]
}

fn wait_for(agent: &Agent, action: &str, port: u16) -> Vec<Value> {
    agent.wait_events(
        &format!("a {action} for port {port}"),
        Duration::from_secs(30),
        |evs| !actions(evs, action, port).is_empty(),
    )
}

#[test]
fn a_non_blocking_connect_is_reported_at_einprogress() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent = network_agent(&[
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK,
        None,
    )
    .unwrap();
    // The connecting process holds the socket lock until connect returns, so the
    // loopback handshake cannot finish first: this connect is always EINPROGRESS.
    let connected = rustix::net::connect(&socket, &listener.local_addr().unwrap());
    assert_eq!(connected, Err(rustix::io::Errno::INPROGRESS));
    let (_server, client) = listener.accept().unwrap();

    let events = wait_for(&agent, "connect", port);
    let c = only_one(&events, "connect", port);
    assert_eq!(c["source"]["port"], client.port(), "{c:#}");
    assert_eq!(c["source"]["ip"], "127.0.0.1", "{c:#}");
    assert_eq!(c["destination"]["port"], port, "{c:#}");
    assert_eq!(c["network"]["direction"], "egress", "{c:#}");
    assert_eq!(c["network"]["type"], "ipv4", "{c:#}");
    assert_eq!(c["hids"]["capture"], "ebpf", "{c:#}");
}

#[test]
fn ipv6_connects_and_accepts_say_ipv6() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        hids_test_support::skip("no IPv6 loopback ([::1]) on this host");
        return;
    };
    let agent = network_agent(&[
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let _server = listener.accept().unwrap();

    let events = agent.wait_events(
        "an IPv6 connect and accept",
        Duration::from_secs(30),
        |evs| !actions(evs, "connect", port).is_empty() && !actions(evs, "accept", port).is_empty(),
    );
    let c = only_one(&events, "connect", port);
    let a = only_one(&events, "accept", port);
    for e in [c, a] {
        assert_eq!(e["network"]["type"], "ipv6", "{e:#}");
        assert_eq!(e["network"]["transport"], "tcp", "{e:#}");
        assert_eq!(e["source"]["ip"], "::1", "{e:#}");
        assert_eq!(e["destination"]["ip"], "::1", "{e:#}");
    }
    assert_eq!(c["source"]["port"], client_port, "{c:#}");
    assert_eq!(c["destination"]["port"], port, "{c:#}");
    assert_eq!(c["network"]["direction"], "egress", "{c:#}");
    assert_eq!(a["source"]["port"], port, "{a:#}");
    assert_eq!(a["destination"]["port"], client_port, "{a:#}");
    assert_eq!(a["network"]["direction"], "ingress", "{a:#}");
}

#[test]
fn accept_and_accept4_are_both_reported() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent = network_agent(&[
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    // rustix's accept is the accept(2) syscall; std's TcpListener::accept is accept4(2).
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let with_flags = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_client = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
    let _plain_server = rustix::net::accept(&plain).unwrap();
    let flags_client = TcpStream::connect(with_flags.local_addr().unwrap()).unwrap();
    let _flags_server = with_flags.accept().unwrap();

    for (syscall, listener, client) in [
        ("accept", &plain, &plain_client),
        ("accept4", &with_flags, &flags_client),
    ] {
        let port = listener.local_addr().unwrap().port();
        let events = wait_for(&agent, "accept", port);
        let a = only_one(&events, "accept", port);
        let client: SocketAddr = client.local_addr().unwrap();
        assert_eq!(a["destination"]["port"], client.port(), "{syscall}: {a:#}");
        assert_eq!(a["source"]["port"], port, "{syscall}: {a:#}");
        assert_eq!(a["network"]["direction"], "ingress", "{syscall}: {a:#}");
    }
}

/// A connection the client resets while it waits in the listen queue is still accepted,
/// but the kernel has already given back its local port number (`inet_num` is 0 by
/// then): the accept must still name the port it came in on.
#[test]
fn an_accept_of_a_connection_reset_in_the_queue_names_the_listening_port() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent = network_agent(&[
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO)).unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(200));
    let _server = listener.accept().unwrap();
    let events = wait_for(&agent, "accept", port);
    let a = only_one(&events, "accept", port);
    assert_eq!(a["source"]["port"], port, "{a:#}");
    assert_eq!(a["process"]["pid"], std::process::id(), "{a:#}");
}

/// Five connections in a burst, then one after the fold window: the second report of
/// each key carries the four folded into it.
#[test]
fn a_key_is_reported_again_after_its_fold_window_with_what_it_folded() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    const WINDOW: Duration = Duration::from_secs(2);
    let agent = network_agent(&[
        "--fold-window-secs",
        "2",
        "--listen-interval-secs",
        "3600",
        "--snapshot-interval-secs",
        "0",
    ]);
    // A burst that took half the window (a stalled machine) might straddle it: then
    // again on a new port, which is a new key.
    let mut burst = None;
    for _ in 0..5 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let held: Vec<_> = (0..5)
            .map(|_| {
                let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                (client, listener.accept().unwrap())
            })
            .collect();
        if started.elapsed() < WINDOW / 2 {
            burst = Some((listener, started, held));
            break;
        }
    }
    let (listener, started, _held) = burst.expect("five loopback connects took over 1 s, 5 times");
    let port = listener.local_addr().unwrap().port();
    std::thread::sleep(
        (started + WINDOW + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    );
    let _again = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _accepted = listener.accept().unwrap();

    let events = agent.wait_events("each key reported twice", Duration::from_secs(30), |evs| {
        actions(evs, "connect", port).len() >= 2 && actions(evs, "accept", port).len() >= 2
    });
    for action in ["connect", "accept"] {
        let seen = actions(&events, action, port);
        assert_eq!(seen.len(), 2, "{action}: {seen:#?}");
        assert_eq!(
            seen[0]["hids"]["socket"]["folded"], 0,
            "{action}: {seen:#?}"
        );
        assert_eq!(
            seen[1]["hids"]["socket"]["folded"], 4,
            "{action}: {seen:#?}"
        );
        for e in seen {
            assert_eq!(e["process"]["pid"], std::process::id(), "{e:#}");
        }
    }
}

fn inode_of(fd: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn socket_inode(e: &Value) -> Option<u64> {
    e["hids"]["socket"]["inode"].as_u64()
}

/// Listener scans reuse the holders they remembered and walk every descriptor only
/// every 12th scan (or when something changed). Over 15 scans of a host where our
/// listeners never close, none is ever reported closed, and neither is any other
/// listener that was there at the first scan and is still there at the end.
#[test]
fn listeners_held_all_along_never_flap_across_cached_scans_and_refresh_walks() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    // IPv6 too where the host has it (ipv6_connects_and_accepts_say_ipv6 says when not).
    let tcp6 = TcpListener::bind("[::1]:0").ok();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Unbound: no address, not in the kernel's UDP tables.
    let unbound = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None).unwrap();
    let mut ours = vec![
        ("tcp", inode_of(tcp.as_fd())),
        ("udp", inode_of(udp.as_fd())),
    ];
    ours.extend(tcp6.as_ref().map(|l| ("tcp6", inode_of(l.as_fd()))));
    let unbound_inode = inode_of(unbound.as_fd());
    // Scans 2 s apart and stats every second: every scan's stats are seen.
    let agent = network_agent(&[
        "--listen-interval-secs",
        "2",
        "--stats-interval-secs",
        "1",
        "--connections",
        "false",
        "--snapshot-interval-secs",
        "0",
    ]);
    let scans = |s: &Value| s["listeners"]["scans"].as_u64().unwrap_or(0);
    let events = agent.wait_events("15 listener scans", Duration::from_secs(180), |evs| {
        stats(evs).iter().any(|s| scans(s) >= 15)
    });
    let still_there: HashSet<u64> = once(
        &["--listeners-only", "--snapshot-method", "sock_diag"],
        "",
        |l| l["event"]["action"] == "listening",
    )
    .iter()
    .filter_map(socket_inode)
    .collect();

    let network: Vec<&Value> = events
        .iter()
        .filter(|e| e["hids"]["plugin"] == "network" && e["hids"]["socket"].is_object())
        .collect();
    let first: HashSet<u64> = network
        .iter()
        .filter(|e| e["event"]["action"] == "listening" && e["hids"]["snapshot"] == true)
        .filter_map(|e| socket_inode(e))
        .collect();
    for (name, inode) in ours {
        assert!(
            first.contains(&inode),
            "our {name} listener is not in the first snapshot"
        );
        assert!(
            still_there.contains(&inode),
            "our {name} listener is not in --once"
        );
    }
    let changes: Vec<&&Value> = network
        .iter()
        .filter(|e| e["hids"]["snapshot"] != true)
        .collect();
    let flaps: Vec<_> = changes
        .iter()
        .filter(|e| socket_inode(e).is_some_and(|i| first.contains(&i) && still_there.contains(&i)))
        .collect();
    assert!(
        flaps.is_empty(),
        "listeners open all along reported as changed: {flaps:#?}"
    );
    let unbound_changes: Vec<_> = changes
        .iter()
        .filter(|e| socket_inode(e) == Some(unbound_inode))
        .collect();
    assert!(
        unbound_changes.is_empty(),
        "the unbound UDP socket flapped: {unbound_changes:#?}"
    );

    let records = stats(&events);
    let walks: Vec<String> = records
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                scans(s),
                s["last_listener_scan"]["walked_because"]
                    .as_str()
                    .unwrap_or("-")
            )
        })
        .collect();
    eprintln!(
        "{} listeners at the first scan, {} changes after it; scan:walked_because {walks:?}",
        first.len(),
        changes.len()
    );
    let last_scan = |s: &Value| s["last_listener_scan"].clone();
    assert!(
        records
            .iter()
            .any(|s| s["last_listener_scan"]["owners_confirmed"]
                .as_u64()
                .unwrap_or(0)
                > 0),
        "no scan confirmed a remembered holder: {:#?}",
        records.iter().map(|s| last_scan(s)).collect::<Vec<_>>()
    );
    let refreshes: Vec<_> = records.iter().filter(|s| scans(s) % 12 == 1).collect();
    assert!(
        refreshes.iter().any(|s| scans(s) == 13),
        "no stats record after the 13th scan: {records:#?}"
    );
    for s in refreshes {
        assert_eq!(
            s["last_listener_scan"]["walked_because"],
            "refresh",
            "scan {} (1 + a multiple of 12) walks every descriptor: {:#}",
            scans(s),
            last_scan(s)
        );
    }
}
