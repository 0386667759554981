//! What a rollout will do, checked before anything is written: the builds the settings
//! name, the waves, and which hosts each wave takes.

use hids_control::select::in_percent;
use hids_types::desired::DesiredBody;
use serde::{Deserialize, Serialize};

/// One plugin build a rollout installs: the wave waits for it on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub plugin: String,
    pub version: String,
}

/// How an `[agent]` build is named among a rollout's releases (no plugin may be called
/// this: it is the agent's own event stream).
pub const AGENT: &str = "agent";

/// Most waves a rollout may have.
const MAX_WAVES: usize = 100;

/// The builds `body` names. Every plugin entry must be a sound build entry or name no
/// build at all, and at least one must name a build: a rollout has something to wait
/// for.
///
/// # Errors
/// Which entry is wrong and why, or that no entry names a version.
pub fn releases(body: &DesiredBody, file: &str) -> anyhow::Result<Vec<Release>> {
    let mut releases = Vec::new();
    for entry in &body.plugins {
        match entry.release() {
            Ok(Some(r)) => releases.push(Release {
                plugin: entry.name.clone(),
                version: r.version,
            }),
            Ok(None) => {}
            Err(why) => anyhow::bail!("{file}: plugin {:?}: {why}", entry.name),
        }
    }
    if let Some(agent) = &body.agent {
        releases.push(Release {
            plugin: AGENT.into(),
            version: agent.version.clone(),
        });
    }
    if releases.is_empty() {
        anyhow::bail!(
            "{file}: neither a [[plugins]] entry nor [agent] names a build (version, url, \
             sha256): a rollout waits for a version to run; use `hidsctl push` for other settings"
        );
    }
    let mut names: Vec<&str> = releases.iter().map(|r| r.plugin.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("{file}: plugin {:?} is listed twice", w[0]);
    }
    Ok(releases)
}

/// Checks the waves' percentages: 1 to 100 of them, each above the one before, within
/// (0, 100].
///
/// # Errors
/// What is wrong with them.
pub fn check_waves(waves: &[f64]) -> anyhow::Result<()> {
    if waves.is_empty() || waves.len() > MAX_WAVES {
        anyhow::bail!("--waves: give 1 to {MAX_WAVES} percentages, e.g. 1,10,50,100");
    }
    let mut previous = 0.0;
    for &p in waves {
        if !(p > 0.0 && p <= 100.0) {
            anyhow::bail!("--waves: {p} is not a share above 0 and at most 100");
        }
        if p <= previous {
            anyhow::bail!("--waves: {p} after {previous}: each wave must be larger than the last");
        }
        previous = p;
    }
    Ok(())
}

/// The hosts of the wave that reaches `upto` percent after one that reached `from`:
/// those whose stable bucket is below `upto` and not below `from`, so every host is in
/// exactly one wave.
pub fn wave_hosts(hosts: &[String], from: f64, upto: f64) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| in_percent(h, upto) && !in_percent(h, from))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::desired::DesiredPlugin;

    fn entry(name: &str, version: Option<&str>, url: Option<&str>) -> DesiredPlugin {
        DesiredPlugin {
            name: name.into(),
            version: version.map(str::to_owned),
            url: url.map(str::to_owned),
            sha256: Some("ab".repeat(32)),
            ..Default::default()
        }
    }

    #[test]
    fn releases_are_checked_before_any_write() {
        let good = DesiredBody {
            plugins: vec![
                entry("process", Some("2.0"), Some("http://x/p")),
                DesiredPlugin {
                    name: "network".into(),
                    enabled: Some(false),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = releases(&good, "d.toml").unwrap();
        assert_eq!(
            r,
            [Release {
                plugin: "process".into(),
                version: "2.0".into()
            }]
        );
        let no_url = DesiredBody {
            plugins: vec![entry("process", Some("2.0"), None)],
            ..Default::default()
        };
        let e = releases(&no_url, "d.toml").unwrap_err().to_string();
        assert!(
            e.contains("d.toml") && e.contains("process") && e.contains("url"),
            "{e}"
        );
        let junk = DesiredBody {
            plugins: vec![entry("process", Some("../../etc"), Some("http://x/p"))],
            ..Default::default()
        };
        assert!(releases(&junk, "d.toml").is_err());
        let none = DesiredBody {
            log_level: Some("debug".into()),
            ..Default::default()
        };
        let e = releases(&none, "d.toml").unwrap_err().to_string();
        assert!(e.contains("names a build"), "{e}");
        let twice = DesiredBody {
            plugins: vec![
                entry("process", Some("2.0"), Some("http://x/p")),
                entry("process", Some("3.0"), Some("http://x/p")),
            ],
            ..Default::default()
        };
        assert!(releases(&twice, "d.toml").is_err());
    }

    #[test]
    fn waves_must_grow() {
        assert!(check_waves(&[1.0, 10.0, 50.0, 100.0]).is_ok());
        assert!(check_waves(&[5.0]).is_ok());
        for bad in [
            &[][..],
            &[0.0],
            &[10.0, 10.0],
            &[50.0, 10.0],
            &[101.0],
            &[f64::NAN],
        ] {
            assert!(check_waves(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_host_is_in_exactly_one_wave() {
        let hosts: Vec<String> = (0..5000).map(|i| format!("h-{i}")).collect();
        let waves = [1.0, 10.0, 50.0, 100.0];
        let mut seen = std::collections::HashSet::new();
        let mut from = 0.0;
        let mut sizes = Vec::new();
        for &upto in &waves {
            let w = wave_hosts(&hosts, from, upto);
            sizes.push(w.len());
            for h in w {
                assert!(seen.insert(h), "a host in two waves");
            }
            from = upto;
        }
        assert_eq!(seen.len(), hosts.len());
        assert!((20..100).contains(&sizes[0]), "{sizes:?}");
        assert!((2200..2800).contains(&sizes[3]), "{sizes:?}");
    }
}
