//! `hidsctl enroll` and `hidsctl unenroll`: per-host etcd credentials.
//!
//! Enrolling a host makes its etcd role (`hids-host-<id>`: read-write on its own
//! `agents/<id>`, read on its own `desired/<id>` and on `blobs/`, exactly what the
//! agent's session does: [`hids_control::credentials::host_permissions`]), its user with
//! that role and a fresh random password, and writes `<out>/<id>.toml` (mode 0600) for
//! the host. Enrolling again rotates the password. Unenrolling deletes the user, the
//! role and the host's keys, so a decommissioned host's credentials open nothing.
//!
//! Only etcd's `root` may create users and roles, so these run as root.

use crate::exit::Exit;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

use etcd_client::{Client, Permission, RoleRevokePermissionOptions};
use hids_control::credentials::{self, Credentials, CredentialsError};
use hids_control::Keys;
use serde::Serialize;

/// Hosts in flight at once. Each is six etcd requests in a row, and etcd 3.4 hashes
/// the password (bcrypt) inside its serial apply loop: a few dozen hosts keep that loop
/// busy without queueing requests until they time out.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// What `hidsctl enroll` was asked to do.
pub struct Request {
    pub hosts: Vec<String>,
    pub out: PathBuf,
    pub force: bool,
    pub concurrency: usize,
    pub json: bool,
}

#[derive(Serialize)]
struct Enrolled {
    host_id: String,
    user: String,
    file: PathBuf,
    /// The user existed: its password was replaced.
    rotated: bool,
}

#[derive(Serialize)]
struct Failed {
    host_id: String,
    error: String,
}

/// The host ids from `--host-id` and `--hosts-file` (one per line; blank lines and
/// `#` comments skipped), every one checked, in order, without duplicates.
///
/// # Errors
/// An unreadable file, or every id that cannot be used (with its line).
pub fn host_ids(given: &[String], file: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<(String, String)> = given
        .iter()
        .map(|h| (h.clone(), "--host-id".to_owned()))
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                ids.push((line.to_owned(), format!("{}:{}", path.display(), n + 1)));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut problems = Vec::new();
    let mut hosts = Vec::new();
    for (id, from) in ids {
        if let Err(e) = hids_control::keys::check_host_id(&id) {
            problems.push(format!("{from}: {e}"));
        } else if seen.insert(id.clone()) {
            hosts.push(id);
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    if hosts.is_empty() {
        anyhow::bail!("no host given: --host-id ID (repeatable) or --hosts-file FILE");
    }
    Ok(hosts)
}

/// Enrolls every host of `req`, `req.concurrency` at a time. Exits 1 when any failed.
///
/// # Errors
/// When the output directory cannot be made; a failing host is reported, not an error.
pub async fn enroll(client: &Client, keys: &Keys, req: Request) -> anyhow::Result<Exit> {
    make_private_dir(&req.out)?;
    let started = Instant::now();
    let (out, force) = (req.out.clone(), req.force);
    let (enrolled, failed) = for_each_host(
        &req.hosts,
        req.concurrency,
        !req.json,
        "enrolling",
        |host| enroll_one(client.clone(), keys.clone(), host, out.clone(), force),
    )
    .await;
    let elapsed_secs = started.elapsed().as_secs_f64();
    if req.json {
        let v = serde_json::json!({
            "enrolled": enrolled, "failed": failed, "elapsed_secs": elapsed_secs,
        });
        out!("{v}");
    } else {
        for e in &enrolled {
            let verb = if e.rotated {
                "password rotated"
            } else {
                "enrolled"
            };
            if enrolled.len() <= 20 {
                out!(
                    "{}: {verb}, user {}, credentials in {} (install as /etc/hids/credentials.toml, mode 0600)",
                    e.host_id,
                    e.user,
                    e.file.display()
                );
            }
        }
        report_failures(&failed);
        let rotated = enrolled.iter().filter(|e| e.rotated).count();
        out!(
            "{} host(s) enrolled ({rotated} rotated), {} failed, in {elapsed_secs:.1} s; files in {}",
            enrolled.len(),
            failed.len(),
            req.out.display()
        );
    }
    Ok(exit(&failed))
}

/// One host: role and its permissions, user with a new password (or the new password
/// for an existing user), the grant, then the file. The file is checked first, so a
/// host whose file would be refused keeps its current password.
async fn enroll_one(
    mut client: Client,
    keys: Keys,
    host: String,
    out: PathBuf,
    force: bool,
) -> Result<Enrolled, Failed> {
    let fail = |error: String| Failed {
        host_id: host.clone(),
        error,
    };
    let file = out.join(format!("{host}.toml"));
    if !force && file.exists() {
        return Err(fail(CredentialsError::Exists { path: file }.to_string()));
    }
    let user = credentials::host_user(&host);
    let role = credentials::host_role(&host);
    let creds = Credentials {
        user: user.clone(),
        password: credentials::random_password()
            .map_err(|e| fail(format!("cannot read /dev/urandom: {e}")))?,
    };
    ensure_role(&mut client, &keys, &host, &role)
        .await
        .map_err(fail)?;
    let rotated = ensure_user(&mut client, &creds, &role, force)
        .await
        .map_err(fail)?;
    creds.write(&file, force).map_err(|e| {
        fail(format!(
            "{e}; the user exists with a password nobody has: enroll the host again"
        ))
    })?;
    Ok(Enrolled {
        host_id: host.clone(),
        user,
        file,
        rotated,
    })
}

/// A permission as etcd stores it (etcd-client's own equality ignores the range end).
fn grant_of(p: &Permission) -> (i32, Vec<u8>, Vec<u8>) {
    (p.get_type(), p.key().to_vec(), p.range_end().to_vec())
}

/// Makes `role` hold exactly the host's permissions, changing only what differs: every
/// grant or revoke makes etcd 3.4 rebuild its whole permission cache (all users, all
/// roles; docs/benchmarks.md), so re-enrolling a host with an intact role grants nothing.
async fn ensure_role(
    client: &mut Client,
    keys: &Keys,
    host: &str,
    role: &str,
) -> Result<(), String> {
    let err = |e: etcd_client::Error| etcd_error(&format!("role {role}"), &e);
    let have: Vec<Permission> = match client.role_add(role).await {
        Ok(_) => Vec::new(),
        Err(e) if has(&e, "already exists") => {
            client.role_get(role).await.map_err(err)?.permissions()
        }
        Err(e) => return Err(err(e)),
    };
    let want = credentials::host_permissions(keys, host);
    let wanted: Vec<_> = want.iter().map(grant_of).collect();
    for p in &have {
        let (_, key, range_end) = grant_of(p);
        if !wanted.contains(&grant_of(p)) {
            let opts = (!range_end.is_empty())
                .then(|| RoleRevokePermissionOptions::new().with_range_end(range_end));
            client
                .role_revoke_permission(role, key, opts)
                .await
                .map_err(err)?;
        }
    }
    let held: Vec<_> = have.iter().map(grant_of).collect();
    for p in want {
        if !held.contains(&grant_of(&p)) {
            client.role_grant_permission(role, p).await.map_err(err)?;
        }
    }
    Ok(())
}

/// Creates the user with its role, or gives an existing user the new password (and the
/// role, should it have lost it). True when the user existed: a rotation. The user is
/// looked up first because etcd 3.4 hashes the password of a UserAdd (bcrypt, in its
/// serial apply loop) even when the user exists: a rotation by "add, then change"
/// measured twice the etcd CPU of a change alone.
async fn ensure_user(
    client: &mut Client,
    creds: &Credentials,
    role: &str,
    force: bool,
) -> Result<bool, String> {
    let user = creds.user.as_str();
    let err = |e: etcd_client::Error| etcd_error(&format!("user {user}"), &e);
    let roles = match client.user_get(user).await {
        Ok(found) => Some(found.roles().to_vec()),
        Err(e) if has(&e, "not found") => None,
        Err(e) => return Err(err(e)),
    };
    match &roles {
        // A credentials file elsewhere (another --out) would lock the live host out at
        // its next reconnect: rotating is only ever asked for.
        Some(_) if !force => {
            return Err(format!(
                "{user} is enrolled already; --force gives it a new password (the host needs the new file)"
            ))
        }
        Some(_) => {
            let changed = client.user_change_password(user, creds.password.as_str());
            changed.await.map_err(err)?;
        }
        None => {
            let added = client.user_add(user, creds.password.as_str(), None);
            added.await.map_err(err)?;
        }
    }
    if !roles.as_ref().is_some_and(|r| r.iter().any(|r| r == role)) {
        client.user_grant_role(user, role).await.map_err(err)?;
    }
    Ok(roles.is_some())
}

/// Deletes every host's user, role, status and desired state. Hosts never enrolled are
/// not an error (decommissioning twice is harmless). Exits 1 when any failed.
///
/// # Errors
/// None of its own; a failing host is reported.
pub async fn unenroll(
    client: &Client,
    keys: &Keys,
    hosts: &[String],
    concurrency: usize,
    json: bool,
) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let (done, failed) = for_each_host(hosts, concurrency, !json, "unenrolling", |host| {
        unenroll_one(client.clone(), keys.clone(), host)
    })
    .await;
    let elapsed_secs = started.elapsed().as_secs_f64();
    if json {
        let v = serde_json::json!({
            "unenrolled": done, "failed": failed, "elapsed_secs": elapsed_secs,
        });
        out!("{v}");
    } else {
        report_failures(&failed);
        out!(
            "{} host(s) unenrolled (user, role, status and desired state deleted), {} failed",
            done.len(),
            failed.len()
        );
    }
    Ok(exit(&failed))
}

async fn unenroll_one(mut client: Client, keys: Keys, host: String) -> Result<String, Failed> {
    let fail = |what: &str, e: etcd_client::Error| Failed {
        host_id: host.clone(),
        error: etcd_error(what, &e),
    };
    let user = credentials::host_user(&host);
    let role = credentials::host_role(&host);
    // The user first: from then on the host cannot authenticate, whatever else fails.
    if let Err(e) = client.user_delete(user.as_str()).await {
        if !has(&e, "not found") {
            return Err(fail(&format!("user {user}"), e));
        }
    }
    if let Err(e) = client.role_delete(role.as_str()).await {
        if !has(&e, "not found") {
            return Err(fail(&format!("role {role}"), e));
        }
    }
    // Its lease may live on (keepalives need no permission in etcd 3.4): deleting the
    // status key takes the host out of the listing now, not at its next failed write.
    for key in [keys.agent(&host), keys.desired(&host)] {
        let deleted = client.delete(key.as_str(), None).await;
        deleted.map_err(|e| fail(&key, e))?;
    }
    Ok(host)
}

/// Runs `f` for every host, `concurrency` at a time, with a progress bar on stderr
/// when `show`. Returns what succeeded and what failed, each in completion order.
async fn for_each_host<T, F, Fut>(
    hosts: &[String],
    concurrency: usize,
    show: bool,
    what: &'static str,
    f: F,
) -> (Vec<T>, Vec<Failed>)
where
    T: Send + 'static,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, Failed>> + Send + 'static,
{
    let progress = show.then(|| crate::progress::bar(hosts.len() as u64, what));
    let mut tasks = tokio::task::JoinSet::new();
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let mut collect = |r: Option<Result<Result<T, Failed>, tokio::task::JoinError>>| {
        match r {
            Some(Ok(Ok(t))) => done.push(t),
            Some(Ok(Err(f))) => failed.push(f),
            Some(Err(e)) => failed.push(Failed {
                host_id: "?".into(),
                error: format!("task failed: {e}"),
            }),
            None => {}
        }
        if let Some(p) = &progress {
            p.inc(1);
        }
    };
    for host in hosts {
        while tasks.len() >= concurrency.max(1) {
            collect(tasks.join_next().await);
        }
        tasks.spawn(f(host.clone()));
    }
    while !tasks.is_empty() {
        collect(tasks.join_next().await);
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    (done, failed)
}

/// Creates the output directory readable by its owner only (when it is new).
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))
}

fn has(e: &etcd_client::Error, text: &str) -> bool {
    e.to_string().contains(text)
}

/// An etcd error, with what to do about the usual one.
fn etcd_error(what: &str, e: &etcd_client::Error) -> String {
    if has(e, "permission denied") {
        format!("{what}: {e} (only etcd's root user may create users and roles: --user root)")
    } else {
        format!("{what}: {e}")
    }
}

fn report_failures(failed: &[Failed]) {
    for f in failed.iter().take(20) {
        eprintln!("hidsctl: {}: {}", f.host_id, f.error);
    }
    if failed.len() > 20 {
        eprintln!(
            "hidsctl: ... and {} more failures (--json lists all)",
            failed.len() - 20
        );
    }
}

fn exit(failed: &[Failed]) -> Exit {
    if failed.is_empty() {
        Exit::Success
    } else {
        Exit::Error
    }
}
