//! `<state_dir>/status.json`: written by the running agent, read by `hids-agent status`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hids_types::guard::GuardStatus;
use hids_types::status::{AgentStatus, PipelineStatus, PluginStatus};

pub const STATUS_FILE: &str = "status.json";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes the status atomically (temporary file, then rename), so a reader never sees
/// half a document.
///
/// # Errors
/// When the state directory is not writable.
pub fn write(state_dir: &Path, status: &AgentStatus) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let tmp = state_dir.join(".status.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&body)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path(state_dir))
}

/// Reads a status file.
///
/// # Errors
/// A message saying what to do when the file is missing or unreadable.
pub fn read(state_dir: &Path) -> anyhow::Result<AgentStatus> {
    let p = path(state_dir);
    let bytes = std::fs::read(&p).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}\nIs the agent running with this state_dir? Pass --config with the agent's \
             config file, or --state-dir",
            p.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a status document: {e}", p.display()))
}

/// Renders a status for a person: a header and a table of plugins.
pub fn render(s: &AgentStatus, interval_secs: u64) -> String {
    let mut out = header(s, interval_secs);
    if let Some(g) = &s.guard {
        out.push_str(&guard_line(g));
    }
    out.push_str(&pipeline_lines(&s.pipeline));
    out.push('\n');
    out.push_str(&plugin_table(&s.plugins));
    // Capture fidelity differs per host (eBPF or the proc connector): say which.
    for p in &s.plugins {
        let health = p.health.as_ref();
        let field = |k: &str| health.and_then(|h| h.get(k)).and_then(|v| v.as_str());
        if let Some(capture) = field("capture") {
            out.push_str(&format!("{} capture: {capture}", p.name));
            if let Some(why) = field("capture_fallback") {
                out.push_str(&format!(" (eBPF unavailable: {why})"));
            }
            out.push('\n');
        }
    }
    out
}

/// Who, and how fresh the document is.
fn header(s: &AgentStatus, interval_secs: u64) -> String {
    let age = SystemTime::now()
        .duration_since(s.updated_at.0)
        .unwrap_or(Duration::ZERO);
    format!(
        "hids-agent {}  host {} ({})  pid {}  mode {}\nupdated {} ago{}\n",
        s.version,
        s.host_id,
        s.hostname,
        s.pid,
        s.mode,
        humantime::format_duration(Duration::from_secs(age.as_secs())),
        if age.as_secs() > 3 * interval_secs.max(1) + 2 {
            "  (stale: is the agent still running?)"
        } else {
            ""
        }
    )
}

fn guard_line(g: &GuardStatus) -> String {
    format!(
        "guard {}  trips {}  cooldown {}s  cpu {:.1}% of a core ({:.1}% of host)  rss {:.1} MB{}\n",
        serde_json::to_value(g.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        g.trips,
        g.cooldown_secs,
        g.cpu_percent,
        g.cpu_percent_host,
        g.rss_mb,
        g.reason
            .as_ref()
            .map_or(String::new(), |r| format!("\n  last trip: {r}"))
    )
}

fn pipeline_lines(p: &PipelineStatus) -> String {
    let dropped: u64 = p.dropped.values().sum();
    let mut out = format!("events out {}  dropped in agent {dropped}", p.events_out);
    if !p.dropped.is_empty() {
        let reasons: Vec<String> = p.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!(" ({})", reasons.join(", ")));
    }
    out.push('\n');
    if p.kafka_delivered > 0 || p.spooled > 0 || p.backlog {
        out.push_str(&format!(
            "kafka delivered {}  spooled {} (replayed {})  waiting in spool {} ({:.1} MB){}\n",
            p.kafka_delivered,
            p.spooled,
            p.replayed,
            p.spool_records,
            p.spool_bytes as f64 / (1024.0 * 1024.0),
            if p.backlog {
                "  BACKLOG: kafka is behind"
            } else {
                ""
            }
        ));
    }
    out
}

fn plugin_table(plugins: &[PluginStatus]) -> String {
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.state.as_str().to_owned(),
                p.pid.map_or("-".into(), |x| x.to_string()),
                p.restarts.to_string(),
                p.events.to_string(),
                p.frames_rejected.to_string(),
                match p.framed {
                    Some(true) => p.version.clone().unwrap_or_else(|| "yes".into()),
                    Some(false) => "unframed".into(),
                    None => "-".into(),
                },
                p.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    hids_types::text::table(
        &[
            "PLUGIN",
            "STATE",
            "PID",
            "RESTARTS",
            "EVENTS",
            "REJECTED",
            "VERSION",
            "LAST EXIT",
        ],
        &rows,
    )
}
