//! The embedded backend: one SQLite file in WAL mode.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::sql::{describe, Backend, Cell, Conn, Dialect, Param, Row};
use crate::StoreError;

/// How long a writer waits for another handle's write transaction to finish. Record
/// transactions take milliseconds; a reader never blocks a writer in WAL mode.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per handle: the record path uses five, queries vary.
const STATEMENT_CACHE: usize = 64;

pub(crate) struct Sqlite {
    conn: Connection,
    db: String,
}

impl Sqlite {
    /// Opens (creating if needed) the file and its directory, in WAL mode.
    pub(crate) fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let path_error = |what: String| StoreError::Path {
            path: path.to_owned(),
            what,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                path_error(format!(
                    "cannot create its directory {}: {e}; check [store] path",
                    dir.display()
                ))
            })?;
        }
        if path.is_dir() {
            return Err(path_error(
                "is a directory; [store] path names the database file".into(),
            ));
        }
        let db = format!("SQLite {}", path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| {
            path_error(format!(
                "cannot open it: {e}; check that the path is writable"
            ))
        })?;
        let store = Sqlite { conn, db };
        store.configure().map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => path_error(
                "is not an SQLite database, or is damaged: move it away to start afresh, or restore a backup"
                    .into(),
            ),
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                path_error(format!("cannot write it: {e}; check its permissions and free space"))
            }
            _ => path_error(format!("cannot use it: {e}")),
        })?;
        Ok(store)
    }

    fn configure(&self) -> Result<(), rusqlite::Error> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: the HTTP API's reads never wait for the consumer's writes, and a commit is
        // one append. The first statement is also the one that finds a file that is not
        // a database.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidQuery);
        }
        // FULL: a commit is on disk before record() returns, because the server then
        // commits the Kafka offsets and would never see those events again.
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn
            .set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(())
    }
}

impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn write<T>(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = &self.db;
        let sqlite_error = |context: &str, source| StoreError::Sqlite {
            db: db.clone(),
            context: context.into(),
            source,
        };
        // IMMEDIATE takes the write lock up front, where the busy timeout applies; a
        // deferred transaction that reads first and then writes fails at once with
        // SQLITE_BUSY when another handle wrote in between.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_error("starting a write transaction", e))?;
        let value = work(&mut SqliteConn { conn: &tx, db })?;
        tx.commit().map_err(|e| sqlite_error("committing", e))?;
        Ok(value)
    }

    fn read<T>(
        &mut self,
        work: &mut dyn FnMut(&mut dyn Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        work(&mut SqliteConn {
            conn: &self.conn,
            db: &self.db,
        })
    }
}

struct SqliteConn<'a> {
    conn: &'a Connection,
    db: &'a str,
}

impl SqliteConn<'_> {
    fn error(&self, sql: &str, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            db: self.db.to_owned(),
            context: describe(sql),
            source,
        }
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Int(v) => ValueRef::Integer(*v),
            Param::Text(s) | Param::OptText(Some(s)) => ValueRef::Text(s.as_bytes()),
            Param::OptText(None) => ValueRef::Null,
        }))
    }
}

impl Conn for SqliteConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let run = || -> rusqlite::Result<usize> {
            let mut stmt = self.conn.prepare_cached(&Dialect::Sqlite.statement(sql))?;
            stmt.execute(rusqlite::params_from_iter(params))
        };
        run().map(|n| n as u64).map_err(|e| self.error(sql, e))
    }

    fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let run = || -> rusqlite::Result<Vec<Row>> {
            let mut stmt = self.conn.prepare_cached(&Dialect::Sqlite.statement(sql))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut cells = Vec::with_capacity(columns);
                for i in 0..columns {
                    cells.push(match row.get_ref(i)? {
                        ValueRef::Integer(v) => Cell::Int(v),
                        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Null => Cell::Null,
                        ValueRef::Real(_) => Cell::Other("a float"),
                        ValueRef::Blob(_) => Cell::Other("a blob"),
                    });
                }
                out.push(cells);
            }
            Ok(out)
        };
        run().map_err(|e| self.error(sql, e))
    }
}
