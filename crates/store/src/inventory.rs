//! The fleet's software inventories, content-addressed: an inventory is stored once under
//! the hash of its content (most hosts of one image share it), and each host row points
//! at one. A list that comes in parts waits in `inventory_parts` until every part is
//! there; only a whole list that hashes to its name is ever stored.
//!
//! The server's in-memory index (posting lists over hosts) is rebuilt from these tables
//! at start and follows them by `updated_at_us`, so every instance sharing a database
//! answers for the whole fleet.

use std::collections::BTreeMap;

use hids_types::package::{inventory_hash, InventoryPart, OsRelease, Package};
use hids_types::Timestamp;

use crate::sql::{cell, Conn, Param, Row};
use crate::StoreError;

/// Packages one inventory may hold; a larger one is refused.
pub const MAX_INVENTORY_PACKAGES: usize = 1_000_000;
/// Parts one inventory may come in.
pub const MAX_INVENTORY_PARTS: u32 = 4096;
/// Bytes of parts one host may have waiting: a list larger than this (some 400,000
/// packages) is refused rather than held.
pub const MAX_PENDING_BYTES: i64 = 64 << 20;
/// Host rows one page of [`crate::Store::inventory_hosts`] returns at most.
pub const MAX_HOST_PAGE: usize = 100_000;

/// One host's report as the consumer read it: a part of its inventory, or the hash of an
/// unchanged one (`parts == 0`).
#[derive(Debug, Clone)]
pub struct InventoryReport {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// The event's time.
    pub reported_at: Timestamp,
    pub part: InventoryPart,
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryOutcome {
    /// The host now points at this inventory (new to the store, or known already).
    Published { host_id: String, hash: String },
    /// A part stored; the others have not all come yet.
    Pending,
    /// The host sent a hash the store does not hold (a server that lost it): the host's
    /// row is left as it was until its list comes whole.
    UnknownHash,
    /// Refused: the list does not hash to its name, has too many parts or packages, or
    /// contradicts its other parts. The reason says which.
    Refused(String),
}

/// A host's row.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInventory {
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub hash: String,
    pub reported_at: Timestamp,
    /// When the row last changed, by the server's clock: what the index follows.
    pub updated_at: Timestamp,
}

/// A page of host rows: those that parse, how many were read, and the last row's
/// (updated_at, host id), where the next page starts (parsed or not).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostPage {
    pub rows: Vec<HostInventory>,
    pub read: usize,
    pub last: Option<(Timestamp, String)>,
}

/// A stored inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredInventory {
    pub hash: String,
    pub os: OsRelease,
    pub kernel: String,
    pub packages: Vec<Package>,
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("cannot encode {what}: {e}")))
}

/// Records one report, inside the caller's transaction.
pub(crate) fn record(
    c: &mut dyn Conn,
    report: &InventoryReport,
    now: Timestamp,
) -> Result<InventoryOutcome, StoreError> {
    let part = &report.part;
    if part.parts == 0 {
        if !has_inventory(c, &part.hash)? {
            return Ok(InventoryOutcome::UnknownHash);
        }
        point_host(c, report, now)?;
        return Ok(published(report));
    }
    if part.parts > MAX_INVENTORY_PARTS || part.part >= part.parts {
        return Ok(InventoryOutcome::Refused(format!(
            "part {} of {} (at most {MAX_INVENTORY_PARTS} parts)",
            part.part, part.parts
        )));
    }
    if part.packages > MAX_INVENTORY_PACKAGES as u64 {
        return Ok(InventoryOutcome::Refused(format!(
            "{} packages (at most {MAX_INVENTORY_PACKAGES})",
            part.packages
        )));
    }
    if part.parts == 1 {
        return whole(c, report, std::borrow::Cow::Borrowed(&part.items), now);
    }
    // A redelivered part of the list the host already points at: nothing to assemble.
    if host_points_at(c, &report.host_id, &part.hash)? {
        point_host(c, report, now)?;
        return Ok(published(report));
    }
    // Parts of another list of this host are stale: that list will never be finished.
    c.execute(
        "DELETE FROM inventory_parts WHERE host_id = $1 AND hash <> $2",
        &[Param::Text(&report.host_id), Param::Text(&part.hash)],
    )?;
    let items = encode(&part.items, "packages")?;
    let pending = c.query(
        "SELECT COUNT(*), COALESCE(SUM(OCTET_LENGTH(items)), 0) FROM inventory_parts
         WHERE host_id = $1 AND hash = $2 AND part <> $3",
        &[
            Param::Text(&report.host_id),
            Param::Text(&part.hash),
            Param::Int(i64::from(part.part)),
        ],
    )?;
    let (others, bytes) = counts(&pending);
    if bytes.saturating_add(items.len() as i64) > MAX_PENDING_BYTES {
        return refuse_parts(
            c,
            report,
            format!("its parts hold more than {MAX_PENDING_BYTES} bytes"),
        );
    }
    c.execute(
        "INSERT INTO inventory_parts (host_id, hash, part, parts, items, received_at_us)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_id, hash, part) DO UPDATE SET
            parts = excluded.parts, items = excluded.items, received_at_us = excluded.received_at_us",
        &[
            Param::Text(&report.host_id),
            Param::Text(&part.hash),
            Param::Int(i64::from(part.part)),
            Param::Int(i64::from(part.parts)),
            Param::Text(&items),
            Param::Int(micros(now)),
        ],
    )?;
    if others + 1 < i64::from(part.parts) {
        return Ok(InventoryOutcome::Pending);
    }
    assemble(c, report, now)
}

/// Every part is there: read them in order, check they agree, store the whole.
fn assemble(
    c: &mut dyn Conn,
    report: &InventoryReport,
    now: Timestamp,
) -> Result<InventoryOutcome, StoreError> {
    let part = &report.part;
    let rows = c.query(
        "SELECT part, parts, items FROM inventory_parts WHERE host_id = $1 AND hash = $2 ORDER BY part",
        &[Param::Text(&report.host_id), Param::Text(&part.hash)],
    )?;
    let mut items = Vec::new();
    for row in &rows {
        let parts = cell(row, 1).and_then(|c| c.int("parts")).unwrap_or(-1);
        if parts != i64::from(part.parts) {
            let why = "its parts disagree on how many there are".to_owned();
            return refuse_parts(c, report, why);
        }
        let text = cell(row, 2).and_then(|c| c.text("items").map(str::to_owned));
        match text.map(|t| serde_json::from_str::<Vec<Package>>(&t)) {
            Ok(Ok(more)) => items.extend(more),
            Ok(Err(e)) => return refuse_parts(c, report, format!("a stored part: {e}")),
            Err(e) => return refuse_parts(c, report, format!("a stored part: {e}")),
        }
        if items.len() as u64 > part.packages {
            let why = format!(
                "its parts hold more than the {} packages announced",
                part.packages
            );
            return refuse_parts(c, report, why);
        }
    }
    c.execute(
        "DELETE FROM inventory_parts WHERE host_id = $1",
        &[Param::Text(&report.host_id)],
    )?;
    whole(c, report, std::borrow::Cow::Owned(items), now)
}

fn counts(rows: &[Row]) -> (i64, i64) {
    let first = rows.first();
    let int = |i: usize| {
        first
            .and_then(|r| cell(r, i).ok())
            .and_then(|c| c.int("count").ok())
            .unwrap_or(0)
    };
    (int(0), int(1))
}

fn host_points_at(c: &mut dyn Conn, host_id: &str, hash: &str) -> Result<bool, StoreError> {
    Ok(!c
        .query(
            "SELECT 1 FROM host_inventories WHERE host_id = $1 AND hash = $2",
            &[Param::Text(host_id), Param::Text(hash)],
        )?
        .is_empty())
}

fn refuse_parts(
    c: &mut dyn Conn,
    report: &InventoryReport,
    why: String,
) -> Result<InventoryOutcome, StoreError> {
    c.execute(
        "DELETE FROM inventory_parts WHERE host_id = $1",
        &[Param::Text(&report.host_id)],
    )?;
    Ok(InventoryOutcome::Refused(why))
}

fn published(report: &InventoryReport) -> InventoryOutcome {
    InventoryOutcome::Published {
        host_id: report.host_id.clone(),
        hash: report.part.hash.clone(),
    }
}

/// A whole list: stored once under its hash, checked against it first; the host pointed
/// at it. A list the store holds already is not checked again: the host could as well
/// have sent the hash alone, and pointing it at the stored list lies about nobody else.
fn whole(
    c: &mut dyn Conn,
    report: &InventoryReport,
    packages: std::borrow::Cow<'_, [Package]>,
    now: Timestamp,
) -> Result<InventoryOutcome, StoreError> {
    let part = &report.part;
    if has_inventory(c, &part.hash)? {
        point_host(c, report, now)?;
        return Ok(published(report));
    }
    if packages.len() != part.packages as usize || packages.len() > MAX_INVENTORY_PACKAGES {
        return Ok(InventoryOutcome::Refused(format!(
            "{} packages received, {} announced",
            packages.len(),
            part.packages
        )));
    }
    // The plugin sends them sorted; anything else is sorted here before hashing.
    let packages = if packages.is_sorted() {
        packages
    } else {
        let mut sorted = packages.into_owned();
        sorted.sort();
        std::borrow::Cow::Owned(sorted)
    };
    let hash = inventory_hash(&part.os, &part.kernel, &packages);
    if hash != part.hash {
        return Ok(InventoryOutcome::Refused(format!(
            "the packages hash to {hash}, not to the {} the host named",
            part.hash
        )));
    }
    c.execute(
        "INSERT INTO inventories (hash, os, kernel, package_count, packages, created_at_us)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
        &[
            Param::Text(&hash),
            Param::Text(&encode(&part.os, "os")?),
            Param::Text(&part.kernel),
            Param::Int(packages.len() as i64),
            Param::Text(&encode(&packages.as_ref(), "packages")?),
            Param::Int(micros(now)),
        ],
    )?;
    point_host(c, report, now)?;
    Ok(published(report))
}

fn has_inventory(c: &mut dyn Conn, hash: &str) -> Result<bool, StoreError> {
    Ok(!c
        .query(
            "SELECT 1 FROM inventories WHERE hash = $1",
            &[Param::Text(hash)],
        )?
        .is_empty())
}

/// Points the host at the inventory and records when it reported. `updated_at_us` moves
/// with every report, so the index shows when each host last reported (the live check
/// proves freshness with it); a report older than the one the row holds (redelivered,
/// or overtaken) changes nothing.
fn point_host(
    c: &mut dyn Conn,
    report: &InventoryReport,
    now: Timestamp,
) -> Result<(), StoreError> {
    let labels = encode(&report.labels, "labels")?;
    c.execute(
        "INSERT INTO host_inventories (host_id, hash, hostname, labels, reported_at_us, updated_at_us)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_id) DO UPDATE SET
            reported_at_us = excluded.reported_at_us,
            updated_at_us = excluded.updated_at_us,
            hash = excluded.hash, hostname = excluded.hostname, labels = excluded.labels
         WHERE excluded.reported_at_us >= host_inventories.reported_at_us",
        &[
            Param::Text(&report.host_id),
            Param::Text(&report.part.hash),
            Param::Text(&report.hostname),
            Param::Text(&labels),
            Param::Int(micros(report.reported_at)),
            Param::Int(micros(now)),
        ],
    )?;
    Ok(())
}

/// Host rows changed after (`since`, `after`) in (updated_at, host id) order: pages of a
/// start-up load (since = 0) or of a refresh. Keyed on the index of both, so a refresh
/// that finds little reads little, at a million hosts too.
pub(crate) fn hosts(
    c: &mut dyn Conn,
    since: Timestamp,
    after: &str,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    c.query(
        "SELECT host_id, hostname, labels, hash, reported_at_us, updated_at_us
         FROM host_inventories WHERE (updated_at_us, host_id) > ($1, $2)
         ORDER BY updated_at_us, host_id LIMIT $3",
        &[
            Param::Int(micros(since)),
            Param::Text(after),
            Param::Int(limit.clamp(1, MAX_HOST_PAGE) as i64),
        ],
    )
}

/// The cursor of a row: its (updated_at, host id), read even when the rest does not parse.
pub(crate) fn cursor_of(row: &Row) -> Option<(Timestamp, String)> {
    let updated = cell(row, 5).ok()?.int("updated_at_us").ok()?;
    let host = cell(row, 0).ok()?.text("host_id").ok()?;
    let nanos = u64::try_from(updated).unwrap_or(0).saturating_mul(1000);
    Some((Timestamp::from_unix_nanos(nanos), host.to_owned()))
}

pub(crate) fn host_from_row(row: &Row) -> Result<HostInventory, String> {
    Ok(HostInventory {
        host_id: cell(row, 0)?.text("host_id")?.to_owned(),
        hostname: cell(row, 1)?.text("hostname")?.to_owned(),
        labels: serde_json::from_str(cell(row, 2)?.text("labels")?)
            .map_err(|e| format!("labels: {e}"))?,
        hash: cell(row, 3)?.text("hash")?.to_owned(),
        reported_at: cell(row, 4)?.micros("reported_at_us")?,
        updated_at: cell(row, 5)?.micros("updated_at_us")?,
    })
}

pub(crate) fn inventory(c: &mut dyn Conn, hash: &str) -> Result<Vec<Row>, StoreError> {
    c.query(
        "SELECT hash, os, kernel, packages FROM inventories WHERE hash = $1",
        &[Param::Text(hash)],
    )
}

pub(crate) fn inventory_from_row(row: &Row) -> Result<StoredInventory, String> {
    Ok(StoredInventory {
        hash: cell(row, 0)?.text("hash")?.to_owned(),
        os: serde_json::from_str(cell(row, 1)?.text("os")?).map_err(|e| format!("os: {e}"))?,
        kernel: cell(row, 2)?.text("kernel")?.to_owned(),
        packages: serde_json::from_str(cell(row, 3)?.text("packages")?)
            .map_err(|e| format!("packages: {e}"))?,
    })
}
