//! `hidsctl gateways`: what each watch gateway says it serves, checked against etcd.
//!
//! With agents behind gateways, etcd holds one watch stream per gateway, so "active
//! streams = agents" (the original design's health signal) no longer shows in etcd's
//! metrics. Each gateway reports the status keys it owns under `gateways/<name>`; the
//! keys themselves are on the gateway's lease, so etcd can count them independently.
//! A difference is a gateway that lost track of agents (or an old report: they are
//! written every 10 s, so a fleet coming or going shows one for that long).

use std::collections::HashMap;

use etcd_client::Client;
use hids_control::gateways::GatewayReport;
use hids_control::Keys;
use serde::Serialize;

use crate::exit::Exit;

#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    report: GatewayReport,
    /// Status keys etcd holds on the gateway's lease.
    keys_on_lease: u64,
    /// `agents` reported minus `keys_on_lease`.
    difference: i64,
    /// Written more than three report intervals ago: the gateway is gone or cut off
    /// (left out of the check; the report leaves etcd with the gateway's lease).
    stale: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    gateways: Vec<Row>,
    /// Agents the gateways say they serve, summed.
    reported_agents: u64,
    /// Status keys on gateway leases, and on other leases (agents connected to etcd
    /// directly), and all of them.
    keys_via_gateways: u64,
    keys_direct: u64,
    keys_total: u64,
    /// Every gateway's report matches the keys on its lease.
    consistent: bool,
}

/// Lists the gateways and checks their reports: [`Exit::Inconsistent`] when a report
/// differs from the keys on that gateway's lease.
///
/// # Errors
/// When etcd cannot be read.
pub async fn gateways(client: &mut Client, keys: &Keys, json: bool) -> anyhow::Result<Exit> {
    let summary = summarize(client, keys).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(if summary.consistent {
        Exit::Success
    } else {
        Exit::Inconsistent
    })
}

async fn summarize(client: &mut Client, keys: &Keys) -> anyhow::Result<Summary> {
    let mut reports = Vec::new();
    let mut bad = 0;
    let (all, _) = crate::fleet::get_all(client, &keys.gateways()).await?;
    for (_, value, _) in all {
        match serde_json::from_slice::<GatewayReport>(&value) {
            Ok(r) => reports.push(r),
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        eprintln!("hidsctl: skipped {bad} gateway report(s) that do not parse");
    }
    let mut by_lease: HashMap<i64, u64> = HashMap::new();
    let mut keys_total: u64 = 0;
    hids_control::read::for_each_page(
        client,
        &keys.agents(),
        true,
        hids_control::read::PAGE,
        |kvs| {
            for kv in kvs {
                keys_total += 1;
                *by_lease.entry(kv.lease()).or_default() += 1;
            }
        },
    )
    .await?;
    // Clocks are compared: the gateways' and this host's must agree within a few
    // seconds (NTP), or every report looks stale.
    let now = hids_types::Timestamp::now().unix_secs().max(0) as u64;
    let gateways: Vec<Row> = reports
        .into_iter()
        .map(|report| {
            let keys_on_lease = by_lease.get(&report.lease).copied().unwrap_or(0);
            Row {
                difference: report.agents as i64 - keys_on_lease as i64,
                keys_on_lease,
                stale: report.stale(now),
                report,
            }
        })
        .collect();
    let keys_via_gateways: u64 = gateways.iter().map(|g| g.keys_on_lease).sum();
    let live = || gateways.iter().filter(|g| !g.stale);
    Ok(Summary {
        reported_agents: live().map(|g| g.report.agents).sum(),
        consistent: live().all(|g| g.difference == 0),
        keys_direct: keys_total.saturating_sub(keys_via_gateways),
        keys_via_gateways,
        keys_total,
        gateways,
    })
}

fn print_table(s: &Summary) {
    let rows: Vec<Vec<String>> = s
        .gateways
        .iter()
        .map(|g| {
            let r = &g.report;
            vec![
                r.name.clone(),
                r.listen.clone(),
                format!("{:x}", r.lease),
                r.agents.to_string(),
                g.keys_on_lease.to_string(),
                if g.stale {
                    "stale".to_owned()
                } else {
                    format!("{:+}", g.difference)
                },
                r.connections.to_string(),
                r.watches.to_string(),
                r.revision.to_string(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(
            &[
                "GATEWAY",
                "LISTEN",
                "LEASE",
                "AGENTS",
                "KEYS",
                "DIFF",
                "CONNECTIONS",
                "WATCHES",
                "REVISION"
            ],
            &rows
        )
    );
    let counts = [
        ("agents reported by gateways", s.reported_agents),
        ("status keys on gateway leases", s.keys_via_gateways),
        ("status keys of agents on etcd directly", s.keys_direct),
    ];
    for (what, n) in counts {
        eprintln!("{n:>10}  {what}");
    }
    if s.consistent {
        eprintln!("every gateway's report matches the status keys on its lease");
    } else {
        eprintln!(
            "a gateway's report differs from the keys on its lease (reports are 10 s old at \
             most: run again; a difference that stays is a gateway that lost track of agents)"
        );
    }
}
