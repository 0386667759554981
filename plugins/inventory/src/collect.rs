//! One inventory of the host: every source read, merged, sorted and hashed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hids_types::package::{inventory_hash, OsRelease, Package, PackageType};
use serde::Serialize;

use crate::dpkg::{self, DpkgLimits};
use crate::python::{Found, Limits};

/// Where and how much to read.
#[derive(Debug, Clone)]
pub struct Collector {
    /// The file system root (`/`; a directory in tests).
    pub root: PathBuf,
    pub proc_root: PathBuf,
    pub dpkg: DpkgLimits,
    pub rpm: crate::rpm::RpmLimits,
    /// Python, npm and jar bounds.
    pub languages: Limits,
}

/// What one source gave.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub source: &'static str,
    pub packages: usize,
    /// Entries that could not be read, counted (a header that does not parse, a
    /// malformed stanza, a jar that is not a zip).
    pub skipped: u64,
    /// The database read, and its format (`sqlite /var/lib/rpm/rpmdb.sqlite`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Why the source could not be read at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A few of the files that could not be read, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One inventory.
#[derive(Debug)]
pub struct Inventory {
    pub os: OsRelease,
    pub kernel: String,
    /// Sorted, without duplicates.
    pub packages: Vec<Package>,
    pub hash: String,
    pub sources: Vec<SourceReport>,
    /// False when a package database could not be read: the list would show its
    /// packages as removed, so it is not sent (the last one sent stands).
    pub complete: bool,
    pub took: Duration,
}

impl Collector {
    pub fn collect(&self) -> Inventory {
        let started = Instant::now();
        let mut packages = Vec::new();
        let mut sources = Vec::new();
        let mut complete = true;
        let dpkg = self.dpkg_source(&mut packages);
        complete &= dpkg.error.is_none();
        sources.push(dpkg);
        let rpm = self.rpm_source(&mut packages);
        complete &= rpm.error.is_none();
        sources.push(rpm);
        for (name, found) in [
            ("python", crate::python::python(&self.root, &self.languages)),
            ("npm", crate::npm::npm(&self.root, &self.languages)),
            ("jar", crate::jar::jars(&self.proc_root, &self.languages)),
        ] {
            sources.push(SourceReport::found(name, &found));
            packages.extend(found.packages.into_iter().map(stable_jar_path));
        }
        let kernel = crate::os::kernel_release(&self.proc_root);
        if !kernel.is_empty() {
            packages.push(Package {
                kind: PackageType::Kernel,
                name: "linux".into(),
                version: kernel.clone(),
                architecture: std::env::consts::ARCH.into(),
                source: String::new(),
                source_version: String::new(),
                path: String::new(),
            });
        }
        packages.sort();
        packages.dedup();
        let os = crate::os::os_release(&self.root);
        let hash = inventory_hash(&os, &kernel, &packages);
        Inventory {
            os,
            kernel,
            packages,
            hash,
            sources,
            complete,
            took: started.elapsed(),
        }
    }

    fn dpkg_source(&self, packages: &mut Vec<Package>) -> SourceReport {
        let mut report = SourceReport::named("deb");
        match dpkg::read_installed(&self.root, &self.dpkg) {
            Ok(Some(found)) => {
                report.packages = found.packages.len();
                report.skipped = found.malformed;
                packages.extend(found.packages);
            }
            Ok(None) => {}
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }
}

/// A jar's path without its directory: servlet containers unpack into directories
/// named at random per start (`/tmp/jetty-0_0_0_0-8080-app.war-_-any-123/...`), and
/// a path that changes at every restart would make the host's list, and so its hash,
/// new each time. Nested jars keep their place in the outer one (`app.jar!/lib/x.jar`).
fn stable_jar_path(mut package: Package) -> Package {
    if package.kind == PackageType::Jar {
        let (outer, nested) = match package.path.split_once("!/") {
            Some((outer, nested)) => (outer, Some(nested)),
            None => (package.path.as_str(), None),
        };
        let name = outer.rsplit('/').next().unwrap_or(outer);
        package.path = match nested {
            Some(nested) => format!("{name}!/{nested}"),
            None => name.to_owned(),
        };
    }
    package
}

/// Problems listed per source in the stats record; the rest are counted.
const PROBLEMS_LISTED: usize = 10;

impl Collector {
    fn rpm_source(&self, packages: &mut Vec<Package>) -> SourceReport {
        let mut report = SourceReport::named("rpm");
        match crate::rpm::read_installed(&self.root, &self.rpm) {
            Ok(Some(found)) => {
                report.packages = found.packages.len();
                report.skipped = found.skipped;
                report.database = Some(format!("{} {}", found.format, found.path.display()));
                packages.extend(found.packages);
            }
            Ok(None) => {}
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }
}

impl SourceReport {
    /// A language source's findings: per-file problems do not make the inventory
    /// incomplete (the file is left out and counted).
    fn found(source: &'static str, found: &Found) -> SourceReport {
        SourceReport {
            source,
            packages: found.packages.len(),
            skipped: found.skipped + found.problems_total,
            database: None,
            error: None,
            problems: found
                .problems
                .iter()
                .take(PROBLEMS_LISTED)
                .map(|(path, why)| format!("{}: {why}", path.display()))
                .collect(),
        }
    }

    fn named(source: &'static str) -> SourceReport {
        SourceReport {
            source,
            packages: 0,
            skipped: 0,
            database: None,
            error: None,
            problems: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_paths_lose_their_random_directories_but_keep_nesting() {
        let jar = |path: &str| Package {
            kind: PackageType::Jar,
            name: "org.example:lib".into(),
            version: "1.0".into(),
            architecture: String::new(),
            source: String::new(),
            source_version: String::new(),
            path: path.into(),
        };
        assert_eq!(
            stable_jar_path(jar("/tmp/jetty-8080-x1/webapp/WEB-INF/lib/a.jar")).path,
            "a.jar"
        );
        assert_eq!(
            stable_jar_path(jar("/srv/app.jar!/BOOT-INF/lib/b.jar")).path,
            "app.jar!/BOOT-INF/lib/b.jar"
        );
        let mut deb = jar("/x/y");
        deb.kind = PackageType::Deb;
        assert_eq!(stable_jar_path(deb).path, "/x/y");
    }
}
