//! Vulnerability feeds an operator downloads: the Debian security tracker's JSON
//! (`https://security-tracker.debian.org/tracker/data/json`) and OSV records (a single
//! object, an array, a directory of `*.json` files as unpacked from an ecosystem's
//! `all.zip`, or the zip itself).
//!
//! Matching is by the distribution's own source package and version, under the
//! ecosystem's own ordering ([`crate::version`]), never by CPE: NVD's CPE matching is what
//! gave Wazuh's old detector thousands of false CVEs per host (wazuh#17605).
//!
//! Loading is all-or-nothing per file: a file (or a member of a directory or zip) that
//! is truncated, not JSON, too large, or would exceed the advisory cap contributes
//! nothing and is named in [`FeedLoad::problems`]. Inside a good file, an entry with
//! wrong types or a version its ecosystem cannot parse is skipped and counted
//! ([`Skipped`]); unknown fields are ignored.
//!
//! Deliberately absent: downloading feeds (the operator's job, so the server needs no
//! outbound access), NVD/CPE data, OSV `GIT` ranges (commit hashes say nothing about an
//! installed package), and ecosystems other than Debian, PyPI, npm and Maven (counted,
//! skipped).

mod cvss;
mod debian;
mod load;
mod osv;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::version::{self, Scheme};
use hids_types::package::PackageType;

/// An ecosystem a feed speaks for, which decides the version ordering and how package
/// names compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    /// Debian source packages, dpkg's ordering.
    Debian,
    /// Python distributions, PEP 440 ordering, PEP 503 names.
    #[serde(rename = "pypi")]
    PyPI,
    /// npm packages, SemVer ordering.
    Npm,
    /// Maven artifacts (`group:artifact`), Maven's ordering.
    Maven,
}

impl Ecosystem {
    pub const ALL: [Ecosystem; 4] = [
        Ecosystem::Debian,
        Ecosystem::PyPI,
        Ecosystem::Npm,
        Ecosystem::Maven,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Debian => "debian",
            Ecosystem::PyPI => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Maven => "maven",
        }
    }

    /// The version ordering of the ecosystem.
    pub fn scheme(self) -> Scheme {
        match self {
            Ecosystem::Debian => Scheme::Deb,
            Ecosystem::PyPI => Scheme::Pep440,
            Ecosystem::Npm => Scheme::Semver,
            Ecosystem::Maven => Scheme::Maven,
        }
    }

    /// The ecosystem whose feeds cover an inventoried package type, if any (no feed
    /// is loaded for rpm or the kernel).
    pub fn for_package_type(kind: PackageType) -> Option<Ecosystem> {
        match kind {
            PackageType::Deb => Some(Ecosystem::Debian),
            PackageType::Python => Some(Ecosystem::PyPI),
            PackageType::Npm => Some(Ecosystem::Npm),
            PackageType::Jar => Some(Ecosystem::Maven),
            PackageType::Rpm | PackageType::Kernel => None,
        }
    }

    /// The package name as the index keys it. PyPI names compare after PEP 503
    /// normalisation (`Foo_Bar.baz` is `foo-bar-baz`); the others are exact.
    pub fn normalize_name(self, name: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Ecosystem::PyPI => std::borrow::Cow::Owned(pep503(name)),
            _ => std::borrow::Cow::Borrowed(name),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// PEP 503: lowercase, every run of `-`, `_` and `.` becomes one `-`.
fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator_run {
                out.push('-');
            }
            in_separator_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_separator_run = false;
        }
    }
    out
}

/// How bad a vulnerability is. Ordered: `Unknown` < `Negligible` < `Low` < `Medium` <
/// `High` < `Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Not assigned yet (tracker "not yet assigned", "end-of-life", no OSV severity).
    #[default]
    Unknown,
    /// The tracker's "unimportant": a bug the Debian security team will not fix.
    Negligible,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Negligible => "negligible",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Reads the tracker's urgency or an OSV/GHSA severity word, case-insensitively;
    /// the tracker's trailing `*` (urgency set without a DSA/DLA) is ignored. Anything
    /// else is `Unknown`.
    pub fn parse(text: &str) -> Severity {
        match text
            .trim()
            .trim_end_matches('*')
            .to_ascii_lowercase()
            .as_str()
        {
            "unimportant" | "negligible" => Severity::Negligible,
            "low" => Severity::Low,
            "medium" | "moderate" => Severity::Medium,
            "high" | "important" => Severity::High,
            "critical" => Severity::Critical,
            _ => Severity::Unknown,
        }
    }
}

/// What a feed says about a package in a release, in summary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    /// Fixed in this version: older versions are affected. For OSV, the highest
    /// `fixed` event (see [`Affected::fixed_version_for`] for the one that applies).
    Fixed(Arc<str>),
    /// No fix yet. The tracker's "open", and also its "undetermined" (the team has not
    /// judged the release yet): the server errs on the side of reporting exposure.
    /// For OSV, ranges without any `fixed` event.
    Unfixed,
    /// Never affected (the tracker's `fixed_version` "0").
    NotAffected,
}

/// OSV range type (`GIT` ranges are skipped when loading).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeKind {
    Ecosystem,
    Semver,
}

/// One OSV range event. An `Introduced` of "0" means "from the beginning".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    Introduced(Arc<str>),
    Fixed(Arc<str>),
    LastAffected(Arc<str>),
    Limit(Arc<str>),
}

/// One OSV `affected[].ranges[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Range {
    pub kind: RangeKind,
    pub events: Vec<Event>,
}

/// One feed's statement about one package (in one release) and one vulnerability.
///
/// Strings are shared (`Arc<str>`, interned while loading): the tracker repeats each
/// id, package, release and fixed version many times, and ~10^5-10^6 of these are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    /// `CVE-2024-1234`, `TEMP-...`, `DSA-...`, or the OSV id (`GHSA-...`, `PYSEC-...`).
    pub id: Arc<str>,
    /// OSV `aliases` (often the CVE id); empty for the tracker.
    pub aliases: Arc<[Arc<str>]>,
    pub ecosystem: Ecosystem,
    /// Debian: the tracker's codename (`bookworm`), or OSV's `Debian:12` as `12`.
    /// `None`: every release (always for PyPI, npm, Maven).
    pub release: Option<Arc<str>>,
    /// Debian: the source package. PyPI: as the feed spells it (the index normalises).
    pub package: Arc<str>,
    pub status: Status,
    /// OSV ranges (`ECOSYSTEM`/`SEMVER`); empty for the tracker, where `status` decides.
    pub ranges: Arc<[Range]>,
    /// OSV explicit `versions`; empty for the tracker.
    pub versions: Arc<[Arc<str>]>,
    pub severity: Severity,
}

impl Affected {
    /// Whether an installed version is affected, under the ecosystem's ordering.
    /// `NotAffected` never is; an OSV record is when a range or the explicit version list
    /// says so (the OSV schema's own evaluation); a tracker record is when `Unfixed`,
    /// or `Fixed(v)` and `installed < v`.
    pub fn affects(&self, installed: &str) -> bool {
        let scheme = self.ecosystem.scheme();
        match &self.status {
            Status::NotAffected => false,
            _ if !self.ranges.is_empty() || !self.versions.is_empty() => {
                self.ranges
                    .iter()
                    .any(|range| osv::range_affects(scheme, range, installed))
                    || self
                        .versions
                        .iter()
                        .any(|v| version::compare(scheme, v, installed).is_eq())
            }
            Status::Unfixed => true,
            Status::Fixed(fixed) => version::compare(scheme, installed, fixed).is_lt(),
        }
    }

    /// The fixed version to show in summaries, if any (for OSV, the highest `fixed`).
    pub fn fixed_version(&self) -> Option<&str> {
        match &self.status {
            Status::Fixed(v) => Some(v),
            Status::Unfixed | Status::NotAffected => None,
        }
    }

    /// The fix for this installed version: for OSV, the `fixed` event of the range
    /// that makes it affected (an older branch may be fixed in `1.2.5` while the record
    /// also lists `2.1.3`); otherwise [`Affected::fixed_version`].
    pub fn fixed_version_for(&self, installed: &str) -> Option<&str> {
        let scheme = self.ecosystem.scheme();
        self.ranges
            .iter()
            .filter(|range| osv::range_affects(scheme, range, installed))
            .find_map(|range| osv::next_fix(scheme, range, installed))
            .or_else(|| self.fixed_version())
    }

    /// Whether this record applies to a host's Debian release, given its os-release
    /// `VERSION_CODENAME` (`bookworm`) and `VERSION_ID` (`12`). The tracker keys
    /// releases by codename, OSV by number; a record without a release applies to all.
    pub fn applies_to_release(&self, codename: &str, version_id: &str) -> bool {
        match &self.release {
            None => true,
            Some(release) => {
                (!codename.is_empty() && **release == *codename)
                    || (!version_id.is_empty()
                        && (**release == *version_id
                            || version_id.split('.').next() == Some(&**release)))
            }
        }
    }
}

/// Bounds on what loading reads and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedLimits {
    /// A file (or a zip member, uncompressed) larger than this is refused.
    pub max_file_bytes: u64,
    /// All bytes read for one path (a directory or zip: its members together).
    pub max_total_bytes: u64,
    /// Members of a directory or zip read at most; more is an error for that path.
    pub max_files: usize,
    /// Records kept across all feeds; a file that would pass it is refused whole.
    pub max_advisories: usize,
}

impl Default for FeedLimits {
    /// The real tracker file is ~70 MB: a synthetic one of that shape gives ~370,000
    /// records, loads in ~3 s at 70 MB peak RSS (`tracker_of_realistic_size` in
    /// `tests/feeds.rs`). OSV's largest ecosystem archives unpack to a few GB over
    /// ~10^5 files.
    fn default() -> Self {
        FeedLimits {
            max_file_bytes: 512 << 20,
            max_total_bytes: 8 << 30,
            max_files: 500_000,
            max_advisories: 20_000_000,
        }
    }
}

/// What a path turned out to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedFormat {
    DebianTracker,
    /// One OSV object or an array of them.
    Osv,
    /// A directory of OSV `*.json` files.
    OsvDirectory,
    /// A zip of OSV `*.json` files (`all.zip`).
    OsvZip,
}

/// Entries of a good file that were not kept, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// A version the ecosystem's ordering cannot parse.
    pub bad_version: u64,
    /// Wrong types, missing fields, unknown status or range type.
    pub malformed: u64,
    /// OSV ecosystems other than Debian, PyPI, npm, Maven (and `GIT` ranges).
    pub other_ecosystem: u64,
    /// OSV records with `withdrawn` set.
    pub withdrawn: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.bad_version + self.malformed + self.other_ecosystem + self.withdrawn
    }

    fn add(&mut self, other: &Skipped) {
        self.bad_version += other.bad_version;
        self.malformed += other.malformed;
        self.other_ecosystem += other.other_ecosystem;
        self.withdrawn += other.withdrawn;
    }
}

/// What one path given to [`Feeds::load`] contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    /// `None` when the path could not be read or recognised.
    pub format: Option<FeedFormat>,
    /// Records kept.
    pub advisories: u64,
    pub skipped: Skipped,
    /// The first skipped entry and why, to show the operator one example.
    pub first_skip: Option<String>,
    /// Files read: 1 for a file, the members for a directory or zip.
    pub files: u64,
    /// Files (members) refused whole; each is in [`FeedLoad::problems`].
    pub files_failed: u64,
    /// Why the path as a whole contributed nothing, if it did not.
    pub error: Option<String>,
}

/// A file or member refused whole, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file; for a zip member, `archive.zip/member.json`.
    pub path: PathBuf,
    pub reason: String,
}

/// The outcome of [`Feeds::load`], for logs, status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedLoad {
    /// One per path given, in order.
    pub files: Vec<FileReport>,
    /// Files refused whole, at most [`MAX_PROBLEMS`]; the rest are only counted.
    pub problems: Vec<Problem>,
    pub problems_not_listed: u64,
}

/// Problems listed by name in [`FeedLoad`]; a directory of 100,000 broken files is
/// counted, not listed.
pub const MAX_PROBLEMS: usize = 100;

impl FeedLoad {
    /// Records kept over all paths.
    pub fn advisories(&self) -> u64 {
        self.files.iter().map(|f| f.advisories).sum()
    }

    /// Entries skipped over all paths.
    pub fn skipped(&self) -> Skipped {
        let mut total = Skipped::default();
        for file in &self.files {
            total.add(&file.skipped);
        }
        total
    }

    /// Whether anything was refused whole (a path or a member).
    pub fn has_failures(&self) -> bool {
        self.files
            .iter()
            .any(|f| f.error.is_some() || f.files_failed > 0)
    }

    fn problem(&mut self, path: PathBuf, reason: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { path, reason });
        } else {
            self.problems_not_listed += 1;
        }
    }
}

/// Everything loaded from the operator's feed files, indexed by id and by package.
#[derive(Debug, Default)]
pub struct Feeds {
    advisories: Vec<Affected>,
    /// Key: the id or an alias, ASCII-uppercased (ids are typed by hand in queries).
    by_id: HashMap<Box<str>, Vec<u32>>,
    /// Per [`Ecosystem::index`]; key: [`Ecosystem::normalize_name`].
    by_package: [HashMap<Arc<str>, Vec<u32>>; 4],
    /// Distinct primary ids, sorted.
    ids: Vec<Arc<str>>,
}

impl Feeds {
    /// Loads every path: a file (the tracker, or OSV object/array, or an OSV zip) or a
    /// directory of OSV `*.json` files, the format told by content, not name. Never
    /// fails as a whole: what could not be loaded is in the report.
    pub fn load(paths: &[PathBuf], limits: &FeedLimits) -> (Feeds, FeedLoad) {
        let (advisories, report) = load::load_all(paths, limits);
        (Feeds::from_advisories(advisories), report)
    }

    /// Indexes records (the loaders' output, or a test's own).
    pub fn from_advisories(advisories: Vec<Affected>) -> Feeds {
        let mut feeds = Feeds {
            advisories,
            ..Feeds::default()
        };
        let mut ids: Vec<Arc<str>> = Vec::new();
        for (position, record) in feeds.advisories.iter().enumerate() {
            // Loading caps records far below u32::MAX.
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let id_key = record.id.to_ascii_uppercase().into_boxed_str();
            let mut keys = vec![id_key];
            for alias in record.aliases.iter() {
                let key = alias.to_ascii_uppercase().into_boxed_str();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            for key in keys {
                feeds.by_id.entry(key).or_default().push(position);
            }
            let name = record.ecosystem.normalize_name(&record.package);
            let by_name = &mut feeds.by_package[record.ecosystem.index()];
            match by_name.get_mut(&*name) {
                Some(positions) => positions.push(position),
                None => {
                    let key: Arc<str> = match name {
                        std::borrow::Cow::Borrowed(_) => record.package.clone(),
                        std::borrow::Cow::Owned(owned) => owned.into(),
                    };
                    by_name.insert(key, vec![position]);
                }
            }
            ids.push(record.id.clone());
        }
        ids.sort_unstable();
        ids.dedup();
        feeds.ids = ids;
        feeds.by_id.values_mut().for_each(Vec::shrink_to_fit);
        for by_name in &mut feeds.by_package {
            by_name.values_mut().for_each(Vec::shrink_to_fit);
        }
        feeds
    }

    /// Records naming this vulnerability id (`CVE-...`, an OSV/GHSA id, or an alias of
    /// one), case-insensitively, in load order.
    pub fn by_id<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Affected> + 'a {
        let positions = self
            .by_id
            .get(id.to_ascii_uppercase().as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        positions.iter().map(|&p| &self.advisories[p as usize])
    }

    /// Records for one package in one ecosystem (Debian: the source package name).
    pub fn by_package<'a>(
        &'a self,
        ecosystem: Ecosystem,
        name: &str,
    ) -> impl Iterator<Item = &'a Affected> + 'a {
        let positions = self.by_package[ecosystem.index()]
            .get(&*ecosystem.normalize_name(name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        positions.iter().map(|&p| &self.advisories[p as usize])
    }

    /// Every primary vulnerability id, sorted, each once (aliases are not listed).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(|id| &**id)
    }

    /// Every record, in load order.
    pub fn advisories(&self) -> &[Affected] {
        &self.advisories
    }

    pub fn len(&self) -> usize {
        self.advisories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.advisories.is_empty()
    }
}

/// Strings shared while loading: the tracker names the same CVE, package, codename and
/// fixed version in many records.
#[derive(Default)]
struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = text.into();
        self.strings.insert(shared.clone());
        shared
    }
}

/// Records parsed from one file, published only if the whole file parses.
struct Batch<'a> {
    records: Vec<Affected>,
    skipped: Skipped,
    first_skip: Option<String>,
    /// Records this file may still add before the load's cap.
    room: usize,
    strings: &'a mut Interner,
    /// Shared empty lists: most records have no aliases, ranges or versions.
    no_strings: Arc<[Arc<str>]>,
    no_ranges: Arc<[Range]>,
}

/// Why an entry was skipped, and how to count it.
enum Skip {
    BadVersion(String),
    Malformed(String),
    OtherEcosystem,
    Withdrawn,
}

/// The file would pass [`FeedLimits::max_advisories`].
#[derive(Debug)]
struct OverCap(usize);

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} advisories (max_advisories)", self.0)
    }
}

impl<'a> Batch<'a> {
    fn new(room: usize, strings: &'a mut Interner) -> Self {
        Batch {
            records: Vec::new(),
            skipped: Skipped::default(),
            first_skip: None,
            room,
            strings,
            no_strings: Arc::new([]),
            no_ranges: Arc::new([]),
        }
    }

    fn push(&mut self, record: Affected) -> Result<(), OverCap> {
        if self.records.len() >= self.room {
            return Err(OverCap(self.room));
        }
        self.records.push(record);
        Ok(())
    }

    fn skip(&mut self, entry: impl FnOnce() -> String, why: Skip) {
        let reason = match why {
            Skip::BadVersion(reason) => {
                self.skipped.bad_version += 1;
                Some(reason)
            }
            Skip::Malformed(reason) => {
                self.skipped.malformed += 1;
                Some(reason)
            }
            Skip::OtherEcosystem => {
                self.skipped.other_ecosystem += 1;
                None
            }
            Skip::Withdrawn => {
                self.skipped.withdrawn += 1;
                None
            }
        };
        if let (None, Some(reason)) = (&self.first_skip, reason) {
            self.first_skip = Some(format!("{}: {reason}", entry()));
        }
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        self.strings.get(text)
    }
}

#[cfg(test)]
mod tests;
