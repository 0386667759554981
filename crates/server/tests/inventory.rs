//! The inventory path on this host: two real agents running the inventory plugin send
//! this machine's dpkg packages through Kafka (tansu) to hids-server, which stores the
//! one inventory they share once and answers which hosts a vulnerability of a Debian
//! security tracker feed affects, judged as `dpkg --compare-versions` judges.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::sqlite_server;
use hids_test_support::{require_root, tag, wait_until, Agent, Broker};
use serde_json::{json, Value};

/// Source packages installed here: name -> source version (those with one version only).
fn installed_sources() -> BTreeMap<String, String> {
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${source:Package}\t${source:Version}\n",
        ])
        .output()
        .expect("dpkg-query: this test needs a Debian host");
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 && f[0].starts_with("ii") {
            versions.entry(f[1].into()).or_default().insert(f[2].into());
        }
    }
    versions
        .into_iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, v)| (k, v.into_iter().next().unwrap()))
        .collect()
}

fn dpkg_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .unwrap()
        .success()
}

fn codename() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("os-release names a codename")
}

/// One tracker entry per case: (CVE, source, release, status, fixed_version).
fn cases(
    sources: &BTreeMap<String, String>,
    release: &str,
) -> Vec<(String, String, String, String, Option<String>)> {
    let picked: Vec<(&String, &String)> = sources.iter().take(8).collect();
    assert!(
        picked.len() == 8,
        "need 8 installed source packages, have {}",
        picked.len()
    );
    let v = |i: usize| picked[i].1.clone();
    let s = |i: usize| picked[i].0.clone();
    let epochless = |i: usize| {
        v(i).split_once(':')
            .map_or(v(i), |(_, rest)| rest.to_owned())
    };
    vec![
        // Fixed in a later security update: affected.
        (
            "CVE-9999-0001".into(),
            s(0),
            release.into(),
            "resolved".into(),
            Some(format!("{}+deb99u1", v(0))),
        ),
        // `~` sorts before the end: the fix is older than what is installed.
        (
            "CVE-9999-0002".into(),
            s(1),
            release.into(),
            "resolved".into(),
            Some(format!("{}~rc1", v(1))),
        ),
        // No fix yet: affected, with no fixed version.
        (
            "CVE-9999-0003".into(),
            s(2),
            release.into(),
            "open".into(),
            None,
        ),
        // "0": never affected.
        (
            "CVE-9999-0004".into(),
            s(3),
            release.into(),
            "resolved".into(),
            Some("0".into()),
        ),
        // Another release only.
        (
            "CVE-9999-0005".into(),
            s(4),
            "hids-test-other".into(),
            "resolved".into(),
            Some(format!("{}+x", v(4))),
        ),
        // An epoch outranks any version without one.
        (
            "CVE-9999-0006".into(),
            s(5),
            release.into(),
            "resolved".into(),
            Some(format!("1:{}", epochless(5))),
        ),
        // Fixed in exactly what is installed.
        (
            "CVE-9999-0007".into(),
            s(6),
            release.into(),
            "resolved".into(),
            Some(v(6)),
        ),
        // A letter after the digits sorts after them (`1a` > `1`; the debversion crate
        // got `1a` vs `1a0` wrong).
        (
            "CVE-9999-0008".into(),
            s(7),
            release.into(),
            "resolved".into(),
            Some(format!("{}a", v(7))),
        ),
    ]
}

fn tracker_json(cases: &[(String, String, String, String, Option<String>)]) -> Value {
    let mut feed = serde_json::Map::new();
    for (cve, source, release, status, fixed) in cases {
        let mut entry =
            json!({"status": status, "urgency": "high", "repositories": {release: "x"}});
        if let Some(f) = fixed {
            entry["fixed_version"] = json!(f);
        }
        let package = feed.entry(source.clone()).or_insert_with(|| json!({}));
        package[cve] = json!({
            "description": "test", "scope": "local", "debianbug": 1,
            "releases": {release: entry}
        });
    }
    Value::Object(feed)
}

fn start_agent(broker: &Broker, topic: &str, host: &str, args: &str) -> Agent {
    Agent::start(&format!(
        "host_id = \"{host}\"\n\
         [[plugins]]\nname = \"inventory\"\nargs = [{args}]\n\
         [[sinks]]\nkind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n\
         [labels]\nidc = \"idc-{host}\"\nproject = \"hids\"\n",
        broker.addr()
    ))
}

/// A root whose dpkg database holds `n` packages: a list that travels in several parts.
fn big_root(n: usize) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dpkg = root.path().join("var/lib/dpkg");
    std::fs::create_dir_all(&dpkg).unwrap();
    let status: String = (0..n)
        .map(|i| {
            format!(
                "Package: lib-hids-test-{i:05}\nStatus: install ok installed\nArchitecture: amd64\n\
                 Source: hids-test-src-{} (1.{i}-1)\nVersion: 1.{i}-1+b1\n\n",
                i % 500
            )
        })
        .collect();
    std::fs::write(dpkg.join("status"), status).unwrap();
    root
}

#[test]
fn hosts_affected_by_a_tracker_cve_are_exactly_those_dpkg_ordering_says() {
    require_root!();
    let sources = installed_sources();
    let release = codename();
    let cases = cases(&sources, &release);
    let topic = format!("inventory-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let feed_dir = tempfile::tempdir().unwrap();
    let feed = feed_dir.path().join("tracker.json");
    std::fs::write(&feed, tracker_json(&cases).to_string()).unwrap();
    let (_db, server) = sqlite_server(
        &broker,
        &topic,
        &format!("[vulns]\nfeeds = [{feed:?}]\nreload_secs = 1\n"),
    );
    let hosts = [format!("inv-a-{}", tag()), format!("inv-b-{}", tag())];
    let mut agents: Vec<Agent> = hosts
        .iter()
        .map(|h| start_agent(&broker, &topic, h, ""))
        .collect();
    // A third host with 5,000 packages: its list comes in parts and is stored whole.
    let big = big_root(5_000);
    let big_host = format!("inv-big-{}", tag());
    let root_arg = format!("\"--root\", {:?}", big.path().display().to_string());
    let _big_agent = start_agent(&broker, &topic, &big_host, &root_arg);

    wait_until(
        "the three hosts in the index",
        Duration::from_secs(90),
        || {
            let (status, body) = server.get_status("/api/v1/inventory/summary");
            status == 200 && body["hosts"] == 3
        },
    );
    let summary = server.get("/api/v1/inventory/summary");
    assert_eq!(
        summary["inventories"], 2,
        "the two alike stored once: {summary}"
    );
    let listed = server.get(&format!("/api/v1/inventory/hosts/{big_host}"));
    let debs = listed["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "deb")
        .count();
    assert_eq!(debs, 5_000);
    let pending = server.metric("hids_server_inventory_reports_total{outcome=\"pending\"}");
    assert!(pending >= 2.0, "it came in parts");
    let rows =
        server.get("/api/v1/packages/hosts?name=hids-test-src-7&source=true&type=deb&below=1.8-1");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(
        rows[0]["source"]["version"], "1.7-1",
        "the binNMU's source version: {rows}"
    );

    for (cve, source, case_release, status, fixed) in &cases {
        let installed = &sources[source];
        let affected = *case_release == release
            && match (status.as_str(), fixed.as_deref()) {
                (_, Some("0")) => false,
                ("open", None) => true,
                (_, Some(f)) => dpkg_lt(installed, f),
                _ => unreachable!(),
            };
        let rows = server.get(&format!("/api/v1/vulns/hosts?id={cve}"));
        let rows = rows.as_array().unwrap();
        if !affected {
            assert!(
                rows.is_empty(),
                "{cve} ({source} {installed} vs {fixed:?}): {rows:?}"
            );
            continue;
        }
        let got: BTreeSet<&str> = rows
            .iter()
            .map(|r| r["host_id"].as_str().unwrap())
            .collect();
        let want: BTreeSet<&str> = hosts.iter().map(String::as_str).collect();
        assert_eq!(got, want, "{cve}: {rows:?}");
        for row in rows {
            assert_eq!(row["package"], json!(source), "{row}");
            assert_eq!(row["version"], json!(installed), "{row}");
            assert_eq!(row["fixed_version"], json!(fixed), "{row}");
            assert_eq!(row["severity"], "high");
        }
    }

    // Grouped by a label, and the fleet's list.
    let groups = server.get("/api/v1/vulns/hosts?id=CVE-9999-0001&by=idc");
    assert_eq!(groups.as_array().unwrap().len(), 2, "{groups}");
    let top = server.get("/api/v1/vulns/top");
    let ids: BTreeSet<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains("CVE-9999-0001") && ids.contains("CVE-9999-0003"),
        "{top}"
    );
    assert!(
        !ids.contains("CVE-9999-0004") && !ids.contains("CVE-9999-0005"),
        "{top}"
    );

    // A range query: the hosts with the first source below its fix.
    let (s0, v0) = sources.iter().next().unwrap();
    let v0 = v0
        .replace('+', "%2B")
        .replace(':', "%3A")
        .replace('~', "%7E");
    let rows = server.get(&format!(
        "/api/v1/packages/hosts?name={s0}&source=true&type=deb&below={v0}%2Bdeb99u1"
    ));
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let rows = server.get(&format!(
        "/api/v1/packages/hosts?name={s0}&source=true&below={v0}"
    ));
    assert!(rows.as_array().unwrap().is_empty(), "{rows}");

    // The host's own list is what dpkg-query lists.
    let host = server.get(&format!("/api/v1/inventory/hosts/{}", hosts[0]));
    let debs = host["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "deb")
        .count();
    let listed = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}\n"])
        .output()
        .unwrap();
    let installed = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| !l.starts_with("rc") && !l.starts_with("pn"))
        .count();
    assert_eq!(debs, installed);
    assert!(server.metric("hids_server_inventory_reports_total{outcome=\"published\"}") >= 2.0);

    // hidsctl: tables for people, JSON for scripts, exit 5 when nothing matches.
    let hidsctl = |args: &[&str]| {
        Command::new(hids_test_support::bin("hidsctl"))
            .args(args)
            .env("HIDSCTL_SERVER", server.url(""))
            .output()
            .unwrap()
    };
    let out = hidsctl(&["vulns", "hosts", "CVE-9999-0001", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let out = hidsctl(&["vulns", "hosts", "CVE-9999-0001"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("INSTALLED") && table.contains(&hosts[0]),
        "{table}"
    );
    let out = hidsctl(&["vulns", "hosts", "CVE-9999-0004"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = hidsctl(&["packages", "hosts", s0, "--source", "--by", "project"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("hids"), "{table}");
    let out = hidsctl(&["vulns", "top", "--min-severity", "high", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hidsctl(&["vulns", "hosts", "CVE-9999-0004", "--json"]);
    assert_eq!(out.status.code(), Some(5), "--json exits 5 too");
    let (status, body) = server.get_status("/api/v1/vulns/hosts?id=CVE-0000-0000");
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get_status("/api/v1/packages/hosts?name=bash&type=deb&below=x%20y");
    assert_eq!(status, 400, "{body}");

    // A restarted agent sends the hash alone: the host's report time moves, its list stays.
    let path = format!("/api/v1/inventory/hosts/{}", hosts[0]);
    let before = server.get(&path);
    agents[0].stop_with(rustix::process::Signal::TERM);
    agents[0].spawn();
    wait_until("the hash-only report", Duration::from_secs(60), || {
        server.get(&path)["reported_at"] != before["reported_at"]
    });
    assert_eq!(server.get(&path)["hash"], before["hash"]);
    assert_eq!(server.get("/api/v1/inventory/summary")["inventories"], 2);

    // A page of one says how many there are in all.
    let out = hidsctl(&["vulns", "hosts", "CVE-9999-0001", "--limit", "1"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("rows 1-1 of 2 (--offset 1"), "{table}");

    // A feed file cut short by a failed download: refused, the last good load stands.
    let text = tracker_json(&cases).to_string();
    std::fs::write(&feed, &text[..text.len() / 2]).unwrap();
    wait_until("the broken feed reported", Duration::from_secs(30), || {
        let report = server.get("/api/v1/vulns/feeds");
        !report["files"][0]["error"].is_null()
    });
    let rows = server.get("/api/v1/vulns/hosts?id=CVE-9999-0001");
    assert_eq!(
        rows.as_array().unwrap().len(),
        2,
        "the last good load answers: {rows}"
    );
    let out = hidsctl(&["vulns", "feeds"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A good file again, with one more CVE: loaded.
    let mut more = cases.clone();
    more.push((
        "CVE-9999-0009".into(),
        s0.clone(),
        release.clone(),
        "open".into(),
        None,
    ));
    std::fs::write(&feed, tracker_json(&more).to_string()).unwrap();
    wait_until("the new feed loaded", Duration::from_secs(30), || {
        server.get_status("/api/v1/vulns/hosts?id=CVE-9999-0009").0 == 200
    });
}
