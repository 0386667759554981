//! bench/inventory: the fleet inventory index of issue 17 at fleet scale. A synthetic
//! Debian-like fleet (a universe of ~25,000 (source, binary, version), ~2,000 images of
//! ~3,000 packages sharing a common base, N hosts drawn from the images with Zipf-like
//! popularity) goes through the SQLite store's `record_inventories` in the consumer's
//! batches of 2,000 reports: a first roll-out where every host sends its whole list,
//! then a steady-state day of hashes only. A new `Inventory` on the same database then
//! loads it (the start-up rebuild), and the two questions are timed: "hosts with source
//! package X below V" and "hosts affected by CVE Y" (a synthetic tracker-like feed of
//! ~50,000 records), plus the fleet-wide list. The consumer's decode of one inventory
//! event (`Triage::message` + `take_inventories`) is timed on events serialized as the
//! plugin does. Beside it, the naive layout (one SQLite row per host and package) for a
//! subset of hosts, with our index at the same subset for the ratio.
//!
//! Each phase runs in a child process of its own (this program re-executed with
//! `--phase`), so its peak RSS and the index's memory are its own. Usage:
//!
//!     inventory_index [--hosts 1000000] [--naive-hosts 10000] [--images 2000]
//!                     [--queries 200] [--decode-messages 5000] [--dir DIR] [--skip-naive]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: stop loudly

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hids_detect::RuleSet;
use hids_server::config::VulnsConfig;
use hids_server::inventory::query::{self, PackageFilter};
use hids_server::inventory::Inventory;
use hids_server::metrics::Metrics;
use hids_server::triage::Triage;
use hids_store::{InventoryOutcome, InventoryReport, Position, Store, StoreConfig};
use hids_types::event::{Host, Producer};
use hids_types::package::{
    inventory_hash, InventoryPart, OsRelease, Package, PackageType, INVENTORY_ACTION,
};
use hids_types::Timestamp;
use hids_vulns::feed::{Affected, Ecosystem, Feeds, Severity, Status};
use hids_vulns::version::{self, Scheme};
use serde_json::{json, Value};

const SEED: u64 = 17;
/// The consumer's batch (`kafka.batch_events`).
const BATCH: usize = 2_000;
/// The API's default page.
const LIMIT: usize = 1_000;
/// hids-server's default `kafka.max_event_bytes`.
const SERVER_MAX_EVENT_BYTES: usize = 256 * 1024;
/// The plugin's default `--part-bytes`.
const PLUGIN_PART_BYTES: usize = 128 << 10;
const SOURCES: usize = 2_600;
const ROLES: usize = 40;
const ROLES_PER_IMAGE: usize = 5;
const BASE_BINARIES: usize = 2_500;
const CVES: usize = 25_000;
const RELEASES: [Release; 2] = [
    Release {
        codename: "bookworm",
        number: "12",
        kernel: "6.1.0",
        share: 0.7,
    },
    Release {
        codename: "bullseye",
        number: "11",
        kernel: "5.10.0",
        share: 0.3,
    },
];
const IDCS: [&str; 12] = [
    "bj1", "bj2", "sh1", "sh2", "gz1", "gz2", "sz1", "hz1", "cd1", "wh1", "hk1", "sg1",
];
const PROJECTS: u64 = 150;
const PRODUCTS: u64 = 25;
/// Real names for the first sources (the ones with the most security updates).
const KNOWN: [&str; 64] = [
    "openssl",
    "linux",
    "glibc",
    "bash",
    "systemd",
    "curl",
    "openssh",
    "zlib",
    "libxml2",
    "sudo",
    "python3.11",
    "perl",
    "tar",
    "gzip",
    "coreutils",
    "util-linux",
    "krb5",
    "gnutls28",
    "nss",
    "sqlite3",
    "expat",
    "libx11",
    "tiff",
    "libpng1.6",
    "libjpeg-turbo",
    "vim",
    "git",
    "nginx",
    "apache2",
    "postgresql-15",
    "mariadb",
    "redis",
    "php8.2",
    "nodejs",
    "openjdk-17",
    "ruby3.1",
    "imagemagick",
    "ffmpeg",
    "ghostscript",
    "cups",
    "samba",
    "bind9",
    "dnsmasq",
    "ntp",
    "rsync",
    "wget",
    "less",
    "procps",
    "shadow",
    "pam",
    "libgcrypt20",
    "gnupg2",
    "e2fsprogs",
    "dbus",
    "apt",
    "dpkg",
    "libseccomp",
    "libcap2",
    "xz-utils",
    "bzip2",
    "pcre2",
    "icu",
    "freetype",
    "glib2.0",
];
const SYLLABLES: [&str; 26] = [
    "ab", "ar", "bel", "cor", "dex", "fa", "gil", "han", "io", "jor", "kel", "lum", "mor", "nex",
    "ob", "pra", "qui", "ras", "sol", "tor", "ul", "ven", "wex", "xi", "yor", "zan",
];
/// Binary name patterns of a source, in the order a source gains them.
const BINARY_PATTERNS: [(&str, &str, bool); 12] = [
    ("", "", false),
    ("lib", "#", false),
    ("lib", "-dev", false),
    ("", "-common", true),
    ("", "-utils", false),
    ("", "-doc", true),
    ("python3-", "", false),
    ("lib", "-data", true),
    ("", "-bin", false),
    ("lib", "#-dbg", false),
    ("", "-tools", false),
    ("gir1.2-", "", false),
];

struct Release {
    codename: &'static str,
    number: &'static str,
    kernel: &'static str,
    share: f64,
}

// ---------------------------------------------------------------- measurements

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_kb() -> u64 {
    proc_status_kb("VmRSS:")
}

fn hwm_kb() -> u64 {
    proc_status_kb("VmHWM:")
}

/// User plus system CPU of this process, in seconds (/proc counts in USER_HZ, 100).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Wall and CPU time of a span of work.
#[derive(Default, Clone, Copy)]
struct Spent {
    wall: Duration,
    cpu: f64,
}

impl Spent {
    fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let (started, cpu) = (Instant::now(), cpu_secs());
        let out = work();
        self.wall += started.elapsed();
        self.cpu += cpu_secs() - cpu;
        out
    }

    fn json(&self) -> Value {
        json!({"wall": self.wall.as_secs_f64(), "cpu": self.cpu})
    }
}

/// p50, p95 and max in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> Value {
    v.sort();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    json!({"p50": at(0.50), "p95": at(0.95), "max": at(1.0), "n": v.len()})
}

fn file_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

// ---------------------------------------------------------------- randomness

/// splitmix64: everything derives from (SEED, what, index).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn new(what: u64, index: u64) -> Rng {
        Rng(mix(SEED ^ mix(what ^ mix(index))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

// ---------------------------------------------------------------- the package universe

struct Binary {
    name: String,
    arch_all: bool,
}

struct Source {
    name: String,
    binaries: Vec<Binary>,
    /// Per release: the versions the archive had, oldest first (security updates).
    ladders: [Vec<String>; 2],
    /// Per release: when (0..1) each update after the first came out.
    steps: [Vec<f64>; 2],
    binnmu: bool,
    /// Per release, binary and ladder step: the package id (index in `Universe::packages`).
    ids: [Vec<u32>; 2],
}

/// A binary of a source: (source index, binary index).
type Slot = (u32, u32);

struct Universe {
    sources: Vec<Source>,
    /// Sorted as `Package` orders, so sorted ids are a sorted inventory.
    packages: Vec<Package>,
    /// (source, binary) of the common base, then of each role.
    base: Vec<Slot>,
    roles: Vec<Vec<Slot>>,
}

fn source_name(i: usize, taken: &mut HashSet<String>) -> String {
    if let Some(known) = KNOWN.get(i) {
        taken.insert((*known).to_owned());
        return (*known).to_owned();
    }
    let mut rng = Rng::new(1, i as u64);
    loop {
        let parts = 2 + rng.below(2);
        let mut name: String = (0..parts)
            .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
            .collect();
        if rng.chance(0.1) {
            name.push_str(&format!("{}", 1 + rng.below(5)));
        }
        if taken.insert(name.clone()) {
            return name;
        }
    }
}

/// Ladders of one source for both releases: bullseye's upstream is older.
fn ladders(i: usize, rng: &mut Rng) -> [Vec<String>; 2] {
    let length = if i < KNOWN.len() {
        3 + rng.below(6) as usize
    } else {
        let mut n = 1;
        while n < 7 && rng.chance(0.45) {
            n += 1;
        }
        n
    };
    let epoch = if rng.chance(0.04) {
        format!("{}:", 1 + rng.below(2))
    } else {
        String::new()
    };
    let major = [0, 1, 1, 2, 2, 3, 4, 5, 9, 12][rng.below(10) as usize];
    let minor = rng.below(30);
    let patch = rng.below(20);
    let flavour = match rng.below(40) {
        0 | 1 => "+dfsg".to_owned(),
        2 => format!("~rc{}", 1 + rng.below(3)),
        3 => "+ds1".to_owned(),
        _ => String::new(),
    };
    let native = rng.chance(0.03);
    RELEASES.each_ref().map(|release| {
        let older = usize::from(release.number == "11");
        let upstream = format!(
            "{major}.{}.{patch}{flavour}",
            minor.saturating_sub(older as u64 * 2)
        );
        let first = if native {
            format!("{epoch}{upstream}")
        } else {
            format!("{epoch}{upstream}-{}", 1 + rng.below(5))
        };
        let n = length;
        (0..n)
            .map(|k| match k {
                0 => first.clone(),
                k => format!("{first}+deb{}u{k}", release.number),
            })
            .collect()
    })
}

fn binaries(stem: &str, rng: &mut Rng) -> Vec<Binary> {
    let count = match rng.below(10) {
        0..=5 => 1,
        6..=8 => 2 + rng.below(3) as usize,
        _ => 5 + rng.below(8) as usize,
    };
    let soname = 1 + rng.below(6);
    let bare = stem.trim_start_matches("lib");
    BINARY_PATTERNS[..count]
        .iter()
        .map(|(prefix, suffix, arch_all)| {
            let body = if prefix.is_empty() && suffix.is_empty() {
                stem
            } else {
                bare
            };
            Binary {
                name: format!("{prefix}{body}{}", suffix.replace('#', &soname.to_string())),
                arch_all: *arch_all,
            }
        })
        .collect()
}

fn package(source: &Source, binary: &Binary, release: usize, step: usize) -> Package {
    let version = &source.ladders[release][step];
    let binnmu = source.binnmu && !binary.arch_all;
    Package {
        kind: PackageType::Deb,
        name: binary.name.clone(),
        version: if binnmu {
            format!("{version}+b{}", 1 + step % 3)
        } else {
            version.clone()
        },
        architecture: if binary.arch_all { "all" } else { "amd64" }.to_owned(),
        source: if binary.name == source.name {
            String::new()
        } else {
            source.name.clone()
        },
        source_version: if binnmu {
            version.clone()
        } else {
            String::new()
        },
        path: String::new(),
    }
}

impl Universe {
    fn build() -> Universe {
        let mut taken = HashSet::new();
        let mut sources: Vec<Source> = (0..SOURCES)
            .map(|i| {
                let mut rng = Rng::new(2, i as u64);
                let name = source_name(i, &mut taken);
                let ladders = ladders(i, &mut rng);
                let steps = ladders.each_ref().map(|l| {
                    let mut t: Vec<f64> = (1..l.len()).map(|_| rng.unit()).collect();
                    t.sort_by(f64::total_cmp);
                    t
                });
                Source {
                    binaries: binaries(&name, &mut rng),
                    name,
                    ladders,
                    steps,
                    binnmu: rng.chance(0.06),
                    ids: [Vec::new(), Vec::new()],
                }
            })
            .collect();
        let mut packages = Vec::new();
        for source in &mut sources {
            for release in 0..RELEASES.len() {
                for binary in &source.binaries {
                    for step in 0..source.ladders[release].len() {
                        source.ids[release].push(packages.len() as u32);
                        packages.push(package(source, binary, release, step));
                    }
                }
            }
        }
        let mut order: Vec<u32> = (0..packages.len() as u32).collect();
        order.sort_by(|&a, &b| packages[a as usize].cmp(&packages[b as usize]));
        let mut new_id = vec![0u32; packages.len()];
        for (new, &old) in order.iter().enumerate() {
            new_id[old as usize] = new as u32;
        }
        let packages = order
            .iter()
            .map(|&old| packages[old as usize].clone())
            .collect();
        for source in &mut sources {
            for ids in &mut source.ids {
                ids.iter_mut().for_each(|id| *id = new_id[*id as usize]);
            }
        }
        let (base, roles) = Universe::split(&sources);
        Universe {
            sources,
            packages,
            base,
            roles,
        }
    }

    /// The common base (the first sources, ~2,500 binaries) and the role sets.
    fn split(sources: &[Source]) -> (Vec<Slot>, Vec<Vec<Slot>>) {
        let mut base = Vec::new();
        let mut roles = vec![Vec::new(); ROLES];
        for (s, source) in sources.iter().enumerate() {
            let into_base = base.len() < BASE_BINARIES;
            for b in 0..source.binaries.len() {
                let slot = (s as u32, b as u32);
                if into_base {
                    base.push(slot);
                } else {
                    roles[mix(s as u64 ^ SEED) as usize % ROLES].push(slot);
                }
            }
        }
        (base, roles)
    }

    fn id(&self, (s, b): Slot, release: usize, step: usize) -> u32 {
        let source = &self.sources[s as usize];
        source.ids[release][b as usize * source.ladders[release].len() + step]
    }

    fn materialize(&self, ids: &[u32]) -> Vec<Package> {
        ids.iter()
            .map(|&i| self.packages[i as usize].clone())
            .collect()
    }
}

// ---------------------------------------------------------------- images and hosts

struct Image {
    release: usize,
    os: OsRelease,
    kernel: String,
    /// Sorted package ids.
    ids: Vec<u32>,
    hash: String,
}

fn os_release(release: usize) -> OsRelease {
    let r = &RELEASES[release];
    OsRelease {
        id: "debian".into(),
        version_id: r.number.into(),
        codename: r.codename.into(),
        name: format!("Debian GNU/Linux {} ({})", r.number, r.codename),
    }
}

/// Image `i`: a release, a point in time (which updates it has), its roles, and a few
/// packages held back or left out.
fn image(universe: &Universe, i: usize) -> Image {
    let mut rng = Rng::new(3, i as u64);
    let release = usize::from(!rng.chance(RELEASES[0].share));
    let generation = rng.unit();
    let mut slots: Vec<Slot> = universe.base.clone();
    let mut roles: Vec<usize> = Vec::new();
    while roles.len() < ROLES_PER_IMAGE {
        let r = rng.below(ROLES as u64) as usize;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    for r in roles {
        slots.extend_from_slice(&universe.roles[r]);
    }
    let mut ids = Vec::with_capacity(slots.len());
    for slot in slots {
        if rng.chance(0.01) {
            continue;
        }
        let source = &universe.sources[slot.0 as usize];
        let mut step = source.steps[release]
            .iter()
            .filter(|&&t| t <= generation)
            .count();
        if step > 0 && rng.chance(0.02) {
            step -= 1;
        }
        ids.push(universe.id(slot, release, step));
    }
    ids.sort_unstable();
    let os = os_release(release);
    let kernel = format!(
        "{}-{}-amd64",
        RELEASES[release].kernel,
        10 + (generation * 20.0) as u32
    );
    let hash = inventory_hash(&os, &kernel, &universe.materialize(&ids));
    Image {
        release,
        os,
        kernel,
        ids,
        hash,
    }
}

struct Fleet {
    universe: Universe,
    images: Vec<Image>,
    /// Cumulative Zipf weights over images (rank = index).
    popularity: Vec<f64>,
}

impl Fleet {
    fn build(images: usize) -> Fleet {
        let universe = Universe::build();
        let images: Vec<Image> = (0..images).map(|i| image(&universe, i)).collect();
        let mut total = 0.0;
        let popularity = (0..images.len())
            .map(|k| {
                total += 1.0 / (k as f64 + 1.0);
                total
            })
            .collect();
        Fleet {
            universe,
            images,
            popularity,
        }
    }

    fn image_of(&self, h: usize) -> usize {
        let total = self.popularity.last().copied().unwrap_or(1.0);
        let u = (mix(h as u64 ^ mix(SEED ^ 4)) >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.popularity
            .partition_point(|&c| c < u)
            .min(self.images.len() - 1)
    }

    fn distinct_images(&self) -> usize {
        self.images
            .iter()
            .map(|i| &i.hash)
            .collect::<HashSet<_>>()
            .len()
    }
}

fn host_id(h: usize) -> String {
    format!("{:016x}{:016x}", mix(h as u64), mix(!(h as u64)))
}

fn hostname(h: usize) -> String {
    let (idc, _, product) = label_values(h);
    format!("product{product}-{}-{h:07}", IDCS[idc as usize])
}

fn label_values(h: usize) -> (u64, u64, u64) {
    let r = mix(h as u64 ^ 0x5eed);
    let project = r % PROJECTS;
    (
        (project * 5 + (r >> 40) % 2) % IDCS.len() as u64,
        project,
        project % PRODUCTS,
    )
}

fn labels(h: usize) -> BTreeMap<String, String> {
    let (idc, project, product) = label_values(h);
    BTreeMap::from([
        ("idc".to_owned(), IDCS[idc as usize].to_owned()),
        ("project".to_owned(), format!("project-{project:03}")),
        ("product".to_owned(), format!("product-{product:02}")),
    ])
}

/// One host's report: its whole list (one part) or its hash alone.
fn report(fleet: &Fleet, h: usize, whole: bool, at: Timestamp) -> InventoryReport {
    let image = &fleet.images[fleet.image_of(h)];
    InventoryReport {
        host_id: host_id(h),
        hostname: hostname(h),
        labels: labels(h),
        reported_at: at,
        part: part(fleet, image, whole),
    }
}

fn part(fleet: &Fleet, image: &Image, whole: bool) -> InventoryPart {
    InventoryPart {
        hash: image.hash.clone(),
        packages: image.ids.len() as u64,
        part: 0,
        parts: u32::from(whole),
        os: image.os.clone(),
        kernel: image.kernel.clone(),
        items: if whole {
            fleet.universe.materialize(&image.ids)
        } else {
            Vec::new()
        },
        command_id: None,
    }
}

// ---------------------------------------------------------------- feed and questions

/// A tracker-like feed: each CVE names one source (three in four of the fleet's, most
/// often the security-heavy ones) with a record per release: fixed in a version around
/// the installed ones, open, or never affected.
fn feed(universe: &Universe) -> Vec<Affected> {
    let severities = [
        Severity::Unknown,
        Severity::Negligible,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];
    let mut records = Vec::with_capacity(CVES * RELEASES.len());
    for c in 0..CVES {
        let mut rng = Rng::new(5, c as u64);
        let id: Arc<str> = format!("CVE-{}-{}", 2014 + c % 11, 10_000 + c).into();
        let fleet_source = rng.chance(0.75).then(|| {
            // Zipf-like over sources: the first (known) ones take the most CVEs.
            let u = rng.unit();
            ((SOURCES as f64).powf(u) as usize)
                .saturating_sub(1)
                .min(SOURCES - 1)
        });
        let package: Arc<str> = match fleet_source {
            Some(s) => universe.sources[s].name.as_str().into(),
            None => format!("notinfleet{}", rng.below(20_000)).into(),
        };
        let severity = severities[rng.below(severities.len() as u64) as usize];
        for (r, release) in RELEASES.iter().enumerate() {
            let status = match rng.below(100) {
                0..=9 => Status::NotAffected,
                10..=24 => Status::Unfixed,
                _ => Status::Fixed(match fleet_source {
                    Some(s) => {
                        let ladder = &universe.sources[s].ladders[r];
                        let k = rng.below(ladder.len() as u64 + 1) as usize;
                        ladder
                            .get(k)
                            .cloned()
                            .unwrap_or_else(|| format!("{}+deb{}u{k}", ladder[0], release.number))
                            .into()
                    }
                    None => "1.0-1".into(),
                }),
            };
            records.push(Affected {
                id: id.clone(),
                aliases: Arc::from(Vec::new()),
                ecosystem: Ecosystem::Debian,
                release: Some(release.codename.into()),
                package: package.clone(),
                status,
                ranges: Arc::from(Vec::new()),
                versions: Arc::from(Vec::new()),
                severity,
            });
        }
    }
    records
}

/// "Hosts with source package X below V": X from the base (every host), from the
/// roles, and from anywhere; V a version of its ladder.
fn package_questions(universe: &Universe, n: usize) -> Vec<(String, String)> {
    let base_sources = universe.base.last().map_or(0, |&(s, _)| s as u64 + 1);
    (0..n)
        .map(|q| {
            let mut rng = Rng::new(6, q as u64);
            let s = match q % 3 {
                0 => rng.below(base_sources),
                1 => base_sources + rng.below(SOURCES as u64 - base_sources),
                _ => rng.below(SOURCES as u64),
            } as usize;
            let source = &universe.sources[s];
            let ladder = &source.ladders[0];
            let below = match ladder.len() {
                1 => format!("{}+deb12u1", ladder[0]),
                n => ladder[1 + rng.below(n as u64 - 1) as usize].clone(),
            };
            (source.name.clone(), below)
        })
        .collect()
}

/// CVE ids whose source the fleet has and that some release is not spared.
fn cve_questions(records: &[Affected], universe: &Universe, n: usize) -> Vec<String> {
    let names: HashSet<&str> = universe.sources.iter().map(|s| s.name.as_str()).collect();
    let mut candidates: Vec<&str> = records
        .iter()
        .filter(|r| names.contains(&*r.package) && r.status != Status::NotAffected)
        .map(|r| &*r.id)
        .collect();
    candidates.dedup();
    let mut rng = Rng::new(7, 0);
    (0..n)
        .map(|_| candidates[rng.below(candidates.len() as u64) as usize].to_owned())
        .collect()
}

fn filter(name: &str, below: &str) -> PackageFilter {
    PackageFilter {
        kind: Some(PackageType::Deb),
        name: name.to_owned(),
        by_source: true,
        below: Some(below.to_owned()),
        ..PackageFilter::default()
    }
}

// ---------------------------------------------------------------- phases (children)

struct Args {
    hosts: usize,
    naive_hosts: usize,
    images: usize,
    queries: usize,
    decode_messages: usize,
    dir: Option<PathBuf>,
    skip_naive: bool,
    phase: Option<String>,
    db: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        hosts: 1_000_000,
        naive_hosts: 10_000,
        images: 2_000,
        queries: 200,
        decode_messages: 5_000,
        dir: None,
        skip_naive: false,
        phase: None,
        db: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().expect("the option takes a value");
        match flag.as_str() {
            "--hosts" => a.hosts = value().parse().expect("--hosts N"),
            "--naive-hosts" => a.naive_hosts = value().parse().expect("--naive-hosts N"),
            "--images" => a.images = value().parse().expect("--images N"),
            "--queries" => a.queries = value().parse().expect("--queries N"),
            "--decode-messages" => {
                a.decode_messages = value().parse().expect("--decode-messages N")
            }
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--skip-naive" => a.skip_naive = true,
            "--phase" => a.phase = Some(value()),
            "--db" => a.db = Some(PathBuf::from(value())),
            other => panic!("unknown option {other}"),
        }
    }
    a.images = a.images.max(1);
    a
}

fn progress(what: &str, done: usize, total: usize, started: Instant) {
    let done = done.min(total);
    if total >= 10 && done % (total / 10).max(1) < BATCH {
        eprintln!(
            "  {what}: {done}/{total} hosts, {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// What hosts send on a simulated day.
#[derive(Clone, Copy, PartialEq)]
enum Day {
    /// The first roll-out as the store sees it without the consumer's fast path: every
    /// host its whole list.
    Whole,
    /// The first roll-out through the consumer's fast path: a whole list only while
    /// the index lacks the image (it learns an image once the batch that brought it
    /// is stored), the hash otherwise.
    Consumer,
    /// A steady-state day: every host its hash only.
    Hashes,
}

impl Day {
    fn label(self) -> &'static str {
        match self {
            Day::Whole => "day 1 (whole lists)",
            Day::Consumer => "day 1 (consumer fast path)",
            Day::Hashes => "day 2 (hashes)",
        }
    }
}

/// One day of reports, in consumer batches. Returns (store time, generation time,
/// outcomes other than Published, whole lists sent).
fn ingest_day(
    store: &mut dyn Store,
    fleet: &Fleet,
    hosts: usize,
    day: Day,
    days_ago: u64,
) -> (Spent, Spent, u64, u64) {
    let (mut stored, mut generated, mut refused, mut wholes) =
        (Spent::default(), Spent::default(), 0, 0);
    let at =
        Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() - days_ago * 86_400_000_000_000);
    let mut indexed: HashSet<usize> = HashSet::new();
    let started = Instant::now();
    for from in (0..hosts).step_by(BATCH) {
        let batch = from..(from + BATCH).min(hosts);
        let reports: Vec<InventoryReport> = generated.time(|| {
            batch
                .clone()
                .map(|h| {
                    let whole = match day {
                        Day::Whole => true,
                        Day::Consumer => !indexed.contains(&fleet.image_of(h)),
                        Day::Hashes => false,
                    };
                    report(fleet, h, whole, at)
                })
                .collect()
        });
        wholes += reports.iter().filter(|r| r.part.parts > 0).count() as u64;
        let outcomes = stored.time(|| {
            store
                .record_inventories(&reports, at)
                .expect("record_inventories")
        });
        refused += outcomes
            .iter()
            .filter(|o| !matches!(o, InventoryOutcome::Published { .. }))
            .count() as u64;
        generated.time(|| drop(reports));
        indexed.extend(batch.map(|h| fleet.image_of(h)));
        progress(day.label(), from + BATCH, hosts, started);
    }
    (stored, generated, refused, wholes)
}

fn phase_ingest(a: &Args) -> Value {
    let db = a.db.clone().expect("--db");
    let fleet = Fleet::build(a.images);
    let mut store = hids_store::open(&StoreConfig::Sqlite(db.clone())).expect("open the store");
    let (day1, gen1, refused1, _) = ingest_day(store.as_mut(), &fleet, a.hosts, Day::Whole, 2);
    let size1 = file_bytes(&db);
    let (day2, gen2, refused2, _) = ingest_day(store.as_mut(), &fleet, a.hosts, Day::Hashes, 1);
    let packages: usize = (0..a.hosts.min(10_000))
        .map(|h| fleet.images[fleet.image_of(h)].ids.len())
        .sum();
    json!({
        "universe": fleet.universe.packages.len(),
        "sources": SOURCES,
        "images": fleet.images.len(),
        "distinct_images": fleet.distinct_images(),
        "images_used": (0..a.hosts).map(|h| fleet.image_of(h)).collect::<HashSet<_>>().len(),
        "top_image_hosts": (0..a.hosts).filter(|&h| fleet.image_of(h) == 0).count(),
        "packages_per_host": packages as f64 / a.hosts.clamp(1, 10_000) as f64,
        "day1": day1.json(), "gen1": gen1.json(), "refused1": refused1,
        "day2": day2.json(), "gen2": gen2.json(), "refused2": refused2,
        "db_bytes_day1": size1, "db_bytes": file_bytes(&db),
        "peak_rss_kb": hwm_kb(),
    })
}

/// The first roll-out as the consumer with its fast path hands it to the store.
fn phase_ingest_consumer(a: &Args) -> Value {
    let db = a.db.clone().expect("--db");
    let fleet = Fleet::build(a.images);
    let mut store = hids_store::open(&StoreConfig::Sqlite(db.clone())).expect("open the store");
    let (day1, _, refused, wholes) = ingest_day(store.as_mut(), &fleet, a.hosts, Day::Consumer, 2);
    json!({"day1": day1.json(), "refused": refused, "wholes": wholes, "peak_rss_kb": hwm_kb()})
}

fn time_questions(
    index: &hids_server::inventory::index::FleetIndex,
    feeds: &Feeds,
    packages: &[(String, String)],
    cves: &[String],
) -> Value {
    let (mut package_times, mut package_totals) = (Vec::new(), Vec::new());
    for (name, below) in packages {
        let started = Instant::now();
        let page = query::package_hosts(index, &filter(name, below), 0, LIMIT);
        package_times.push(started.elapsed());
        package_totals.push(page.total);
    }
    let (mut cve_times, mut cve_totals) = (Vec::new(), Vec::new());
    for id in cves {
        let started = Instant::now();
        let page = query::vuln_hosts(index, feeds, id, 0, LIMIT);
        cve_times.push(started.elapsed());
        cve_totals.push(page.total);
    }
    let started = Instant::now();
    let top = query::fleet_vulns(index, feeds);
    let top_time = started.elapsed();
    json!({
        "package": percentiles(package_times), "package_totals": package_totals,
        "cve": percentiles(cve_times), "cve_totals": cve_totals,
        "top_ms": top_time.as_secs_f64() * 1000.0, "top_vulns": top.len(),
        "top_hosts": top.first().map_or(0, |v| v.hosts),
    })
}

fn phase_index(a: &Args) -> Value {
    let db = a.db.clone().expect("--db");
    let rss_before = rss_kb();
    let store = hids_store::open(&StoreConfig::Sqlite(db)).expect("open the store");
    let inventory = Inventory::new(store, VulnsConfig::default());
    let mut refresh = Spent::default();
    let applied = refresh.time(|| inventory.refresh().expect("refresh"));
    let rss_after = rss_kb();
    let hwm_refresh = hwm_kb();
    // What the refresher costs every 2 s (and after every consumer batch) when nothing
    // changed.
    let mut idle = Spent::default();
    idle.time(|| inventory.refresh().expect("refresh"));
    let universe = Universe::build();
    let records = feed(&universe);
    let packages = package_questions(&universe, a.queries);
    let cves = cve_questions(&records, &universe, a.queries);
    let feeds = Feeds::from_advisories(records);
    let index = inventory.read_index();
    let questions = time_questions(&index, &feeds, &packages, &cves);
    json!({
        "applied": applied, "hosts": index.hosts(), "images": index.images_in_use(),
        "distinct_packages": index.distinct_packages(),
        "refresh": refresh.json(), "idle_refresh": idle.json(), "rss_before_kb": rss_before, "rss_after_kb": rss_after,
        "hwm_refresh_kb": hwm_refresh, "feed_records": feeds.len(),
        "missing": inventory.missing_inventories.load(std::sync::atomic::Ordering::Relaxed),
        "questions": questions,
    })
}

/// An inventory event as the plugin's `Reporter::inventory` writes it.
fn inventory_event(producer: &Producer, sequence: u64, part: InventoryPart) -> Vec<u8> {
    let mut event = producer.event(
        Timestamp::now(),
        sequence,
        "state",
        "package",
        "info",
        INVENTORY_ACTION,
    );
    event.hids.inventory = Some(part);
    serde_json::to_vec(&event).expect("serialize")
}

fn producer(h: usize) -> Producer {
    Producer {
        host: Host {
            id: host_id(h).into(),
            hostname: hostname(h).into(),
        },
        labels: Arc::new(labels(h)),
        plugin: "inventory".into(),
        run_id: format!("{:016x}", mix(h as u64 ^ 99)).into(),
    }
}

/// µs per message through `Triage::message` + `take_inventories`, and the sizes.
fn time_decode(
    fleet: &Fleet,
    messages: usize,
    whole: bool,
    known: Option<&Arc<Inventory>>,
) -> Value {
    let rules = Arc::new(RuleSet::load(true, &[]).expect("the built-in pack loads"));
    // The agent's frame limit, so that the time is measured even where the server's
    // default max_event_bytes would refuse the event (reported beside).
    let mut triage = Triage::new(
        rules,
        1_000_000,
        3_600,
        1 << 20,
        Arc::new(Metrics::default()),
    );
    if let Some(inventory) = known {
        triage = triage.with_inventory(inventory.clone());
    }
    let (mut times, mut sizes, mut accepted, mut over_server_limit) =
        (Vec::new(), Vec::new(), 0, 0);
    let mut hits = Vec::new();
    for h in 0..messages {
        let image = &fleet.images[fleet.image_of(h)];
        let payload = inventory_event(&producer(h), 1, part(fleet, image, whole));
        sizes.push(payload.len());
        over_server_limit += usize::from(payload.len() > SERVER_MAX_EVENT_BYTES);
        let position = Position {
            topic: "hids-events".into(),
            partition: 0,
            offset: h as i64,
        };
        let started = Instant::now();
        triage.message(Some(&payload), None, position, &mut hits);
        let reports = triage.take_inventories();
        times.push(started.elapsed());
        accepted += reports.len();
        drop(reports);
    }
    let total: Duration = times.iter().sum();
    sizes.sort_unstable();
    json!({
        "us_per_message": total.as_secs_f64() * 1e6 / messages.max(1) as f64,
        "latency": percentiles(times), "accepted": accepted, "messages": messages,
        "bytes_median": sizes.get(sizes.len() / 2), "bytes_max": sizes.last(),
        "over_server_limit": over_server_limit,
    })
}

/// An index holding every image (one host each), for the consumer's fast path.
fn index_of_every_image(fleet: &Fleet, db: &Path) -> Arc<Inventory> {
    let mut store = hids_store::open(&StoreConfig::Sqlite(db.to_owned())).expect("open the store");
    let at = Timestamp::now();
    for (i, image) in fleet.images.iter().enumerate() {
        let report = InventoryReport {
            host_id: format!("holder-{i}"),
            hostname: String::new(),
            labels: BTreeMap::new(),
            reported_at: at,
            part: part(fleet, image, true),
        };
        store
            .record_inventories(&[report], at)
            .expect("record an image");
    }
    let reader = hids_store::open(&StoreConfig::Sqlite(db.to_owned())).expect("open the store");
    let inventory = Inventory::new(reader, VulnsConfig::default());
    inventory.refresh().expect("refresh");
    inventory
}

fn phase_decode(a: &Args) -> Value {
    let db = a.db.clone().expect("--db");
    let fleet = Fleet::build(a.images);
    let list_bytes: Vec<usize> = fleet
        .images
        .iter()
        .take(50)
        .map(|i| serde_json::to_vec(&fleet.universe.materialize(&i.ids)).map_or(0, |v| v.len()))
        .collect();
    let known = index_of_every_image(&fleet, &db);
    // decode.rs looks for the action marker with a byte-window scan before parsing.
    let sample = inventory_event(&producer(0), 1, part(&fleet, &fleet.images[0], true));
    let marker = b"\"action\":\"inventory\"";
    let started = Instant::now();
    let found = (0..100)
        .filter(|_| {
            std::hint::black_box(&sample)
                .windows(marker.len())
                .any(|w| w == marker)
        })
        .count();
    let scan_us = started.elapsed().as_secs_f64() * 1e6 / 100.0;
    json!({
        "whole": time_decode(&fleet, a.decode_messages, true, None),
        "known": time_decode(&fleet, a.decode_messages, true, Some(&known)),
        "hash": time_decode(&fleet, a.decode_messages, false, None),
        "list_bytes_max": list_bytes.iter().max(),
        "marker_scan_us": scan_us, "marker_found": found,
        "part_bytes": PLUGIN_PART_BYTES,
        "server_max_event_bytes": SERVER_MAX_EVENT_BYTES,
    })
}

// ---------------------------------------------------------------- the naive layout

const NAIVE_SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA cache_size = -262144;
    CREATE TABLE hosts (host_id TEXT PRIMARY KEY, hostname TEXT NOT NULL, labels TEXT NOT NULL,
                        codename TEXT NOT NULL);
    CREATE TABLE host_packages (host_id TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
                                source TEXT NOT NULL, source_version TEXT NOT NULL);
    -- the questions name the source package
    CREATE INDEX host_packages_by_source ON host_packages (source);
    -- a host's new list replaces its rows
    CREATE INDEX host_packages_by_host ON host_packages (host_id);";

fn naive_load(conn: &mut rusqlite::Connection, fleet: &Fleet, hosts: usize) -> (Spent, u64) {
    let (mut spent, mut rows) = (Spent::default(), 0u64);
    let started = Instant::now();
    for from in (0..hosts).step_by(BATCH) {
        spent.time(|| {
            let tx = conn.transaction().expect("begin");
            {
                let mut host = tx
                    .prepare_cached("INSERT INTO hosts VALUES (?1, ?2, ?3, ?4)")
                    .expect("prepare");
                let mut row = tx
                    .prepare_cached("INSERT INTO host_packages VALUES (?1, ?2, ?3, ?4, ?5)")
                    .expect("prepare");
                for h in from..(from + BATCH).min(hosts) {
                    let image = &fleet.images[fleet.image_of(h)];
                    let id = host_id(h);
                    let labels = serde_json::to_string(&labels(h)).expect("labels");
                    host.execute((&id, hostname(h), labels, RELEASES[image.release].codename))
                        .expect("insert host");
                    for &p in &image.ids {
                        let p = &fleet.universe.packages[p as usize];
                        row.execute((
                            &id,
                            &p.name,
                            &p.version,
                            p.source_name(),
                            p.source_version(),
                        ))
                        .expect("insert row");
                        rows += 1;
                    }
                }
            }
            tx.commit().expect("commit");
        });
        progress("naive layout", from + BATCH, hosts, started);
    }
    (spent, rows)
}

/// Distinct hosts with a row of `source` whose source version passes `keep`; the first
/// `LIMIT` rows kept as the API would return them.
fn naive_hosts(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    keep: impl Fn(&str) -> bool,
) -> u64 {
    let mut hosts: HashSet<String> = HashSet::new();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut cursor = stmt.query(params).expect("query");
    while let Some(row) = cursor.next().expect("row") {
        let source_version: String = row.get(3).expect("source_version");
        if !keep(&source_version) {
            continue;
        }
        let host: String = row.get(0).expect("host_id");
        if rows.len() < LIMIT && !hosts.contains(&host) {
            rows.push((
                host.clone(),
                row.get(1).expect("name"),
                row.get(2).expect("version"),
            ));
        }
        hosts.insert(host);
    }
    hosts.len() as u64
}

fn naive_questions(
    conn: &rusqlite::Connection,
    packages: &[(String, String)],
    cves: &[String],
    records: &[Affected],
) -> Value {
    let mut by_package = conn
        .prepare_cached(
            "SELECT host_id, name, version, source_version FROM host_packages WHERE source = ?1",
        )
        .expect("prepare");
    let (mut package_times, mut package_totals) = (Vec::new(), Vec::new());
    for (name, below) in packages {
        let started = Instant::now();
        let total = naive_hosts(&mut by_package, [name], |v| {
            version::compare(Scheme::Deb, v, below).is_lt()
        });
        package_times.push(started.elapsed());
        package_totals.push(total);
    }
    drop(by_package);
    let mut by_id: HashMap<&str, Vec<&Affected>> = HashMap::new();
    for r in records {
        by_id.entry(&r.id).or_default().push(r);
    }
    let mut by_release = conn
        .prepare_cached(
            "SELECT hp.host_id, hp.name, hp.version, hp.source_version FROM host_packages hp
             JOIN hosts h ON h.host_id = hp.host_id WHERE hp.source = ?1 AND h.codename = ?2",
        )
        .expect("prepare");
    let (mut cve_times, mut cve_totals) = (Vec::new(), Vec::new());
    for id in cves {
        let started = Instant::now();
        let mut total = 0;
        for record in by_id.get(id.as_str()).map_or(&[][..], Vec::as_slice) {
            let release = record.release.as_deref().unwrap_or_default();
            total += naive_hosts(&mut by_release, (&*record.package, release), |v| {
                record.affects(v)
            });
        }
        cve_times.push(started.elapsed());
        cve_totals.push(total);
    }
    json!({
        "package": percentiles(package_times), "package_totals": package_totals,
        "cve": percentiles(cve_times), "cve_totals": cve_totals,
    })
}

fn phase_naive(a: &Args) -> Value {
    let db = a.db.clone().expect("--db");
    let fleet = Fleet::build(a.images);
    let mut conn = rusqlite::Connection::open(&db).expect("open the naive db");
    conn.execute_batch(NAIVE_SCHEMA).expect("schema");
    let (load, rows) = naive_load(&mut conn, &fleet, a.hosts);
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let bytes = file_bytes(&db);
    let records = feed(&fleet.universe);
    let packages = package_questions(&fleet.universe, a.queries);
    let cves = cve_questions(&records, &fleet.universe, a.queries);
    let questions = naive_questions(&conn, &packages, &cves, &records);
    json!({"load": load.json(), "rows": rows, "db_bytes": bytes, "questions": questions, "peak_rss_kb": hwm_kb()})
}

// ---------------------------------------------------------------- the parent

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn child(a: &Args, phase: &str, hosts: usize, db: &Path) -> Value {
    eprintln!("phase {phase}, {hosts} hosts ...");
    let output = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--phase",
            phase,
            "--hosts",
            &hosts.to_string(),
            "--images",
            &a.images.to_string(),
        ])
        .args([
            "--queries",
            &a.queries.to_string(),
            "--decode-messages",
            &a.decode_messages.to_string(),
        ])
        .arg("--db")
        .arg(db)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run a phase");
    assert!(
        output.status.success(),
        "phase {phase} failed: {}",
        output.status
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("the phase's result");
    serde_json::from_str(line).expect("the phase's result is JSON")
}

fn main() {
    let a = args();
    if let Some(phase) = &a.phase {
        let result = match phase.as_str() {
            "ingest" => phase_ingest(&a),
            "ingest-consumer" => phase_ingest_consumer(&a),
            "index" => phase_index(&a),
            "decode" => phase_decode(&a),
            "naive" => phase_naive(&a),
            other => panic!("unknown phase {other}"),
        };
        println!("RESULT {result}");
        return;
    }
    let tmp = match &a.dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("inventory-bench-")
            .tempdir_in(dir),
        None => tempfile::Builder::new()
            .prefix("inventory-bench-")
            .tempdir(),
    }
    .expect("a scratch directory");
    let started = Instant::now();
    let full_db = tmp.path().join("full.db");
    let ingest = child(&a, "ingest", a.hosts, &full_db);
    let index = child(&a, "index", a.hosts, &full_db);
    remove_db(&full_db);
    let consumer_db = tmp.path().join("consumer.db");
    let consumer = child(&a, "ingest-consumer", a.hosts, &consumer_db);
    remove_db(&consumer_db);
    let decode_db = tmp.path().join("decode.db");
    let decode = child(&a, "decode", a.hosts, &decode_db);
    remove_db(&decode_db);
    let subset = (!a.skip_naive).then(|| {
        let small_db = tmp.path().join("subset.db");
        let naive_db = tmp.path().join("naive.db");
        let ingest = child(&a, "ingest", a.naive_hosts, &small_db);
        let index = child(&a, "index", a.naive_hosts, &small_db);
        remove_db(&small_db);
        let naive = child(&a, "naive", a.naive_hosts, &naive_db);
        remove_db(&naive_db);
        (ingest, index, naive)
    });
    let phases = [&ingest, &consumer, &index, &decode];
    report::print(&a, &phases, subset.as_ref(), started.elapsed());
}

mod report {
    //! The printed table.
    use super::*;

    fn f(v: &Value, path: &str) -> f64 {
        v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
    }

    fn mb(kb: f64) -> String {
        format!("{:.0} MB", kb / 1024.0)
    }

    fn secs(v: &Value, path: &str) -> String {
        format!(
            "{:>8.1} s wall {:>8.1} s cpu",
            f(v, &format!("{path}/wall")),
            f(v, &format!("{path}/cpu"))
        )
    }

    fn latency(v: &Value, path: &str) -> String {
        format!(
            "p50 {:>8.2} ms  p95 {:>8.2} ms  max {:>8.2} ms",
            f(v, &format!("{path}/p50")),
            f(v, &format!("{path}/p95")),
            f(v, &format!("{path}/max"))
        )
    }

    fn totals(v: &Value, path: &str) -> Vec<u64> {
        v.pointer(path)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }

    fn spread(v: &[u64]) -> String {
        let mut s = v.to_vec();
        s.sort_unstable();
        let at = |q: f64| {
            s.get(((q * s.len() as f64) as usize).min(s.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        format!(
            "hosts found: min {} median {} max {}",
            at(0.0),
            at(0.5),
            at(1.0)
        )
    }

    /// `phases`: ingest, ingest through the consumer's fast path, index, decode.
    pub fn print(
        a: &Args,
        phases: &[&Value; 4],
        subset: Option<&(Value, Value, Value)>,
        total: Duration,
    ) {
        let [ingest, consumer, index, decode] = *phases;
        let n = a.hosts as f64;
        println!();
        println!("inventory index: {} hosts, {} images ({} distinct, {} used), universe {} packages from {} sources, {:.0} packages per host, largest image {} hosts",
            a.hosts, f(ingest, "/images"), f(ingest, "/distinct_images"), f(ingest, "/images_used"), f(ingest, "/universe"), f(ingest, "/sources"), f(ingest, "/packages_per_host"), f(ingest, "/top_image_hosts"));
        println!(
            "store ingest (record_inventories, batches of {BATCH}; report generation excluded)"
        );
        println!(
            "  day 1, every host its whole list      {}   ({} refused)",
            secs(ingest, "/day1"),
            f(ingest, "/refused1")
        );
        println!(
            "  day 1, through the consumer fast path {}   ({} whole lists, {} refused)",
            secs(consumer, "/day1"),
            f(consumer, "/wholes"),
            f(consumer, "/refused")
        );
        println!(
            "  day 2, every host its hash only       {}   ({} refused)",
            secs(ingest, "/day2"),
            f(ingest, "/refused2")
        );
        println!(
            "  database after day 1 / day 2          {} / {}",
            mb(f(ingest, "/db_bytes_day1") / 1024.0),
            mb(f(ingest, "/db_bytes") / 1024.0)
        );
        println!("  ingest process peak RSS               {} (holds a batch of {BATCH} whole reports, as the consumer does)", mb(f(ingest, "/peak_rss_kb")));
        println!("start-up rebuild (new Inventory, refresh())");
        println!("  refresh                               {}   {} hosts, {} images, {} distinct packages",
            secs(index, "/refresh"), f(index, "/hosts"), f(index, "/images"), f(index, "/distinct_packages"));
        println!(
            "  refresh again, nothing changed        {}",
            secs(index, "/idle_refresh")
        );
        let index_kb = f(index, "/rss_after_kb") - f(index, "/rss_before_kb");
        println!("  index memory (RSS after - before)     {}  ({:.0} bytes per host); peak during refresh {}",
            mb(index_kb), index_kb * 1024.0 / n, mb(f(index, "/hwm_refresh_kb")));
        questions(index, "/questions", "index");
        println!("  fleet_vulns (whole list)              {:.1} ms, {} vulnerabilities, top one on {} hosts",
            f(index, "/questions/top_ms"), f(index, "/questions/top_vulns"), f(index, "/questions/top_hosts"));
        decoding(a, decode);
        if let Some((small_ingest, small_index, naive)) = subset {
            naive_table(a, small_ingest, small_index, naive);
        }
        println!("total wall time {:.0} s", total.as_secs_f64());
    }

    fn questions(v: &Value, path: &str, who: &str) {
        println!(
            "  [{who}] package X below V ({} queries) {}  {}",
            f(v, &format!("{path}/package/n")),
            latency(v, &format!("{path}/package")),
            spread(&totals(v, &format!("{path}/package_totals")))
        );
        println!(
            "  [{who}] hosts affected by CVE ({} q.) {}  {}",
            f(v, &format!("{path}/cve/n")),
            latency(v, &format!("{path}/cve")),
            spread(&totals(v, &format!("{path}/cve_totals")))
        );
    }

    fn decoding(a: &Args, d: &Value) {
        println!(
            "consumer decode (Triage::message + take_inventories, {} messages each)",
            a.decode_messages
        );
        for (what, key) in [
            ("whole list, new to the index", "whole"),
            ("whole list, image indexed", "known"),
            ("hash only", "hash"),
        ] {
            let us = f(d, &format!("/{key}/us_per_message"));
            println!("  {what:<30} {:>9.1} us/message, median {} bytes, max {} bytes, {} of {} over the server's default max_event_bytes ({}); 1M messages: {:.0} s",
                us, f(d, &format!("/{key}/bytes_median")), f(d, &format!("/{key}/bytes_max")), f(d, &format!("/{key}/over_server_limit")), f(d, &format!("/{key}/messages")), SERVER_MAX_EVENT_BYTES, us);
        }
        println!("  of which the action-marker scan (decode.rs contains()) over one whole-list event: {:.0} us", f(d, "/marker_scan_us"));
    }

    fn naive_table(a: &Args, ingest: &Value, index: &Value, naive: &Value) {
        let m = a.naive_hosts as f64;
        let scale = 1_000_000.0 / m.max(1.0);
        println!("naive layout (one SQLite row per host and package, indexes on source and host_id) beside the index, {} hosts", a.naive_hosts);
        println!(
            "  naive load                            {}   {} rows, {} on disk",
            secs(naive, "/load"),
            f(naive, "/rows"),
            mb(f(naive, "/db_bytes") / 1024.0)
        );
        println!(
            "  index ingest (day 1 + day 2)          {:>8.1} s wall, database {}",
            f(ingest, "/day1/wall") + f(ingest, "/day2/wall"),
            mb(f(ingest, "/db_bytes") / 1024.0)
        );
        questions(naive, "/questions", "naive");
        questions(index, "/questions", "index");
        for key in ["package", "cve"] {
            let agree = totals(naive, &format!("/questions/{key}_totals"))
                == totals(index, &format!("/questions/{key}_totals"));
            let ratio = f(naive, &format!("/questions/{key}/p95"))
                / f(index, &format!("/questions/{key}/p95"));
            println!("  {key}: host counts agree: {agree}; naive/index p95 ratio {ratio:.0}x");
        }
        println!("  naive extrapolated linearly to 1,000,000 hosts: load {:.0} s, {:.0} GB, package p95 {:.0} ms, CVE p95 {:.0} ms",
            f(naive, "/load/wall") * scale, f(naive, "/db_bytes") * scale / 1e9, f(naive, "/questions/package/p95") * scale, f(naive, "/questions/cve/p95") * scale);
    }
}
