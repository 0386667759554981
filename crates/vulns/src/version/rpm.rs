//! RPM version ordering, exactly as rpm 4.18 does it: an EVR string
//! `[epoch:]version[-release]` is split as rpm's `rpmverParse` splits it (the epoch only
//! when the string starts with digits and a colon, the release after the last `-`),
//! then the epoch (missing is 0), the version and the release are each compared by
//! `rpmvercmp` (`rpmio/rpmvercmp.c`), as `rpm.labelCompare` does.
//!
//! A missing release compares as an empty one, which keeps the order total: librpm's
//! own `rpmverCmp` skips the release when either side lacks one (so `1.0` would equal
//! both `1.0-1` and `1.0-2`), a matching rule for dependencies, not an ordering.
//!
//! Written here rather than taken from the `rpm-version` crate (which agreed with
//! librpm on 3,000/3,000 pairs): the algorithm is ~60 lines, and owning it lets it
//! borrow instead of allocate and keeps its C-string edge cases (a NUL ends the string)
//! under our differential test.

use std::cmp::Ordering;

use super::{c_string, cmp_digits};

/// Compares two EVR strings as librpm does. Total on any input: rpm itself compares
/// any string, and so does this (a NUL ends the string, as in C).
pub fn compare(a: &str, b: &str) -> Ordering {
    let a = split(c_string(a));
    let b = split(c_string(b));
    rpmvercmp(a.0, b.0)
        .then_with(|| rpmvercmp(a.1, b.1))
        .then_with(|| rpmvercmp(a.2, b.2))
}

/// Whether the EVR is one rpmbuild would produce: an optional epoch of digits that fits
/// rpm's 32-bit tag, then a non-empty version and, after the last `-`, an optional
/// non-empty release, both made of alphanumerics and `._+~^` (rpmbuild's allowed set
/// once macros are expanded).
pub fn is_valid(evr: &str) -> bool {
    let bytes = evr.as_bytes();
    let digits = bytes.iter().take_while(|c| c.is_ascii_digit()).count();
    let rest = match bytes.get(digits) {
        Some(b':') => {
            if cmp_digits(&bytes[..digits], u32::MAX.to_string().as_bytes()) == Ordering::Greater {
                return false;
            }
            &bytes[digits + 1..]
        }
        _ => bytes,
    };
    let allowed = |part: &[u8]| {
        !part.is_empty()
            && part
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"._+~^".contains(&c))
    };
    match rest.iter().rposition(|&c| c == b'-') {
        Some(hyphen) => allowed(&rest[..hyphen]) && allowed(&rest[hyphen + 1..]),
        None => allowed(rest),
    }
}

/// (epoch, version, release) as `rpmverParse` splits them; a missing or empty epoch is
/// `0`, a missing release empty.
fn split(evr: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let digits = evr.iter().take_while(|c| c.is_ascii_digit()).count();
    let (epoch, rest) = match evr.get(digits) {
        Some(b':') if digits > 0 => (&evr[..digits], &evr[digits + 1..]),
        Some(b':') => (&b"0"[..], &evr[1..]),
        _ => (&b"0"[..], evr),
    };
    match rest.iter().rposition(|&c| c == b'-') {
        Some(hyphen) => (epoch, &rest[..hyphen], &rest[hyphen + 1..]),
        None => (epoch, rest, &b""[..]),
    }
}

/// rpm's `rpmvercmp`: segments of digits or of letters, everything else a separator;
/// `~` sorts before anything, even the end; `^` after the end but before anything
/// else; a numeric segment beats an alphabetic one; numbers compare by value.
pub fn rpmvercmp(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        i = skip_separators(a, i);
        j = skip_separators(b, j);
        let (one, two) = (a.get(i).copied(), b.get(j).copied());
        if one == Some(b'~') || two == Some(b'~') {
            if one != Some(b'~') {
                return Ordering::Greater;
            }
            if two != Some(b'~') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if one == Some(b'^') || two == Some(b'^') {
            match (one, two) {
                (None, _) => return Ordering::Less,
                (_, None) => return Ordering::Greater,
                (Some(x), _) if x != b'^' => return Ordering::Greater,
                (_, Some(y)) if y != b'^' => return Ordering::Less,
                _ => {}
            }
            i += 1;
            j += 1;
            continue;
        }
        let Some(first) = one.filter(|_| two.is_some()) else {
            break;
        };
        let numeric = first.is_ascii_digit();
        let in_segment = |c: &u8| {
            if numeric {
                c.is_ascii_digit()
            } else {
                c.is_ascii_alphabetic()
            }
        };
        let end_a = i + a[i..].iter().take_while(|c| in_segment(c)).count();
        let end_b = j + b[j..].iter().take_while(|c| in_segment(c)).count();
        let (seg_a, seg_b) = (&a[i..end_a], &b[j..end_b]);
        if seg_b.is_empty() {
            // Segments of different types: the numeric one is newer.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let by_segment = if numeric {
            cmp_digits(seg_a, seg_b)
        } else {
            seg_a.cmp(seg_b)
        };
        if by_segment != Ordering::Equal {
            return by_segment;
        }
        i = end_a;
        j = end_b;
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, _) => Ordering::Greater,
    }
}

fn skip_separators(s: &[u8], from: usize) -> usize {
    let from = from.min(s.len());
    from + s[from..]
        .iter()
        .take_while(|&&c| !(c.is_ascii_alphanumeric() || c == b'~' || c == b'^'))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(pairs: &[(&str, &str)]) {
        for (low, high) in pairs {
            assert_eq!(compare(low, high), Ordering::Less, "{low} < {high}");
            assert_eq!(compare(high, low), Ordering::Greater, "{high} > {low}");
        }
    }

    /// Cases from rpm's own test suite (`tests/rpmvercmp.at`).
    #[test]
    fn rpm_test_suite_cases() {
        for same in ["1.0", "1.0a", "1.0^", "1.0~rc1", "1.0~rc1^git1", "5.5p1"] {
            assert_eq!(rpmvercmp(same.as_bytes(), same.as_bytes()), Ordering::Equal);
        }
        let pairs = [
            ("1.0", "1.1"),
            ("2.0", "2.0.1"),
            ("2.0.1", "2.0.1a"),
            ("5.5p1", "5.5p2"),
            ("5.5p1", "5.5p10"),
            ("10xyz", "10.1xyz"),
            ("xyz10", "xyz10.1"),
            ("xyz.4", "8"),
            ("xyz.4", "2"),
            ("5.5p2", "5.6p1"),
            ("5.6p1", "6.5p1"),
            ("6.0", "6.0.rc1"),
            ("10a2", "10b2"),
            ("1.0~rc1", "1.0"),
            ("1.0~rc1", "1.0~rc2"),
            ("1.0~rc1~git123", "1.0~rc1"),
            ("1.0", "1.0^"),
            ("1.0", "1.0^git1"),
            ("1.0^git1", "1.0^git2"),
            ("1.0^git1", "1.01"),
            ("1.0^20160101", "1.0.1"),
            ("1.0^20160101^git1", "1.0^20160102"),
            ("1.0~rc1", "1.0~rc1^git1"),
            ("1.0^git1~pre", "1.0^git1"),
        ];
        for (low, high) in pairs {
            assert_eq!(
                rpmvercmp(low.as_bytes(), high.as_bytes()),
                Ordering::Less,
                "{low} < {high}"
            );
            assert_eq!(
                rpmvercmp(high.as_bytes(), low.as_bytes()),
                Ordering::Greater,
                "{high} > {low}"
            );
        }
        // Separators only separate: their kind and count do not matter.
        assert_eq!(rpmvercmp(b"1.0", b"1_0"), Ordering::Equal);
        assert_eq!(rpmvercmp(b"1..0", b"1.0"), Ordering::Equal);
        assert_eq!(rpmvercmp(b"1.", b"1"), Ordering::Equal);
        assert_eq!(rpmvercmp(b"1.0010", b"1.10"), Ordering::Equal);
    }

    #[test]
    fn epoch_version_release() {
        ordered(&[
            ("9.9-9", "1:0.1-1"),
            ("1.0-1", "1.0-2"),
            ("1.0-1.el8", "1.0-1.el9"),
            ("1.0~rc1-1", "1.0-0"),
        ]);
        ordered(&[("1.0-~1", "1.0"), ("1.0", "1.0-1"), ("1.2-3-4", "1.2-4-4")]);
        assert_eq!(compare("0:1.0-1", "1.0-1"), Ordering::Equal);
        assert_eq!(compare(":1.0-1", "1.0-1"), Ordering::Equal);
        assert_eq!(compare("1.0-", "1.0"), Ordering::Equal);
        // Only digits before the colon make an epoch: `a:1` is one version string.
        assert_eq!(compare("a:1", "a.1"), Ordering::Equal);
    }

    #[test]
    fn validity() {
        for good in [
            "1.0",
            "1:1.0-1.el9",
            "1.0~rc1^git2-3",
            "2.28-151.el9_0",
            "0:5.2.15-2",
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "1.0-",
            "-1",
            "1:",
            "a:1.0",
            "1.0 -1",
            "1.0/1",
            "4294967296:1",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
