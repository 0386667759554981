//! Times sock_diag dumps on this host: `cargo run --release -p hids-netlink --example
//! sock_diag_bench [-- /proc/<pid>/ns/net]`. Hold the sockets elsewhere (a socket farm);
//! this only dumps them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::time::{Duration, Instant};

use hids_netlink::sock_diag::{state_bit, ALL_STATES, TCP_LISTEN};
use hids_netlink::{DiagSocket, DumpStats, Family, Protocol};

fn open(netns: Option<&std::fs::File>) -> DiagSocket {
    match netns {
        Some(ns) => DiagSocket::open_in_netns(ns).unwrap(),
        None => DiagSocket::open().unwrap(),
    }
}

/// Dumps IPv4 and IPv6 of one protocol on a fresh socket, as a snapshot would.
fn dump(netns: Option<&std::fs::File>, protocol: Protocol, states: u32) -> (Duration, DumpStats) {
    let start = Instant::now();
    let mut sock = open(netns);
    let mut total = DumpStats::default();
    let mut ports = 0u64;
    for family in [Family::V4, Family::V6] {
        let stats = sock
            .dump(family, protocol, states, |s| {
                ports += u64::from(s.local.port())
            })
            .unwrap();
        total.add(&stats);
    }
    std::hint::black_box(ports);
    (start.elapsed(), total)
}

fn main() {
    let netns = std::env::args()
        .nth(1)
        .map(|p| std::fs::File::open(p).unwrap());
    let cases = [
        ("tcp all states", Protocol::Tcp, ALL_STATES),
        ("tcp listen only", Protocol::Tcp, state_bit(TCP_LISTEN)),
        ("udp all states", Protocol::Udp, ALL_STATES),
    ];
    for (name, protocol, states) in cases {
        let mut times = Vec::new();
        let mut last = DumpStats::default();
        for _ in 0..7 {
            let (took, stats) = dump(netns.as_ref(), protocol, states);
            times.push(took);
            last = stats;
        }
        times.sort();
        println!(
            "{name}: {} sockets, {} datagrams, min {:.2} ms, median {:.2} ms, max {:.2} ms, parse_errors {} truncated {}",
            last.sockets,
            last.datagrams,
            times[0].as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            last.parse_errors,
            last.truncated_datagrams,
        );
    }
}
