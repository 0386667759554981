//! What the network plugin's integration tests share: the plugin under a real agent, the
//! BTF check, and the queries they make of its events.

#![allow(dead_code)] // Each test file uses its own part.

use std::time::Duration;

use hids_test_support::Agent;
use serde_json::Value;

pub const NO_BTF: &str = "this kernel has no BTF, so the network plugin's eBPF cannot load";

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_hids-plugin-network");

pub fn btf() -> bool {
    std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// A standalone agent whose one plugin is the network plugin with `args`, once the
/// plugin has said hello.
pub fn network_agent(args: &[&str]) -> Agent {
    let agent = Agent::start(&plugin_entry(args));
    wait_framed(&agent);
    agent
}

/// `[[plugins]]` for the network plugin with `args` (for an agent's config).
pub fn plugin_entry(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[plugins]]\nname = \"network\"\nargs = [{}]\n",
        args.join(", ")
    )
}

pub fn wait_framed(agent: &Agent) {
    agent.wait_status(
        "the network plugin to say hello",
        Duration::from_secs(30),
        |s| Agent::plugin(s, "network")["framed"] == true,
    );
}

/// The network plugin's events of `action` with `port` at either end.
pub fn actions<'a>(events: &'a [Value], action: &str, port: u16) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["event"]["action"] == action
                && e["hids"]["plugin"] == "network"
                && (e["destination"]["port"] == port || e["source"]["port"] == port)
        })
        .collect()
}

/// The network plugin's stats records (`hids.stats`), in order.
pub fn stats(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["hids"]["plugin"] == "network" && e["event"]["action"] == "stats")
        .map(|e| &e["hids"]["stats"])
        .collect()
}

/// The inode of the network namespace `/proc/<pid>/ns/net` (`self` for this process).
pub fn netns_of(pid: &str) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/net: {e}"))
        .ino()
}

/// Runs `hids-plugin-network --once` with `flags`; the lines that contain `needle` and
/// that `keep` wants, parsed. The host may hold hundreds of thousands of sockets (another
/// test's socket farm): only the lines with `needle` are parsed. Panics with its stderr
/// when it fails.
pub fn once(flags: &[&str], needle: &str, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let out = std::process::Command::new(PLUGIN)
        .arg("--once")
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("running {PLUGIN}: {e}"));
    assert!(
        out.status.success(),
        "--once {flags:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && contains(l, needle.as_bytes()))
        .map(|l| {
            serde_json::from_slice(l).unwrap_or_else(|e| {
                panic!(
                    "--once printed a line that is not JSON ({e}): {}",
                    String::from_utf8_lossy(l)
                )
            })
        })
        .filter(|v| keep(v))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
