//! The console's pages: what each shows, read from the store, the presence map and the
//! inventory index, a bounded page at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use hids_store::{Ack, AlertQuery, Change};
use hids_types::alert::{Alert, GroupBy, Level, Suppression};
use hids_types::fleet::TopFigure;
use hids_types::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::{
    api_problem, auth, local_path, operator, page, problem, query_escape, viewer, when, Viewer,
};
use crate::http::{parse_query, with_store, Api};

/// Alerts on one page of the queue, unless asked; at most [`MAX_ROWS`].
const PAGE_ROWS: usize = 50;
const MAX_ROWS: usize = 500;
/// Groups shown per breakdown on the overview.
const GROUPS: usize = 12;

type Pairs = Query<Vec<(String, String)>>;

fn store_error(e: crate::http::ApiError) -> Response {
    api_problem(e)
}

// ---- overview ----

/// Agents online by one label: the label, the largest groups, how many more groups.
type Breakdown = (&'static str, Vec<(String, u64)>, usize);

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    viewer: Viewer,
    registered: Option<usize>,
    breakdowns: Vec<Breakdown>,
    levels: Vec<(String, u64)>,
    top_cpu: Vec<hids_store::TopHost>,
    top_memory: Vec<hids_store::TopHost>,
    guard_trips: u64,
    day: String,
}

pub async fn overview(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&api, &headers, "/").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let day = Timestamp::now().utc_day();
    let counted = fleet_counts(&api).await;
    let figures = alert_figures(&api, day.clone()).await;
    let (levels, guard, top_cpu, top_memory) = match figures {
        Ok(f) => (*f).clone(),
        Err(e) => return store_error(e),
    };
    let (registered, breakdowns) = match counted {
        Some(c) => (Some(c.registered), c.breakdowns.clone()),
        None => (None, Vec::new()),
    };
    page(&Overview {
        viewer,
        registered,
        breakdowns,
        levels: levels
            .into_iter()
            .map(|r| (r.key.unwrap_or_default(), r.count))
            .collect(),
        top_cpu,
        top_memory,
        guard_trips: guard.iter().map(|r| r.count).sum(),
        day,
    })
}

/// The overview's alert figures (levels and guard trips of the last 24 h, the day's
/// leaders), shared for a few seconds as the presence counts are.
async fn alert_figures(
    api: &Arc<Api>,
    day: String,
) -> Result<Arc<AlertFigures>, crate::http::ApiError> {
    let since = Timestamp(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400));
    let d = day;
    let store = api.clone();
    api.console
        .overview_alerts
        .get(|| {
            with_store(&store, move |s| {
                let q = AlertQuery {
                    since: Some(since),
                    limit: 10,
                    ..AlertQuery::default()
                };
                let levels = s.summary(&GroupBy::Level, &q)?;
                let guard = s.summary(
                    &GroupBy::RuleId,
                    &AlertQuery {
                        rule_id: Some(crate::fleet::rules::FleetRule::GuardTripped.id().into()),
                        ..q
                    },
                )?;
                let cpu = s.top(&d, TopFigure::Cpu, 10)?;
                let memory = s.top(&d, TopFigure::Memory, 10)?;
                Ok((levels, guard, cpu, memory))
            })
        })
        .await
}

/// Alerts of the last 24 h by level, guard-trip alerts, the day's top CPU and memory.
pub type AlertFigures = (
    Vec<hids_types::alert::SummaryRow>,
    Vec<hids_types::alert::SummaryRow>,
    Vec<hids_store::TopHost>,
    Vec<hids_store::TopHost>,
);

/// Agents online, and by the overview's labels.
pub struct FleetCounts {
    registered: usize,
    breakdowns: Vec<Breakdown>,
}

/// The presence counts, from the last 10 s or counted now (one pass over the hosts,
/// off the runtime's threads). None without [etcd].
async fn fleet_counts(api: &Arc<Api>) -> Option<Arc<FleetCounts>> {
    let presence = api.presence.clone()?;
    let counted = api.console.overview.get(|| async move {
        tokio::task::spawn_blocking(move || {
            const BY: [&str; 4] = ["idc", "project", "product", "version"];
            let p = presence.lock().unwrap_or_else(|e| e.into_inner());
            let breakdowns = BY
                .into_iter()
                .zip(p.counts_by_each(&BY, GROUPS))
                .map(|(by, (groups, rest))| {
                    let mut groups: Vec<(String, u64)> = groups.into_iter().collect();
                    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    (by, groups, rest)
                })
                .collect();
            FleetCounts {
                registered: p.hosts.len(),
                breakdowns,
            }
        })
        .await
    });
    counted.await.ok()
}

// ---- alert queue ----

/// One row of the queue, with what the template needs computed.
struct Row {
    alert: Alert,
    ack: Option<Ack>,
    first_seen: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct Queue {
    viewer: Viewer,
    rows: Vec<Row>,
    /// The filters as given, to fill the form again.
    filters: BTreeMap<String, String>,
    levels: Vec<&'static str>,
    more: Option<String>,
    limit: usize,
    /// This page's own address, for the queue's refresh.
    here: String,
}

pub async fn alerts(State(api): State<Arc<Api>>, headers: HeaderMap, pairs: Pairs) -> Response {
    let Query(pairs) = pairs;
    let here = format!("/alerts?{}", encode_pairs(&pairs));
    let viewer = match viewer(&api, &headers, &here).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Empty form fields mean "any".
    let mut given: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let mut limit = PAGE_ROWS;
    given.retain(|(k, v)| {
        if k == "limit" {
            limit = v.parse().unwrap_or(PAGE_ROWS).clamp(1, MAX_ROWS);
            false
        } else {
            true
        }
    });
    let mut q = match parse_query(&given, &[]) {
        Ok(q) => q,
        Err(e) => return api_problem(e),
    };
    q.limit = limit + 1;
    let found = with_store(&api, move |s| {
        let alerts = s.alerts(&q)?;
        let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        let acks = s.acks(&ids)?;
        Ok((alerts, acks))
    })
    .await;
    let (mut alerts, acks) = match found {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let more = (alerts.len() > limit && limit < MAX_ROWS).then(|| {
        let mut next = given.clone();
        next.push(("limit".into(), (limit * 2).min(MAX_ROWS).to_string()));
        format!("/alerts?{}", encode_pairs(&next))
    });
    alerts.truncate(limit);
    let mut acks: HashMap<String, Ack> =
        acks.into_iter().map(|a| (a.alert_id.clone(), a)).collect();
    let rows = alerts
        .into_iter()
        .map(|alert| Row {
            ack: acks.remove(&alert.id),
            first_seen: when(&alert.first_seen),
            last_seen: when(&alert.last_seen),
            alert,
        })
        .collect();
    page(&Queue {
        viewer,
        rows,
        filters: given.into_iter().collect(),
        levels: Level::ALL.iter().map(|l| l.as_str()).collect(),
        more,
        limit,
        here,
    })
}

impl Queue {
    /// A filter's value as given, empty when not.
    fn filter(&self, name: &str) -> &str {
        self.filters.get(name).map_or("", String::as_str)
    }
}

fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

// ---- one alert ----

#[derive(Template)]
#[template(path = "alert.html")]
struct AlertPage {
    viewer: Viewer,
    alert: Alert,
    ack: Option<Ack>,
    first_seen: String,
    last_seen: String,
    created_at: String,
    evidence: String,
    command_line: String,
    suppressions: Vec<Suppression>,
}

pub async fn alert(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let viewer = match viewer(&api, &headers, &format!("/alerts/{}", query_escape(&id))).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let wanted = id.clone();
    let found = with_store(&api, move |s| {
        let alert = s.alert(&wanted)?;
        let acks = s.acks(std::slice::from_ref(&wanted))?;
        let suppressions = s.suppressions()?;
        Ok((alert, acks, suppressions))
    })
    .await;
    let (alert, acks, suppressions) = match found {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let Some(alert) = alert else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("There is no alert {id:?}: retention may have deleted it. The queue lists those kept."),
        );
    };
    let suppressions = suppressions
        .into_iter()
        .filter(|s| s.rule_id == alert.rule_id)
        .take(50)
        .collect();
    page(&AlertPage {
        viewer,
        ack: acks.into_iter().next(),
        first_seen: when(&alert.first_seen),
        last_seen: when(&alert.last_seen),
        created_at: when(&alert.created_at),
        evidence: serde_json::to_string_pretty(&alert.event).unwrap_or_default(),
        command_line: alert.event["process"]["command_line"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        suppressions,
        alert,
    })
}

pub async fn acknowledge(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let back = format!("/alerts/{}", query_escape(&id));
    let who = match operator(&api, &headers, &back).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let wanted = id.clone();
    let done = with_store(&api, move |s| {
        let now = Timestamp::now();
        let acknowledged = s.acknowledge(&wanted, &who, now)?;
        if acknowledged == Some(true) {
            s.record_change(&who, "acknowledge", &format!("alert {wanted}"), now)?;
        }
        Ok(acknowledged)
    })
    .await;
    match done {
        Ok(Some(_)) => Redirect::to(&back).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, &format!("There is no alert {id:?}.")),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct SuppressForm {
    /// `host`: this host only; `command`: this command line on any host; `rule`: the
    /// rule everywhere.
    scope: String,
    comment: String,
}

pub async fn suppress(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<SuppressForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let back = format!("/alerts/{}", query_escape(&id));
    let who = match operator(&api, &headers, &back).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Ok(Form(form)) = form else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The suppression form was incomplete: choose a scope and say why.",
        );
    };
    if form.comment.trim().is_empty() || form.comment.len() > 1024 {
        return problem(
            StatusCode::BAD_REQUEST,
            "Say why the alert is accepted (1 to 1024 characters): the comment is what the next person reads.",
        );
    }
    if !matches!(form.scope.as_str(), "host" | "command" | "rule") {
        return problem(
            StatusCode::BAD_REQUEST,
            "Choose the suppression's scope: this host, this command line, or the rule everywhere.",
        );
    }
    let wanted = id.clone();
    let done = with_store(&api, move |s| {
        let Some(alert) = s.alert(&wanted)? else {
            return Ok(Err(StatusCode::NOT_FOUND));
        };
        let mut sup = Suppression {
            id: 0,
            rule_id: alert.rule_id.clone(),
            host_id: None,
            labels: BTreeMap::new(),
            command_line: None,
            comment: format!("{} ({who})", form.comment.trim()),
            created_at: None,
        };
        match form.scope.as_str() {
            "host" => sup.host_id = Some(alert.host_id.clone()),
            "command" => match alert.event["process"]["command_line"].as_str() {
                Some(line) if !line.is_empty() => sup.command_line = Some(line.to_owned()),
                // Never widened to the whole rule by a missing field.
                _ => return Ok(Err(StatusCode::BAD_REQUEST)),
            },
            _ => {}
        }
        let now = Timestamp::now();
        let made = s.add_suppression(&sup, now)?;
        s.record_change(
            &who,
            "suppress",
            &format!(
                "suppression {} of rule {} ({}) from alert {wanted}: {}",
                made.id,
                made.rule_id,
                form.scope,
                form.comment.trim()
            ),
            now,
        )?;
        Ok(Ok(made))
    })
    .await;
    match done {
        Ok(Ok(_)) => Redirect::to(&back).into_response(),
        Ok(Err(StatusCode::NOT_FOUND)) => {
            problem(StatusCode::NOT_FOUND, &format!("There is no alert {id:?}."))
        }
        Ok(Err(status)) => problem(
            status,
            "This alert's evidence has no command line: suppress it for this host or the rule instead.",
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct BackForm {
    back: Option<String>,
}

pub async fn unsuppress(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<BackForm>,
) -> Response {
    let back = local_path(form.back.as_deref());
    let who = match operator(&api, &headers, &back).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let done = with_store(&api, move |s| {
        let removed = s.remove_suppression(id)?;
        if removed {
            s.record_change(
                &who,
                "unsuppress",
                &format!("suppression {id}"),
                Timestamp::now(),
            )?;
        }
        Ok(removed)
    })
    .await;
    match done {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => store_error(e),
    }
}

// ---- host ----

struct HostStatus {
    hostname: String,
    version: String,
    labels: BTreeMap<String, String>,
    quarantined: String,
    crash_loop: String,
    desired_error: String,
    backlog: bool,
}

struct HostInventory {
    os: String,
    kernel: String,
    reported_at: String,
    total: usize,
    packages: Vec<(String, String, String)>,
    vulns: Vec<crate::inventory::query::HostVuln>,
    vulns_total: usize,
    /// Why vulnerabilities are not shown (a feed failed to load), if they are not.
    vulns_note: String,
}

/// Vulnerabilities listed on a host's page at most.
const HOST_VULNS: usize = 100;

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    viewer: Viewer,
    host_id: String,
    status: Option<HostStatus>,
    inventory: Option<HostInventory>,
    alerts: Vec<Row>,
    /// None: this server keeps no recent activity.
    recent: Option<crate::recent::Activity>,
    recent_kept: bool,
}

/// Packages listed on a host's page at most.
const HOST_PACKAGES: usize = 200;

pub async fn host(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(host_id): Path<String>,
) -> Response {
    let viewer = match viewer(
        &api,
        &headers,
        &format!("/hosts/{}", query_escape(&host_id)),
    )
    .await
    {
        Ok(v) => v,
        Err(r) => return r,
    };
    let presence = api.presence.clone();
    let wanted_status = host_id.clone();
    let status = tokio::task::spawn_blocking(move || {
        let p = presence?;
        let p = p.lock().unwrap_or_else(|e| e.into_inner());
        let host_id = wanted_status;
        p.hosts.get(host_id.as_str()).map(|r| HostStatus {
            hostname: r.hostname.to_string(),
            version: r.version().to_owned(),
            labels: (*r.labels).clone(),
            quarantined: r.quarantined.as_deref().unwrap_or_default().to_owned(),
            crash_loop: r.crash_loop.as_deref().unwrap_or_default().to_owned(),
            desired_error: r.desired_error.as_deref().unwrap_or_default().to_owned(),
            backlog: r.backlog_since.is_some(),
        })
    })
    .await
    .ok()
    .flatten();
    let inventory = host_inventory(&api, &host_id).await;
    let recent = api.recent.as_ref().and_then(|r| r.host(&host_id));
    let wanted = host_id.clone();
    let found = with_store(&api, move |s| {
        let alerts = s.alerts(&AlertQuery {
            host_id: Some(wanted),
            limit: PAGE_ROWS,
            ..AlertQuery::default()
        })?;
        let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        Ok((alerts, s.acks(&ids)?))
    })
    .await;
    let (alerts, acks) = match found {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let mut acks: HashMap<String, Ack> =
        acks.into_iter().map(|a| (a.alert_id.clone(), a)).collect();
    page(&HostPage {
        viewer,
        host_id,
        status,
        inventory,
        recent,
        recent_kept: api.recent.is_some(),
        alerts: alerts
            .into_iter()
            .map(|alert| Row {
                ack: acks.remove(&alert.id),
                first_seen: when(&alert.first_seen),
                last_seen: when(&alert.last_seen),
                alert,
            })
            .collect(),
    })
}

async fn host_inventory(api: &Arc<Api>, host_id: &str) -> Option<HostInventory> {
    let inventory = crate::inventory::http::inventory(api).ok()?;
    let host_id = host_id.to_owned();
    let feeds = crate::inventory::http::complete_feeds(&inventory);
    tokio::task::spawn_blocking(move || {
        let index = inventory.read_index();
        let slot = index.host_slot(&host_id)?;
        let host = index.host(slot);
        let image = index.image(host.image);
        let packages = image
            .packages
            .iter()
            .take(HOST_PACKAGES)
            .map(|&p| {
                let p = index.package(p);
                (
                    p.kind.as_str().to_owned(),
                    p.name.clone(),
                    p.version.clone(),
                )
            })
            .collect();
        let (vulns, vulns_total, vulns_note) = match &feeds {
            Ok(feeds) => {
                let (rows, total) =
                    crate::inventory::query::image_vulns(&index, feeds, host.image, HOST_VULNS);
                (rows, total, String::new())
            }
            Err(e) => (Vec::new(), 0, e.message().to_owned()),
        };
        Some(HostInventory {
            vulns,
            vulns_total,
            vulns_note,
            os: format!("{} {}", image.os.id, image.os.version_id),
            kernel: image.kernel.to_string(),
            reported_at: when(&host.reported_at),
            total: image.packages.len(),
            packages,
        })
    })
    .await
    .ok()
    .flatten()
}

// ---- vulnerabilities ----

#[derive(Template)]
#[template(path = "vulns.html")]
struct VulnsPage {
    viewer: Viewer,
    id: String,
    message: String,
    total: u64,
    hosts: Vec<crate::inventory::query::VulnHost>,
    top: Vec<crate::inventory::query::VulnSummary>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct VulnsQuery {
    id: Option<String>,
    offset: Option<usize>,
}

pub async fn vulns(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<VulnsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Search with ?id=CVE-2024-1234 (and offset=N to page).",
        );
    };
    let id = query.id.unwrap_or_default().trim().to_owned();
    let offset = query.offset.unwrap_or(0);
    let viewer = match viewer(&api, &headers, &format!("/vulns?id={}", query_escape(&id))).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut view = VulnsPage {
        viewer,
        id: id.clone(),
        message: String::new(),
        total: 0,
        hosts: Vec::new(),
        top: Vec::new(),
        next: None,
    };
    let inventory = match crate::inventory::http::inventory(&api)
        .and_then(|i| crate::inventory::http::complete_feeds(&i).map(|f| (i, f)))
    {
        Ok(found) => found,
        Err(e) => {
            view.message = e.message().to_owned();
            return page(&view);
        }
    };
    let (inventory, feeds) = inventory;
    let searched = tokio::task::spawn_blocking(move || {
        if id.is_empty() {
            let top = inventory.top();
            return (None, top.iter().take(PAGE_ROWS).cloned().collect());
        }
        if feeds.by_id(&id).next().is_none() {
            return (None, Vec::new());
        }
        let index = inventory.read_index();
        let found = crate::inventory::query::vuln_hosts(&index, &feeds, &id, offset, PAGE_ROWS);
        (Some(found), Vec::new())
    })
    .await;
    match searched {
        Ok((Some(found), _)) => {
            view.total = found.total;
            view.hosts = found.rows;
            if offset.saturating_add(PAGE_ROWS) < usize::try_from(view.total).unwrap_or(usize::MAX)
            {
                view.next = Some(format!(
                    "/vulns?id={}&offset={}",
                    query_escape(&view.id),
                    offset.saturating_add(PAGE_ROWS)
                ));
            }
        }
        Ok((None, top)) if view.id.is_empty() => view.top = top,
        Ok((None, _)) => {
            view.message = format!("{} is in no loaded feed.", view.id);
        }
        Err(e) => view.message = e.to_string(),
    }
    page(&view)
}

// ---- history ----

struct ChangeRow {
    change: Change,
    at: String,
}

#[derive(Template)]
#[template(path = "history.html")]
struct History {
    viewer: Viewer,
    rows: Vec<ChangeRow>,
    older: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    before: Option<i64>,
}

pub async fn history(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let viewer = match viewer(&api, &headers, "/history").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let before = query.ok().and_then(|Query(q)| q.before);
    let found = with_store(&api, move |s| s.changes(before, PAGE_ROWS + 1)).await;
    let mut changes = match found {
        Ok(c) => c,
        Err(e) => return store_error(e),
    };
    let older = (changes.len() > PAGE_ROWS).then(|| {
        changes.truncate(PAGE_ROWS);
        format!("/history?before={}", changes.last().map_or(0, |c| c.id))
    });
    page(&History {
        viewer,
        rows: changes
            .into_iter()
            .map(|change| ChangeRow {
                at: when(&change.at),
                change,
            })
            .collect(),
        older,
    })
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    viewer: Viewer,
    next: String,
    message: String,
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_form(
    query: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    page(&Login {
        viewer: Viewer::default(),
        next: local_path(next.as_deref()),
        message: String::new(),
    })
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    next: Option<String>,
}

pub async fn login(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let refused = |next: String, message: &str| {
        let mut r = page(&Login {
            viewer: Viewer::default(),
            next,
            message: message.to_owned(),
        });
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    let Ok(Form(form)) = form else {
        return refused("/".into(), "Give a name and a password.");
    };
    let next = local_path(form.next.as_deref());
    if let Err(why) = auth::same_origin(&headers, api.console.public_origin.as_deref()) {
        return refused(
            next,
            &format!("This login did not come from this console's page: {why}. Behind a proxy that rewrites Host, set [console] public_origin."),
        );
    }
    if form.name.len() > auth::MAX_NAME_BYTES || form.password.len() > auth::MAX_PASSWORD_BYTES {
        return refused(next, "Wrong name or password.");
    }
    // Bounded: a few wait, two are checked at once; the rest are told to retry.
    let Ok(_waiting) = api.console.waiting.try_acquire() else {
        let mut r = refused(next, "Too many logins at once: retry in a few seconds.");
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    };
    let Ok(_checking) = api.console.verifying.acquire().await else {
        return refused(next, "The server is stopping.");
    };
    let name = form.name.clone();
    let stored = match with_store(&api, move |s| s.operator_password(&name)).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let known = stored.is_some();
    // Asked with the check's permit held, and the failure counted before it is given
    // back: parallel guesses get no more tries than the permits (two) allow at once.
    if !api.console.throttle.allows(&form.name, known) {
        return refused(next, "Too many failed logins for this name: wait 15 minutes, or log in with a link from `hids-server login-link --operator NAME`.");
    }
    let password = form.password;
    let matches = match stored {
        Some(hash) => tokio::task::spawn_blocking(move || auth::password_matches(&password, &hash))
            .await
            .unwrap_or(false),
        None => {
            // The same work as for a real name: the time taken does not tell which
            // names exist.
            let _ = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await;
            false
        }
    };
    if !matches {
        api.console.throttle.failed(&form.name, known);
        tracing::warn!("console: failed login for {:?}", form.name);
        return refused(next, "Wrong name or password.");
    }
    api.console.throttle.succeeded(&form.name);
    start_session(&api, form.name, &next, "login").await
}

/// Opens a session for `operator` and sends them to `next`, recording `how`.
async fn start_session(
    api: &Arc<Api>,
    operator: String,
    next: &str,
    how: &'static str,
) -> Response {
    let token = auth::new_token();
    let key = auth::session_key(&token);
    let lifetime = api.console.session_lifetime;
    let who = operator.clone();
    let started = with_store(api, move |s| {
        let now = Timestamp::now();
        s.start_session(&key, &who, now, Timestamp(now.0 + lifetime))?;
        s.record_change(&who, how, "console session", now)
    })
    .await;
    if let Err(e) = started {
        return store_error(e);
    }
    tracing::info!("console: {operator} logged in ({how})");
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                auth::session_cookie(&token, lifetime, api.console.secure_cookies),
            ),
            (header::LOCATION, next.to_owned()),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct LinkQuery {
    token: String,
    next: Option<String>,
}

/// A one-time login link (`hids-server login-link`): works once, within minutes.
pub async fn login_link(
    State(api): State<Arc<Api>>,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "This login link is incomplete: make a new one with `hids-server login-link`.",
        );
    };
    let key = auth::link_key(&q.token);
    let used = with_store(&api, move |s| s.take_login_link(&key, Timestamp::now())).await;
    match used {
        Ok(Some(operator)) => {
            start_session(&api, operator, &local_path(q.next.as_deref()), "login link").await
        }
        Ok(None) => problem(
            StatusCode::UNAUTHORIZED,
            "This login link was used already or has expired: make a new one with `hids-server login-link`.",
        ),
        Err(e) => store_error(e),
    }
}

pub async fn logout(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(why) = auth::same_origin(&headers, api.console.public_origin.as_deref()) {
        return problem(StatusCode::FORBIDDEN, &format!("Not logged out: {why}."));
    }
    if let Some(token) = auth::session_token(&headers) {
        let key = auth::session_key(&token);
        if let Err(e) = with_store(&api, move |s| s.end_session(&key)).await {
            return store_error(e);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, auth::expired_cookie()),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

// ---- control plane: configuration history and rollouts ----

fn field(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

struct ConfigChange {
    at: String,
    by: String,
    action: String,
    generation: String,
    target: String,
    hosts: usize,
}

struct WaveRow {
    percent: String,
    state: String,
    targets: String,
    healthy: String,
    failed: String,
    rolled_back: String,
    pending: String,
}

struct RolloutRow {
    id: String,
    state: String,
    reason: String,
    by: String,
    started_at: String,
    target: String,
    plugins: String,
    waves: Vec<WaveRow>,
}

#[derive(Template)]
#[template(path = "control.html")]
struct ControlPage {
    viewer: Viewer,
    what: &'static str,
    message: String,
    changes: Vec<ConfigChange>,
    rollouts: Vec<RolloutRow>,
    older: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct BeforeQuery {
    before: Option<String>,
}

/// An id as a record key holds it: what `hidsctl` writes (time, digits, dashes).
fn record_id(id: Option<String>) -> Option<String> {
    id.filter(|i| {
        !i.is_empty()
            && i.len() <= 128
            && i.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    })
}

pub async fn configuration(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<BeforeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    control_listing(&api, &headers, query, "configuration").await
}

pub async fn rollouts(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<BeforeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    control_listing(&api, &headers, query, "rollouts").await
}

/// A page of the control plane's records: `configuration` (history/) or `rollouts`.
async fn control_listing(
    api: &Arc<Api>,
    headers: &HeaderMap,
    query: Result<Query<BeforeQuery>, axum::extract::rejection::QueryRejection>,
    what: &'static str,
) -> Response {
    let viewer = match viewer(api, headers, &format!("/{what}")).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let before = record_id(query.ok().and_then(|Query(q)| q.before));
    let mut view = ControlPage {
        viewer,
        what,
        message: String::new(),
        changes: Vec::new(),
        rollouts: Vec::new(),
        older: None,
    };
    let Some(control) = &api.control else {
        view.message =
            format!("This server has no [etcd]: the control plane's {what} is not in reach.");
        return page(&view);
    };
    let found = if what == "rollouts" {
        control.rollouts(before.as_deref()).await
    } else {
        control.history(before.as_deref()).await
    };
    match found {
        Ok(found) => {
            if found.unreadable > 0 {
                view.message = format!("{} records could not be read (skipped).", found.unreadable);
            }
            view.older = found
                .older
                .map(|k| format!("/{what}?before={}", query_escape(&k)));
            if what == "rollouts" {
                view.rollouts = found.records.iter().map(rollout_row).collect();
            } else {
                view.changes = found.records.iter().map(config_change).collect();
            }
        }
        Err(e) => view.message = format!("Cannot read the {what} records from etcd: {e}"),
    }
    page(&view)
}

fn config_change(r: &Value) -> ConfigChange {
    ConfigChange {
        at: field(r, "/at"),
        by: field(r, "/by"),
        action: field(r, "/action"),
        generation: field(r, "/generation"),
        target: field(r, "/target"),
        hosts: r["hosts"].as_array().map_or(0, Vec::len),
    }
}

fn rollout_row(r: &Value) -> RolloutRow {
    let plugins = r["plugins"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| format!("{} {}", field(p, "/plugin"), field(p, "/version")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let waves = r["waves"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|w| WaveRow {
                    percent: field(w, "/percent"),
                    state: field(w, "/state"),
                    targets: field(w, "/targets"),
                    healthy: field(w, "/healthy"),
                    failed: field(w, "/failed"),
                    rolled_back: field(w, "/rolled_back"),
                    pending: field(w, "/pending"),
                })
                .collect()
        })
        .unwrap_or_default();
    RolloutRow {
        id: field(r, "/rollout"),
        state: field(r, "/state"),
        reason: field(r, "/reason"),
        by: field(r, "/by"),
        started_at: field(r, "/started_at"),
        target: field(r, "/target/describe"),
        plugins,
        waves,
    }
}
