//! The tables, and the migrations that bring an older database up to
//! [`SCHEMA_VERSION`].
//!
//! Every integer is a `BIGINT` (SQLite stores any integer in 64 bits; PostgreSQL then
//! infers `i64` for every parameter). Times are microseconds since the epoch, the level
//! its rank (0 informational .. 4 critical, so "at least" is `>=`).

use crate::sql::{Backend, Conn, Dialect, Param};
use crate::{StoreError, SCHEMA_VERSION};

/// `MIGRATIONS[n]` brings schema version n to n + 1. `{identity}` is the dialect's
/// database-assigned primary key.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        rule_id TEXT NOT NULL,
        title TEXT NOT NULL,
        level_rank BIGINT NOT NULL,
        techniques TEXT NOT NULL,
        host_id TEXT NOT NULL,
        hostname TEXT NOT NULL,
        labels TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        event_count BIGINT NOT NULL,
        first_seen_us BIGINT NOT NULL,
        last_seen_us BIGINT NOT NULL,
        created_at_us BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL,
        event TEXT NOT NULL,
        -- The transaction that inserted the row (see backend.rs, fold_into_alert).
        creator TEXT NOT NULL)",
        "CREATE INDEX alerts_by_last_seen ON alerts (last_seen_us)",
        "CREATE INDEX alerts_by_rule ON alerts (rule_id, last_seen_us)",
        "CREATE INDEX alerts_by_host ON alerts (host_id, last_seen_us)",
        // Retention deletes by the server's clock.
        "CREATE INDEX alerts_by_updated ON alerts (updated_at_us)",
        // One row per label, for grouping and filtering by any label on both dialects.
        "CREATE TABLE alert_labels (
        alert_id TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (alert_id, name))",
        "CREATE INDEX alert_labels_by_value ON alert_labels (name, value)",
        // The highest offset counted into each alert per partition: what makes recording
        // idempotent under redelivery.
        "CREATE TABLE alert_positions (
        alert_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        kafka_partition BIGINT NOT NULL,
        kafka_offset BIGINT NOT NULL,
        PRIMARY KEY (alert_id, topic, kafka_partition))",
        "CREATE TABLE suppressions (
        id {identity},
        rule_id TEXT NOT NULL,
        host_id TEXT,
        labels TEXT NOT NULL,
        command_line TEXT,
        comment TEXT NOT NULL,
        created_at_us BIGINT NOT NULL)",
    ],
    &[
        // The daily resource league: each instance writes the leaders among its own
        // hosts; a query takes the best of all of them. Values in thousandths (no floats in
        // the store).
        "CREATE TABLE fleet_top (
        day TEXT NOT NULL,
        figure TEXT NOT NULL,
        host_id TEXT NOT NULL,
        labels TEXT NOT NULL,
        value_milli BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL,
        PRIMARY KEY (day, figure, host_id))",
        "CREATE INDEX fleet_top_by_value ON fleet_top (day, figure, value_milli)",
    ],
    &[
        // Software inventories, content-addressed (see inventory.rs): one row per
        // distinct list, one per host pointing at it, and the parts of lists not yet whole.
        "CREATE TABLE inventories (
        hash TEXT PRIMARY KEY,
        os TEXT NOT NULL,
        kernel TEXT NOT NULL,
        package_count BIGINT NOT NULL,
        packages TEXT NOT NULL,
        created_at_us BIGINT NOT NULL)",
        "CREATE TABLE host_inventories (
        host_id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        hostname TEXT NOT NULL,
        labels TEXT NOT NULL,
        reported_at_us BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL)",
        "CREATE INDEX host_inventories_by_update ON host_inventories (updated_at_us, host_id)",
        "CREATE INDEX host_inventories_by_hash ON host_inventories (hash)",
        "CREATE TABLE inventory_parts (
        host_id TEXT NOT NULL,
        hash TEXT NOT NULL,
        part BIGINT NOT NULL,
        parts BIGINT NOT NULL,
        items TEXT NOT NULL,
        received_at_us BIGINT NOT NULL,
        PRIMARY KEY (host_id, hash, part))",
    ],
    &[
        // The web console: operators (password hashes), sessions (token hashes),
        // acknowledgements, and the history of every change with who made it.
        "CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at_us BIGINT NOT NULL)",
        "CREATE TABLE console_sessions (
        token_hash TEXT PRIMARY KEY,
        operator TEXT NOT NULL,
        created_at_us BIGINT NOT NULL,
        expires_at_us BIGINT NOT NULL)",
        "CREATE INDEX console_sessions_by_operator ON console_sessions (operator, created_at_us)",
        "CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at_us)",
        // One-time login links, apart from sessions: a link is never a session, and
        // making links never ends an operator's sessions.
        "CREATE TABLE console_links (
        token_hash TEXT PRIMARY KEY,
        operator TEXT NOT NULL,
        expires_at_us BIGINT NOT NULL)",
        "CREATE TABLE alert_acks (
        alert_id TEXT PRIMARY KEY,
        operator TEXT NOT NULL,
        at_us BIGINT NOT NULL)",
        // The console's overview counts a day's alerts by level, and the queue's rarer
        // filters walk alerts newest first testing their level: both from the index alone.
        "CREATE INDEX alerts_by_time_level ON alerts (last_seen_us, level_rank, event_count)",
        "CREATE TABLE console_history (
        id {identity},
        at_us BIGINT NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL)",
    ],
];

/// Creates the schema or migrates it to [`SCHEMA_VERSION`], in one transaction; refuses a
/// newer one. Safe when several servers start at once.
pub(crate) fn migrate<B: Backend>(backend: &mut B) -> Result<(), StoreError> {
    backend.write(&mut |c: &mut dyn Conn| {
        if let Some(lock) = B::DIALECT.migration_lock() {
            c.execute(lock, &[])?;
        }
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
            &[],
        )?;
        let found = current_version(c)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        let done = usize::try_from(found).unwrap_or_default();
        for steps in MIGRATIONS.iter().skip(done) {
            for step in *steps {
                c.execute(&ddl(B::DIALECT, step), &[])?;
            }
        }
        if found < SCHEMA_VERSION {
            c.execute("DELETE FROM schema_version", &[])?;
            c.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[Param::Int(SCHEMA_VERSION)],
            )?;
        }
        Ok(())
    })
}

fn current_version(c: &mut dyn Conn) -> Result<i64, StoreError> {
    let rows = c.query("SELECT MAX(version) FROM schema_version", &[])?;
    match rows.first().and_then(|r| r.first()) {
        None | Some(crate::sql::Cell::Null) => Ok(0),
        Some(cell) => cell
            .int("schema_version.version")
            .map_err(|what| StoreError::Unreadable {
                row: "schema_version".into(),
                what,
            }),
    }
}

fn ddl(dialect: Dialect, step: &str) -> String {
    step.replace("{identity}", dialect.identity_column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_migration_per_version() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
        assert!(!ddl(Dialect::Postgres, MIGRATIONS[0][7]).contains('{'));
        assert!(MIGRATIONS[1][0].contains("fleet_top"));
        assert!(MIGRATIONS[2][0].contains("inventories"));
        assert!(MIGRATIONS[3][0].contains("operators"));
    }
}
