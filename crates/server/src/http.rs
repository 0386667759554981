//! The HTTP API (`/api/v1/...`, JSON), `/metrics` (Prometheus) and `/healthz`.
//! Store calls are blocking: they run on tokio's blocking pool, one at a time per
//! handle, so a slow query never stalls the runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hids_detect::RuleSet;
use hids_store::{AlertQuery, Store};
use hids_types::alert::{GroupBy, Level, Suppression};
use hids_types::fleet::{is_day_name, TopFigure};
use hids_types::Timestamp;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::fleet::presence::Presence;
use crate::metrics::Metrics;

pub struct Api {
    pub store: Mutex<Box<dyn Store>>,
    pub rules: Arc<RuleSet>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub started: SystemTime,
    /// Registered agents from etcd (None without `[etcd]`).
    pub presence: Option<Arc<Mutex<Presence>>>,
    /// The fleet inventory index and vulnerability feeds.
    pub inventory: Option<Arc<crate::inventory::Inventory>>,
    /// The web console's settings and login state.
    pub console: crate::console::Settings,
    /// The control plane's history and rollouts, read from etcd (None without [etcd]).
    pub control: Option<Arc<crate::console::control::ControlView>>,
    /// Each host's last processes and listeners (None: not kept).
    pub recent: Option<Arc<crate::recent::Recent>>,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/summary", get(summary))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/rules", get(rules))
        .route(
            "/api/v1/suppressions",
            get(suppressions).post(add_suppression),
        )
        .route("/api/v1/suppressions/{id}", delete(remove_suppression))
        .route("/api/v1/fleet/top", get(fleet_top))
        .route("/api/v1/fleet/summary", get(fleet_summary))
        .route("/api/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::inventory::http::routes())
        .merge(crate::console::routes())
        .with_state(api)
}

/// An error as the API answers it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> &str {
        &self.1
    }

    pub fn status(&self) -> StatusCode {
        self.0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Runs a store call on the blocking pool.
pub(crate) async fn with_store<T: Send + 'static>(
    api: &Arc<Api>,
    call: impl FnOnce(&mut dyn Store) -> Result<T, hids_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let api = api.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut store = api.store.lock().unwrap_or_else(|p| p.into_inner());
        call(store.as_mut())
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        // What the request asked for is out of bounds: the caller's to fix.
        Ok(Err(e @ hids_store::StoreError::Invalid(_))) => Err(bad_request(e.to_string())),
        Ok(Err(e)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {e}"),
        )),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Alerts per listing at most: each carries its evidence event (up to 256 KiB), so a
/// response stays within a few hundred megabytes even at the worst.
pub const MAX_LISTED: usize = 1_000;

/// Query parameters, refused as JSON like every other error.
pub type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub fn params(p: Params) -> Result<Vec<(String, String)>, ApiError> {
    p.map(|Query(v)| v)
        .map_err(|e| bad_request(format!("query: {e}")))
}

/// The filters every alert listing takes: `level` (exactly), `min_level`, `rule_id`,
/// `host_id`, `since`/`until` (RFC 3339, or a duration back from now: `1h`, `7d`),
/// `limit`, the common labels `idc`, `project`, `product`, `env` directly, and any
/// label as `label=name:value` (repeatable). Unknown parameters are refused by name.
pub fn parse_query(pairs: &[(String, String)], allow: &[&str]) -> Result<AlertQuery, ApiError> {
    let mut q = AlertQuery {
        limit: 100,
        ..AlertQuery::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "level" => q.level = Some(value.parse::<Level>().map_err(bad_request)?),
            "min_level" => q.min_level = Some(value.parse::<Level>().map_err(bad_request)?),
            "rule_id" => q.rule_id = Some(value.clone()),
            "host_id" => q.host_id = Some(value.clone()),
            "since" => q.since = Some(parse_time(value).map_err(bad_request)?),
            "until" => q.until = Some(parse_time(value).map_err(bad_request)?),
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .map_err(|_| bad_request(format!("limit: {value:?} is not a number")))?
            }
            "idc" | "project" | "product" | "env" => {
                q.labels.insert(key.clone(), value.clone());
            }
            "label" => {
                let (name, v) = value.split_once(':').ok_or_else(|| {
                    bad_request(format!("label: {value:?}; write label=name:value"))
                })?;
                q.labels.insert(name.to_owned(), v.to_owned());
            }
            other if allow.contains(&other) => {}
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}: use level, min_level, rule_id, host_id, since, until, limit, idc, project, product, env or label=name:value"
                )))
            }
        }
    }
    Ok(q)
}

/// RFC 3339, or a duration back from now (`90m`, `24h`, `7d`).
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(Timestamp(t));
    }
    let back: Duration = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration back from now (1h, 7d)")
    })?;
    SystemTime::now()
        .checked_sub(back)
        .map(Timestamp)
        .ok_or_else(|| format!("{text:?} reaches before 1970"))
}

async fn alerts(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let q = parse_query(&params(pairs)?, &[])?;
    if q.limit > MAX_LISTED {
        return Err(bad_request(format!(
            "limit {}: at most {MAX_LISTED} alerts per listing (each carries its evidence); narrow the filters",
            q.limit
        )));
    }
    let found = with_store(&api, move |s| s.alerts(&q)).await?;
    Ok(Json(found).into_response())
}

async fn summary(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let pairs = params(pairs)?;
    let by = pairs
        .iter()
        .find(|(k, _)| k == "by")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "rule_id".into());
    let by: GroupBy = by.parse().map_err(bad_request)?;
    let q = parse_query(&pairs, &["by"])?;
    let rows = with_store(&api, move |s| s.summary(&by, &q)).await?;
    Ok(Json(rows).into_response())
}

async fn alert(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let wanted = id.clone();
    match with_store(&api, move |s| s.alert(&wanted)).await? {
        Some(a) => Ok(Json(a).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no alert {id:?}"))),
    }
}

async fn rules(State(api): State<Arc<Api>>) -> Response {
    Json(api.rules.rules()).into_response()
}

async fn suppressions(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let list = with_store(&api, |s| s.suppressions()).await?;
    Ok(Json(list).into_response())
}

async fn add_suppression(
    State(api): State<Arc<Api>>,
    body: Result<Json<Suppression>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(s) = body.map_err(|e| bad_request(format!("suppression: {e}")))?;
    if s.rule_id.trim().is_empty() {
        return Err(bad_request("suppression: rule_id is required"));
    }
    check_suppression_size(&s)?;
    if !api.rules.rules().iter().any(|r| r.id == s.rule_id) {
        return Err(bad_request(format!(
            "suppression: no rule {:?} (GET /api/v1/rules lists them)",
            s.rule_id
        )));
    }
    let made = with_store(&api, move |st| {
        let now = Timestamp::now();
        let made = st.add_suppression(&s, now)?;
        // The API has no login: the history says so, in place of a name.
        st.record_change(
            API_CALLER,
            "suppress",
            &format!(
                "suppression {} of rule {}: {}",
                made.id, made.rule_id, made.comment
            ),
            now,
        )?;
        Ok(made)
    })
    .await?;
    tracing::info!(
        "suppression {} added: rule {} ({})",
        made.id,
        made.rule_id,
        made.comment
    );
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// Who the history names for a change made through the API, which has no login.
const API_CALLER: &str = "api (no login)";

/// Suppressions are re-read by every instance every few seconds: each stays small.
fn check_suppression_size(s: &Suppression) -> Result<(), ApiError> {
    const FIELD: usize = 1024;
    const LABELS: usize = 16;
    let long = [
        Some(&s.rule_id),
        s.host_id.as_ref(),
        s.command_line.as_ref(),
        Some(&s.comment),
    ]
    .into_iter()
    .flatten()
    .chain(s.labels.keys())
    .chain(s.labels.values())
    .any(|f| f.len() > FIELD);
    if long || s.labels.len() > LABELS {
        return Err(bad_request(format!(
            "suppression: each field at most {FIELD} bytes, at most {LABELS} labels"
        )));
    }
    Ok(())
}

async fn remove_suppression(
    State(api): State<Arc<Api>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let removed = with_store(&api, move |s| {
        let removed = s.remove_suppression(id)?;
        if removed {
            s.record_change(
                API_CALLER,
                "unsuppress",
                &format!("suppression {id}"),
                Timestamp::now(),
            )?;
        }
        Ok(removed)
    })
    .await?;
    if removed {
        tracing::info!("suppression {id} removed");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no suppression {id}"),
        ))
    }
}

/// `?by=cpu|memory&day=YYYY-MM-DD&limit=N`: the day's hosts where the agent used the
/// most (mean CPU, peak memory), highest first. Day: today (UTC) by default.
async fn fleet_top(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let mut by = None;
    let mut day = Timestamp::now().utc_day();
    let mut limit = 10usize;
    for (key, value) in params(pairs)? {
        match key.as_str() {
            "by" => by = Some(value.parse::<TopFigure>().map_err(bad_request)?),
            "day" if is_day_name(&value) => day = value,
            "day" => return Err(bad_request(format!("day: {value:?}; write YYYY-MM-DD"))),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=hids_store::MAX_TOP).contains(n))
                    .ok_or_else(|| {
                        bad_request(format!(
                            "limit: {value:?}; between 1 and {}",
                            hids_store::MAX_TOP
                        ))
                    })?
            }
            other => {
                return Err(bad_request(format!(
                "unknown parameter {other:?}: use by (cpu or memory), day (YYYY-MM-DD) and limit"
            )))
            }
        }
    }
    let by = by.ok_or_else(|| bad_request("by: say cpu or memory"))?;
    let rows = with_store(&api, move |s| s.top(&day, by, limit)).await?;
    Ok(Json(rows).into_response())
}

/// Groups in a fleet summary at most (the largest): a label unique per host would
/// otherwise list the whole fleet.
const SUMMARY_GROUPS: usize = 1_000;

/// `?by=idc|project|product|version|<label>`: registered agents (etcd) counted by the
/// label (the 1,000 largest groups), beside this instance's own figures.
async fn fleet_summary(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let mut by = "idc".to_owned();
    for (key, value) in params(pairs)? {
        match key.as_str() {
            "by" => by = value,
            other => return Err(bad_request(format!("unknown parameter {other:?}: use by"))),
        }
    }
    let f = &api.metrics.fleet;
    let presence = api.presence.clone();
    let registered = tokio::task::spawn_blocking(move || {
        presence.map(|p| {
            let p = p.lock().unwrap_or_else(|e| e.into_inner());
            let (groups, others) = p.counts_by(&by, SUMMARY_GROUPS);
            json!({"agents": p.hosts.len(), "by": groups, "other_groups": others})
        })
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({
        "etcd_connected": f.etcd_connected.get() == 1,
        "registered": registered,
        "this_instance": {
            "hosts_tracked": f.hosts_tracked.get(),
            "hosts_sending": f.hosts_sending.get(),
            "agents_silent": f.agents_silent.get(),
            "runs_tracked": f.runs_tracked.get(),
        },
    }))
    .into_response())
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let m = &api.metrics;
    let by_level: BTreeMap<&str, u64> = m
        .alerts_by_level()
        .into_iter()
        .map(|(l, n)| (l.as_str(), n))
        .collect();
    Json(json!({
        "uptime_secs": api.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "events": m.events.get(),
        "events_per_second": m.events_per_sec(),
        "consumer_lag": m.consumer_lag.get(),
        "partitions": m.partitions.get(),
        "detect_microseconds_per_event": m.detect_micros_per_event(),
        "suppressions": m.suppressions.get(),
        "alerts_by_level": by_level,
        "rules_loaded": m.rules_loaded.get(),
        "rules_refused": m.rules_refused.get(),
        "recent": api.recent.as_ref().map(|r| {
            let (hosts, bytes) = r.size();
            json!({
                "hosts": hosts,
                "bytes": bytes,
                "hosts_forgotten": r.hosts_forgotten.load(std::sync::atomic::Ordering::Relaxed),
                "listeners_dropped": r.listeners_dropped.load(std::sync::atomic::Ordering::Relaxed),
            })
        }),
    }))
    .into_response()
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), the classic text
/// format otherwise (`curl`, `promtool check metrics`).
async fn metrics(
    State(api): State<Arc<Api>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &api.registry)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::classic_text(&text),
        )
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn queries_take_labels_levels_and_relative_times() {
        let q = parse_query(
            &pairs(&[
                ("min_level", "high"),
                ("idc", "bj1"),
                ("label", "team:pay"),
                ("since", "1h"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(q.min_level, Some(Level::High));
        assert_eq!(q.labels.get("idc").map(String::as_str), Some("bj1"));
        assert_eq!(q.labels.get("team").map(String::as_str), Some("pay"));
        assert!(q.since.is_some());
    }

    #[test]
    fn unknown_parameters_and_bad_values_are_refused_by_name() {
        for bad in [
            ("levle", "high"),
            ("level", "severe"),
            ("since", "yesterday"),
            ("label", "x"),
        ] {
            let Err(ApiError(code, msg)) = parse_query(&pairs(&[bad]), &[]) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(msg.contains(bad.0) || msg.contains(bad.1), "{msg}");
        }
    }
}
