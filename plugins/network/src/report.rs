//! Sockets and connections as ECS events, written to the master (or stdout): one place
//! that knows the event shapes docs/network.md describes.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use hids_plugin_sdk::Output;
use hids_types::event::{Endpoint, Event, Network, Process, Producer, Socket, SocketOwner, User};
use hids_types::Timestamp;

use crate::model::{Holder, SocketRow, Transport};
use crate::record::{ConnEvent, Direction};

/// Holders listed in `hids.socket.owners` beyond the first; the rest are counted.
const MAX_OWNERS: usize = 16;
/// Process names remembered between clears (one snapshot's worth of pids).
const MAX_NAMES: usize = 65_536;

/// What a socket line is: part of a snapshot (`event.kind: state`) or a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A listener or connection as a snapshot found it.
    Snapshot,
    /// A listener that appeared since the last scan.
    Opened,
    /// A listener that is gone since the last scan.
    Closed,
}

pub struct Reporter {
    producer: Producer,
    out: Output,
    seq: u64,
    buf: Vec<u8>,
    proc_root: String,
    names: HashMap<u32, Option<Arc<str>>>,
    /// The operator's command the lines being written answer.
    pub command_id: Option<String>,
}

impl Reporter {
    pub fn new(producer: Producer, out: Output, proc_root: &str) -> Self {
        Reporter {
            producer,
            out,
            seq: 0,
            buf: Vec::with_capacity(1024),
            proc_root: proc_root.to_owned(),
            names: HashMap::new(),
            command_id: None,
        }
    }

    /// Events written so far: the last `event.sequence`.
    pub fn emitted(&self) -> u64 {
        self.seq
    }

    /// Forgets process names: a pid seen in an earlier snapshot may be another process.
    pub fn forget_names(&mut self) {
        self.names.clear();
    }

    /// One socket with its holders. `direction` is the host's point of view, when known.
    pub fn socket(
        &mut self,
        at: Timestamp,
        row: &SocketRow,
        holders: &[Holder],
        line: Line,
        direction: Option<&'static str>,
        capture: &'static str,
    ) -> io::Result<()> {
        let listener = row.is_listener();
        let (kind, type_, action) = match (line, listener) {
            (Line::Snapshot, true) => ("state", "info", "listening"),
            (Line::Snapshot, false) => ("state", "connection", "connection"),
            (Line::Opened, _) => ("event", "start", "listening"),
            (Line::Closed, _) => ("event", "end", "listener_closed"),
        };
        let mut ev = self.producer.event(at, 0, kind, "network", type_, action);
        ev.network = Some(network(row.transport, row.local.is_ipv4(), direction));
        ev.source = Some(Endpoint {
            ip: row.local.ip(),
            port: row.local.port(),
        });
        if !listener {
            ev.destination = Some(Endpoint {
                ip: row.remote.ip(),
                port: row.remote.port(),
            });
        }
        if let Some(first) = holders.first() {
            ev.process = Some(Process {
                pid: first.pid,
                name: self.name(first.pid).map(|n| n.to_string()),
                ..Default::default()
            });
        }
        ev.hids.snapshot = (line == Line::Snapshot).then_some(true);
        ev.hids.capture = Some(capture.to_owned());
        ev.hids.command_id.clone_from(&self.command_id);
        ev.hids.socket = Some(Socket {
            state: Some(row.state_name().to_owned()),
            inode: Some(row.inode),
            fd: holders.first().map(|h| h.fd),
            netns: Some(row.netns),
            owners: (holders.len() > 1).then(|| {
                holders
                    .iter()
                    .take(MAX_OWNERS)
                    .map(|h| SocketOwner {
                        pid: h.pid,
                        fd: h.fd,
                    })
                    .collect()
            }),
            owners_omitted: (holders.len() > MAX_OWNERS)
                .then(|| (holders.len() - MAX_OWNERS) as u64),
            folded: None,
        });
        self.emit(ev)
    }

    /// One connect or accept the kernel reported.
    pub fn connection(&mut self, at: Timestamp, conn: &ConnEvent) -> io::Result<()> {
        let (action, direction) = match conn.direction {
            Direction::Connect => ("connect", "egress"),
            Direction::Accept => ("accept", "ingress"),
        };
        let mut ev = self
            .producer
            .event(at, 0, "event", "network", "start", action);
        ev.event.type_.insert(0, "connection".into());
        ev.network = Some(network(
            Transport::Tcp,
            conn.local.is_ipv4(),
            Some(direction),
        ));
        ev.source = Some(Endpoint {
            ip: conn.local.ip(),
            port: conn.local.port(),
        });
        ev.destination = Some(Endpoint {
            ip: conn.remote.ip(),
            port: conn.remote.port(),
        });
        ev.process = Some(Process {
            pid: conn.pid,
            name: Some(conn.comm.clone()),
            ..Default::default()
        });
        ev.user = Some(User {
            id: conn.uid.to_string(),
            ..Default::default()
        });
        ev.hids.capture = Some("ebpf".to_owned());
        ev.hids.socket = Some(Socket {
            netns: Some(conn.netns),
            folded: Some(conn.folded),
            ..Default::default()
        });
        self.emit(ev)
    }

    /// The periodic stats record (`hids.stats`), also sent to the master as health.
    pub fn stats(&mut self, stats: serde_json::Value) -> io::Result<()> {
        let health = serde_json::to_vec(&stats).map_err(io::Error::other)?;
        let mut ev = self
            .producer
            .event(Timestamp::now(), 0, "metric", "host", "info", "stats");
        ev.hids.stats = Some(stats);
        self.emit(ev)?;
        self.out.health(&health)
    }

    pub fn flush(&self) -> io::Result<()> {
        self.out.flush()
    }

    fn emit(&mut self, mut ev: Event) -> io::Result<()> {
        self.seq += 1;
        ev.event.sequence = self.seq;
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &ev).map_err(io::Error::other)?;
        self.out.event(&self.buf)
    }

    /// The process's command name (`/proc/<pid>/comm`), remembered for the snapshot.
    fn name(&mut self, pid: u32) -> Option<Arc<str>> {
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        let root = &self.proc_root;
        self.names
            .entry(pid)
            .or_insert_with(|| {
                let comm = std::fs::read(format!("{root}/{pid}/comm")).ok()?;
                let comm = String::from_utf8_lossy(&comm);
                Some(Arc::from(comm.trim_end_matches('\n')))
            })
            .clone()
    }
}

fn network(transport: Transport, ipv4: bool, direction: Option<&'static str>) -> Network {
    Network {
        transport: transport.name().to_owned(),
        type_: if ipv4 { "ipv4" } else { "ipv6" }.to_owned(),
        direction: direction.map(str::to_owned),
    }
}
