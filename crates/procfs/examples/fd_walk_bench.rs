//! Times the `/proc/*/fd` socket-owner walk on this host: `cargo run --release -p
//! hids-procfs --example fd_walk_bench`. Hold the sockets elsewhere (a socket farm).
//! Prints wall time and this process's CPU time (user + system), which a busy machine
//! disturbs less.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::collections::HashSet;
use std::time::Instant;

use hids_procfs::{net_namespaces, parse_stat, socket_owners, ProcDir, WalkOptions};

fn cpu_ms() -> u64 {
    let mut buf = Vec::new();
    let me = ProcDir::open("/proc", std::process::id()).unwrap();
    me.read("stat", &mut buf, 4096).unwrap();
    let stat = parse_stat(&buf).unwrap();
    (stat.utime_ticks + stat.stime_ticks) * 10
}

fn main() {
    let mut sample: HashSet<u64> = HashSet::new();
    for threads in [1, 2] {
        let options = WalkOptions {
            threads,
            ..WalkOptions::default()
        };
        for round in 0..3 {
            let (cpu, start) = (cpu_ms(), Instant::now());
            let (map, stats) = socket_owners("/proc", &options, None).unwrap();
            let took = start.elapsed();
            println!(
                "full walk, {threads} thread(s), round {round}: {:.1} ms wall, {} ms cpu, {} inodes, {} fds read, {} unreadable",
                took.as_secs_f64() * 1e3,
                cpu_ms() - cpu,
                map.len(),
                stats.fds_read,
                stats.unreadable_entries,
            );
            // Sixteen inodes stand in for the listeners of a LISTEN dump.
            sample = map.keys().copied().take(16).collect();
        }
    }
    for round in 0..3 {
        let (cpu, start) = (cpu_ms(), Instant::now());
        let (map, stats) = socket_owners("/proc", &WalkOptions::default(), Some(&sample)).unwrap();
        println!(
            "filtered walk, round {round}: {:.1} ms wall, {} ms cpu, {} inodes kept, {} fds read",
            start.elapsed().as_secs_f64() * 1e3,
            cpu_ms() - cpu,
            map.len(),
            stats.fds_read
        );
    }
    let start = Instant::now();
    let namespaces = net_namespaces("/proc").unwrap();
    println!(
        "net_namespaces: {:.2} ms, {} namespaces",
        start.elapsed().as_secs_f64() * 1e3,
        namespaces.len()
    );
}
