//! The fleet's inventories in memory, shaped for "which hosts have X".
//!
//! Two levels of posting lists: each distinct package (type, name, version, ...) lists
//! the distinct inventories ("images") that hold it, and each image lists the hosts that
//! run it. A fleet of a million hosts drawn from a few thousand images keeps a few
//! thousand package lists, not a billion host-package rows, and a query touches only the
//! images of the packages it names before it walks their hosts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hids_store::{HostInventory, StoredInventory};
use hids_types::package::{OsRelease, Package, PackageType};
use hids_types::Timestamp;

pub type PackageId = u32;
pub type ImageId = u32;
pub type HostSlot = u32;

/// One distinct inventory and the hosts that run it.
#[derive(Debug)]
pub struct Image {
    pub hash: Box<str>,
    pub os: OsRelease,
    pub kernel: Box<str>,
    /// Its packages, sorted by id. Freed when the image is dropped.
    pub packages: Box<[PackageId]>,
    /// The hosts pointing at it (order changes as hosts leave).
    pub hosts: Vec<HostSlot>,
    /// Dropped by a compaction after its last host left: out of the posting lists and
    /// of `image_ids` (a host returning to it reloads it from the store as a new image).
    dead: bool,
    /// Its last host left: its posting-list entries count as dead weight.
    idle: bool,
}

#[derive(Debug)]
pub struct Host {
    pub id: Box<str>,
    pub hostname: Box<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub image: ImageId,
    /// Where the host sits in its image's `hosts`.
    position: u32,
    pub reported_at: Timestamp,
}

#[derive(Debug, Default)]
pub struct FleetIndex {
    packages: Vec<Package>,
    package_ids: HashMap<Package, PackageId>,
    by_name: HashMap<(PackageType, Box<str>), Vec<PackageId>>,
    /// deb and rpm packages by their source package's name: what distribution feeds name.
    by_source: HashMap<(PackageType, Box<str>), Vec<PackageId>>,
    /// Posting lists: package -> images holding it (ascending).
    package_images: Vec<Vec<ImageId>>,
    images: Vec<Image>,
    image_ids: HashMap<Box<str>, ImageId>,
    hosts: Vec<Host>,
    host_ids: HashMap<Box<str>, HostSlot>,
    /// Label sets shared between hosts that have the same.
    label_sets: HashMap<Arc<BTreeMap<String, String>>, ()>,
    /// Posting-list entries of images no host runs any more, and of images some do.
    dead_entries: usize,
    live_entries: usize,
}

/// What [`FleetIndex::set_host`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostUpdate {
    /// The host's image is not in the index (load it, then set the host again).
    UnknownImage,
    /// Nothing the index shows changed but the report time.
    Unchanged,
    /// The host is new, moved to another image, or changed name or labels.
    Changed,
}

impl FleetIndex {
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn images_in_use(&self) -> usize {
        self.images.iter().filter(|i| !i.hosts.is_empty()).count()
    }

    pub fn distinct_packages(&self) -> usize {
        self.packages.len()
    }

    pub fn has_image(&self, hash: &str) -> bool {
        self.image_ids.contains_key(hash)
    }

    /// Whether some host runs this inventory (so the store surely holds it: lists are
    /// pruned only when no host points at them).
    pub fn runs_image(&self, hash: &str) -> bool {
        self.image_ids
            .get(hash)
            .is_some_and(|&i| !self.images[i as usize].hosts.is_empty())
    }

    pub fn image(&self, id: ImageId) -> &Image {
        &self.images[id as usize]
    }

    pub fn host(&self, slot: HostSlot) -> &Host {
        &self.hosts[slot as usize]
    }

    pub fn host_slot(&self, host_id: &str) -> Option<HostSlot> {
        self.host_ids.get(host_id).copied()
    }

    pub fn package(&self, id: PackageId) -> &Package {
        &self.packages[id as usize]
    }

    /// Images holding the package that some host runs.
    pub fn images_of(&self, id: PackageId) -> impl Iterator<Item = ImageId> + '_ {
        self.package_images[id as usize]
            .iter()
            .copied()
            .filter(|&i| !self.images[i as usize].hosts.is_empty())
    }

    /// Packages with this name (every version, architecture and place). Python names
    /// compare as PEP 503 normalises them (`Foo_Bar` is `foo-bar`).
    pub fn named(&self, kind: PackageType, name: &str) -> &[PackageId] {
        self.by_name
            .get(&(kind, name_key(kind, name)))
            .map_or(&[], Vec::as_slice)
    }

    /// deb or rpm packages built from this source package.
    pub fn from_source(&self, kind: PackageType, source: &str) -> &[PackageId] {
        self.by_source
            .get(&(kind, Box::from(source)))
            .map_or(&[], Vec::as_slice)
    }

    /// Every (type, source name) the fleet has: what a fleet-wide vulnerability list
    /// walks.
    pub fn sources(&self) -> impl Iterator<Item = (PackageType, &str)> {
        self.by_source.keys().map(|(k, n)| (*k, &**n))
    }

    /// Every (type, name) the fleet has.
    pub fn names(&self) -> impl Iterator<Item = (PackageType, &str)> {
        self.by_name.keys().map(|(k, n)| (*k, &**n))
    }

    /// Adds a stored inventory (no-op when it is there).
    pub fn add_image(&mut self, stored: StoredInventory) -> ImageId {
        if let Some(&id) = self.image_ids.get(stored.hash.as_str()) {
            return id;
        }
        let id = ImageId::try_from(self.images.len()).unwrap_or(ImageId::MAX);
        let mut packages: Vec<PackageId> = stored
            .packages
            .into_iter()
            .map(|p| self.intern(p))
            .collect();
        packages.sort_unstable();
        packages.dedup();
        for &p in &packages {
            self.package_images[p as usize].push(id);
        }
        let hash: Box<str> = stored.hash.into();
        self.image_ids.insert(hash.clone(), id);
        self.images.push(Image {
            hash,
            os: stored.os,
            kernel: stored.kernel.into(),
            packages: packages.into_boxed_slice(),
            hosts: Vec::new(),
            dead: false,
            idle: false,
        });
        id
    }

    fn intern(&mut self, package: Package) -> PackageId {
        if let Some(&id) = self.package_ids.get(&package) {
            return id;
        }
        let id = PackageId::try_from(self.packages.len()).unwrap_or(PackageId::MAX);
        self.by_name
            .entry((package.kind, name_key(package.kind, &package.name)))
            .or_default()
            .push(id);
        if matches!(package.kind, PackageType::Deb | PackageType::Rpm) {
            self.by_source
                .entry((package.kind, package.source_name().into()))
                .or_default()
                .push(id);
        }
        self.package_images.push(Vec::new());
        self.package_ids.insert(package.clone(), id);
        self.packages.push(package);
        id
    }

    /// Points a host at an image that is in the index (see [`FleetIndex::has_image`]).
    pub fn set_host(&mut self, row: &HostInventory) -> HostUpdate {
        let Some(&image) = self.image_ids.get(row.hash.as_str()) else {
            return HostUpdate::UnknownImage;
        };
        let labels = self.labels(&row.labels);
        if let Some(&slot) = self.host_ids.get(row.host_id.as_str()) {
            let mut update = HostUpdate::Unchanged;
            if self.hosts[slot as usize].image != image {
                self.leave(slot);
                self.join(slot, image);
                update = HostUpdate::Changed;
            }
            let host = &mut self.hosts[slot as usize];
            if *host.hostname != *row.hostname || !Arc::ptr_eq(&host.labels, &labels) {
                host.hostname = row.hostname.as_str().into();
                host.labels = labels;
                update = HostUpdate::Changed;
            }
            host.reported_at = row.reported_at;
            return update;
        }
        let slot = HostSlot::try_from(self.hosts.len()).unwrap_or(HostSlot::MAX);
        self.hosts.push(Host {
            id: row.host_id.as_str().into(),
            hostname: row.hostname.as_str().into(),
            labels,
            image,
            position: 0,
            reported_at: row.reported_at,
        });
        self.host_ids.insert(row.host_id.as_str().into(), slot);
        self.join(slot, image);
        HostUpdate::Changed
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some((shared, ())) = self.label_sets.get_key_value(labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels.clone());
        self.label_sets.insert(shared.clone(), ());
        shared
    }

    fn join(&mut self, slot: HostSlot, image: ImageId) {
        let img = &mut self.images[image as usize];
        if img.hosts.is_empty() {
            let entries = img.packages.len();
            self.live_entries += entries;
            if img.idle {
                img.idle = false;
                self.dead_entries = self.dead_entries.saturating_sub(entries);
            }
        }
        let hosts = &mut self.images[image as usize].hosts;
        let position = u32::try_from(hosts.len()).unwrap_or(u32::MAX);
        hosts.push(slot);
        let host = &mut self.hosts[slot as usize];
        host.image = image;
        host.position = position;
    }

    fn leave(&mut self, slot: HostSlot) {
        let (image, position) = {
            let h = &self.hosts[slot as usize];
            (h.image as usize, h.position as usize)
        };
        let hosts = &mut self.images[image].hosts;
        hosts.swap_remove(position);
        if let Some(&moved) = hosts.get(position) {
            self.hosts[moved as usize].position = position as u32;
        }
        let img = &mut self.images[image];
        if img.hosts.is_empty() {
            // Nobody runs it: its posting-list entries are dead weight until the next
            // compaction (a host flapping between two images costs nothing).
            img.idle = true;
            self.live_entries = self.live_entries.saturating_sub(img.packages.len());
            self.dead_entries += img.packages.len();
        }
    }

    /// Drops the images nobody runs once their entries outweigh the live ones: out of
    /// the posting lists and of the hashes known, their package lists freed. Called
    /// between pages of updates, never in the middle of one (an image added for a later
    /// row of the page has no host yet).
    pub fn compact_if_worthwhile(&mut self) {
        if self.dead_entries <= self.live_entries {
            return;
        }
        for image in &mut self.images {
            if image.idle && !image.dead {
                image.dead = true;
                image.packages = Box::default();
                self.image_ids.remove(&image.hash);
            }
        }
        let images = &self.images;
        for list in &mut self.package_images {
            list.retain(|&i| !images[i as usize].dead);
        }
        self.dead_entries = 0;
    }
}

fn name_key(kind: PackageType, name: &str) -> Box<str> {
    match hids_vulns::feed::Ecosystem::for_package_type(kind) {
        Some(ecosystem) => ecosystem.normalize_name(name).into(),
        None => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str, source: &str) -> Package {
        Package {
            kind: PackageType::Deb,
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: source.into(),
            source_version: String::new(),
            path: String::new(),
        }
    }

    fn image(hash: &str, packages: Vec<Package>) -> StoredInventory {
        StoredInventory {
            hash: hash.into(),
            os: OsRelease::default(),
            kernel: "6.1".into(),
            packages,
        }
    }

    fn host(id: &str, hash: &str) -> HostInventory {
        HostInventory {
            host_id: id.into(),
            hostname: id.into(),
            labels: BTreeMap::from([("idc".into(), "bj1".into())]),
            hash: hash.into(),
            reported_at: Timestamp::from_unix_nanos(0),
            updated_at: Timestamp::from_unix_nanos(0),
        }
    }

    #[test]
    fn hosts_move_between_images_and_empty_images_leave_the_posting_lists() {
        let mut index = FleetIndex::default();
        index.add_image(image(
            "a",
            vec![
                deb("libssl3", "3.0.11-1", "openssl"),
                deb("bash", "5.2", ""),
            ],
        ));
        index.add_image(image("b", vec![deb("libssl3", "3.0.13-1", "openssl")]));
        for (id, hash) in [("h1", "a"), ("h2", "a"), ("h3", "b")] {
            assert_eq!(index.set_host(&host(id, hash)), HostUpdate::Changed);
        }
        assert_eq!(
            index.set_host(&host("h4", "unknown")),
            HostUpdate::UnknownImage
        );
        assert_eq!(index.set_host(&host("h3", "b")), HostUpdate::Unchanged);
        let openssl = index.from_source(PackageType::Deb, "openssl").to_vec();
        assert_eq!(openssl.len(), 2);
        let old = openssl[0];
        assert_eq!(index.images_of(old).count(), 1);
        // h1 and h2 upgrade: image a is left empty and drops out.
        index.set_host(&host("h1", "b"));
        index.set_host(&host("h2", "b"));
        assert_eq!(index.images_of(old).count(), 0);
        assert_eq!(index.image(1).hosts.len(), 3);
        assert_eq!(index.images_in_use(), 1);
        assert!(
            index.has_image("a") && !index.runs_image("a"),
            "kept until compacted"
        );
        index.compact_if_worthwhile();
        assert!(!index.has_image("a"), "compacted away");
        // A host going back reloads the image.
        index.add_image(image("a", vec![deb("libssl3", "3.0.11-1", "openssl")]));
        assert_eq!(index.set_host(&host("h3", "a")), HostUpdate::Changed);
        assert_eq!(index.images_of(old).count(), 1);
        assert_eq!(index.hosts(), 3);
        assert!(Arc::ptr_eq(&index.host(0).labels, &index.host(2).labels));
    }
}
