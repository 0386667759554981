//! rpm's database read without rpm, checked against rpm itself: packages built with
//! `rpmbuild` and registered with `rpm -i --justdb` (sqlite, rpm's default backend), the
//! same header blobs written as a Berkeley DB hash file by `db5.3_load` (read back by
//! rpm's own `bdb_ro` backend for the comparison) and as an ndb file (Debian's rpm is built
//! without ndb, so the test writes rpm's documented layout itself).
//!
//! Needs the Debian packages `rpm` (rpm, rpmbuild) and `db5.3-util` (db5.3_load); without
//! them the tests say so and pass, except under CI where they fail.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

// The module is compiled into this test directly: the crate is a binary.
#[allow(dead_code)]
#[path = "../src/rpm/mod.rs"]
mod rpm;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use hids_types::package::PackageType;
use rpm::{read_installed, RpmError, RpmLimits};
use tempfile::TempDir;

/// Whether `tool` runs; when not, says why, and fails under CI.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let why = format!("{tool} not found (Debian packages rpm, db5.3-util)");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
    }
    found
}

fn have_all() -> bool {
    have("rpm") && have("rpmbuild") && have("db5.3_load")
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Specs of the packages built once per test run: one with an epoch, one noarch, a
/// subpackage named unlike its source, and one with many files (a header of ~30 kB,
/// several pages in any format).
const SPECS: &[(&str, &str)] = &[
    (
        "hello-epoch",
        "Name: hello-epoch\nVersion: 1.2.3\nRelease: 4.el9\nEpoch: 2\nSummary: t\nLicense: MIT\n\
         %description\nt\n%files\n",
    ),
    (
        "noarch-thing",
        "Name: noarch-thing\nVersion: 0.9\nRelease: 1\nBuildArch: noarch\nSummary: t\nLicense: MIT\n\
         %description\nt\n%files\n",
    ),
    (
        "srcpkg",
        "Name: srcpkg\nVersion: 3.0\nRelease: 7.fc40\nSummary: t\nLicense: MIT\n%description\nt\n\
         %package -n libother\nSummary: t\n%description -n libother\nt\n%files -n libother\n",
    ),
    (
        "many-files",
        "Name: many-files\nVersion: 1.0\nRelease: 1\nEpoch: 1\nSummary: t\nLicense: MIT\n%description\nt\n\
         %install\nmkdir -p %{buildroot}/usr/share/many\n\
         for i in $(seq 1 400); do echo $i > %{buildroot}/usr/share/many/file-number-$i; done\n\
         %files\n/usr/share/many\n",
    ),
];

/// The built `.rpm` files; built once, kept for the whole test run.
fn built_rpms() -> &'static [PathBuf] {
    static RPMS: OnceLock<(TempDir, Vec<PathBuf>)> = OnceLock::new();
    let (_, rpms) = RPMS.get_or_init(|| {
        let top = tempfile::tempdir().unwrap();
        let specs = top.path().join("SPECS");
        fs::create_dir_all(&specs).unwrap();
        for (name, spec) in SPECS {
            let spec_path = specs.join(format!("{name}.spec"));
            fs::write(&spec_path, spec).unwrap();
            run(Command::new("rpmbuild")
                .arg("--define")
                .arg(format!("_topdir {}", top.path().display()))
                .arg("--quiet")
                .arg("-bb")
                .arg(&spec_path));
        }
        let mut rpms = Vec::new();
        for arch in fs::read_dir(top.path().join("RPMS")).unwrap() {
            for rpm in fs::read_dir(arch.unwrap().path()).unwrap() {
                rpms.push(rpm.unwrap().path());
            }
        }
        rpms.sort();
        assert_eq!(rpms.len(), 4, "{rpms:?}");
        (top, rpms)
    });
    rpms
}

/// A root with `var/lib/rpm` holding an rpm sqlite database of the built packages.
fn sqlite_root() -> (TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("var/lib/rpm");
    fs::create_dir_all(&db).unwrap();
    run(Command::new("rpm").arg("--dbpath").arg(&db).arg("--initdb"));
    run(Command::new("rpm")
        .arg("--dbpath")
        .arg(&db)
        .args(["-i", "--justdb", "--nodeps", "--noscripts", "--quiet"])
        .args(built_rpms()));
    (root, db)
}

const QUERY_FORMAT: &str = "%{NAME}\t%{EPOCH}\t%{VERSION}-%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\n";

/// `rpm -qa` of a database directory, as (name, [epoch:]version-release, arch, sourcerpm).
fn rpm_qa(db: &Path, backend: &str) -> BTreeSet<(String, String, String, String)> {
    let out = run(Command::new("rpm")
        .arg("--define")
        .arg(format!("_db_backend {backend}"))
        .arg("--dbpath")
        .arg(db)
        .args(["-qa", "--qf", QUERY_FORMAT]));
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let epoch = if fields[1] == "(none)" {
                String::new()
            } else {
                format!("{}:", fields[1])
            };
            (
                fields[0].into(),
                format!("{epoch}{}", fields[2]),
                fields[3].into(),
                fields[4].into(),
            )
        })
        .collect()
}

/// What we read, in the same shape: the src.rpm name is rebuilt from the source fields,
/// which checks their split (the epoch is not in the file name).
fn ours(packages: &[hids_types::package::Package]) -> BTreeSet<(String, String, String, String)> {
    packages
        .iter()
        .map(|package| {
            assert_eq!(package.kind, PackageType::Rpm);
            assert!(package.path.is_empty());
            let source_version = package.source_version();
            let without_epoch = source_version
                .split_once(':')
                .map_or(source_version, |(_, rest)| rest);
            let source_rpm = format!("{}-{without_epoch}.src.rpm", package.source_name());
            (
                package.name.clone(),
                package.version.clone(),
                package.architecture.clone(),
                source_rpm,
            )
        })
        .collect()
}

/// The header blobs of an rpm sqlite database, by package number, read from a copy.
fn header_blobs(db: &Path) -> Vec<(u32, Vec<u8>)> {
    let scratch = tempfile::tempdir().unwrap();
    for name in ["rpmdb.sqlite", "rpmdb.sqlite-wal"] {
        if db.join(name).exists() {
            fs::copy(db.join(name), scratch.path().join(name)).unwrap();
        }
    }
    let connection = rusqlite::Connection::open(scratch.path().join("rpmdb.sqlite")).unwrap();
    let mut statement = connection
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .unwrap();
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Writes a Berkeley DB hash `Packages` with db5.3_load, as rpm's BDB backend keeps it:
/// 4-byte package numbers (host order) to header blobs, and key 0 to the next number.
fn write_bdb(dir: &Path, blobs: &[(u32, Vec<u8>)], page_size: u32) {
    fn escaped(bytes: &[u8]) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 3);
        for &byte in bytes {
            out.push('\\');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }
    let next = blobs
        .iter()
        .map(|(number, _)| number + 1)
        .max()
        .unwrap_or(1);
    let mut input = format!(
        "{}\n{}\n",
        escaped(&0u32.to_ne_bytes()),
        escaped(&next.to_ne_bytes())
    );
    for (number, blob) in blobs {
        input.push_str(&format!(
            "{}\n{}\n",
            escaped(&number.to_ne_bytes()),
            escaped(blob)
        ));
    }
    fs::create_dir_all(dir).unwrap();
    let mut child = Command::new("db5.3_load")
        .args(["-T", "-t", "hash", "-c"])
        .arg(format!("db_pagesize={page_size}"))
        .arg(dir.join("Packages"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut low, mut high) = (1u64, 0u64);
    for &byte in bytes {
        low = (low + u64::from(byte)) % 65521;
        high = (high + low) % 65521;
    }
    ((high << 16) | low) as u32
}

/// Writes an ndb `Packages.db` in rpm's layout (lib/backend/ndb/rpmpkg.c): a 32-byte
/// header and slots in 4 kB slot pages, then one 16-byte-aligned blob per package with
/// head, padding and adler32 tail.
fn write_ndb(path: &Path, blobs: &[(u32, Vec<u8>)]) {
    let slot_pages = 1 + (blobs.len() + 2) / 256;
    let mut file = vec![0u8; slot_pages * 4096];
    file[0..4].copy_from_slice(b"RpmP");
    file[4..8].copy_from_slice(&0u32.to_le_bytes()); // version
    file[8..12].copy_from_slice(&1u32.to_le_bytes()); // generation
    file[12..16].copy_from_slice(&(slot_pages as u32).to_le_bytes());
    let next = blobs
        .iter()
        .map(|(number, _)| number + 1)
        .max()
        .unwrap_or(1);
    file[16..20].copy_from_slice(&next.to_le_bytes());
    for slot in (32..file.len()).step_by(16) {
        file[slot..slot + 4].copy_from_slice(b"Slot");
    }
    for (i, (number, blob)) in blobs.iter().enumerate() {
        let block_count = (16 + blob.len() + 12).div_ceil(16);
        let block_offset = file.len() / 16;
        let mut block = Vec::new();
        block.extend_from_slice(b"BlbS");
        block.extend_from_slice(&number.to_le_bytes());
        block.extend_from_slice(&1_700_000_000u32.to_le_bytes()); // timestamp
        block.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        block.extend_from_slice(blob);
        block.resize(block_count * 16 - 12, 0);
        let sum = adler32(&block);
        block.extend_from_slice(&sum.to_le_bytes());
        block.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        block.extend_from_slice(b"BlbE");
        file.extend_from_slice(&block);
        let slot = 32 + 16 * i;
        file[slot + 4..slot + 8].copy_from_slice(&number.to_le_bytes());
        file[slot + 8..slot + 12].copy_from_slice(&(block_offset as u32).to_le_bytes());
        file[slot + 12..slot + 16].copy_from_slice(&(block_count as u32).to_le_bytes());
    }
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, file).unwrap();
}

/// The inventory under `root`, which must have a database.
fn read_root(root: &Path) -> rpm::RpmInventory {
    read_installed(root, &RpmLimits::default())
        .unwrap()
        .unwrap()
}

/// (name, size, inode, mtime) of every entry of a directory.
fn snapshot(dir: &Path) -> BTreeSet<(String, u64, u64, i64, i64)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                meta.len(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec(),
            )
        })
        .collect()
}

#[test]
fn sqlite_database_reads_as_rpm_lists_it() {
    if !have_all() {
        return;
    }
    let (root, db) = sqlite_root();
    let inventory = read_root(root.path());
    assert_eq!(inventory.format, "sqlite");
    assert_eq!(inventory.path, db.join("rpmdb.sqlite"));
    assert_eq!(inventory.skipped, 0);
    assert_eq!(ours(&inventory.packages), rpm_qa(&db, "sqlite"));
    let by_name = |name: &str| inventory.packages.iter().find(|p| p.name == name).unwrap();
    let epoch = by_name("hello-epoch");
    assert_eq!(epoch.version, "2:1.2.3-4.el9");
    assert_eq!(
        (epoch.source_name(), epoch.source_version()),
        ("hello-epoch", "2:1.2.3-4.el9")
    );
    assert_eq!(by_name("noarch-thing").architecture, "noarch");
    let sub = by_name("libother");
    assert_eq!(
        (sub.source.as_str(), sub.source_version()),
        ("srcpkg", "3.0-7.fc40")
    );
}

/// The regression this module exists for: reading must leave rpm's directory exactly as
/// it was (no -shm/-wal/-journal/lock created, no mtime moved) and rpm working.
#[test]
fn reading_leaves_rpms_directory_untouched() {
    if !have_all() {
        return;
    }
    let (root, db) = sqlite_root();
    let expected = rpm_qa(&db, "sqlite");
    let before = snapshot(&db);
    for _ in 0..3 {
        read_root(root.path());
    }
    assert_eq!(snapshot(&db), before);
    assert_eq!(rpm_qa(&db, "sqlite"), expected);
    // And rpm can still write: a lock or a journal left behind would break this.
    run(Command::new("rpm").arg("--dbpath").arg(&db).args([
        "-e",
        "--justdb",
        "--nodeps",
        "noarch-thing",
    ]));
    assert_eq!(rpm_qa(&db, "sqlite").len(), expected.len() - 1);
}

/// A transaction committed to the WAL but not checkpointed into the database file (rpm
/// still running, or killed) is seen, and the live WAL and -shm are left alone.
#[test]
fn committed_wal_content_is_read() {
    if !have_all() {
        return;
    }
    let (root, db) = sqlite_root();
    let count = rpm_qa(&db, "sqlite").len();
    let blob = header_blobs(&db).remove(0).1;
    let writer = rusqlite::Connection::open(db.join("rpmdb.sqlite")).unwrap();
    writer.pragma_update(None, "journal_mode", "WAL").unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute("INSERT INTO Packages (blob) VALUES (?1)", [&blob])
        .unwrap();
    let wal_len = fs::metadata(db.join("rpmdb.sqlite-wal")).unwrap().len();
    assert!(wal_len > 0, "the insert is in the WAL");
    let before = snapshot(&db);
    let inventory = read_root(root.path());
    assert_eq!(inventory.packages.len(), count + 1);
    assert_eq!(snapshot(&db), before);
    drop(writer);
}

#[test]
fn bdb_hash_file_reads_as_rpm_lists_it() {
    if !have_all() {
        return;
    }
    let (_sqlite, sqlite_db) = sqlite_root();
    let blobs = header_blobs(&sqlite_db);
    // 512: every header spans overflow chains; 65536: small headers are stored inline.
    for page_size in [512, 4096, 65536] {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("var/lib/rpm");
        write_bdb(&db, &blobs, page_size);
        let inventory = read_root(root.path());
        assert_eq!(inventory.format, "bdb");
        assert_eq!(inventory.skipped, 0, "page size {page_size}");
        assert_eq!(
            ours(&inventory.packages),
            rpm_qa(&db, "bdb_ro"),
            "page size {page_size}"
        );
        assert_eq!(ours(&inventory.packages), rpm_qa(&sqlite_db, "sqlite"));
    }
}

#[test]
fn ndb_file_reads_as_rpm_lists_it() {
    if !have_all() {
        return;
    }
    let (_sqlite, sqlite_db) = sqlite_root();
    let root = tempfile::tempdir().unwrap();
    // openSUSE's layout: the database under /usr/lib/sysimage/rpm, /var/lib/rpm a symlink.
    write_ndb(
        &root.path().join("usr/lib/sysimage/rpm/Packages.db"),
        &header_blobs(&sqlite_db),
    );
    fs::create_dir_all(root.path().join("var/lib")).unwrap();
    std::os::unix::fs::symlink(
        "../../usr/lib/sysimage/rpm",
        root.path().join("var/lib/rpm"),
    )
    .unwrap();
    let inventory = read_root(root.path());
    assert_eq!(inventory.format, "ndb");
    assert_eq!(inventory.skipped, 0);
    assert_eq!(ours(&inventory.packages), rpm_qa(&sqlite_db, "sqlite"));
}

#[test]
fn empty_databases_have_no_packages() {
    if !have_all() {
        return;
    }
    let sqlite = tempfile::tempdir().unwrap();
    let db = sqlite.path().join("var/lib/rpm");
    fs::create_dir_all(&db).unwrap();
    run(Command::new("rpm").arg("--dbpath").arg(&db).arg("--initdb"));
    let ndb = tempfile::tempdir().unwrap();
    write_ndb(&ndb.path().join("var/lib/rpm/Packages.db"), &[]);
    let bdb = tempfile::tempdir().unwrap();
    write_bdb(&bdb.path().join("var/lib/rpm"), &[], 4096);
    for (root, format) in [(&sqlite, "sqlite"), (&ndb, "ndb"), (&bdb, "bdb")] {
        let inventory = read_root(root.path());
        let read = (
            inventory.format,
            inventory.packages.len(),
            inventory.skipped,
        );
        assert_eq!(read, (format, 0, 0));
    }
}

/// An imported signing key is listed by `rpm -qa` as package `gpg-pubkey` (no arch, no
/// SOURCERPM); it is not software, so it is left out, and not counted as skipped.
#[test]
fn gpg_pubkeys_are_left_out() {
    if !have_all() || !have("gpg") {
        return;
    }
    let (root, db) = sqlite_root();
    let home = tempfile::tempdir().unwrap();
    let gpg = || {
        let mut command = Command::new("gpg");
        command
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--passphrase", ""]);
        command
    };
    run(gpg().args([
        "--quick-gen-key",
        "Test Key <test@example.com>",
        "ed25519",
        "sign",
        "never",
    ]));
    let key = run(gpg().args(["--armor", "--export", "test@example.com"]));
    // gpg started an agent for this home: stop it, it is ours.
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home.path())
        .args(["--kill", "gpg-agent"])
        .status();
    let key_file = home.path().join("key.asc");
    fs::write(&key_file, key).unwrap();
    run(Command::new("rpm")
        .arg("--dbpath")
        .arg(&db)
        .arg("--import")
        .arg(&key_file));
    let listed = rpm_qa(&db, "sqlite");
    assert!(
        listed.iter().any(|(name, ..)| name == "gpg-pubkey"),
        "{listed:?}"
    );

    let inventory = read_root(root.path());
    assert_eq!(inventory.skipped, 0);
    assert!(inventory
        .packages
        .iter()
        .all(|package| package.name != "gpg-pubkey"));
    assert_eq!(inventory.packages.len(), listed.len() - 1);
}

#[test]
fn a_missing_database_is_none() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("var/lib/rpm")).unwrap();
    assert!(read_installed(root.path(), &RpmLimits::default())
        .unwrap()
        .is_none());
}

/// A database cut short: an error naming the file, or headers counted skipped; never a
/// panic, never a list that looks complete.
#[test]
fn truncated_databases_are_errors() {
    if !have_all() {
        return;
    }
    let (sqlite, sqlite_db) = sqlite_root();
    let blobs = header_blobs(&sqlite_db);
    let count = blobs.len();
    let truncate = |path: &Path, keep: u64| {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(keep)
            .unwrap()
    };

    let db_file = sqlite_db.join("rpmdb.sqlite");
    for name in ["rpmdb.sqlite-wal", "rpmdb.sqlite-shm"] {
        let _ = fs::remove_file(sqlite_db.join(name));
    }
    let len = fs::metadata(&db_file).unwrap().len();
    truncate(&db_file, len / 2);
    match read_installed(sqlite.path(), &RpmLimits::default()) {
        Err(error) => assert!(error.to_string().contains("rpmdb.sqlite"), "{error}"),
        Ok(inventory) => panic!(
            "truncated sqlite read as {:?}",
            inventory.map(|i| i.packages.len())
        ),
    }

    let root = tempfile::tempdir().unwrap();
    let ndb = root.path().join("var/lib/rpm/Packages.db");
    write_ndb(&ndb, &blobs);
    let len = fs::metadata(&ndb).unwrap().len();
    truncate(&ndb, len - 100);
    assert!(matches!(
        read_installed(root.path(), &RpmLimits::default()),
        Err(RpmError::Corrupt { .. })
    ));
    truncate(&ndb, 100);
    assert!(matches!(
        read_installed(root.path(), &RpmLimits::default()),
        Err(RpmError::Corrupt { .. })
    ));

    let root = tempfile::tempdir().unwrap();
    let bdb = root.path().join("var/lib/rpm");
    write_bdb(&bdb, &blobs, 512);
    let len = fs::metadata(bdb.join("Packages")).unwrap().len();
    truncate(&bdb.join("Packages"), len - 512);
    assert!(matches!(
        read_installed(root.path(), &RpmLimits::default()),
        Err(RpmError::Corrupt { .. })
    ));
    assert!(count > 0);
}

/// Damaged bytes inside headers: counted in `skipped`, never a panic; the rest is read.
#[test]
fn damaged_headers_are_counted_not_fatal() {
    if !have_all() {
        return;
    }
    let (_sqlite, sqlite_db) = sqlite_root();
    let mut blobs = header_blobs(&sqlite_db);
    // A header whose il says it is far longer than it is.
    blobs[0].1[0..4].copy_from_slice(&60_000u32.to_be_bytes());
    let root = tempfile::tempdir().unwrap();
    write_ndb(&root.path().join("var/lib/rpm/Packages.db"), &blobs);
    let inventory = read_root(root.path());
    assert_eq!(
        (inventory.packages.len(), inventory.skipped),
        (blobs.len() - 1, 1)
    );

    // Over the header limit: counted, not loaded.
    let limits = RpmLimits {
        max_header_bytes: 4096,
        ..RpmLimits::default()
    };
    let (root, _) = sqlite_root();
    let inventory = read_installed(root.path(), &limits).unwrap().unwrap();
    assert_eq!(inventory.skipped, 1, "the many-files header is over 4 kB");
    let root = tempfile::tempdir().unwrap();
    write_bdb(
        &root.path().join("var/lib/rpm"),
        &header_blobs(&sqlite_db),
        512,
    );
    assert_eq!(
        read_installed(root.path(), &limits)
            .unwrap()
            .unwrap()
            .skipped,
        1
    );

    // Over the package or size limits: refused whole.
    let few = RpmLimits {
        max_packages: 2,
        ..RpmLimits::default()
    };
    assert!(matches!(
        read_installed(root.path(), &few),
        Err(RpmError::TooMany { .. })
    ));
    let small = RpmLimits {
        max_db_bytes: 1024,
        ..RpmLimits::default()
    };
    assert!(matches!(
        read_installed(root.path(), &small),
        Err(RpmError::TooLarge { .. })
    ));
}

/// ~3,000 packages of a realistic header size (the 400-file header, ~55 kB: Fedora's
/// average is 20-40 kB), in each format; prints the time. The target is well under a
/// second. A benchmark, so run by hand, optimized and alone:
/// `flock /tmp/bench.lock cargo test --release -p hids-plugin-inventory --test rpm -- --ignored three_thousand --nocapture`
#[test]
#[ignore]
fn three_thousand_packages_read_quickly() {
    if !have_all() {
        return;
    }
    let (_sqlite, sqlite_db) = sqlite_root();
    let big = header_blobs(&sqlite_db)
        .into_iter()
        .map(|(_, blob)| blob)
        .max_by_key(Vec::len)
        .unwrap();
    let blobs: Vec<(u32, Vec<u8>)> = (1..=3000).map(|number| (number, big.clone())).collect();

    let sqlite = tempfile::tempdir().unwrap();
    let db = sqlite.path().join("var/lib/rpm");
    fs::create_dir_all(&db).unwrap();
    let connection = rusqlite::Connection::open(db.join("rpmdb.sqlite")).unwrap();
    connection
        .execute_batch("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL); BEGIN;")
        .unwrap();
    for (number, blob) in &blobs {
        connection
            .execute(
                "INSERT INTO Packages VALUES (?1, ?2)",
                rusqlite::params![number, blob],
            )
            .unwrap();
    }
    connection.execute_batch("COMMIT").unwrap();
    drop(connection);

    let ndb = tempfile::tempdir().unwrap();
    write_ndb(&ndb.path().join("var/lib/rpm/Packages.db"), &blobs);
    let bdb = tempfile::tempdir().unwrap();
    write_bdb(&bdb.path().join("var/lib/rpm"), &blobs, 4096);

    for root in [&sqlite, &ndb, &bdb] {
        let started = Instant::now();
        let inventory = read_root(root.path());
        let elapsed = started.elapsed();
        let bytes = fs::metadata(&inventory.path).unwrap().len();
        eprintln!(
            "{}: {} packages ({} header bytes each, file {bytes} bytes) in {elapsed:?}",
            inventory.format,
            inventory.packages.len(),
            big.len()
        );
        assert_eq!((inventory.packages.len(), inventory.skipped), (3000, 0));
        assert!(elapsed.as_secs_f64() < 1.0, "{elapsed:?}");
    }
}

/// Reads the database under `$HIDS_RPM_ROOT` (a real host's root, or a directory holding
/// a sample `var/lib/rpm`) and prints what was found: for checking against real databases
/// by hand, `HIDS_RPM_ROOT=/ cargo test -p hids-plugin-inventory --test rpm -- --ignored`.
#[test]
#[ignore]
fn reads_the_database_named_by_env() {
    let Some(root) = std::env::var_os("HIDS_RPM_ROOT") else {
        eprintln!("HIDS_RPM_ROOT not set");
        return;
    };
    let started = Instant::now();
    match read_installed(Path::new(&root), &RpmLimits::default()) {
        Ok(Some(inventory)) => {
            let elapsed = started.elapsed();
            let mut lines: Vec<String> = inventory
                .packages
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {} {} {}",
                        p.name,
                        p.version,
                        p.architecture,
                        p.source_name(),
                        p.source_version()
                    )
                })
                .collect();
            lines.sort();
            for line in &lines {
                println!("{line}");
            }
            eprintln!(
                "{} {}: {} packages, {} skipped, in {elapsed:?}",
                inventory.format,
                inventory.path.display(),
                inventory.packages.len(),
                inventory.skipped
            );
        }
        Ok(None) => eprintln!("no rpm database"),
        Err(error) => panic!("{error}"),
    }
}
