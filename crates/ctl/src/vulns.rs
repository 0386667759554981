//! `hidsctl vulns` and `hidsctl packages`: the fleet inventory index of hids-server.

use serde_json::Value;

use crate::alerts::Api;
use crate::exit::Exit;

#[derive(Debug, clap::Subcommand)]
pub enum VulnsCommand {
    /// Hosts a vulnerability affects, with the package, the installed version and the
    /// fixed one ("-": no fix yet).
    Hosts {
        /// CVE-2024-1234, or an OSV id or alias.
        id: String,
        #[command(flatten)]
        page: Page,
    },
    /// The fleet's vulnerabilities, most severe and most widespread first.
    Top {
        /// unknown, negligible, low, medium, high or critical.
        #[arg(long, default_value = "unknown")]
        min_severity: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// What the server loaded from each feed file: format, records, skipped, errors.
    Feeds {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PackagesCommand {
    /// Hosts with a package in a version range, judged by the package type's own
    /// ordering (dpkg's for deb, rpm's for rpm).
    Hosts {
        /// The package name (with --source: the source package).
        name: String,
        /// deb, rpm, python, npm, jar or kernel.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Match the source package and its version (what distribution advisories name).
        #[arg(long)]
        source: bool,
        /// Versions at or above this.
        #[arg(long)]
        from: Option<String>,
        /// Versions strictly below this.
        #[arg(long)]
        below: Option<String>,
        /// Exactly this version.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// One host's inventory: OS, kernel, every package.
    Show {
        host_id: String,
        #[arg(long)]
        json: bool,
    },
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<Exit> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(Exit::Success)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn labels(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Rows of `values` as a table of `columns` (header, JSON field).
fn print_table(rows: &[Value], columns: &[(&str, &str)]) {
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(_, field)| match *field {
                    "labels" => labels(&r[*field]),
                    "binaries" => r[*field]
                        .as_array()
                        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                    "source" => format!(
                        "{} {}",
                        text(&r["source"]["name"]),
                        text(&r["source"]["version"])
                    ),
                    _ => text(&r[*field]),
                })
                .collect()
        })
        .collect();
    out_raw!("{}", hids_types::text::table(&header, &table));
}

/// Exit 5 (nothing found) for an empty listing, in tables and in JSON alike.
fn found(rows: &[Value]) -> Exit {
    if rows.is_empty() {
        Exit::NothingFound
    } else {
        Exit::Success
    }
}

/// "rows 1-100 of 50,000 (--offset 100 for the next)" under a table that is a page.
fn print_total(api: &Api, shown: usize, offset: usize) {
    if let Some(total) = api.last_total() {
        let end = offset + shown;
        if (end as u64) < total {
            out!(
                "rows {}-{end} of {total} (--offset {end} for the next)",
                offset + 1
            );
        } else {
            out!("{total} in all");
        }
    }
}

/// A host id as one URL path segment: everything but unreserved characters escaped.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a listing of hosts is asked for and shown: shared by `vulns hosts` and
/// `packages hosts`.
#[derive(Debug, clap::Args)]
pub struct Page {
    /// Count hosts per value of this label instead (idc, project, product, ...).
    #[arg(long)]
    by: Option<String>,
    /// Rows at most (the total is printed below the table).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Rows to skip (for the next page).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    #[arg(long)]
    json: bool,
}

impl Page {
    /// `limit`, `offset` and `by` as the API takes them.
    fn query(&self) -> Vec<(String, String)> {
        let mut q = vec![
            ("limit".to_owned(), self.limit.to_string()),
            ("offset".to_owned(), self.offset.to_string()),
        ];
        if let Some(by) = &self.by {
            q.push(("by".into(), by.clone()));
        }
        q
    }
}

/// A listing of hosts (or, with `by`, of counts per label value): JSON, or a table with
/// the page's place in the whole; exit 5 when empty.
async fn hosts_listing(
    api: &Api,
    path: &str,
    mut q: Vec<(String, String)>,
    page: &Page,
    columns: &[(&str, &str)],
) -> anyhow::Result<Exit> {
    q.extend(page.query());
    let rows = listing(api, path, &q).await?;
    if page.json {
        print_json(&rows)?;
        return Ok(found(&rows));
    }
    if page.by.is_some() {
        print_table(&rows, &[("VALUE", "key"), ("HOSTS", "hosts")]);
    } else {
        print_table(&rows, columns);
        if !rows.is_empty() {
            print_total(api, rows.len(), page.offset);
        }
    }
    Ok(found(&rows))
}

async fn listing(api: &Api, path: &str, q: &[(String, String)]) -> anyhow::Result<Vec<Value>> {
    Ok(api.get::<Vec<Value>>(path, q).await?.unwrap_or_default())
}

pub async fn vulns(api: &Api, command: VulnsCommand) -> anyhow::Result<Exit> {
    match command {
        VulnsCommand::Hosts { id, page } => {
            let q = vec![("id".to_owned(), id.clone())];
            let columns = [
                ("HOST", "host_id"),
                ("HOSTNAME", "hostname"),
                ("PACKAGE", "package"),
                ("INSTALLED", "version"),
                ("FIXED", "fixed_version"),
                ("SEVERITY", "severity"),
                ("LABELS", "labels"),
            ];
            let exit = hosts_listing(api, "/api/v1/vulns/hosts", q, &page, &columns).await?;
            if exit == Exit::NothingFound && !page.json {
                out!("no host in the index is affected by {id}");
            }
            Ok(exit)
        }
        VulnsCommand::Top {
            min_severity,
            limit,
            json,
        } => {
            let q = vec![
                ("min_severity".to_owned(), min_severity),
                ("limit".to_owned(), limit.to_string()),
            ];
            let rows = listing(api, "/api/v1/vulns/top", &q).await?;
            if json {
                return print_json(&rows);
            }
            print_table(
                &rows,
                &[
                    ("ID", "id"),
                    ("SEVERITY", "severity"),
                    ("HOSTS", "hosts"),
                    ("FIXABLE", "fixable"),
                    ("PACKAGES", "packages"),
                ],
            );
            Ok(Exit::Success)
        }
        VulnsCommand::Feeds { json } => {
            let report = api
                .get::<Value>("/api/v1/vulns/feeds", &[])
                .await?
                .unwrap_or_default();
            if json {
                return print_json(&report);
            }
            let files = report["files"].as_array().cloned().unwrap_or_default();
            print_table(
                &files,
                &[
                    ("PATH", "path"),
                    ("FORMAT", "format"),
                    ("RECORDS", "advisories"),
                    ("ERROR", "error"),
                ],
            );
            Ok(if files.iter().any(|f| !f["error"].is_null()) {
                Exit::Error
            } else {
                Exit::Success
            })
        }
    }
}

pub async fn packages(api: &Api, command: PackagesCommand) -> anyhow::Result<Exit> {
    match command {
        PackagesCommand::Hosts {
            name,
            kind,
            source,
            from,
            below,
            version,
            page,
        } => {
            let mut q = vec![("name".to_owned(), name)];
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    q.push((k.to_owned(), v));
                }
            };
            put("type", kind);
            put("source", source.then(|| "true".to_owned()));
            put("from", from);
            put("below", below);
            put("version", version);
            let columns = [
                ("HOST", "host_id"),
                ("HOSTNAME", "hostname"),
                ("TYPE", "type"),
                ("PACKAGE", "package"),
                ("VERSION", "version"),
                ("SOURCE", "source"),
                ("LABELS", "labels"),
            ];
            hosts_listing(api, "/api/v1/packages/hosts", q, &page, &columns).await
        }
        PackagesCommand::Show { host_id, json } => {
            let path = format!("/api/v1/inventory/hosts/{}", path_segment(&host_id));
            let Some(host) = api.get::<Value>(&path, &[]).await? else {
                out!("no inventory from host {host_id} in the index");
                return Ok(Exit::NothingFound);
            };
            if json {
                return print_json(&host);
            }
            out!(
                "host {} ({}), {} {}, kernel {}, inventory {}",
                text(&host["host_id"]),
                text(&host["hostname"]),
                text(&host["os"]["id"]),
                text(&host["os"]["version_id"]),
                text(&host["kernel"]),
                text(&host["hash"])
            );
            let packages = host["packages"].as_array().cloned().unwrap_or_default();
            print_table(
                &packages,
                &[
                    ("TYPE", "type"),
                    ("NAME", "name"),
                    ("VERSION", "version"),
                    ("ARCH", "architecture"),
                    ("PATH", "path"),
                ],
            );
            Ok(Exit::Success)
        }
    }
}
