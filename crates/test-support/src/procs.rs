//! Facts about the test's own processes, read from `/proc`.

/// Pids of all live processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for pid in hids_procfs::list_pids("/proc").unwrap_or_default() {
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Ok(s) = hids_procfs::parse_stat(&stat) {
            if s.pgrp == pgid && s.state != b'Z' {
                members.push(pid);
            }
        }
    }
    members
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|b| hids_procfs::parse_stat(&b).ok())
        .is_some_and(|s| s.state != b'Z')
}

/// A tag unique to this test run, for matching our own processes' events.
pub fn tag() -> String {
    hids_wire::new_run_id()[..10].to_owned()
}

/// The exec events (parsed JSON lines) whose arguments include `needle`.
pub fn execs_with_arg<'a>(
    events: &'a [serde_json::Value],
    needle: &str,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| {
            e["event"]["action"] == "exec"
                && e["process"]["args"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(needle)))
        })
        .collect()
}
