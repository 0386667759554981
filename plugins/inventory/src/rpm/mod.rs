//! rpm's database of installed packages, in the three formats rpm has used: sqlite
//! (`rpmdb.sqlite`, rpm 4.16+: Fedora 33+, RHEL 9), ndb (`Packages.db`, openSUSE/SLE 15)
//! and the Berkeley DB hash file (`Packages`, RHEL 8 and older), read without rpm's
//! library.
//!
//! Read-only, without rpm's locks: another project broke `rpm -qa` by opening the live
//! sqlite database in a way that created or kept its journal files. Here:
//! - sqlite: the database and its `-wal` are copied into a private directory and only the
//!   copy is opened (see [`sqlite`] for why not `immutable=1`);
//! - ndb and Berkeley DB: the file is opened `O_RDONLY` and read with `pread`; no lock
//!   (rpm's `.rpm.lock`, BDB's `__db.*` environment) is taken or created.
//!
//! Without a lock, rpm may write while we read. Every read is bracketed by the files'
//! identity, size and mtime: if any changed, the read is thrown away and retried a few
//! times, then reported as an error rather than as a half-old, half-new list.
//!
//! Every header (one package) is parsed with bounds checks ([`header`]): one that does not
//! parse is counted in [`RpmInventory::skipped`], never a panic. A database whose structure
//! is broken (bad magic, truncated pages) is an error: nothing partial is reported as the
//! host's list.
//!
//! Not done here: `gpg-pubkey` entries (imported signing keys rpm lists as packages, with
//! no SOURCERPM) are left out, since they are keys, not software a feed names; rpm's
//! other tags (file lists, dependencies) are not read.

mod bdb;
mod header;
mod ndb;
mod sqlite;

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hids_types::package::{Package, PackageType};

use header::HeaderFields;

/// Bounds on what one read of the database may take.
#[derive(Debug, Clone)]
pub struct RpmLimits {
    /// The database file (for sqlite: the database plus its `-wal`) up to this many bytes;
    /// a larger one is refused whole. A Fedora host with ~3,000 packages has a
    /// `rpmdb.sqlite` of 150-300 MB (indexes included), a BDB `Packages` of ~100 MB.
    pub max_db_bytes: u64,
    /// Packages kept; beyond it the read fails (a database this large is not one).
    pub max_packages: usize,
    /// A larger header (one package) is skipped and counted; rpm itself refuses headers
    /// over 256 MiB, real ones stay under a few MiB.
    pub max_header_bytes: usize,
}

impl Default for RpmLimits {
    fn default() -> Self {
        RpmLimits {
            max_db_bytes: 2 << 30,
            max_packages: 200_000,
            max_header_bytes: 64 << 20,
        }
    }
}

/// What was read.
#[derive(Debug)]
pub struct RpmInventory {
    /// `"sqlite"`, `"ndb"` or `"bdb"`.
    pub format: &'static str,
    /// The database file read (under the root given).
    pub path: PathBuf,
    pub packages: Vec<Package>,
    /// Headers that did not parse (corrupt, truncated, over `max_header_bytes`), counted.
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RpmError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: larger than {limit} bytes; refused")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: more than {limit} packages; refused")]
    TooMany { path: PathBuf, limit: usize },
    #[error("{path}: not a readable rpm database: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: changed during each of {attempts} reads (rpm is writing); try later")]
    Changing { path: PathBuf, attempts: u32 },
}

/// The database formats, in the order they are looked for in one directory: newest
/// first, since a converted host may keep the old file next to the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbFormat {
    Sqlite,
    Ndb,
    Bdb,
}

impl DbFormat {
    const ALL: [DbFormat; 3] = [DbFormat::Sqlite, DbFormat::Ndb, DbFormat::Bdb];

    fn file_name(self) -> &'static str {
        match self {
            DbFormat::Sqlite => "rpmdb.sqlite",
            DbFormat::Ndb => "Packages.db",
            DbFormat::Bdb => "Packages",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DbFormat::Sqlite => "sqlite",
            DbFormat::Ndb => "ndb",
            DbFormat::Bdb => "bdb",
        }
    }
}

/// Where rpm keeps its database: `/var/lib/rpm` (RHEL, and a symlink to the other on
/// newer hosts), `/usr/lib/sysimage/rpm` (openSUSE, Fedora 36+).
const DB_DIRS: [&str; 2] = ["var/lib/rpm", "usr/lib/sysimage/rpm"];

/// Reads until the files are the same before and after, at most this many times.
const READ_ATTEMPTS: u32 = 3;
/// Between attempts: a transaction writing the database usually ends within this.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Finds rpm's database under `root` (`/` on a host, a tempdir in tests) and reads the
/// installed packages. `Ok(None)` when the host has no rpm database.
///
/// Fails when the database cannot be read, is over `limits`, is structurally broken, or
/// kept changing while read.
pub fn read_installed(root: &Path, limits: &RpmLimits) -> Result<Option<RpmInventory>, RpmError> {
    let Some((format, path)) = locate(root) else {
        return Ok(None);
    };
    let read = match format {
        DbFormat::Sqlite => sqlite::read(&path, limits)?,
        DbFormat::Ndb => read_stable(std::slice::from_ref(&path), || {
            let mut collector = Collector::new(&path, limits);
            ndb::read(&path, limits, &mut collector)?;
            Ok(collector)
        })?,
        DbFormat::Bdb => read_stable(std::slice::from_ref(&path), || {
            let mut collector = Collector::new(&path, limits);
            bdb::read(&path, limits, &mut collector)?;
            Ok(collector)
        })?,
    };
    Ok(Some(RpmInventory {
        format: format.as_str(),
        path,
        packages: read.packages,
        skipped: read.skipped,
    }))
}

fn locate(root: &Path) -> Option<(DbFormat, PathBuf)> {
    DB_DIRS.iter().find_map(|dir| {
        DbFormat::ALL.iter().find_map(|&format| {
            let path = root.join(dir).join(format.file_name());
            path.is_file().then_some((format, path))
        })
    })
}

/// Turns header blobs into packages, counting the ones that do not parse.
struct Collector {
    path: PathBuf,
    max_packages: usize,
    packages: Vec<Package>,
    skipped: u64,
}

/// Skipped headers logged one by one per read; the rest are only counted.
const SKIPS_LOGGED: u64 = 5;

impl Collector {
    fn new(path: &Path, limits: &RpmLimits) -> Collector {
        Collector {
            path: path.to_owned(),
            max_packages: limits.max_packages,
            packages: Vec::new(),
            skipped: 0,
        }
    }

    /// Adds the package of one header blob, or counts it skipped. Fails only when there
    /// are more packages than allowed.
    fn header(&mut self, blob: &[u8]) -> Result<(), RpmError> {
        match header::parse(blob) {
            Ok(fields) => {
                if let Some(package) = package_of(fields) {
                    if self.packages.len() >= self.max_packages {
                        return Err(RpmError::TooMany {
                            path: self.path.clone(),
                            limit: self.max_packages,
                        });
                    }
                    self.packages.push(package);
                }
                Ok(())
            }
            Err(reason) => {
                self.skip(&reason);
                Ok(())
            }
        }
    }

    /// Counts a header that could not be read.
    fn skip(&mut self, reason: &dyn fmt::Display) {
        self.skipped += 1;
        if self.skipped <= SKIPS_LOGGED {
            tracing::warn!(path = %self.path.display(), %reason, "rpm header skipped");
        }
    }
}

/// The inventory line of a header; `None` for `gpg-pubkey` (an imported key).
fn package_of(fields: HeaderFields) -> Option<Package> {
    if fields.name == "gpg-pubkey" {
        return None;
    }
    let epoch = fields
        .epoch
        .map(|epoch| format!("{epoch}:"))
        .unwrap_or_default();
    let version = format!("{epoch}{}-{}", fields.version, fields.release);
    // The src.rpm's file name carries no epoch; every binary of one spec gets the spec's
    // Epoch, so the binary's epoch is the source's.
    let (source, source_version) = match split_source_rpm(&fields.source_rpm) {
        Some((name, version, release)) => (name.to_owned(), format!("{epoch}{version}-{release}")),
        None => (String::new(), String::new()),
    };
    // As `Package` wants them: empty when the same as the binary's.
    let source = if source == fields.name {
        String::new()
    } else {
        source
    };
    let source_version = if source_version == version {
        String::new()
    } else {
        source_version
    };
    Some(Package {
        kind: PackageType::Rpm,
        name: fields.name,
        version,
        architecture: fields.arch,
        source,
        source_version,
        path: String::new(),
    })
}

/// `bash-5.1.8-6.el9.src.rpm` -> (`bash`, `5.1.8`, `6.el9`); `None` when it is not of that
/// shape.
fn split_source_rpm(file_name: &str) -> Option<(&str, &str, &str)> {
    let stem = file_name
        .strip_suffix(".src.rpm")
        .or_else(|| file_name.strip_suffix(".nosrc.rpm"))?;
    let (rest, release) = stem.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    (!name.is_empty() && !version.is_empty() && !release.is_empty())
        .then_some((name, version, release))
}

/// What tells that a file changed: a rename puts another inode there, a write moves the
/// mtime or the size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_nanos: i128,
}

fn stamps(files: &[PathBuf]) -> Result<Vec<Option<FileStamp>>, RpmError> {
    files
        .iter()
        .map(|path| match fs::metadata(path) {
            Ok(meta) => Ok(Some(FileStamp {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime_nanos: i128::from(meta.mtime()) * 1_000_000_000
                    + i128::from(meta.mtime_nsec()),
            })),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RpmError::Read {
                path: path.clone(),
                source,
            }),
        })
        .collect()
}

/// Runs `read` until `files` (absent ones included) look the same before and after it.
fn read_stable<T>(
    files: &[PathBuf],
    mut read: impl FnMut() -> Result<T, RpmError>,
) -> Result<T, RpmError> {
    for attempt in 0..READ_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RETRY_PAUSE);
        }
        let before = stamps(files)?;
        let result = read();
        if stamps(files)? == before {
            return result;
        }
    }
    Err(RpmError::Changing {
        path: files.first().cloned().unwrap_or_default(),
        attempts: READ_ATTEMPTS,
    })
}

/// The database file, opened read-only, with its length checked against the limit.
fn open_limited(path: &Path, limits: &RpmLimits) -> Result<(File, u64), RpmError> {
    let read_err = |source| RpmError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    if len > limits.max_db_bytes {
        return Err(RpmError::TooLarge {
            path: path.to_owned(),
            limit: limits.max_db_bytes,
        });
    }
    Ok((file, len))
}

/// Fills `buf` from `offset`; a short file is a corrupt database, not an I/O error.
fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), RpmError> {
    file.read_exact_at(buf, offset)
        .map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => {
                corrupt(path, format!("truncated: nothing at offset {offset}"))
            }
            _ => RpmError::Read {
                path: path.to_owned(),
                source,
            },
        })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RpmError {
    RpmError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Little- or big-endian integers at checked offsets of a page or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16_at(self, bytes: &[u8], at: usize) -> Option<u16> {
        let raw: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            Endian::Little => u16::from_le_bytes(raw),
            Endian::Big => u16::from_be_bytes(raw),
        })
    }

    fn u32_at(self, bytes: &[u8], at: usize) -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Endian::Little => u32::from_le_bytes(raw),
            Endian::Big => u32::from_be_bytes(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str, epoch: Option<u32>, source_rpm: &str) -> HeaderFields {
        HeaderFields {
            name: name.into(),
            epoch,
            version: "5.1.8".into(),
            release: "6.el9".into(),
            arch: "x86_64".into(),
            source_rpm: source_rpm.into(),
        }
    }

    #[test]
    fn source_rpm_names_split_at_the_last_two_dashes() {
        assert_eq!(
            split_source_rpm("bash-5.1.8-6.el9.src.rpm"),
            Some(("bash", "5.1.8", "6.el9"))
        );
        assert_eq!(
            split_source_rpm("python-3.11-libs-3.11.2-1.fc38.src.rpm"),
            Some(("python-3.11-libs", "3.11.2", "1.fc38"))
        );
        assert_eq!(
            split_source_rpm("foo-1-2.nosrc.rpm"),
            Some(("foo", "1", "2"))
        );
        assert_eq!(split_source_rpm("bash-5.1.8.src.rpm"), None);
        assert_eq!(split_source_rpm("bash-5.1.8-6.el9.rpm"), None);
        assert_eq!(split_source_rpm(""), None);
        assert_eq!(split_source_rpm("--.src.rpm"), None);
    }

    #[test]
    fn the_binarys_epoch_is_given_to_its_source() {
        let package = package_of(fields("bash-doc", Some(1), "bash-5.1.8-6.el9.src.rpm")).unwrap();
        assert_eq!(package.version, "1:5.1.8-6.el9");
        assert_eq!(package.source, "bash");
        // Same as the binary's version: left empty, as `Package` wants.
        assert_eq!(package.source_version, "");
        assert_eq!(package.source_version(), "1:5.1.8-6.el9");
    }

    #[test]
    fn a_source_of_another_version_is_kept() {
        let package = package_of(fields("libfoo", None, "foo-2.0-1.el9.src.rpm")).unwrap();
        assert_eq!(package.version, "5.1.8-6.el9");
        assert_eq!(
            (package.source.as_str(), package.source_version.as_str()),
            ("foo", "2.0-1.el9")
        );
        let same = package_of(fields("bash", None, "bash-5.1.8-6.el9.src.rpm")).unwrap();
        assert_eq!(
            (same.source.as_str(), same.source_version.as_str()),
            ("", "")
        );
    }

    #[test]
    fn gpg_pubkeys_are_not_packages() {
        assert_eq!(package_of(fields("gpg-pubkey", None, "")), None);
    }

    #[test]
    fn no_database_is_none() {
        let root = tempfile::tempdir().unwrap();
        assert!(read_installed(root.path(), &RpmLimits::default())
            .unwrap()
            .is_none());
    }
}
