//! Loading feed files from disk: the tracker, OSV objects, arrays, directories and zips,
//! and the bad input each must survive (truncated, junk, wrong types, too large, bombs).

#![allow(clippy::unwrap_used)] // fixtures: a failed write stops the test loudly

use std::io::Write;
use std::path::{Path, PathBuf};

use hids_vulns::feed::{Ecosystem, FeedFormat, FeedLimits, FeedLoad, Feeds, Severity, Status};

const TRACKER: &str = r#"{
  "bash": {
    "CVE-2022-3715": {
      "description": "a heap-buffer-overflow in valid_parameter_transform",
      "scope": "local",
      "debianbug": 1023422,
      "releases": {
        "bookworm": {"status": "resolved", "repositories": {"bookworm": "5.2.15-2"},
                     "fixed_version": "5.2.15-1", "urgency": "low*"},
        "bullseye": {"status": "open", "repositories": {"bullseye": "5.1-2+deb11u1"},
                     "urgency": "low"},
        "sid": {"status": "resolved", "fixed_version": "5.2.15-1", "urgency": "low",
                "nodsa": "Minor issue", "a_field_from_the_future": [1, 2]}
      }
    },
    "TEMP-0000000-1A2B3C": {
      "releases": {"bookworm": {"status": "undetermined", "urgency": "not yet assigned"}}
    }
  },
  "openssl": {
    "CVE-2023-0001": {
      "releases": {
        "bookworm": {"status": "resolved", "fixed_version": "0", "urgency": "unimportant"},
        "trixie": {"status": "resolved", "fixed_version": "3.0.9-1", "urgency": "high"}
      }
    },
    "CVE-2023-0002": {
      "releases": {"bookworm": {"status": "resolved", "fixed_version": "not a version!", "urgency": "high"}}
    },
    "CVE-2023-0003": {"releases": {"bookworm": {"status": 7}}},
    "CVE-2023-0004": {"releases": "bookworm"}
  },
  "junk-package": [1, 2, 3]
}"#;

const OSV_PYPI: &str = r#"{
  "schema_version": "1.6.0",
  "id": "GHSA-xxxx-yyyy-zzzz",
  "modified": "2024-01-01T00:00:00Z",
  "aliases": ["CVE-2024-1111"],
  "summary": "something",
  "affected": [
    {"package": {"ecosystem": "PyPI", "name": "Jinja2", "purl": "pkg:pypi/jinja2"},
     "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.3"}]},
                {"type": "GIT", "repo": "https://example.org/x", "events": [{"introduced": "abc"}]}],
     "versions": ["3.1.0", "3.1.1", "3.1.2"]},
    {"package": {"ecosystem": "crates.io", "name": "something"},
     "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}]},
    {"package": {"ecosystem": "npm", "name": "left-pad"},
     "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "not.a.version.at.all!"}]}]}
  ],
  "database_specific": {"severity": "MODERATE", "github_reviewed": true}
}"#;

const OSV_ARRAY: &str = r#"[
  {"id": "DEBIAN-CVE-2024-2222", "aliases": ["CVE-2024-2222"],
   "affected": [{"package": {"ecosystem": "Debian:12", "name": "curl"},
                 "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u5"}]}],
                 "ecosystem_specific": {"urgency": "medium"}}]},
  {"id": "GHSA-maven-0001", "withdrawn": "2024-02-02T00:00:00Z",
   "affected": [{"package": {"ecosystem": "Maven", "name": "org.example:lib"},
                 "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]},
  {"id": "GHSA-maven-0002",
   "affected": [{"package": {"ecosystem": "Maven", "name": "org.apache.logging.log4j:log4j-core"},
                 "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "2.0-beta9"}, {"fixed": "2.15.0"}]}]}],
   "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"}]},
  {"id": 12345, "affected": "wrong type"}
]"#;

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn load(paths: &[PathBuf]) -> (Feeds, FeedLoad) {
    Feeds::load(paths, &FeedLimits::default())
}

#[test]
fn tracker_file_loads_with_its_statuses_and_skips_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tracker.json", TRACKER.as_bytes());
    let (feeds, report) = load(std::slice::from_ref(&path));
    let file = &report.files[0];
    assert_eq!(file.format, Some(FeedFormat::DebianTracker), "{report:?}");
    assert_eq!(file.error, None);
    // bash: 3 + 1 releases; openssl CVE-2023-0001: 2. Skipped: bad version, status 7,
    // releases not an object, the junk package.
    assert_eq!(file.advisories, 6, "{report:?}");
    assert_eq!(file.skipped.bad_version, 1);
    assert_eq!(file.skipped.malformed, 3);
    assert!(file.first_skip.is_some());
    assert!(report.problems.is_empty());

    let bash: Vec<_> = feeds.by_id("CVE-2022-3715").collect();
    assert_eq!(bash.len(), 3);
    let bookworm = bash
        .iter()
        .find(|a| a.release.as_deref() == Some("bookworm"))
        .unwrap();
    assert_eq!(bookworm.package.as_ref(), "bash");
    assert_eq!(bookworm.ecosystem, Ecosystem::Debian);
    assert_eq!(bookworm.status, Status::Fixed("5.2.15-1".into()));
    assert_eq!(bookworm.severity, Severity::Low);
    assert!(bookworm.affects("5.2.14-1"));
    assert!(bookworm.affects("5.2.15-0.1"));
    assert!(!bookworm.affects("5.2.15-1"));
    assert!(!bookworm.affects("5.2.15-2"));
    assert!(bookworm.applies_to_release("bookworm", "12"));
    let bullseye = bash
        .iter()
        .find(|a| a.release.as_deref() == Some("bullseye"))
        .unwrap();
    assert_eq!(bullseye.status, Status::Unfixed);
    assert!(bullseye.affects("5.1-2+deb11u1"));

    let temp: Vec<_> = feeds.by_id("TEMP-0000000-1A2B3C").collect();
    assert_eq!(
        temp[0].status,
        Status::Unfixed,
        "undetermined counts as open"
    );
    assert_eq!(temp[0].severity, Severity::Unknown);

    let openssl: Vec<_> = feeds.by_package(Ecosystem::Debian, "openssl").collect();
    assert_eq!(openssl.len(), 2);
    let not_affected = openssl
        .iter()
        .find(|a| a.release.as_deref() == Some("bookworm"))
        .unwrap();
    assert_eq!(not_affected.status, Status::NotAffected);
    assert_eq!(not_affected.severity, Severity::Negligible);
    assert!(!not_affected.affects("0.0.1-1"));
    assert_eq!(feeds.by_package(Ecosystem::Debian, "bash").count(), 4);
    let ids: Vec<&str> = feeds.ids().collect();
    assert_eq!(
        ids,
        ["CVE-2022-3715", "CVE-2023-0001", "TEMP-0000000-1A2B3C"]
    );
}

#[test]
fn osv_object_array_directory_and_zip_load_alike() {
    let dir = tempfile::tempdir().unwrap();
    let object = write(dir.path(), "pypi.json", OSV_PYPI.as_bytes());
    // The name says nothing: the content decides.
    let array = write(dir.path(), "feed.data", OSV_ARRAY.as_bytes());
    let (feeds, report) = load(&[object, array]);
    assert!(!report.has_failures(), "{report:?}");
    assert_eq!(report.files[0].format, Some(FeedFormat::Osv));
    assert_eq!(report.files[0].advisories, 1);
    assert_eq!(report.files[0].skipped.other_ecosystem, 1);
    assert_eq!(report.files[0].skipped.bad_version, 1);
    assert_eq!(report.files[1].advisories, 2);
    assert_eq!(report.files[1].skipped.withdrawn, 1);
    assert_eq!(report.files[1].skipped.malformed, 1);

    let jinja: Vec<_> = feeds.by_id("CVE-2024-1111").collect();
    assert_eq!(jinja.len(), 1);
    assert_eq!(jinja[0].id.as_ref(), "GHSA-xxxx-yyyy-zzzz");
    assert_eq!(jinja[0].severity, Severity::Medium);
    assert_eq!(jinja[0].ranges.len(), 1, "GIT ranges are dropped");
    assert!(jinja[0].affects("3.1.2"));
    assert!(jinja[0].affects("2.11.3"));
    assert!(!jinja[0].affects("3.1.3"));
    assert_eq!(jinja[0].fixed_version(), Some("3.1.3"));
    assert_eq!(feeds.by_package(Ecosystem::PyPI, "jinja2").count(), 1);

    let curl: Vec<_> = feeds.by_package(Ecosystem::Debian, "curl").collect();
    assert_eq!(curl[0].release.as_deref(), Some("12"));
    assert_eq!(curl[0].severity, Severity::Medium);
    assert!(curl[0].applies_to_release("bookworm", "12"));
    assert!(curl[0].affects("7.88.1-10+deb12u4"));
    assert!(!curl[0].affects("7.88.1-10+deb12u5"));

    let log4j: Vec<_> = feeds
        .by_package(Ecosystem::Maven, "org.apache.logging.log4j:log4j-core")
        .collect();
    assert_eq!(log4j[0].severity, Severity::Critical);
    assert!(log4j[0].affects("2.14.1"));
    assert!(!log4j[0].affects("2.17.0"));

    // The same records from a directory of files and from a zip of them.
    let osv_dir = dir.path().join("all");
    std::fs::create_dir(&osv_dir).unwrap();
    write(&osv_dir, "GHSA-xxxx-yyyy-zzzz.json", OSV_PYPI.as_bytes());
    write(&osv_dir, "array.json", OSV_ARRAY.as_bytes());
    write(&osv_dir, "README.txt", b"not read");
    let zip_path = dir.path().join("all.zip");
    write_zip(
        &zip_path,
        &[
            ("GHSA-xxxx-yyyy-zzzz.json", OSV_PYPI),
            ("array.json", OSV_ARRAY),
        ],
    );
    for (path, format) in [
        (osv_dir, FeedFormat::OsvDirectory),
        (zip_path, FeedFormat::OsvZip),
    ] {
        let (feeds, report) = load(std::slice::from_ref(&path));
        assert!(!report.has_failures(), "{report:?}");
        assert_eq!(report.files[0].format, Some(format));
        assert_eq!(report.files[0].files, 2);
        assert_eq!(feeds.len(), 3, "{path:?}");
        assert_eq!(feeds.by_id("CVE-2024-2222").count(), 1);
    }
}

fn write_zip(path: &Path, members: &[(&str, &str)]) {
    let mut writer = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in members {
        writer.start_file(*name, options).unwrap();
        writer.write_all(content.as_bytes()).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn broken_files_contribute_nothing_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = write(
        dir.path(),
        "truncated.json",
        &TRACKER.as_bytes()[..TRACKER.len() / 2],
    );
    let junk = write(dir.path(), "junk.json", b"\x00\x01 this is not json");
    let empty = write(dir.path(), "empty.json", b"");
    let missing = dir.path().join("missing.json");
    let number = write(dir.path(), "number.json", b"42");
    let good = write(dir.path(), "good.json", OSV_PYPI.as_bytes());
    let paths = [truncated, junk, empty, missing, number, good];
    let (feeds, report) = load(&paths);
    for (file, path) in report.files.iter().zip(&paths) {
        assert_eq!(&file.path, path);
    }
    for file in &report.files[..5] {
        assert!(file.error.is_some(), "{file:?}");
        assert_eq!(file.advisories, 0, "{file:?}");
    }
    assert_eq!(report.problems.len(), 5);
    assert!(
        report.problems[0].reason.contains("EOF"),
        "{:?}",
        report.problems[0]
    );
    assert_eq!(report.files[5].error, None);
    // Nothing of the truncated tracker is published, though its first half parsed.
    assert_eq!(feeds.by_package(Ecosystem::Debian, "bash").count(), 0);
    assert_eq!(feeds.len(), 1);
}

#[test]
fn a_broken_member_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let osv_dir = dir.path().join("all");
    std::fs::create_dir(&osv_dir).unwrap();
    write(&osv_dir, "a.json", OSV_PYPI.as_bytes());
    write(
        &osv_dir,
        "b.json",
        &OSV_ARRAY.as_bytes()[..OSV_ARRAY.len() - 3],
    );
    let (feeds, report) = load(std::slice::from_ref(&osv_dir));
    assert_eq!(report.files[0].error, None);
    assert_eq!(report.files[0].files, 2);
    assert_eq!(report.files[0].files_failed, 1);
    assert_eq!(report.problems[0].path, osv_dir.join("b.json"));
    assert_eq!(feeds.len(), 1);
}

#[test]
fn limits_refuse_large_files_zip_bombs_and_too_many_records() {
    let dir = tempfile::tempdir().unwrap();
    let small = FeedLimits {
        max_file_bytes: 64 << 10,
        ..FeedLimits::default()
    };
    // A file over max_file_bytes (sparse: no disk spent), refused before reading.
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (_, report) = Feeds::load(std::slice::from_ref(&huge), &small);
    let reason = report.files[0].error.as_deref().unwrap();
    assert!(reason.contains("max_file_bytes"), "{reason}");

    // A zip member inflating far past max_file_bytes: stopped while inflating.
    let mut bomb = String::from("[");
    bomb.push_str(&" ".repeat(8 << 20));
    bomb.push(']');
    let bomb_zip = dir.path().join("bomb.zip");
    write_zip(&bomb_zip, &[("bomb.json", &bomb), ("ok.json", OSV_PYPI)]);
    assert!(std::fs::metadata(&bomb_zip).unwrap().len() < 64 << 10);
    let (feeds, report) = Feeds::load(std::slice::from_ref(&bomb_zip), &small);
    assert_eq!(report.files[0].files_failed, 1, "{report:?}");
    assert!(report.problems[0].reason.contains("max_file_bytes"));
    assert!(report.problems[0].path.ends_with("bomb.zip/bomb.json"));
    assert_eq!(feeds.len(), 1);

    // The same bomb against max_total_bytes: the whole zip is refused.
    let tight_total = FeedLimits {
        max_total_bytes: 1 << 20,
        ..FeedLimits::default()
    };
    let (feeds, report) = Feeds::load(std::slice::from_ref(&bomb_zip), &tight_total);
    assert!(report.files[0]
        .error
        .as_deref()
        .unwrap()
        .contains("max_total_bytes"));
    assert_eq!(feeds.len(), 0);

    // A file whose records would pass the cap is refused whole, not cut.
    let tracker = write(dir.path(), "tracker.json", TRACKER.as_bytes());
    let capped = FeedLimits {
        max_advisories: 5,
        ..FeedLimits::default()
    };
    let (feeds, report) = Feeds::load(&[tracker], &capped);
    assert!(report.files[0]
        .error
        .as_deref()
        .unwrap()
        .contains("max_advisories"));
    assert_eq!(feeds.len(), 0);
}

#[test]
fn one_osv_record_may_not_be_a_giant_tree() {
    let dir = tempfile::tempdir().unwrap();
    let mut giant = String::from(r#"{"id": "X", "details": ""#);
    giant.push_str(&"a".repeat(20 << 20));
    giant.push_str(r#""}"#);
    let path = write(dir.path(), "giant.json", giant.as_bytes());
    let (feeds, report) = load(&[path]);
    let reason = report.files[0].error.as_deref().unwrap();
    assert!(reason.contains("OSV record larger than"), "{reason}");
    assert!(feeds.is_empty());
}

/// Load time and peak memory on a synthetic tracker file the size of the real one
/// (~70 MB). Run: `cargo test -p hids-vulns --release --test feeds -- --ignored
/// --nocapture tracker_of_realistic_size`.
#[test]
#[ignore]
fn tracker_of_realistic_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tracker.json");
    let records = write_synthetic_tracker(&path, 70 << 20);
    let size = std::fs::metadata(&path).unwrap().len();
    let rss_before = peak_rss_kb();
    let started = std::time::Instant::now();
    let (feeds, report) = load(std::slice::from_ref(&path));
    let elapsed = started.elapsed();
    let rss_after = peak_rss_kb();
    assert!(!report.has_failures(), "{report:?}");
    assert_eq!(feeds.len() as u64, records);
    println!(
        "tracker {} MB, {} records of {} bytes, {} ids: loaded in {:.2} s; peak RSS {} MB before, {} MB after",
        size >> 20,
        feeds.len(),
        std::mem::size_of::<hids_vulns::feed::Affected>(),
        feeds.ids().count(),
        elapsed.as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024,
    );
}

/// Writes a tracker file shaped like the real one (source packages, each with CVE and
/// TEMP entries, five releases with repositories and urgencies, a description) until
/// `target` bytes; returns the records it holds.
fn write_synthetic_tracker(path: &Path, target: u64) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let releases = ["bullseye", "bookworm", "trixie", "forky", "sid"];
    let urgencies = [
        "low",
        "medium",
        "high",
        "unimportant",
        "not yet assigned",
        "low*",
    ];
    let (mut written, mut records, mut package) = (0u64, 0u64, 0u64);
    out.write_all(b"{").unwrap();
    while written < target {
        let sep = if package == 0 { "" } else { "," };
        let mut text = format!("{sep}\"srcpkg{package}\": {{");
        for bug in 0..(3 + package % 12) {
            let id = if bug % 7 == 6 {
                format!("TEMP-{:07}-{:06X}", package, bug)
            } else {
                format!("CVE-{}-{}", 2000 + (package + bug) % 25, package * 16 + bug)
            };
            let sep = if bug == 0 { "" } else { "," };
            text.push_str(&format!(
                "{sep}\"{id}\": {{\"description\": \"A flaw was found in srcpkg{package} that lets a remote attacker cause a denial of service via crafted input.\", \"scope\": \"remote\", \"debianbug\": {}, \"releases\": {{",
                900000 + package
            ));
            for (n, release) in releases.iter().enumerate() {
                let sep = if n == 0 { "" } else { ", " };
                let urgency = urgencies[((package + bug + n as u64) % 6) as usize];
                let version = format!(
                    "{}.{}.{}-{}+deb{}u{}",
                    package % 9,
                    bug,
                    n,
                    1 + bug % 4,
                    11 + n,
                    bug % 3
                );
                let state = match (package + bug + n as u64) % 5 {
                    0 => "\"status\": \"open\"".to_string(),
                    1 => "\"status\": \"resolved\", \"fixed_version\": \"0\"".to_string(),
                    2 => "\"status\": \"undetermined\"".to_string(),
                    _ => format!("\"status\": \"resolved\", \"fixed_version\": \"{version}\""),
                };
                text.push_str(&format!(
                    "{sep}\"{release}\": {{{state}, \"repositories\": {{\"{release}\": \"{version}\", \"{release}-security\": \"{version}\"}}, \"urgency\": \"{urgency}\"}}"
                ));
                records += 1;
            }
            text.push_str("}}");
        }
        text.push('}');
        out.write_all(text.as_bytes()).unwrap();
        written += text.len() as u64;
        package += 1;
    }
    out.write_all(b"}").unwrap();
    out.flush().unwrap();
    records
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
