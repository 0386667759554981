//! The process plugin's eBPF capture end to end: the real kernel, real processes.
//! These need root and a kernel with BTF (CI has both); elsewhere they say so and pass,
//! under CI they fail.

use std::process::Command;
use std::time::Duration;

use hids_test_support::{execs_with_arg, Agent};
use hids_test_support::{require_root, skip_unless};
use serde_json::Value;

fn btf() -> bool {
    std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
}

const NO_BTF: &str = "this kernel has no BTF, so the eBPF backend cannot load";

fn stats(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"]["action"] == "stats" && e["hids"]["plugin"] == "process")
        .map(|e| &e["hids"]["stats"])
        .collect()
}

#[test]
fn processes_that_exit_at_once_are_reported_with_full_args() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    // The default backend (auto); stats every second so the status shows it soon.
    let agent = Agent::start(
        "[[plugins]]\nname = \"process\"\nargs = [\"--stats-interval-secs\", \"1\"]\n",
    );
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    // Execs back to back from one shell: each is gone long before /proc could be read.
    let n = 300;
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do /bin/true quick-{tag}-$i; i=$((i+1)); done"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let last = format!("quick-{tag}-{}", n - 1);
    let events = agent.wait_events("the last exec", Duration::from_secs(20), |evs| {
        !execs_with_arg(evs, &last).is_empty()
    });
    for i in 0..n {
        let arg = format!("quick-{tag}-{i}");
        let found = execs_with_arg(&events, &arg);
        assert_eq!(found.len(), 1, "exec {i} reported {} times", found.len());
        let ev = found[0];
        assert_eq!(ev["process"]["args"], serde_json::json!(["/bin/true", arg]));
        assert_eq!(ev["hids"]["capture"], "ebpf", "{ev:#}");
        assert!(ev["hids"]["incomplete"].is_null(), "{ev:#}");
        assert_eq!(ev["process"]["name"], "true");
        assert_eq!(ev["process"]["executable"], "/usr/bin/true");
        assert!(ev["process"]["parent"]["pid"].as_u64().unwrap() > 1);
        assert_eq!(ev["user"]["id"], "0");
        assert!(ev["process"]["entity_id"].is_string());
    }
    // The backend is in the status, for the operator.
    agent.wait_status("the backend in the status", Duration::from_secs(10), |st| {
        Agent::plugin(st, "process")["health"]["capture"] == "ebpf"
    });
    let out = Command::new(hids_test_support::bin("hids-agent"))
        .args(["status", "--state-dir"])
        .arg(agent.state_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("process capture: ebpf"), "{text}");
}

#[test]
fn argv_past_the_bound_is_cut_and_flagged() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    let agent =
        Agent::start("[[plugins]]\nname = \"process\"\nargs = [\"--max-args-bytes\", \"1024\"]\n");
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    let long = "x".repeat(5000);
    let status = Command::new("/bin/true")
        .args([&format!("long-{tag}"), &long])
        .status()
        .unwrap();
    assert!(status.success());
    let events = agent.wait_events("the long exec", Duration::from_secs(10), |evs| {
        !execs_with_arg(evs, &format!("long-{tag}")).is_empty()
    });
    let ev = execs_with_arg(&events, &format!("long-{tag}"))[0];
    assert_eq!(ev["hids"]["args_truncated"], true, "{ev:#}");
    assert_eq!(ev["hids"]["capture"], "ebpf");
    let args = ev["process"]["args"].as_array().unwrap();
    assert_eq!(args[0], "/bin/true");
    let kept: usize = args.iter().map(|a| a.as_str().unwrap().len() + 1).sum();
    assert!(kept <= 1024 + 1, "kept {kept} bytes");
    assert!(args[2].as_str().unwrap().starts_with("xxxx"));
}

#[test]
fn refused_ebpf_falls_back_to_the_proc_connector_and_says_so() {
    require_root!();
    // Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN the kernel refuses every eBPF
    // program, as a locked-down host would; CAP_NET_ADMIN still allows the connector.
    let plugin = hids_test_support::bin("hids-plugin-process");
    let agent = Agent::start(&format!(
        "[[plugins]]\nname = \"process\"\npath = \"/usr/bin/setpriv\"\n\
         args = [\"--bounding-set=-bpf,-perfmon,-sys_admin\", \"--\", {:?}, \
         \"--stats-interval-secs\", \"1\"]\n",
        plugin.display().to_string()
    ));
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 0.5", &format!("fallback-{tag}")])
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let events = agent.wait_events("the exec and stats", Duration::from_secs(10), |evs| {
        !execs_with_arg(evs, &format!("fallback-{tag}")).is_empty() && !stats(evs).is_empty()
    });
    let ev = execs_with_arg(&events, &format!("fallback-{tag}"))[0];
    assert_eq!(ev["hids"]["capture"], "cn_proc", "{ev:#}");
    let s = stats(&events)[0];
    assert_eq!(s["capture"], "cn_proc");
    assert!(
        s["capture_fallback"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{s:#}"
    );
    assert!(agent.stderr_contains_soon("eBPF capture unavailable", Duration::from_secs(5)));
}

#[test]
fn ring_buffer_drops_are_counted_in_the_stats() {
    require_root!();
    skip_unless!(btf(), NO_BTF);
    // One page of ring buffer holds a single exec with a 3 KB argument: execs from two
    // CPUs at once cannot all fit, and each that does not is counted.
    let agent = Agent::start(
        "[[plugins]]\nname = \"process\"\n\
         args = [\"--ring-buffer-bytes\", \"4096\", \"--stats-interval-secs\", \"1\"]\n",
    );
    agent.wait_process_ready();
    let pad = "y".repeat(3000);
    let storm = format!("i=0; while [ $i -lt 300 ]; do /bin/true {pad}; i=$((i+1)); done");
    let mut shells: Vec<_> = (0..4)
        .map(|_| {
            Command::new("/bin/sh")
                .args(["-c", &storm])
                .spawn()
                .unwrap()
        })
        .collect();
    for s in &mut shells {
        assert!(s.wait().unwrap().success());
    }
    let events = agent.wait_events("counted drops", Duration::from_secs(15), |evs| {
        stats(evs)
            .iter()
            .any(|s| s["dropped"]["ring_buffer_full"].as_u64().unwrap_or(0) > 0)
    });
    let s = stats(&events)
        .into_iter()
        .rfind(|s| s["dropped"]["ring_buffer_full"].as_u64().unwrap_or(0) > 0)
        .unwrap();
    assert_eq!(s["capture"], "ebpf");
    assert!(s["dropped_execs"].as_u64().unwrap() > 0, "{s:#}");
}
