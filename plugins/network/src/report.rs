//! Sockets and connections as ECS events, written to the master (or stdout): one place
//! that knows the event shapes docs/network.md describes.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::sync::Arc;

use hids_plugin_sdk::Output;
use hids_types::event::{Endpoint, Event, Network, Process, Producer, Socket, User};
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

impl Line {
    /// ECS `event.kind`, `event.type` and our `event.action` for a socket line.
    fn kind_type_action(self, listener: bool) -> (&'static str, &'static str, &'static str) {
        match (self, listener) {
            (Line::Snapshot, true) => ("state", "info", "listening"),
            (Line::Snapshot, false) => ("state", "connection", "connection"),
            (Line::Opened, _) => ("event", "start", "listening"),
            (Line::Closed, _) => ("event", "end", "listener_closed"),
        }
    }
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
    envelope: Envelope,
    /// The last timestamp written, as JSON: every line of a snapshot has the same.
    stamp: (u64, String),
}

/// A line being written: text appended as is, numbers through `itoa` (what serde_json
/// itself uses), addresses without the formatting machinery.
struct LineWriter<'a> {
    b: &'a mut Vec<u8>,
    num: itoa::Buffer,
}

impl LineWriter<'_> {
    fn put(&mut self, text: &str) {
        self.b.extend_from_slice(text.as_bytes());
    }

    fn num(&mut self, n: impl itoa::Integer) {
        self.b.extend_from_slice(self.num.format(n).as_bytes());
    }

    /// `,"socket":{...}` without its closing brace: state, inode, the first holder's
    /// descriptor, namespace, and every holder when there are several.
    fn socket_facts(&mut self, row: &SocketRow, holders: &[Holder]) {
        self.put(r#","socket":{"state":""#);
        self.put(row.state_name());
        self.put(r#"","inode":"#);
        self.num(row.inode);
        if let Some(first) = holders.first() {
            self.put(r#","fd":"#);
            self.num(first.fd);
        }
        self.put(r#","netns":"#);
        self.num(row.netns);
        if holders.len() > 1 {
            self.put(r#","owners":["#);
            for (i, h) in holders.iter().take(MAX_OWNERS).enumerate() {
                self.put(if i == 0 { r#"{"pid":"# } else { r#",{"pid":"# });
                self.num(h.pid);
                self.put(r#","fd":"#);
                self.num(h.fd);
                self.put("}");
            }
            self.put("]");
        }
        if holders.len() > MAX_OWNERS {
            self.put(r#","owners_omitted":"#);
            self.num(holders.len() - MAX_OWNERS);
        }
    }

    /// `{"ip":"...","port":N}`. IPv4 octet by octet; IPv6 (rarer, and with its `::`
    /// rules) through its `Display`.
    fn endpoint(&mut self, addr: std::net::SocketAddr) {
        self.put(r#"{"ip":""#);
        match addr.ip() {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.b.push(b'.');
                    }
                    self.num(octet);
                }
            }
            std::net::IpAddr::V6(v6) => {
                let _ = write!(self.b, "{v6}");
            }
        }
        self.put(r#"","port":"#);
        self.num(addr.port());
        self.b.push(b'}');
    }
}

/// What every socket line repeats, as JSON, escaped once.
struct Envelope {
    /// `"hids.<plugin>"`, quoted.
    dataset: String,
    /// `"host":{...}` and, when the host has labels, `,"labels":{...}`.
    host_and_labels: String,
    /// `"plugin":"network","run_id":"..."`.
    plugin_and_run: String,
}

impl Envelope {
    fn new(producer: &Producer) -> Self {
        let mut host_and_labels = format!(r#""host":{}"#, json(&producer.host));
        if !producer.labels.is_empty() {
            host_and_labels.push_str(&format!(r#","labels":{}"#, json(&*producer.labels)));
        }
        Envelope {
            dataset: json(&format!("hids.{}", producer.plugin)),
            host_and_labels,
            plugin_and_run: format!(
                r#""plugin":{},"run_id":{}"#,
                json(&*producer.plugin),
                json(&*producer.run_id)
            ),
        }
    }
}

/// A value as JSON text. The values given here (strings, maps of strings, timestamps)
/// always serialize; an empty string would only make a line fail to parse downstream.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl Reporter {
    pub fn new(producer: Producer, out: Output, proc_root: &str) -> Self {
        Reporter {
            envelope: Envelope::new(&producer),
            producer,
            out,
            seq: 0,
            buf: Vec::with_capacity(1024),
            proc_root: proc_root.to_owned(),
            names: HashMap::new(),
            command_id: None,
            stamp: (0, String::new()),
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
    ///
    /// Written straight into the line buffer: a snapshot of 300,000 sockets is 300,000
    /// of these, and building an `Event` for each (a dozen small allocations, every
    /// string escaped by a generic serializer) cost more than reading the sockets from
    /// the kernel. The parts that never change (host, labels, plugin, run id) are
    /// escaped once; the test `fast_lines_are_the_event_model` holds every line to
    /// the `Event` the slow way builds.
    pub fn socket(
        &mut self,
        at: Timestamp,
        row: &SocketRow,
        holders: &[Holder],
        line: Line,
        direction: Option<&'static str>,
        capture: &'static str,
    ) -> io::Result<()> {
        self.seq += 1;
        let listener = row.is_listener();
        let (kind, type_, action) = line.kind_type_action(listener);
        let name = holders.first().and_then(|h| self.name(h.pid));
        if self.stamp.0 != at.unix_nanos() || self.stamp.1.is_empty() {
            self.stamp = (at.unix_nanos(), json(&at));
        }
        let mut w = LineWriter {
            b: &mut self.buf,
            num: itoa::Buffer::new(),
        };
        w.b.clear();
        w.put(r#"{"@timestamp":"#);
        w.put(&self.stamp.1);
        w.put(r#","event":{"kind":""#);
        w.put(kind);
        w.put(r#"","category":["network"],"type":[""#);
        w.put(type_);
        w.put(r#""],"action":""#);
        w.put(action);
        w.put(r#"","sequence":"#);
        w.num(self.seq);
        w.put(r#","module":"hids","dataset":"#);
        w.put(&self.envelope.dataset);
        w.put("},");
        w.put(&self.envelope.host_and_labels);
        w.put(r#","network":{"transport":""#);
        w.put(row.transport.name());
        w.put(if row.local.is_ipv4() {
            r#"","type":"ipv4""#
        } else {
            r#"","type":"ipv6""#
        });
        if let Some(d) = direction {
            w.put(r#","direction":""#);
            w.put(d);
            w.put("\"");
        }
        w.put(r#"},"source":"#);
        w.endpoint(row.local);
        if !listener {
            w.put(r#","destination":"#);
            w.endpoint(row.remote);
        }
        if let Some(first) = holders.first() {
            w.put(r#","process":{"pid":"#);
            w.num(first.pid);
            if let Some(name) = &name {
                w.put(r#","name":"#);
                serde_json::to_writer(&mut *w.b, &**name).map_err(io::Error::other)?;
            }
            w.put("}");
        }
        w.put(r#","hids":{"#);
        w.put(&self.envelope.plugin_and_run);
        if line == Line::Snapshot {
            w.put(r#","snapshot":true"#);
        }
        w.put(r#","capture":""#);
        w.put(capture);
        w.put("\"");
        if let Some(id) = &self.command_id {
            w.put(r#","command_id":"#);
            serde_json::to_writer(&mut *w.b, id).map_err(io::Error::other)?;
        }
        w.socket_facts(row, holders);
        w.put("}}}");
        self.out.event(&self.buf)
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

    /// The event model of a socket line: what [`Reporter::socket`] writes, built the
    /// slow way. The tests hold the fast writer to it.
    #[cfg(test)]
    fn socket_event(
        &mut self,
        at: Timestamp,
        row: &SocketRow,
        holders: &[Holder],
        line: Line,
        direction: Option<&'static str>,
        capture: &'static str,
    ) -> Event {
        let listener = row.is_listener();
        let (kind, type_, action) = line.kind_type_action(listener);
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
                    .map(|h| hids_types::event::SocketOwner {
                        pid: h.pid,
                        fd: h.fd,
                    })
                    .collect()
            }),
            owners_omitted: (holders.len() > MAX_OWNERS)
                .then(|| (holders.len() - MAX_OWNERS) as u64),
            folded: None,
        });
        ev
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

    /// The process's command name, as the next line about `pid` will carry it.
    pub fn name_of(&mut self, pid: u32) -> Option<Arc<str>> {
        self.name(pid)
    }

    /// Names `pid` for the next lines: a closed listener carries the name its holder
    /// had, not whatever holds the pid now.
    pub fn set_name(&mut self, pid: u32, name: Arc<str>) {
        self.names.insert(pid, Some(name));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Transport, TCP_ESTABLISHED, TCP_LISTEN};
    use std::collections::BTreeMap;
    use std::io::{BufRead, Seek};

    fn reporter(file: std::fs::File) -> Reporter {
        let producer = Producer {
            host: hids_types::event::Host {
                id: "h\"1".into(),
                hostname: "web-1".into(),
            },
            labels: Arc::new(BTreeMap::from([("idc".into(), "bj\n1".into())])),
            plugin: "net\"work".into(),
            run_id: "r1".into(),
        };
        // No /proc here: names come from the cache the test fills.
        Reporter::new(producer, Output::lines(file), "/nonexistent")
    }

    #[test]
    fn fast_lines_are_the_event_model() {
        let mut file = tempfile::tempfile().unwrap();
        let mut r = reporter(file.try_clone().unwrap());
        r.names.insert(42, Some(Arc::from("ngi\"nx\u{7}")));
        r.names.insert(43, None);
        let at = Timestamp::from_unix_nanos(1_700_000_000_123_456_000);
        let row = |state, local: &str, remote: &str, transport| SocketRow {
            inode: 77,
            netns: 4026531833,
            transport,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            holder: None,
        };
        let many: Vec<Holder> = (0..20).map(|i| Holder { pid: 42 + i, fd: 3 }).collect();
        let cases: Vec<(SocketRow, Vec<Holder>, Line, Option<&'static str>)> = vec![
            (
                row(
                    TCP_ESTABLISHED,
                    "10.0.0.1:443",
                    "10.0.0.2:5000",
                    Transport::Tcp,
                ),
                vec![Holder { pid: 42, fd: 7 }],
                Line::Snapshot,
                Some("ingress"),
            ),
            (
                row(TCP_LISTEN, "[::]:22", "[::]:0", Transport::Tcp),
                vec![Holder { pid: 43, fd: 3 }, Holder { pid: 44, fd: 3 }],
                Line::Opened,
                None,
            ),
            (
                row(7, "0.0.0.0:53", "0.0.0.0:0", Transport::Udp),
                vec![],
                Line::Closed,
                None,
            ),
            (
                row(
                    TCP_ESTABLISHED,
                    "[::ffff:127.0.0.1]:1",
                    "[::1]:2",
                    Transport::Tcp,
                ),
                many,
                Line::Snapshot,
                Some("egress"),
            ),
        ];
        let mut expected = Vec::new();
        for (i, (row, holders, line, direction)) in cases.iter().enumerate() {
            r.command_id = (i == 0).then(|| "g\"7".to_owned());
            let mut ev = r.socket_event(at, row, holders, *line, *direction, "bpf_iter");
            ev.event.sequence = i as u64 + 1;
            expected.push(serde_json::to_value(&ev).unwrap());
            r.socket(at, row, holders, *line, *direction, "bpf_iter")
                .unwrap();
        }
        r.flush().unwrap();
        file.rewind().unwrap();
        let lines: Vec<String> = std::io::BufReader::new(file)
            .lines()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), expected.len());
        for (line, want) in lines.iter().zip(&expected) {
            let got: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_eq!(&got, want, "{line}");
        }
    }
}
