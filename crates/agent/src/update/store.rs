//! Installed builds of one updatable component (a plugin, or the agent itself), under
//! `<state_dir>/versions/<name>/`:
//!
//! ```text
//! installed.json              which build is current, which is previous, which are bad
//! 4-0a1b2c3d4e5f/<name>       one directory per build: version and hash prefix
//! 2-99aa.../<name>
//! .partial-<sha256>           a download in progress (resumed after a restart)
//! ```
//!
//! A build directory is made whole under a temporary name and renamed into place; the
//! switch is the rename of `installed.json`. A `kill -9` at any point therefore leaves
//! either the old manifest (and the old build runs) or the new one (and the new build,
//! complete and verified, runs); what is left half-made is removed at the next start.
//! Only the current and the previous build are kept.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use hids_types::desired::Release;
use hids_types::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "installed.json";
const PARTIAL_PREFIX: &str = ".partial-";
/// Bad builds remembered per component (the oldest forgotten first).
const MAX_BAD: usize = 8;

/// One installed build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    pub sha256: String,
    /// Its directory, relative to the component's.
    pub dir: String,
    pub installed_at: Timestamp,
    /// It passed its health gate here once.
    #[serde(default)]
    pub passed: bool,
}

impl Build {
    pub fn is(&self, release: &Release) -> bool {
        self.version == release.version && self.sha256.eq_ignore_ascii_case(&release.sha256)
    }
}

/// A build that failed its health gate here: not run again until the desired state
/// names another build first (or an operator restarts the plugin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadBuild {
    pub version: String,
    pub sha256: String,
    pub reason: String,
    pub at: Timestamp,
    /// It failed only for not reaching the control plane: tried again once an agent of
    /// this host has.
    #[serde(default)]
    pub until_connected: bool,
    /// Given its one retry after the control plane was reached: not bad until it fails
    /// again, and then for good.
    #[serde(default)]
    pub forgiven: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub current: Option<Build>,
    /// The build to go back to when the current one fails its health gate; `None`: the
    /// one the host's own configuration names.
    pub previous: Option<Build>,
    /// The current build has not passed its health gate yet.
    #[serde(default)]
    pub trial: bool,
    #[serde(default)]
    pub bad: Vec<BadBuild>,
    /// The agent's slot only: SHA-256 of the installed binary the current build was
    /// installed over. When it changes (a package upgrade), the installed binary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// The installed builds of one component.
pub struct Slot {
    name: String,
    dir: PathBuf,
    pub manifest: Manifest,
}

impl Slot {
    /// Opens `<root>/<name>`, reading its manifest and tidying what an interrupted
    /// install left. A manifest that cannot be read is logged and taken as empty: the
    /// host's own build runs, which is always safe.
    pub fn open(root: &Path, name: &str) -> Slot {
        let dir = root.join(name);
        let manifest = match std::fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: not an installed-builds manifest ({e}); running the configured build of {name}",
                    dir.join(MANIFEST).display()
                );
                Manifest::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", dir.join(MANIFEST).display());
                Manifest::default()
            }
        };
        let slot = Slot {
            name: name.to_owned(),
            dir,
            manifest,
        };
        slot.prune(None);
        slot
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a download of `sha256` goes while in progress.
    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{PARTIAL_PREFIX}{}", sha256.to_ascii_lowercase()))
    }

    /// Makes the component's directory (0700: root's builds, root's business).
    pub fn make_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
    }

    /// The executable of `build`.
    pub fn executable(&self, build: &Build) -> PathBuf {
        self.dir.join(&build.dir).join(&self.name)
    }

    /// The current build's executable, re-hashed: a file changed on disk since it was
    /// verified is not run (logged), and the previous build or the configured one runs.
    pub fn verified_current(&self) -> Option<(Build, PathBuf)> {
        let build = self.manifest.current.as_ref()?;
        let path = self.executable(build);
        match sha256_of(&path) {
            Ok(sum) if sum.eq_ignore_ascii_case(&build.sha256) => Some((build.clone(), path)),
            Ok(sum) => {
                tracing::error!(
                    "{}: SHA-256 {sum}, installed as {}: changed on disk; not run",
                    path.display(),
                    build.sha256
                );
                None
            }
            Err(e) => {
                tracing::error!("cannot read {}: {e}; not run", path.display());
                None
            }
        }
    }

    pub fn is_bad(&self, release: &Release) -> Option<&BadBuild> {
        self.manifest.bad.iter().find(|b| {
            !b.forgiven
                && b.version == release.version
                && b.sha256.eq_ignore_ascii_case(&release.sha256)
        })
    }

    /// Forgets bad marks for builds other than `named`: the desired state moved on, so a
    /// later document naming one of them again is a deliberate retry.
    pub fn forget_bad_except(&mut self, named: Option<&Release>) -> io::Result<()> {
        let mut next = self.manifest.clone();
        next.bad.retain(|b| {
            named
                .is_some_and(|r| r.version == b.version && r.sha256.eq_ignore_ascii_case(&b.sha256))
        });
        if next.bad.len() == self.manifest.bad.len() {
            return Ok(());
        }
        self.commit(next)
    }

    /// Installs the verified download at `partial` as `release` and makes it current,
    /// on trial. The build that was current becomes the one to go back to, unless it
    /// had not passed its gate yet (an update during a grace period) and an earlier
    /// build that did is there: then that one stays. An unproven build is still kept
    /// when it is all there is: better than nothing for a plugin the host does not have.
    ///
    /// # Errors
    /// When the file system refuses; the manifest is then unchanged.
    pub fn install(
        &mut self,
        release: &Release,
        partial: &Path,
        base: Option<String>,
    ) -> io::Result<()> {
        let build = self.place(release, partial)?;
        let mut next = self.manifest.clone();
        next.base = base;
        if let Some(old) = next.current.take().filter(|old| !old.is(release)) {
            let keep_earlier = !old.passed && next.previous.as_ref().is_some_and(|p| p.passed);
            if !keep_earlier {
                next.previous = Some(old);
            }
        }
        if next.previous.as_ref().is_some_and(|p| p.is(release)) {
            next.previous = None;
        }
        next.current = Some(build);
        next.trial = true;
        self.commit(next)
    }

    /// Puts the file into its build directory: made whole under a temporary name,
    /// fsynced, renamed into place.
    fn place(&self, release: &Release, partial: &Path) -> io::Result<Build> {
        use std::os::unix::fs::PermissionsExt as _;
        let sha = release.sha256.to_ascii_lowercase();
        let dir_name = format!("{}-{}", release.version, sha.get(..12).unwrap_or(&sha));
        let staging = self.dir.join(format!(".{dir_name}.tmp"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)?;
        let exe = staging.join(&self.name);
        std::fs::rename(partial, &exe)?;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o700))?;
        std::fs::File::open(&exe)?.sync_all()?;
        sync_dir(&staging)?;
        let target = self.dir.join(&dir_name);
        // The same build installed before (it was the previous one): replaced by the
        // copy just verified.
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&staging, &target)?;
        sync_dir(&self.dir)?;
        Ok(Build {
            version: release.version.clone(),
            sha256: sha,
            dir: dir_name,
            installed_at: Timestamp::now(),
            passed: false,
        })
    }

    /// The current build passed its health gate.
    pub fn confirm(&mut self) -> io::Result<()> {
        let mut next = self.manifest.clone();
        next.trial = false;
        if let Some(current) = &mut next.current {
            current.passed = true;
        }
        self.commit(next)
    }

    /// The current build failed: marked bad, and the previous build (or none: the
    /// configured one) becomes current again, on trial if it never passed. Returns the
    /// bad build.
    pub fn roll_back(&mut self, reason: &str, until_connected: bool) -> io::Result<Option<Build>> {
        let mut next = self.manifest.clone();
        let Some(failed) = next.current.take() else {
            return Ok(None);
        };
        next.current = next.previous.take();
        next.trial = next.current.as_ref().is_some_and(|b| !b.passed);
        let same = |b: &BadBuild| b.version == failed.version && b.sha256 == failed.sha256;
        // Its one retry used: bad for good, whatever the reason.
        let retried = next.bad.iter().any(|b| same(b) && b.forgiven);
        next.bad.retain(|b| !same(b));
        next.bad.push(BadBuild {
            version: failed.version.clone(),
            sha256: failed.sha256.clone(),
            reason: reason.to_owned(),
            at: Timestamp::now(),
            until_connected: until_connected && !retried,
            forgiven: false,
        });
        let excess = next.bad.len().saturating_sub(MAX_BAD);
        next.bad.drain(..excess);
        self.commit(next)?;
        Ok(Some(failed))
    }

    /// Back to the configured (installed) build: the current one is kept as the one to
    /// go back to, not run.
    pub fn back_to_installed(&mut self) -> io::Result<()> {
        let mut next = self.manifest.clone();
        if let Some(current) = next.current.take() {
            next.previous = Some(current);
        }
        next.trial = false;
        next.base = None;
        self.commit(next)
    }

    /// Gives builds that failed only for not reaching the control plane their one
    /// retry (a second such failure marks them bad for good). True when there were some.
    pub fn forget_unreached(&mut self) -> io::Result<bool> {
        let mut next = self.manifest.clone();
        let mut forgiven = false;
        for b in next.bad.iter_mut().filter(|b| b.until_connected) {
            b.until_connected = false;
            b.forgiven = true;
            forgiven = true;
        }
        if !forgiven {
            return Ok(false);
        }
        self.commit(next)?;
        Ok(true)
    }

    /// Writes `next` as the manifest (the switch), then removes builds it no longer
    /// names. In memory only once it is on disk.
    fn commit(&mut self, next: Manifest) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&next).map_err(io::Error::other)?;
        write_durably(&self.dir.join(MANIFEST), &bytes)?;
        self.manifest = next;
        self.prune(None);
        Ok(())
    }

    /// Removes build directories the manifest does not name, half-made ones, and
    /// partial downloads other than `keep_partial`'s. Best effort: what cannot be removed
    /// now is tried again next time.
    pub fn prune(&self, keep_partial: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let named: Vec<&str> = [&self.manifest.current, &self.manifest.previous]
            .into_iter()
            .flatten()
            .map(|b| b.dir.as_str())
            .collect();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if name == MANIFEST || named.contains(&name) {
                continue;
            }
            if let Some(sha) = name.strip_prefix(PARTIAL_PREFIX) {
                if keep_partial.is_none() || keep_partial == Some(sha) {
                    continue; // a download to resume
                }
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::debug!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// SHA-256 of a file, hex, read in bounded chunks.
pub fn sha256_of(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hids_control::hex::encode(&hasher.finalize()))
}

/// Replaces `path` with `bytes` so that after a crash at any point it holds either the
/// old content or the new, never a mix: temporary file, fsync, rename, fsync of the
/// directory (without it the rename itself may not survive a power cut).
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, content: &[u8]) -> Release {
        Release {
            version: version.into(),
            sha256: hids_control::hex::encode(&Sha256::digest(content)),
            url: "http://127.0.0.1/x".into(),
            max_bytes: None,
            spread_secs: None,
            expires_at: None,
        }
    }

    fn download(slot: &Slot, r: &Release, content: &[u8]) -> PathBuf {
        slot.make_dir().unwrap();
        let p = slot.partial_path(&r.sha256);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn keeps_current_and_previous_and_rolls_back() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "demo");
        for (v, content) in [("2", b"two".as_slice()), ("3", b"three"), ("4", b"four")] {
            let r = release(v, content);
            let p = download(&slot, &r, content);
            slot.install(&r, &p, None).unwrap();
            slot.confirm().unwrap();
        }
        let dirs: Vec<_> = std::fs::read_dir(root.path().join("demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != MANIFEST)
            .collect();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        let (current, path) = slot.verified_current().unwrap();
        assert_eq!(current.version, "4");
        assert_eq!(std::fs::read(path).unwrap(), b"four");
        let r5 = release("5", b"five");
        let p = download(&slot, &r5, b"five");
        slot.install(&r5, &p, None).unwrap();
        let failed = slot.roll_back("3 exits", false).unwrap().unwrap();
        assert_eq!(failed.version, "5");
        assert!(slot.is_bad(&r5).is_some());
        let reopened = Slot::open(root.path(), "demo");
        assert_eq!(reopened.verified_current().unwrap().0.version, "4");
        assert!(reopened.is_bad(&r5).is_some());
        assert_eq!(reopened.manifest.previous, None);
    }

    #[test]
    fn an_update_during_a_trial_keeps_the_last_good_build_to_go_back_to() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "demo");
        let r2 = release("2", b"two");
        let p = download(&slot, &r2, b"two");
        slot.install(&r2, &p, None).unwrap();
        slot.confirm().unwrap();
        for (v, c) in [("3", b"three".as_slice()), ("4", b"four")] {
            let r = release(v, c);
            let p = download(&slot, &r, c);
            slot.install(&r, &p, None).unwrap(); // never confirmed
        }
        assert_eq!(slot.manifest.previous.as_ref().unwrap().version, "2");
        slot.roll_back("never healthy", false).unwrap();
        assert_eq!(slot.verified_current().unwrap().0.version, "2");
    }

    #[test]
    fn an_unproven_build_is_kept_to_go_back_to_when_it_is_all_there_is() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "demo");
        for (v, c) in [("2", b"two".as_slice()), ("4", b"four")] {
            let r = release(v, c);
            let p = download(&slot, &r, c);
            slot.install(&r, &p, None).unwrap(); // 2 still on trial when 4 comes
        }
        slot.roll_back("3 exits", false).unwrap();
        assert_eq!(slot.verified_current().unwrap().0.version, "2");
        assert!(slot.manifest.trial, "2 has not passed: judged again");
    }

    #[test]
    fn a_build_that_did_not_reach_the_control_plane_gets_one_retry() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "agent");
        let r = release("9", b"nine");
        for round in 0..2 {
            let p = download(&slot, &r, b"nine");
            slot.install(&r, &p, None).unwrap();
            slot.roll_back("did not reach the control plane", true)
                .unwrap();
            assert!(slot.is_bad(&r).is_some());
            let forgiven = slot.forget_unreached().unwrap();
            assert_eq!(forgiven, round == 0, "round {round}");
        }
        assert!(slot.is_bad(&r).is_some(), "bad for good after its retry");
    }

    #[test]
    fn a_crash_before_the_manifest_rename_leaves_the_old_build_current() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "demo");
        let r2 = release("2", b"two");
        let p = download(&slot, &r2, b"two");
        slot.install(&r2, &p, None).unwrap();
        // Build 3 placed, then the agent dies before the switch; also a staging
        // directory and a manifest temporary file from an earlier death.
        let r3 = release("3", b"three");
        let p = download(&slot, &r3, b"three");
        slot.place(&r3, &p).unwrap();
        std::fs::create_dir(root.path().join("demo/.9-abc.tmp")).unwrap();
        std::fs::write(root.path().join("demo/.installed.json.tmp"), b"{").unwrap();
        let reopened = Slot::open(root.path(), "demo");
        assert_eq!(reopened.verified_current().unwrap().0.version, "2");
        let left: Vec<_> = std::fs::read_dir(root.path().join("demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "only the manifest and build 2: {left:?}");
    }

    #[test]
    fn a_build_changed_on_disk_is_not_run_and_a_corrupt_manifest_means_the_configured_build() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = Slot::open(root.path(), "demo");
        let r2 = release("2", b"two");
        let p = download(&slot, &r2, b"two");
        slot.install(&r2, &p, None).unwrap();
        let (_, exe) = slot.verified_current().unwrap();
        std::fs::write(&exe, b"tampered").unwrap();
        assert!(slot.verified_current().is_none());
        std::fs::write(root.path().join("demo").join(MANIFEST), b"\0garbage").unwrap();
        let reopened = Slot::open(root.path(), "demo");
        assert_eq!(reopened.manifest, Manifest::default());
    }

    #[test]
    fn partial_downloads_are_kept_for_resume_until_another_build_is_wanted() {
        let root = tempfile::tempdir().unwrap();
        let slot = Slot::open(root.path(), "demo");
        slot.make_dir().unwrap();
        let a = slot.partial_path(&"a".repeat(64));
        let b = slot.partial_path(&"b".repeat(64));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"y").unwrap();
        let _ = Slot::open(root.path(), "demo");
        assert!(a.exists() && b.exists());
        slot.prune(Some(&"a".repeat(64)));
        assert!(a.exists() && !b.exists());
    }
}
