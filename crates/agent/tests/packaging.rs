//! What the Debian packages promise that needs no package built: the systemd units are
//! valid as systemd reads them and keep what the agent relies on (restarts for the
//! self-update rollback, limits above the guard's), and the configuration installed as
//! /etc/hids/agent.toml passes `check-config`. `scripts/package-check` proves the rest
//! (install, upgrade, purge) in a fresh tree: docs/packages.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use hids_test_support::{bin, skip_unless};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .join(file)
}

fn read(file: &str) -> String {
    let path = packaging(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key=` in a unit file (no sections needed: the keys checked are unique).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .collect()
}

fn one<'a>(unit: &'a str, key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [v] => v,
        other => panic!("expected one {key}= in the unit, found {other:?}"),
    }
}

fn systemd_analyze_available() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn units_pass_systemd_analyze_verify_without_a_word() {
    skip_unless!(
        systemd_analyze_available(),
        "no systemd-analyze (Debian's systemd package)"
    );
    for (unit, binary) in [
        ("hids-agent.service", "hids-agent"),
        ("hids-server.service", "hids-server"),
    ] {
        let text = read(unit);
        // Where scripts/package installs the binary; verified here against the built one
        // (verify refuses an ExecStart that does not exist).
        let installed = format!("/usr/bin/{binary} ");
        assert!(
            one(&text, "ExecStart").starts_with(&installed),
            "{unit}: ExecStart must run {installed}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(unit);
        let built = format!("{} ", bin(binary).display());
        std::fs::write(&path, text.replace(&installed, &built)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        // Unknown keys and bad values are warnings with exit status 0: any output fails.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}: {said}"
        );
    }
}

#[test]
fn agent_unit_restarts_always_for_the_rollback_and_limits_above_the_guard() {
    let unit = read("hids-agent.service");
    // docs/updates.md: the launcher counts a new build's starts; only the service
    // manager's restarts after every death, a refused configuration's exit 64 included,
    // let it roll a crashing build back.
    assert_eq!(one(&unit, "Restart"), "always");
    assert!(values(&unit, "RestartPreventExitStatus").is_empty());
    assert_eq!(one(&unit, "StartLimitIntervalSec"), "0");

    let config: toml::Table = toml::from_str(&read("agent.toml")).unwrap();
    let guard = config["guard"].as_table().unwrap();
    let number = |k: &str| {
        guard[k]
            .as_float()
            .or_else(|| guard[k].as_integer().map(|i| i as f64))
            .unwrap()
    };
    let quota: f64 = one(&unit, "CPUQuota")
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .expect("CPUQuota in percent of one core");
    assert!(
        quota > number("cpu_percent"),
        "CPUQuota {quota}% must be above the guard's cpu_percent, which acts first"
    );
    let max = one(&unit, "MemoryMax");
    let max_mb: f64 = max
        .strip_suffix('M')
        .and_then(|m| m.parse().ok())
        .expect("MemoryMax in M");
    assert!(
        max_mb > number("memory_mb"),
        "MemoryMax {max} must be above the guard's memory_mb, which acts first"
    );
}

#[test]
fn the_packaged_agent_config_passes_check_config_with_the_builtin_plugins() {
    // The built agent with its plugins beside it, as the package lays them out.
    let out = Command::new(bin("hids-agent"))
        .args(["check-config", "--config"])
        .arg(packaging("agent.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for plugin in ["process", "network", "inventory"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([plugin, "enabled"])),
            "{plugin} is not run by the packaged config:\n{stdout}"
        );
    }
}
