//! The prefilter never changes what fires: the same hits as every rule on every event,
//! over the corpora and randomised variants of them.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::path::PathBuf;
use std::sync::Arc;

use hids_detect::mix::{exec_event, Command, Origin, ATTACKS, BENIGN, DISCOVERY};
use hids_detect::{Detector, FrequencyLimits, RuleSet};
use proptest::prelude::*;
use serde_json::Value;

fn rules() -> Arc<RuleSet> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/sigma/rules/linux/process_creation");
    let dirs = if dir.is_dir() {
        vec![dir]
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing, and CI must run every test",
            dir.display()
        );
        eprintln!("SigmaHQ rules missing: our pack only");
        Vec::new()
    };
    Arc::new(RuleSet::load(true, &dirs).unwrap())
}

fn all_commands() -> Vec<Command> {
    BENIGN
        .iter()
        .chain(ATTACKS.iter().map(|a| &a.command))
        .chain(DISCOVERY)
        .copied()
        .collect()
}

fn to_event(cmd: &Command, i: usize) -> Value {
    let origin = Origin {
        host_id: "h1",
        hostname: "h1",
        time_micros: 1_000_000 * i as i64,
        pid: 100 + i as u32,
        parent_pid: 50,
        sequence: i as u64,
    };
    serde_json::from_str(&exec_event(cmd, &origin)).unwrap()
}

fn same_hits(a: &mut Detector, b: &mut Detector, ev: &Value) {
    let (mut ha, mut hb) = (Vec::new(), Vec::new());
    a.detect(ev, &mut ha);
    b.detect_every_rule(ev, &mut hb);
    let key = |h: &hids_detect::Hit| (h.rule.id.clone(), h.count);
    let ka: Vec<_> = ha.iter().map(key).collect();
    let kb: Vec<_> = hb.iter().map(key).collect();
    assert_eq!(ka, kb, "on {ev}");
}

#[test]
fn prefilter_changes_nothing_on_the_corpora() {
    let set = rules();
    let mut with = Detector::new(Arc::clone(&set), FrequencyLimits::default());
    let mut without = Detector::new(Arc::clone(&set), FrequencyLimits::default());
    for (i, cmd) in all_commands().iter().enumerate() {
        same_hits(&mut with, &mut without, &to_event(cmd, i));
    }
    // With the 122 SigmaHQ rules the prefilter leaves about one rule in thirteen; our
    // pack alone is small and literal-heavy, so the saving is smaller.
    let share = if set.match_rules() > 100 { 4.0 } else { 2.0 };
    assert!(
        with.stats().rules_per_event < without.stats().rules_per_event / share,
        "{} of {} rules per event",
        with.stats().rules_per_event,
        without.stats().rules_per_event
    );
}

/// Pieces of attacks and of rule literals, to splice into ordinary commands.
const FRAGMENTS: &[&str] = &[
    "/dev/tcp/",
    " -e /bin/sh",
    "--exec",
    "exec:",
    "tcp:",
    "socket",
    "connect",
    "pty.spawn",
    "mkfifo",
    " nc ",
    "telnet ",
    "| sh",
    "|bash",
    "curl ",
    "wget ",
    "stratum+tcp://",
    "--donate-level",
    "history -c",
    "HISTFILE",
    ".bash_history",
    "/var/log/wtmp",
    "--vacuum-time=1s",
    "/etc/passwd",
    "base64 -d",
    "chmod +x",
    "/tmp/",
    "/dev/shm/",
    "memfd:",
    " (deleted)",
    "python",
    "whoami",
    "crontab",
    "nohup",
    "chattr -i",
    "iptables -F",
    "setenforce 0",
    "LD_PRELOAD",
    "xterm",
    "DEV/TCP",
    "Curl",
    "SOCAT",
    "*",
    "?",
    "\\",
    "é",
    "'",
    "\"",
    "$(",
    "<(",
];

const EXECUTABLES: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/dash",
    "/usr/bin/nc",
    "/usr/bin/socat",
    "/usr/bin/python3",
    "/usr/bin/perl",
    "/tmp/x",
    "/dev/shm/y",
    "/usr/bin/rm",
    "/usr/bin/ln",
    "/usr/bin/journalctl",
    "/usr/sbin/nginx",
    "/usr/bin/curl",
    "/usr/bin/crontab",
    "/usr/bin/chattr",
    "/usr/bin/base64",
];

fn variant(cmd: &Command, inserts: &[(usize, usize)], exe: Option<usize>, upper: bool) -> Value {
    let mut line = cmd.command_line.to_owned();
    for &(pos, frag) in inserts {
        let mut at = pos % (line.len() + 1);
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        line.insert_str(at, FRAGMENTS[frag % FRAGMENTS.len()]);
    }
    if upper {
        line = line.to_uppercase();
    }
    let mut ev = to_event(cmd, inserts.len());
    ev["process"]["command_line"] = line.into();
    if let Some(e) = exe {
        ev["process"]["executable"] = EXECUTABLES[e % EXECUTABLES.len()].into();
    }
    ev
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
    #[test]
    fn prefilter_changes_nothing_on_variants(
        which in 0usize..1000,
        inserts in proptest::collection::vec((0usize..400, 0usize..100), 0..4),
        exe in proptest::option::of(0usize..100),
        parent_exe in proptest::option::of(0usize..100),
        upper in any::<bool>(),
    ) {
        thread_local! {
            static SET: Arc<RuleSet> = rules();
        }
        let set = SET.with(Arc::clone);
        let cmds = all_commands();
        let mut ev = variant(&cmds[which % cmds.len()], &inserts, exe, upper);
        if let Some(p) = parent_exe {
            ev["process"]["parent"]["executable"] = EXECUTABLES[p % EXECUTABLES.len()].into();
        }
        let mut with = Detector::new(Arc::clone(&set), FrequencyLimits::default());
        let mut without = Detector::new(set, FrequencyLimits::default());
        same_hits(&mut with, &mut without, &ev);
    }
}
