//! Issue 12, part 4: per-host credentials. `hidsctl enroll` gives each host an etcd user
//! and role that may write only its own status and read only its own desired state and
//! the blobs; real etcd with authentication on, real hidsctl, etcdctl and hids-agent.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use hids_test_support::{etcd_available, json, wait_until, write_file, Agent, Etcd, KeyPair};

const ROOT: [&str; 4] = ["--user", "root", "--password", "rootpw"];
const OPERATOR: [&str; 4] = ["--user", "hids-operator", "--password", "oppw"];

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// etcd with authentication on: root and hids-operator, no shared agent user.
fn bootstrapped() -> Etcd {
    let etcd = Etcd::start();
    let out = ok(etcd.hidsctl(&[
        "bootstrap",
        "--root-password",
        "rootpw",
        "--operator-password",
        "oppw",
    ]));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("hids-agent"),
        "no shared agent user unless asked for"
    );
    etcd
}

fn hidsctl_as(etcd: &Etcd, who: [&str; 4], args: &[&str]) -> Output {
    let mut all = who.to_vec();
    all.extend_from_slice(args);
    etcd.hidsctl(&all)
}

/// `user:password` from a credentials file, for etcdctl.
fn user_of(file: &Path) -> String {
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    format!(
        "{}:{}",
        v["control"]["user"].as_str().unwrap(),
        v["control"]["password"].as_str().unwrap()
    )
}

fn denied(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied")
}

#[test]
fn issue_12_an_enrolled_host_can_touch_only_its_own_keys() {
    if !etcd_available() {
        return;
    }
    let etcd = bootstrapped();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("creds");
    let out_arg = out_dir.to_str().unwrap();
    ok(hidsctl_as(
        &etcd,
        ROOT,
        &["enroll", "--host-id", "a", "--out", out_arg],
    ));
    let hosts = write_file(dir.path(), "hosts.txt", "# fleet\nb\n\n");
    let out = hidsctl_as(
        &etcd,
        ROOT,
        &["enroll", "--hosts-file", &hosts, "--out", out_arg, "--json"],
    );
    let result = json(&ok(out));
    assert_eq!(result["enrolled"][0]["host_id"], "b", "{result}");
    assert_eq!(result["enrolled"][0]["user"], "hids-host-b", "{result}");

    for h in ["a", "b"] {
        let file = out_dir.join(format!("{h}.toml"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let a = user_of(&out_dir.join("a.toml"));
    assert!(a.starts_with("hids-host-a:") && a.len() > "hids-host-a:".len() + 30);

    // What an operator writes, the host reads.
    let op = Some("hids-operator:oppw");
    for key in [
        "/hids/v1/desired/a",
        "/hids/v1/desired/b",
        "/hids/v1/blobs/x",
    ] {
        assert!(etcd.etcdctl(&["put", key, "v"], op).status.success());
    }
    let a = Some(a.as_str());
    ok(etcd.etcdctl(&["put", "/hids/v1/agents/a", "status"], a));
    let read = ok(etcd.etcdctl(&["get", "/hids/v1/desired/a", "--print-value-only"], a));
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "v");
    ok(etcd.etcdctl(&["get", "/hids/v1/blobs/x"], a));
    // Its watch on desired/a is what the agent test below proves.

    ok(etcd.etcdctl(
        &["put", "/hids/v1/agents/b", "b's"],
        Some(&user_of(&out_dir.join("b.toml"))),
    ));
    assert!(denied(
        &etcd.etcdctl(&["put", "/hids/v1/agents/b", "forged"], a)
    ));
    assert!(denied(&etcd.etcdctl(&["del", "/hids/v1/agents/b"], a)));
    assert!(denied(&etcd.etcdctl(&["get", "/hids/v1/desired/b"], a)));
    assert!(denied(
        &etcd.etcdctl(&["put", "/hids/v1/desired/a", "forged"], a)
    ));
    assert!(denied(
        &etcd.etcdctl(&["get", "/hids/v1/agents/", "--prefix"], a)
    ));
    assert_eq!(etcd_get(&etcd, "/hids/v1/agents/b"), "b's");
}

fn etcd_get(etcd: &Etcd, key: &str) -> String {
    let out = etcd.etcdctl(&["get", key, "--print-value-only"], Some("root:rootpw"));
    String::from_utf8_lossy(&ok(out).stdout)
        .trim_end()
        .to_owned()
}

#[test]
fn issue_12_reenrolling_rotates_only_with_force_and_unenroll_revokes() {
    if !etcd_available() {
        return;
    }
    let etcd = bootstrapped();
    let dir = tempfile::tempdir().unwrap();
    let out_arg = dir.path().to_str().unwrap();
    let file = dir.path().join("r.toml");
    ok(hidsctl_as(
        &etcd,
        ROOT,
        &["enroll", "--host-id", "r", "--out", out_arg],
    ));
    let first = user_of(&file);

    // The file exists: refused, and the password in it still works.
    let again = hidsctl_as(&etcd, ROOT, &["enroll", "--host-id", "r", "--out", out_arg]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(user_of(&file), first);
    ok(etcd.etcdctl(&["put", "/hids/v1/agents/r", "x"], Some(&first)));
    // Nor does enrolling it again into another directory rotate its password by accident.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_out = elsewhere.path().to_str().unwrap();
    let other = hidsctl_as(
        &etcd,
        ROOT,
        &["enroll", "--host-id", "r", "--out", other_out],
    );
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("--force"));
    ok(etcd.etcdctl(&["put", "/hids/v1/agents/r", "x"], Some(&first)));

    // A role someone widened is put back to exactly the host's keys on re-enrollment.
    let widen = [
        "role",
        "grant-permission",
        "hids-host-r",
        "read",
        "/hids/v1/agents/",
        "--prefix",
    ];
    ok(etcd.etcdctl(&widen, Some("root:rootpw")));
    let listing = ["get", "/hids/v1/agents/", "--prefix"];
    ok(etcd.etcdctl(&listing, Some(&first)));

    let out = hidsctl_as(
        &etcd,
        ROOT,
        &[
            "enroll",
            "--host-id",
            "r",
            "--out",
            out_arg,
            "--force",
            "--json",
        ],
    );
    assert_eq!(json(&ok(out))["enrolled"][0]["rotated"], true);
    let second = user_of(&file);
    assert_ne!(first, second);
    assert!(!etcd
        .etcdctl(&["put", "/hids/v1/agents/r", "x"], Some(&first))
        .status
        .success());
    ok(etcd.etcdctl(&["put", "/hids/v1/agents/r", "x"], Some(&second)));
    assert!(denied(&etcd.etcdctl(&listing, Some(&second))));

    // Only root may enroll; bad ids never reach etcd.
    let out = hidsctl_as(
        &etcd,
        OPERATOR,
        &["enroll", "--host-id", "s", "--out", out_arg],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user root"));
    for bad in ["a/b", "", "..", "-x"] {
        let id = format!("--host-id={bad}");
        let out = hidsctl_as(&etcd, ROOT, &["enroll", &id, "--out", out_arg]);
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("host id"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    ok(hidsctl_as(&etcd, ROOT, &["unenroll", "--host-id", "r"]));
    assert!(!etcd
        .etcdctl(&["get", "/hids/v1/desired/r"], Some(&second))
        .status
        .success());
    assert_eq!(etcd_get(&etcd, "/hids/v1/agents/r"), "");
    // Twice is harmless.
    ok(hidsctl_as(&etcd, ROOT, &["unenroll", "--host-id", "r"]));
}

#[test]
fn issue_12_agent_with_its_own_credentials_registers_and_acknowledges() {
    if !etcd_available() {
        return;
    }
    let etcd = bootstrapped();
    let key = KeyPair::make(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let out_arg = dir.path().to_str().unwrap();
    ok(hidsctl_as(
        &etcd,
        ROOT,
        &["enroll", "--host-id", "e2e-1", "--out", out_arg],
    ));
    let extra = format!("credentials_file = {:?}\n", dir.path().join("e2e-1.toml"));
    let agent = Agent::managed(&etcd, "e2e-1", &[], &key.public(), &extra);
    wait_until(
        "the agent to register with its own credentials",
        Duration::from_secs(15),
        || etcd.agents(&OPERATOR).contains_key("e2e-1"),
    );
    let file = write_file(
        key.dir.path(),
        "desired.toml",
        "[[plugins]]\nname = \"process\"\nenabled = false\n",
    );
    let secret = key.secret();
    let out = hidsctl_as(
        &etcd,
        OPERATOR,
        &[
            "push", "--key", &secret, "--file", &file, "--all", "--wait", "20s", "--json",
        ],
    );
    let result = json(&ok(out));
    assert_eq!(result["acked"], 1, "{result}\n{}", agent.stderr());
}

#[test]
fn issue_12_a_credentials_file_others_can_read_is_refused() {
    if !etcd_available() {
        return;
    }
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let creds = write_file(
        dir.path(),
        "credentials.toml",
        "[control]\nuser = \"hids-host-x\"\npassword = \"p\"\n",
    );
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "host_id = \"x\"\n[[plugins]]\nname = \"process\"\npath = \"/bin/sleep\"\n\
             [control]\nendpoints = [{:?}]\ntrusted_keys = [{:?}]\ncredentials_file = {creds:?}\n",
            etcd.url(),
            key.public()
        ),
    );
    for args in [
        &["--config", &config, "check-config"][..],
        &["--config", &config],
    ] {
        let out = std::process::Command::new(hids_test_support::bin("hids-agent"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("chmod 600 {creds}")), "{err}");
        assert!(err.contains("mode 0644"), "{err}");
    }
}
