//! Credential and session changes with the eBPF backend and no proc connector beside it:
//! from fentry where the kernel allows it, else from the set*id and setsid syscall
//! tracepoints. Needs root, BTF and python3 (see `common`).
#![allow(clippy::unwrap_used)] // test code: a failure here is a failed test

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::{actions_of, can_run, execs_with_arg, tag, Plugin};

/// NETLINK_CONNECTOR, the proc connector's netlink protocol.
const NETLINK_CONNECTOR: u32 = 11;

/// The plugin's sockets of the proc connector's protocol, by inode.
fn connector_sockets(pid: u32) -> Vec<u64> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let target = std::fs::read_link(e.ok()?.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    std::fs::read_to_string(format!("/proc/{pid}/net/netlink"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let protocol: u32 = cols.get(1)?.parse().ok()?;
            let inode: u64 = cols.get(9)?.parse().ok()?;
            (protocol == NETLINK_CONNECTOR && inodes.contains(&inode)).then_some(inode)
        })
        .collect()
}

#[test]
fn setuid_setgid_and_setsid_are_reported_without_the_proc_connector() {
    if !can_run() {
        return;
    }
    let plugin = Plugin::start(&[
        "--emit",
        "exec,exit,setuid,setgid,setsid",
        "--stats-interval-secs",
        "1",
    ]);
    let hook = plugin.wait_log(
        "credential and session changes (setuid, setgid, setsid): from",
        Duration::from_secs(5),
    );
    assert!(
        hook.contains("fentry on commit_creds") || hook.contains("syscall tracepoints"),
        "{hook}"
    );
    assert_eq!(connector_sockets(plugin.pid()), Vec::<u64>::new());

    // One process changes its group, its user and its session; another sets the user it
    // already has, which changes nothing and is not reported.
    let changes = tag("changes");
    let script = "import os, sys\n\
                  os.setsid()\n\
                  os.setresgid(4242, 4242, 4242)\n\
                  os.setreuid(4343, 4343)\n";
    let mut child = Command::new("python3")
        .args(["-c", script, &changes])
        .spawn()
        .unwrap();
    let changer = child.id();
    assert!(child.wait().unwrap().success());
    let same = tag("same");
    let mut child = Command::new("python3")
        .args(["-c", "import os, sys\nos.setuid(os.getuid())\n", &same])
        .spawn()
        .unwrap();
    let unchanged = child.id();
    assert!(child.wait().unwrap().success());

    let events = plugin.wait_events("the changes", Duration::from_secs(20), |evs| {
        ["setuid", "setgid", "setsid"]
            .iter()
            .all(|a| !actions_of(evs, a, changer).is_empty())
            && !actions_of(evs, "exit", unchanged).is_empty()
    });
    assert!(!execs_with_arg(&events, &changes).is_empty());
    let setuid = actions_of(&events, "setuid", changer);
    assert_eq!(setuid.len(), 1, "{setuid:#?}");
    assert_eq!(setuid[0]["user"]["id"], "4343", "{:#}", setuid[0]);
    let setgid = actions_of(&events, "setgid", changer);
    assert_eq!(setgid.len(), 1, "{setgid:#?}");
    assert_eq!(setgid[0]["group"]["id"], "4242", "{:#}", setgid[0]);
    assert_eq!(actions_of(&events, "setsid", changer).len(), 1);
    assert!(
        actions_of(&events, "setuid", unchanged).is_empty(),
        "setuid to the same user reported"
    );
    // Still no proc connector after events flowed.
    assert_eq!(connector_sockets(plugin.pid()), Vec::<u64>::new());
    let source = ids_capture(&plugin);
    assert!(
        source == "fentry" || source == "syscall_tracepoints",
        "stats say ids from {source:?}"
    );
}

/// Where the stats record says credential changes come from.
fn ids_capture(plugin: &Plugin) -> String {
    let events = plugin.wait_events("a stats record", Duration::from_secs(20), |evs| {
        evs.iter().any(|e| e["event"]["action"] == "stats")
    });
    let stats = events
        .iter()
        .find(|e| e["event"]["action"] == "stats")
        .unwrap();
    stats["hids"]["stats"]["ids_capture"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn without_credential_events_asked_for_nothing_is_hooked_for_them() {
    if !can_run() {
        return;
    }
    let plugin = Plugin::start(&["--emit", "exec,exit", "--stats-interval-secs", "1"]);
    assert_eq!(ids_capture(&plugin), "not_wanted");
    assert_eq!(connector_sockets(plugin.pid()), Vec::<u64>::new());
}
