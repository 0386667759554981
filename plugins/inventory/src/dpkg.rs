//! dpkg's database: `/var/lib/dpkg/status`, with the journal entries in `updates/` that
//! dpkg has not folded in yet applied over it, as `dpkg-query` does.
//!
//! Read-only and lock-free: dpkg replaces the status file by rename, so a reader holding
//! the old file sees a whole, consistent one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use hids_types::package::{Package, PackageType};

/// Bounds on what one read of the database may take.
#[derive(Debug, Clone)]
pub struct DpkgLimits {
    /// The status file, and each journal file, is read up to this many bytes; a larger
    /// one is refused whole (nothing partial is reported as the host's list).
    pub max_file_bytes: u64,
    /// Packages kept; beyond it the read fails (a database this large is not one).
    pub max_packages: usize,
    /// A longer line (a huge description) is skipped, not buffered.
    pub max_line_bytes: usize,
}

impl Default for DpkgLimits {
    fn default() -> Self {
        DpkgLimits {
            max_file_bytes: 256 << 20,
            max_packages: 200_000,
            max_line_bytes: 64 << 10,
        }
    }
}

/// What was read.
#[derive(Debug, Default)]
pub struct DpkgInventory {
    pub packages: Vec<Package>,
    /// Stanzas without a package name or version, counted.
    pub malformed: u64,
    /// Packages removed with their configuration kept (`rc`): `dpkg-query -W` lists
    /// them, but nothing of them runs, so they are not reported.
    pub config_only: u64,
    /// Journal files applied from `updates/`.
    pub journal_files: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DpkgError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: larger than {limit} bytes; refused (raise --max-db-bytes if real)")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: more than {limit} packages; refused")]
    TooMany { path: PathBuf, limit: usize },
}

/// One stanza's fields that matter here.
#[derive(Debug, Default)]
struct Stanza {
    package: String,
    status: String,
    version: String,
    architecture: String,
    source: String,
}

/// Reads dpkg's database under `root` (`/` on a host). `Ok(None)` when the host has no
/// dpkg database.
pub fn read_installed(
    root: &Path,
    limits: &DpkgLimits,
) -> Result<Option<DpkgInventory>, DpkgError> {
    let admin = root.join("var/lib/dpkg");
    let status = admin.join("status");
    if !status.is_file() {
        return Ok(None);
    }
    let mut entries: BTreeMap<(String, String), Stanza> = BTreeMap::new();
    let mut out = DpkgInventory::default();
    read_file(&status, limits, &mut entries, &mut out)?;
    for journal in journal_files(&admin.join("updates")) {
        read_file(&journal, limits, &mut entries, &mut out)?;
        out.journal_files += 1;
    }
    for stanza in entries.into_values() {
        match stanza.status.rsplit(' ').next() {
            Some("not-installed") => {}
            Some("config-files") => out.config_only += 1,
            _ => out.packages.push(package_of(stanza)),
        }
    }
    Ok(Some(out))
}

/// dpkg's journal: files named by number in `updates/`, applied in order.
fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u64, PathBuf)> = read
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, p)| p).collect()
}

fn read_file(
    path: &Path,
    limits: &DpkgLimits,
    entries: &mut BTreeMap<(String, String), Stanza>,
    out: &mut DpkgInventory,
) -> Result<(), DpkgError> {
    let read_err = |source| DpkgError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > limits.max_file_bytes {
        return Err(DpkgError::TooLarge {
            path: path.to_owned(),
            limit: limits.max_file_bytes,
        });
    }
    let mut reader = BufReader::new(file.take(limits.max_file_bytes));
    let mut stanza = Stanza::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = read_line(&mut reader, &mut line, limits.max_line_bytes).map_err(read_err)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if n == 0 || text.is_empty() {
            finish(std::mem::take(&mut stanza), entries, out);
            if entries.len() > limits.max_packages {
                return Err(DpkgError::TooMany {
                    path: path.to_owned(),
                    limit: limits.max_packages,
                });
            }
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        if text.starts_with([' ', '\t']) {
            continue; // a continuation line: descriptions, conffiles
        }
        let Some((field, value)) = text.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match field {
            "Package" => stanza.package = value,
            "Status" => stanza.status = value,
            "Version" => stanza.version = value,
            "Architecture" => stanza.architecture = value,
            "Source" => stanza.source = value,
            _ => {}
        }
    }
}

/// One line into `line`, at most `max` bytes of it kept (the rest read and dropped).
/// Returns the bytes read, 0 at the end of the file.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

fn finish(
    stanza: Stanza,
    entries: &mut BTreeMap<(String, String), Stanza>,
    out: &mut DpkgInventory,
) {
    if stanza.package.is_empty() && stanza.status.is_empty() {
        return; // blank lines between stanzas
    }
    if stanza.package.is_empty() || (stanza.version.is_empty() && !not_installed(&stanza)) {
        out.malformed += 1;
        return;
    }
    // A journal entry replaces the package's stanza (per architecture: multiarch hosts
    // have libc6:amd64 and libc6:i386).
    entries.insert(
        (stanza.package.clone(), stanza.architecture.clone()),
        stanza,
    );
}

fn not_installed(stanza: &Stanza) -> bool {
    stanza.status.ends_with("not-installed") || stanza.status.ends_with("config-files")
}

/// `Source: glibc (2.36-9+deb12u4)` or `Source: bash`: the source package, and its
/// version when it differs from the binary's (binNMUs, packages built from a source of
/// another version).
fn package_of(stanza: Stanza) -> Package {
    let (source, source_version) = match stanza.source.split_once('(') {
        Some((name, version)) => (
            name.trim().to_owned(),
            version.trim().trim_end_matches(')').trim().to_owned(),
        ),
        None => (stanza.source.trim().to_owned(), String::new()),
    };
    let source = if source == stanza.package {
        String::new()
    } else {
        source
    };
    let source_version = if source_version == stanza.version {
        String::new()
    } else {
        source_version
    };
    Package {
        kind: PackageType::Deb,
        name: stanza.package,
        version: stanza.version,
        architecture: stanza.architecture,
        source,
        source_version,
        path: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const STATUS: &str = "Package: bash
Status: install ok installed
Priority: required
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b8
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 Source: not a field

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4

Package: libc6
Status: install ok installed
Architecture: i386
Source: glibc
Version: 2.36-9+deb12u4

Package: oldpkg
Status: deinstall ok config-files
Architecture: all
Version: 1.0

Package: purged
Status: purge ok not-installed
Architecture: all

Package: noversion
Status: install ok installed
";

    #[test]
    fn binnmus_multiarch_and_removed_packages_read_as_dpkg_query_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "var/lib/dpkg/status", STATUS);
        let inv = read_installed(dir.path(), &DpkgLimits::default())
            .unwrap()
            .unwrap();
        let names: Vec<_> = inv
            .packages
            .iter()
            .map(|p| {
                format!(
                    "{}:{} {} {} {}",
                    p.name,
                    p.architecture,
                    p.version,
                    p.source_name(),
                    p.source_version()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "bash:amd64 5.2.15-2+b8 bash 5.2.15-2",
                "libc6:amd64 2.36-9+deb12u4 glibc 2.36-9+deb12u4",
                "libc6:i386 2.36-9+deb12u4 glibc 2.36-9+deb12u4",
            ]
        );
        assert_eq!(inv.config_only, 1);
        assert_eq!(inv.malformed, 1);
    }

    #[test]
    fn journal_entries_replace_the_status_files_in_number_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "var/lib/dpkg/status", STATUS);
        write(
            dir.path(),
            "var/lib/dpkg/updates/0002",
            "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.21-2\n",
        );
        write(
            dir.path(),
            "var/lib/dpkg/updates/0001",
            "Package: bash\nStatus: install ok unpacked\nArchitecture: amd64\nVersion: 5.2.20-1\n",
        );
        write(dir.path(), "var/lib/dpkg/updates/tmp.i", "junk");
        let inv = read_installed(dir.path(), &DpkgLimits::default())
            .unwrap()
            .unwrap();
        let bash = inv.packages.iter().find(|p| p.name == "bash").unwrap();
        assert_eq!(bash.version, "5.2.21-2");
        assert_eq!(bash.source_version(), "5.2.21-2");
        assert_eq!(inv.journal_files, 2);
    }

    #[test]
    fn a_huge_or_truncated_status_file_is_refused_or_read_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "var/lib/dpkg/status", STATUS);
        let small = DpkgLimits {
            max_file_bytes: 100,
            ..DpkgLimits::default()
        };
        let err = read_installed(dir.path(), &small).unwrap_err();
        assert!(err.to_string().contains("larger than 100 bytes"), "{err}");
        // Cut in the middle of a stanza, binary junk and an endless line.
        let mut junk = STATUS.as_bytes()[..STATUS.len() / 2].to_vec();
        junk.extend_from_slice(&[0xff, 0xfe, b'\n']);
        junk.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(dir.path().join("var/lib/dpkg/status"), junk).unwrap();
        let inv = read_installed(dir.path(), &DpkgLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(inv.packages.len(), 1, "{:?}", inv.packages);
        assert!(
            read_installed(Path::new("/nonexistent"), &DpkgLimits::default())
                .unwrap()
                .is_none()
        );
    }
}
