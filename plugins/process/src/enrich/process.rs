//! The `process` of exec and exit events, from what the exec told and what the kernel
//! said at exit.

use std::sync::Arc;

use hids_procfs as procfs;
use hids_types::event::{CharDevice, Container, Event, Process, ProcessRef, Tty};

use super::clocks::Clocks;
use super::facts::Facts;
use crate::table::{keep_args, KEPT_ARGS_BYTES};

/// The process that exec'd, from `facts`; fills the event's fields that follow from it
/// (`container.id`, `hids.pid_ns`, `hids.tty`, `hids.args_truncated`). Returns the
/// process (its parent is the caller's) and the arguments the table keeps.
pub fn exec(
    ev: &mut Event,
    pid: u32,
    facts: Facts,
    clocks: &Clocks,
) -> (Process, Option<Arc<[String]>>) {
    let mut p = Process {
        pid,
        executable: facts.exe,
        working_directory: facts.cwd,
        name: facts.comm,
        ..Default::default()
    };
    let mut args_kept = None;
    if let Some(args) = facts.args {
        if facts.args_truncated {
            ev.hids.args_truncated = Some(true);
        }
        p.command_line = Some(procfs::command_line(&args));
        p.args_count = Some(args.len());
        args_kept = Some(keep_args(prefix_to_keep(&args)));
        p.args = Some(args);
    }
    ev.container = facts.container.map(|id| Container { id });
    ev.hids.pid_ns = facts.pid_ns;
    if let Some(start_ticks) = facts.start_ticks {
        p.entity_id = Some(format!("{pid}-{start_ticks}"));
        p.start = Some(clocks.start_wall(start_ticks));
        p.interactive = Some(facts.tty.is_some());
    }
    p.session_leader = facts.session.map(|sid| ProcessRef {
        pid: sid,
        ..Default::default()
    });
    if let Some((major, minor)) = facts.tty {
        p.tty = Some(Tty {
            char_device: CharDevice { major, minor },
        });
        ev.hids.tty = procfs::tty_name(major, minor);
    }
    (p, args_kept)
}

/// A copy of no more of `args` than the table can keep ([`keep_args`] decides): the
/// whole list is not copied for a prefix of [`KEPT_ARGS_BYTES`].
fn prefix_to_keep(args: &[String]) -> Vec<String> {
    let mut total = 0;
    args.iter()
        .take_while(|a| {
            let before = total;
            total += a.len() + 1;
            before <= KEPT_ARGS_BYTES
        })
        .cloned()
        .collect()
}

/// `process.exit_code` and `hids.exit_signal` from the kernel's wait status: the exit
/// code in bits 8-15, or the terminating signal in bits 0-6 (then the code is 128+N,
/// as a shell shows it).
pub fn exit_code(wait_status: u32) -> (i32, Option<i32>) {
    let signal = (wait_status & 0x7f) as i32;
    if signal == 0 {
        (((wait_status >> 8) & 0xff) as i32, None)
    } else {
        (128 + signal, Some(signal))
    }
}

#[cfg(test)]
mod tests {
    use hids_types::event::{Host, Producer};

    use super::*;

    fn event() -> Event {
        let producer = Producer {
            host: Host {
                id: "h".into(),
                hostname: "h".into(),
            },
            labels: Default::default(),
            plugin: "process".into(),
            run_id: "r".into(),
        };
        producer.event(
            hids_types::Timestamp::now(),
            1,
            "event",
            "process",
            "start",
            "exec",
        )
    }

    #[test]
    fn exec_process_from_every_fact() {
        let mut ev = event();
        let facts = Facts {
            start_ticks: Some(28692),
            comm: Some("cat".into()),
            session: Some(1054),
            tty: Some((136, 1)),
            args: Some(vec!["cat".into(), "a b".into()]),
            args_truncated: true,
            exe: Some("/usr/bin/cat".into()),
            cwd: Some("/home/a".into()),
            container: Some("c0ffee".into()),
            pid_ns: Some(4026531836),
            ..Facts::default()
        };
        let (p, kept) = exec(&mut ev, 3440, facts, &Clocks::now());
        assert_eq!(p.entity_id.as_deref(), Some("3440-28692"));
        assert_eq!(p.name.as_deref(), Some("cat"));
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/cat"));
        assert_eq!(p.working_directory.as_deref(), Some("/home/a"));
        assert_eq!(p.args_count, Some(2));
        assert_eq!(p.command_line.as_deref(), Some("cat 'a b'"));
        assert_eq!(p.interactive, Some(true));
        assert_eq!(p.session_leader.map(|s| s.pid), Some(1054));
        assert!(p.start.is_some());
        assert_eq!(kept.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(ev.hids.tty.as_deref(), Some("pts/1"));
        assert_eq!(ev.hids.args_truncated, Some(true));
        assert_eq!(ev.hids.pid_ns, Some(4026531836));
        assert_eq!(ev.container.map(|c| c.id).as_deref(), Some("c0ffee"));
    }

    #[test]
    fn exec_process_with_nothing_known_is_its_pid() {
        let mut ev = event();
        let (p, kept) = exec(&mut ev, 7, Facts::default(), &Clocks::now());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"pid":7}"#);
        assert!(kept.is_none());
        assert!(ev.hids.args_truncated.is_none() && ev.container.is_none());
    }

    #[test]
    fn the_table_keeps_the_same_arguments_from_a_shorter_copy() {
        let long: Vec<String> = (0..400).map(|i| format!("argument-{i}")).collect();
        let short = vec!["true".to_string()];
        let huge = vec!["x".repeat(KEPT_ARGS_BYTES * 2), "y".into()];
        for args in [long, short, huge, vec![]] {
            let copied = prefix_to_keep(&args);
            assert!(copied.len() <= args.len());
            assert_eq!(keep_args(copied), keep_args(args));
        }
    }

    #[test]
    fn exit_code_or_signal_from_the_wait_status() {
        assert_eq!(exit_code(0), (0, None));
        assert_eq!(exit_code(3 << 8), (3, None));
        assert_eq!(exit_code(9), (137, Some(9)));
        // Killed by SIGSEGV with a core dump (bit 7).
        assert_eq!(exit_code(0x80 | 11), (139, Some(11)));
    }
}
