//! The daily resource league: per host, the day's mean agent CPU and peak agent memory
//! from its periodic stats; per day, the hosts at the top. Each instance ranks its own
//! hosts and writes its leaders to the store, where a query ranks all instances'.

use std::sync::Arc;

use hids_types::fleet::{TopFigure, TopHost};

use super::book::Hosts;

/// One host's figures for one day: the day, the CPU samples' sum and count, the
/// highest memory.
#[derive(Debug, Clone, Copy, Default)]
struct Day {
    day: u32,
    cpu_sum: f32,
    samples: u32,
    rss_max: f32,
}

/// Today's figures and yesterday's (kept until the day's final league is written).
#[derive(Debug, Clone, Copy, Default)]
pub struct DayFigures {
    today: Day,
    yesterday: Day,
}

impl DayFigures {
    /// One stats sample; the first of a new day starts the day afresh.
    pub fn add(&mut self, day: u32, cpu_percent: f64, rss_mb: f64) {
        if day != self.today.day {
            self.yesterday = self.today;
            self.today = Day {
                day,
                ..Day::default()
            };
        }
        let d = &mut self.today;
        d.cpu_sum += cpu_percent as f32;
        d.samples = d.samples.saturating_add(1);
        d.rss_max = d.rss_max.max(rss_mb as f32);
    }

    /// The figure for `day`; None when the host sent no stats that day.
    pub fn value(&self, day: u32, figure: TopFigure) -> Option<f64> {
        let d = [self.today, self.yesterday]
            .into_iter()
            .find(|d| d.day == day && d.samples > 0)?;
        Some(match figure {
            TopFigure::Cpu => f64::from(d.cpu_sum) / f64::from(d.samples),
            TopFigure::Memory => f64::from(d.rss_max),
        })
    }
}

/// The `size` hosts with the highest `figure` on `day`, highest first, plus every host
/// in `also` (those written earlier today, so a fallen leader's row is brought down
/// to its present value instead of staying at its old one).
pub fn leaders(
    hosts: &Hosts,
    day: u32,
    figure: TopFigure,
    size: usize,
    also: &std::collections::HashSet<Arc<str>>,
) -> Vec<TopHost> {
    let mut ranked: Vec<(f64, &str)> = hosts
        .iter()
        .filter_map(|(id, b)| Some((b.day.value(day, figure)?, &**id)))
        .collect();
    let size = size.min(ranked.len());
    if size < ranked.len() {
        ranked.select_nth_unstable_by(size, |a, b| b.0.total_cmp(&a.0));
        ranked.truncate(size);
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<TopHost> = ranked
        .iter()
        .filter_map(|(value, id)| top_host(hosts, id, *value))
        .collect();
    for id in also {
        if ranked.iter().any(|(_, r)| *r == &**id) {
            continue;
        }
        if let Some(value) = hosts.get(&**id).and_then(|b| b.day.value(day, figure)) {
            out.extend(top_host(hosts, id, value));
        }
    }
    out
}

fn top_host(hosts: &Hosts, id: &str, value: f64) -> Option<TopHost> {
    let book = hosts.get(id)?;
    Some(TopHost {
        host_id: id.to_owned(),
        labels: (*book.labels).clone(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_cpu_and_the_peak_memory_of_the_day() {
        let mut d = DayFigures::default();
        d.add(7, 1.0, 10.0);
        d.add(7, 3.0, 30.0);
        d.add(7, 2.0, 20.0);
        assert_eq!(d.value(7, TopFigure::Cpu), Some(2.0));
        assert_eq!(d.value(7, TopFigure::Memory), Some(30.0));
        assert_eq!(d.value(8, TopFigure::Cpu), None);
        d.add(8, 5.0, 1.0);
        assert_eq!(d.value(8, TopFigure::Memory), Some(1.0));
        // Yesterday stays readable for its final league.
        assert_eq!(d.value(7, TopFigure::Memory), Some(30.0));
    }
}
