//! `/api/v1/vulns/...`, `/api/v1/packages/...` and `/api/v1/inventory/...`: the fleet
//! index over HTTP (and so to `hidsctl vulns` and `hidsctl packages`).
//!
//! Listings are JSON arrays, paginated with `offset` and `limit`; the number of rows in
//! all is in the `X-Total-Count` header. With `by=<label>` they return host counts per
//! value of the label instead. Until the index has read the whole store they answer 503:
//! a partial index would understate exposure.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hids_types::package::PackageType;
use hids_vulns::feed::Severity;
use serde_json::json;

use super::query::{self, PackageFilter};
use super::Inventory;
use crate::http::{bad_request, params, Api, ApiError, Params};

/// Rows one listing returns unless asked (`limit`).
pub const DEFAULT_ROWS: usize = 1_000;
/// Rows one listing returns at most.
pub const MAX_ROWS: usize = 100_000;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/vulns/hosts", get(vuln_hosts))
        .route("/api/v1/vulns/top", get(vuln_top))
        .route("/api/v1/vulns/feeds", get(feeds))
        .route("/api/v1/packages/hosts", get(package_hosts))
        .route("/api/v1/inventory/summary", get(summary))
        .route("/api/v1/inventory/hosts/{host_id}", get(host))
}

pub(crate) fn inventory(api: &Api) -> Result<Arc<Inventory>, ApiError> {
    let inventory = api.inventory.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server keeps no inventory index",
        )
    })?;
    if !inventory.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inventory index is still loading from the store; retry in a few seconds",
        ));
    }
    Ok(inventory)
}

/// The feeds, unless a file failed at the first load: then there is no good load to
/// fall back on, and an answer would understate exposure.
pub(crate) fn complete_feeds(
    inventory: &Inventory,
) -> Result<Arc<hids_vulns::feed::Feeds>, ApiError> {
    match inventory.feeds_failure() {
        Some(why) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "a vulnerability feed could not be loaded and no earlier load stands in: {why}"
            ),
        )),
        None => Ok(inventory.feeds()),
    }
}

/// Runs an index query on the blocking pool: at a million hosts one may take a moment.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `offset`, `limit` and `by`, the parameters every listing takes.
#[derive(Debug)]
struct Paging {
    offset: usize,
    limit: usize,
    by: Option<String>,
}

impl Paging {
    fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
        match key {
            "offset" => {
                self.offset = value
                    .parse()
                    .map_err(|_| bad_request(format!("offset: {value:?} is not a number")))?
            }
            "limit" => {
                self.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_ROWS).contains(n))
                    .ok_or_else(|| {
                        bad_request(format!("limit: {value:?}; between 1 and {MAX_ROWS}"))
                    })?
            }
            "by" if !value.is_empty() => self.by = Some(value.to_owned()),
            "by" => return Err(bad_request("by: name a label (idc, project, product, ...)")),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            offset: 0,
            limit: DEFAULT_ROWS,
            by: None,
        }
    }
}

fn listing<T: serde::Serialize>(page: query::Page<T>) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(total) = HeaderValue::from_str(&page.total.to_string()) {
        headers.insert("x-total-count", total);
    }
    (headers, Json(page.rows)).into_response()
}

/// `?id=CVE-...` (or an OSV id or alias): the hosts it affects, with the package, the
/// installed version and the fixed one (null: no fix yet).
async fn vuln_hosts(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let mut id = None;
    let mut paging = Paging::default();
    for (key, value) in params(pairs)? {
        if paging.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "id" if !value.trim().is_empty() => id = Some(value.trim().to_owned()),
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}: use id, by, offset and limit"
                )))
            }
        }
    }
    let id = id.ok_or_else(|| bad_request("id: name a vulnerability (CVE-2024-1234)"))?;
    let inventory = inventory(&api)?;
    let feeds = complete_feeds(&inventory)?;
    if feeds.by_id(&id).next().is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{id} is in no loaded feed (GET /api/v1/vulns/feeds lists what they hold)"),
        ));
    }
    blocking(move || {
        let index = inventory.read_index();
        match &paging.by {
            Some(label) => Json(query::vuln_groups(&index, &feeds, &id, label)).into_response(),
            None => listing(query::vuln_hosts(
                &index,
                &feeds,
                &id,
                paging.offset,
                paging.limit,
            )),
        }
    })
    .await
}

/// The fleet's vulnerabilities, most severe and most widespread first:
/// `?min_severity=high&limit=20`.
async fn vuln_top(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let mut paging = Paging {
        limit: 100,
        ..Paging::default()
    };
    let mut min = Severity::Unknown;
    for (key, value) in params(pairs)? {
        if key != "by" && paging.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "min_severity" => {
                min = parse_severity(&value)?;
            }
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}: use min_severity, offset and limit"
                )))
            }
        }
    }
    let inventory = inventory(&api)?;
    complete_feeds(&inventory)?;
    blocking(move || {
        let top = inventory.top();
        let kept: Vec<&query::VulnSummary> = top.iter().filter(|v| v.severity >= min).collect();
        let total = kept.len() as u64;
        let rows: Vec<query::VulnSummary> = kept
            .into_iter()
            .skip(paging.offset)
            .take(paging.limit)
            .cloned()
            .collect();
        listing(query::Page { total, rows })
    })
    .await
}

fn parse_severity(value: &str) -> Result<Severity, ApiError> {
    let severity = Severity::parse(value);
    if severity == Severity::Unknown && value != "unknown" {
        return Err(bad_request(format!(
            "min_severity: {value:?}; one of unknown, negligible, low, medium, high, critical"
        )));
    }
    Ok(severity)
}

/// What the feeds loaded: per file, its format, records, skipped entries and error.
async fn feeds(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let inventory = api.inventory.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server keeps no inventory index",
        )
    })?;
    Ok(Json(inventory.feed_report()).into_response())
}

/// `?name=openssl&source=true&below=3.0.13-1~deb12u1&type=deb`: hosts with the
/// package in the version range (`from` inclusive, `below` exclusive, or `version`
/// exactly), under the package type's own ordering.
async fn package_hosts(State(api): State<Arc<Api>>, pairs: Params) -> Result<Response, ApiError> {
    let mut filter = PackageFilter::default();
    let mut paging = Paging::default();
    for (key, value) in params(pairs)? {
        if paging.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "name" => filter.name = value,
            "type" => {
                filter.kind = Some(PackageType::parse(&value).ok_or_else(|| {
                    bad_request(format!("type: {value:?}; one of deb, rpm, python, npm, jar, kernel"))
                })?)
            }
            "source" => filter.by_source = parse_bool("source", &value)?,
            "from" => filter.from = Some(value),
            "below" => filter.below = Some(value),
            "version" => filter.equals = Some(value),
            other => {
                return Err(bad_request(format!(
                    "unknown parameter {other:?}: use name, type, source, from, below, version, by, offset and limit"
                )))
            }
        }
    }
    if filter.name.is_empty() {
        return Err(bad_request("name: name a package"));
    }
    if let Some(kind) = filter.kind {
        let scheme = query::scheme_of(kind);
        for (name, v) in [
            ("from", &filter.from),
            ("below", &filter.below),
            ("version", &filter.equals),
        ] {
            if let Some(v) = v
                .as_deref()
                .filter(|v| !hids_vulns::version::is_valid(scheme, v))
            {
                return Err(bad_request(format!(
                    "{name}: {v:?} is not a {} version",
                    kind.as_str()
                )));
            }
        }
    }
    let inventory = inventory(&api)?;
    blocking(move || {
        let index = inventory.read_index();
        match &paging.by {
            Some(label) => Json(query::package_groups(&index, &filter, label)).into_response(),
            None => listing(query::package_hosts(
                &index,
                &filter,
                paging.offset,
                paging.limit,
            )),
        }
    })
    .await
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(bad_request(format!("{name}: {value:?}; true or false"))),
    }
}

/// Hosts, distinct inventories and packages in the index.
async fn summary(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let inventory = api.inventory.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server keeps no inventory index",
        )
    })?;
    blocking(move || {
        let index = inventory.read_index();
        Json(json!({
            "ready": inventory.is_ready(),
            "hosts": index.hosts(),
            "inventories": index.images_in_use(),
            "distinct_packages": index.distinct_packages(),
            "hosts_waiting_for_their_inventory": inventory
                .missing_inventories
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
        .into_response()
    })
    .await
}

/// One host's inventory: OS, kernel and every package.
async fn host(
    State(api): State<Arc<Api>>,
    Path(host_id): Path<String>,
) -> Result<Response, ApiError> {
    let inventory = inventory(&api)?;
    blocking(move || {
        let index = inventory.read_index();
        let Some(slot) = index.host_slot(&host_id) else {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no inventory from host {host_id:?}"),
            )
            .into_response();
        };
        let host = index.host(slot);
        let image = index.image(host.image);
        let packages: Vec<_> = image.packages.iter().map(|&p| index.package(p)).collect();
        Json(json!({
            "host_id": &*host.id,
            "hostname": &*host.hostname,
            "labels": &*host.labels,
            "reported_at": host.reported_at,
            "hash": &*image.hash,
            "os": image.os,
            "kernel": &*image.kernel,
            "packages": packages,
        }))
        .into_response()
    })
    .await
}
