//! Matching logic on records built by hand; loading from files is in `tests/feeds.rs`.

use std::sync::Arc;

use super::*;

fn record(ecosystem: Ecosystem, status: Status, ranges: Vec<Range>) -> Affected {
    Affected {
        id: "CVE-2024-0001".into(),
        aliases: Arc::new([]),
        ecosystem,
        release: None,
        package: "pkg".into(),
        status,
        ranges: ranges.into(),
        versions: Arc::new([]),
        severity: Severity::Unknown,
    }
}

fn range(kind: RangeKind, events: &[(&str, &str)]) -> Range {
    let events = events
        .iter()
        .map(|&(kind, v)| match kind {
            "introduced" => Event::Introduced(v.into()),
            "fixed" => Event::Fixed(v.into()),
            "last_affected" => Event::LastAffected(v.into()),
            _ => Event::Limit(v.into()),
        })
        .collect();
    Range { kind, events }
}

#[test]
fn tracker_status_decides_under_dpkg_ordering() {
    let fixed = record(Ecosystem::Debian, Status::Fixed("1:2.0-1".into()), vec![]);
    // The epoch outranks everything after it.
    assert!(fixed.affects("5.0-1"));
    assert!(fixed.affects("1:2.0-0.1"));
    assert!(fixed.affects("1:2.0~rc1-1"));
    assert!(!fixed.affects("1:2.0-1"));
    assert!(!fixed.affects("1:2.0-1+deb12u1"));
    assert_eq!(fixed.fixed_version(), Some("1:2.0-1"));
    assert_eq!(fixed.fixed_version_for("1:1.0-1"), Some("1:2.0-1"));

    let open = record(Ecosystem::Debian, Status::Unfixed, vec![]);
    assert!(open.affects("99:99"));
    assert_eq!(open.fixed_version(), None);

    let never = record(Ecosystem::Debian, Status::NotAffected, vec![]);
    assert!(!never.affects("0.1-1"));
}

#[test]
fn osv_ranges_follow_the_schema_evaluation() {
    // Two branches: [0, 1.2.5) and [2.0.0, 2.1.3), and 3.0.0 up to last_affected 3.0.2.
    let branches = record(
        Ecosystem::Npm,
        Status::Fixed("2.1.3".into()),
        vec![
            range(
                RangeKind::Semver,
                &[("introduced", "0"), ("fixed", "1.2.5")],
            ),
            range(
                RangeKind::Semver,
                &[("introduced", "2.0.0"), ("fixed", "2.1.3")],
            ),
            range(
                RangeKind::Ecosystem,
                &[("introduced", "3.0.0"), ("last_affected", "3.0.2")],
            ),
        ],
    );
    for (installed, affected, fix) in [
        ("0.0.1", true, Some("1.2.5")),
        ("1.2.4", true, Some("1.2.5")),
        ("1.2.5", false, Some("2.1.3")),
        ("1.9.9", false, Some("2.1.3")),
        ("2.0.0", true, Some("2.1.3")),
        ("2.1.3", false, Some("2.1.3")),
        ("3.0.0", true, Some("2.1.3")),
        ("3.0.2", true, Some("2.1.3")),
        ("3.0.3", false, Some("2.1.3")),
    ] {
        assert_eq!(branches.affects(installed), affected, "{installed}");
        assert_eq!(branches.fixed_version_for(installed), fix, "{installed}");
    }
}

#[test]
fn osv_limits_and_explicit_versions() {
    let limited = record(
        Ecosystem::PyPI,
        Status::Unfixed,
        vec![range(
            RangeKind::Ecosystem,
            &[("introduced", "1.0"), ("limit", "2.0")],
        )],
    );
    assert!(!limited.affects("0.9"));
    assert!(limited.affects("1.0"));
    assert!(limited.affects("1.9.post1"));
    assert!(!limited.affects("2.0"));

    let listed = Affected {
        versions: vec![Arc::from("1.0.0")].into(),
        ..record(Ecosystem::PyPI, Status::Unfixed, vec![])
    };
    // PEP 440: 1.0 and 1.0.0 are the same version.
    assert!(listed.affects("1.0"));
    assert!(!listed.affects("1.0.1"));
}

#[test]
fn release_matches_codename_or_version_id() {
    let by_codename = Affected {
        release: Some("bookworm".into()),
        ..record(Ecosystem::Debian, Status::Unfixed, vec![])
    };
    assert!(by_codename.applies_to_release("bookworm", "12"));
    assert!(!by_codename.applies_to_release("trixie", "13"));
    let by_number = Affected {
        release: Some("12".into()),
        ..by_codename.clone()
    };
    assert!(by_number.applies_to_release("bookworm", "12"));
    assert!(by_number.applies_to_release("", "12.5"));
    assert!(!by_number.applies_to_release("", ""));
    let any = record(Ecosystem::Debian, Status::Unfixed, vec![]);
    assert!(any.applies_to_release("", ""));
}

#[test]
fn severities_parse_and_order() {
    assert_eq!(Severity::parse("low*"), Severity::Low);
    assert_eq!(Severity::parse("medium**"), Severity::Medium);
    assert_eq!(Severity::parse("unimportant"), Severity::Negligible);
    assert_eq!(Severity::parse("not yet assigned"), Severity::Unknown);
    assert_eq!(Severity::parse("end-of-life"), Severity::Unknown);
    assert_eq!(Severity::parse("MODERATE"), Severity::Medium);
    assert_eq!(Severity::parse("CRITICAL"), Severity::Critical);
    assert!(Severity::Unknown < Severity::Negligible);
    assert!(Severity::Negligible < Severity::Low);
    assert!(Severity::High < Severity::Critical);
}

#[test]
fn index_finds_by_id_alias_and_normalised_name() {
    let mut pypi = record(Ecosystem::PyPI, Status::Unfixed, vec![]);
    pypi.id = "GHSA-abcd-efgh-ijkl".into();
    pypi.aliases = vec![Arc::from("CVE-2024-0001")].into();
    pypi.package = "Foo_Bar.baz".into();
    let deb = record(Ecosystem::Debian, Status::Unfixed, vec![]);
    let feeds = Feeds::from_advisories(vec![pypi, deb]);
    assert_eq!(feeds.by_id("CVE-2024-0001").count(), 2);
    assert_eq!(feeds.by_id("cve-2024-0001").count(), 2);
    assert_eq!(feeds.by_id("ghsa-abcd-efgh-ijkl").count(), 1);
    assert_eq!(feeds.by_id("CVE-1999-0001").count(), 0);
    assert_eq!(feeds.by_package(Ecosystem::PyPI, "foo-bar-baz").count(), 1);
    assert_eq!(feeds.by_package(Ecosystem::PyPI, "FOO.BAR__BAZ").count(), 1);
    assert_eq!(feeds.by_package(Ecosystem::Debian, "pkg").count(), 1);
    assert_eq!(feeds.by_package(Ecosystem::Npm, "pkg").count(), 0);
    let ids: Vec<&str> = feeds.ids().collect();
    assert_eq!(ids, ["CVE-2024-0001", "GHSA-abcd-efgh-ijkl"]);
}

#[test]
fn pep503_normalises_runs_of_separators() {
    assert_eq!(pep503("Foo__Bar-.-baz"), "foo-bar-baz");
    assert_eq!(pep503("requests"), "requests");
}
