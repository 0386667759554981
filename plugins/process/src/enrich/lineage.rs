//! Related processes (parent, the process itself for events without a snapshot), as
//! the process table knows them.

use hids_procfs as procfs;
use hids_types::event::{Process, ProcessRef};

use crate::table::{Entry, Table};

/// A related process, as much as the table knows of it.
pub fn process_ref(table: &Table, pid: u32) -> ProcessRef {
    let mut r = ProcessRef {
        pid,
        ..Default::default()
    };
    if let Some(e) = table.get(pid) {
        (r.entity_id, r.name, r.executable) = names(e, pid);
        if let Some(args) = &e.args {
            r.command_line = Some(procfs::command_line(args));
            r.args = Some(args.to_vec());
        }
    }
    r
}

/// What names a known process: entity id, name, executable.
fn names(e: &Entry, pid: u32) -> (Option<String>, Option<String>, Option<String>) {
    (
        e.entity_id(pid),
        e.name.as_deref().map(str::to_owned),
        e.exe.as_deref().map(str::to_owned),
    )
}

/// The parent of a process that exec'd; `before` is what the table knew of the process
/// before this exec.
pub fn parent(table: &Table, ppid: u32, before: &Entry) -> ProcessRef {
    let mut parent = process_ref(table, ppid);
    // Until this exec the process ran its parent's image: when the parent is
    // already forgotten, that copy still names it.
    if parent.executable.is_none() && before.ppid == ppid {
        parent.name = before.name.as_deref().map(str::to_owned);
        parent.executable = before.exe.as_deref().map(str::to_owned);
        if let Some(args) = &before.args {
            parent.command_line = Some(procfs::command_line(args));
            parent.args = Some(args.to_vec());
        }
    }
    parent
}

/// A process as the table knows it, for events that carry no snapshot.
pub fn known_process(table: &Table, pid: u32) -> Process {
    let mut p = Process {
        pid,
        ..Default::default()
    };
    if let Some(e) = table.get(pid) {
        (p.entity_id, p.name, p.executable) = names(e, pid);
        if e.ppid != 0 {
            p.parent = Some(ProcessRef {
                pid: e.ppid,
                ..Default::default()
            });
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::table::keep_args;

    fn bash() -> Entry {
        Entry {
            ppid: 1,
            start_ticks: Some(500),
            name: Some("bash".into()),
            exe: Some("/usr/bin/bash".into()),
            args: Some(keep_args(vec!["bash".into(), "-l".into()])),
            ..Default::default()
        }
    }

    #[test]
    fn known_processes_are_named_with_their_parent_pid() {
        let mut t = Table::new(100, Duration::from_secs(60));
        t.exec(10, bash());
        let r = process_ref(&t, 10);
        assert_eq!(r.entity_id.as_deref(), Some("10-500"));
        assert_eq!(r.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(r.command_line.as_deref(), Some("bash -l"));
        let p = known_process(&t, 10);
        assert_eq!(p.name.as_deref(), Some("bash"));
        assert_eq!(p.parent.map(|p| p.pid), Some(1));
        assert!(p.args.is_none(), "a known process carries no arguments");

        let unknown = process_ref(&t, 99);
        assert_eq!((unknown.pid, unknown.name), (99, None));
        assert!(known_process(&t, 99).parent.is_none());
    }

    #[test]
    fn a_forgotten_parent_is_named_from_the_image_the_child_ran_before_exec() {
        let t = Table::new(100, Duration::from_secs(60));
        let before = Entry { ppid: 10, ..bash() };
        let p = parent(&t, 10, &before);
        assert_eq!(p.pid, 10);
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(p.args, Some(vec!["bash".to_string(), "-l".to_string()]));
        // Another parent than the one the copy came from: not named.
        let other = parent(&t, 11, &before);
        assert!(other.executable.is_none() && other.name.is_none());
    }

    #[test]
    fn a_known_parent_is_named_from_the_table() {
        let mut t = Table::new(100, Duration::from_secs(60));
        t.exec(10, bash());
        let before = Entry {
            ppid: 10,
            exe: Some("/bin/stale".into()),
            ..Default::default()
        };
        let p = parent(&t, 10, &before);
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(p.entity_id.as_deref(), Some("10-500"));
    }
}
