//! The fleet's software: inventories from the agents' inventory plugin, kept
//! content-addressed in the store and as posting lists in memory ([`index`]), matched
//! against the operator's vulnerability feeds ([`query`]). See docs/inventory.md.

pub mod decode;
pub mod http;
pub mod index;
pub mod query;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hids_store::{HostInventory, Store, StoreError, MAX_HOST_PAGE};
use hids_types::Timestamp;
use hids_vulns::feed::{FeedLimits, FeedLoad, Feeds};

use crate::config::VulnsConfig;
use index::{FleetIndex, HostUpdate};

/// How often the index follows the store when nobody pokes it: what another instance
/// (sharing a PostgreSQL store) recorded shows within this.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Rows re-read before the last change seen: writers' clocks (several instances) may
/// differ a little, and a row committed late may carry an earlier time.
const REFRESH_OVERLAP: Duration = Duration::from_secs(10);
/// Parts of a list that never came whole are dropped after this long.
const PARTS_TTL: Duration = Duration::from_secs(24 * 3600);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Hosts remembered as waiting for their inventory.
const MAX_WAITING: usize = 1_000_000;
/// The fleet's vulnerability list is recomputed at most this often.
const TOP_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// Inventories read from the store before they are added to the index.
const IMAGES_PER_BATCH: usize = 16;

/// The fleet's vulnerability list: the index and feeds generation it was made at, when,
/// and the list.
type TopList = (u64, Instant, Arc<Vec<query::VulnSummary>>);

/// The inventory index, the feeds, and the thread that keeps them current.
pub struct Inventory {
    index: RwLock<FleetIndex>,
    feeds: RwLock<Arc<Feeds>>,
    feed_load: Mutex<Option<FeedLoad>>,
    feed_stamps: Mutex<Vec<Option<SystemTime>>>,
    /// Why the feeds in force are incomplete: files failed at the first load, so no
    /// earlier good load stands in for them.
    feeds_failure: Mutex<Option<String>>,
    config: VulnsConfig,
    store: Mutex<Box<dyn Store>>,
    /// The newest `updated_at` applied.
    watermark: Mutex<Timestamp>,
    /// Set once the whole store has been read: before, answers would be partial.
    ready: AtomicBool,
    /// Bumped at every change of the index or the feeds (caches key on it).
    generation: AtomicU64,
    poke: (Mutex<bool>, Condvar),
    /// Hosts whose row names an inventory the store does not hold (a row written while
    /// a prune ran): `waiting.len()`, for the API.
    pub missing_inventories: AtomicU64,
    waiting: Mutex<std::collections::HashSet<String>>,
    top_cache: Mutex<Option<TopList>>,
}

impl Inventory {
    /// `store` is a handle of its own (the index reads while the consumer writes).
    pub fn new(store: Box<dyn Store>, config: VulnsConfig) -> Arc<Inventory> {
        let inventory = Arc::new(Inventory {
            index: RwLock::default(),
            feeds: RwLock::default(),
            feed_load: Mutex::default(),
            feed_stamps: Mutex::default(),
            feeds_failure: Mutex::default(),
            config,
            store: Mutex::new(store),
            watermark: Mutex::new(Timestamp::from_unix_nanos(0)),
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            poke: (Mutex::new(false), Condvar::new()),
            missing_inventories: AtomicU64::new(0),
            waiting: Mutex::default(),
            top_cache: Mutex::default(),
        });
        inventory.reload_feeds_if_changed();
        inventory
    }

    /// Loads the store, then follows it until `shutdown`; re-reads changed feeds.
    pub fn run(self: Arc<Self>, shutdown: Arc<AtomicBool>) {
        let mut feeds_checked = Instant::now();
        let mut pruned: Option<Instant> = None;
        while !shutdown.load(Ordering::Relaxed) {
            let started = Instant::now();
            match self.refresh() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    "inventory index: {n} host rows applied in {:?}",
                    started.elapsed()
                ),
                Err(e) => {
                    tracing::warn!("inventory index: reading the store: {e}; retrying");
                    self.wait_for_poke(REFRESH_EVERY);
                    continue;
                }
            }
            if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned = Some(Instant::now());
                match self.prune() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        "inventory: pruned {n} unfinished parts and unused inventories"
                    ),
                    Err(e) => tracing::warn!("inventory: pruning: {e}"),
                }
            }
            if feeds_checked.elapsed() >= Duration::from_secs(self.config.reload_secs.max(1)) {
                feeds_checked = Instant::now();
                self.reload_feeds_if_changed();
            }
            self.wait_for_poke(REFRESH_EVERY);
        }
    }

    /// Asks the refresher to look at the store now (the consumer just wrote to it).
    pub fn poke(&self) {
        let (flag, cv) = &self.poke;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }

    fn wait_for_poke(&self, at_most: Duration) {
        let (flag, cv) = &self.poke;
        let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, at_most, |poked| !*poked)
            .unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }

    /// Whether the index holds this inventory (so a host naming it need not send it).
    ///
    /// Never waits: the consumer asks for every inventory event, and the index may be
    /// busy (a refresh waiting to write behind a long read). Busy means "no": the list
    /// is then parsed and the store finds it stored.
    pub fn holds(&self, hash: &str) -> bool {
        match self.index.try_read() {
            Ok(index) => index.runs_image(hash),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().runs_image(hash),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Applies the host rows changed since the last refresh (all of them the first
    /// time), in pages by (updated_at, host id); returns how many changed what the index
    /// shows. The watermark moves only when every page was read.
    pub fn refresh(&self) -> Result<usize, StoreError> {
        let mark = *self.watermark.lock().unwrap_or_else(|p| p.into_inner());
        let since = Timestamp::from_unix_nanos(
            mark.unix_nanos()
                .saturating_sub(REFRESH_OVERLAP.as_nanos() as u64),
        );
        let (mut since, mut after) = (since, String::new());
        let mut changed = 0;
        let mut newest = mark;
        loop {
            let page = self
                .lock_store()
                .inventory_hosts(since, &after, MAX_HOST_PAGE)?;
            // The cursor is the last row read, parsed or not: a row that no longer parses
            // must neither end the load early nor stop the pages at it.
            let Some(last) = page.last else { break };
            changed += self.apply(&page.rows)?;
            newest = newest.max(last.0);
            (since, after) = last;
            if page.read < MAX_HOST_PAGE {
                break;
            }
        }
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = newest;
        if !self.ready.swap(true, Ordering::Relaxed) {
            let index = self.read_index();
            tracing::info!(
                "inventory index loaded: {} hosts, {} inventories, {} distinct packages",
                index.hosts(),
                index.images_in_use(),
                index.distinct_packages()
            );
        }
        if changed > 0 {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(changed)
    }

    /// One page: the inventories it names that the index lacks are read first (without
    /// holding the index), then the hosts are pointed at them under one write lock.
    /// Returns the rows that changed what the index shows.
    fn apply(&self, rows: &[HostInventory]) -> Result<usize, StoreError> {
        let mut missing: Vec<&str> = {
            let index = self.read_index();
            rows.iter()
                .map(|r| r.hash.as_str())
                .filter(|h| !index.has_image(h))
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        // In bounded batches: a page of a fleet of unique lists must not hold them all.
        for batch in missing.chunks(IMAGES_PER_BATCH) {
            let mut loaded = Vec::with_capacity(batch.len());
            for hash in batch {
                loaded.extend(self.lock_store().inventory(hash)?);
            }
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            for stored in loaded {
                index.add_image(stored);
            }
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0;
        for row in rows {
            match index.set_host(row) {
                HostUpdate::Changed => changed += 1,
                HostUpdate::Unchanged => {}
                HostUpdate::UnknownImage => {
                    if waiting.len() < MAX_WAITING && waiting.insert(row.host_id.clone()) {
                        tracing::warn!(
                            "inventory index: host {} names inventory {} that the store does not hold",
                            row.host_id,
                            row.hash
                        );
                    }
                    continue;
                }
            }
            waiting.remove(&row.host_id);
        }
        index.compact_if_worthwhile();
        self.missing_inventories
            .store(waiting.len() as u64, Ordering::Relaxed);
        Ok(changed)
    }

    /// Drops parts that never came whole and inventories nobody runs.
    pub fn prune(&self) -> Result<u64, StoreError> {
        let cutoff = Timestamp::now()
            .unix_nanos()
            .saturating_sub(PARTS_TTL.as_nanos() as u64);
        self.lock_store()
            .prune_inventories(Timestamp::from_unix_nanos(cutoff))
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn read_index(&self) -> std::sync::RwLockReadGuard<'_, FleetIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn feeds(&self) -> Arc<Feeds> {
        self.feeds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why the feeds in force are incomplete, if they are.
    pub fn feeds_failure(&self) -> Option<String> {
        self.feeds_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last load's report per file, as JSON for the API.
    pub fn feed_report(&self) -> serde_json::Value {
        match &*self.feed_load.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(load) => serde_json::to_value(load).unwrap_or_default(),
            None => serde_json::Value::Null,
        }
    }

    /// Re-reads the feeds when a file's modification time changed. A load with any file
    /// refused keeps the last good feeds (a half-downloaded tracker file must not make
    /// the fleet look clean) and says which file and why.
    pub fn reload_feeds_if_changed(&self) {
        let stamps: Vec<Option<SystemTime>> = self
            .config
            .feeds
            .iter()
            .map(|p| modified(p.as_path()))
            .collect();
        {
            let mut last = self.feed_stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *last == stamps
                && self
                    .feed_load
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            {
                return;
            }
            *last = stamps;
        }
        let limits = FeedLimits {
            max_file_bytes: self.config.max_feed_bytes,
            ..FeedLimits::default()
        };
        let started = Instant::now();
        let (feeds, load) = Feeds::load(&self.config.feeds, &limits);
        // A path refused whole fails the load, and so does one whose every member failed;
        // a broken member of an OSV directory or archive otherwise costs only itself
        // (counted in the report), or one bad record among a hundred thousand would pin
        // an old load for ever.
        let failed = load.files.iter().any(|f| path_failure(f).is_some());
        for file in &load.files {
            match &file.error {
                Some(e) => tracing::error!("vulnerability feed {}: {e}", file.path.display()),
                None => tracing::info!(
                    "vulnerability feed {}: {} records ({} skipped) in {:?}",
                    file.path.display(),
                    file.advisories,
                    file.skipped.total(),
                    started.elapsed()
                ),
            }
        }
        let first = self
            .feed_load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if !failed || first {
            *self.feeds.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(feeds);
            self.generation.fetch_add(1, Ordering::Relaxed);
            let why: Vec<String> = load
                .files
                .iter()
                .filter_map(|f| Some(format!("{}: {}", f.path.display(), path_failure(f)?)))
                .collect();
            *self.feeds_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                (!why.is_empty()).then(|| why.join("; "));
        } else {
            tracing::error!("vulnerability feeds: keeping the last good load (see above)");
        }
        *self.feed_load.lock().unwrap_or_else(|p| p.into_inner()) = Some(load);
    }

    /// At a million hosts from thousands of images a pass takes seconds: it is made at
    /// most once a minute (and again only when the index or feeds changed), and one
    /// caller makes it while the others wait for it.
    pub fn top(&self) -> Arc<Vec<query::VulnSummary>> {
        let generation = self.generation();
        let mut cache = self.top_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, at, top)) = &*cache {
            if *g == generation || at.elapsed() < TOP_AT_MOST_EVERY {
                return top.clone();
            }
        }
        let feeds = self.feeds();
        let top = Arc::new(query::fleet_vulns(&self.read_index(), &feeds));
        *cache = Some((generation, Instant::now(), top.clone()));
        top
    }
}

/// Why a feed path counts as failed: refused whole, or nothing of it loaded because every
/// member failed.
fn path_failure(file: &hids_vulns::feed::FileReport) -> Option<String> {
    match &file.error {
        Some(e) => Some(e.clone()),
        None if file.advisories == 0 && file.files_failed > 0 => Some(format!(
            "all {} of its files failed to load",
            file.files_failed
        )),
        None => None,
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
