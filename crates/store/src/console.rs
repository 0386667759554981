//! What the web console keeps: operator accounts (password hashes only), their login
//! sessions (token hashes only), alert acknowledgements and the history of every change
//! an operator made. In the store, so every server instance of a shared database (one
//! PostgreSQL) sees the same sessions and history.

use hids_types::Timestamp;

use crate::sql::{cell, Conn, Param, Row};
use crate::StoreError;

/// Sessions kept per operator: logging in past this ends the oldest.
pub const MAX_SESSIONS_PER_OPERATOR: usize = 64;
/// Operators kept at most.
pub const MAX_OPERATORS: usize = 10_000;
/// Login links not yet used or expired, at most.
pub const MAX_LOGIN_LINKS: usize = 10_000;
/// Rows of history returned by one query at most.
pub const MAX_CHANGES_LISTED: usize = 1_000;
/// Rows of history kept: past this, the oldest are deleted by [`crate::Store::prune`].
pub const MAX_CHANGES_KEPT: i64 = 1_000_000;
/// Longest operator name, action or detail stored (bytes).
pub const MAX_FIELD_BYTES: usize = 4_096;

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ack {
    pub alert_id: String,
    pub operator: String,
    pub at: Timestamp,
}

/// One change an operator made, as the history shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub id: i64,
    pub at: Timestamp,
    pub operator: String,
    /// What was done: `login`, `acknowledge`, `suppress`, `unsuppress`, ...
    pub action: String,
    /// What it was done to, for a person: an alert id, a suppression, ...
    pub detail: String,
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos() / 1000).unwrap_or(i64::MAX)
}

fn bounded<'a>(what: &str, value: &'a str) -> Result<&'a str, StoreError> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(StoreError::Invalid(format!(
            "{what}: {} bytes, at most {MAX_FIELD_BYTES}",
            value.len()
        )));
    }
    Ok(value)
}

/// Creates or replaces an operator's password hash; returns whether the operator is new.
pub(crate) fn put_operator(
    c: &mut dyn Conn,
    name: &str,
    password_hash: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    bounded("operator name", name)?;
    bounded("password hash", password_hash)?;
    let updated = c.execute(
        "UPDATE operators SET password_hash = $1 WHERE name = $2",
        &[Param::Text(password_hash), Param::Text(name)],
    )?;
    if updated > 0 {
        // A new password ends every session and login link the old one could open.
        end_everything_of(c, name)?;
        return Ok(false);
    }
    let stored = count(c, "SELECT COUNT(*) FROM operators", &[])?;
    if stored >= MAX_OPERATORS as i64 {
        return Err(StoreError::Invalid(format!(
            "{stored} operators stored, the most kept: remove some first"
        )));
    }
    c.execute(
        "INSERT INTO operators (name, password_hash, created_at_us) VALUES ($1, $2, $3)",
        &[
            Param::Text(name),
            Param::Text(password_hash),
            Param::Int(micros(now)),
        ],
    )?;
    Ok(true)
}

/// Ends an operator's sessions and unused login links.
fn end_everything_of(c: &mut dyn Conn, name: &str) -> Result<(), StoreError> {
    for table in ["console_sessions", "console_links"] {
        c.execute(
            &format!("DELETE FROM {table} WHERE operator = $1"),
            &[Param::Text(name)],
        )?;
    }
    Ok(())
}

pub(crate) fn remove_operator(c: &mut dyn Conn, name: &str) -> Result<bool, StoreError> {
    end_everything_of(c, name)?;
    Ok(c.execute(
        "DELETE FROM operators WHERE name = $1",
        &[Param::Text(name)],
    )? > 0)
}

pub(crate) fn operator_password(
    c: &mut dyn Conn,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let rows = c.query(
        "SELECT password_hash FROM operators WHERE name = $1",
        &[Param::Text(name)],
    )?;
    first_text(&rows, "password_hash")
}

pub(crate) fn has_operators(c: &mut dyn Conn) -> Result<bool, StoreError> {
    Ok(!c
        .query("SELECT name FROM operators LIMIT 1", &[])?
        .is_empty())
}

pub(crate) fn operators(c: &mut dyn Conn) -> Result<Vec<Row>, StoreError> {
    c.query(
        "SELECT name, created_at_us FROM operators ORDER BY name LIMIT $1",
        &[Param::Int(MAX_OPERATORS as i64)],
    )
}

pub(crate) fn operator_from_row(row: &Row) -> Result<(String, Timestamp), String> {
    Ok((
        cell(row, 0)?.text("name")?.to_owned(),
        cell(row, 1)?.micros("created_at_us")?,
    ))
}

/// Starts a session; expired sessions are deleted on the way, and an operator's oldest
/// past [`MAX_SESSIONS_PER_OPERATOR`].
pub(crate) fn start_session(
    c: &mut dyn Conn,
    token_hash: &str,
    operator: &str,
    now: Timestamp,
    expires: Timestamp,
) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM console_sessions WHERE expires_at_us < $1",
        &[Param::Int(micros(now))],
    )?;
    let open = count(
        c,
        "SELECT COUNT(*) FROM console_sessions WHERE operator = $1",
        &[Param::Text(operator)],
    )?;
    if open >= MAX_SESSIONS_PER_OPERATOR as i64 {
        c.execute(
            "DELETE FROM console_sessions WHERE token_hash IN (
                SELECT token_hash FROM console_sessions WHERE operator = $1
                ORDER BY created_at_us LIMIT $2)",
            &[
                Param::Text(operator),
                Param::Int(open + 1 - MAX_SESSIONS_PER_OPERATOR as i64),
            ],
        )?;
    }
    c.execute(
        "INSERT INTO console_sessions (token_hash, operator, created_at_us, expires_at_us)
         VALUES ($1, $2, $3, $4)",
        &[
            Param::Text(token_hash),
            Param::Text(operator),
            Param::Int(micros(now)),
            Param::Int(micros(expires)),
        ],
    )?;
    Ok(())
}

/// The operator of a session that has not expired.
pub(crate) fn session(
    c: &mut dyn Conn,
    token_hash: &str,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    let rows = c.query(
        "SELECT operator FROM console_sessions WHERE token_hash = $1 AND expires_at_us >= $2",
        &[Param::Text(token_hash), Param::Int(micros(now))],
    )?;
    first_text(&rows, "operator")
}

pub(crate) fn end_session(c: &mut dyn Conn, token_hash: &str) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM console_sessions WHERE token_hash = $1",
        &[Param::Text(token_hash)],
    )?;
    Ok(())
}

/// Stores a one-time login link (expired ones are deleted on the way).
pub(crate) fn create_login_link(
    c: &mut dyn Conn,
    token_hash: &str,
    operator: &str,
    now: Timestamp,
    expires: Timestamp,
) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM console_links WHERE expires_at_us < $1",
        &[Param::Int(micros(now))],
    )?;
    let stored = count(c, "SELECT COUNT(*) FROM console_links", &[])?;
    if stored >= MAX_LOGIN_LINKS as i64 {
        return Err(StoreError::Invalid(format!(
            "{stored} login links wait to be used, the most kept: wait for them to expire"
        )));
    }
    c.execute(
        "INSERT INTO console_links (token_hash, operator, expires_at_us) VALUES ($1, $2, $3)",
        &[
            Param::Text(token_hash),
            Param::Text(bounded("operator", operator)?),
            Param::Int(micros(expires)),
        ],
    )?;
    Ok(())
}

/// Uses a login link: deletes it and returns its operator if it had not expired. One
/// statement, so of two requests with the same link only one gets the operator.
pub(crate) fn take_login_link(
    c: &mut dyn Conn,
    token_hash: &str,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    let rows = c.query(
        "DELETE FROM console_links WHERE token_hash = $1 RETURNING operator, expires_at_us",
        &[Param::Text(token_hash)],
    )?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let expires = cell(row, 1)
        .and_then(|c| c.int("expires_at_us"))
        .map_err(|what| StoreError::Unreadable {
            row: "console_links".into(),
            what,
        })?;
    if expires < micros(now) {
        return Ok(None);
    }
    // Only for an operator who still exists.
    let Some(operator) = first_text(&rows, "operator")? else {
        return Ok(None);
    };
    let exists = count(
        c,
        "SELECT COUNT(*) FROM operators WHERE name = $1",
        &[Param::Text(&operator)],
    )?;
    Ok((exists > 0).then_some(operator))
}

/// Acknowledges an alert (the first acknowledgement stands): None when there is no such
/// alert, else whether this call acknowledged it.
pub(crate) fn acknowledge(
    c: &mut dyn Conn,
    alert_id: &str,
    operator: &str,
    now: Timestamp,
) -> Result<Option<bool>, StoreError> {
    let exists = count(
        c,
        "SELECT COUNT(*) FROM alerts WHERE id = $1",
        &[Param::Text(alert_id)],
    )?;
    if exists == 0 {
        return Ok(None);
    }
    let inserted = c.execute(
        "INSERT INTO alert_acks (alert_id, operator, at_us) VALUES ($1, $2, $3)
         ON CONFLICT (alert_id) DO NOTHING",
        &[
            Param::Text(alert_id),
            Param::Text(operator),
            Param::Int(micros(now)),
        ],
    )?;
    Ok(Some(inserted > 0))
}

/// The acknowledgements of these alerts (at most a page of them).
pub(crate) fn acks(c: &mut dyn Conn, alert_ids: &[String]) -> Result<Vec<Row>, StoreError> {
    if alert_ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = alert_ids.len().min(crate::MAX_LIMIT);
    let placeholders: Vec<String> = (1..=ids).map(|i| format!("${i}")).collect();
    let params: Vec<Param<'_>> = alert_ids[..ids].iter().map(|id| Param::Text(id)).collect();
    c.query(
        &format!(
            "SELECT alert_id, operator, at_us FROM alert_acks WHERE alert_id IN ({})",
            placeholders.join(", ")
        ),
        &params,
    )
}

pub(crate) fn ack_from_row(row: &Row) -> Result<Ack, String> {
    Ok(Ack {
        alert_id: cell(row, 0)?.text("alert_id")?.to_owned(),
        operator: cell(row, 1)?.text("operator")?.to_owned(),
        at: cell(row, 2)?.micros("at_us")?,
    })
}

pub(crate) fn record_change(
    c: &mut dyn Conn,
    operator: &str,
    action: &str,
    detail: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO console_history (at_us, operator, action, detail) VALUES ($1, $2, $3, $4)",
        &[
            Param::Int(micros(now)),
            Param::Text(bounded("operator", operator)?),
            Param::Text(bounded("action", action)?),
            Param::Text(bounded("detail", detail)?),
        ],
    )?;
    Ok(())
}

/// History newest first, from before `before_id` when given.
pub(crate) fn changes(
    c: &mut dyn Conn,
    before_id: Option<i64>,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let limit = limit.clamp(1, MAX_CHANGES_LISTED) as i64;
    c.query(
        "SELECT id, at_us, operator, action, detail FROM console_history
         WHERE id < $1 ORDER BY id DESC LIMIT $2",
        &[Param::Int(before_id.unwrap_or(i64::MAX)), Param::Int(limit)],
    )
}

pub(crate) fn change_from_row(row: &Row) -> Result<Change, String> {
    Ok(Change {
        id: cell(row, 0)?.int("id")?,
        at: cell(row, 1)?.micros("at_us")?,
        operator: cell(row, 2)?.text("operator")?.to_owned(),
        action: cell(row, 3)?.text("action")?.to_owned(),
        detail: cell(row, 4)?.text("detail")?.to_owned(),
    })
}

/// Deletes history past [`MAX_CHANGES_KEPT`] rows, the oldest; returns how many.
pub(crate) fn prune_history(c: &mut dyn Conn) -> Result<u64, StoreError> {
    let newest = count(c, "SELECT COALESCE(MAX(id), 0) FROM console_history", &[])?;
    c.execute(
        "DELETE FROM console_history WHERE id <= $1",
        &[Param::Int(newest - MAX_CHANGES_KEPT)],
    )
}

fn count(c: &mut dyn Conn, sql: &str, params: &[Param<'_>]) -> Result<i64, StoreError> {
    let rows = c.query(sql, params)?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|cell| cell.int("count").ok())
        .unwrap_or(0))
}

fn first_text(rows: &[Row], column: &str) -> Result<Option<String>, StoreError> {
    match rows.first() {
        None => Ok(None),
        Some(row) => cell(row, 0)
            .and_then(|c| c.text(column))
            .map(|s| Some(s.to_owned()))
            .map_err(|what| StoreError::Unreadable {
                row: column.into(),
                what,
            }),
    }
}
