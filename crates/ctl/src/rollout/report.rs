//! A rollout for a person (a table per wave) or as JSON (the record).

use hids_types::text::table;

use super::record::{Record, WaveState};

/// Failing hosts printed under the table, at most.
const PRINTED_FAILURES: usize = 10;

/// `1%, 10%, 50%, 100%`.
pub fn waves_text(record: &Record) -> String {
    record
        .waves
        .iter()
        .map(|w| format!("{}%", w.percent))
        .collect::<Vec<_>>()
        .join(", ")
}

fn wave_state(s: WaveState) -> &'static str {
    match s {
        WaveState::Waiting => "not begun",
        WaveState::Writing => "writing",
        WaveState::Watching => "watching",
        WaveState::Done => "done",
        WaveState::Halted => "halted",
        WaveState::TimedOut => "timed out",
    }
}

/// # Errors
/// Only if the record cannot be encoded as JSON.
pub fn print(record: &Record, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(record)?);
        return Ok(());
    }
    out!(
        "rollout {}: {} to {} by {}: {} after {:.1}s",
        record.rollout,
        record.releases_text(),
        record.target.describe,
        record.by,
        record.state.as_str(),
        record.elapsed_secs
    );
    let rows: Vec<Vec<String>> = record
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            vec![
                (i + 1).to_string(),
                format!("{}%", w.percent),
                if w.generation == 0 {
                    "-".into()
                } else {
                    w.generation.to_string()
                },
                w.targets.to_string(),
                w.healthy.to_string(),
                w.failed.to_string(),
                w.rolled_back.to_string(),
                w.pending.to_string(),
                format!("{:.1}", w.elapsed_secs),
                wave_state(w.state).into(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        table(
            &[
                "WAVE",
                "UP TO",
                "GENERATION",
                "TARGETS",
                "HEALTHY",
                "FAILED",
                "ROLLED BACK",
                "PENDING",
                "SECS",
                "STATE"
            ],
            &rows
        )
    );
    if let Some(reason) = &record.reason {
        out!("{}", reason);
    }
    let failures = record.waves.iter().flat_map(|w| &w.failures);
    for f in failures.take(PRINTED_FAILURES) {
        out!("  {} {}: {}", f.host_id, f.outcome, f.reason);
    }
    Ok(())
}

/// `rollout list`.
///
/// # Errors
/// Only if the records cannot be encoded as JSON.
pub fn list(records: &[Record], json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(records)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let done = r
                .waves
                .iter()
                .filter(|w| w.state == WaveState::Done)
                .count();
            vec![
                r.rollout.clone(),
                humantime::format_rfc3339_seconds(r.started_at.0).to_string(),
                r.by.clone(),
                r.releases_text(),
                r.target.describe.clone(),
                format!("{done}/{}", r.waves.len()),
                r.state.as_str().into(),
            ]
        })
        .collect();
    out_raw!(
        "{}",
        table(
            &[
                "ROLLOUT",
                "STARTED",
                "BY",
                "BUILDS",
                "TARGET",
                "WAVES DONE",
                "STATE"
            ],
            &rows
        )
    );
    Ok(())
}
