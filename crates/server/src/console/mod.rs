//! The web console: server-rendered HTML pages over the same data as the API (alerts,
//! fleet presence, the inventory index), for operators who log in. Pages are templates
//! compiled into the binary (askama, HTML-escaped by default); every listing is a page
//! of bounded size, never the whole fleet. Forms work without JavaScript.
//!
//! Reading needs a session unless `[console] anonymous_read`; every change (acknowledge,
//! suppress, lift a suppression) needs an operator and is recorded in the history with
//! their name. The JSON API under `/api/v1` is not behind this login (see docs/server.md).

pub mod auth;
pub mod control;
pub mod pages;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hids_types::Timestamp;

use crate::http::Api;

/// What the console was configured with, and its login state.
pub struct Settings {
    pub anonymous_read: bool,
    pub session_lifetime: Duration,
    /// Cookies marked Secure: the server is reached over TLS.
    pub secure_cookies: bool,
    /// The address operators' browsers use, when a proxy in front rewrites `Host`.
    pub public_origin: Option<String>,
    pub throttle: auth::Throttle,
    /// Password checks at once: each takes 19 MiB and tens of milliseconds by design.
    pub verifying: tokio::sync::Semaphore,
    /// Logins waiting for a check, at most: past it, "retry in a moment".
    pub waiting: tokio::sync::Semaphore,
    /// The fleet overview's presence counts and alert figures, shared for a few
    /// seconds: counting a million hosts or a day's alerts is not done per page view.
    pub overview: Shared<pages::FleetCounts>,
    pub overview_alerts: Shared<pages::AlertFigures>,
    /// An operator has been seen in the store (see `operators_exist`).
    pub operators_seen: std::sync::atomic::AtomicBool,
}

impl Settings {
    pub fn new(anonymous_read: bool, session_lifetime: Duration, secure_cookies: bool) -> Self {
        Settings {
            anonymous_read,
            session_lifetime,
            secure_cookies,
            public_origin: None,
            throttle: auth::Throttle::default(),
            verifying: tokio::sync::Semaphore::new(2),
            waiting: tokio::sync::Semaphore::new(32),
            overview: Shared::new(SHARED_FOR),
            overview_alerts: Shared::new(SHARED_FOR),
            operators_seen: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Behind a proxy: the browsers' address. An https one marks cookies Secure, as
    /// the browser reaches the console over TLS even when this server does not.
    pub fn with_public_origin(mut self, origin: Option<String>) -> Self {
        let origin = origin.map(|o| o.trim_end_matches('/').to_ascii_lowercase());
        if origin.as_deref().is_some_and(|o| o.starts_with("https://")) {
            self.secure_cookies = true;
        }
        self.public_origin = origin;
        self
    }
}

/// How long the overview's figures are shared between page views.
const SHARED_FOR: Duration = Duration::from_secs(10);

/// A value computed at most once per `lifetime`, one computation at a time: the
/// requests that find it stale wait for the one computing it and take its result.
pub struct Shared<T> {
    value: std::sync::Mutex<Option<(std::time::Instant, Arc<T>)>>,
    refreshing: tokio::sync::Mutex<()>,
    lifetime: Duration,
}

impl<T> Shared<T> {
    pub fn new(lifetime: Duration) -> Self {
        Shared {
            value: std::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            lifetime,
        }
    }

    fn fresh(&self) -> Option<Arc<T>> {
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        value
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.lifetime)
            .map(|(_, v)| v.clone())
    }

    /// The value, computed by `make` when it is older than the lifetime.
    pub async fn get<E, F>(&self, make: impl FnOnce() -> F) -> Result<Arc<T>, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let v = Arc::new(make().await?);
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), v.clone()));
        Ok(v)
    }
}

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/alerts", get(pages::alerts))
        .route("/alerts/{id}", get(pages::alert))
        .route("/alerts/{id}/acknowledge", post(pages::acknowledge))
        .route("/alerts/{id}/suppress", post(pages::suppress))
        .route("/suppressions/{id}/remove", post(pages::unsuppress))
        .route("/hosts/{id}", get(pages::host))
        .route("/vulns", get(pages::vulns))
        .route("/history", get(pages::history))
        .route("/configuration", get(pages::configuration))
        .route("/rollouts", get(pages::rollouts))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/login/link", get(pages::login_link))
        .route("/logout", post(pages::logout))
        .route("/console.css", get(stylesheet))
        .route("/htmx.min.js", get(htmx))
}

/// htmx (assets/README.md): progressive enhancement only, every page works without it.
async fn htmx() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("../../assets/htmx-2.0.11.min.js"),
    )
        .into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../../templates/console.css"),
    )
        .into_response()
}

/// Who is looking at a page: an operator, or nobody (anonymous reading allowed).
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub operator: Option<String>,
}

/// The viewer of a request, or the way to the login page (back to `here` after it).
pub async fn viewer(api: &Arc<Api>, headers: &HeaderMap, here: &str) -> Result<Viewer, Response> {
    let operator = match auth::session_token(headers) {
        Some(token) => {
            let key = auth::session_key(&token);
            crate::http::with_store(api, move |s| s.session(&key, Timestamp::now()))
                .await
                .map_err(api_problem)?
        }
        None => None,
    };
    if operator.is_none() && !api.console.anonymous_read && operators_exist(api).await? {
        return Err(to_login(here));
    }
    Ok(Viewer { operator })
}

/// Whether any operator exists. Until the first is made, pages are readable without a
/// login (the API on the same address already answers the same questions without
/// one); changes always need an operator. Once one is seen it is remembered for the
/// process's life: removing every operator locks the pages until the next start.
async fn operators_exist(api: &Arc<Api>) -> Result<bool, Response> {
    use std::sync::atomic::Ordering;
    if api.console.operators_seen.load(Ordering::Relaxed) {
        return Ok(true);
    }
    let exist = crate::http::with_store(api, |s| s.has_operators())
        .await
        .map_err(api_problem)?;
    if exist {
        api.console.operators_seen.store(true, Ordering::Relaxed);
    }
    Ok(exist)
}

/// The operator making a change: logged in, from a page of this server.
pub async fn operator(api: &Arc<Api>, headers: &HeaderMap, here: &str) -> Result<String, Response> {
    if let Err(why) = auth::same_origin(headers, api.console.public_origin.as_deref()) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            &format!(
                "This change did not come from a page of this console: {why}. Behind a proxy \
                 that rewrites Host, set [console] public_origin to the address in the browser."
            ),
        ));
    }
    match viewer(api, headers, here).await?.operator {
        Some(name) => Ok(name),
        None => Err(to_login(here)),
    }
}

fn to_login(here: &str) -> Response {
    Redirect::to(&format!("/login?next={}", query_escape(here))).into_response()
}

/// Percent-encodes a query value.
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where to go after logging in: a path of this console, never another site. Only
/// characters a path and query may hold unescaped (no space, tab, control character or
/// backslash, which browsers drop or turn into `/`), starting with one `/`.
pub fn local_path(next: Option<&str>) -> String {
    let safe = |p: &str| {
        let bytes = p.as_bytes();
        bytes.first() == Some(&b'/')
            && !matches!(bytes.get(1), Some(b'/' | b'\\'))
            && p.len() <= 2048
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%+:@!$'()*,;#".contains(b))
    };
    match next {
        Some(p) if safe(p) => p.to_owned(),
        _ => "/".to_owned(),
    }
}

/// What a console page may load and do: its own scripts and styles only (no inline
/// script, no eval), never framed by another site, forms posted only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A rendered page; a template that fails is a 500 naming it.
pub fn page(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::REFERRER_POLICY, "same-origin"),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the console could not render this page: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_login_only_paths_of_this_console() {
        for good in [
            "/",
            "/alerts",
            "/alerts?min_level=high&idc=bj1",
            "/hosts/web-1",
        ] {
            assert_eq!(local_path(Some(good)), good);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /x",
            "https://evil.example",
            "https:x",
            "evil",
            "",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(local_path(None), "/");
    }
}

#[derive(Template)]
#[template(path = "problem.html")]
struct Problem<'a> {
    viewer: Viewer,
    title: &'a str,
    message: &'a str,
}

/// A page saying what went wrong and what to do.
pub fn problem(status: StatusCode, message: &str) -> Response {
    let mut response = page(&Problem {
        viewer: Viewer::default(),
        title: status.canonical_reason().unwrap_or("Error"),
        message,
    });
    *response.status_mut() = status;
    response
}

/// A store failure or a refused request as a page saying what to do.
pub fn api_problem(e: crate::http::ApiError) -> Response {
    let status = e.status();
    let message = if status.is_server_error() {
        format!(
            "{} The server's log says more; retry once the store is back.",
            e.message()
        )
    } else {
        e.message().to_owned()
    };
    problem(status, &message)
}

/// A time as the console shows it (UTC, to the second).
pub fn when(t: &Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.0).to_string()
}
