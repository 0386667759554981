//! The kernel wakes the capture thread at most once per linger while records come, and
//! the thread reads the rest on its own timer: every record of a storm must still be
//! reported, the last ones included, and a lone exec after a quiet spell must arrive
//! without waiting for the idle timeout. Needs root, BTF and python3 (see `common`).
#![allow(clippy::unwrap_used)] // test code: a failure here is a failed test

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{can_run, execs_with_arg, tag, Plugin};

/// One test at a time: a storm beside the lone execs would delay them for its own sake.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_storm_is_reported_to_its_last_exec() {
    if !can_run() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let plugin = Plugin::start(&["--capture", "ebpf"]);
    let tag = tag("storm");
    let n = 2000;
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do /bin/true {tag}-$i; i=$((i+1)); done"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let last = format!("{tag}-{}", n - 1);
    let events = plugin.wait_events("the storm's last exec", Duration::from_secs(30), |evs| {
        !execs_with_arg(evs, &last).is_empty()
    });
    // Counted in one pass: a search per exec would take long in a debug build.
    let mut reported: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e["event"]["action"] == "exec" {
            if let Some(arg) = e["process"]["args"][1].as_str() {
                *reported.entry(arg).or_default() += 1;
            }
        }
    }
    for i in 0..n {
        let found = reported.get(format!("{tag}-{i}").as_str()).copied();
        assert_eq!(found, Some(1), "exec {i} reported {found:?} times");
    }
}

#[test]
fn a_lone_exec_wakes_the_reader() {
    if !can_run() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let plugin = Plugin::start(&["--capture", "ebpf", "--linger-us", "10000"]);
    // Without a wake-up a record waits for the idle timeout (500 ms, so ~250 ms in the
    // median): a median well under it means the kernel woke the reader. Generous for a
    // loaded machine, where a woken reader may still wait for a CPU.
    let mut delays = Vec::new();
    for i in 0..9 {
        std::thread::sleep(Duration::from_millis(150));
        let arg = tag(&format!("lone-{i}"));
        let began = Instant::now();
        assert!(Command::new("/bin/true")
            .arg(&arg)
            .status()
            .unwrap()
            .success());
        plugin.wait_events("the lone exec", Duration::from_secs(10), |evs| {
            !execs_with_arg(evs, &arg).is_empty()
        });
        let seen = plugin
            .seen_at(|e| !execs_with_arg(std::slice::from_ref(e), &arg).is_empty())
            .unwrap();
        delays.push(seen.duration_since(began));
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(median < Duration::from_millis(200), "delays: {delays:?}");
}
