//! Reading an `inventory` event without building its package list as JSON values.
//!
//! A whole list is a few hundred kilobytes; at a fleet's first roll-out every host sends
//! one. The envelope (host, labels, sequence: what the fleet's books need) is decoded as
//! usual, the packages are kept as raw JSON and parsed only when the server does not
//! hold that inventory yet. A host that names an inventory the server holds is pointed
//! at the stored one: a host lying about its own list this way lies only about itself,
//! and no list is ever stored under a hash it does not hash to.

use hids_types::package::{InventoryPart, OsRelease, Package};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// What every inventory event carries; a message without it takes the ordinary path.
const ACTION: &[u8] = b"\"action\":\"inventory\"";

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(rename = "@timestamp", default)]
    timestamp: Value,
    #[serde(default)]
    event: Value,
    #[serde(default)]
    host: Value,
    #[serde(default)]
    labels: Value,
    #[serde(borrow)]
    hids: HidsView<'a>,
}

#[derive(Deserialize)]
struct HidsView<'a> {
    #[serde(default)]
    plugin: Value,
    #[serde(default)]
    run_id: Value,
    #[serde(borrow)]
    inventory: PartView<'a>,
}

#[derive(Deserialize)]
struct PartView<'a> {
    hash: String,
    packages: u64,
    #[serde(default)]
    part: u32,
    parts: u32,
    #[serde(default)]
    os: OsRelease,
    #[serde(default)]
    kernel: String,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(borrow, default)]
    items: Option<&'a RawValue>,
}

/// An inventory event, its packages not parsed yet.
pub struct Decoded<'a> {
    /// The event without `hids.inventory`: what origin and the fleet's books read.
    pub envelope: Value,
    head: InventoryPart,
    items: Option<&'a RawValue>,
}

/// Decodes the message when it is an inventory event; None sends it down the ordinary
/// path (which counts it as malformed if it claims to be one).
pub fn decode(payload: &[u8]) -> Option<Decoded<'_>> {
    if !contains(payload, ACTION) {
        return None;
    }
    let view: EventView<'_> = serde_json::from_slice(payload).ok()?;
    if view.event.get("action").and_then(Value::as_str)
        != Some(hids_types::package::INVENTORY_ACTION)
    {
        return None;
    }
    let part = view.hids.inventory;
    Some(Decoded {
        envelope: serde_json::json!({
            "@timestamp": view.timestamp,
            "event": view.event,
            "host": view.host,
            "labels": view.labels,
            "hids": {"plugin": view.hids.plugin, "run_id": view.hids.run_id},
        }),
        head: InventoryPart {
            hash: part.hash,
            packages: part.packages,
            part: part.part,
            parts: part.parts,
            os: part.os,
            kernel: part.kernel,
            items: Vec::new(),
            command_id: part.command_id,
        },
        items: part.items,
    })
}

impl Decoded<'_> {
    pub fn hash(&self) -> &str {
        &self.head.hash
    }

    /// The report to store: the hash alone when the server holds the list (`known`),
    /// else the part with its packages parsed. Err when they do not parse.
    pub fn into_part(self, known: bool) -> Result<InventoryPart, serde_json::Error> {
        let mut part = self.head;
        if known {
            part.parts = 0;
            part.part = 0;
            return Ok(part);
        }
        if let Some(raw) = self.items {
            part.items = serde_json::from_str::<Vec<Package>>(raw.get())?;
        }
        Ok(part)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"@timestamp":"2026-11-30T10:00:00Z","event":{"kind":"state","category":["package"],"type":["info"],"action":"inventory","sequence":3,"module":"hids","dataset":"hids.inventory"},"host":{"id":"h1","hostname":"web-1"},"labels":{"idc":"bj1"},"hids":{"plugin":"inventory","run_id":"r1","inventory":{"hash":"ab","packages":1,"part":0,"parts":1,"os":{"id":"debian","version_id":"12","codename":"bookworm","name":"Debian"},"kernel":"6.1","items":[{"type":"deb","name":"bash","version":"5.2.15-2+b8","architecture":"amd64","source_version":"5.2.15-2"}]}}}"#;

    #[test]
    fn the_envelope_is_kept_and_the_packages_parsed_only_when_needed() {
        let decoded = decode(EVENT.as_bytes()).unwrap();
        assert_eq!(decoded.envelope["host"]["id"], "h1");
        assert_eq!(decoded.envelope["event"]["sequence"], 3);
        assert_eq!(decoded.envelope["hids"]["run_id"], "r1");
        assert!(decoded.envelope["hids"].get("inventory").is_none());
        let part = decode(EVENT.as_bytes()).unwrap().into_part(false).unwrap();
        assert_eq!(part.items.len(), 1);
        assert_eq!(part.items[0].source_version(), "5.2.15-2");
        let known = decoded.into_part(true).unwrap();
        assert_eq!((known.parts, known.items.len()), (0, 0));
    }

    #[test]
    fn other_events_and_broken_inventories_take_the_ordinary_path() {
        assert!(decode(br#"{"event":{"action":"exec"}}"#).is_none());
        assert!(decode(br#"{"event":{"action":"inventory"},"hids":{}}"#).is_none());
        let bad_items = EVENT.replace(r#""items":[{"type":"deb""#, r#""items":[{"type":"exe""#);
        let decoded = decode(bad_items.as_bytes()).unwrap();
        assert!(decoded.into_part(false).is_err());
    }
}
