//! Stage 4: acknowledgements (with `--wait`). The agents' status keys are followed
//! from the revision the targets were chosen at until every target has applied or
//! refused the document, or the time is up.
//!
//! The following itself ([`follow`]: a watch on `agents/`, read again when it breaks)
//! serves every waiter: a push's [`Tally`] and a rollout's wave, each a [`Follower`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
use hids_control::Keys;
use indicatif::ProgressBar;
use serde::Deserialize;

use super::targets::Fleet;
use super::writing::Written;
use crate::fleet::get_all;
use crate::progress::bar;

/// What follows the targets' status keys: told of every change, it says when it has
/// seen enough.
pub trait Follower {
    /// `host`'s status key was written (`Some(value)`) or is gone (`None`: the agent
    /// is offline). Called for hosts that are not targets too: ignore them.
    fn set(&mut self, host: &str, status: Option<&[u8]>, now: Instant);
    /// Nothing more to wait for.
    fn done(&self) -> bool;
    /// Shows where things stand.
    fn draw(&self, bar: &ProgressBar);
}

/// The part of a status document that says whether a push arrived: parsing only this
/// keeps following 100,000 acknowledgements cheap.
#[derive(Deserialize)]
pub struct AckView {
    #[serde(default)]
    applied_generation: u64,
    #[serde(default)]
    pub desired_error: Option<String>,
    #[serde(default)]
    desired_revision: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Applied,
    Refused,
    Offline,
    Pending,
}

fn classify(status: Option<&AckView>, generation: u64, written_at: i64) -> Ack {
    match status {
        None => Ack::Offline,
        Some(s) if s.applied_generation >= generation => Ack::Applied,
        Some(s) if s.desired_revision >= written_at && s.desired_error.is_some() => Ack::Refused,
        Some(_) => Ack::Pending,
    }
}

/// Where one target stands, and the status that says so.
pub struct HostAck<'a> {
    name: &'a str,
    pub ack: Ack,
    pub status: Option<AckView>,
}

/// Where every target stands, kept up to date one status change at a time (a fleet-wide
/// push sees 100,000 changes; nothing here walks all hosts per change).
pub struct Tally<'a> {
    written: &'a Written,
    hosts: HashMap<&'a str, HostAck<'a>>,
    pending: usize,
    settled: usize,
    acked_at: HashMap<&'a str, Instant>,
}

impl<'a> Tally<'a> {
    fn new(hosts: &'a [String], written: &'a Written) -> Self {
        Tally {
            written,
            hosts: hosts
                .iter()
                .map(|h| {
                    let slot = HostAck {
                        name: h.as_str(),
                        ack: Ack::Offline,
                        status: None,
                    };
                    (h.as_str(), slot)
                })
                .collect(),
            pending: 0,
            settled: 0,
            acked_at: HashMap::new(),
        }
    }

    /// Online, status not read: waiting for its answer.
    fn present(&mut self, host: &str) {
        if let Some(slot) = self.hosts.get_mut(host) {
            if slot.ack == Ack::Offline {
                slot.ack = Ack::Pending;
                self.pending += 1;
            }
        }
    }

    fn record(&mut self, host: &str, status: Option<AckView>, now: Instant) {
        let Some(slot) = self.hosts.get_mut(host) else {
            return;
        };
        let written_at = self.written.revision.get(host).copied().unwrap_or(0);
        let ack = classify(status.as_ref(), self.written.generation, written_at);
        let count = |a: Ack| match a {
            Ack::Applied | Ack::Refused => (0, 1),
            Ack::Pending => (1, 0),
            Ack::Offline => (0, 0),
        };
        let (p0, s0) = count(slot.ack);
        let (p1, s1) = count(ack);
        slot.ack = ack;
        slot.status = status;
        self.pending = self.pending + p1 - p0;
        self.settled = self.settled + s1 - s0;
        if ack == Ack::Applied {
            self.acked_at.entry(slot.name).or_insert(now);
        }
    }

    /// Every target settled (or offline).
    fn all_answered(&self) -> bool {
        self.pending == 0
    }

    /// Where `host` stands; `None` for a host that is not a target.
    pub fn get(&self, host: &str) -> Option<&HostAck<'a>> {
        self.hosts.get(host)
    }

    /// From each host's write to its acknowledgement being seen, over the hosts that
    /// applied: milliseconds.
    pub fn ack_delays_ms(&self) -> Vec<f64> {
        self.acked_at
            .iter()
            .filter_map(|(h, t)| {
                let written = *self.written.at.get(*h)?;
                Some(t.saturating_duration_since(written).as_secs_f64() * 1000.0)
            })
            .collect()
    }
}

impl Follower for Tally<'_> {
    fn set(&mut self, host: &str, status: Option<&[u8]>, now: Instant) {
        // A value that is not a status document says nothing: as if offline.
        let view = status.and_then(|v| serde_json::from_slice(v).ok());
        self.record(host, view, now);
    }

    fn done(&self) -> bool {
        self.all_answered()
    }

    fn draw(&self, bar: &ProgressBar) {
        bar.set_position(self.settled as u64);
    }
}

/// Follows the targets' status keys for at most `limit`.
///
/// # Errors
/// When etcd cannot be read or watched again after the watch broke.
pub async fn await_acks<'a>(
    client: &mut Client,
    keys: &Keys,
    fleet: &'a Fleet,
    written: &'a Written,
    limit: Duration,
    show_progress: bool,
) -> anyhow::Result<Tally<'a>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tally = Tally::new(&fleet.hosts, written);
    // Who was online when the targets were chosen; everything since comes through the
    // watch from that revision, so the fleet's statuses are not read a second time.
    for h in &fleet.hosts {
        if fleet.online.contains_key(h) {
            tally.present(h);
        }
    }
    let progress = show_progress.then(|| bar(fleet.hosts.len() as u64, "waiting for agents"));
    follow(
        client,
        keys,
        &fleet.hosts,
        fleet.online_at,
        deadline,
        &mut tally,
        progress.as_ref(),
    )
    .await?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(tally)
}

/// Tells `follower` of every change to the status keys after `revision` until it is
/// done or `deadline` passes; `hosts` are the targets (those without a status key are
/// offline when everything must be read again).
///
/// # Errors
/// When etcd cannot be read or watched again after the watch broke.
pub async fn follow(
    client: &mut Client,
    keys: &Keys,
    hosts: &[String],
    revision: i64,
    deadline: tokio::time::Instant,
    follower: &mut impl Follower,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    let dir = keys.agents();
    let mut watch = watch_from(client, &dir, revision).await?;
    loop {
        if let Some(p) = progress {
            follower.draw(p);
        }
        if follower.done() {
            return Ok(());
        }
        let msg = tokio::select! {
            m = watch.message() => m,
            _ = tokio::time::sleep_until(deadline) => return Ok(()),
        };
        match msg {
            Ok(Some(resp)) if !resp.canceled() => take_events(keys, &dir, &resp, follower),
            // The watch broke (etcd overloaded or restarted, watch compacted): read
            // everything again and watch from there; acknowledgements are states, so
            // none is lost by reading them late.
            other => {
                if let Err(e) = &other {
                    eprintln!("hidsctl: watch on agents/ broke ({e}); reading again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let revision = read_all(client, keys, hosts, follower).await?;
                watch = watch_from(client, &dir, revision).await?;
            }
        }
    }
}

/// Watches the status keys from the revision after `revision`.
async fn watch_from(
    client: &mut Client,
    dir: &str,
    revision: i64,
) -> Result<WatchStream, etcd_client::Error> {
    let opts = WatchOptions::new().with_start_revision(revision + 1);
    hids_control::read::watch_prefix(client, dir, opts).await
}

/// Every status, read: hosts without one are offline. Returns the revision read (to
/// [`follow`] from).
///
/// # Errors
/// When etcd cannot be read.
pub async fn read_all(
    client: &mut Client,
    keys: &Keys,
    hosts: &[String],
    follower: &mut impl Follower,
) -> anyhow::Result<i64> {
    let dir = keys.agents();
    let (current, revision) = get_all(client, &dir).await?;
    let now = Instant::now();
    let mut seen = HashSet::new();
    for (k, v, _) in current {
        if let Some(host) = keys.host_of(&dir, &k) {
            seen.insert(host.to_owned());
            follower.set(host, Some(&v), now);
        }
    }
    for h in hosts.iter().filter(|h| !seen.contains(h.as_str())) {
        follower.set(h, None, now);
    }
    Ok(revision)
}

/// The status changes of one watch response.
fn take_events(keys: &Keys, dir: &str, resp: &WatchResponse, follower: &mut impl Follower) {
    let now = Instant::now();
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Some(host) = keys.host_of(dir, kv.key()) else {
            continue;
        };
        let status = match ev.event_type() {
            EventType::Put => Some(kv.value()),
            EventType::Delete => None,
        };
        follower.set(host, status, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(applied: u64, error: Option<&str>, revision: i64) -> Option<AckView> {
        Some(AckView {
            applied_generation: applied,
            desired_error: error.map(str::to_owned),
            desired_revision: revision,
        })
    }

    #[test]
    fn tally_counts_each_change_once() {
        let hosts: Vec<String> = ["a", "b", "c"].iter().map(|h| h.to_string()).collect();
        let written = Written {
            generation: 5,
            issued_at: std::time::SystemTime::now(),
            revision: hosts.iter().map(|h| (h.clone(), 10)).collect(),
            at: hosts.iter().map(|h| (h.clone(), Instant::now())).collect(),
        };
        let mut t = Tally::new(&hosts, &written);
        let now = Instant::now();
        t.record("a", view(4, None, 9), now);
        t.record("b", view(4, None, 9), now);
        assert_eq!((t.pending, t.settled), (2, 0), "c has no status: offline");
        t.record("a", view(5, None, 10), now);
        t.record("a", view(5, None, 10), now);
        assert_eq!(
            (t.pending, t.settled),
            (1, 1),
            "the same ack twice counts once"
        );
        // A refusal of an older write is not an answer to this one.
        t.record("b", view(4, Some("bad signature"), 9), now);
        assert_eq!(t.pending, 1);
        t.record("b", view(4, Some("bad signature"), 10), now);
        assert_eq!((t.pending, t.settled), (0, 2));
        // The agent left (lease gone): no longer settled, not pending either.
        t.record("a", None, now);
        assert_eq!((t.pending, t.settled), (0, 1));
        t.record("unknown-host", view(5, None, 10), now);
        assert_eq!(t.acked_at.len(), 1);
    }
}
