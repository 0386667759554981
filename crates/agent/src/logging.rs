//! The agent's log (stderr) and the forwarding of plugin logs into it.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::ChildStderr;
use tracing::Level;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

/// Longest plugin log line kept; the rest of a longer line is dropped.
const MAX_LINE: u64 = 4096;
/// Plugin log lines forwarded per second per plugin; beyond it lines are counted and
/// summarised, so a chatty plugin cannot flood the host's logs.
const LINES_PER_SEC: u32 = 200;

/// Changes the agent's log level at run time (from the desired state).
pub struct LogLevel(reload::Handle<LevelFilter, Registry>);

impl LogLevel {
    /// # Errors
    /// When `level` is not a level name.
    pub fn set(&self, level: &str) -> Result<(), String> {
        let level: Level = level
            .parse()
            .map_err(|_| format!("log level {level:?}: use error, warn, info, debug or trace"))?;
        self.0
            .reload(LevelFilter::from_level(level))
            .map_err(|e| e.to_string())
    }
}

pub fn init(level: &str) -> LogLevel {
    let level: Level = level.parse().unwrap_or(Level::INFO);
    let (filter, handle) = reload::Layer::new(LevelFilter::from_level(level));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(false),
        )
        .try_init();
    LogLevel(handle)
}

/// Forwards a plugin's stderr into the agent log, one line per record, at the level the
/// plugin wrote in front (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`; otherwise INFO).
pub async fn forward_plugin_log(plugin: String, stderr: ChildStderr) {
    let mut r = BufReader::with_capacity(8192, stderr);
    let mut line = Vec::new();
    let mut window = tokio::time::Instant::now();
    let mut in_window = 0u32;
    let mut suppressed = 0u64;
    loop {
        line.clear();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() as u64 == MAX_LINE {
            // Skip the rest of an over-long line, in bounded reads.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut r).take(MAX_LINE).read_until(b'\n', &mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
        }
        if window.elapsed().as_secs() >= 1 {
            if suppressed > 0 {
                tracing::warn!(plugin = %plugin, "suppressed {suppressed} log lines from plugin {plugin}");
                suppressed = 0;
            }
            window = tokio::time::Instant::now();
            in_window = 0;
        }
        in_window += 1;
        if in_window > LINES_PER_SEC {
            suppressed += 1;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let (level, msg) = split_level(text);
        match level {
            Level::ERROR => tracing::error!(plugin = %plugin, "{msg}"),
            Level::WARN => tracing::warn!(plugin = %plugin, "{msg}"),
            Level::DEBUG => tracing::debug!(plugin = %plugin, "{msg}"),
            Level::TRACE => tracing::trace!(plugin = %plugin, "{msg}"),
            _ => tracing::info!(plugin = %plugin, "{msg}"),
        }
    }
    if suppressed > 0 {
        tracing::warn!(plugin = %plugin, "suppressed {suppressed} log lines from plugin {plugin}");
    }
}

fn split_level(text: &str) -> (Level, &str) {
    let trimmed = text.trim_start();
    let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
    match word.parse::<Level>() {
        Ok(level) if word.chars().all(|c| c.is_ascii_uppercase()) => (level, rest.trim_start()),
        _ => (Level::INFO, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_taken_from_the_line() {
        assert_eq!(split_level(" WARN disk full"), (Level::WARN, "disk full"));
        assert_eq!(split_level("ERROR x"), (Level::ERROR, "x"));
        assert_eq!(split_level("hello there"), (Level::INFO, "hello there"));
        assert_eq!(
            split_level("info lower case is text"),
            (Level::INFO, "info lower case is text")
        );
    }
}
