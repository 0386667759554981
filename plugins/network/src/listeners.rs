//! Listening sockets between scans: the first scan reports every listener (a
//! snapshot), later scans only what changed (`listening` for a new one,
//! `listener_closed` for one gone). A listener is its socket (inode): a service that
//! restarts closes one and opens another, and both are reported.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{group_by_socket, Holder, SocketRow};
use crate::report::{Line, Reporter};
use crate::scan::Scan;

#[derive(Debug, Default, Clone, Serialize)]
pub struct ListenerStats {
    /// Listeners known after the last scan.
    pub known: usize,
    /// Reported as opened / closed since the plugin started (not the first snapshot).
    pub opened: u64,
    pub closed: u64,
    /// Listeners beyond `--max-listeners`, neither tracked nor reported.
    pub over_limit: u64,
    pub scans: u64,
}

/// A listener as last seen: its socket, holders, and the first holder's pid and name
/// (a closed listener's holder has often exited by the time it is reported).
struct Known {
    row: SocketRow,
    holders: Vec<Holder>,
    name: Option<(u32, Arc<str>)>,
}

pub struct Listeners {
    known: HashMap<u64, Known>,
    max: usize,
    pub stats: ListenerStats,
}

impl Listeners {
    pub fn new(max: usize) -> Self {
        Listeners {
            known: HashMap::new(),
            max: max.max(1),
            stats: ListenerStats::default(),
        }
    }

    /// The holders the last scan found for listener `inode`.
    pub fn holders(&self, inode: u64) -> Option<&[Holder]> {
        self.known.get(&inode).map(|k| k.holders.as_slice())
    }

    /// Every remembered listener with its holders.
    pub fn remembered(&self) -> impl Iterator<Item = (u64, &[Holder])> {
        self.known.iter().map(|(i, k)| (*i, k.holders.as_slice()))
    }

    /// The listeners of a scan, by inode; past `max` counted and left out.
    fn listeners_of(&mut self, scan: &mut Scan, reporter: &mut Reporter) -> HashMap<u64, Known> {
        let mut now: HashMap<u64, Known> = HashMap::new();
        let mut over = 0u64;
        group_by_socket(&mut scan.rows, |row, holders| {
            if !row.is_listener() {
                return;
            }
            if now.len() >= self.max {
                over += 1;
                return;
            }
            // The name learnt when this holder was first seen, while it is the same pid.
            let name = holders.first().and_then(|h| {
                let kept = self.known.get(&row.inode).and_then(|k| k.name.clone());
                match kept {
                    Some((pid, name)) if pid == h.pid => Some((pid, name)),
                    _ => reporter.name_of(h.pid).map(|n| (h.pid, n)),
                }
            });
            now.insert(
                row.inode,
                Known {
                    row: row.clone(),
                    holders: holders.to_vec(),
                    name,
                },
            );
        });
        self.stats.over_limit = over;
        now
    }

    /// Takes a scan without reporting anything: the baseline later scans are compared
    /// with and confirmed against.
    pub fn remember(&mut self, scan: &mut Scan, reporter: &mut Reporter) {
        self.stats.scans += 1;
        self.known = self.listeners_of(scan, reporter);
        self.stats.known = self.known.len();
    }

    /// Takes a listener scan and reports it: everything the first time, changes after.
    ///
    /// # Errors
    /// When the output is closed.
    pub fn update(&mut self, scan: &mut Scan, reporter: &mut Reporter) -> io::Result<()> {
        let first = self.stats.scans == 0;
        self.stats.scans += 1;
        let capture = scan.stats.method.map_or("unknown", |m| m.name());
        let now = self.listeners_of(scan, reporter);
        scan.stats.sockets = now.len() as u64;
        let mut result = Ok(());
        let mut emit = |k: &Known, line: Line| {
            if result.is_ok() {
                if let Some((pid, name)) = &k.name {
                    reporter.set_name(*pid, name.clone());
                }
                result = reporter.socket(scan.at, &k.row, &k.holders, line, None, capture);
            }
        };
        if first {
            for k in now.values() {
                emit(k, Line::Snapshot);
            }
        } else {
            for (inode, k) in &now {
                if !self.known.contains_key(inode) {
                    self.stats.opened += 1;
                    emit(k, Line::Opened);
                }
            }
            for (inode, k) in &self.known {
                if !now.contains_key(inode) {
                    self.stats.closed += 1;
                    emit(k, Line::Closed);
                }
            }
        }
        self.known = now;
        self.stats.known = self.known.len();
        result
    }
}
