//! npm packages: `package.json` of each package directory (`name/`, `@scope/name/`)
//! of the global `node_modules` prefixes, Debian's `/usr/share/nodejs`, applications
//! under `/opt/*` and `/srv/*` ([`MODULE_DIRS`]), and of the `node_modules` nested in
//! those packages to [`Limits::max_depth`].
//!
//! The name is `package.json`'s `name` (scoped: `@types/node`), the version its
//! `version`; the path is the package's directory, so two copies of one package in
//! different places are two lines. Symlinks are followed (pnpm and `npm link` are made
//! of them) but every directory is visited once, so a link back up the tree ends there.
//!
//! Not read: lock files (what was asked for, not what is installed), `node_modules` of
//! projects in home directories, and bundled JavaScript with no `package.json`.

use std::fs;
use std::io::BufReader;
use std::path::Path;

use hids_types::package::PackageType;
use serde::Deserialize;

use crate::python::{open_capped, plausible, Found, Limits, Scan};

/// Directories laid out as `node_modules`, relative to the scanned root; `*` as in
/// [`crate::python::SITE_DIRS`].
pub const MODULE_DIRS: &[&str] = &[
    "usr/lib/node_modules",
    "usr/local/lib/node_modules",
    "usr/share/nodejs",
    "usr/lib/nodejs",
    "opt/*/node_modules",
    "opt/*/lib/node_modules",
    "srv/*/node_modules",
];

/// The npm packages under `root` (`/` on a host).
pub fn npm(root: &Path, limits: &Limits) -> Found {
    let mut scan = Scan::new(root, limits);
    for pattern in MODULE_DIRS {
        for dir in scan.expand(pattern) {
            walk_modules(&mut scan, &dir, 0);
        }
    }
    scan.found
}

/// One `node_modules`: its packages and, through them, the `node_modules` they hold.
fn walk_modules(scan: &mut Scan, dir: &Path, depth: u32) {
    for name in scan.list(dir) {
        let text = name.to_string_lossy();
        // `.bin`, `.package-lock.json`, pnpm's `.pnpm` store (reached through the
        // links that point into it).
        if text.starts_with('.') {
            continue;
        }
        let path = dir.join(&name);
        if text.starts_with('@') {
            for scoped in scan.list(&path) {
                package_dir(scan, &path.join(scoped), depth);
            }
        } else {
            package_dir(scan, &path, depth);
        }
    }
}

fn package_dir(scan: &mut Scan, dir: &Path, depth: u32) {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() && scan.first_visit(&meta) => {}
        _ => return,
    }
    let manifest = dir.join("package.json");
    if fs::symlink_metadata(&manifest).is_ok() && scan.take_file() {
        match read_manifest(&manifest, scan.limits.max_file_bytes) {
            Ok((name, version)) => scan.push(PackageType::Npm, &name, &version, scan.shown(dir)),
            Err(reason) => scan.problem(&manifest, reason),
        }
    }
    let nested = dir.join("node_modules");
    if !nested.is_dir() {
        return;
    }
    if depth >= scan.limits.max_depth {
        scan.found.skipped += 1;
        return;
    }
    if let Ok(meta) = fs::metadata(&nested) {
        if scan.first_visit(&meta) {
            walk_modules(scan, &nested, depth + 1);
        }
    }
}

/// The two fields read; every other one is skipped by the parser without being kept,
/// so memory does not grow with the file (old npm copied whole READMEs in).
#[derive(Deserialize)]
struct Manifest {
    name: Option<String>,
    version: Option<String>,
}

fn read_manifest(path: &Path, max_bytes: u64) -> Result<(String, String), String> {
    let mut reader = BufReader::new(open_capped(path, max_bytes)?);
    let manifest: Manifest = serde_json::from_reader(&mut reader).map_err(|e| {
        if reader.get_ref().limit() == 0 {
            format!("larger than the {max_bytes} bytes read")
        } else {
            format!("not JSON: {e}")
        }
    })?;
    let name = manifest.name.ok_or("no name")?;
    let version = manifest.version.ok_or("no version")?;
    Ok((
        plausible("name", &name)?.to_owned(),
        plausible("version", &version)?.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn package(dir: &Path, name: &str, version: &str) {
        fs::create_dir_all(dir).unwrap();
        let json = format!(
            r#"{{"name":"{name}","version":"{version}","dependencies":{{"a":"^1"}},"x":[1,{{"y":null}}]}}"#
        );
        fs::write(dir.join("package.json"), json).unwrap();
    }

    fn listed(found: &Found) -> Vec<String> {
        let mut all: Vec<String> = found
            .packages
            .iter()
            .map(|p| format!("{}@{} {}", p.name, p.version, p.path))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn global_scoped_nested_and_debian_packages() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let global = r.join("usr/lib/node_modules");
        package(&global.join("npm"), "npm", "9.2.0");
        package(&global.join("npm/node_modules/semver"), "semver", "7.5.4");
        package(
            &global.join("npm/node_modules/@npmcli/arborist"),
            "@npmcli/arborist",
            "6.2.0",
        );
        fs::create_dir_all(global.join(".bin")).unwrap();
        fs::create_dir_all(global.join("npm/lib")).unwrap();
        package(
            &r.join("usr/share/nodejs/@types/node"),
            "@types/node",
            "18.13.0",
        );
        package(&r.join("usr/share/nodejs/bootstrap"), "bootstrap", "5.2.2");
        package(&r.join("opt/app/node_modules/lodash"), "lodash", "4.17.21");
        // A project in a home directory is not the host's.
        package(
            &r.join("home/u/p/node_modules/left-pad"),
            "left-pad",
            "1.0.0",
        );

        let found = npm(r, &Limits::default());
        assert_eq!(found.problems, Vec::new());
        assert_eq!(
            listed(&found),
            vec![
                "@npmcli/arborist@6.2.0 /usr/lib/node_modules/npm/node_modules/@npmcli/arborist",
                "@types/node@18.13.0 /usr/share/nodejs/@types/node",
                "bootstrap@5.2.2 /usr/share/nodejs/bootstrap",
                "lodash@4.17.21 /opt/app/node_modules/lodash",
                "npm@9.2.0 /usr/lib/node_modules/npm",
                "semver@7.5.4 /usr/lib/node_modules/npm/node_modules/semver",
            ]
        );
        assert!(found.packages.iter().all(|p| p.kind == PackageType::Npm));
    }

    #[test]
    fn symlink_loops_end_and_each_package_is_read_once() {
        let root = tempfile::tempdir().unwrap();
        let global = root.path().join("usr/lib/node_modules");
        package(&global.join("a"), "a", "1.0.0");
        package(&global.join("a/node_modules/b"), "b", "2.0.0");
        // Back to the prefix, to the package itself, to each other, and to nowhere.
        symlink(&global, global.join("a/node_modules/up")).unwrap();
        symlink("..", global.join("a/node_modules/b/node_modules")).unwrap();
        symlink("loop2", global.join("loop1")).unwrap();
        symlink("loop1", global.join("loop2")).unwrap();
        symlink("missing", global.join("dangling")).unwrap();

        let found = npm(root.path(), &Limits::default());
        assert_eq!(
            listed(&found),
            vec![
                "a@1.0.0 /usr/lib/node_modules/a",
                "b@2.0.0 /usr/lib/node_modules/a/node_modules/b",
            ]
        );
        assert_eq!(found.problems, Vec::new());
    }

    #[test]
    fn nesting_past_the_depth_bound_is_counted_not_read() {
        let root = tempfile::tempdir().unwrap();
        let mut dir = root.path().join("usr/lib/node_modules/p0");
        for depth in 0..6 {
            package(&dir, &format!("p{depth}"), "1.0.0");
            dir = dir.join(format!("node_modules/p{}", depth + 1));
        }
        let limits = Limits {
            max_depth: 2,
            ..Limits::default()
        };
        let found = npm(root.path(), &limits);
        assert_eq!((found.packages.len(), found.skipped), (3, 1));
    }

    #[test]
    fn huge_junk_and_unreadable_manifests_are_problems_with_their_path() {
        let root = tempfile::tempdir().unwrap();
        let global = root.path().join("usr/lib/node_modules");
        package(&global.join("good"), "good", "1.0.0");
        // 64 MiB of JSON, most of it blank: read to the cap, not to the end.
        let big = global.join("big");
        fs::create_dir_all(&big).unwrap();
        let mut json = br#"{"name":"big","version":"1.0.0""#.to_vec();
        json.resize(64 << 20, b' ');
        json.push(b'}');
        fs::write(big.join("package.json"), json).unwrap();
        // 1 GiB (sparse): fails at the first byte of zeros.
        let sparse = global.join("sparse");
        fs::create_dir_all(&sparse).unwrap();
        let file = sparse.join("package.json");
        fs::write(&file, r#"{"name":"sparse","version":"1.0.0","readme":""#).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        for (dir, content) in [
            ("junk", &b"\x7fELF\x00\x01binary"[..]),
            ("noversion", br#"{"name":"noversion"}"#),
            ("numeric", br#"{"name":"numeric","version":1}"#),
            ("control", b"{\"name\":\"a\\u0007b\",\"version\":\"1\"}"),
        ] {
            fs::create_dir_all(global.join(dir)).unwrap();
            fs::write(global.join(dir).join("package.json"), content).unwrap();
        }
        // Would block a reader forever.
        fs::create_dir_all(global.join("fifo")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            global.join("fifo/package.json"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        fs::create_dir_all(global.join("dangling")).unwrap();
        symlink("nowhere", global.join("dangling/package.json")).unwrap();

        let started = std::time::Instant::now();
        let found = npm(root.path(), &Limits::default());
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
        assert_eq!(
            listed(&found),
            vec!["good@1.0.0 /usr/lib/node_modules/good"]
        );
        let problems: Vec<(PathBuf, String)> = found.problems.clone();
        let reason = |dir: &str| -> String {
            let path = PathBuf::from(format!("/usr/lib/node_modules/{dir}/package.json"));
            problems
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| panic!("no problem for {dir}: {problems:#?}"))
        };
        assert_eq!(reason("big"), "larger than the 4194304 bytes read");
        assert!(reason("sparse").starts_with("not JSON: control character"));
        assert!(reason("junk").starts_with("not JSON"), "{}", reason("junk"));
        assert_eq!(reason("noversion"), "no version");
        assert!(reason("numeric").starts_with("not JSON: invalid type"));
        assert_eq!(reason("control"), "name has control characters");
        assert_eq!(reason("fifo"), "not a regular file");
        assert!(reason("dangling").starts_with("cannot read"));
        assert_eq!(found.problems_total, 8);
    }
}
