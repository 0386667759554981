//! Python distributions: `*.dist-info/METADATA`, `*.egg-info` (a `PKG-INFO` file in a
//! directory, or the file itself, as distutils wrote it) and `*.egg/EGG-INFO/PKG-INFO`,
//! in the site directories of the system interpreters, of virtual environments under
//! `/opt/*` and of `pip install --user` ([`SITE_DIRS`]).
//!
//! The name is kept as `Name:` writes it (`PyYAML`, `zope.interface`): a matcher
//! normalises both sides as PEP 503 says (lowercase, runs of `-_.` as one `-`). The
//! path is the site directory, so a package in two environments is two lines.
//!
//! Not read: `.pth` links to source trees (`pip install -e`), eggs kept zipped, Python
//! 2's `site-python`, and environments outside the places listed: a virtualenv in a
//! home directory's project is the project's, not the host's.
//!
//! This module also holds what the three language collectors share (python, npm, jar):
//! [`Limits`], [`Found`] and the bounded walking and reading every one of them does.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hids_types::package::{Package, PackageType};

/// Where site directories are looked for, relative to the scanned root. A component
/// ending in `*` matches any name starting with what comes before it (hidden names
/// never match): `python*` is `python3`, `python3.11`, `python2.7`.
pub const SITE_DIRS: &[&str] = &[
    "usr/lib/python*/dist-packages",
    "usr/lib/python*/site-packages",
    "usr/lib64/python*/site-packages",
    "usr/local/lib/python*/dist-packages",
    "usr/local/lib/python*/site-packages",
    "usr/local/lib64/python*/site-packages",
    "opt/*/lib/python*/site-packages",
    "opt/*/lib64/python*/site-packages",
    "opt/*/*/lib/python*/site-packages",
    "root/.local/lib/python*/site-packages",
    "home/*/.local/lib/python*/site-packages",
];

/// Bounds of one collector's scan. Each one stops a kind of bad input: a file of a
/// gigabyte, a directory of millions of entries, a symlink maze, a jar bomb.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Metadata files (METADATA, package.json) and jars read at most; the rest are
    /// counted in [`Found::skipped`].
    pub max_files: usize,
    /// Bytes read at most from one file or one archive member: a package.json of a
    /// gigabyte is read to here and reported.
    pub max_file_bytes: u64,
    /// Directory entries looked at in one scan, over all directories.
    pub max_entries: u64,
    /// How deep `node_modules` nest below a prefix (`a/node_modules/b/node_modules/c`
    /// is 2).
    pub max_depth: u32,
    /// How deep jars nest in jars: 1 reads `BOOT-INF/lib/*.jar` of a jar, 2 also the
    /// jars inside those.
    pub max_jar_depth: u32,
    /// Entries of one jar, read from its end record before anything is parsed: past
    /// it the jar is known by its file name only. 65,535 also stops zip64 archives.
    pub max_jar_entries: u64,
    /// A nested jar is inflated in memory up to this many bytes; larger ones are
    /// known by their file name only.
    pub max_nested_jar_bytes: u64,
    /// Bytes inflated for one jar, its members and all the jars nested in it: what
    /// stops a jar bomb of many members that each stay under the other bounds.
    pub max_jar_inflated_bytes: u64,
    /// Problems kept in [`Found::problems`]; all are counted.
    pub max_problems: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 100_000,
            max_file_bytes: 4 << 20,
            max_entries: 2_000_000,
            max_depth: 8,
            max_jar_depth: 2,
            max_jar_entries: 65_535,
            max_nested_jar_bytes: 16 << 20,
            max_jar_inflated_bytes: 256 << 20,
            max_problems: 100,
        }
    }
}

/// What one collector found.
#[derive(Debug, Default)]
pub struct Found {
    /// In the order found; the caller sorts.
    pub packages: Vec<Package>,
    /// A file that could not be read or made no sense, and why: the first
    /// [`Limits::max_problems`].
    pub problems: Vec<(PathBuf, String)>,
    /// Every problem, kept or not.
    pub problems_total: u64,
    /// Files, directories and archive members left unread because a [`Limits`] bound
    /// was reached.
    pub skipped: u64,
}

/// One scan's state: what it found, what it already visited, what it has left.
pub(crate) struct Scan<'a> {
    pub limits: &'a Limits,
    pub found: Found,
    /// The scanned root; paths are shown as seen from it.
    pub root: PathBuf,
    entries: u64,
    files: usize,
    /// Directories and files already visited, by device and inode: symlinks cannot
    /// loop, and a jar two processes hold is read once.
    visited: HashSet<(u64, u64)>,
}

impl<'a> Scan<'a> {
    pub fn new(root: &Path, limits: &'a Limits) -> Self {
        Scan {
            limits,
            found: Found::default(),
            root: root.to_path_buf(),
            entries: 0,
            files: 0,
            visited: HashSet::new(),
        }
    }

    pub fn problem(&mut self, path: &Path, reason: impl Into<String>) {
        self.found.problems_total += 1;
        if self.found.problems.len() < self.limits.max_problems {
            let shown = PathBuf::from(self.shown(path));
            self.found.problems.push((shown, reason.into()));
        }
    }

    /// Whether one more file may be read; counts it, or counts it skipped.
    pub fn take_file(&mut self) -> bool {
        if self.files >= self.limits.max_files {
            self.found.skipped += 1;
            return false;
        }
        self.files += 1;
        true
    }

    /// True the first time a file or directory is seen.
    pub fn first_visit(&mut self, meta: &Metadata) -> bool {
        self.visited.insert((meta.dev(), meta.ino()))
    }

    /// `path` as seen from the scanned root: `/usr/lib/...` on a host whatever the
    /// root, so a test's tempdir never shows.
    pub fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(inside) => Path::new("/").join(inside).to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }

    /// A directory's entry names, sorted, within the scan's entry budget. A
    /// directory that is missing is empty; one that cannot be read is a problem.
    pub fn list(&mut self, dir: &Path) -> Vec<OsString> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Vec::new()
            }
            Err(e) => {
                self.problem(dir, format!("cannot list: {e}"));
                return Vec::new();
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            if self.entries >= self.limits.max_entries {
                self.found.skipped += 1;
                break;
            }
            self.entries += 1;
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(e) => {
                    self.problem(dir, format!("cannot list: {e}"));
                    break;
                }
            }
        }
        names.sort();
        names
    }

    /// The directories matching `pattern` (see [`SITE_DIRS`]) under the root, each
    /// once even when reached through a symlink.
    pub fn expand(&mut self, pattern: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone()];
        for component in pattern.split('/') {
            let mut next = Vec::new();
            for dir in dirs {
                match component.strip_suffix('*') {
                    None => next.push(dir.join(component)),
                    Some(prefix) => {
                        for name in self.list(&dir) {
                            let text = name.to_string_lossy();
                            if text.starts_with(prefix) && !text.starts_with('.') {
                                next.push(dir.join(&name));
                            }
                        }
                    }
                }
            }
            dirs = next;
        }
        dirs.retain(|dir| match fs::metadata(dir) {
            Ok(meta) => meta.is_dir() && self.first_visit(&meta),
            Err(_) => false,
        });
        dirs
    }

    /// Adds a package found at `path` (as [`Scan::shown`] gives it).
    pub fn push(&mut self, kind: PackageType, name: &str, version: &str, path: String) {
        self.found.packages.push(Package {
            kind,
            name: name.to_owned(),
            version: version.to_owned(),
            architecture: String::new(),
            source: String::new(),
            source_version: String::new(),
            path,
        });
    }
}

/// Opens a regular file for reading, capped at `max_bytes`. A FIFO or a device named
/// like a metadata file would block or never end: refused before it is opened.
pub(crate) fn open_capped(path: &Path, max_bytes: u64) -> Result<io::Take<File>, String> {
    match open_regular(path) {
        Ok(file) => Ok(file.take(max_bytes)),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(NOT_REGULAR.into()),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

const NOT_REGULAR: &str = "not a regular file";

/// Opens a file others may control (a user's site directory, a path a process holds)
/// without side effects: the path is first opened with `O_PATH`, which runs no driver's
/// open (a symlink to `/dev/watchdog` must not arm it), checked as a regular file on
/// that descriptor, and only then opened for reading through it, non-blocking (a FIFO
/// swapped in cannot hang the plugin) and as the same inode (no swap after the check).
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let handle = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let stat = rustix::fs::fstat(&handle)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, NOT_REGULAR));
    }
    let flags = OFlags::NONBLOCK | OFlags::NOCTTY;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Longest name or version kept: anything longer is junk, not a package.
const MAX_FIELD_LEN: usize = 256;

/// `text` if it can be a package's name or version: not empty, not too long, no
/// control characters (binary junk, a header run into the next one).
pub(crate) fn plausible<'t>(what: &str, text: &'t str) -> Result<&'t str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty {what}"));
    }
    if text.len() > MAX_FIELD_LEN {
        return Err(format!("{what} longer than {MAX_FIELD_LEN} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} has control characters"));
    }
    Ok(text)
}

/// The Python distributions under `root` (`/` on a host).
pub fn python(root: &Path, limits: &Limits) -> Found {
    let mut scan = Scan::new(root, limits);
    for pattern in SITE_DIRS {
        for site in scan.expand(pattern) {
            scan_site(&mut scan, &site);
        }
    }
    scan.found
}

fn scan_site(scan: &mut Scan, site: &Path) {
    for name in scan.list(site) {
        let text = name.to_string_lossy();
        let path = site.join(&name);
        let metadata = if text.ends_with(".dist-info") {
            path.join("METADATA")
        } else if text.ends_with(".egg-info") {
            // distutils wrote the PKG-INFO itself as `name-1.0.egg-info`; setuptools a
            // directory holding it.
            if path.is_dir() {
                path.join("PKG-INFO")
            } else {
                path
            }
        } else if text.ends_with(".egg") && path.is_dir() {
            path.join("EGG-INFO").join("PKG-INFO")
        } else {
            continue;
        };
        if !scan.take_file() {
            continue;
        }
        match read_metadata(&metadata, scan.limits.max_file_bytes) {
            Ok((name, version)) => {
                scan.push(PackageType::Python, &name, &version, scan.shown(site))
            }
            Err(reason) => scan.problem(&metadata, reason),
        }
    }
}

/// `Name:` and `Version:` from the headers of a core metadata file (RFC 822 style,
/// ended by the first empty line; the description after it can be long and is not
/// read).
fn read_metadata(path: &Path, max_bytes: u64) -> Result<(String, String), String> {
    let mut reader = BufReader::new(open_capped(path, max_bytes)?);
    let (mut name, mut version) = (None, None);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read: {e}"))?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if read == 0 || text.is_empty() {
            break;
        }
        if let Some(value) = text.strip_prefix(b"Name:") {
            name.get_or_insert(value.to_vec());
        } else if let Some(value) = text.strip_prefix(b"Version:") {
            version.get_or_insert(value.to_vec());
        }
        if name.is_some() && version.is_some() {
            break;
        }
    }
    let field = |what: &str, value: Option<Vec<u8>>| -> Result<String, String> {
        let value = value.ok_or_else(|| {
            if reader.get_ref().limit() == 0 {
                format!("no {what} in the first {max_bytes} bytes")
            } else {
                format!("no {what} header")
            }
        })?;
        let text = std::str::from_utf8(&value).map_err(|_| format!("{what} is not UTF-8"))?;
        plausible(what, text).map(str::to_owned)
    };
    Ok((field("Name", name)?, field("Version", version)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_symlinks_to_them_are_never_opened_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("METADATA");
        std::fs::write(&file, "Name: x\n").unwrap();
        assert!(open_regular(&file).is_ok());
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR,
            0,
        )
        .unwrap();
        let device = dir.path().join("device");
        std::os::unix::fs::symlink("/dev/null", &device).unwrap();
        for path in [&fifo, &device] {
            let err = open_regular(path).unwrap_err();
            assert!(
                err.to_string().contains("not a regular file"),
                "{}: {err}",
                path.display()
            );
        }
    }

    fn write(path: &Path, content: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn metadata(name: &str, version: &str) -> String {
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nlong text\nName: wrong\n")
    }

    fn names(found: &Found) -> Vec<(String, String, String)> {
        let mut all: Vec<_> = found
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.version.clone(), p.path.clone()))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn dist_info_and_both_egg_info_forms_in_the_site_directories() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let debian = r.join("usr/lib/python3/dist-packages");
        write(
            &debian.join("PyYAML-6.0.dist-info/METADATA"),
            metadata("PyYAML", "6.0").as_bytes(),
        );
        write(
            &debian.join("six-1.16.0.egg-info/PKG-INFO"),
            metadata("six", "1.16.0").as_bytes(),
        );
        write(
            &debian.join("distro_info-1.5.egg-info"),
            metadata("distro-info", "1.5").as_bytes(),
        );
        let local = r.join("usr/local/lib/python3.11/site-packages");
        write(
            &local.join("zope.interface-6.0.dist-info/METADATA"),
            b"Name: zope.interface\r\nVersion: 6.0\r\n\r\n",
        );
        let venv = r.join("opt/app/lib/python3.11/site-packages");
        write(
            &venv.join("requests-2.31.0.dist-info/METADATA"),
            metadata("requests", "2.31.0").as_bytes(),
        );
        write(&venv.join("requests/__init__.py"), b"");
        write(
            &venv.join("old-0.1-py3.11.egg/EGG-INFO/PKG-INFO"),
            metadata("old", "0.1").as_bytes(),
        );
        // Not a site directory: not read.
        write(
            &r.join("srv/x/lib/python3.11/site-packages/a-1.dist-info/METADATA"),
            metadata("a", "1").as_bytes(),
        );

        let found = python(r, &Limits::default());
        assert_eq!(found.problems, Vec::new());
        let debian = "/usr/lib/python3/dist-packages".to_owned();
        let local = "/usr/local/lib/python3.11/site-packages".to_owned();
        let venv = "/opt/app/lib/python3.11/site-packages".to_owned();
        assert_eq!(
            names(&found),
            vec![
                ("PyYAML".into(), "6.0".into(), debian.clone()),
                ("distro-info".into(), "1.5".into(), debian.clone()),
                ("old".into(), "0.1".into(), venv.clone()),
                ("requests".into(), "2.31.0".into(), venv),
                ("six".into(), "1.16.0".into(), debian),
                ("zope.interface".into(), "6.0".into(), local),
            ]
        );
        assert!(found.packages.iter().all(|p| p.kind == PackageType::Python));
    }

    #[test]
    fn junk_missing_and_oversized_metadata_are_problems_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let site = root.path().join("usr/lib/python3/dist-packages");
        write(
            &site.join("good-1.dist-info/METADATA"),
            metadata("good", "1").as_bytes(),
        );
        write(
            &site.join("junk-1.dist-info/METADATA"),
            b"Name: \xff\xfe\x00junk\nVersion: 1\n\n",
        );
        write(
            &site.join("ctl-1.dist-info/METADATA"),
            b"Name: a\x01b\nVersion: 1\n",
        );
        write(&site.join("nover-1.dist-info/METADATA"), b"Name: nover\n\n");
        fs::create_dir_all(site.join("nofile-1.dist-info")).unwrap();
        // A header that never ends: read to the cap, not to the end.
        let mut huge = b"Name: huge\nX: ".to_vec();
        huge.resize(8 << 20, b'a');
        write(&site.join("huge-1.dist-info/METADATA"), &huge);

        let found = python(root.path(), &Limits::default());
        assert_eq!(names(&found).len(), 1, "{:?}", found.packages);
        let reasons: Vec<String> = found
            .problems
            .iter()
            .map(|(path, reason)| format!("{} {reason}", path.display()))
            .collect();
        let dir = "/usr/lib/python3/dist-packages";
        for expected in [
            format!("{dir}/junk-1.dist-info/METADATA Name is not UTF-8"),
            format!("{dir}/ctl-1.dist-info/METADATA Name has control characters"),
            format!("{dir}/nover-1.dist-info/METADATA no Version header"),
            format!("{dir}/huge-1.dist-info/METADATA no Version in the first 4194304 bytes"),
        ] {
            assert!(
                reasons.contains(&expected),
                "{expected} not in {reasons:#?}"
            );
        }
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("nofile-1.dist-info/METADATA cannot read")),
            "{reasons:#?}"
        );
        assert_eq!(found.problems_total, 5);
    }

    #[test]
    fn bounds_count_what_they_leave_unread() {
        let root = tempfile::tempdir().unwrap();
        let site = root.path().join("usr/lib/python3/dist-packages");
        for i in 0..10 {
            let name = format!("p{i}");
            write(
                &site.join(format!("{name}-1.dist-info/METADATA")),
                metadata(&name, "1").as_bytes(),
            );
        }
        let limits = Limits {
            max_files: 4,
            ..Limits::default()
        };
        let found = python(root.path(), &limits);
        assert_eq!((found.packages.len(), found.skipped), (4, 6));

        let limits = Limits {
            max_problems: 1,
            ..Limits::default()
        };
        for i in 0..3 {
            write(&site.join(format!("bad{i}-1.dist-info/METADATA")), b"\n");
        }
        let found = python(root.path(), &limits);
        assert_eq!((found.problems.len(), found.problems_total), (1, 3));
    }

    #[test]
    fn a_site_directory_reached_twice_is_read_once() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            &r.join("usr/lib/python3.11/site-packages/a-1.dist-info/METADATA"),
            metadata("a", "1").as_bytes(),
        );
        std::os::unix::fs::symlink("lib", r.join("usr/lib64")).unwrap();
        let found = python(r, &Limits::default());
        assert_eq!(found.packages.len(), 1, "{:?}", found.packages);
    }
}
