//! Which build of the agent itself runs: the installed (packaged) binary, or an update
//! of it installed under `<state_dir>/versions/agent/` (a [`Slot`] named `agent`).
//!
//! The installed binary is always the launcher. Started by the service manager or a
//! person, it reads the agent's manifest and `exec`s the current build (same pid, same
//! arguments, [`LAUNCHED_ENV`] naming the build), or runs itself when there is none. A
//! build on trial is counted first: each start writes `{dir, starts}` durably to
//! `<state_dir>/versions/agent.starts.json` *before* the `exec`, and a start that would
//! be the fourth ([`MAX_TRIAL_STARTS`]) rolls the build back instead (marked bad in the
//! manifest, the previous build or the installed binary runs). The running build
//! clears the count when it passes its health gate (`Updater::agent_judged`, then
//! [`forget_starts`]). After the master
//! installed a new build of itself, [`reexec`] hands over to the launcher again, so the
//! launcher, never the old build, chooses.
//!
//! Why an A/B switch with a start counter in the launcher (issue 18, item 4): the
//! service manager (systemd `Restart=always`) starts the installed binary again
//! whenever a build dies, so a new build that crashes at start, or cannot even be
//! `exec`ed, is rolled back by the old code after three starts without the new build
//! doing anything right: the rollback does not depend on the new binary working
//! (Elastic Agent's rollback had to restart a crashed agent and sometimes could not,
//! elastic-agent#3268). A build that runs but never confirms is rolled back by itself
//! (the master's health gate) or by the counter at its next death. The service
//! manager's restart policy alone could not tell a new build from the old one, and a
//! watchdog process would be one more thing to keep alive.
//!
//! The counter lives beside the slot's directory, not in it: [`Slot`] removes every
//! file of its directory that its manifest does not name.
//!
//! A failed `exec` has already reset SIGPIPE to its default in this process (the
//! standard library does so before `execve`, and the agent relies on it being
//! ignored), so after one the launcher starts itself afresh rather than running on.
//!
//! Deliberately absent: downloading and installing builds (the master does that with
//! the same [`Slot`] as for plugins) and the health gate itself.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::store::{write_durably, Build, Slot};

/// Set for a build the launcher `exec`ed: its directory name in the slot.
pub const LAUNCHED_ENV: &str = "HIDS_AGENT_LAUNCHED";
/// The launcher's own path (its `current_exe` when it started), inherited by the build.
pub const LAUNCHER_ENV: &str = "HIDS_AGENT_LAUNCHER";
/// Starts a build on trial gets to pass its health gate.
pub const MAX_TRIAL_STARTS: u32 = 3;
/// The agent's own builds: this slot under `<state_dir>/versions/`.
pub const AGENT_SLOT: &str = "agent";
const VERSIONS_DIR: &str = "versions";
/// Beside the slot's directory: the slot prunes files its manifest does not name. A
/// dot cannot be in a plugin name, so no slot is ever called this.
const STARTS_FILE: &str = "agent.starts.json";
/// The counter is a few dozen bytes; anything longer is not one.
const MAX_STARTS_BYTES: u64 = 4096;

/// The launcher's path, kept when it runs as itself (for [`reexec`] and
/// [`installed_exe`], even after a package upgrade replaced the file).
static LAUNCHER: OnceLock<PathBuf> = OnceLock::new();

/// What runs in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The installed binary.
    Installed,
    /// An updated build the launcher started: its version, and its directory in the slot.
    Build { version: String, dir: String },
}

/// The start counter of the build on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Starts {
    /// The build's directory in the slot; a counter for another build counts from 0.
    pub dir: String,
    /// Times the launcher started it.
    pub starts: u32,
}

/// What the launcher does with the slot as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// No updated build: run as the installed binary.
    Installed,
    /// `exec` this build, after writing `starts` when it is on trial.
    Run {
        build: Build,
        exe: PathBuf,
        starts: Option<Starts>,
    },
    /// The current build may not run again: roll it back, then choose again.
    RollBack { reason: String },
}

/// First thing `hids-agent` does when it runs the master (after reading the config and
/// starting the stderr log, before anything else): decides which build runs and
/// `exec`s it, in which case it does not return.
pub fn launch(state_dir: &Path) -> Launch {
    if let Some(dir) = std::env::var_os(LAUNCHED_ENV) {
        return Launch::Build {
            version: version_of(state_dir, &dir),
            dir: dir.to_string_lossy().into_owned(),
        };
    }
    let launcher = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            tracing::error!("cannot tell where this binary is ({e}); running the installed build, not an update");
            return Launch::Installed;
        }
    };
    let _ = LAUNCHER.set(launcher.clone());
    let versions = state_dir.join(VERSIONS_DIR);
    let starts_path = versions.join(STARTS_FILE);
    let mut slot = Slot::open(&versions, AGENT_SLOT);
    if package_replaced(&slot, &launcher) {
        if let Err(e) = slot.back_to_installed() {
            tracing::warn!("cannot record the switch back to the installed binary: {e}");
        }
        return Launch::Installed;
    }
    // One roll back for a build that may not run, then the installed binary: never a
    // loop.
    let mut rolled_back = false;
    loop {
        match choose(&slot, read_starts(&starts_path).as_ref()) {
            Choice::Installed => return Launch::Installed,
            Choice::RollBack { reason } => {
                if rolled_back || !roll_back(&mut slot, &starts_path, &reason) {
                    return Launch::Installed;
                }
                rolled_back = true;
            }
            Choice::Run { build, exe, starts } => {
                return run_build(&mut slot, &starts_path, &launcher, &build, &exe, starts);
            }
        }
    }
}

/// The installed binary is not the one the current build was installed over (a package
/// upgrade replaced it): the package manager's build wins, so that an upgrade or a
/// security fix installed with apt takes effect.
fn package_replaced(slot: &Slot, launcher: &Path) -> bool {
    let (Some(base), Some(current)) = (&slot.manifest.base, &slot.manifest.current) else {
        return false;
    };
    match super::store::sha256_of(launcher) {
        Ok(sum) if sum.eq_ignore_ascii_case(base) => false,
        Ok(_) => {
            tracing::info!(
                "{} changed since agent build {} was installed over it (a package upgrade?): running it instead",
                launcher.display(),
                current.version
            );
            true
        }
        Err(e) => {
            tracing::warn!(
                "cannot read {} ({e}); keeping agent build {}",
                launcher.display(),
                current.version
            );
            false
        }
    }
}

/// Counts a trial start and `exec`s the build. Returns only when it could not: after an
/// `exec` failed, the build is rolled back and the launcher starts afresh (each such
/// restart follows a roll back committed to disk, so there are at most two).
fn run_build(
    slot: &mut Slot,
    starts_path: &Path,
    launcher: &Path,
    build: &Build,
    exe: &Path,
    starts: Option<Starts>,
) -> Launch {
    if let Some(starts) = &starts {
        if let Err(e) = write_starts(starts_path, starts) {
            // Uncounted, a build that dies at start would be started forever.
            tracing::error!(
                "cannot count the starts of agent build {} in {} ({e}); running the installed build",
                build.version,
                starts_path.display()
            );
            return Launch::Installed;
        }
    }
    log_start(build, exe, starts.as_ref());
    let e = exec(exe, &build.dir, launcher);
    let reason = format!("{} cannot be executed: {e}", exe.display());
    if roll_back(slot, starts_path, &reason) {
        // SIGPIPE is no longer ignored in this process (see the module doc).
        let e = exec_launcher(launcher);
        tracing::error!(
            "cannot start {} again ({e}); running on",
            launcher.display()
        );
    }
    Launch::Installed
}

/// What the launcher does with `slot`, given the start counter on disk. Re-hashes the
/// current build's file (an I/O, but nothing is written).
pub fn choose(slot: &Slot, counter: Option<&Starts>) -> Choice {
    let Some(current) = &slot.manifest.current else {
        return Choice::Installed;
    };
    let starts = if slot.manifest.trial {
        let so_far = counter
            .filter(|c| c.dir == current.dir)
            .map_or(0, |c| c.starts);
        if so_far >= MAX_TRIAL_STARTS {
            return Choice::RollBack {
                reason: format!("did not pass its health gate in {MAX_TRIAL_STARTS} starts"),
            };
        }
        Some(Starts {
            dir: current.dir.clone(),
            starts: so_far.saturating_add(1),
        })
    } else {
        None
    };
    match slot.verified_current() {
        Some((build, exe)) => Choice::Run { build, exe, starts },
        None => Choice::RollBack {
            reason: format!(
                "{} is missing or changed since it was installed",
                slot.executable(current).display()
            ),
        },
    }
}

/// The running build passed its health gate, or the master rolled it back: the start
/// counter goes, so a later install of the same build counts from 0.
pub fn forget_starts(state_dir: &Path) {
    remove_starts(&state_dir.join(VERSIONS_DIR).join(STARTS_FILE));
}

/// After the master installed a new build of itself and stopped everything: `exec`s
/// the launcher again with the same arguments, so that it, not this build, chooses.
/// Returns only on failure; the process should then exit (non-zero) and let the
/// service manager start the launcher: SIGPIPE is no longer ignored (see the module
/// doc).
pub fn reexec() -> io::Error {
    match installed_exe() {
        Ok(launcher) => exec_launcher(&launcher),
        Err(e) => e,
    }
}

/// The installed (packaged) binary, whichever build runs: where the built-in plugins
/// are (beside it), and what [`reexec`] starts.
///
/// # Errors
/// When this process runs as the installed binary and `/proc/self/exe` is unreadable.
pub fn installed_exe() -> io::Result<PathBuf> {
    if std::env::var_os(LAUNCHED_ENV).is_some() {
        if let Some(path) = std::env::var_os(LAUNCHER_ENV) {
            return Ok(PathBuf::from(path));
        }
    }
    match LAUNCHER.get() {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe(),
    }
}

/// The version of the build in `dir`, as its manifest says (the directory name itself
/// if it is not there any more).
fn version_of(state_dir: &Path, dir: &OsStr) -> String {
    let slot = Slot::open(&state_dir.join(VERSIONS_DIR), AGENT_SLOT);
    let named = [&slot.manifest.current, &slot.manifest.previous]
        .into_iter()
        .flatten()
        .find(|b| OsStr::new(&b.dir) == dir)
        .map(|b| b.version.clone());
    named.unwrap_or_else(|| dir.to_string_lossy().into_owned())
}

fn log_start(build: &Build, exe: &Path, starts: Option<&Starts>) {
    match starts {
        Some(s) => tracing::info!(
            "starting agent build {} ({}) on trial: start {} of {MAX_TRIAL_STARTS}",
            build.version,
            exe.display(),
            s.starts
        ),
        None => tracing::info!("starting agent build {} ({})", build.version, exe.display()),
    }
}

/// Rolls the current build back (logged); `false` when there was none or the manifest
/// could not be written (then the installed binary runs, and the next start tries
/// again).
fn roll_back(slot: &mut Slot, starts_path: &Path, reason: &str) -> bool {
    match slot.roll_back(reason, false) {
        Ok(Some(bad)) => {
            remove_starts(starts_path);
            let now = slot.manifest.current.as_ref().map_or_else(
                || "the installed build".to_owned(),
                |b| format!("build {}", b.version),
            );
            tracing::error!(
                "agent build {} rolled back to {now}: {reason}; not run again until the desired state names another build first",
                bad.version
            );
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!(
                "cannot roll back agent build ({reason}): {e}; running the installed build"
            );
            false
        }
    }
}

/// `exec`s `exe` as the build in `dir` with this process's arguments; returns only on
/// failure.
fn exec(exe: &Path, dir: &str, launcher: &Path) -> io::Error {
    let (arg0, args) = own_args();
    Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(LAUNCHED_ENV, dir)
        .env(LAUNCHER_ENV, launcher)
        .exec()
}

/// `exec`s the launcher with this process's arguments, to choose afresh.
fn exec_launcher(launcher: &Path) -> io::Error {
    let (arg0, args) = own_args();
    Command::new(launcher)
        .arg0(arg0)
        .args(args)
        .env_remove(LAUNCHED_ENV)
        .env_remove(LAUNCHER_ENV)
        .exec()
}

/// `argv[0]` (kept, so `ps` still shows `hids-agent`) and the rest.
fn own_args() -> (OsString, impl Iterator<Item = OsString>) {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("hids-agent"));
    (arg0, args)
}

/// The counter on disk; a missing, unreadable or foreign file counts as none (logged
/// unless missing): the launcher rewrites it before every trial start anyway.
fn read_starts(path: &Path) -> Option<Starts> {
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(MAX_STARTS_BYTES + 1).read_to_end(&mut bytes));
    match read {
        Ok(_) if bytes.len() as u64 > MAX_STARTS_BYTES => {
            tracing::warn!(
                "{}: over {MAX_STARTS_BYTES} bytes, not a start counter; counting from 0",
                path.display()
            );
            None
        }
        Ok(_) => match serde_json::from_slice(&bytes) {
            Ok(starts) => Some(starts),
            Err(e) => {
                tracing::warn!(
                    "{}: not a start counter ({e}); counting from 0",
                    path.display()
                );
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; counting from 0", path.display());
            None
        }
    }
}

fn write_starts(path: &Path, starts: &Starts) -> io::Result<()> {
    let bytes = serde_json::to_vec(starts).map_err(io::Error::other)?;
    write_durably(path, &bytes)
}

/// Best effort: a counter left behind only matters if the same build is installed
/// again, which then gets fewer starts.
fn remove_starts(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::desired::Release;
    use sha2::{Digest, Sha256};

    /// Set for the copy of this test binary that plays the launcher: the state_dir.
    const CHILD_STATE: &str = "HIDS_LAUNCH_TEST_STATE";
    const CHILD_TEST: &str = "update::launch::tests::launcher_child";

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

    /// Installs `content` as build `version` of the agent, on trial; the slot after it.
    fn install(state: &Path, version: &str, content: &[u8]) -> Slot {
        let mut slot = Slot::open(&state.join(VERSIONS_DIR), AGENT_SLOT);
        slot.make_dir().unwrap();
        let r = release(version, content);
        let partial = slot.partial_path(&r.sha256);
        std::fs::write(&partial, content).unwrap();
        slot.install(&r, &partial, None).unwrap();
        slot
    }

    #[test]
    fn a_package_upgrade_of_the_installed_binary_takes_over_from_the_agent_build() {
        let state = tempfile::tempdir().unwrap();
        let launcher = state.path().join("hids-agent");
        std::fs::write(&launcher, b"installed 1").unwrap();
        let mut slot = Slot::open(&state.path().join(VERSIONS_DIR), AGENT_SLOT);
        slot.make_dir().unwrap();
        let r = release("2", b"two");
        let partial = slot.partial_path(&r.sha256);
        std::fs::write(&partial, b"two").unwrap();
        let base = crate::update::store::sha256_of(&launcher).unwrap();
        slot.install(&r, &partial, Some(base)).unwrap();
        assert!(
            !package_replaced(&slot, &launcher),
            "the same installed binary"
        );
        std::fs::write(&launcher, b"installed 2, from apt").unwrap();
        assert!(package_replaced(&slot, &launcher));
        slot.back_to_installed().unwrap();
        assert!(matches!(choose(&slot, None), Choice::Installed));
        assert_eq!(slot.manifest.previous.unwrap().version, "2");
    }

    /// A build that records how it was started in `<state>/ran-<version>`.
    fn recording_build(state: &Path, version: &str) -> Vec<u8> {
        let out = state.join(format!("ran-{version}"));
        format!(
            "#!/bin/sh\nprintf '%s|%s|%s\\n' \"${LAUNCHED_ENV}\" \"${LAUNCHER_ENV}\" \"$*\" > '{}'\n",
            out.display()
        )
        .into_bytes()
    }

    fn starts_path(state: &Path) -> PathBuf {
        state.join(VERSIONS_DIR).join(STARTS_FILE)
    }

    /// Runs this test binary as the launcher on `state` (see [`launcher_child`]).
    fn run_launcher(state: &Path) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_STATE, state)
            .env_remove(LAUNCHED_ENV)
            .env_remove(LAUNCHER_ENV)
            .output()
            .unwrap()
    }

    /// Not a test of its own: the launcher, in a copy of this binary the tests start
    /// (an `exec` would replace the test runner). Writes what it ran as to
    /// `<state>/outcome` when it did not `exec`.
    #[test]
    fn launcher_child() {
        let Some(state) = std::env::var_os(CHILD_STATE) else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
        let state = PathBuf::from(state);
        let outcome = launch(&state);
        std::fs::write(state.join("outcome"), format!("{outcome:?}")).unwrap();
    }

    #[test]
    fn nothing_installed_means_the_installed_binary() {
        let state = tempfile::tempdir().unwrap();
        let slot = Slot::open(&state.path().join(VERSIONS_DIR), AGENT_SLOT);
        assert_eq!(choose(&slot, None), Choice::Installed);
    }

    #[test]
    fn a_trial_build_gets_three_counted_starts_then_is_rolled_back() {
        let state = tempfile::tempdir().unwrap();
        let slot = install(state.path(), "2", b"two");
        let dir = slot.manifest.current.clone().unwrap().dir;
        let mut counter = None;
        for n in 1..=MAX_TRIAL_STARTS {
            let Choice::Run { build, exe, starts } = choose(&slot, counter.as_ref()) else {
                panic!("start {n} runs the build");
            };
            assert_eq!(build.version, "2");
            assert_eq!(std::fs::read(&exe).unwrap(), b"two");
            let starts = starts.unwrap();
            assert_eq!((starts.dir.as_str(), starts.starts), (dir.as_str(), n));
            counter = Some(starts);
        }
        assert_eq!(
            choose(&slot, counter.as_ref()),
            Choice::RollBack {
                reason: "did not pass its health gate in 3 starts".into()
            }
        );
        // A counter left by another build does not count against this one.
        let other = Starts {
            dir: "1-aaaaaaaaaaaa".into(),
            starts: 9,
        };
        let Choice::Run { starts, .. } = choose(&slot, Some(&other)) else {
            panic!("runs");
        };
        assert_eq!(starts.unwrap().starts, 1);
    }

    #[test]
    fn a_confirmed_build_runs_uncounted_and_a_changed_one_is_rolled_back() {
        let state = tempfile::tempdir().unwrap();
        let mut slot = install(state.path(), "2", b"two");
        slot.confirm().unwrap();
        let Choice::Run { starts, exe, .. } = choose(&slot, None) else {
            panic!("runs");
        };
        assert_eq!(starts, None);
        std::fs::write(&exe, b"tampered").unwrap();
        let Choice::RollBack { reason } = choose(&slot, None) else {
            panic!("not run");
        };
        assert!(reason.contains("missing or changed"), "{reason}");
        std::fs::remove_file(&exe).unwrap();
        assert!(matches!(choose(&slot, None), Choice::RollBack { .. }));
    }

    #[test]
    fn a_corrupt_or_huge_counter_counts_from_zero() {
        let state = tempfile::tempdir().unwrap();
        let path = state.path().join(STARTS_FILE);
        assert_eq!(read_starts(&path), None);
        std::fs::write(&path, b"{\"dir\": 3").unwrap();
        assert_eq!(read_starts(&path), None);
        std::fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert_eq!(read_starts(&path), None);
        let starts = Starts {
            dir: "2-abc".into(),
            starts: 2,
        };
        write_starts(&path, &starts).unwrap();
        assert_eq!(read_starts(&path), Some(starts));
    }

    #[test]
    fn the_launcher_counts_then_execs_the_trial_build_with_its_arguments() {
        let state = tempfile::tempdir().unwrap();
        let content = recording_build(state.path(), "2");
        let slot = install(state.path(), "2", &content);
        let dir = slot.manifest.current.clone().unwrap().dir;
        let out = run_launcher(state.path());
        assert!(out.status.success(), "{out:?}");
        assert!(!state.path().join("outcome").exists(), "it exec'd: {out:?}");
        let ran = std::fs::read_to_string(state.path().join("ran-2")).unwrap();
        let launcher = std::env::current_exe().unwrap();
        assert_eq!(
            ran.trim_end(),
            format!(
                "{dir}|{}|--exact {CHILD_TEST} --nocapture --test-threads=1",
                launcher.display()
            )
        );
        let counter = read_starts(&starts_path(state.path())).unwrap();
        assert_eq!((counter.dir, counter.starts), (dir, 1));
    }

    #[test]
    fn an_exhausted_trial_build_is_rolled_back_and_the_previous_build_runs() {
        let state = tempfile::tempdir().unwrap();
        let mut slot = install(state.path(), "2", &recording_build(state.path(), "2"));
        slot.confirm().unwrap();
        let slot = install(state.path(), "3", &recording_build(state.path(), "3"));
        let bad = slot.manifest.current.clone().unwrap();
        let counter = Starts {
            dir: bad.dir.clone(),
            starts: MAX_TRIAL_STARTS,
        };
        write_starts(&starts_path(state.path()), &counter).unwrap();
        let out = run_launcher(state.path());
        assert!(out.status.success(), "{out:?}");
        assert!(!state.path().join("ran-3").exists());
        let ran = std::fs::read_to_string(state.path().join("ran-2")).unwrap();
        assert!(ran.starts_with("2-"), "{ran}");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(
                "agent build 3 rolled back to build 2: did not pass its health gate in 3 starts"
            ),
            "{log}"
        );
        let slot = Slot::open(&state.path().join(VERSIONS_DIR), AGENT_SLOT);
        assert_eq!(slot.manifest.current.as_ref().unwrap().version, "2");
        assert!(!slot.manifest.trial);
        assert_eq!(slot.manifest.bad.len(), 1);
        assert_eq!(slot.manifest.bad[0].version, "3");
        assert!(!starts_path(state.path()).exists());
        assert!(!state
            .path()
            .join(VERSIONS_DIR)
            .join(AGENT_SLOT)
            .join(&bad.dir)
            .exists());
    }

    #[test]
    fn a_build_that_cannot_be_executed_is_rolled_back_and_the_launcher_starts_afresh() {
        use std::os::unix::fs::PermissionsExt as _;
        let state = tempfile::tempdir().unwrap();
        let slot = install(state.path(), "2", &recording_build(state.path(), "2"));
        let (_, exe) = slot.verified_current().unwrap();
        // Same bytes, no execute bit: execve refuses it (EACCES), even for root.
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = run_launcher(state.path());
        assert!(out.status.success(), "{out:?}");
        assert!(!state.path().join("ran-2").exists());
        // The launcher started afresh and, nothing being left, ran as itself.
        assert_eq!(
            std::fs::read_to_string(state.path().join("outcome")).unwrap(),
            "Installed"
        );
        let slot = Slot::open(&state.path().join(VERSIONS_DIR), AGENT_SLOT);
        assert_eq!(slot.manifest.current, None);
        assert!(
            slot.manifest.bad[0].reason.contains("cannot be executed"),
            "{:?}",
            slot.manifest.bad
        );
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("agent build 2 rolled back to the installed build"),
            "{log}"
        );
    }
}
