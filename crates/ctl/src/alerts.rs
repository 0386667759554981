//! `hidsctl alerts` and `hidsctl rules`: a client of hids-server's HTTP API.

use std::time::Duration;

use hids_types::alert::{Alert, Level, SummaryRow, Suppression};
use hids_types::fleet::{TopFigure, TopHost};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::exit::Exit;

/// Filters shared by `alerts list` and `alerts summary`, as the API takes them.
#[derive(Debug, Default, clap::Args)]
pub struct Filter {
    /// Only this level.
    #[arg(long)]
    pub level: Option<Level>,
    /// This level and above (informational, low, medium, high, critical).
    #[arg(long)]
    pub min_level: Option<Level>,
    /// Only this rule.
    #[arg(long = "rule")]
    pub rule_id: Option<String>,
    /// Only this host.
    #[arg(long = "host")]
    pub host_id: Option<String>,
    /// Only hosts with this label, `name=value` (repeatable: all must hold).
    #[arg(long = "label", value_parser = crate::parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Last seen since: RFC 3339, or a duration back from now (1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// First seen before: RFC 3339, or a duration back from now (with --since: alerts
    /// whose span overlaps the range).
    #[arg(long)]
    pub until: Option<String>,
}

impl Filter {
    fn query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                q.push((k.to_owned(), v));
            }
        };
        put("level", self.level.map(|l| l.to_string()));
        put("min_level", self.min_level.map(|l| l.to_string()));
        put("rule_id", self.rule_id.clone());
        put("host_id", self.host_id.clone());
        put("since", self.since.clone());
        put("until", self.until.clone());
        for (k, v) in &self.labels {
            q.push(("label".into(), format!("{k}:{v}")));
        }
        q
    }
}

pub struct Api {
    base: String,
    http: reqwest::Client,
    /// `X-Total-Count` of the last answer: rows in all, of which a listing returned a page.
    last_total: std::sync::Mutex<Option<u64>>,
}

impl Api {
    pub fn new(server: &str) -> anyhow::Result<Api> {
        Ok(Api {
            base: server.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            last_total: std::sync::Mutex::new(None),
        })
    }

    /// One call; the server's own error text when it refuses.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("{url}: {e}; is hids-server running there? (--server, HIDSCTL_SERVER)")
        })?;
        let status = resp.status();
        let total = resp
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        *self.last_total.lock().unwrap_or_else(|p| p.into_inner()) = total;
        let bytes = resp.bytes().await?.to_vec();
        // A 404 for one alert or suppression means "no such id" (the caller says so); for
        // a listing it means a wrong --server.
        let one_item = path.starts_with("/api/v1/suppressions/")
            || path.starts_with("/api/v1/inventory/hosts/")
            || (path.starts_with("/api/v1/alerts/") && path != "/api/v1/alerts/summary");
        if !status.is_success() && (status != StatusCode::NOT_FOUND || !one_item) {
            let why = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            anyhow::bail!("{url}: {status}: {why}");
        }
        Ok((status, bytes))
    }

    /// Rows in all of the last listing (`X-Total-Count`), when the server said.
    pub fn last_total(&self) -> Option<u64> {
        *self.last_total.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> anyhow::Result<Option<T>> {
        let (status, bytes) = self.call(Method::GET, path, query, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("{path}: the server's answer does not parse: {e}")
        })?))
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<Exit> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(Exit::Success)
}

pub async fn list(api: &Api, filter: &Filter, limit: usize, json: bool) -> anyhow::Result<Exit> {
    let mut q = filter.query();
    q.push(("limit".into(), limit.to_string()));
    let alerts: Vec<Alert> = api.get("/api/v1/alerts", &q).await?.unwrap_or_default();
    if json {
        return print_json(&alerts);
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                humantime::format_rfc3339_seconds(a.last_seen.0).to_string(),
                a.level.to_string(),
                a.host_id.clone(),
                a.hostname.clone(),
                a.labels.get("idc").cloned().unwrap_or_default(),
                a.count.to_string(),
                a.rule_id.clone(),
                a.title.clone(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(
            &[
                "LAST SEEN",
                "LEVEL",
                "HOST",
                "IDC",
                "COUNT",
                "RULE",
                "TITLE"
            ],
            &rows
        )
    );
    Ok(Exit::Success)
}

pub async fn show(api: &Api, id: &str) -> anyhow::Result<Exit> {
    let path = format!("/api/v1/alerts/{id}");
    match api.get::<Alert>(&path, &[]).await? {
        Some(a) => print_json(&a),
        None => anyhow::bail!("no alert {id:?} (hidsctl alerts list shows the ids with --json)"),
    }
}

pub async fn summary(api: &Api, filter: &Filter, by: &str, json: bool) -> anyhow::Result<Exit> {
    let mut q = filter.query();
    q.push(("by".into(), by.to_owned()));
    let rows: Vec<SummaryRow> = api
        .get("/api/v1/alerts/summary", &q)
        .await?
        .unwrap_or_default();
    if json {
        return print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.key.clone().unwrap_or_else(|| "(none)".into()),
                r.count.to_string(),
                r.events.to_string(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(&[&by.to_uppercase(), "ALERTS", "EVENTS"], &cells)
    );
    Ok(Exit::Success)
}

pub async fn suppress(api: &Api, s: Suppression, json: bool) -> anyhow::Result<Exit> {
    let body = serde_json::to_vec(&s)?;
    let (_, bytes) = api
        .call(Method::POST, "/api/v1/suppressions", &[], Some(body))
        .await?;
    let made: Suppression = serde_json::from_slice(&bytes)?;
    if json {
        return print_json(&made);
    }
    out!(
        "suppression {} added: rule {} is accepted{}; every instance applies it within 5 s",
        made.id,
        made.rule_id,
        scope(&made)
    );
    Ok(Exit::Success)
}

fn scope(s: &Suppression) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &s.host_id {
        parts.push(format!("host {h}"));
    }
    for (k, v) in &s.labels {
        parts.push(format!("{k}={v}"));
    }
    if let Some(c) = &s.command_line {
        parts.push(format!("command lines starting with {c:?}"));
    }
    if parts.is_empty() {
        " on every host".into()
    } else {
        format!(" for {}", parts.join(", "))
    }
}

pub async fn suppressions(api: &Api, json: bool) -> anyhow::Result<Exit> {
    let list: Vec<Suppression> = api
        .get("/api/v1/suppressions", &[])
        .await?
        .unwrap_or_default();
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.rule_id.clone(),
                scope(s).trim().to_owned(),
                s.comment.clone(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(&["ID", "RULE", "SCOPE", "COMMENT"], &rows)
    );
    Ok(Exit::Success)
}

pub async fn unsuppress(api: &Api, id: i64) -> anyhow::Result<Exit> {
    let path = format!("/api/v1/suppressions/{id}");
    let (status, _) = api.call(Method::DELETE, &path, &[], None).await?;
    if status == StatusCode::NOT_FOUND {
        anyhow::bail!("no suppression {id} (hidsctl alerts suppressions lists them)");
    }
    out!("suppression {id} removed");
    Ok(Exit::Success)
}

pub async fn rules(api: &Api, refused_only: bool, json: bool) -> anyhow::Result<Exit> {
    let rules: Vec<Value> = api.get("/api/v1/rules", &[]).await?.unwrap_or_default();
    let rules: Vec<Value> = rules
        .into_iter()
        .filter(|r| !refused_only || r["status"] != "loaded")
        .collect();
    if json {
        return print_json(&rules);
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                text(&r["level"]),
                text(&r["id"]),
                text(&r["status"]),
                text(&r["source"]),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(&["LEVEL", "ID", "STATUS", "SOURCE"], &rows)
    );
    Ok(Exit::Success)
}

/// `hidsctl top`: the day's hosts where the agent used the most CPU (mean) or memory
/// (peak), from the server's daily league.
pub async fn top(
    api: &Api,
    by: TopFigure,
    day: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<Exit> {
    let mut q = vec![
        ("by".to_owned(), by.as_str().to_owned()),
        ("limit".to_owned(), limit.to_string()),
    ];
    if let Some(day) = day {
        q.push(("day".into(), day.to_owned()));
    }
    let rows: Vec<TopHost> = api.get("/api/v1/fleet/top", &q).await?.unwrap_or_default();
    if json {
        return print_json(&rows);
    }
    let labels = |l: &std::collections::BTreeMap<String, String>| {
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                r.host_id.clone(),
                format!("{:.2}", r.value),
                labels(&r.labels),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        hids_types::text::table(&["#", "HOST", &by.unit().to_uppercase(), "LABELS"], &table)
    );
    if rows.is_empty() {
        out!("no figures for that day yet (the league is written every fleet.league_secs)");
    }
    Ok(Exit::Success)
}
