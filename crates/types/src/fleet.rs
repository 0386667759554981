//! The fleet's daily resource league: per day, the hosts where the agent used the most
//! CPU or memory. Shared by `hids-server` (which computes and serves it) and `hidsctl`
//! (which lists it), so both read the same fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which figure a league ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopFigure {
    /// The agent's (master and plugins) mean CPU over the day, in percent of one core.
    Cpu,
    /// The agent's highest resident memory of the day, in MB.
    Memory,
}

impl TopFigure {
    pub const ALL: [TopFigure; 2] = [TopFigure::Cpu, TopFigure::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            TopFigure::Cpu => "cpu",
            TopFigure::Memory => "memory",
        }
    }

    /// The figure's unit, for a person reading a table.
    pub fn unit(self) -> &'static str {
        match self {
            TopFigure::Cpu => "% of a core (day's mean)",
            TopFigure::Memory => "MB RSS (day's peak)",
        }
    }
}

impl std::str::FromStr for TopFigure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(TopFigure::Cpu),
            "memory" | "mem" => Ok(TopFigure::Memory),
            other => Err(format!("by={other:?}: use cpu or memory")),
        }
    }
}

/// One host of a league.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopHost {
    pub host_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Whether `text` is a day as [`crate::Timestamp::utc_day`] writes it (what the API
/// accepts).
pub fn is_day_name(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_named_like_a_calendar() {
        let day = crate::Timestamp::from_unix_nanos(20_787 * 86_400 * 1_000_000_000 + 1);
        assert_eq!(day.utc_day(), "2026-11-30");
        assert!(is_day_name("2026-11-30"));
        assert!(!is_day_name("2026-11-3"));
        assert!(!is_day_name("2026/11/30"));
        assert_eq!("cpu".parse::<TopFigure>(), Ok(TopFigure::Cpu));
        assert!("disk".parse::<TopFigure>().is_err());
    }
}
