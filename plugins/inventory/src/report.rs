//! The inventory as events: package lines (`--once`), the inventory in parts or as its
//! hash (what the server indexes), package changes, and the stats record. The shapes are
//! in docs/inventory.md.

use std::collections::BTreeMap;
use std::io;

use hids_plugin_sdk::Output;
use hids_types::event::{Event, Producer};
use hids_types::package::{InventoryPart, Package, PackageType, INVENTORY_ACTION};
use hids_types::Timestamp;

use crate::collect::Inventory;

/// Changes reported one by one per inventory; beyond it they are counted (the whole list
/// goes to the server anyway).
pub const MAX_CHANGE_EVENTS: usize = 10_000;

pub struct Reporter {
    producer: Producer,
    out: Output,
    seq: u64,
    /// Serialized packages one inventory event carries at most: well under the frame
    /// limit (1 MiB) with the envelope around it.
    part_bytes: usize,
}

/// Package changes between two inventories.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    pub upgraded: usize,
    /// Changes over [`MAX_CHANGE_EVENTS`], counted only.
    pub unreported: usize,
}

impl Reporter {
    pub fn new(producer: Producer, out: Output, part_bytes: usize) -> Reporter {
        Reporter {
            producer,
            out,
            seq: 0,
            part_bytes: part_bytes.max(4096),
        }
    }

    fn event(&mut self, kind: &str, type_: &str, action: &str) -> Event {
        self.seq += 1;
        self.producer
            .event(Timestamp::now(), self.seq, kind, "package", type_, action)
    }

    fn write(&self, event: &Event) -> io::Result<()> {
        let line = serde_json::to_vec(event).map_err(io::Error::other)?;
        self.out.event(&line)
    }

    /// One line per package (`--once`).
    pub fn package_lines(&mut self, inventory: &Inventory) -> io::Result<()> {
        for package in &inventory.packages {
            let mut event = self.event("state", "info", "installed");
            (event.package, event.hids.package_source) = {
                let (ecs, source) = package.ecs();
                (Some(ecs), source)
            };
            self.write(&event)?;
        }
        self.out.flush()
    }

    /// The inventory for the server: whole, in parts under the size limit, or its hash
    /// alone. Returns the number of events written.
    pub fn inventory(
        &mut self,
        inventory: &Inventory,
        whole: bool,
        command_id: Option<&str>,
    ) -> io::Result<u32> {
        let parts = if whole {
            split(&inventory.packages, self.part_bytes)
        } else {
            Vec::new()
        };
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        let head = InventoryPart {
            hash: inventory.hash.clone(),
            packages: inventory.packages.len() as u64,
            part: 0,
            parts: count,
            os: inventory.os.clone(),
            kernel: inventory.kernel.clone(),
            items: Vec::new(),
            command_id: command_id.map(str::to_owned),
        };
        if parts.is_empty() {
            let mut event = self.event("state", "info", INVENTORY_ACTION);
            event.hids.inventory = Some(head.clone());
            self.write(&event)?;
        }
        for (n, items) in parts.into_iter().enumerate() {
            let mut event = self.event("state", "info", INVENTORY_ACTION);
            event.hids.inventory = Some(InventoryPart {
                part: u32::try_from(n).unwrap_or(u32::MAX),
                items: items.to_vec(),
                ..head.clone()
            });
            self.write(&event)?;
        }
        self.out.flush()?;
        Ok(count.max(1))
    }

    /// Added, removed and upgraded packages since `before` (both sorted). Packages are
    /// keyed by type, name, architecture and place; a key that lost one version and
    /// gained one was upgraded (or downgraded), anything else is added or removed
    /// version by version (two versions of one Python distribution can sit in one site
    /// directory).
    pub fn changes(&mut self, before: &[Package], now: &[Package]) -> io::Result<Changes> {
        type Key<'a> = (PackageType, &'a str, &'a str, &'a str);
        let mut by_key: BTreeMap<Key<'_>, (Vec<&Package>, Vec<&Package>)> = BTreeMap::new();
        let old: std::collections::BTreeSet<&Package> = before.iter().collect();
        let new: std::collections::BTreeSet<&Package> = now.iter().collect();
        for p in old.difference(&new) {
            by_key
                .entry((p.kind, &p.name, &p.architecture, &p.path))
                .or_default()
                .0
                .push(p);
        }
        for p in new.difference(&old) {
            by_key
                .entry((p.kind, &p.name, &p.architecture, &p.path))
                .or_default()
                .1
                .push(p);
        }
        let mut changes = Changes::default();
        for (gone, came) in by_key.into_values() {
            if let ([was], [now]) = (gone.as_slice(), came.as_slice()) {
                changes.upgraded += 1;
                let previous = Some(was.version.clone());
                self.change(&mut changes, now, previous, "change", "package_upgraded")?;
                continue;
            }
            for p in came {
                changes.added += 1;
                self.change(&mut changes, p, None, "installation", "package_added")?;
            }
            for p in gone {
                changes.removed += 1;
                self.change(&mut changes, p, None, "deletion", "package_removed")?;
            }
        }
        self.out.flush()?;
        Ok(changes)
    }

    fn change(
        &mut self,
        changes: &mut Changes,
        package: &Package,
        previous: Option<String>,
        type_: &str,
        action: &str,
    ) -> io::Result<()> {
        if changes.added + changes.removed + changes.upgraded > MAX_CHANGE_EVENTS {
            changes.unreported += 1;
            return Ok(());
        }
        let mut event = self.event("event", type_, action);
        let (ecs, source) = package.ecs();
        event.package = Some(ecs);
        event.hids.package_source = source;
        event.hids.previous_version = previous;
        self.write(&event)
    }

    /// The stats record (`event.kind: metric`), and the same counters to the master.
    pub fn stats(&mut self, stats: serde_json::Value) -> io::Result<()> {
        let mut event = self.event("metric", "info", "stats");
        event.hids.stats = Some(stats.clone());
        self.write(&event)?;
        self.out
            .health(&serde_json::to_vec(&stats).map_err(io::Error::other)?)?;
        self.out.flush()
    }
}

/// Consecutive runs of packages whose JSON stays under `limit` bytes (a package larger
/// than the limit alone still goes, alone).
fn split(packages: &[Package], limit: usize) -> Vec<&[Package]> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, p) in packages.iter().enumerate() {
        let size = serde_json::to_vec(p).map_or(0, |v| v.len() + 1);
        if bytes + size > limit && i > start {
            parts.push(&packages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < packages.len() || packages.is_empty() {
        parts.push(&packages[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::package::PackageType;

    fn deb(name: &str, version: &str) -> Package {
        Package {
            kind: PackageType::Deb,
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: String::new(),
            source_version: String::new(),
            path: String::new(),
        }
    }

    #[test]
    fn parts_stay_under_the_limit_and_keep_every_package_in_order() {
        let packages: Vec<_> = (0..1000)
            .map(|i| deb(&format!("p{i:04}"), "1.0-1"))
            .collect();
        let parts = split(&packages, 8192);
        assert!(parts.len() > 5);
        let joined: Vec<_> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
        assert_eq!(joined, packages);
        for part in &parts {
            assert!(serde_json::to_vec(part).unwrap().len() <= 8192 + 2);
        }
        assert_eq!(split(&[], 8192).len(), 1, "an empty list is one empty part");
    }

    #[test]
    fn two_versions_in_one_place_are_changes_of_their_own() {
        let py = |v: &str| Package {
            kind: PackageType::Python,
            path: "/usr/lib/python3/dist-packages".into(),
            architecture: String::new(),
            ..deb("foo", v)
        };
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let producer = Producer {
            host: hids_types::event::Host {
                id: "h".into(),
                hostname: "h".into(),
            },
            labels: Default::default(),
            plugin: "inventory".into(),
            run_id: "r".into(),
        };
        let mut reporter = Reporter::new(producer, Output::lines(file), 8192);
        let mut before = vec![py("1.0"), py("1.1"), deb("bash", "5.1")];
        let mut now = vec![py("1.1"), deb("bash", "5.2"), deb("jq", "1.6")];
        before.sort();
        now.sort();
        let changes = reporter.changes(&before, &now).unwrap();
        assert_eq!(
            changes,
            Changes {
                added: 1,
                removed: 1,
                upgraded: 1,
                unreported: 0
            }
        );
        let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert!(text.contains(r#""previous_version":"5.1""#), "{text}");
        assert!(
            text.contains(r#""action":"package_removed""#) && text.contains(r#""version":"1.0""#)
        );
    }
}
