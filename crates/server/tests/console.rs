//! The web console as a person sees it: headless Chromium (Debian's `chromium`) loads
//! each page from a real server whose alerts came from real events through a
//! Kafka-protocol broker, and the rendered DOM must show what matters (each alert's
//! title and level on the queue). Screenshots are kept for a person to look at, under
//! `$TMPDIR/hids-console-screenshots/`. Changes go through the same forms a browser
//! posts, with a session cookie.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hids_test_support::{
    bin, etcd_available, json, skip_unless, tag, write_file, Broker, Etcd, KeyPair, Server, Sim,
};
use serde_json::Value;

const T0: &str = "2026-11-30T10:00:05.000001Z";
const PASSWORD: &str = "a long enough password";

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Where screenshots are kept after the test ends.
fn screenshots() -> PathBuf {
    let dir = std::env::temp_dir().join("hids-console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `hids-server` subcommand `args` on the server's config, with `stdin`.
fn server_cli(server: &Server, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(bin("hids-server"))
        .arg("--config")
        .arg(&server.config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn login_link(server: &Server, operator: &str, next: &str) -> String {
    let (ok, out, err) = server_cli(
        server,
        &["login-link", "--operator", operator, "--next", next],
        "",
    );
    assert!(ok, "login-link: {err}");
    out.trim().to_owned()
}

/// The DOM Chromium renders at `url`, and a screenshot of it saved as `name`.png. Two
/// browser runs (the flags do not mix), each in a profile of its own; `url_for` gives
/// each its URL (a login link works once).
fn browse(url_for: &mut dyn FnMut() -> String, name: &str) -> String {
    let browser = chromium().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], url: &str| {
        let out = Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1400,1000",
                // The HTTPS test's certificate is signed by a CA of its own.
                "--ignore-certificate-errors",
                // The page's console messages on stderr, to check above.
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "chromium: {log}");
        // The page's script (htmx) ran under the page's Content-Security-Policy: a
        // refused resource or a script error is a broken page.
        for bad in [
            "Refused to",
            "Uncaught",
            "Content Security Policy",
            "Failed to load",
        ] {
            assert!(
                !log.contains(bad),
                "{bad:?} in the browser's console:\n{log}"
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"], &url_for());
    let shot = screenshots().join(format!("{name}.png"));
    run(&[&format!("--screenshot={}", shot.display())], &url_for());
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    dom
}

/// A listener as the network plugin reports it (docs/network.md).
fn listening(host: &str, port: u16, process: &str) -> Vec<u8> {
    serde_json::json!({
        "@timestamp": T0,
        "event": {"kind": "state", "category": ["network"], "type": ["info"],
                  "action": "listening", "sequence": u64::from(port), "module": "hids",
                  "dataset": "hids.network"},
        "host": {"id": host, "hostname": format!("{host}.example")},
        "network": {"transport": "tcp", "type": "ipv4"},
        "source": {"ip": "0.0.0.0", "port": port},
        "process": {"pid": 700 + u64::from(port), "name": process},
        "hids": {"plugin": "network", "run_id": format!("net-{host}"),
                 "socket": {"state": "listen", "inode": 90_000 + u64::from(port), "netns": 4026531833u64}}
    })
    .to_string()
    .into_bytes()
}

/// web-1's software as the inventory plugin sends it: one part, with openssl below the
/// fix of the feed's CVE.
fn inventory(host: &str) -> Vec<u8> {
    use hids_types::package::{inventory_hash, InventoryPart, OsRelease, Package, PackageType};
    let os = OsRelease {
        id: "debian".into(),
        version_id: "12".into(),
        codename: "bookworm".into(),
        name: "Debian GNU/Linux 12 (bookworm)".into(),
    };
    let deb = |name: &str, version: &str| Package {
        kind: PackageType::Deb,
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        source: String::new(),
        source_version: String::new(),
        path: String::new(),
    };
    let packages = vec![
        deb("bash", "5.2.15-2+b7"),
        deb("openssl", "3.0.11-1~deb12u1"),
    ];
    let part = InventoryPart {
        hash: inventory_hash(&os, "6.1.0-13-amd64", &packages),
        packages: packages.len() as u64,
        part: 0,
        parts: 1,
        os,
        kernel: "6.1.0-13-amd64".into(),
        items: packages,
        command_id: None,
    };
    serde_json::json!({
        "@timestamp": T0,
        "event": {"kind": "state", "category": ["package"], "type": ["info"],
                  "action": "inventory", "sequence": 9, "module": "hids", "dataset": "hids.inventory"},
        "host": {"id": host, "hostname": format!("{host}.example")},
        "hids": {"plugin": "inventory", "run_id": format!("inv-{host}"), "inventory": part}
    })
    .to_string()
    .into_bytes()
}

/// The server's directory and the feed's, kept as long as the server runs.
type Dirs = (tempfile::TempDir, tempfile::TempDir);

/// A Debian security tracker feed with one CVE in openssl, fixed in bookworm.
const TRACKER: &str = r#"{"openssl": {"CVE-2099-0001": {"description": "test", "scope": "local",
  "debianbug": 1, "releases": {"bookworm": {"status": "resolved", "urgency": "high",
  "fixed_version": "3.0.13-1~deb12u1", "repositories": {"bookworm": "x"}}}}}}"#;

/// A server whose store holds reverse-shell alerts of two hosts, and an operator `ana`.
fn seeded() -> (Broker, Dirs, Server, Vec<Value>) {
    seeded_with("")
}

/// As [`seeded`], with `extra` in the server's configuration.
fn seeded_with(extra: &str) -> (Broker, Dirs, Server, Vec<Value>) {
    let topic = format!("events-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    broker.produce(
        &topic,
        &[
            (
                "web-1".to_string(),
                reverse_shell("web-1", &[("idc", "bj1"), ("project", "shop")], T0, 1),
            ),
            (
                "db-2".to_string(),
                reverse_shell("db-2", &[("idc", "sh2"), ("project", "pay")], T0, 1),
            ),
            ("web-1".to_string(), listening("web-1", 2222, "sshd")),
            ("web-1".to_string(), listening("web-1", 8443, "nginx")),
            ("web-1".to_string(), inventory("web-1")),
        ],
    );
    let feeds = tempfile::tempdir().unwrap();
    let feed = write_file(feeds.path(), "debian.json", TRACKER);
    let extra = format!("[vulns]\nfeeds = [{feed:?}]\n{extra}");
    let extra = extra.as_str();
    let (dir, server) = sqlite_server(&broker, &topic, extra);
    let alerts_before = server.wait_alerts("the seeded alerts", "", Duration::from_secs(60), |a| {
        !alerts_of(a, "web-1").is_empty() && !alerts_of(a, "db-2").is_empty()
    });
    // Before the first operator, the queue is readable without a login (the API
    // already is); changes are not allowed.
    let body = http()
        .get(server.url("/alerts"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        body.contains(alerts_before[0]["title"].as_str().unwrap()),
        "{body}"
    );
    let alerts = server.wait_alerts("the seeded alerts", "", Duration::from_secs(60), |a| {
        !alerts_of(a, "web-1").is_empty() && !alerts_of(a, "db-2").is_empty()
    });
    let (ok, _, err) = server_cli(
        &server,
        &["operator", "add", "ana"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "operator add: {err}");
    (broker, (dir, feeds), server, alerts)
}

#[test]
fn the_alert_queue_shows_each_alert_title_and_level_in_a_browser() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let (_broker, _dir, server, alerts) = seeded();
    let dom = browse(&mut || login_link(&server, "ana", "/alerts"), "alerts");
    assert!(dom.contains("<h1>Alerts</h1>"), "{dom}");
    for alert in &alerts {
        let title = alert["title"].as_str().unwrap();
        let level = alert["level"].as_str().unwrap();
        assert!(dom.contains(title), "no {title:?} in the queue:\n{dom}");
        assert!(
            dom.contains(&format!("level-{level}\">{level}</span>")),
            "no level {level:?} in the queue:\n{dom}"
        );
        assert!(dom.contains(alert["hostname"].as_str().unwrap()), "{dom}");
    }
    // The overview and a host's page, as seen.
    let dom = browse(&mut || login_link(&server, "ana", "/"), "overview");
    assert!(
        dom.contains("agents online") && dom.contains("critical alerts"),
        "{dom}"
    );
    let dom = browse(&mut || login_link(&server, "ana", "/hosts/web-1"), "host");
    let web = alerts_of(&alerts, "web-1")[0];
    assert!(dom.contains(web["title"].as_str().unwrap()), "{dom}");
    assert!(
        !dom.contains("db-2.example"),
        "another host's alert on web-1's page:\n{dom}"
    );
    for port in ["2222", "8443"] {
        let cell = format!("<td class=\"num port\">{port}</td>");
        assert!(
            dom.contains(&cell),
            "no port {port} on the host's page:\n{dom}"
        );
    }
    for needle in [
        "sshd",
        "nginx",
        "/dev/tcp/203.0.113.7/4444",
        "CVE-2099-0001",
        "3.0.13-1~deb12u1",
        "5.2.15-2+b7",
    ] {
        assert!(
            dom.contains(needle),
            "no {needle:?} on the host's page:\n{dom}"
        );
    }
}

#[test]
fn pages_need_a_login_and_a_link_works_once() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let (_broker, _dir, server, alerts) = seeded();
    let title = alerts[0]["title"].as_str().unwrap().to_owned();
    let dom = browse(&mut || server.url("/alerts"), "not-logged-in");
    assert!(dom.contains("name=\"password\""), "no login form:\n{dom}");
    assert!(
        !dom.contains(&title),
        "alerts shown without a login:\n{dom}"
    );

    let link = login_link(&server, "ana", "/alerts");
    let client = http();
    let first = client.get(&link).send().unwrap();
    assert_eq!(first.status(), 303);
    let again = client.get(&link).send().unwrap();
    assert_eq!(again.status(), 401, "a login link worked twice");
    // A wrong password is refused, the right one logs in.
    let wrong = client
        .post(server.url("/login"))
        .form(&[("name", "ana"), ("password", "not it"), ("next", "/alerts")])
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .post(server.url("/login"))
        .form(&[("name", "ana"), ("password", PASSWORD), ("next", "/alerts")])
        .send()
        .unwrap();
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], "/alerts");
    // A link for an operator who does not exist is not made.
    let (ok, _, err) = server_cli(&server, &["login-link", "--operator", "mallory"], "");
    assert!(!ok && err.contains("no operator"), "{err}");
}

#[test]
fn acknowledging_and_suppressing_are_recorded_with_who_did_them() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let (_broker, _dir, server, alerts) = seeded();
    let client = http();
    let cookie = session_cookie(&client, &login_link(&server, "ana", "/"));
    let id = alerts_of(&alerts, "web-1")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = |path: &str, origin: &str, form: &[(&str, &str)]| {
        client
            .post(server.url(path))
            .header("cookie", &cookie)
            .header("origin", origin)
            .form(form)
            .send()
            .unwrap()
    };
    let ours = format!("http://127.0.0.1:{}", server.port);
    // Another site's form is refused, whatever the cookie.
    let forged = post(
        &format!("/alerts/{id}/acknowledge"),
        "https://evil.example",
        &[],
    );
    assert_eq!(forged.status(), 403);
    let acked = post(&format!("/alerts/{id}/acknowledge"), &ours, &[]);
    assert_eq!(acked.status(), 303);
    let suppressed = post(
        &format!("/alerts/{id}/suppress"),
        &ours,
        &[("scope", "host"), ("comment", "red team exercise")],
    );
    assert_eq!(suppressed.status(), 303);
    let sups = server.get("/api/v1/suppressions");
    assert_eq!(sups[0]["host_id"], "web-1", "{sups}");
    // A suppression through the API, which has no login, is in the history too.
    let (status, made) = server.post(
        "/api/v1/suppressions",
        &serde_json::json!({"rule_id": alerts[0]["rule_id"], "comment": "via the API"}),
    );
    assert_eq!(status, 201, "{made}");
    // Logging out needs a page of this console too.
    let forged = client
        .post(server.url("/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(
        sups[0]["comment"].as_str().unwrap().contains("(ana)"),
        "{sups}"
    );

    let dom = browse(&mut || login_link(&server, "ana", "/history"), "history");
    for needle in [
        "acknowledge",
        "suppress",
        "red team exercise",
        "ana",
        "api (no login)",
        "via the API",
    ] {
        assert!(dom.contains(needle), "no {needle:?} in the history:\n{dom}");
    }
    let dom = browse(
        &mut || login_link(&server, "ana", "/alerts"),
        "alerts-acknowledged",
    );
    assert!(dom.contains("acknowledged by ana"), "{dom}");
}

/// Five wrong passwords lock a name out, even when the guesses come all at once: the
/// right password is refused after them.
#[test]
fn guessing_a_password_is_locked_out_even_in_parallel() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let (_broker, _dir, server, _) = seeded();
    let url = server.url("/login");
    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                http()
                    .post(&url)
                    .form(&[
                        ("name", "ana"),
                        ("password", &format!("guess {i}")),
                        ("next", "/"),
                    ])
                    .send()
                    .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
                    .unwrap()
            })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        let (status, body) = g.join().unwrap();
        assert!(status == 401 || status == 503, "a guess got {status}");
        if body.contains("Wrong name or password") {
            checked += 1;
        }
    }
    // Five failures lock the name; two checks run at once, so one more may be under way.
    assert!(
        checked <= 6,
        "{checked} of 12 parallel guesses were checked"
    );
    let right = http()
        .post(&url)
        .form(&[("name", "ana"), ("password", PASSWORD), ("next", "/")])
        .send()
        .unwrap();
    assert_eq!(
        right.status(),
        401,
        "the right password was let in after 12 guesses"
    );
    assert!(right.text().unwrap().contains("login-link"));
}

/// With anonymous reading, pages show without a login; changes still need one, and a
/// suppression's scope is never widened by a bad form.
#[test]
fn anonymous_reading_shows_pages_but_changes_need_an_operator() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let (_broker, _dir, server, alerts) = seeded_with("[console]\nanonymous_read = true\n");
    let dom = browse(&mut || server.url("/alerts"), "anonymous");
    assert!(dom.contains(alerts[0]["title"].as_str().unwrap()), "{dom}");
    assert!(!dom.contains(">Acknowledge<"), "{dom}");
    let id = alerts[0]["id"].as_str().unwrap().to_owned();
    let ours = format!("http://127.0.0.1:{}", server.port);
    let r = http()
        .post(server.url(&format!("/alerts/{id}/acknowledge")))
        .header("origin", &ours)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login?next="));
    let client = http();
    let cookie = session_cookie(&client, &login_link(&server, "ana", "/"));
    for (scope, why) in [("everything", "a typo"), ("", "empty")] {
        let r = client
            .post(server.url(&format!("/alerts/{id}/suppress")))
            .header("cookie", &cookie)
            .header("origin", &ours)
            .form(&[("scope", scope), ("comment", why)])
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "scope {scope:?}");
    }
    assert_eq!(server.get("/api/v1/suppressions"), serde_json::json!([]));
}

/// A staged rollout made with `hidsctl` against simulated agents: the console shows it,
/// and the configuration history shows its waves' writes, read from etcd.
#[test]
fn rollouts_and_the_configuration_history_come_from_etcd() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    skip_unless!(etcd_available(), "needs etcd (Debian: etcd-server)");
    let etcd = Etcd::start();
    let key = KeyPair::make(&etcd);
    let trusted = key.public();
    let _sim = Sim::start(
        &etcd,
        20,
        &[
            "--connections",
            "2",
            "--trusted-key",
            trusted.to_str().unwrap(),
            "--update-secs",
            "1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let release = format!(
        "[[plugins]]\nname = \"process\"\nversion = \"9.8.7\"\nsha256 = \"{}\"\n\
         url = \"http://127.0.0.1:9/hids-plugin-process\"\n",
        "ab".repeat(32)
    );
    let file = write_file(dir.path(), "release.toml", &release);
    let secret = key.secret();
    let out = etcd.hidsctl(&[
        "rollout",
        "start",
        "--file",
        &file,
        "--all",
        "--key",
        &secret,
        "--waves",
        "50,100",
        "--wave-timeout",
        "2m",
        "--json",
    ]);
    let rollout = json(&out);
    assert_eq!(rollout["state"], "completed", "{rollout}");

    let topic = format!("events-{}", tag());
    let broker = Broker::start();
    broker.create_topic(&topic);
    let (_dir, server) = sqlite_server(
        &broker,
        &topic,
        &format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.url()),
    );
    let (ok, _, err) = server_cli(
        &server,
        &["operator", "add", "ana"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "operator add: {err}");
    let dom = browse(&mut || login_link(&server, "ana", "/rollouts"), "rollouts");
    let id = rollout["rollout"].as_str().unwrap();
    for needle in [id, "completed", "process 9.8.7"] {
        assert!(
            dom.contains(needle),
            "no {needle:?} on the rollouts page:\n{dom}"
        );
    }
    let dom = browse(
        &mut || login_link(&server, "ana", "/configuration"),
        "configuration",
    );
    assert!(
        dom.contains(&format!("rollout {id}")),
        "no wave of {id} in the history:\n{dom}"
    );
}

/// Given a certificate, the console is served over HTTPS only, with Secure cookies; a
/// key that does not match the certificate is refused before anything starts.
#[test]
fn with_a_certificate_the_console_is_https_with_secure_cookies() {
    skip_unless!(chromium().is_some(), "needs chromium (Debian: chromium)");
    let certs = hids_test_support::Certs::make();
    let dir = tempfile::tempdir().unwrap();
    let port = hids_test_support::free_port();
    let config = |key: &str| {
        format!(
            "{}[http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            sqlite_config("127.0.0.1:9", "events", "g1", &dir.path().join("a.db"), ""),
            certs.path("server.pem"),
            certs.path(key),
        )
    };
    let path = write_file(dir.path(), "server.toml", &config("server-key.pem"));
    let check = Command::new(bin("hids-server"))
        .args(["--config", &path, "check-config"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let wrong = write_file(dir.path(), "wrong.toml", &config("ca-key.pem"));
    let check = Command::new(bin("hids-server"))
        .args(["--config", &wrong, "check-config"])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(64),
        "a key of another certificate was taken"
    );

    let mut child = Command::new(bin("hids-server"))
        .args(["--config", &path])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path("ca.pem")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    hids_test_support::wait_until("the console over HTTPS", Duration::from_secs(30), || {
        client.get(format!("{base}/login")).send().is_ok()
    });
    // Plain HTTP on the same port gets no page.
    assert!(http()
        .get(format!("http://127.0.0.1:{port}/login"))
        .send()
        .is_err());
    let (ok, _, err) = {
        let mut add = Command::new(bin("hids-server"))
            .args(["--config", &path, "operator", "add", "ana"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        add.stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = add.wait_with_output().unwrap();
        (
            out.status.success(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{err}");
    let link = Command::new(bin("hids-server"))
        .args(["--config", &path, "login-link", "--operator", "ana"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout).trim().to_owned();
    assert!(link.starts_with(&base), "{link}");
    let r = client.get(&link).send().unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    let dom = browse(
        &mut || {
            let out = Command::new(bin("hids-server"))
                .args([
                    "--config",
                    &path,
                    "login-link",
                    "--operator",
                    "ana",
                    "--next",
                    "/alerts",
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        },
        "alerts-https",
    );
    assert!(dom.contains("<h1>Alerts</h1>"), "{dom}");
    let _ = child.kill();
    let _ = child.wait();
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Follows a login link; returns the session cookie it set (`name=value`).
fn session_cookie(client: &reqwest::blocking::Client, link: &str) -> String {
    let r = client.get(link).send().unwrap();
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}
