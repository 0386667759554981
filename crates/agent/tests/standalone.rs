//! The standalone agent end to end: real binaries, real kernel events, real processes.

use std::process::Command;
use std::time::{Duration, Instant};

use hids_test_support::require_root;
use hids_test_support::{alive, group_members, Agent};
use rustix::process::Signal;
use serde_json::Value;

/// The live exec of `pid` (not the report of a process found running at start, whose
/// pid a new process may have taken since).
fn exec_of(events: &[Value], pid: u32) -> Option<&Value> {
    events.iter().find(|e| {
        e["event"]["action"] == "exec"
            && e["process"]["pid"] == pid
            && e["hids"]["snapshot"].is_null()
    })
}

fn args_of(ev: &Value) -> Option<Vec<String>> {
    ev["process"]["args"].as_array().map(|a| {
        a.iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect()
    })
}

/// A shell started before the agent, its tag as `$0`, in a process group of its own
/// (killed whole, sleep included, when dropped).
struct Before {
    child: std::process::Child,
    needle: String,
}

impl Before {
    fn start(tag: &str) -> Before {
        use std::os::unix::process::CommandExt as _;
        let needle = format!("before-{tag}");
        let child = Command::new("/bin/sh")
            .args(["-c", "sleep 60; true", &needle])
            .process_group(0)
            .spawn()
            .expect("/bin/sh runs");
        Before { child, needle }
    }

    fn reported_in<'a>(&self, events: &'a [Value]) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| args_of(e).is_some_and(|a| a.last() == Some(&self.needle)))
            .collect()
    }
}

impl Drop for Before {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// Runs `/bin/true after-<tag>` and waits for its live exec: the events seen by then,
/// and its pid.
fn run_and_see(agent: &Agent, tag: &str) -> (Vec<Value>, u32) {
    let mut after = Command::new("/bin/true")
        .arg(format!("after-{tag}"))
        .spawn()
        .expect("/bin/true runs");
    let pid = after.id();
    let _ = after.wait();
    let events = agent.wait_events("the live exec", Duration::from_secs(10), |evs| {
        exec_of(evs, pid).is_some()
    });
    (events, pid)
}

#[test]
fn processes_running_before_the_agent_are_reported_once_from_proc() {
    require_root!();
    let tag = hids_test_support::tag();
    // Started before the agent: no kernel event will ever tell of it.
    let before = Before::start(&tag);
    let agent = Agent::start("");
    agent.wait_process_ready();
    let events = agent.wait_events("the running process", Duration::from_secs(15), |evs| {
        !before.reported_in(evs).is_empty()
    });
    let ev = before.reported_in(&events)[0].clone();
    assert_eq!(ev["event"]["action"], "exec", "{ev:#}");
    assert_eq!(ev["event"]["kind"], "state", "{ev:#}");
    assert_eq!(ev["event"]["type"][0], "info", "{ev:#}");
    assert_eq!(ev["hids"]["snapshot"], true, "{ev:#}");
    assert_eq!(ev["hids"]["capture"], "procfs", "{ev:#}");
    assert_eq!(ev["process"]["pid"], before.child.id(), "{ev:#}");
    assert_eq!(ev["process"]["parent"]["pid"], std::process::id(), "{ev:#}");
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(
        ev["process"]["executable"],
        shell.to_str().unwrap(),
        "{ev:#}"
    );
    // Its time is the process's start, not the moment it was read.
    assert_eq!(ev["@timestamp"], ev["process"]["start"], "{ev:#}");
    // What starts now is seen live, without the mark.
    let (events, after_pid) = run_and_see(&agent, &tag);
    let live = exec_of(&events, after_pid).unwrap();
    assert_eq!(live["event"]["kind"], "event", "{live:#}");
    assert!(live["hids"]["snapshot"].is_null(), "{live:#}");
    // Reported once, and kernel threads (kthreadd is pid 2) not at all.
    assert_eq!(before.reported_in(&events).len(), 1, "reported once");
    assert!(
        !events
            .iter()
            .any(|e| e["hids"]["snapshot"] == true && e["process"]["pid"] == 2),
        "kthreadd is not a process anyone ran"
    );
}

#[test]
fn report_running_false_leaves_running_processes_out() {
    require_root!();
    let tag = hids_test_support::tag();
    let before = Before::start(&tag);
    let agent =
        Agent::start("[[plugins]]\nname = \"process\"\nargs = [\"--report-running\", \"false\"]\n");
    agent.wait_process_ready();
    // Past the latest moment the report could start (the host's offset within 5 s),
    // proven by a live exec seen after it.
    std::thread::sleep(Duration::from_secs(6));
    let (events, _) = run_and_see(&agent, &tag);
    assert!(before.reported_in(&events).is_empty());
    assert!(!events.iter().any(|e| e["hids"]["snapshot"] == true));
}

#[test]
fn spawned_processes_appear_with_args_and_parent() {
    require_root!();
    let agent = Agent::start("");
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    // A process that lives long enough to be read in full; the tag rides as $0.
    let mut long = Command::new("/bin/sh")
        .args(["-c", "sleep 1", &format!("long-{tag}")])
        .spawn()
        .unwrap();
    // And one that exits at once.
    let mut short = Command::new("/bin/true")
        .arg(format!("short-{tag}"))
        .spawn()
        .unwrap();
    let (long_pid, short_pid) = (long.id(), short.id());
    short.wait().unwrap();
    long.wait().unwrap();

    let events = agent.wait_events("both execs", Duration::from_secs(10), |evs| {
        exec_of(evs, long_pid).is_some() && exec_of(evs, short_pid).is_some()
    });
    let long_ev = exec_of(&events, long_pid).unwrap();
    assert_eq!(
        args_of(long_ev).unwrap(),
        vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            "sleep 1".into(),
            format!("long-{tag}")
        ]
    );
    assert_eq!(long_ev["process"]["parent"]["pid"], std::process::id());
    assert_eq!(long_ev["event"]["category"][0], "process");
    assert_eq!(long_ev["event"]["type"][0], "start");
    assert_eq!(long_ev["process"]["executable"], "/usr/bin/dash");
    assert!(long_ev["process"]["command_line"]
        .as_str()
        .unwrap()
        .contains(&tag));
    assert!(long_ev["process"]["working_directory"].is_string());
    assert_eq!(long_ev["user"]["id"], "0");
    assert_eq!(long_ev["user"]["name"], "root");
    assert!(long_ev["host"]["id"].is_string() && long_ev["host"]["hostname"].is_string());
    assert_eq!(long_ev["hids"]["plugin"], "process");
    assert!(long_ev["hids"]["run_id"].is_string());
    assert!(long_ev["event"]["sequence"].as_u64().unwrap() > 0);

    // The short one is reported either complete or marked incomplete, never with
    // somebody else's command line.
    let short_ev = exec_of(&events, short_pid).unwrap();
    match args_of(short_ev) {
        Some(args) => assert_eq!(args, vec!["/bin/true".to_owned(), format!("short-{tag}")]),
        None => assert!(short_ev["hids"]["incomplete"].is_string(), "{short_ev:#}"),
    }
    assert_eq!(short_ev["process"]["parent"]["pid"], std::process::id());

    // The child of the long-lived shell names its parent, the shell.
    let sleep_ev = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["parent"]["pid"] == long_pid)
        .expect("the shell's child is reported");
    assert_eq!(args_of(sleep_ev).unwrap(), vec!["sleep", "1"]);
    assert_eq!(sleep_ev["process"]["parent"]["executable"], "/usr/bin/dash");

    // Sequence numbers of one run have no gaps at the source.
    let run = long_ev["hids"]["run_id"].clone();
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["hids"]["run_id"] == run)
        .map(|e| e["event"]["sequence"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn exit_events_carry_the_exit_code() {
    require_root!();
    let agent = Agent::start("");
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 0.2; exit 7", &format!("exit-{tag}")])
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let events = agent.wait_events("the exit", Duration::from_secs(10), |evs| {
        evs.iter()
            .any(|e| e["event"]["action"] == "exit" && e["process"]["pid"] == pid)
    });
    let exit = events
        .iter()
        .find(|e| e["event"]["action"] == "exit" && e["process"]["pid"] == pid)
        .unwrap();
    assert_eq!(exit["process"]["exit_code"], 7);
    assert_eq!(exit["event"]["type"][0], "end");
}

#[test]
fn stats_record_declares_counts_and_every_event_carries_the_labels() {
    require_root!();
    let agent = Agent::start(
        "[[plugins]]\nname = \"process\"\nargs = [\"--stats-interval-secs\", \"1\"]\n\
         [labels]\nidc = \"bj1\"\nproduct = \"pay\"\n",
    );
    let events = agent.wait_events("a stats record", Duration::from_secs(10), |evs| {
        evs.iter()
            .any(|e| e["event"]["action"] == "stats" && e["hids"]["plugin"] == "process")
    });
    // The plugin's stats: the agent and pipeline streams have `stats` records too.
    let stats = events
        .iter()
        .find(|e| e["event"]["action"] == "stats" && e["hids"]["plugin"] == "process")
        .unwrap();
    assert_eq!(stats["event"]["kind"], "metric");
    let s = &stats["hids"]["stats"];
    for key in ["events_emitted", "execs_seen", "incomplete", "dropped"] {
        assert!(!s[key].is_null(), "stats lacks {key}: {s:#}");
    }
    assert!(s["dropped"]["capture_queue_full"].is_u64());
    assert!(s["dropped"]["kernel_lost"].is_u64());
    // The server groups alerts by the labels each event carries: every stream has them.
    for e in &events {
        assert_eq!(e["labels"]["idc"], "bj1", "{e}");
        assert_eq!(e["labels"]["product"], "pay", "{e}");
    }
    // The same counters reach the status file as the plugin's health.
    agent.wait_status("health in the status", Duration::from_secs(5), |st| {
        Agent::plugin(st, "process")["health"]["execs_seen"].is_u64()
    });
}

#[test]
fn crashing_plugin_is_restarted_then_quarantined() {
    let agent = Agent::start(
        "[supervisor]\nbackoff_initial_ms = 50\nquarantine_after = 3\n\
         [[plugins]]\nname = \"crasher\"\npath = \"/bin/sh\"\nargs = [\"-c\", \"exit 3\"]\n",
    );
    let status = agent.wait_status("quarantine", Duration::from_secs(10), |s| {
        Agent::plugin(s, "crasher")["state"] == "quarantined"
    });
    let p = Agent::plugin(&status, "crasher");
    assert_eq!(p["restarts"], 2, "{p:#}");
    assert_eq!(p["consecutive_crashes"], 3);
    assert_eq!(p["last_exit"], "exit status 3");
    // Quarantined means no more restarts.
    std::thread::sleep(Duration::from_millis(700));
    let later = agent.status().unwrap();
    assert_eq!(Agent::plugin(&later, "crasher")["restarts"], 2);
    assert!(agent.stderr().contains("quarantined"));
}

#[test]
fn unframed_plugin_output_is_discarded_and_the_master_carries_on() {
    let agent = Agent::start(
        "[[plugins]]\nname = \"chatty\"\npath = \"/bin/sh\"\nargs = [\"-c\", \"echo not a frame; exec sleep 30\"]\n\
         [[plugins]]\nname = \"quiet\"\npath = \"/bin/sleep\"\nargs = [\"30\"]\n",
    );
    let status = agent.wait_status(
        "the chatty plugin to be classified",
        Duration::from_secs(10),
        |s| Agent::plugin(s, "chatty")["framed"] == false,
    );
    let p = Agent::plugin(&status, "chatty");
    assert_eq!(p["state"], "running");
    assert!(p["bytes_discarded"].as_u64().unwrap() >= 10);
    assert_eq!(Agent::plugin(&status, "quiet")["state"], "running");
    assert!(
        agent.events().is_empty(),
        "garbage must never reach the sinks"
    );
}

#[test]
fn broken_frames_after_hello_get_the_plugin_killed_and_restarted() {
    // A valid hello, then a header announcing a 2 GiB frame.
    let script = r#"printf 'HF\001\000\055\000\000\000{"protocol":1,"name":"bad","version":"0.0.1"}'; printf 'HF\002\000\377\377\377\177'; exec sleep 30"#;
    let agent = Agent::start(&format!(
        "[supervisor]\nbackoff_initial_ms = 50\nquarantine_after = 100\n\
         [[plugins]]\nname = \"bad\"\npath = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n"
    ));
    let status = agent.wait_status(
        "a rejected frame and a restart",
        Duration::from_secs(10),
        |s| {
            let p = Agent::plugin(s, "bad");
            p["frames_rejected"].as_u64().unwrap_or(0) >= 1
                && p["restarts"].as_u64().unwrap_or(0) >= 1
        },
    );
    let p = Agent::plugin(&status, "bad");
    let why = p["last_exit"].as_str().unwrap();
    assert!(
        why.contains("protocol violation") && why.contains("exceeds the limit"),
        "{p:#}"
    );
    assert_eq!(p["version"], "0.0.1", "the hello itself was accepted");
    assert!(agent.events().is_empty());
}

#[test]
fn sigterm_stops_everything_within_five_seconds() {
    // A plugin that ignores SIGTERM and has a child of its own.
    let agent_cfg = "[supervisor]\nstop_timeout_ms = 1000\n\
         [[plugins]]\nname = \"stubborn\"\npath = \"/bin/sh\"\nargs = [\"-c\", \"trap '' TERM; sleep 300 & while :; do sleep 1; done\"]\n";
    let mut agent = Agent::start(agent_cfg);
    let status = agent.wait_status("the plugin to run", Duration::from_secs(10), |s| {
        Agent::plugin(s, "stubborn")["pid"].is_u64()
    });
    let pgid = Agent::plugin(&status, "stubborn")["pid"].as_u64().unwrap() as u32;
    std::thread::sleep(Duration::from_millis(300));
    assert!(group_members(pgid).len() >= 2, "the plugin and its sleep");
    let start = Instant::now();
    agent.signal(Signal::TERM);
    let exit = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits within 5 s");
    assert!(exit.success(), "{exit:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        group_members(pgid).is_empty(),
        "left behind: {:?}",
        group_members(pgid)
    );
    let last = agent.status().unwrap();
    assert_eq!(Agent::plugin(&last, "stubborn")["state"], "stopped");
}

#[test]
fn sigkill_of_the_master_takes_its_plugins_along() {
    let mut agent =
        Agent::start("[[plugins]]\nname = \"orphan\"\npath = \"/bin/sleep\"\nargs = [\"300\"]\n");
    let status = agent.wait_status("the plugin to run", Duration::from_secs(10), |s| {
        Agent::plugin(s, "orphan")["pid"].is_u64()
    });
    let pid = Agent::plugin(&status, "orphan")["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    agent.signal(Signal::KILL);
    agent
        .wait_exit(Duration::from_secs(2))
        .expect("SIGKILL is final");
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "plugin {pid} outlived its master");
}

#[test]
fn unknown_config_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "state_dir = \"/tmp/x\"\n[supervisor]\nbackof_initial_ms = 5\n",
    )
    .unwrap();
    let out = Command::new(hids_test_support::bin("hids-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backof_initial_ms"), "{err}");

    std::fs::write(&cfg, "status_interval_secs = \"soon\"\n").unwrap();
    let out = Command::new(hids_test_support::bin("hids-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("status_interval_secs"));
}

#[test]
fn status_command_prints_a_table() {
    let agent =
        Agent::start("[[plugins]]\nname = \"idle\"\npath = \"/bin/sleep\"\nargs = [\"30\"]\n");
    agent.wait_status("the plugin to run", Duration::from_secs(10), |s| {
        Agent::plugin(s, "idle")["pid"].is_u64()
    });
    let out = Command::new(hids_test_support::bin("hids-agent"))
        .args(["status", "--state-dir"])
        .arg(agent.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PLUGIN") && text.contains("idle") && text.contains("running"),
        "{text}"
    );
    let out = Command::new(hids_test_support::bin("hids-agent"))
        .args(["status", "--json", "--state-dir"])
        .arg(agent.state_dir())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["mode"], "standalone");
}

#[test]
fn hostile_argv_is_bounded_and_lossy_not_fatal() {
    require_root!();
    use std::os::unix::ffi::OsStrExt;
    let agent = Agent::start("");
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    // 192 KiB of arguments: the kernel caps one argument at 128 KiB, not the list.
    let chunk = "x".repeat(64 * 1024);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 1", &format!("argv-{tag}")])
        .arg(std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-utf8"))
        .args([&chunk, &chunk, &chunk])
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let events = agent.wait_events("the exec", Duration::from_secs(10), |evs| {
        exec_of(evs, pid).is_some()
    });
    let ev = exec_of(&events, pid).unwrap();
    let args = args_of(ev).unwrap();
    assert_eq!(args[3], format!("argv-{tag}"));
    assert_eq!(args[4], "bad-\u{fffd}\u{fffd}-utf8");
    assert_eq!(ev["hids"]["args_truncated"], true);
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    assert!(
        total <= 33 * 1024,
        "argv is bounded (default 32 KiB), got {total} bytes"
    );
    // The agent and its plugin are unharmed.
    let status = agent.status().unwrap();
    assert_eq!(Agent::plugin(&status, "process")["restarts"], 0);
}

#[test]
fn interactive_session_carries_tty_session_and_login_user() {
    require_root!();
    let agent = Agent::start("");
    agent.wait_process_ready();
    let tag = hids_test_support::tag();
    // `script` gives the command a pseudo-terminal and a session of its own, as a login
    // shell has.
    let status = Command::new("script")
        .args(["-qec", &format!("sh -c 'sleep 0.3' tty-{tag}"), "/dev/null"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script (bsdutils) runs");
    assert!(status.success());
    let events = agent.wait_events("the shell's exec", Duration::from_secs(10), |evs| {
        evs.iter().any(|e| {
            e["event"]["action"] == "exec"
                && args_of(e).is_some_and(|a| a.last().is_some_and(|l| l == &format!("tty-{tag}")))
        })
    });
    let ev = events
        .iter()
        .find(|e| {
            e["event"]["action"] == "exec"
                && args_of(e).is_some_and(|a| a.last().is_some_and(|l| l == &format!("tty-{tag}")))
        })
        .unwrap();
    assert_eq!(ev["process"]["interactive"], true, "{ev:#}");
    assert!(
        ev["hids"]["tty"].as_str().unwrap().starts_with("pts/"),
        "{ev:#}"
    );
    assert!(
        ev["process"]["tty"]["char_device"]["major"]
            .as_u64()
            .unwrap()
            >= 136
    );
    let sid = ev["process"]["session_leader"]["pid"].as_u64().unwrap();
    assert!(sid > 1);
    // Its child shares the session and terminal, so the session can be replayed.
    let sh_pid = ev["process"]["pid"].as_u64().unwrap();
    let events = agent.wait_events("the sleep", Duration::from_secs(10), |evs| {
        evs.iter()
            .any(|e| e["event"]["action"] == "exec" && e["process"]["parent"]["pid"] == sh_pid)
    });
    let child = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["parent"]["pid"] == sh_pid)
        .unwrap();
    assert_eq!(child["process"]["session_leader"]["pid"], sid);
    assert_eq!(child["hids"]["tty"], ev["hids"]["tty"]);
    // The login user is whatever this test's session has; when set, it is reported.
    let login = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if login.trim() != "4294967295" && !login.trim().is_empty() {
        assert_eq!(ev["user"]["audit"]["id"], login.trim());
    }
}
