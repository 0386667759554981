//! Listening sockets between scans: the first scan reports every listener (a
//! snapshot), later scans only what changed (`listening` for a new one,
//! `listener_closed` for one gone). A listener is its socket (inode): a service that
//! restarts closes one and opens another, and both are reported.

use std::collections::HashMap;
use std::io;

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

pub struct Listeners {
    known: HashMap<u64, (SocketRow, Vec<Holder>)>,
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
        self.known.get(&inode).map(|(_, h)| h.as_slice())
    }

    /// Takes a listener scan and reports it: everything the first time, changes after.
    ///
    /// # Errors
    /// When the output is closed.
    pub fn update(&mut self, scan: &mut Scan, reporter: &mut Reporter) -> io::Result<()> {
        let first = self.stats.scans == 0;
        self.stats.scans += 1;
        let capture = scan.stats.method.map_or("unknown", |m| m.name());
        let mut now: HashMap<u64, (SocketRow, Vec<Holder>)> = HashMap::new();
        let mut over = 0u64;
        group_by_socket(&mut scan.rows, |row, holders| {
            if !row.is_listener() {
                return;
            }
            if now.len() >= self.max {
                over += 1;
                return;
            }
            now.insert(row.inode, (row.clone(), holders.to_vec()));
        });
        self.stats.over_limit = over;
        scan.stats.sockets = now.len() as u64;
        let mut result = Ok(());
        let mut emit = |row: &SocketRow, holders: &[Holder], line: Line| {
            if result.is_ok() {
                result = reporter.socket(scan.at, row, holders, line, None, capture);
            }
        };
        if first {
            for (row, holders) in now.values() {
                emit(row, holders, Line::Snapshot);
            }
        } else {
            for (inode, (row, holders)) in &now {
                if !self.known.contains_key(inode) {
                    self.stats.opened += 1;
                    emit(row, holders, Line::Opened);
                }
            }
            for (inode, (row, holders)) in &self.known {
                if !now.contains_key(inode) {
                    self.stats.closed += 1;
                    emit(row, holders, Line::Closed);
                }
            }
        }
        self.known = now;
        self.stats.known = self.known.len();
        result
    }
}
