//! The store's logic, written once over [`Backend`]: recording hits, queries,
//! suppressions, retention.

use std::collections::BTreeMap;

use hids_types::alert::{Alert, GroupBy, Level, SummaryRow, Suppression};
use hids_types::fleet::{TopFigure, TopHost};
use hids_types::Timestamp;

use crate::console::{self, Ack, Change};
use crate::league;
use crate::sql::{cell, Backend, Conn, Param, Row, SqlBuilder};
use crate::{
    alert_id, schema, AlertQuery, Hit, Recorded, Store, StoreError, MAX_EVIDENCE_BYTES,
    MAX_LABEL_FILTERS, MAX_SUPPRESSIONS,
};

pub(crate) struct SqlStore<B> {
    backend: B,
    unreadable_rows: u64,
    dropped_evidence: u64,
    /// Random per handle, with `calls`: see [`transaction_token`].
    seed: u64,
    calls: u64,
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn new(mut backend: B) -> Result<Self, StoreError> {
        schema::migrate(&mut backend)?;
        Ok(SqlStore {
            backend,
            unreadable_rows: 0,
            dropped_evidence: 0,
            // std's hasher keys come from the OS's random source: no rand crate needed.
            seed: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0u8,
            ),
            calls: 0,
        })
    }
}

/// Microseconds since the epoch, as stored.
fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A hit with what the database needs computed once, outside the transaction.
struct Prepared<'h> {
    hit: &'h Hit,
    alert_id: String,
    techniques: String,
    labels: String,
    event: std::borrow::Cow<'h, str>,
    count: i64,
    event_us: i64,
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("cannot encode: {e}")))
}

/// The evidence as stored: the event as received when it is JSON and not too big,
/// otherwise a note of why it was dropped.
fn evidence(event: &str) -> Result<&str, String> {
    if event.len() > MAX_EVIDENCE_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_EVIDENCE_BYTES}-byte limit",
            event.len()
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(event)
        .map(|_| event)
        .map_err(|e| format!("not JSON: {e}"))
}

impl<B: Backend> SqlStore<B> {
    fn prepare<'h>(&mut self, hit: &'h Hit) -> Result<Prepared<'h>, StoreError> {
        let event = match evidence(&hit.event) {
            Ok(event) => event.into(),
            Err(reason) => {
                self.dropped_evidence += 1;
                json_text(&serde_json::json!({
                    "hids_evidence_dropped": {"reason": reason, "bytes": hit.event.len()}
                }))?
                .into()
            }
        };
        Ok(Prepared {
            hit,
            alert_id: alert_id(&hit.rule_id, &hit.host_id, hit.window_start),
            techniques: json_text(&hit.techniques)?,
            labels: json_text(&hit.labels)?,
            event,
            count: i64::try_from(hit.count).unwrap_or(i64::MAX),
            event_us: micros(hit.event_time),
        })
    }
}

/// Whether a hit's position is above the highest counted for its alert on its partition,
/// raising that mark if so: one conditional upsert, atomic against a concurrent instance
/// (which waits for this row, then sees it).
fn advance_position(c: &mut dyn Conn, p: &Prepared<'_>) -> Result<bool, StoreError> {
    let at = &p.hit.position;
    let advanced = c.query(
        "INSERT INTO alert_positions (alert_id, topic, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (alert_id, topic, kafka_partition) DO UPDATE
         SET kafka_offset = excluded.kafka_offset
         WHERE alert_positions.kafka_offset < excluded.kafka_offset
         RETURNING kafka_offset",
        &[
            Param::Text(&p.alert_id),
            Param::Text(&at.topic),
            Param::Int(at.partition.into()),
            Param::Int(at.offset),
        ],
    )?;
    Ok(!advanced.is_empty())
}

/// Counts a hit into its alert, creating the alert on its first hit, in one upsert;
/// returns whether the row was inserted by this transaction. The insert writes
/// `creator = token` and the update leaves `creator` alone, so the token coming back means
/// this transaction created the row (the caller tells its own later hits apart). One
/// statement instead of insert-or-nothing then update: a round trip less per hit.
fn fold_into_alert(
    c: &mut dyn Conn,
    p: &Prepared<'_>,
    now_us: i64,
    token: &str,
) -> Result<bool, StoreError> {
    let hit = p.hit;
    let id = p.alert_id.as_str();
    // Saturating: a count never wraps, whatever the hits claim.
    let returned = c.query(
        "INSERT INTO alerts (id, rule_id, title, level_rank, techniques, host_id, hostname,
             labels, window_start, event_count, first_seen_us, last_seen_us, created_at_us,
             updated_at_us, event, creator)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET
             event_count = CASE
                 WHEN alerts.event_count <= 9223372036854775807 - excluded.event_count
                 THEN alerts.event_count + excluded.event_count
                 ELSE 9223372036854775807 END,
             first_seen_us = CASE WHEN alerts.first_seen_us > excluded.first_seen_us
                 THEN excluded.first_seen_us ELSE alerts.first_seen_us END,
             last_seen_us = CASE WHEN alerts.last_seen_us < excluded.last_seen_us
                 THEN excluded.last_seen_us ELSE alerts.last_seen_us END,
             updated_at_us = CASE WHEN alerts.updated_at_us < excluded.updated_at_us
                 THEN excluded.updated_at_us ELSE alerts.updated_at_us END
         RETURNING creator",
        &[
            Param::Text(id),
            Param::Text(&hit.rule_id),
            Param::Text(&hit.title),
            Param::Int(hit.level.rank().into()),
            Param::Text(&p.techniques),
            Param::Text(&hit.host_id),
            Param::Text(&hit.hostname),
            Param::Text(&p.labels),
            Param::Int(hit.window_start),
            Param::Int(p.count),
            Param::Int(p.event_us),
            Param::Int(now_us),
            Param::Text(&p.event),
            Param::Text(token),
        ],
    )?;
    let created = returned
        .first()
        .and_then(|row| row.first())
        .is_some_and(|creator| *creator == crate::sql::Cell::Text(token.to_owned()));
    Ok(created)
}

fn insert_labels(c: &mut dyn Conn, p: &Prepared<'_>) -> Result<(), StoreError> {
    for (name, value) in &p.hit.labels {
        c.execute(
            "INSERT INTO alert_labels (alert_id, name, value) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[
                Param::Text(&p.alert_id),
                Param::Text(name),
                Param::Text(value),
            ],
        )?;
    }
    Ok(())
}

/// A token no other transaction of any instance uses: this handle's random seed and a
/// count of its calls.
fn transaction_token(seed: u64, call: u64) -> String {
    format!("{seed:016x}-{call}")
}

const ALERT_COLUMNS: &str = "a.id, a.rule_id, a.title, a.level_rank, a.techniques, a.host_id,
    a.hostname, a.labels, a.event_count, a.first_seen_us, a.last_seen_us, a.created_at_us,
    a.updated_at_us, a.event";

fn level(rank: i64, column: &str) -> Result<Level, String> {
    u8::try_from(rank)
        .ok()
        .and_then(Level::from_rank)
        .ok_or_else(|| format!("{column}: {rank} is not a level rank (0-4)"))
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row,
    i: usize,
    column: &str,
) -> Result<T, String> {
    serde_json::from_str(cell(row, i)?.text(column)?).map_err(|e| format!("{column}: {e}"))
}

/// An alert row as selected by [`ALERT_COLUMNS`]; the error says which column is wrong.
fn alert_from_row(row: &Row) -> Result<Alert, String> {
    let int = |i: usize, column: &str| cell(row, i)?.int(column);
    let text = |i: usize, column: &str| cell(row, i)?.text(column).map(str::to_owned);
    let time = |i: usize, column: &str| cell(row, i)?.micros(column);
    Ok(Alert {
        id: text(0, "id")?,
        rule_id: text(1, "rule_id")?,
        title: text(2, "title")?,
        level: level(int(3, "level_rank")?, "level_rank")?,
        techniques: json_column(row, 4, "techniques")?,
        host_id: text(5, "host_id")?,
        hostname: text(6, "hostname")?,
        labels: json_column(row, 7, "labels")?,
        count: u64::try_from(int(8, "event_count")?).map_err(|e| format!("event_count: {e}"))?,
        first_seen: time(9, "first_seen_us")?,
        last_seen: time(10, "last_seen_us")?,
        created_at: time(11, "created_at_us")?,
        updated_at: time(12, "updated_at_us")?,
        event: json_column(row, 13, "event")?,
    })
}

/// A name for a row in an error: its first column when it is text.
fn row_name(table: &str, row: &Row) -> String {
    match row.first() {
        Some(crate::sql::Cell::Text(id)) => format!("{table} {id}"),
        Some(crate::sql::Cell::Int(id)) => format!("{table} {id}"),
        _ => table.to_owned(),
    }
}

/// `WHERE ...` for an alert query over `alerts a`, its parameters added to `b`.
fn where_clause<'q>(b: &mut SqlBuilder<'q>, q: &'q AlertQuery) -> Result<(), StoreError> {
    if q.labels.len() > MAX_LABEL_FILTERS {
        return Err(StoreError::Invalid(format!(
            "{} label filters, at most {MAX_LABEL_FILTERS}: narrow the query",
            q.labels.len()
        )));
    }
    let mut terms = Vec::new();
    if let Some(l) = q.min_level {
        terms.push(format!(
            "a.level_rank >= {}",
            b.bind(Param::Int(l.rank().into()))
        ));
    }
    if let Some(l) = q.level {
        terms.push(format!(
            "a.level_rank = {}",
            b.bind(Param::Int(l.rank().into()))
        ));
    }
    if let Some(r) = &q.rule_id {
        terms.push(format!("a.rule_id = {}", b.bind(Param::Text(r))));
    }
    if let Some(h) = &q.host_id {
        terms.push(format!("a.host_id = {}", b.bind(Param::Text(h))));
    }
    for (name, value) in &q.labels {
        let (n, v) = (b.bind(Param::Text(name)), b.bind(Param::Text(value)));
        terms.push(format!(
            "EXISTS (SELECT 1 FROM alert_labels f WHERE f.alert_id = a.id AND f.name = {n} AND f.value = {v})"
        ));
    }
    if let Some(t) = q.since {
        terms.push(format!(
            "a.last_seen_us >= {}",
            b.bind(Param::Int(micros(t)))
        ));
    }
    if let Some(t) = q.until {
        terms.push(format!(
            "a.first_seen_us <= {}",
            b.bind(Param::Int(micros(t)))
        ));
    }
    if !terms.is_empty() {
        b.sql.push_str(" WHERE ");
        b.sql.push_str(&terms.join(" AND "));
    }
    Ok(())
}

fn limit_param(q: &AlertQuery) -> Param<'static> {
    Param::Int(i64::try_from(q.effective_limit()).unwrap_or(i64::MAX))
}

fn summary_sql<'q>(by: &'q GroupBy, q: &'q AlertQuery) -> Result<SqlBuilder<'q>, StoreError> {
    let mut b = SqlBuilder::default();
    let key = match by {
        GroupBy::RuleId => "a.rule_id",
        GroupBy::Level => "a.level_rank",
        GroupBy::HostId => "a.host_id",
        GroupBy::Label(_) => "l.value",
    };
    b.sql = format!("SELECT {key}, COUNT(*), CAST(SUM(a.event_count) AS BIGINT) FROM alerts a");
    if let GroupBy::Label(name) = by {
        let name = b.bind(Param::Text(name));
        b.sql.push_str(&format!(
            " LEFT JOIN alert_labels l ON l.alert_id = a.id AND l.name = {name}"
        ));
    }
    where_clause(&mut b, q)?;
    let limit = b.bind(limit_param(q));
    // `key IS NULL` puts the unlabelled group last among equals on both dialects (they
    // sort NULL at opposite ends).
    b.sql.push_str(&format!(
        " GROUP BY {key} ORDER BY COUNT(*) DESC, SUM(a.event_count) DESC, {key} IS NULL, {key} LIMIT {limit}"
    ));
    Ok(b)
}

fn summary_row(by: &GroupBy, row: &Row) -> Result<SummaryRow, String> {
    let key = match (by, cell(row, 0)?) {
        (_, crate::sql::Cell::Null) => None,
        (GroupBy::Level, c) => Some(
            level(c.int("level_rank")?, "level_rank")?
                .as_str()
                .to_owned(),
        ),
        (_, c) => Some(c.text("key")?.to_owned()),
    };
    let count = |i: usize, column: &str| {
        let n = cell(row, i)?.int(column)?;
        u64::try_from(n).map_err(|e| format!("{column}: {e}"))
    };
    Ok(SummaryRow {
        key,
        count: count(1, "alerts")?,
        events: count(2, "events")?,
    })
}

fn suppression_from_row(row: &Row) -> Result<Suppression, String> {
    let text = |i: usize, column: &str| cell(row, i)?.text(column).map(str::to_owned);
    let opt_text = |i: usize, column: &str| {
        Ok::<_, String>(cell(row, i)?.opt_text(column)?.map(str::to_owned))
    };
    Ok(Suppression {
        id: cell(row, 0)?.int("id")?,
        rule_id: text(1, "rule_id")?,
        host_id: opt_text(2, "host_id")?,
        labels: json_column::<BTreeMap<String, String>>(row, 3, "labels")?,
        command_line: opt_text(4, "command_line")?,
        comment: text(5, "comment")?,
        created_at: Some(cell(row, 6)?.micros("created_at_us")?),
    })
}

impl<B: Backend> SqlStore<B> {
    /// Parses each row; rows that no longer parse are skipped and counted.
    fn parse_rows<T>(&mut self, rows: &[Row], parse: impl Fn(&Row) -> Result<T, String>) -> Vec<T> {
        rows.iter()
            .filter_map(|row| match parse(row) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.unreadable_rows += 1;
                    None
                }
            })
            .collect()
    }

    fn query(&mut self, b: &SqlBuilder<'_>) -> Result<Vec<Row>, StoreError> {
        self.backend
            .read(&mut |c: &mut dyn Conn| c.query(&b.sql, &b.params))
    }
}

impl<B: Backend> Store for SqlStore<B> {
    fn record(&mut self, hits: &[Hit], now: Timestamp) -> Result<Vec<Recorded>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = hits
            .iter()
            .map(|h| self.prepare(h))
            .collect::<Result<Vec<_>, _>>()?;
        // One order for every instance: (alert, topic, partition, offset), offsets
        // ascending so a batch counts each of its events once.
        let mut order: Vec<usize> = (0..hits.len()).collect();
        order.sort_by_key(|&i| {
            let p = &prepared[i];
            let at = &p.hit.position;
            (&p.alert_id, &at.topic, at.partition, at.offset)
        });
        let now_us = micros(now);
        self.calls += 1;
        let token = transaction_token(self.seed, self.calls);
        self.backend.write(&mut |c: &mut dyn Conn| {
            let mut out: Vec<Recorded> = prepared
                .iter()
                .map(|p| Recorded {
                    alert_id: p.alert_id.clone(),
                    created: false,
                    counted: false,
                })
                .collect();
            // Every position row first, then every alert row, each in that order: two
            // instances' transactions then take their row locks in one global order and
            // cannot deadlock (PostgreSQL; SQLite has one writer at a time anyway).
            for &i in &order {
                out[i].counted = advance_position(c, &prepared[i])?;
            }
            let mut folded = std::collections::HashSet::new();
            for &i in &order {
                if out[i].counted {
                    let p = &prepared[i];
                    let first_in_batch = folded.insert(p.alert_id.as_str());
                    out[i].created = fold_into_alert(c, p, now_us, &token)? && first_in_batch;
                    if out[i].created {
                        insert_labels(c, p)?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn alerts(&mut self, q: &AlertQuery) -> Result<Vec<Alert>, StoreError> {
        let mut b = SqlBuilder {
            sql: format!("SELECT {ALERT_COLUMNS} FROM alerts a"),
            params: Vec::new(),
        };
        where_clause(&mut b, q)?;
        let limit = b.bind(limit_param(q));
        b.sql.push_str(&format!(
            " ORDER BY a.last_seen_us DESC, a.id LIMIT {limit}"
        ));
        let rows = self.query(&b)?;
        Ok(self.parse_rows(&rows, alert_from_row))
    }

    fn alert(&mut self, id: &str) -> Result<Option<Alert>, StoreError> {
        let mut b = SqlBuilder {
            sql: format!("SELECT {ALERT_COLUMNS} FROM alerts a WHERE a.id = "),
            params: Vec::new(),
        };
        let p = b.bind(Param::Text(id));
        b.sql.push_str(&p);
        let rows = self.query(&b)?;
        rows.first()
            .map(|row| {
                alert_from_row(row).map_err(|what| StoreError::Unreadable {
                    row: row_name("alert", row),
                    what,
                })
            })
            .transpose()
    }

    fn summary(&mut self, by: &GroupBy, q: &AlertQuery) -> Result<Vec<SummaryRow>, StoreError> {
        let b = summary_sql(by, q)?;
        let rows = self.query(&b)?;
        Ok(self.parse_rows(&rows, |row| summary_row(by, row)))
    }

    fn add_suppression(
        &mut self,
        s: &Suppression,
        now: Timestamp,
    ) -> Result<Suppression, StoreError> {
        if s.rule_id.trim().is_empty() {
            return Err(StoreError::Invalid("a suppression needs a rule_id".into()));
        }
        let labels = json_text(&s.labels)?;
        let created_us = micros(now);
        let id = self.backend.write(&mut |c: &mut dyn Conn| {
            let stored = c.query("SELECT COUNT(*) FROM suppressions", &[])?;
            let stored = stored.first().and_then(|r| r.first()).and_then(|c| c.int("count").ok()).unwrap_or(0);
            if usize::try_from(stored).unwrap_or(usize::MAX) >= MAX_SUPPRESSIONS {
                return Err(StoreError::Invalid(format!(
                    "{stored} suppressions stored, the most kept: remove some first"
                )));
            }
            let rows = c.query(
                "INSERT INTO suppressions (rule_id, host_id, labels, command_line, comment, created_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    Param::Text(&s.rule_id),
                    Param::OptText(s.host_id.as_deref()),
                    Param::Text(&labels),
                    Param::OptText(s.command_line.as_deref()),
                    Param::Text(&s.comment),
                    Param::Int(created_us),
                ],
            )?;
            rows.first()
                .and_then(|r| r.first())
                .and_then(|c| c.int("id").ok())
                .ok_or_else(|| StoreError::Unreadable {
                    row: "suppressions".into(),
                    what: "the new row's id did not come back".into(),
                })
        })?;
        Ok(Suppression {
            id,
            created_at: Some(now),
            ..s.clone()
        })
    }

    fn suppressions(&mut self) -> Result<Vec<Suppression>, StoreError> {
        let b = SqlBuilder {
            sql: "SELECT id, rule_id, host_id, labels, command_line, comment, created_at_us
                  FROM suppressions ORDER BY id LIMIT $1"
                .into(),
            params: vec![Param::Int(
                i64::try_from(MAX_SUPPRESSIONS).unwrap_or(i64::MAX),
            )],
        };
        let rows = self.query(&b)?;
        Ok(self.parse_rows(&rows, suppression_from_row))
    }

    fn remove_suppression(&mut self, id: i64) -> Result<bool, StoreError> {
        let removed = self.backend.write(&mut |c: &mut dyn Conn| {
            c.execute("DELETE FROM suppressions WHERE id = $1", &[Param::Int(id)])
        })?;
        Ok(removed > 0)
    }

    fn prune(&mut self, updated_before: Timestamp) -> Result<u64, StoreError> {
        let cutoff = micros(updated_before);
        self.backend.write(&mut |c: &mut dyn Conn| {
            let pruned = c.execute(
                "DELETE FROM alerts WHERE updated_at_us < $1",
                &[Param::Int(cutoff)],
            )?;
            // Orphans, rather than the pruned ids: an alert that a concurrent record moved
            // past the cutoff is kept whole.
            for table in ["alert_labels", "alert_positions", "alert_acks"] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM alerts a WHERE a.id = {table}.alert_id)"),
                    &[],
                )?;
            }
            console::prune_history(c)?;
            Ok(pruned)
        })
    }

    fn put_operator(
        &mut self,
        name: &str,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::put_operator(c, name, password_hash, now))
    }

    fn remove_operator(&mut self, name: &str) -> Result<bool, StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::remove_operator(c, name))
    }

    fn operator_password(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        self.backend
            .read(&mut |c: &mut dyn Conn| console::operator_password(c, name))
    }

    fn has_operators(&mut self) -> Result<bool, StoreError> {
        self.backend
            .read(&mut |c: &mut dyn Conn| console::has_operators(c))
    }

    fn operators(&mut self) -> Result<Vec<(String, Timestamp)>, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| console::operators(c))?;
        Ok(self.parse_rows(&rows, console::operator_from_row))
    }

    fn start_session(
        &mut self,
        token_hash: &str,
        operator: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), StoreError> {
        self.backend.write(&mut |c: &mut dyn Conn| {
            console::start_session(c, token_hash, operator, now, expires)
        })
    }

    fn session(&mut self, token_hash: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        self.backend
            .read(&mut |c: &mut dyn Conn| console::session(c, token_hash, now))
    }

    fn end_session(&mut self, token_hash: &str) -> Result<(), StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::end_session(c, token_hash))
    }

    fn create_login_link(
        &mut self,
        token_hash: &str,
        operator: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), StoreError> {
        self.backend.write(&mut |c: &mut dyn Conn| {
            console::create_login_link(c, token_hash, operator, now, expires)
        })
    }

    fn take_login_link(
        &mut self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::take_login_link(c, token_hash, now))
    }

    fn acknowledge(
        &mut self,
        alert_id: &str,
        operator: &str,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::acknowledge(c, alert_id, operator, now))
    }

    fn acks(&mut self, alert_ids: &[String]) -> Result<Vec<Ack>, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| console::acks(c, alert_ids))?;
        Ok(self.parse_rows(&rows, console::ack_from_row))
    }

    fn record_change(
        &mut self,
        operator: &str,
        action: &str,
        detail: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| console::record_change(c, operator, action, detail, now))
    }

    fn changes(&mut self, before_id: Option<i64>, limit: usize) -> Result<Vec<Change>, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| console::changes(c, before_id, limit))?;
        Ok(self.parse_rows(&rows, console::change_from_row))
    }

    fn put_top(
        &mut self,
        day: &str,
        figure: TopFigure,
        rows: &[TopHost],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.backend
            .write(&mut |c: &mut dyn Conn| league::put(c, day, figure, rows, now))
    }

    fn top(
        &mut self,
        day: &str,
        figure: TopFigure,
        limit: usize,
    ) -> Result<Vec<TopHost>, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| league::query(c, day, figure, limit))?;
        Ok(self.parse_rows(&rows, league::from_row))
    }

    fn prune_top(&mut self, before_day: &str) -> Result<u64, StoreError> {
        self.backend.write(&mut |c: &mut dyn Conn| {
            c.execute(
                "DELETE FROM fleet_top WHERE day < $1",
                &[Param::Text(before_day)],
            )
        })
    }

    fn record_inventories(
        &mut self,
        reports: &[crate::InventoryReport],
        now: Timestamp,
    ) -> Result<Vec<crate::InventoryOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        self.backend.write(&mut |c: &mut dyn Conn| {
            reports
                .iter()
                .map(|r| crate::inventory::record(c, r, now))
                .collect()
        })
    }

    fn inventory_hosts(
        &mut self,
        since: Timestamp,
        after: &str,
        limit: usize,
    ) -> Result<crate::HostPage, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| crate::inventory::hosts(c, since, after, limit))?;
        Ok(crate::HostPage {
            read: rows.len(),
            last: rows.last().and_then(crate::inventory::cursor_of),
            rows: self.parse_rows(&rows, crate::inventory::host_from_row),
        })
    }

    fn inventory(&mut self, hash: &str) -> Result<Option<crate::StoredInventory>, StoreError> {
        let rows = self
            .backend
            .read(&mut |c: &mut dyn Conn| crate::inventory::inventory(c, hash))?;
        Ok(self
            .parse_rows(&rows, crate::inventory::inventory_from_row)
            .into_iter()
            .next())
    }

    fn prune_inventories(&mut self, parts_before: Timestamp) -> Result<u64, StoreError> {
        let cutoff = i64::try_from(parts_before.unix_nanos() / 1_000).unwrap_or(i64::MAX);
        self.backend.write(&mut |c: &mut dyn Conn| {
            let parts = c.execute(
                "DELETE FROM inventory_parts WHERE received_at_us < $1",
                &[Param::Int(cutoff)],
            )?;
            let lists = c.execute(
                "DELETE FROM inventories WHERE NOT EXISTS
                 (SELECT 1 FROM host_inventories h WHERE h.hash = inventories.hash)",
                &[],
            )?;
            Ok(parts + lists)
        })
    }

    fn unreadable_rows(&self) -> u64 {
        self.unreadable_rows
    }

    fn dropped_evidence(&self) -> u64 {
        self.dropped_evidence
    }
}
