//! Questions to the index: which hosts have a package in a version range, which are
//! affected by a vulnerability, and which vulnerabilities the fleet has.
//!
//! Work is done per image (distinct inventory) and only then multiplied out to hosts:
//! a version is compared once per distinct package, not once per host.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hids_types::package::{Package, PackageSource, PackageType};
use hids_vulns::feed::{Affected, Ecosystem, Feeds, Severity};
use hids_vulns::version::{self, Scheme};
use serde::Serialize;

use super::index::{FleetIndex, ImageId, PackageId};

/// The version ordering of a package type.
pub fn scheme_of(kind: PackageType) -> Scheme {
    match kind {
        PackageType::Deb | PackageType::Kernel => Scheme::Deb,
        PackageType::Rpm => Scheme::Rpm,
        PackageType::Python => Scheme::Pep440,
        PackageType::Npm => Scheme::Semver,
        PackageType::Jar => Scheme::Maven,
    }
}

/// Which packages: by name (or, for deb and rpm, by source package) and version range.
#[derive(Debug, Clone, Default)]
pub struct PackageFilter {
    pub kind: Option<PackageType>,
    pub name: String,
    /// Match `name` against the source package (deb, rpm), and versions against the
    /// source version: what distribution advisories speak of.
    pub by_source: bool,
    /// Versions at or above this ...
    pub from: Option<String>,
    /// ... and strictly below this ...
    pub below: Option<String>,
    /// ... or exactly this.
    pub equals: Option<String>,
}

impl PackageFilter {
    fn version_of<'a>(&self, package: &'a Package) -> &'a str {
        if self.by_source {
            package.source_version()
        } else {
            &package.version
        }
    }

    fn admits(&self, package: &Package) -> bool {
        let scheme = scheme_of(package.kind);
        let v = self.version_of(package);
        self.from
            .as_deref()
            .is_none_or(|from| version::compare(scheme, v, from).is_ge())
            && self
                .below
                .as_deref()
                .is_none_or(|below| version::compare(scheme, v, below).is_lt())
            && self
                .equals
                .as_deref()
                .is_none_or(|eq| version::compare(scheme, v, eq).is_eq())
    }
}

/// A host that has a matching package.
#[derive(Debug, Clone, Serialize)]
pub struct PackageHost {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub kind: PackageType,
    pub package: String,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// The source package and its version (deb, rpm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PackageSource>,
}

/// A host affected by a vulnerability through one package.
#[derive(Debug, Clone, Serialize)]
pub struct VulnHost {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// The package the feed names: for Debian, the source package.
    pub package: String,
    /// The installed version the feed's ordering was applied to (Debian: the source
    /// version; the lowest, when several binaries of the source are installed).
    pub version: String,
    /// The version that fixes it; null when there is no fix yet.
    pub fixed_version: Option<String>,
    pub severity: Severity,
    #[serde(rename = "type")]
    pub kind: PackageType,
    /// The installed packages that carry it (Debian: the binaries of the source).
    pub binaries: Vec<String>,
}

/// A vulnerability present in the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct VulnSummary {
    pub id: String,
    pub severity: Severity,
    pub hosts: u64,
    /// The packages (source packages for Debian) that carry it.
    pub packages: Vec<String>,
    /// Whether a fix exists for at least one affected host.
    pub fixable: bool,
}

/// Groups of hosts by a label (`idc`, `project`, `product`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostGroup {
    pub key: Option<String>,
    pub hosts: u64,
}

/// Rows of a listing and how many there are in all.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub total: u64,
    pub rows: Vec<T>,
}

/// Packages matching the filter, by image.
fn matching_images(
    index: &FleetIndex,
    filter: &PackageFilter,
) -> BTreeMap<ImageId, Vec<PackageId>> {
    let kinds: Vec<PackageType> = match filter.kind {
        Some(k) => vec![k],
        None => ALL_TYPES.to_vec(),
    };
    let mut by_image: BTreeMap<ImageId, Vec<PackageId>> = BTreeMap::new();
    for kind in kinds {
        let ids = if filter.by_source {
            index.from_source(kind, &filter.name)
        } else {
            index.named(kind, &filter.name)
        };
        for &id in ids {
            if !filter.admits(index.package(id)) {
                continue;
            }
            for image in index.images_of(id) {
                by_image.entry(image).or_default().push(id);
            }
        }
    }
    by_image
}

const ALL_TYPES: [PackageType; 6] = [
    PackageType::Deb,
    PackageType::Rpm,
    PackageType::Python,
    PackageType::Npm,
    PackageType::Jar,
    PackageType::Kernel,
];

/// Hosts with a matching package: `offset`/`limit` over hosts ordered by image, one
/// row per host (its first matching package).
pub fn package_hosts(
    index: &FleetIndex,
    filter: &PackageFilter,
    offset: usize,
    limit: usize,
) -> Page<PackageHost> {
    let by_image = matching_images(index, filter);
    let mut total = 0u64;
    let mut rows = Vec::new();
    for (&image, packages) in &by_image {
        let hosts = &index.image(image).hosts;
        let first = index.package(packages[0]);
        for (i, &slot) in hosts.iter().enumerate() {
            let n = total as usize + i;
            if n >= offset && rows.len() < limit {
                let host = index.host(slot);
                rows.push(PackageHost {
                    host_id: host.id.to_string(),
                    hostname: host.hostname.to_string(),
                    labels: (*host.labels).clone(),
                    kind: first.kind,
                    package: first.name.clone(),
                    version: first.version.clone(),
                    architecture: first.architecture.clone(),
                    source: first.ecs().1,
                });
            }
        }
        total += hosts.len() as u64;
    }
    Page { total, rows }
}

/// Hosts with a matching package, counted by a label.
pub fn package_groups(index: &FleetIndex, filter: &PackageFilter, label: &str) -> Vec<HostGroup> {
    let images: Vec<ImageId> = matching_images(index, filter).into_keys().collect();
    group_hosts(index, &images, label)
}

fn group_hosts(index: &FleetIndex, images: &[ImageId], label: &str) -> Vec<HostGroup> {
    let mut counts: HashMap<Option<&str>, u64> = HashMap::new();
    for &image in images {
        for &slot in &index.image(image).hosts {
            let host = index.host(slot);
            *counts
                .entry(host.labels.get(label).map(String::as_str))
                .or_default() += 1;
        }
    }
    let mut groups: Vec<HostGroup> = counts
        .into_iter()
        .map(|(key, hosts)| HostGroup {
            key: key.map(str::to_owned),
            hosts,
        })
        .collect();
    groups.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then(a.key.is_none().cmp(&b.key.is_none()))
            .then_with(|| a.key.cmp(&b.key))
    });
    groups
}

/// The package type an ecosystem's records are matched against, and whether by source.
fn target(ecosystem: Ecosystem) -> (PackageType, bool) {
    match ecosystem {
        Ecosystem::Debian => (PackageType::Deb, true),
        Ecosystem::PyPI => (PackageType::Python, false),
        Ecosystem::Npm => (PackageType::Npm, false),
        Ecosystem::Maven => (PackageType::Jar, false),
    }
}

/// What one image has of one vulnerability: the package the feed names, the lowest
/// affected installed version, its fix, and the binaries that carry it.
#[derive(Debug, Clone)]
struct ImageFinding {
    package: String,
    version: String,
    fixed_version: Option<String>,
    severity: Severity,
    kind: PackageType,
    binaries: Vec<String>,
}

/// The images one record finds affected, with the package and installed version that
/// make them so.
fn affected_images<'a>(
    index: &'a FleetIndex,
    record: &Affected,
) -> Vec<(ImageId, &'a Package, &'a str)> {
    let (kind, by_source) = target(record.ecosystem);
    let name = record.ecosystem.normalize_name(&record.package);
    let ids = if by_source {
        index.from_source(kind, &name)
    } else {
        index.named(kind, &name)
    };
    let mut hits = Vec::new();
    for &id in ids {
        let package = index.package(id);
        let installed = if by_source {
            package.source_version()
        } else {
            &package.version
        };
        if !record.affects(installed) {
            continue;
        }
        for image in index.images_of(id) {
            if record.ecosystem == Ecosystem::Debian
                && !debian_release(record, &index.image(image).os)
            {
                continue;
            }
            hits.push((image, package, installed));
        }
    }
    hits
}

/// Whether a Debian record applies to a host's release. The tracker names releases by
/// codename, which no derivative shares with Debian; OSV's `Debian:12` by number, which
/// Ubuntu's `12.04` would match too: a numbered release needs a Debian host.
fn debian_release(record: &Affected, os: &hids_types::package::OsRelease) -> bool {
    let numbered = record
        .release
        .as_deref()
        .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    record.applies_to_release(&os.codename, &os.version_id) && (!numbered || os.id == "debian")
}

/// Per image and named package, what a set of records finds in it.
fn findings<'a>(
    index: &FleetIndex,
    records: impl Iterator<Item = &'a Affected>,
) -> BTreeMap<(ImageId, String), ImageFinding> {
    let mut found: BTreeMap<(ImageId, String), ImageFinding> = BTreeMap::new();
    for record in records {
        let kind = target(record.ecosystem).0;
        for (image, package, installed) in affected_images(index, record) {
            note(&mut found, image, record, package, installed, kind);
        }
    }
    found
}

fn note(
    found: &mut BTreeMap<(ImageId, String), ImageFinding>,
    image: ImageId,
    record: &Affected,
    package: &Package,
    installed: &str,
    kind: PackageType,
) {
    let scheme = scheme_of(kind);
    let entry = found
        .entry((image, record.package.to_string()))
        .or_insert_with(|| ImageFinding {
            package: record.package.to_string(),
            version: installed.to_owned(),
            fixed_version: record.fixed_version_for(installed).map(str::to_owned),
            severity: record.severity,
            kind,
            binaries: Vec::new(),
        });
    if version::compare(scheme, installed, &entry.version).is_lt() {
        entry.version = installed.to_owned();
        entry.fixed_version = record.fixed_version_for(installed).map(str::to_owned);
    }
    entry.severity = entry.severity.max(record.severity);
    if !entry.binaries.contains(&package.name) {
        entry.binaries.push(package.name.clone());
    }
}

/// Hosts affected by a vulnerability id (or alias): one row per host and package.
pub fn vuln_hosts(
    index: &FleetIndex,
    feeds: &Feeds,
    id: &str,
    offset: usize,
    limit: usize,
) -> Page<VulnHost> {
    let found = findings(index, feeds.by_id(id));
    let mut total = 0u64;
    let mut rows = Vec::new();
    for ((image, _), finding) in &found {
        let hosts = &index.image(*image).hosts;
        for (i, &slot) in hosts.iter().enumerate() {
            let n = total as usize + i;
            if n >= offset && rows.len() < limit {
                let host = index.host(slot);
                rows.push(VulnHost {
                    host_id: host.id.to_string(),
                    hostname: host.hostname.to_string(),
                    labels: (*host.labels).clone(),
                    package: finding.package.clone(),
                    version: finding.version.clone(),
                    fixed_version: finding.fixed_version.clone(),
                    severity: finding.severity,
                    kind: finding.kind,
                    binaries: finding.binaries.clone(),
                });
            }
        }
        total += hosts.len() as u64;
    }
    Page { total, rows }
}

/// A vulnerability one host has, through one package.
#[derive(Debug, Clone, Serialize)]
pub struct HostVuln {
    pub id: String,
    pub severity: Severity,
    pub package: String,
    pub version: String,
    pub fixed_version: Option<String>,
}

/// The vulnerabilities of one image (every host running it has them), most severe
/// first, at most `limit`; and how many there are in all. The same matching as the
/// fleet-wide queries, for one image's packages only.
pub fn image_vulns(
    index: &FleetIndex,
    feeds: &Feeds,
    image: ImageId,
    limit: usize,
) -> (Vec<HostVuln>, usize) {
    let img = index.image(image);
    let mut found: BTreeMap<(Arc<str>, Arc<str>), HostVuln> = BTreeMap::new();
    for &id in &img.packages {
        let package = index.package(id);
        let Some(ecosystem) = Ecosystem::for_package_type(package.kind) else {
            continue;
        };
        let (name, installed) = if ecosystem == Ecosystem::Debian {
            (package.source_name(), package.source_version())
        } else {
            (package.name.as_str(), package.version.as_str())
        };
        let name = ecosystem.normalize_name(name);
        for record in feeds.by_package(ecosystem, &name) {
            if !record.affects(installed)
                || (ecosystem == Ecosystem::Debian && !debian_release(record, &img.os))
            {
                continue;
            }
            let scheme = scheme_of(package.kind);
            let entry = found
                .entry((record.id.clone(), record.package.clone()))
                .or_insert_with(|| HostVuln {
                    id: record.id.to_string(),
                    severity: record.severity,
                    package: record.package.to_string(),
                    version: installed.to_owned(),
                    fixed_version: record.fixed_version_for(installed).map(str::to_owned),
                });
            if version::compare(scheme, installed, &entry.version).is_lt() {
                entry.version = installed.to_owned();
                entry.fixed_version = record.fixed_version_for(installed).map(str::to_owned);
            }
            entry.severity = entry.severity.max(record.severity);
        }
    }
    let total = found.len();
    let mut rows: Vec<HostVuln> = found.into_values().collect();
    rows.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
    rows.truncate(limit);
    (rows, total)
}

/// Hosts affected by a vulnerability, counted by a label (a host affected through two
/// packages counts once).
pub fn vuln_groups(index: &FleetIndex, feeds: &Feeds, id: &str, label: &str) -> Vec<HostGroup> {
    let images: HashSet<ImageId> = findings(index, feeds.by_id(id))
        .into_keys()
        .map(|(image, _)| image)
        .collect();
    let images: Vec<ImageId> = images.into_iter().collect();
    group_hosts(index, &images, label)
}

/// Every vulnerability the fleet has, most severe then most widespread first.
pub fn fleet_vulns(index: &FleetIndex, feeds: &Feeds) -> Vec<VulnSummary> {
    struct Tally {
        severity: Severity,
        images: HashSet<ImageId>,
        packages: Vec<String>,
        fixable: bool,
    }
    let mut names: Vec<(Ecosystem, String)> = Vec::new();
    for (kind, source) in index.sources() {
        if kind == PackageType::Deb {
            names.push((Ecosystem::Debian, source.to_owned()));
        }
    }
    for (kind, name) in index.names() {
        match Ecosystem::for_package_type(kind) {
            Some(e) if e != Ecosystem::Debian => names.push((e, name.to_owned())),
            _ => {}
        }
    }
    let mut tallies: HashMap<Arc<str>, Tally> = HashMap::new();
    for (ecosystem, name) in &names {
        for record in feeds.by_package(*ecosystem, name) {
            let hits = affected_images(index, record);
            if hits.is_empty() {
                continue;
            }
            let tally = tallies.entry(record.id.clone()).or_insert_with(|| Tally {
                severity: record.severity,
                images: HashSet::new(),
                packages: Vec::new(),
                fixable: false,
            });
            tally.severity = tally.severity.max(record.severity);
            if !tally.packages.iter().any(|p| **p == *record.package) {
                tally.packages.push(record.package.to_string());
            }
            for (image, _, installed) in hits {
                tally.images.insert(image);
                tally.fixable |= record.fixed_version_for(installed).is_some();
            }
        }
    }
    let mut out: Vec<VulnSummary> = tallies
        .into_iter()
        .map(|(id, t)| VulnSummary {
            id: id.to_string(),
            severity: t.severity,
            hosts: t
                .images
                .iter()
                .map(|&i| index.image(i).hosts.len() as u64)
                .sum(),
            packages: t.packages,
            fixable: t.fixable,
        })
        .collect();
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.hosts.cmp(&a.hosts))
            .then_with(|| a.id.cmp(&b.id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_store::{HostInventory, StoredInventory};
    use hids_types::package::OsRelease;
    use hids_types::Timestamp;
    use hids_vulns::feed::Status;

    fn deb(name: &str, version: &str, source: &str) -> Package {
        Package {
            kind: PackageType::Deb,
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: source.into(),
            source_version: String::new(),
            path: String::new(),
        }
    }

    fn os(id: &str, version_id: &str, codename: &str) -> OsRelease {
        OsRelease {
            id: id.into(),
            version_id: version_id.into(),
            codename: codename.into(),
            name: String::new(),
        }
    }

    fn record(release: &str, fixed: &str) -> Affected {
        Affected {
            id: "CVE-2024-0001".into(),
            aliases: Arc::from(Vec::new()),
            ecosystem: Ecosystem::Debian,
            release: Some(release.into()),
            package: "openssl".into(),
            status: Status::Fixed(fixed.into()),
            ranges: Arc::from(Vec::new()),
            versions: Arc::from(Vec::new()),
            severity: Severity::High,
        }
    }

    /// h1, h2 on an old bookworm image, h3 on a patched one, h4 on Ubuntu 12.04 with
    /// the old packages.
    fn fleet() -> FleetIndex {
        let old = "3.0.11-1~deb12u1";
        let new = "3.0.13-1~deb12u1";
        let mut index = FleetIndex::default();
        let images = [
            ("a", os("debian", "12", "bookworm"), old),
            ("b", os("debian", "12", "bookworm"), new),
            ("c", os("ubuntu", "12.04", "precise"), old),
        ];
        for (hash, os, v) in images {
            index.add_image(StoredInventory {
                hash: hash.into(),
                os,
                kernel: "6.1".into(),
                packages: vec![deb("libssl3", v, "openssl"), deb("openssl", v, "")],
            });
        }
        for (host, hash) in [("h1", "a"), ("h2", "a"), ("h3", "b"), ("h4", "c")] {
            index.set_host(&HostInventory {
                host_id: host.into(),
                hostname: host.into(),
                labels: Default::default(),
                hash: hash.into(),
                reported_at: Timestamp::from_unix_nanos(0),
                updated_at: Timestamp::from_unix_nanos(0),
            });
        }
        index
    }

    #[test]
    fn a_cve_finds_the_hosts_of_its_release_below_the_fix_once_each() {
        let index = fleet();
        let feeds = Feeds::from_advisories(vec![
            record("bookworm", "3.0.13-1~deb12u1"),
            record("12", "3.0.13-1~deb12u1"),
        ]);
        let page = vuln_hosts(&index, &feeds, "cve-2024-0001", 0, 10);
        let hosts: Vec<&str> = page.rows.iter().map(|r| r.host_id.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2"], "not the patched h3, not Ubuntu's h4");
        assert_eq!(page.total, 2);
        let row = &page.rows[0];
        assert_eq!(row.package, "openssl");
        assert_eq!(row.version, "3.0.11-1~deb12u1");
        assert_eq!(row.fixed_version.as_deref(), Some("3.0.13-1~deb12u1"));
        assert_eq!(row.binaries, ["libssl3", "openssl"]);
        let second = vuln_hosts(&index, &feeds, "CVE-2024-0001", 1, 1);
        assert_eq!((second.total, second.rows.len()), (2, 1));
        assert_eq!(second.rows[0].host_id, "h2");
        let top = fleet_vulns(&index, &feeds);
        assert_eq!((top.len(), top[0].hosts, top[0].fixable), (1, 2, true));
    }

    #[test]
    fn a_hosts_page_lists_its_images_vulnerabilities_as_the_fleet_query_does() {
        let index = fleet();
        let feeds = Feeds::from_advisories(vec![
            record("bookworm", "3.0.13-1~deb12u1"),
            record("12", "3.0.13-1~deb12u1"),
        ]);
        let image_of = |host: &str| index.host(index.host_slot(host).unwrap()).image;
        let (rows, total) = image_vulns(&index, &feeds, image_of("h1"), 10);
        assert_eq!(
            total, 1,
            "one finding, though two binaries carry it: {rows:?}"
        );
        assert_eq!(rows[0].id, "CVE-2024-0001");
        assert_eq!(rows[0].version, "3.0.11-1~deb12u1");
        assert_eq!(rows[0].fixed_version.as_deref(), Some("3.0.13-1~deb12u1"));
        for patched_or_other_release in ["h3", "h4"] {
            let (rows, total) = image_vulns(&index, &feeds, image_of(patched_or_other_release), 10);
            assert_eq!((rows.len(), total), (0, 0), "{patched_or_other_release}");
        }
        let (rows, total) = image_vulns(&index, &feeds, image_of("h1"), 0);
        assert_eq!((rows.len(), total), (0, 1));
    }

    #[test]
    fn a_range_query_uses_the_source_version_and_dpkg_ordering() {
        let index = fleet();
        let filter = PackageFilter {
            kind: Some(PackageType::Deb),
            name: "openssl".into(),
            by_source: true,
            below: Some("3.0.13-1~deb12u1".into()),
            ..PackageFilter::default()
        };
        let page = package_hosts(&index, &filter, 0, 10);
        let mut hosts: Vec<&str> = page.rows.iter().map(|r| r.host_id.as_str()).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["h1", "h2", "h4"]);
        // `~` sorts before the end: 3.0.13-1~deb12u1 is below 3.0.13-1.
        let filter = PackageFilter {
            below: Some("3.0.13-1".into()),
            ..filter
        };
        assert_eq!(package_hosts(&index, &filter, 0, 10).total, 4);
        let groups = package_groups(&index, &filter, "idc");
        assert_eq!(
            groups,
            [HostGroup {
                key: None,
                hosts: 4
            }]
        );
    }
}
