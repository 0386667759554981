//! Read-only views: agents, counts by label, history (the records
//! [`hids_control::writer`] writes with every change).

use crate::exit::Exit;
use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use hids_control::select::Selector;
use hids_control::writer::HistoryRecord;
use hids_control::Keys;
use hids_types::status::AgentStatus;

/// Reads every key under `prefix`, a page at a time.
pub async fn get_all(
    client: &mut Client,
    prefix: &str,
) -> anyhow::Result<(Vec<(Vec<u8>, Vec<u8>, i64)>, i64)> {
    get_all_with(client, prefix, false).await
}

/// [`get_all`], with empty values when `keys_only` (who is there, not what they say:
/// a tenth of the bytes for a fleet's status keys).
pub async fn get_all_with(
    client: &mut Client,
    prefix: &str,
    keys_only: bool,
) -> anyhow::Result<(Vec<(Vec<u8>, Vec<u8>, i64)>, i64)> {
    let mut out = Vec::new();
    let revision = hids_control::read::for_each_page(
        client,
        prefix,
        keys_only,
        hids_control::read::PAGE,
        |kvs| {
            out.extend(
                kvs.iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision())),
            )
        },
    )
    .await?;
    Ok((out, revision))
}

/// Every online agent's status (or the part of it in `T`), by host id. Values that do
/// not parse are reported once on stderr and skipped.
pub async fn online<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<BTreeMap<String, T>> {
    Ok(online_at(client, keys).await?.0)
}

/// [`online`], and the revision it was read at.
pub async fn online_at<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<(BTreeMap<String, T>, i64)> {
    let dir = keys.agents();
    let (all, revision) = get_all(client, &dir).await?;
    let mut out = BTreeMap::new();
    let mut bad = 0;
    for (key, value, _) in all {
        let Some(host) = keys.host_of(&dir, &key) else {
            continue;
        };
        match serde_json::from_slice::<T>(&value) {
            Ok(s) => {
                out.insert(host.to_owned(), s);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        eprintln!("hidsctl: skipped {bad} agent status value(s) that are not status documents");
    }
    Ok((out, revision))
}

pub async fn agents(
    client: &mut Client,
    keys: &Keys,
    selector: Option<&Selector>,
    json: bool,
) -> anyhow::Result<Exit> {
    let agents: Vec<AgentStatus> = online::<AgentStatus>(client, keys)
        .await?
        .into_values()
        .filter(|a| selector.is_none_or(|s| s.matches(&a.labels)))
        .collect();
    if json {
        out!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.host_id.clone(),
                a.hostname.clone(),
                a.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                a.version.clone(),
                a.applied_generation.to_string(),
                a.plugins
                    .iter()
                    .map(|p| format!("{}:{}", p.name, p.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(" "),
                match (&a.desired_error, a.stopped_by_command) {
                    (Some(e), _) => format!("refused: {e}"),
                    (None, true) => "stopped by command".into(),
                    (None, false) => "ok".into(),
                },
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(
            &["HOST", "HOSTNAME", "LABELS", "VERSION", "GEN", "PLUGINS", "STATE"],
            &rows
        )
    );
    eprintln!("{} agent(s) online", agents.len());
    Ok(Exit::Success)
}

pub async fn stats(client: &mut Client, keys: &Keys, by: &str, json: bool) -> anyhow::Result<Exit> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for a in online::<AgentStatus>(client, keys).await?.values() {
        let value = a.labels.get(by).cloned().unwrap_or_else(|| "(none)".into());
        *counts.entry(value).or_default() += 1;
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&counts)?);
        return Ok(Exit::Success);
    }
    let total: u64 = counts.values().sum();
    let mut rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(v, n)| vec![v.clone(), n.to_string()])
        .collect();
    rows.push(vec!["TOTAL".into(), total.to_string()]);
    out_raw!("{}", hids_types::text::table(&[by, "AGENTS"], &rows));
    Ok(Exit::Success)
}

pub async fn history(
    client: &mut Client,
    keys: &Keys,
    limit: usize,
    json: bool,
) -> anyhow::Result<Exit> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(limit as i64);
    let resp = client.get(keys.history_dir(), Some(opts)).await?;
    let mut records: Vec<HistoryRecord> = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    records.reverse();
    if json {
        out!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                humantime::format_rfc3339_micros(r.at.0).to_string(),
                r.by.clone(),
                r.action.clone(),
                r.generation.to_string(),
                r.target.clone(),
                r.hosts.len().to_string(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(
            &["TIME", "BY", "ACTION", "GENERATION", "TARGET", "HOSTS"],
            &rows
        )
    );
    Ok(Exit::Success)
}
