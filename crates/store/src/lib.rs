//! Where `hids-server` keeps its alerts and the operators' suppressions: one synchronous
//! interface ([`Store`]) over two backends, chosen by [`StoreConfig`]:
//!
//! - **SQLite** (default): one file, WAL mode, no server to run; for a single instance.
//!   Several handles on the same file work at once (the server's consumer and its HTTP
//!   API): readers never block the writer, writers queue behind a busy timeout.
//! - **PostgreSQL**: a shared database, for several server instances at once.
//!
//! Both run the same SQL (see `sql.rs` for the few places where the dialects differ).
//!
//! Recording is idempotent under Kafka redelivery, also when two instances record the same
//! alert at once (both may hold a host's partition during a rebalance): per alert and
//! (topic, partition) the store keeps the highest offset it counted, and an event at or
//! below it is not counted again. This is done with conditional upserts, never with a
//! read-then-write, so it holds across processes and machines.
//!
//! Deliberately not here: detection, suppression matching (see
//! [`Suppression::covers`]), delivery to Kafka or webhooks, and connection pooling (the
//! server opens one handle per thread that needs one).
//!
//! Labels are kept twice: as a JSON object in the alert row (returned as it was) and as
//! one `alert_labels (alert_id, name, value)` row per label, which grouping and filtering
//! use. Plain rows work the same in both dialects and are indexed by (name, value);
//! SQLite's JSON1 and PostgreSQL's `jsonb` differ in syntax and in how they index.

mod backend;
mod console;
pub use console::{
    Ack, Change, MAX_CHANGES_KEPT, MAX_CHANGES_LISTED, MAX_FIELD_BYTES, MAX_LOGIN_LINKS,
    MAX_OPERATORS, MAX_SESSIONS_PER_OPERATOR,
};
mod inventory;
pub use inventory::{
    HostInventory, HostPage, InventoryOutcome, InventoryReport, StoredInventory, MAX_HOST_PAGE,
    MAX_INVENTORY_PACKAGES, MAX_INVENTORY_PARTS, MAX_PENDING_BYTES,
};
mod league;
pub use league::MAX_TOP;
mod postgres;
mod schema;
mod sql;
mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use hids_types::fleet::{TopFigure, TopHost};
use sha2::{Digest, Sha256};

pub use hids_types::alert::{Alert, GroupBy, Level, SummaryRow, Suppression};
pub use hids_types::Timestamp;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 4;
/// [`AlertQuery::limit`] when it is 0.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one query returns, whatever it asks for.
pub const MAX_LIMIT: usize = 10_000;
/// The most label filters one query may carry.
pub const MAX_LABEL_FILTERS: usize = 32;
/// The most suppressions kept: the server checks every hit against all of them.
pub const MAX_SUPPRESSIONS: usize = 10_000;
/// The largest evidence event kept; a bigger one is replaced by a note of its size (and
/// counted in [`Store::dropped_evidence`]).
pub const MAX_EVIDENCE_BYTES: usize = 256 * 1024;

/// Which backend, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The SQLite file (created, with its directory, if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, `postgresql://user@host:port/dbname`.
    Postgres(String),
}

/// Opens the store, creating or migrating its schema.
///
/// Fails when the database cannot be opened or written (the error names the path or URL
/// and says what to check), is not a database, or has a schema newer than this build
/// knows ([`StoreError::SchemaTooNew`]).
pub fn open(cfg: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Sqlite(path) => Ok(Box::new(backend::SqlStore::new(sqlite::Sqlite::open(
            path,
        )?)?)),
        StoreConfig::Postgres(url) => Ok(Box::new(backend::SqlStore::new(
            postgres::Postgres::connect(url)?,
        )?)),
    }
}

/// Where an event was read in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One detection to fold into an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub rule_id: String,
    pub title: String,
    pub level: Level,
    pub techniques: Vec<String>,
    pub host_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds: the start of the server's fixed alert window.
    pub window_start: i64,
    /// The event's `@timestamp` (kept to the microsecond).
    pub event_time: Timestamp,
    /// Events this hit stands for (1, or N for a frequency rule).
    pub count: u64,
    /// The evidence event, raw JSON as received (shared by the hits of one event).
    pub event: std::sync::Arc<str>,
    /// Where the event was read in Kafka.
    pub position: Position,
}

/// The alert id of a rule on a host in a window: the first 32 hex digits of a SHA-256
/// over the three (length-prefixed, so no two triples share an input).
pub fn alert_id(rule_id: &str, host_id: &str, window_start: i64) -> String {
    let mut h = Sha256::new();
    for part in [rule_id.as_bytes(), host_id.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(window_start.to_le_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(32);
    for byte in &digest[..16] {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What [`Store::record`] did with one hit (same order as the hits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub alert_id: String,
    /// This hit created the alert.
    pub created: bool,
    /// This hit was counted; false when its position had been counted before
    /// (a redelivery).
    pub counted: bool,
}

/// Which alerts to list or summarize. Every field that is set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertQuery {
    /// Level at least this.
    pub min_level: Option<Level>,
    /// Exactly this level.
    pub level: Option<Level>,
    pub rule_id: Option<String>,
    pub host_id: Option<String>,
    /// The host has every one of these labels (at most [`MAX_LABEL_FILTERS`]).
    pub labels: BTreeMap<String, String>,
    /// Alerts whose events span overlaps `[since, until]`: `last_seen >= since` ...
    pub since: Option<Timestamp>,
    /// ... and `first_seen <= until`.
    pub until: Option<Timestamp>,
    /// Most rows returned: 0 means [`DEFAULT_LIMIT`], more than [`MAX_LIMIT`] means
    /// [`MAX_LIMIT`]. For a summary, the most groups.
    pub limit: usize,
}

impl Default for AlertQuery {
    fn default() -> Self {
        AlertQuery {
            min_level: None,
            level: None,
            rule_id: None,
            host_id: None,
            labels: BTreeMap::new(),
            since: None,
            until: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl AlertQuery {
    /// The limit applied: [`AlertQuery::limit`] with its default and cap.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }
}

/// Alerts and suppressions, on one backend. One handle is used by one thread at a time;
/// open one per thread (they may share the database).
pub trait Store: Send {
    /// Folds all hits into alerts in ONE transaction (the server commits Kafka offsets
    /// only after this returns Ok). Idempotent under redelivery: per alert and
    /// (topic, partition) the store keeps the highest offset counted; a hit at or below it
    /// is not counted again (`counted = false`). The first hit of an alert creates it
    /// (`created = true`) with id [`alert_id`] and keeps its event as evidence; later hits
    /// add their `count`, widen first/last seen and move `updated_at`.
    ///
    /// Fails, recording nothing, when the database cannot be written.
    fn record(&mut self, hits: &[Hit], now: Timestamp) -> Result<Vec<Recorded>, StoreError>;
    /// Matching alerts, newest `last_seen` first. Rows that no longer parse are skipped
    /// and counted ([`Store::unreadable_rows`]).
    fn alerts(&mut self, q: &AlertQuery) -> Result<Vec<Alert>, StoreError>;
    /// One alert; an error names it if its row no longer parses.
    fn alert(&mut self, id: &str) -> Result<Option<Alert>, StoreError>;
    /// Matching alerts grouped, biggest group first (then most events, then key; the
    /// `None` group, alerts without the label, last among equals).
    fn summary(&mut self, by: &GroupBy, q: &AlertQuery) -> Result<Vec<SummaryRow>, StoreError>;
    /// Stores a suppression and returns it with its new id and `created_at = now`.
    /// Fails when [`MAX_SUPPRESSIONS`] are stored already.
    fn add_suppression(
        &mut self,
        s: &Suppression,
        now: Timestamp,
    ) -> Result<Suppression, StoreError>;
    /// All suppressions, oldest first.
    fn suppressions(&mut self) -> Result<Vec<Suppression>, StoreError>;
    /// Whether a suppression with this id existed.
    fn remove_suppression(&mut self, id: i64) -> Result<bool, StoreError>;
    /// Deletes alerts last counted (`updated_at`, the server's clock, so a host's wrong
    /// clock cannot age its alerts out early) before the cutoff; returns how many.
    fn prune(&mut self, updated_before: Timestamp) -> Result<u64, StoreError>;
    /// Creates an operator of the web console, or replaces the password hash of one (which
    /// ends the sessions the old password opened); returns whether the operator is new.
    /// Fails past [`MAX_OPERATORS`]. Only hashes are stored, never passwords.
    fn put_operator(
        &mut self,
        name: &str,
        password_hash: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Deletes an operator and their sessions; returns whether they existed.
    fn remove_operator(&mut self, name: &str) -> Result<bool, StoreError>;
    /// The stored password hash of an operator.
    fn operator_password(&mut self, name: &str) -> Result<Option<String>, StoreError>;
    /// Whether any operator exists.
    fn has_operators(&mut self) -> Result<bool, StoreError>;
    /// Every operator and when they were created, by name.
    fn operators(&mut self) -> Result<Vec<(String, Timestamp)>, StoreError>;
    /// Starts a console session, known by the hash of its token (the token itself is
    /// only in the operator's cookie); ends expired sessions and the operator's oldest
    /// past [`MAX_SESSIONS_PER_OPERATOR`].
    fn start_session(
        &mut self,
        token_hash: &str,
        operator: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), StoreError>;
    /// The operator of an unexpired session.
    fn session(&mut self, token_hash: &str, now: Timestamp) -> Result<Option<String>, StoreError>;
    fn end_session(&mut self, token_hash: &str) -> Result<(), StoreError>;
    /// Stores a one-time login link for `operator`, known by its token's hash, apart from
    /// sessions. Fails past [`MAX_LOGIN_LINKS`] unexpired links.
    fn create_login_link(
        &mut self,
        token_hash: &str,
        operator: &str,
        now: Timestamp,
        expires: Timestamp,
    ) -> Result<(), StoreError>;
    /// Uses a login link, atomically: of two requests with it, one gets its operator
    /// (if it had not expired), the other None.
    fn take_login_link(
        &mut self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError>;
    /// Marks an alert acknowledged (the first acknowledgement stands): None when there
    /// is no such alert, else whether this call acknowledged it. Retention deletes the
    /// acknowledgement with its alert.
    fn acknowledge(
        &mut self,
        alert_id: &str,
        operator: &str,
        now: Timestamp,
    ) -> Result<Option<bool>, StoreError>;
    /// The acknowledgements among these alerts (the first [`MAX_LIMIT`] ids).
    fn acks(&mut self, alert_ids: &[String]) -> Result<Vec<Ack>, StoreError>;
    /// Adds a line to the history of changes (who, what, to what). Each field at most
    /// [`MAX_FIELD_BYTES`]; past [`MAX_CHANGES_KEPT`] lines the oldest go at the next
    /// [`Store::prune`].
    fn record_change(
        &mut self,
        operator: &str,
        action: &str,
        detail: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// History newest first, older than `before_id` when given, at most `limit`
    /// ([`MAX_CHANGES_LISTED`]).
    fn changes(&mut self, before_id: Option<i64>, limit: usize) -> Result<Vec<Change>, StoreError>;
    /// Writes (or overwrites) the league rows of `day` for `figure`: the leaders among
    /// this instance's hosts. Rows of other hosts are left as they are.
    fn put_top(
        &mut self,
        day: &str,
        figure: TopFigure,
        rows: &[TopHost],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// The `limit` hosts of `day` with the highest `figure`, highest first.
    fn top(
        &mut self,
        day: &str,
        figure: TopFigure,
        limit: usize,
    ) -> Result<Vec<TopHost>, StoreError>;
    /// Deletes league days before `day` (`YYYY-MM-DD`); returns the rows deleted.
    fn prune_top(&mut self, before_day: &str) -> Result<u64, StoreError>;
    /// Records inventory reports in ONE transaction (the server commits Kafka offsets
    /// only after it): whole lists checked against their hash and stored once, host rows
    /// pointed at them, parts kept until their list is whole. Idempotent: a redelivered
    /// report changes nothing.
    fn record_inventories(
        &mut self,
        reports: &[InventoryReport],
        now: Timestamp,
    ) -> Result<Vec<InventoryOutcome>, StoreError>;
    /// Host rows whose (updated_at, host id) comes after (`since`, `after`), in that
    /// order, at most `limit` ([`MAX_HOST_PAGE`]): a page of the index's load or
    /// refresh; the next page starts after the last row's pair.
    fn inventory_hosts(
        &mut self,
        since: Timestamp,
        after: &str,
        limit: usize,
    ) -> Result<HostPage, StoreError>;
    /// One stored inventory by its hash.
    fn inventory(&mut self, hash: &str) -> Result<Option<StoredInventory>, StoreError>;
    /// Deletes parts received before `parts_before` (lists that never came whole) and
    /// inventories no host points at any more; returns the rows deleted.
    fn prune_inventories(&mut self, parts_before: Timestamp) -> Result<u64, StoreError>;
    /// Stored rows skipped by this handle because they no longer parse.
    fn unreadable_rows(&self) -> u64 {
        0
    }
    /// Evidence events over [`MAX_EVIDENCE_BYTES`] (or not JSON) replaced by a note, by
    /// this handle.
    fn dropped_evidence(&self) -> u64 {
        0
    }
}

/// What went wrong, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert store {path}: {what}")]
    Path { path: PathBuf, what: String },
    /// `db` names the database: `SQLite PATH` or `PostgreSQL HOST:PORT/NAME`.
    #[error("alert store ({db}): {context}: {source}")]
    Sqlite {
        db: String,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("alert store ({db}): {context}: {source}")]
    Postgres {
        db: String,
        context: String,
        #[source]
        source: ::postgres::Error,
    },
    #[error("alert store schema is version {found}, newer than this hids-server knows ({known}): run a newer hids-server, or point this one at another database")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("alert store row {row}: {what}")]
    Unreadable { row: String, what: String },
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the database refused these values themselves (a character it cannot
    /// hold, a value out of range, a constraint), as opposed to being away or busy:
    /// sending the same values again will fail again, sending others may not.
    pub fn refuses_the_data(&self) -> bool {
        match self {
            StoreError::Invalid(_) => true,
            // SQLSTATE class 22 (data exception) and 23 (integrity constraint).
            StoreError::Postgres { source, .. } => source
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::ConstraintViolation
                        | rusqlite::ErrorCode::TooBig
                        | rusqlite::ErrorCode::TypeMismatch
                )
            ),
            _ => false,
        }
    }
}
