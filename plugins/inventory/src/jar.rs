//! Java archives that running processes hold: every `.jar`, `.war` and `.ear` open in
//! `/proc/PID/fd` or mapped in `/proc/PID/maps`, of any process. An open descriptor
//! is read through its `/proc/PID/fd/N` link (it works for deleted files and inside
//! containers); a mapping through `/proc/PID/root/PATH`, the process's own root.
//! The path reported is the one the process sees.
//!
//! A jar is named by, in order: each `META-INF/maven/*/*/pom.properties`
//! (`groupId:artifactId` and `version`; a shaded jar carries one per artifact it
//! bundles, and each is reported, since each can be the vulnerable one); else its
//! manifest (`Implementation-Title`/`-Version`, else `Bundle-SymbolicName`/
//! `Bundle-Version`); else its file name (`guava-31.1-jre.jar`: `guava`, `31.1-jre`).
//! Jars nested in it (`BOOT-INF/lib/`, `WEB-INF/lib/`, `lib/`, an EAR's modules) are
//! inflated in memory and named the same way, as `outer.jar!/BOOT-INF/lib/x.jar`.
//!
//! Every jar file is read once (by device and inode) however many processes hold it.
//! What a jar bomb could make unbounded is bounded by [`Limits`]: the entries of an
//! archive (counted from its end record before the zip reader parses anything), the
//! bytes read of any member, the size of a nested jar, the nesting depth, and the bytes
//! inflated for one jar in all.
//!
//! Not read: jars on a class path that no process has opened yet, class files
//! outside jars, jars nested deeper than [`Limits::max_jar_depth`].

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use hids_types::package::PackageType;
use zip::ZipArchive;

use crate::python::{plausible, Found, Limits, Scan};

/// The jars held by the processes under `proc_root` (`/proc` on a host).
pub fn jars(proc_root: &Path, limits: &Limits) -> Found {
    // Paths are shown as the processes see them, not relative to a scanned root.
    let mut scan = Scan::new(Path::new("/"), limits);
    for pid in scan.list(proc_root) {
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for held in held_jars(&mut scan, &proc_root.join(pid)) {
            read_jar_file(&mut scan, &held);
        }
    }
    scan.found
}

/// A jar a process holds: where we open it, and the path the process knows it by.
struct Held {
    open: PathBuf,
    shown: String,
}

fn is_jar_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jar", ".war", ".ear"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The jars one process holds, each path once. A process that exits meanwhile holds
/// nothing.
fn held_jars(scan: &mut Scan, proc_dir: &Path) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    let fd_dir = proc_dir.join("fd");
    for fd in scan.list(&fd_dir) {
        let link = fd_dir.join(&fd);
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let target = target.to_string_lossy();
        let shown = target.strip_suffix(" (deleted)").unwrap_or(&target);
        if is_jar_name(shown) && !held.iter().any(|h| h.shown == shown) {
            held.push(Held {
                open: link,
                shown: shown.to_owned(),
            });
        }
    }
    let maps = proc_dir.join("maps");
    let Ok(file) = File::open(&maps) else {
        return held;
    };
    let mut text = Vec::new();
    if file
        .take(scan.limits.max_file_bytes)
        .read_to_end(&mut text)
        .is_err()
    {
        return held;
    }
    for line in String::from_utf8_lossy(&text).lines() {
        // `address perms offset dev inode path`; the path may hold spaces. A deleted
        // file cannot be opened by path (its descriptor, if still open, was read above).
        let Some(path) = line.splitn(6, ' ').nth(5).map(str::trim_start) else {
            continue;
        };
        if path.starts_with('/') && is_jar_name(path) && !held.iter().any(|h| h.shown == path) {
            held.push(Held {
                open: proc_dir.join("root").join(&path[1..]),
                shown: path.to_owned(),
            });
        }
    }
    held
}

fn read_jar_file(scan: &mut Scan, held: &Held) {
    let file = match crate::python::open_regular(&held.open) {
        Ok(file) => file,
        // The process closed it or exited.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            scan.problem(Path::new(&held.shown), format!("cannot open: {e}"));
            return;
        }
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() && scan.first_visit(&meta) => {}
        _ => return,
    }
    if !scan.take_file() {
        return;
    }
    let mut inflated_left = scan.limits.max_jar_inflated_bytes;
    read_archive(scan, file, &held.shown, 0, &mut inflated_left);
}

/// Names one archive (a file or a nested jar in memory) and the jars nested in it.
fn read_archive<R: Read + Seek>(
    scan: &mut Scan,
    mut reader: R,
    shown: &str,
    depth: u32,
    inflated_left: &mut u64,
) {
    let path = Path::new(shown);
    let archive = match entry_count(&mut reader) {
        Ok(count) if count >= u64::from(u16::MAX) || count > scan.limits.max_jar_entries => {
            Err(format!(
                "{count} entries or more, past the {} read",
                scan.limits.max_jar_entries
            ))
        }
        Ok(_) => ZipArchive::new(reader).map_err(|e| format!("not a zip archive: {e}")),
        Err(reason) => Err(reason),
    };
    let mut archive = match archive {
        Ok(archive) => archive,
        Err(reason) => {
            // Still known by its file name, which is all some jars have anyway.
            scan.problem(path, reason);
            push_named(scan, &[], shown);
            return;
        }
    };
    let mut named = pom_properties(scan, &mut archive, path, inflated_left);
    if named.is_empty() {
        named.extend(manifest(scan, &mut archive, path, inflated_left, shown));
    }
    push_named(scan, &named, shown);

    let nested: Vec<usize> = (0..archive.len())
        .filter(|&i| archive.name_for_index(i).is_some_and(is_nested_jar))
        .collect();
    if depth >= scan.limits.max_jar_depth {
        scan.found.skipped += nested.len() as u64;
        return;
    }
    for index in nested {
        read_nested(scan, &mut archive, index, shown, depth, inflated_left);
    }
}

/// Pushes the packages a jar was named by, or the one its file name gives.
fn push_named(scan: &mut Scan, named: &[(String, String)], shown: &str) {
    if named.is_empty() {
        match from_file_name(shown) {
            Some((name, version)) => scan.push(PackageType::Jar, &name, &version, shown.into()),
            None => scan.problem(
                Path::new(shown),
                "no pom.properties, manifest version or version in the file name",
            ),
        }
    }
    for (name, version) in named {
        scan.push(PackageType::Jar, name, version, shown.into());
    }
}

/// Jars packed inside another: a Spring Boot jar's `BOOT-INF/lib/`, a WAR's
/// `WEB-INF/lib/`, an EAR's `lib/` and its top-level modules.
fn is_nested_jar(name: &str) -> bool {
    let file = ["BOOT-INF/lib/", "WEB-INF/lib/", "lib/"]
        .iter()
        .find_map(|dir| name.strip_prefix(dir))
        .unwrap_or(name);
    !file.contains('/') && !file.is_empty() && is_jar_name(file)
}

fn read_nested<R: Read + Seek>(
    scan: &mut Scan,
    archive: &mut ZipArchive<R>,
    index: usize,
    outer: &str,
    depth: u32,
    inflated_left: &mut u64,
) {
    let limit = scan.limits.max_nested_jar_bytes;
    let (shown, bytes) = {
        let member = match archive.by_index(index) {
            Ok(member) => member,
            Err(e) => {
                scan.problem(Path::new(outer), format!("cannot read a member: {e}"));
                return;
            }
        };
        let shown = format!("{outer}!/{}", member.name());
        if member.size() > limit || member.size() > *inflated_left {
            (
                shown,
                Err(format!(
                    "nested jar of {} bytes, past what is read",
                    member.size()
                )),
            )
        } else {
            let bytes = read_member(member, limit.min(*inflated_left), inflated_left);
            (shown, bytes)
        }
    };
    match bytes {
        Ok(bytes) => read_archive(scan, Cursor::new(bytes), &shown, depth + 1, inflated_left),
        Err(reason) => {
            scan.problem(Path::new(&shown), reason);
            push_named(scan, &[], &shown);
        }
    }
}

/// Reads an archive member whole, refusing one longer than `cap` (its stated size can
/// lie: the reading is what is bounded). Charges what was inflated to `inflated_left`.
fn read_member(member: impl Read, cap: u64, inflated_left: &mut u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let read = member
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot inflate: {e}"));
    *inflated_left = inflated_left.saturating_sub(bytes.len() as u64);
    read?;
    if bytes.len() as u64 > cap {
        return Err(format!("inflates past the {cap} bytes read"));
    }
    Ok(bytes)
}

/// A small member (`pom.properties`, the manifest) as text, bounded like any file.
fn read_text<R: Read + Seek>(
    scan: &mut Scan,
    archive: &mut ZipArchive<R>,
    index: usize,
    path: &Path,
    inflated_left: &mut u64,
) -> Option<String> {
    let cap = scan.limits.max_file_bytes.min(*inflated_left);
    let read = archive
        .by_index(index)
        .map_err(|e| format!("cannot read a member: {e}"))
        .and_then(|member| {
            let name = member.name().to_owned();
            read_member(member, cap, inflated_left).map_err(|reason| format!("{name}: {reason}"))
        });
    match read {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(reason) => {
            scan.problem(path, reason);
            None
        }
    }
}

/// `groupId:artifactId` and `version` of each `META-INF/maven/*/*/pom.properties`.
fn pom_properties<R: Read + Seek>(
    scan: &mut Scan,
    archive: &mut ZipArchive<R>,
    path: &Path,
    inflated_left: &mut u64,
) -> Vec<(String, String)> {
    let poms: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            archive.name_for_index(i).is_some_and(|name| {
                name.strip_prefix("META-INF/maven/")
                    .and_then(|rest| rest.strip_suffix("/pom.properties"))
                    .is_some_and(|ids| ids.split('/').count() == 2)
            })
        })
        .collect();
    let mut named = Vec::new();
    for index in poms {
        let Some(text) = read_text(scan, archive, index, path, inflated_left) else {
            continue;
        };
        let (mut group, mut artifact, mut version) = (None, None, None);
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once(['=', ':']) else {
                continue;
            };
            let slot = match key.trim() {
                "groupId" => &mut group,
                "artifactId" => &mut artifact,
                "version" => &mut version,
                _ => continue,
            };
            slot.get_or_insert(value.trim());
        }
        let checked = (|| {
            let group = plausible("groupId", group.ok_or("no groupId")?)?;
            let artifact = plausible("artifactId", artifact.ok_or("no artifactId")?)?;
            let version = plausible("version", version.ok_or("no version")?)?;
            Ok::<_, String>((format!("{group}:{artifact}"), version.to_owned()))
        })();
        match checked {
            Ok(pair) => named.push(pair),
            Err(reason) => scan.problem(path, format!("pom.properties: {reason}")),
        }
    }
    named
}

/// The name and version of the manifest's main section: `Implementation-*`, else the
/// OSGi bundle's; a version with no title takes its name from the file name.
fn manifest<R: Read + Seek>(
    scan: &mut Scan,
    archive: &mut ZipArchive<R>,
    path: &Path,
    inflated_left: &mut u64,
    shown: &str,
) -> Option<(String, String)> {
    let index = archive.index_for_name("META-INF/MANIFEST.MF")?;
    let text = read_text(scan, archive, index, path, inflated_left)?;
    let attributes = main_attributes(&text);
    let get = |key: &str| {
        attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let (name, version) = match (
        get("Implementation-Title"),
        get("Implementation-Version"),
        get("Bundle-SymbolicName"),
        get("Bundle-Version"),
    ) {
        (Some(title), Some(version), _, _) => (title.to_owned(), version),
        // `org.example.bundle;singleton:=true`
        (_, _, Some(symbolic), Some(version)) => (
            symbolic.split(';').next().unwrap_or(symbolic).to_owned(),
            version,
        ),
        (None, Some(version), _, _) => (from_file_name(shown)?.0, version),
        _ => return None,
    };
    match (plausible("name", &name), plausible("version", version)) {
        (Ok(name), Ok(version)) => Some((name.to_owned(), version.to_owned())),
        (Err(reason), _) | (_, Err(reason)) => {
            scan.problem(path, format!("MANIFEST.MF: {reason}"));
            None
        }
    }
}

/// The main section's attributes: `Key: value` lines up to the first empty one, a
/// line starting with a space continuing the one before (lines are cut at 72 bytes).
fn main_attributes(text: &str) -> Vec<(String, String)> {
    let mut attributes: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(more) = line.strip_prefix(' ') {
            if let Some((_, value)) = attributes.last_mut() {
                value.push_str(more);
            }
        } else if let Some((key, value)) = line.split_once(':') {
            attributes.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    attributes
}

/// `log4j-core-2.14.1.jar`: `log4j-core`, `2.14.1`. The version starts at the first
/// `-` followed by a digit (`guava-31.1-jre`).
fn from_file_name(shown: &str) -> Option<(String, String)> {
    let file = shown.rsplit(['/', '!']).next().unwrap_or(shown);
    let stem = file.get(..file.len().checked_sub(4)?)?;
    let bytes = stem.as_bytes();
    let split = (1..bytes.len()).find(|&i| bytes[i - 1] == b'-' && bytes[i].is_ascii_digit())?;
    let name = plausible("name", &stem[..split - 1]).ok()?;
    let version = plausible("version", &stem[split..]).ok()?;
    Some((name.to_owned(), version.to_owned()))
}

/// How many entries the archive's end record says it has: read before the zip reader
/// parses a central directory that could hold millions. 65,535 means "see the zip64
/// record", which is counted as that many.
fn entry_count(reader: &mut (impl Read + Seek)) -> Result<u64, String> {
    const END_RECORD: usize = 22;
    let len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    let tail_len = len.min((END_RECORD + usize::from(u16::MAX)) as u64);
    let mut tail = vec![0; tail_len as usize];
    reader
        .seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| reader.read_exact(&mut tail))
        .map_err(|e| format!("cannot read: {e}"))?;
    // The last record whose comment, of the length it states, ends the file: a
    // comment cannot pass off a record of its own.
    let count = (0..=tail.len().saturating_sub(END_RECORD))
        .rev()
        .map(|start| &tail[start..])
        .find(|record| {
            record.len() >= END_RECORD
                && record.starts_with(b"PK\x05\x06")
                && END_RECORD + usize::from(u16::from_le_bytes([record[20], record[21]]))
                    == record.len()
        })
        .map(|record| u64::from(u16::from_le_bytes([record[10], record[11]])))
        .ok_or("not a zip archive: no end record")?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    /// A jar with these members, deflated.
    fn jar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, content) in members {
            writer.start_file(*name, options).unwrap();
            writer.write_all(content).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn pom(group: &str, artifact: &str, version: &str) -> (String, Vec<u8>) {
        (
            format!("META-INF/maven/{group}/{artifact}/pom.properties"),
            format!(
                "#Generated by Maven\nartifactId={artifact}\ngroupId={group}\nversion={version}\n"
            )
            .into_bytes(),
        )
    }

    /// A fake `/proc` where pid 100 holds `held` by descriptor and maps `mapped`
    /// (paths inside `fs`, its root), and pid 200 holds the first jar again.
    fn proc_with(dir: &Path, fs_root: &Path, held: &[&str], mapped: &[&str]) -> PathBuf {
        let proc_root = dir.join("proc");
        for (pid, jars) in [("100", held), ("200", &held[..held.len().min(1)])] {
            let fd = proc_root.join(pid).join("fd");
            fs::create_dir_all(&fd).unwrap();
            symlink(fs_root, proc_root.join(pid).join("root")).unwrap();
            for (n, path) in jars.iter().enumerate() {
                symlink(fs_root.join(&path[1..]), fd.join((n + 3).to_string())).unwrap();
            }
            symlink("/dev/null", fd.join("0")).unwrap();
        }
        let maps: String = mapped
            .iter()
            .map(|path| format!("7f0000000000-7f0000001000 r--s 00000000 fd:01 123   {path}\n"))
            .collect();
        fs::write(proc_root.join("100/maps"), maps).unwrap();
        fs::create_dir_all(proc_root.join("self")).unwrap();
        proc_root
    }

    fn put(fs_root: &Path, path: &str, bytes: &[u8]) {
        let file = fs_root.join(&path[1..]);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, bytes).unwrap();
    }

    fn listed(found: &Found) -> Vec<String> {
        let mut all: Vec<String> = found
            .packages
            .iter()
            .map(|p| format!("{} {} {}", p.name, p.version, p.path))
            .collect();
        all.sort();
        all
    }

    fn scan_jars(held: &[(&str, Vec<u8>)], limits: &Limits) -> Found {
        let dir = tempfile::tempdir().unwrap();
        let fs_root = dir.path().join("fs");
        for (path, bytes) in held {
            put(&fs_root, path, bytes);
        }
        let paths: Vec<&str> = held.iter().map(|(p, _)| *p).collect();
        let proc_root = proc_with(dir.path(), &fs_root, &paths, &[]);
        as_held(jars(&proc_root, limits), &fs_root)
    }

    /// The fake descriptors link to the files' real paths, where the kernel's show them
    /// as the process sees them: cut the fake root off.
    fn as_held(mut found: Found, fs_root: &Path) -> Found {
        let prefix = fs_root.to_string_lossy().into_owned();
        for p in &mut found.packages {
            p.path = p.path.replacen(&prefix, "", 1);
        }
        for (path, _) in &mut found.problems {
            *path = PathBuf::from(path.to_string_lossy().replacen(&prefix, "", 1));
        }
        found
    }

    #[test]
    fn jars_are_named_by_pom_properties_then_manifest_then_file_name() {
        let (pom_name, pom_text) = pom("org.apache.logging.log4j", "log4j-core", "2.14.1");
        let (shaded_name, shaded_text) = pom("com.google.guava", "guava", "31.1-jre");
        let manifest = b"Manifest-Version: 1.0\r\nImplementation-Title: Apache Commons\r\n  Lang\r\nImplementation-Version: 3.12.0\r\n\r\nName: x\r\nImplementation-Version: 9\r\n";
        let bundle = b"Manifest-Version: 1.0\nBundle-SymbolicName: org.example.b;singleton:=true\nBundle-Version: 1.2.3.v2020\n";
        let version_only = b"Manifest-Version: 1.0\nImplementation-Version: 7.0\n";
        let found = scan_jars(
            &[
                (
                    "/app/log4j.jar",
                    jar(&[(&pom_name, &pom_text), (&shaded_name, &shaded_text)]),
                ),
                ("/app/lang.jar", jar(&[("META-INF/MANIFEST.MF", manifest)])),
                ("/app/b.jar", jar(&[("META-INF/MANIFEST.MF", bundle)])),
                (
                    "/app/tool-1.0.jar",
                    jar(&[("META-INF/MANIFEST.MF", version_only)]),
                ),
                ("/app/guava-31.1-jre.jar", jar(&[("a.class", b"")])),
                ("/app/app.war", jar(&[("index.html", b"")])),
            ],
            &Limits::default(),
        );
        assert_eq!(
            listed(&found),
            vec![
                "Apache Commons Lang 3.12.0 /app/lang.jar",
                "com.google.guava:guava 31.1-jre /app/log4j.jar",
                "guava 31.1-jre /app/guava-31.1-jre.jar",
                "org.apache.logging.log4j:log4j-core 2.14.1 /app/log4j.jar",
                "org.example.b 1.2.3.v2020 /app/b.jar",
                "tool 7.0 /app/tool-1.0.jar",
            ]
        );
        assert_eq!(
            found.problems,
            vec![(
                PathBuf::from("/app/app.war"),
                "no pom.properties, manifest version or version in the file name".to_owned()
            )]
        );
        assert!(found.packages.iter().all(|p| p.kind == PackageType::Jar));
    }

    #[test]
    fn nested_jars_are_read_in_memory_and_named_after_their_place() {
        let (pom_name, pom_text) = pom("org.yaml", "snakeyaml", "1.33");
        let inner = jar(&[(&pom_name, &pom_text)]);
        let lib = jar(&[("x.class", b"")]);
        let fat = jar(&[
            ("BOOT-INF/lib/snakeyaml-1.33.jar", &inner),
            ("BOOT-INF/lib/jackson-core-2.15.0.jar", &lib),
            ("BOOT-INF/classes/not-a-lib-1.0.jar", &lib),
            (
                "META-INF/MANIFEST.MF",
                b"Implementation-Title: shop\nImplementation-Version: 1.0\n",
            ),
        ]);
        let war = jar(&[("WEB-INF/lib/commons-io-2.11.0.jar", &lib)]);
        let found = scan_jars(
            &[("/srv/shop.jar", fat), ("/srv/site-3.war", war)],
            &Limits::default(),
        );
        assert_eq!(
            listed(&found),
            vec![
                "commons-io 2.11.0 /srv/site-3.war!/WEB-INF/lib/commons-io-2.11.0.jar",
                "jackson-core 2.15.0 /srv/shop.jar!/BOOT-INF/lib/jackson-core-2.15.0.jar",
                "org.yaml:snakeyaml 1.33 /srv/shop.jar!/BOOT-INF/lib/snakeyaml-1.33.jar",
                "shop 1.0 /srv/shop.jar",
                "site 3 /srv/site-3.war",
            ]
        );
        assert_eq!(found.problems, Vec::new());
    }

    #[test]
    fn descriptors_and_mappings_are_found_and_each_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let fs_root = dir.path().join("fs");
        let lib = jar(&[("x.class", b"")]);
        put(&fs_root, "/opt/a-1.0.jar", &lib);
        put(&fs_root, "/opt/b-2.0.jar", &lib);
        put(&fs_root, "/opt/with space-3.0.jar", &lib);
        std::os::unix::fs::symlink(
            fs_root.join("opt/a-1.0.jar"),
            fs_root.join("opt/link-9.jar"),
        )
        .unwrap();
        let proc_root = proc_with(
            dir.path(),
            &fs_root,
            &["/opt/a-1.0.jar"],
            &[
                "/opt/b-2.0.jar",
                "/opt/with space-3.0.jar",
                "/opt/link-9.jar",
                "/opt/gone-1.jar (deleted)",
            ],
        );
        let found = as_held(jars(&proc_root, &Limits::default()), &fs_root);
        assert_eq!(
            listed(&found),
            vec![
                "a 1.0 /opt/a-1.0.jar",
                "b 2.0 /opt/b-2.0.jar",
                "with space 3.0 /opt/with space-3.0.jar",
            ]
        );
        assert!(found.problems.is_empty(), "{:?}", found.problems);
    }

    #[test]
    fn a_jar_bomb_is_bounded_reported_and_still_named_by_its_file() {
        let started = Instant::now();
        // A manifest that inflates to 1 GiB, deflated to about 1 MiB.
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(1))
            .large_file(true);
        writer.start_file("META-INF/MANIFEST.MF", options).unwrap();
        let zeros = vec![b'a'; 1 << 20];
        for _ in 0..1024 {
            writer.write_all(&zeros).unwrap();
        }
        let manifest_bomb = writer.finish().unwrap().into_inner();
        eprintln!("built a 1 GiB manifest in {:?}", started.elapsed());

        // 100,000 entries.
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for i in 0..100_000 {
            writer.start_file(format!("c/{i}"), stored).unwrap();
        }
        let many = writer.finish().unwrap().into_inner();

        // Jars nested five deep.
        let mut deep = jar(&[("x.class", b"")]);
        for level in (1..5).rev() {
            deep = jar(&[(&format!("lib/level{level}-1.0.jar"), &deep)]);
        }
        // A nested jar larger than what is inflated of one, and a run of nested jars
        // that each fit but together pass what is inflated for their outer jar.
        let big = jar(&[("BOOT-INF/lib/big-1.0.jar", &vec![0; 17 << 20])]);
        let chunk = vec![0; 3 << 20];
        let names: Vec<String> = (0..100)
            .map(|i| format!("BOOT-INF/lib/n{i}-1.0.jar"))
            .collect();
        let members: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &chunk[..])).collect();
        let wide = jar(&members);

        let found = scan_jars(
            &[
                ("/b/bomb-1.0.jar", manifest_bomb),
                ("/b/many-2.0.jar", many),
                ("/b/level0-1.0.jar", deep),
                ("/b/big-outer-1.0.jar", big),
                ("/b/wide-1.0.jar", wide),
                ("/b/junk-1.0.jar", b"PK\x03\x04 not really".to_vec()),
            ],
            &Limits {
                max_problems: 1000,
                ..Limits::default()
            },
        );
        eprintln!("{:#?}", found.problems);
        let listed = listed(&found);
        for expected in [
            "bomb 1.0 /b/bomb-1.0.jar",
            "many 2.0 /b/many-2.0.jar",
            "level0 1.0 /b/level0-1.0.jar",
            "level1 1.0 /b/level0-1.0.jar!/lib/level1-1.0.jar",
            "level2 1.0 /b/level0-1.0.jar!/lib/level1-1.0.jar!/lib/level2-1.0.jar",
            "big 1.0 /b/big-outer-1.0.jar!/BOOT-INF/lib/big-1.0.jar",
            "junk 1.0 /b/junk-1.0.jar",
        ] {
            assert!(
                listed.iter().any(|l| l == expected),
                "{expected} not in {listed:#?}"
            );
        }
        assert!(!listed.iter().any(|l| l.contains("level3")), "{listed:#?}");
        // Every member of `wide` is named, read or not.
        assert_eq!(
            listed
                .iter()
                .filter(|l| l.contains("/b/wide-1.0.jar!/"))
                .count(),
            100
        );
        let reason = |path: &str| {
            found
                .problems
                .iter()
                .find(|(p, _)| p == Path::new(path))
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| panic!("no problem for {path}"))
        };
        assert_eq!(
            reason("/b/bomb-1.0.jar"),
            "META-INF/MANIFEST.MF: inflates past the 4194304 bytes read"
        );
        assert_eq!(
            reason("/b/many-2.0.jar"),
            "65535 entries or more, past the 65535 read"
        );
        assert_eq!(
            reason("/b/big-outer-1.0.jar!/BOOT-INF/lib/big-1.0.jar"),
            "nested jar of 17825792 bytes, past what is read"
        );
        assert!(reason("/b/junk-1.0.jar").starts_with("not a zip archive"));
        // 256 MiB inflated for `wide` in all: 85 of its 3 MiB jars, the rest refused.
        let refused = found
            .problems
            .iter()
            .filter(|(p, r)| p.starts_with("/b/wide-1.0.jar!") && r.contains("past what is read"))
            .count();
        assert_eq!(refused, 15, "{:#?}", found.problems);
        assert_eq!(found.skipped, 1, "level3 is past the depth bound");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{:?}",
            started.elapsed()
        );
    }

    fn runs(tool: &str) -> bool {
        std::process::Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// A real JVM holding a real jar on its class path: found through the real
    /// `/proc`, named by the jar's manifest.
    #[test]
    fn a_running_java_process_has_its_jar_named() {
        hids_test_support::skip_unless!(
            runs("java") && runs("javac"),
            "java and javac not found (Debian package openjdk-17-jdk-headless)"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Sleeper.java"),
            "public class Sleeper { public static void main(String[] a) throws Exception { \
             System.out.println(\"ready\"); Thread.sleep(60000); } }",
        )
        .unwrap();
        let status = std::process::Command::new("javac")
            .arg("Sleeper.java")
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let class = fs::read(dir.path().join("Sleeper.class")).unwrap();
        let jar_path = dir.path().join("sleeper-app.jar");
        let manifest = b"Manifest-Version: 1.0\nImplementation-Title: sleeper\nImplementation-Version: 4.5.6\n\n";
        fs::write(
            &jar_path,
            jar(&[
                ("META-INF/MANIFEST.MF", manifest),
                ("Sleeper.class", &class),
            ]),
        )
        .unwrap();
        let mut child = std::process::Command::new("java")
            .args(["-Xshare:off", "-Xmx32m", "-cp"])
            .arg(&jar_path)
            .arg("Sleeper")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0; 5];
        child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
        let found = jars(Path::new("/proc"), &Limits::default());
        child.kill().unwrap();
        child.wait().unwrap();
        let shown = jar_path.to_string_lossy();
        assert!(
            found
                .packages
                .iter()
                .any(|p| p.name == "sleeper" && p.version == "4.5.6" && p.path == shown),
            "{shown} not in {:#?}",
            found.packages
        );
    }
}
