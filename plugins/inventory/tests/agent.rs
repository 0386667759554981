//! The inventory plugin as an operator meets it: `--once` on this Debian host lists what
//! `dpkg-query` lists; under a real agent the list goes whole the first time, as its hash
//! alone when unchanged across a restart, and as package changes when dpkg's database
//! changes; `hidsctl snapshot --plugin inventory` makes it send the whole list now.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hids_test_support::{etcd_available, json, require_root, Agent, Etcd, KeyPair};
use serde_json::Value;

const PLUGIN: &str = env!("CARGO_BIN_EXE_hids-plugin-inventory");

fn once(args: &[&str]) -> Vec<Value> {
    let out = Command::new(PLUGIN)
        .arg("--once")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn once_prints_every_installed_dpkg_package_with_its_source() {
    let listed = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}|${Package}|${Version}|${source:Package}|${source:Version}\n",
        ])
        .output();
    let Ok(listed) = listed else {
        hids_test_support::skip_unless!(false, "dpkg-query is missing: not a Debian host");
        return;
    };
    let mut want: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| !l.starts_with("rc") && !l.starts_with("pn"))
        .map(|l| l.split_once('|').unwrap().1.to_owned())
        .collect();
    let events = once(&[]);
    let mut got: Vec<String> = events
        .iter()
        .filter(|e| e["package"]["type"] == "deb")
        .map(|e| {
            let (p, s) = (&e["package"], &e["hids"]["package_source"]);
            format!(
                "{}|{}|{}|{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                s["name"].as_str().unwrap(),
                s["version"].as_str().unwrap()
            )
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let stats = events.last().unwrap();
    assert_eq!(stats["event"]["action"], "stats", "{stats}");
    assert_eq!(
        stats["hids"]["stats"]["inventory"]["complete"], true,
        "{stats}"
    );
    assert!(events.iter().any(|e| e["package"]["type"] == "kernel"));
}

/// A root whose dpkg database is a copy of `status` text.
fn fake_root(dir: &Path, status: &str) {
    std::fs::create_dir_all(dir.join("var/lib/dpkg")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("var/lib/dpkg/status"), status).unwrap();
    std::fs::write(
        dir.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
    )
    .unwrap();
}

fn stanza(name: &str, version: &str) -> String {
    format!("Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n")
}

fn plugin_entry(root: &Path) -> String {
    format!(
        "[[plugins]]\nname = \"inventory\"\nargs = [\"--root\", {:?}]\n",
        root.display().to_string()
    )
}

/// The inventory plugin's events of `action`, in order.
fn of<'a>(events: &'a [Value], action: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["hids"]["plugin"] == "inventory" && e["event"]["action"] == action)
        .collect()
}

fn wait_stats(agent: &Agent, runs: usize) -> Vec<Value> {
    agent.wait_events("the inventory's stats", Duration::from_secs(60), |evs| {
        of(evs, "stats").len() >= runs
    })
}

#[test]
fn unchanged_lists_go_as_their_hash_and_changes_as_package_events() {
    let root = tempfile::tempdir().unwrap();
    fake_root(
        root.path(),
        &(stanza("bash", "5.2.15-2") + &stanza("curl", "7.88.1-10") + &stanza("vim", "2:9.0")),
    );
    let mut agent = Agent::start(&plugin_entry(root.path()));
    let events = wait_stats(&agent, 1);
    let parts = of(&events, "inventory");
    assert_eq!(parts.len(), 1, "{parts:#?}");
    let first = &parts[0]["hids"]["inventory"];
    assert_eq!(first["parts"], 1);
    assert_eq!(first["os"]["codename"], "bookworm");
    assert!(first["items"].as_array().unwrap().len() >= 3, "{first}");
    let hash = first["hash"].clone();

    // Restarted on its state: the same list goes as its hash alone, no change events.
    agent.stop_with(rustix::process::Signal::TERM);
    agent.spawn();
    let events = wait_stats(&agent, 2);
    let parts = of(&events, "inventory");
    let second = &parts.last().unwrap()["hids"]["inventory"];
    assert_eq!(second["hash"], hash);
    assert_eq!(second["parts"], 0, "{second}");
    assert!(second.get("items").is_none());
    assert!(of(&events, "package_added").is_empty());

    // dpkg's database changes: one upgraded, one removed, one added.
    fake_root(
        root.path(),
        &(stanza("bash", "5.2.21-2") + &stanza("curl", "7.88.1-10") + &stanza("jq", "1.6-2.1")),
    );
    agent.stop_with(rustix::process::Signal::TERM);
    agent.spawn();
    let events = wait_stats(&agent, 3);
    let third = &of(&events, "inventory").last().unwrap()["hids"]["inventory"];
    assert_ne!(third["hash"], hash);
    assert_eq!(third["parts"], 1);
    let upgraded = of(&events, "package_upgraded");
    assert_eq!(upgraded.len(), 1, "{upgraded:#?}");
    assert_eq!(upgraded[0]["package"]["version"], "5.2.21-2");
    assert_eq!(upgraded[0]["hids"]["previous_version"], "5.2.15-2");
    assert_eq!(upgraded[0]["event"]["type"][0], "change");
    assert_eq!(of(&events, "package_removed")[0]["package"]["name"], "vim");
    assert_eq!(of(&events, "package_added")[0]["package"]["name"], "jq");
    let stats = of(&events, "stats");
    let last = &stats.last().unwrap()["hids"]["stats"];
    assert_eq!(last["changes"]["upgraded"], 1, "{last}");
    assert_eq!(last["sent"]["whole"], true, "{last}");
}

#[test]
fn a_corrupt_database_sends_nothing_rather_than_a_partial_list() {
    let root = tempfile::tempdir().unwrap();
    fake_root(root.path(), &stanza("bash", "5.2.15-2"));
    // Over the size bound: refused whole.
    let big = "x".repeat(2 << 20);
    std::fs::write(root.path().join("var/lib/dpkg/status"), big).unwrap();
    let agent = Agent::start(&format!(
        "[[plugins]]\nname = \"inventory\"\nargs = [\"--root\", {:?}, \"--max-db-bytes\", \"1048576\"]\n",
        root.path().display().to_string()
    ));
    let events = wait_stats(&agent, 1);
    assert!(
        of(&events, "inventory").is_empty(),
        "nothing partial is sent"
    );
    let stats = &of(&events, "stats")[0]["hids"]["stats"];
    assert_eq!(stats["inventory"]["complete"], false, "{stats}");
    let deb = stats["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "deb")
        .unwrap();
    assert!(
        deb["error"]
            .as_str()
            .unwrap()
            .contains("larger than 1048576 bytes"),
        "{deb}"
    );
}

#[test]
fn hidsctl_snapshot_makes_the_host_send_its_whole_list_now() {
    require_root!();
    if !etcd_available() {
        return;
    }
    const HOST: &str = "inv-snap-1";
    let root = tempfile::tempdir().unwrap();
    fake_root(root.path(), &stanza("bash", "5.2.15-2"));
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let agent = Agent::managed(
        &etcd,
        HOST,
        &[],
        &key.public(),
        &format!("\n{}", plugin_entry(root.path())),
    );
    wait_stats(&agent, 1);
    let out = etcd.hidsctl(&[
        "snapshot",
        "--plugin",
        "inventory",
        "--hosts",
        HOST,
        "--key",
        &key.secret(),
        "--wait",
        "30s",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json(&out);
    assert_eq!(result["acked"], 1, "{result:#}");
    let id = format!("g{}", result["generation"].as_u64().unwrap());
    let events = agent.wait_events("the requested inventory", Duration::from_secs(60), |evs| {
        of(evs, "inventory")
            .iter()
            .any(|e| e["hids"]["inventory"]["command_id"] == id.as_str())
    });
    let asked: Vec<_> = of(&events, "inventory")
        .into_iter()
        .filter(|e| e["hids"]["inventory"]["command_id"] == id.as_str())
        .collect();
    // Unchanged since the start, and still sent whole: the operator asked.
    assert_eq!(asked[0]["hids"]["inventory"]["parts"], 1, "{:#}", asked[0]);
    assert_eq!(asked[0]["hids"]["inventory"]["items"][0]["name"], "bash");
}
