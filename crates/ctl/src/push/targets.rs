//! Stage 1: the targets. Online agents matching the target, or the given host ids.

use std::collections::BTreeMap;

use etcd_client::Client;
use hids_control::select::Target;
use hids_control::Keys;
use serde::Deserialize;

use crate::fleet;

/// The targets, who was online when they were chosen, and the revision that was read
/// at (acknowledgements are followed from there).
pub struct Fleet {
    pub hosts: Vec<String>,
    pub online: BTreeMap<String, BTreeMap<String, String>>,
    pub online_at: i64,
}

/// The part of a status document a push reads to choose targets.
#[derive(Deserialize)]
struct Labelled {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The hosts `target` names.
///
/// # Errors
/// When etcd cannot be read, or no host matches.
pub async fn choose(client: &mut Client, keys: &Keys, target: &Target) -> anyhow::Result<Fleet> {
    let (online, online_at) = presence(client, keys, target.selector.is_some()).await?;
    let hosts: Vec<String> = if target.hosts.is_empty() {
        online
            .iter()
            .filter(|(h, labels)| target.matches(h, labels))
            .map(|(h, _)| h.clone())
            .collect()
    } else {
        let none = BTreeMap::new();
        target
            .hosts
            .iter()
            .filter(|h| target.matches(h, online.get(*h).unwrap_or(&none)))
            .cloned()
            .collect()
    };
    if hosts.is_empty() {
        anyhow::bail!(
            "no host matches {} ({} agent(s) online)",
            target.describe(),
            online.len()
        );
    }
    Ok(Fleet {
        hosts,
        online,
        online_at,
    })
}

/// Online agents (their status keys) with their labels when `with_labels` (a selector
/// needs them; `--all`, `--percent` and `--hosts` need only who is there), and the
/// revision of the read.
async fn presence(
    client: &mut Client,
    keys: &Keys,
    with_labels: bool,
) -> anyhow::Result<(BTreeMap<String, BTreeMap<String, String>>, i64)> {
    if with_labels {
        let (online, revision) = fleet::online_at::<Labelled>(client, keys).await?;
        let labels = online.into_iter().map(|(h, l)| (h, l.labels)).collect();
        return Ok((labels, revision));
    }
    let dir = keys.agents();
    let (all, revision) = fleet::get_all_with(client, &dir, true).await?;
    let online = all
        .iter()
        .filter_map(|(key, _, _)| keys.host_of(&dir, key))
        .map(|host| (host.to_owned(), BTreeMap::new()))
        .collect();
    Ok((online, revision))
}
