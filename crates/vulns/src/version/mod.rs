//! Version ordering as each packaging system does it, on borrowed strings and without
//! allocating for dpkg and rpm (the fleet index compares millions of installed versions
//! against a fixed one).
//!
//! [`deb`] and [`rpm`] are exact: differential tests against `dpkg --compare-versions`
//! and librpm (`tests/ordering.rs`, `bench/versions/run`). [`pep440`], [`semver`] and
//! [`maven`] follow their specifications and the examples they document; they are not
//! differentially tested. Every `compare` is total and never panics: dpkg and rpm
//! compare anything (as the tools themselves do, parsing leniently), the others sort a
//! version that does not parse before every version that does.

pub mod deb;
pub mod maven;
pub mod pep440;
pub mod rpm;
pub mod semver;

use std::cmp::Ordering;

/// Which ordering applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Deb,
    Rpm,
    Pep440,
    Semver,
    Maven,
}

/// Compares two versions under a scheme. Total: never panics on junk; see each module
/// for what it does with a version that does not parse.
pub fn compare(scheme: Scheme, a: &str, b: &str) -> Ordering {
    match scheme {
        Scheme::Deb => deb::compare(a, b),
        Scheme::Rpm => rpm::compare(a, b),
        Scheme::Pep440 => pep440::compare(a, b),
        Scheme::Semver => semver::compare(a, b),
        Scheme::Maven => maven::compare(a, b),
    }
}

/// Whether the version parses under the scheme (feeds count the ones that do not).
pub fn is_valid(scheme: Scheme, v: &str) -> bool {
    match scheme {
        Scheme::Deb => deb::is_valid(v),
        Scheme::Rpm => rpm::is_valid(v),
        Scheme::Pep440 => pep440::is_valid(v),
        Scheme::Semver => semver::is_valid(v),
        Scheme::Maven => maven::is_valid(v),
    }
}

/// Compares two runs of ASCII digits as the numbers they spell, whatever their length:
/// leading zeros dropped, then the longer is the larger, then digit by digit. dpkg, rpm
/// and Maven all do this to avoid overflowing on 20-digit date stamps.
pub(crate) fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    let a = strip_zeros(a);
    let b = strip_zeros(b);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn strip_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

/// The bytes a C library would see: everything before the first NUL.
pub(crate) fn c_string(s: &str) -> &[u8] {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Fallback for the schemes that reject what does not parse: an invalid version sorts
/// before every valid one, invalid ones by their bytes, so the order stays total.
pub(crate) fn cmp_with_invalid<T: Ord>(
    a: Option<T>,
    a_raw: &str,
    b: Option<T>,
    b_raw: &str,
) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a_raw.cmp(b_raw),
    }
}

/// Checks that `compare` orders `versions` strictly ascending, both ways round.
#[cfg(test)]
pub(crate) fn assert_ascending(compare: fn(&str, &str) -> Ordering, versions: &[&str]) {
    for pair in versions.windows(2) {
        assert_eq!(
            compare(pair[0], pair[1]),
            Ordering::Less,
            "{} < {}",
            pair[0],
            pair[1]
        );
        assert_eq!(
            compare(pair[1], pair[0]),
            Ordering::Greater,
            "{} > {}",
            pair[1],
            pair[0]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_compare_as_numbers_of_any_length() {
        assert_eq!(cmp_digits(b"010", b"9"), Ordering::Greater);
        assert_eq!(cmp_digits(b"000", b""), Ordering::Equal);
        let long_a = "1".repeat(400);
        let long_b = format!("0{}2", "1".repeat(399));
        assert_eq!(
            cmp_digits(long_a.as_bytes(), long_b.as_bytes()),
            Ordering::Less
        );
    }

    #[test]
    fn every_scheme_survives_junk() {
        let junk = [
            "", ":", "-", "~", "^", "\0", "1:", "-1", "é", "1..2--3", "+", "v", "!",
        ];
        for scheme in [
            Scheme::Deb,
            Scheme::Rpm,
            Scheme::Pep440,
            Scheme::Semver,
            Scheme::Maven,
        ] {
            for a in junk {
                for b in junk {
                    let forward = compare(scheme, a, b);
                    assert_eq!(
                        forward.reverse(),
                        compare(scheme, b, a),
                        "{scheme:?} {a:?} {b:?}"
                    );
                }
                let _ = is_valid(scheme, a);
            }
        }
    }
}
