//! CVSS v3.x base scores, from the vector string (`CVSS:3.1/AV:N/AC:L/...`), as the
//! FIRST specification computes them: OSV records often carry only the vector.

use super::Severity;

/// The base score of a v3.0/v3.1 vector, or `None` when a base metric is missing or
/// unknown.
pub(super) fn v3_base_score(vector: &str) -> Option<f64> {
    let mut metrics = vector.split('/');
    if !metrics.next()?.starts_with("CVSS:3") {
        return None;
    }
    let (mut av, mut ac, mut pr, mut ui, mut scope_changed) = (None, None, None, None, None);
    let (mut c, mut i, mut a) = (None, None, None);
    for metric in metrics {
        let (name, value) = metric.split_once(':')?;
        match (name, value) {
            ("AV", v) => {
                av = Some(pick(
                    v,
                    &[("N", 0.85), ("A", 0.62), ("L", 0.55), ("P", 0.2)],
                )?)
            }
            ("AC", v) => ac = Some(pick(v, &[("L", 0.77), ("H", 0.44)])?),
            ("PR", v) => pr = Some(v.to_string()),
            ("UI", v) => ui = Some(pick(v, &[("N", 0.85), ("R", 0.62)])?),
            ("S", "U") => scope_changed = Some(false),
            ("S", "C") => scope_changed = Some(true),
            ("C", v) => c = Some(impact(v)?),
            ("I", v) => i = Some(impact(v)?),
            ("A", v) => a = Some(impact(v)?),
            // Temporal and environmental metrics do not change the base score.
            _ => {}
        }
    }
    let scope_changed = scope_changed?;
    let pr = match (pr?.as_str(), scope_changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let iss = 1.0 - (1.0 - c?) * (1.0 - i?) * (1.0 - a?);
    let impact = if scope_changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av? * ac? * pr * ui?;
    if impact <= 0.0 {
        return Some(0.0);
    }
    let sum = if scope_changed {
        1.08 * (impact + exploitability)
    } else {
        impact + exploitability
    };
    Some(round_up(sum.min(10.0)))
}

fn pick(value: &str, table: &[(&str, f64)]) -> Option<f64> {
    table.iter().find(|(k, _)| *k == value).map(|(_, w)| *w)
}

fn impact(value: &str) -> Option<f64> {
    pick(value, &[("H", 0.56), ("L", 0.22), ("N", 0.0)])
}

/// CVSS 3.1's Roundup: the smallest one-decimal number not below the input, computed
/// on integers so that 4.000000001 does not become 4.1.
fn round_up(value: f64) -> f64 {
    let scaled = (value * 100_000.0).round() as i64;
    if scaled % 10_000 == 0 {
        scaled as f64 / 100_000.0
    } else {
        ((scaled / 10_000) + 1) as f64 / 10.0
    }
}

/// The qualitative rating of a score (0.0 "None" is negligible).
pub(super) fn severity_of_score(score: f64) -> Severity {
    match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        s if s > 0.0 => Severity::Low,
        _ => Severity::Negligible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores from FIRST's CVSS 3.1 calculator.
    #[test]
    fn v3_scores_match_the_first_calculator() {
        let cases = [
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
            ("CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:N/A:N", 3.1),
            ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N", 5.5),
            ("CVSS:3.0/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
        ];
        for (vector, expected) in cases {
            assert_eq!(v3_base_score(vector), Some(expected), "{vector}");
        }
    }

    #[test]
    fn junk_vectors_have_no_score() {
        for vector in [
            "",
            "CVSS:2.0/AV:N",
            "CVSS:3.1/AV:N/AC:L",
            "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "AV:N/AC:L/Au:N/C:P/I:P/A:P",
            "CVSS:3.1/AV",
        ] {
            assert_eq!(v3_base_score(vector), None, "{vector}");
        }
        assert_eq!(severity_of_score(9.8), Severity::Critical);
        assert_eq!(severity_of_score(0.0), Severity::Negligible);
    }
}
