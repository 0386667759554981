//! The daily resource league's rows: each instance upserts the leaders among its own
//! hosts; a query ranks them all.

use hids_types::fleet::{TopFigure, TopHost};
use hids_types::Timestamp;

use crate::sql::{cell, Conn, Param, Row};
use crate::StoreError;

/// Most league rows returned by one query.
pub const MAX_TOP: usize = 1_000;

/// A value as stored: thousandths, within what the column holds. NaN and infinities
/// never reach here (the server refuses them with the stats that carried them).
fn milli(value: f64) -> i64 {
    let scaled = (value * 1_000.0).round();
    if scaled.is_nan() {
        0
    } else {
        // `as` saturates at the bounds of i64.
        scaled as i64
    }
}

pub(crate) fn put(
    c: &mut dyn Conn,
    day: &str,
    figure: TopFigure,
    rows: &[TopHost],
    now: Timestamp,
) -> Result<(), StoreError> {
    let now_us = i64::try_from(now.unix_nanos() / 1_000).unwrap_or(i64::MAX);
    for row in rows {
        let labels = serde_json::to_string(&row.labels)
            .map_err(|e| StoreError::Invalid(format!("cannot encode labels: {e}")))?;
        c.execute(
            "INSERT INTO fleet_top (day, figure, host_id, labels, value_milli, updated_at_us)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (day, figure, host_id) DO UPDATE SET
                labels = excluded.labels, value_milli = excluded.value_milli,
                updated_at_us = excluded.updated_at_us",
            &[
                Param::Text(day),
                Param::Text(figure.as_str()),
                Param::Text(&row.host_id),
                Param::Text(&labels),
                Param::Int(milli(row.value)),
                Param::Int(now_us),
            ],
        )?;
    }
    Ok(())
}

pub(crate) fn query(
    c: &mut dyn Conn,
    day: &str,
    figure: TopFigure,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let limit = i64::try_from(limit.clamp(1, MAX_TOP)).unwrap_or(1);
    c.query(
        "SELECT host_id, labels, value_milli FROM fleet_top
         WHERE day = $1 AND figure = $2
         ORDER BY value_milli DESC, host_id LIMIT $3",
        &[
            Param::Text(day),
            Param::Text(figure.as_str()),
            Param::Int(limit),
        ],
    )
}

pub(crate) fn from_row(row: &Row) -> Result<TopHost, String> {
    let labels = cell(row, 1)?.text("labels")?;
    Ok(TopHost {
        host_id: cell(row, 0)?.text("host_id")?.to_owned(),
        labels: serde_json::from_str(labels).map_err(|e| format!("labels: {e}"))?,
        value: cell(row, 2)?.int("value_milli")? as f64 / 1_000.0,
    })
}
