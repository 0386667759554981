//! Debian version ordering, exactly as dpkg 1.21 does it (`lib/dpkg/version.c`):
//! `[epoch:]upstream[-revision]`, the epoch compared as a number, then upstream and
//! revision by `verrevcmp`: alternating runs of non-digits, compared character by
//! character with `~` before everything (even the end of the string), the end next,
//! then letters, then every other character; and runs of digits compared as numbers.
//!
//! [`compare`] accepts whatever `dpkg --compare-versions` accepts, including what dpkg
//! only warns about (an upstream part that does not start with a digit, characters
//! outside the allowed set), and parses leniently what dpkg would refuse, so the order
//! stays total (see [`compare`]). [`is_valid`] is stricter than dpkg: it also rejects
//! what dpkg warns about, because a feed or status file with such a version is broken
//! in a way worth counting.

use std::cmp::Ordering;

use super::{c_string, cmp_digits};

/// One version split as dpkg splits it. The epoch is kept as its digits (compared as a
/// number of any length) so that a lenient parse never overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts<'a> {
    epoch: &'a [u8],
    upstream: &'a [u8],
    revision: &'a [u8],
}

/// Compares two Debian versions as `dpkg --compare-versions` does.
///
/// Total: a version dpkg refuses is split leniently instead of rejected. An epoch that
/// is not a number (`x:1`) leaves the whole string as upstream version with epoch 0;
/// an empty revision (`1.0-`) or upstream (`-1`) compares as empty; surrounding white
/// space is ignored; a NUL ends the string, as it would for dpkg.
pub fn compare(a: &str, b: &str) -> Ordering {
    let a = split(c_string(a));
    let b = split(c_string(b));
    cmp_digits(a.epoch, b.epoch)
        .then_with(|| verrevcmp(a.upstream, b.upstream))
        .then_with(|| verrevcmp(a.revision, b.revision))
}

/// Whether dpkg parses the version without an error or a warning: an optional epoch of
/// digits that fits a C int, a non-empty upstream version starting with a digit and made
/// of alphanumerics and `.+-~:`, and an optional non-empty revision made of
/// alphanumerics and `.+~`. Surrounding white space is allowed, as dpkg trims it.
pub fn is_valid(version: &str) -> bool {
    let trimmed = version.trim_matches(|c: char| c.is_ascii_whitespace());
    if trimmed.is_empty() || trimmed.bytes().any(|c| c.is_ascii_whitespace() || c == 0) {
        return false;
    }
    let bytes = trimmed.as_bytes();
    let rest = match trimmed.find(':') {
        Some(colon) => {
            let epoch = &bytes[..colon];
            if !epoch_fits(epoch) {
                return false;
            }
            &bytes[colon + 1..]
        }
        None => bytes,
    };
    let (upstream, revision) = match rest.iter().rposition(|&c| c == b'-') {
        Some(hyphen) => {
            let revision = &rest[hyphen + 1..];
            if revision.is_empty() {
                return false;
            }
            (&rest[..hyphen], revision)
        }
        None => (rest, &[][..]),
    };
    upstream.first().is_some_and(u8::is_ascii_digit)
        && upstream
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b".+-~:".contains(&c))
        && revision
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b".+~".contains(&c))
}

/// dpkg stores the epoch in an `int` and refuses anything above `INT_MAX`.
fn epoch_fits(epoch: &[u8]) -> bool {
    !epoch.is_empty()
        && epoch.iter().all(u8::is_ascii_digit)
        && cmp_digits(epoch, i32::MAX.to_string().as_bytes()) != Ordering::Greater
}

fn split(version: &[u8]) -> Parts<'_> {
    let version = version.trim_ascii();
    let (epoch, rest) = match version.iter().position(|&c| c == b':') {
        Some(colon) => match epoch_digits(&version[..colon]) {
            Some(digits) => (digits, &version[colon + 1..]),
            None => (&b""[..], version),
        },
        None => (&b""[..], version),
    };
    let (upstream, revision) = match rest.iter().rposition(|&c| c == b'-') {
        Some(hyphen) => (&rest[..hyphen], &rest[hyphen + 1..]),
        None => (rest, &b""[..]),
    };
    Parts {
        epoch,
        upstream,
        revision,
    }
}

/// The digits of an epoch as dpkg's `strtol` reads it: an optional sign, then digits.
/// A negative epoch is refused by dpkg unless it is zero (`-0:`).
fn epoch_digits(epoch: &[u8]) -> Option<&[u8]> {
    let (negative, digits) = match epoch.split_first() {
        Some((b'+', rest)) => (false, rest),
        Some((b'-', rest)) => (true, rest),
        _ => (false, epoch),
    };
    let numeric = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
    let zero = digits.iter().all(|&c| c == b'0');
    (numeric && (!negative || zero)).then_some(digits)
}

/// dpkg's weight of one character of a non-digit run; `None` is the end of the string.
/// Bytes above 0x7f are a signed `char` in dpkg on the platforms we build for, so they
/// weigh `c - 256 + 256`: after letters, before ASCII punctuation.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) if c >= 0x80 => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while a.get(i).is_some_and(|c| !c.is_ascii_digit())
            || b.get(j).is_some_and(|c| !c.is_ascii_digit())
        {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        let digits_a = digit_run(a, i);
        let digits_b = digit_run(b, j);
        let by_number = cmp_digits(&a[i..digits_a], &b[j..digits_b]);
        if by_number != Ordering::Equal {
            return by_number;
        }
        i = digits_a;
        j = digits_b;
    }
    Ordering::Equal
}

/// The end of the run of digits starting at `start` (which may be past the end).
fn digit_run(s: &[u8], start: usize) -> usize {
    let start = start.min(s.len());
    start + s[start..].iter().take_while(|c| c.is_ascii_digit()).count()
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

    #[test]
    fn tilde_sorts_before_everything_even_the_end() {
        ordered(&[
            ("1.0~rc1", "1.0"),
            ("1.0~~", "1.0~"),
            ("1.0~~a", "1.0~"),
            ("1.0", "1.0a"),
            ("1.0", "1.0+b1"),
        ]);
        ordered(&[("1.0-1~bpo1", "1.0-1"), ("2.30-0ubuntu1~", "2.30-0ubuntu1")]);
    }

    #[test]
    fn letters_sort_before_other_characters() {
        ordered(&[("1a", "1+"), ("1z", "1."), ("1.0a", "1.0+"), ("1Z", "1a")]);
    }

    #[test]
    fn digits_compare_as_numbers_of_any_length() {
        ordered(&[
            ("1.9", "1.10"),
            ("1.09", "1.10"),
            ("99999999999999999999", "100000000000000000000"),
        ]);
        assert_eq!(compare("1.010", "1.10"), Ordering::Equal);
        assert_eq!(compare("1.0", "1.00"), Ordering::Equal);
    }

    /// The `debversion` crate gets this one wrong: the empty digit run after `a` in `1a`
    /// is 0, equal to `1a0`'s.
    #[test]
    fn trailing_zero_run_equals_nothing() {
        assert_eq!(compare("1a", "1a0"), Ordering::Equal);
        assert_eq!(compare("1.0", "1.0.0"), Ordering::Less);
    }

    #[test]
    fn epoch_then_upstream_then_revision() {
        ordered(&[
            ("9.9", "1:0.1"),
            ("1:1.0-9", "1:1.1-1"),
            ("1.0-1", "1.0-2"),
            ("1.0", "1.0-1"),
        ]);
        assert_eq!(compare("1.0", "1.0-0"), Ordering::Equal);
        ordered(&[
            ("1.0-a-1", "1.0-a-2"),
            ("1.0-1", "1.0-1.1"),
            ("5.2.15-2", "5.2.15-2+b8"),
        ]);
        assert_eq!(compare("0:1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare("00:1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare("1:2:3", "1:2:3"), Ordering::Equal);
    }

    #[test]
    fn lenient_on_what_dpkg_refuses() {
        assert_eq!(compare("x:1", "x:1"), Ordering::Equal);
        assert_eq!(compare(" 1.0 ", "1.0"), Ordering::Equal);
        assert_eq!(compare("1.0-", "1.0"), Ordering::Equal);
        assert_eq!(compare("1.0\0junk", "1.0"), Ordering::Equal);
        assert_eq!(compare("", "0"), Ordering::Equal);
        ordered(&[("~", ""), ("-1:1", "1")]);
    }

    #[test]
    fn validity_follows_dpkg_errors_and_warnings() {
        for good in [
            "0",
            "1.0",
            "1:1.0-1",
            "2.30-0ubuntu1~18.04",
            "1.0+dfsg-1+b1",
            "1:2:3-4",
            " 1.0 ",
            "7:1.0",
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "", " ", "1.0-", ":1.0", "1:", "x:1.0", "-1:1.0", "a1.0", "1.0_1", "1.0-1_1", "1 0",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(!is_valid("-1"), "empty upstream");
        assert!(!is_valid("2147483648:1"), "epoch above INT_MAX");
        assert!(is_valid("2147483647:1"));
        assert!(!is_valid("1.0-1:2"), "colon in revision");
    }
}
