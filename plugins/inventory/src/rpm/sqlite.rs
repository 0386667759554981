//! rpm's sqlite database, `rpmdb.sqlite` (rpm 4.16+): table `Packages (hnum INTEGER
//! PRIMARY KEY, blob BLOB)`, one header blob a row.
//!
//! Read from a private copy, never in place. Opening the live file with sqlite, even
//! read-only, may create `-shm`/`-wal` files next to it (owned by us, with our mode), take
//! sqlite's locks, or checkpoint rpm's WAL: that is how another project broke `rpm -qa`.
//! `immutable=1` avoids the locks but makes sqlite ignore the `-wal` file, so packages rpm
//! committed but has not checkpointed yet (rpm checkpoints when it closes the database,
//! and a killed rpm leaves them there) would be missed. So the database, its `-wal` and a
//! rollback `-journal` if any are copied (the kernel copies: `copy_file_range`) into a
//! fresh 0700 directory, and sqlite opens the copy there, where it may recover the WAL
//! and make whatever files it wants. The copy is bracketed by the files' stamps and
//! retried when rpm wrote meanwhile, so database and WAL are of one moment.
//!
//! The directory is `$TMPDIR`, else `/var/tmp`: not `/tmp`, which is a tmpfs (memory) on
//! Fedora, and the copy is the size of the database (150-300 MB with ~3,000 packages).

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{read_stable, Collector, RpmError, RpmLimits};

/// The files sqlite keeps beside a database that carry committed or in-flight content.
const SIDE_FILES: [&str; 2] = ["-wal", "-journal"];

/// Reads the packages of the sqlite database at `path` through a private copy.
///
/// Fails when the files cannot be copied or are over the size limit, when rpm kept
/// writing during every copy, or when sqlite cannot read the copy (corrupt, truncated).
pub(super) fn read(path: &Path, limits: &RpmLimits) -> Result<Collector, RpmError> {
    let scratch = Scratch::create(path)?;
    let copy = scratch.dir.join("rpmdb.sqlite");
    let mut watched = vec![path.to_owned()];
    watched.extend(SIDE_FILES.iter().map(|suffix| with_suffix(path, suffix)));
    read_stable(&watched, || copy_files(path, &copy, limits))?;
    let mut collector = Collector::new(path, limits);
    read_copy(&copy, path, limits, &mut collector)?;
    Ok(collector)
}

/// `rpmdb.sqlite` + `-wal` -> `rpmdb.sqlite-wal`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Copies the database and its side files to `copy`, checking their total size before
/// and after (a file may grow while copied).
fn copy_files(path: &Path, copy: &Path, limits: &RpmLimits) -> Result<(), RpmError> {
    let too_large = || RpmError::TooLarge {
        path: path.to_owned(),
        limit: limits.max_db_bytes,
    };
    let mut sources = vec![(path.to_owned(), copy.to_owned())];
    for suffix in SIDE_FILES {
        let (side, side_copy) = (with_suffix(path, suffix), with_suffix(copy, suffix));
        // A side file of an earlier attempt must not outlive the original's.
        remove_if_present(&side_copy)?;
        if side.exists() {
            sources.push((side, side_copy));
        }
    }
    let mut total = 0u64;
    for (source, _) in &sources {
        total += fs::metadata(source)
            .map_err(|error| read_error(source, error))?
            .len();
    }
    if total > limits.max_db_bytes {
        return Err(too_large());
    }
    let mut copied = 0u64;
    for (source, target) in &sources {
        copied += fs::copy(source, target).map_err(|error| read_error(source, error))?;
        if copied > limits.max_db_bytes {
            return Err(too_large());
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), RpmError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(read_error(path, error)),
        _ => Ok(()),
    }
}

fn read_error(path: &Path, source: io::Error) -> RpmError {
    RpmError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Reads every header blob of the copy; `original` names the database in errors.
fn read_copy(
    copy: &Path,
    original: &Path,
    limits: &RpmLimits,
    collector: &mut Collector,
) -> Result<(), RpmError> {
    let sql_error = |source| RpmError::Sqlite {
        path: original.to_owned(),
        source,
    };
    // Read-write on our own copy: sqlite may need to recover the copied WAL.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(copy, flags).map_err(sql_error)?;
    // length() reads the blob's size from the record, not the blob: an oversized header
    // is counted without being loaded.
    let mut statement = connection
        .prepare("SELECT length(blob), CASE WHEN length(blob) <= ?1 THEN blob END FROM Packages")
        .map_err(sql_error)?;
    let limit = i64::try_from(limits.max_header_bytes).unwrap_or(i64::MAX);
    let mut rows = statement.query([limit]).map_err(sql_error)?;
    while let Some(row) = rows.next().map_err(sql_error)? {
        let len: i64 = row.get(0).map_err(sql_error)?;
        match row.get_ref(1).map_err(sql_error)? {
            ValueRef::Blob(blob) => collector.header(blob)?,
            _ => collector.skip(&format!(
                "row of {len} bytes over the header limit or not a blob"
            )),
        }
    }
    Ok(())
}

/// A private directory, removed with what sqlite left in it when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Creates a new 0700 directory (failing if the name exists: nothing planted there by
    /// another user is reused).
    fn create(database: &Path) -> Result<Scratch, RpmError> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .or_else(|| Some(PathBuf::from("/var/tmp")).filter(|dir| dir.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "hids-rpmdb-{}-{}-{nanos}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RpmError::Read {
                path: database.to_owned(),
                source: io::Error::new(
                    source.kind(),
                    format!("private copy in {}: {source}", dir.display()),
                ),
            })?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "private rpmdb copy not removed");
        }
    }
}
