//! Choosing target hosts: by host id, by label selector, by a stable percentage, or any
//! combination (all must hold).
//!
//! Selector syntax, as in Kubernetes: requirements separated by commas, all of which
//! must hold: `env=prod`, `env!=prod`, `idc in (bj,sh)`, `idc notin (bj)`, `canary`
//! (label present), `!canary` (label absent).

use std::collections::BTreeMap;

use hids_types::stagger;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    text: String,
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad selector {input:?}: {why}")]
pub struct SelectorError {
    input: String,
    why: String,
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SelectorError {
            input: input.to_owned(),
            why: why.to_owned(),
        };
        let mut requirements = Vec::new();
        for part in split_top_level(input).map_err(|w| err(&w))? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let valid_key = |k: &str| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = split_word(part, " notin ") {
                Requirement::NotIn(k, parse_set(&set).map_err(|w| err(&w))?)
            } else if let Some((k, set)) = split_word(part, " in ") {
                Requirement::In(k, parse_set(&set).map_err(|w| err(&w))?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            if !valid_key(key) {
                return Err(err(&format!("{key:?} is not a label name")));
            }
            requirements.push(req);
        }
        if requirements.is_empty() {
            return Err(err("empty"));
        }
        Ok(Selector {
            requirements,
            text: input.trim().to_owned(),
        })
    }
}

fn split_word(part: &str, word: &str) -> Option<(String, String)> {
    let (k, rest) = part.split_once(word)?;
    Some((k.trim().to_owned(), rest.trim().to_owned()))
}

fn parse_set(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected (a,b,...), found {set:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

/// Splits on commas outside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&input[start..]);
    Ok(parts)
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// Which hosts a push or command is for. Every given criterion must hold; none given
/// means every host.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub hosts: Vec<String>,
    pub selector: Option<Selector>,
    /// 0-100: the hosts whose stable bucket falls below this share. The same hosts every
    /// time, and a larger percentage only adds hosts.
    pub percent: Option<f64>,
}

/// Percentages have a resolution of 0.01%.
const BUCKETS: u64 = 10_000;

impl Target {
    pub fn matches(&self, host_id: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h == host_id))
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
            && self.percent.is_none_or(|p| in_percent(host_id, p))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            parts.push(format!("hosts {}", self.hosts.join(",")));
        }
        if let Some(s) = &self.selector {
            parts.push(format!("selector '{s}'"));
        }
        if let Some(p) = self.percent {
            parts.push(format!("{p}%"));
        }
        if parts.is_empty() {
            "all hosts".into()
        } else {
            parts.join(" and ")
        }
    }
}

pub fn in_percent(host_id: &str, percent: f64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) * (BUCKETS as f64 / 100.0)).round() as u64;
    stagger::bucket(host_id, BUCKETS) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn selector_forms() {
        let l = labels(&[("env", "prod"), ("idc", "bj")]);
        let yes = [
            "env=prod",
            "env==prod",
            "env!=staging",
            "idc in (bj,sh)",
            "idc notin (sh)",
            "env",
            "!canary",
            "env=prod,idc in (bj, sh)",
        ];
        for s in yes {
            assert!(s.parse::<Selector>().unwrap().matches(&l), "{s}");
        }
        let no = [
            "env=staging",
            "idc in (sh)",
            "idc notin (bj,sh)",
            "canary",
            "!env",
            "env=prod,idc=sh",
        ];
        for s in no {
            assert!(!s.parse::<Selector>().unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn bad_selectors_say_why() {
        for s in ["", "idc in bj", "idc in (bj", "a b=c", "=x"] {
            assert!(s.parse::<Selector>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn percent_is_stable_monotonic_and_about_right() {
        let hosts: Vec<String> = (0..20_000).map(|i| format!("host-{i}")).collect();
        let pick = |p: f64| {
            hosts
                .iter()
                .filter(|h| in_percent(h, p))
                .cloned()
                .collect::<Vec<_>>()
        };
        let ten = pick(10.0);
        assert_eq!(ten, pick(10.0), "the same hosts every time");
        let twenty = pick(20.0);
        assert!(
            ten.iter().all(|h| twenty.contains(h)),
            "widening only adds hosts"
        );
        assert!((1800..2200).contains(&ten.len()), "{}", ten.len());
        assert!(pick(0.0).is_empty());
        assert_eq!(pick(100.0).len(), hosts.len());
    }

    #[test]
    fn target_combines_criteria() {
        let t = Target {
            hosts: vec![],
            selector: Some("env=prod".parse().unwrap()),
            percent: Some(100.0),
        };
        assert!(t.matches("a", &labels(&[("env", "prod")])));
        assert!(!t.matches("a", &labels(&[("env", "dev")])));
        assert!(Target::default().matches("x", &BTreeMap::new()));
    }
}
