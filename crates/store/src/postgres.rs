//! The shared backend: a PostgreSQL database that several server instances use at once.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};

use crate::sql::{describe, Backend, Cell, Conn, Dialect, Param, Row};
use crate::StoreError;

/// Prepared statements kept per connection; past this the cache starts afresh (query
/// filters make a few dozen shapes at most).
const STATEMENT_CACHE: usize = 256;
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const STATEMENT_TIMEOUT_OPTION: &str = "-c statement_timeout=60000";
/// Tries of a write transaction that a concurrent one aborted.
const WRITE_TRIES: usize = 4;

pub(crate) struct Postgres {
    client: Client,
    url: String,
    db: String,
    statements: HashMap<String, Statement>,
}

impl Postgres {
    pub(crate) fn connect(url: &str) -> Result<Postgres, StoreError> {
        let db = format!("PostgreSQL {}", redact(url));
        let failed = |source| {
            StoreError::Postgres {
            db: db.clone(),
            context: "connecting (check [store] url, that PostgreSQL runs, and that it accepts this user)".into(),
            source,
        }
        };
        let mut config: postgres::Config = url.parse().map_err(failed)?;
        // A database that stops answering must fail the call (the consumer retries and
        // counts it), never hang it: bounded connect, keepalives on the socket, and a
        // statement timeout unless the URL sets its own options.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A silent network (no RST) is noticed in about a minute, not the kernel's
        // eleven: probes every 10 s after 30 s idle, 3 misses, and a cap on unacked data.
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(std::time::Duration::from_secs(60));
        let options = match config.get_options() {
            Some(own) if own.contains("statement_timeout") => own.to_owned(),
            Some(own) => format!("{own} {STATEMENT_TIMEOUT_OPTION}"),
            None => STATEMENT_TIMEOUT_OPTION.to_owned(),
        };
        config.options(&options);
        let client = config.connect(NoTls).map_err(failed)?;
        Ok(Postgres {
            client,
            url: url.to_owned(),
            db,
            statements: HashMap::new(),
        })
    }

    /// After the server restarted or the connection broke, the next call reconnects
    /// instead of failing forever.
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            *self = Postgres::connect(&self.url)?;
        }
        Ok(())
    }
}

/// The URL without its user and password, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => {
            let rest = rest.split(['/', '?']).next().unwrap_or_default();
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let name = url
                .split_once("://")
                .and_then(|(_, r)| r.split_once('/'))
                .map(|(_, path)| path.split('?').next().unwrap_or_default())
                .unwrap_or_default();
            format!("{host}/{name}")
        }
        None => "(connection string)".into(),
    }
}

fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres { source, .. }
        if matches!(source.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE))
}

impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;

    fn write<T>(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.ensure_connected()?;
            let Postgres {
                client,
                db,
                statements,
                ..
            } = self;
            let error = |context: &str, source| StoreError::Postgres {
                db: db.clone(),
                context: context.into(),
                source,
            };
            let mut tx = client
                .transaction()
                .map_err(|e| error("starting a transaction", e))?;
            let result = work(&mut PgConn {
                client: &mut tx,
                db,
                statements,
            });
            match result {
                Ok(value) => {
                    tx.commit().map_err(|e| error("committing", e))?;
                    return Ok(value);
                }
                // Dropping the transaction rolls it back.
                Err(e) if retryable(&e) && tries < WRITE_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn read<T>(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.ensure_connected()?;
        work(&mut PgConn {
            client: &mut self.client,
            db: &self.db,
            statements: &mut self.statements,
        })
    }
}

struct PgConn<'a, C> {
    client: &'a mut C,
    db: &'a str,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> PgConn<'_, C> {
    fn error(&self, sql: &str, source: postgres::Error) -> StoreError {
        StoreError::Postgres {
            db: self.db.to_owned(),
            context: describe(sql),
            source,
        }
    }

    /// Prepared once per connection: a statement is then one round trip, not two.
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        let stmt = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

fn sql_params<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &(dyn ToSql + Sync) {
            match p {
                Param::Int(v) => v,
                Param::Text(s) => s,
                Param::OptText(s) => s,
            }
        })
        .collect()
}

fn cells(row: &postgres::Row) -> Result<Row, postgres::Error> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let cell = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Cell::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Cell::Int(v.into()))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Cell::Text)
        } else {
            Some(Cell::Other("a type the store does not write"))
        };
        out.push(cell.unwrap_or(Cell::Null));
    }
    Ok(out)
}

impl<C: GenericClient> Conn for PgConn<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let run = |this: &mut Self| {
            let stmt = this.statement(sql)?;
            this.client.execute(&stmt, &sql_params(params))
        };
        run(self).map_err(|e| self.error(sql, e))
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let run = |this: &mut Self| {
            let stmt = this.statement(sql)?;
            let rows = this.client.query(&stmt, &sql_params(params))?;
            rows.iter().map(cells).collect::<Result<Vec<_>, _>>()
        };
        run(self).map_err(|e| self.error(sql, e))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn messages_name_the_database_without_credentials() {
        assert_eq!(
            redact("postgresql://hids:secret@db.example:5432/alerts?sslmode=disable"),
            "db.example:5432/alerts"
        );
        assert_eq!(redact("postgres://127.0.0.1:5/x"), "127.0.0.1:5/x");
        assert_eq!(
            redact("host=/tmp user=postgres password=x"),
            "(connection string)"
        );
    }
}
