//! npm package versions as node-semver orders them (`semver.compare`, strict parsing):
//! `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, an optional leading `v`, surrounding white
//! space trimmed. Numbers have no leading zeros and stay below 2^53 (node-semver refuses
//! larger ones); a version with a prerelease sorts before the same version without;
//! prerelease identifiers compare numerically when both are numbers, numbers before
//! words, words by ASCII, a shorter list before a longer one it prefixes; build metadata
//! is ignored. Not differentially tested; the unit tests are semver.org's examples.
//!
//! A version that does not parse sorts before every valid one; two of them compare by
//! their bytes.

use std::cmp::Ordering;

use super::{cmp_digits, cmp_with_invalid};

/// node-semver's MAX_LENGTH: longer strings are refused outright.
const MAX_LENGTH: usize = 256;
/// JavaScript's Number.MAX_SAFE_INTEGER, node-semver's limit on version numbers.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Identifier<'a> {
    Numeric(&'a str),
    Alphanumeric(&'a str),
}

impl Identifier<'_> {
    fn compare(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Identifier::Numeric(a), Identifier::Numeric(b)) => {
                cmp_digits(a.as_bytes(), b.as_bytes())
            }
            (a, b) => a.cmp(b),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Version<'a> {
    core: [u64; 3],
    prerelease: Vec<Identifier<'a>>,
}

impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core.cmp(&other.core).then_with(|| {
            match (self.prerelease.is_empty(), other.prerelease.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    let pairs = self.prerelease.iter().zip(&other.prerelease);
                    pairs
                        .map(|(a, b)| a.compare(b))
                        .find(|order| order.is_ne())
                        .unwrap_or_else(|| self.prerelease.len().cmp(&other.prerelease.len()))
                }
            }
        })
    }
}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two npm versions; see the module doc for versions that do not parse.
pub fn compare(a: &str, b: &str) -> Ordering {
    cmp_with_invalid(parse(a), a, parse(b), b)
}

/// Whether node-semver parses the version (strictly).
pub fn is_valid(version: &str) -> bool {
    parse(version).is_some()
}

fn numeric_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|c| c.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
}

fn identifier_chars(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

fn parse(version: &str) -> Option<Version<'_>> {
    if version.len() > MAX_LENGTH {
        return None;
    }
    let trimmed = version.trim();
    let trimmed = trimmed.strip_prefix('v').unwrap_or(trimmed);
    let (rest, build) = match trimmed.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (trimmed, None),
    };
    if build.is_some_and(|build| !build.split('.').all(identifier_chars)) {
        return None;
    }
    let (core, prerelease) = match rest.split_once('-') {
        Some((core, prerelease)) => (core, Some(prerelease)),
        None => (rest, None),
    };
    let mut numbers = core.split('.');
    let mut next = || {
        numbers
            .next()
            .filter(|n| numeric_identifier(n))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n <= MAX_SAFE_INTEGER)
    };
    let core = [next()?, next()?, next()?];
    if numbers.next().is_some() {
        return None;
    }
    let prerelease = match prerelease {
        Some(text) => text
            .split('.')
            .map(prerelease_identifier)
            .collect::<Option<Vec<_>>>()?,
        None => Vec::new(),
    };
    Some(Version { core, prerelease })
}

fn prerelease_identifier(text: &str) -> Option<Identifier<'_>> {
    if numeric_identifier(text) {
        Some(Identifier::Numeric(text))
    } else if identifier_chars(text) && !text.bytes().all(|c| c.is_ascii_digit()) {
        Some(Identifier::Alphanumeric(text))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// semver.org, item 11, in increasing order.
    #[test]
    fn semver_org_precedence_example_is_in_order() {
        let versions = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "2.0.0",
            "2.1.0",
            "2.1.1",
        ];
        super::super::assert_ascending(compare, &versions);
    }

    #[test]
    fn build_metadata_and_prefix_are_ignored() {
        assert_eq!(
            compare("1.0.0+20130313144700", "1.0.0+exp.sha.5114f85"),
            Ordering::Equal
        );
        assert_eq!(compare("v1.2.3", " 1.2.3 "), Ordering::Equal);
        assert_eq!(compare("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare("1.0.0-x-y-z.-", "1.0.0-x-y-z.--"), Ordering::Less);
    }

    #[test]
    fn validity_follows_node_semver_strict_parsing() {
        for good in [
            "0.0.0",
            "1.2.3-0.3.7",
            "1.0.0-x.7.z.92",
            "1.0.0-alpha+001",
            "v9007199254740991.0.0",
            "1.0.0-01a",
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.2.3-01",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-a..b",
            "9007199254740992.0.0",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert_eq!(compare("junk", "0.0.0"), Ordering::Less);
    }
}
