//! The executable and working directory of processes that exit at once, resolved in the
//! kernel at exec (no `/proc` read): each must be what readlink of `/proc/<pid>/exe`
//! and `/proc/<pid>/cwd` shows from the host. Needs root, BTF and python3 (see
//! `common`).
#![allow(clippy::unwrap_used)] // test code: a failure here is a failed test

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{can_run, execs_with_arg, seconds_tag, tag, Plugin, TempDir};
use serde_json::Value;

fn one_exec<'a>(events: &'a [Value], arg: &str) -> &'a Value {
    let found = execs_with_arg(events, arg);
    assert_eq!(found.len(), 1, "execs with {arg}: {found:#?}");
    found[0]
}

fn assert_paths(ev: &Value, exe: &str, cwd: &Path) {
    assert_eq!(ev["process"]["executable"], exe, "{ev:#}");
    assert_eq!(
        ev["process"]["working_directory"],
        cwd.to_str().unwrap(),
        "{ev:#}"
    );
    assert!(ev["hids"]["incomplete"].is_null(), "{ev:#}");
    assert_eq!(ev["hids"]["capture"], "ebpf", "{ev:#}");
}

#[test]
fn exe_and_cwd_are_what_proc_shows_for_processes_gone_at_once() {
    if !can_run() {
        return;
    }
    let plugin = Plugin::start(&["--capture", "ebpf"]);
    let bin = TempDir::new("hids-ebpf-bin");
    let work = TempDir::new("hids-ebpf-cwd");
    let real = std::fs::canonicalize("/bin/true").unwrap();

    // A symlink to the binary: the kernel names the file it opened, the target.
    let link = bin.0.join("link");
    symlink(&real, &link).unwrap();
    let via_link = tag("via-link");
    let status = Command::new(&link)
        .arg(&via_link)
        .current_dir(&work.0)
        .status()
        .unwrap();
    assert!(status.success());

    // A copy of the binary unlinked before its exec (run through its open descriptor):
    // /proc shows the old path with " (deleted)".
    let gone = bin.0.join("gone-true");
    std::fs::copy(&real, &gone).unwrap();
    let deleted = tag("deleted");
    let script = format!(
        "import os\nfd = os.open({gone:?}, os.O_RDONLY)\nos.unlink({gone:?})\n\
         os.execve(fd, ['gone-true', {deleted:?}], {{}})\n",
        gone = gone.to_str().unwrap()
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .current_dir(&work.0)
        .status()
        .unwrap();
    assert!(status.success());

    // An exec of a memfd: "/memfd:<name> (deleted)".
    let memfd = tag("memfd");
    let script = format!(
        "import os\nfd = os.memfd_create({memfd:?})\n\
         os.write(fd, open({real:?}, 'rb').read())\n\
         os.execve(fd, ['memfd-true', {memfd:?}], {{}})\n",
        real = real.to_str().unwrap()
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .current_dir("/")
        .status()
        .unwrap();
    assert!(status.success());

    let events = plugin.wait_events("the three execs", Duration::from_secs(20), |evs| {
        [&via_link, &deleted, &memfd]
            .iter()
            .all(|a| !execs_with_arg(evs, a).is_empty())
    });
    assert_paths(
        one_exec(&events, &via_link),
        real.to_str().unwrap(),
        &work.0,
    );
    assert_paths(
        one_exec(&events, &deleted),
        &format!("{} (deleted)", gone.display()),
        &work.0,
    );
    assert_paths(
        one_exec(&events, &memfd),
        &format!("/memfd:{memfd} (deleted)"),
        Path::new("/"),
    );
}

/// A file in a bind mount made in a private mount namespace: the walk crosses the mount
/// to where it is mounted, as readlink shows it from the host (checked on a process that
/// stays long enough to be read).
#[test]
fn paths_cross_mount_points_as_proc_shows_them() {
    if !can_run() {
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        common::skip("needs unshare (Debian: util-linux)");
        return;
    }
    let plugin = Plugin::start(&["--capture", "ebpf"]);
    let dir = TempDir::new("hids-ebpf-mnt");
    let (src, mnt) = (dir.0.join("src"), dir.0.join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::copy("/bin/sleep", src.join("nap")).unwrap();
    // sleep(1) takes every argument as a duration: the tags are tiny ones.
    let quick = seconds_tag();
    let slow = seconds_tag();
    let script = format!(
        "mount --make-rprivate / && mount --bind {src} {mnt} && cd {mnt} && \
         ./nap {quick} && exec ./nap 2 {slow}",
        src = src.display(),
        mnt = mnt.display()
    );
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .spawn()
        .unwrap();
    let events = plugin.wait_events(
        "the execs in the namespace",
        Duration::from_secs(20),
        |evs| !execs_with_arg(evs, &quick).is_empty() && !execs_with_arg(evs, &slow).is_empty(),
    );
    let pid = child.id();
    let shown = |what: &str| {
        std::fs::read_link(format!("/proc/{pid}/{what}"))
            .unwrap()
            .into_os_string()
            .into_string()
            .unwrap()
    };
    let (exe, cwd) = (shown("exe"), shown("cwd"));
    assert_eq!(exe, mnt.join("nap").to_str().unwrap());
    assert!(child.wait().unwrap().success());
    for arg in [&quick, &slow] {
        assert_paths(one_exec(&events, arg), &exe, Path::new(&cwd));
    }
}

/// A plugin run chrooted (as fresh-machine and rescue shells run it): a file inside its
/// chroot is named from the chroot, as `/proc` shows it to the plugin, not by the host's
/// path to it (the kernel walk stops at the reader's root, as d_path does).
#[test]
fn paths_are_named_from_the_plugins_own_root_under_chroot() {
    if !can_run() {
        return;
    }
    for tool in ["unshare", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            common::skip(&format!("needs {tool} (Debian: util-linux)"));
            return;
        }
    }
    let dir = TempDir::new("hids-ebpf-chroot");
    let root = dir.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // The whole host tree again under `root`, in a mount namespace of the plugin's own
    // (gone with it), and the plugin chrooted there.
    let enter = format!(
        "mount --make-rprivate / && mount --rbind / {root} && exec chroot {root} \"$@\"",
        root = root.display()
    );
    let plugin = Plugin::start_under(
        &["unshare", "-m", "sh", "-c", &enter, "sh"],
        &["--capture", "ebpf"],
    );
    let real = std::fs::canonicalize("/bin/true").unwrap();
    let arg = tag("chrooted");
    // Run in the plugin's namespace, root and working directory ("/" in the chroot).
    let status = Command::new("nsenter")
        .args(["-t", &plugin.pid().to_string(), "-m", "-r", "-w"])
        .arg(&real)
        .arg(&arg)
        .status()
        .unwrap();
    assert!(status.success());
    // nsenter's own exec carries the tag too; it runs outside the chroot.
    let of_true = |evs: &[Value]| -> Option<Value> {
        execs_with_arg(evs, &arg)
            .into_iter()
            .find(|ev| ev["process"]["name"] == "true")
            .cloned()
    };
    let events = plugin.wait_events("the chrooted exec", Duration::from_secs(20), |evs| {
        of_true(evs).is_some()
    });
    let ev = of_true(&events).unwrap();
    assert_paths(&ev, real.to_str().unwrap(), Path::new("/"));
}

/// A working directory deeper than the kernel walk goes (64 steps): the kernel leaves
/// it empty and user space reads `/proc` instead, for a process still there to read.
#[test]
fn a_path_too_deep_for_the_kernel_walk_comes_from_proc() {
    if !can_run() {
        return;
    }
    let plugin = Plugin::start(&["--capture", "ebpf"]);
    let top = TempDir::new("hids-ebpf-deep");
    let mut deep = top.0.clone();
    for i in 0..70 {
        deep.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let arg = seconds_tag();
    let status = Command::new("/bin/sleep")
        .args(["1", &arg])
        .current_dir(&deep)
        .status()
        .unwrap();
    assert!(status.success());
    let events = plugin.wait_events("the deep exec", Duration::from_secs(20), |evs| {
        !execs_with_arg(evs, &arg).is_empty()
    });
    let ev = one_exec(&events, &arg);
    assert_eq!(
        ev["process"]["working_directory"],
        deep.to_str().unwrap(),
        "{ev:#}"
    );
}
