//! Maven artifact versions as Maven 3.9's `ComparableVersion` orders them: items split
//! at `.`, at `-` (which opens a sub-list) and at every change between digits and
//! letters; numbers compare by value; qualifiers rank `alpha` < `beta` < `milestone` <
//! `rc` (= `cr`) < `snapshot` < `` (= `ga`, `final`, `release`) < `sp` < any other word
//! (those by text), with `a1`, `b1`, `m1` short for alpha, beta, milestone; a number
//! beats a sub-list, which beats a qualifier; trailing zeros and release qualifiers are
//! dropped (`1.0-ga` = `1`). Case-insensitive. Not differentially tested; the unit
//! tests are Maven's own (`ComparableVersionTest`) and the POM reference's examples.
//!
//! Maven compares any string; so does this. Only strings of at most [`MAX_LENGTH`]
//! bytes are parsed (each `-` nests a list, and comparing walks the nesting); longer
//! ones are invalid and sort before every valid version, by their bytes between them.

use std::cmp::Ordering;

use super::{cmp_digits, cmp_with_invalid};

/// Longer strings are not versions; the bound keeps the nesting (one level per `-` or
/// letter-digit change) shallow enough for recursion.
pub const MAX_LENGTH: usize = 256;

const QUALIFIERS: [&str; 7] = ["alpha", "beta", "milestone", "rc", "snapshot", "", "sp"];
/// The rank of the release qualifier `""`: what a missing item compares as.
const RELEASE_RANK: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Digits without leading zeros ("" is 0).
    Number(String),
    /// A qualifier, aliases resolved.
    Text(String),
    List(Vec<Item>),
}

impl Item {
    fn is_null(&self) -> bool {
        match self {
            Item::Number(n) => n.is_empty(),
            Item::Text(t) => t.is_empty(),
            Item::List(items) => items.is_empty(),
        }
    }

    /// `ComparableVersion`'s ordering of known then unknown qualifiers: the index for a
    /// known one, `7-word` for the rest, compared as text.
    fn qualifier_key(text: &str) -> String {
        match QUALIFIERS.iter().position(|q| *q == text) {
            Some(rank) => rank.to_string(),
            None => format!("{}-{text}", QUALIFIERS.len()),
        }
    }

    /// `compareTo(null)`: against a missing item.
    fn cmp_missing(&self) -> Ordering {
        match self {
            Item::Number(n) => {
                if n.is_empty() {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                }
            }
            Item::Text(t) => Item::qualifier_key(t)
                .as_str()
                .cmp(RELEASE_RANK.to_string().as_str()),
            Item::List(items) => items
                .iter()
                .map(Item::cmp_missing)
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal),
        }
    }

    fn compare(&self, other: &Item) -> Ordering {
        match (self, other) {
            (Item::Number(a), Item::Number(b)) => cmp_digits(a.as_bytes(), b.as_bytes()),
            (Item::Number(_), _) => Ordering::Greater,
            (Item::Text(_), Item::Number(_)) | (Item::Text(_), Item::List(_)) => Ordering::Less,
            (Item::Text(a), Item::Text(b)) => Item::qualifier_key(a).cmp(&Item::qualifier_key(b)),
            (Item::List(_), Item::Number(_)) => Ordering::Less,
            (Item::List(_), Item::Text(_)) => Ordering::Greater,
            (Item::List(a), Item::List(b)) => cmp_lists(a, b),
        }
    }
}

/// Item by item; a missing item compares as Maven's `compareTo(null)`.
fn cmp_lists(a: &[Item], b: &[Item]) -> Ordering {
    for index in 0..a.len().max(b.len()) {
        let order = match (a.get(index), b.get(index)) {
            (Some(x), Some(y)) => x.compare(y),
            (Some(x), None) => x.cmp_missing(),
            (None, Some(y)) => y.cmp_missing().reverse(),
            (None, None) => Ordering::Equal,
        };
        if order.is_ne() {
            return order;
        }
    }
    Ordering::Equal
}

fn number(digits: &str) -> Item {
    Item::Number(digits.trim_start_matches('0').to_string())
}

fn text(word: &str, followed_by_digit: bool) -> Item {
    let word = match word {
        "a" if followed_by_digit => "alpha",
        "b" if followed_by_digit => "beta",
        "m" if followed_by_digit => "milestone",
        "ga" | "final" | "release" => "",
        "cr" => "rc",
        other => other,
    };
    Item::Text(word.to_string())
}

fn item(is_digit: bool, buf: &str) -> Item {
    if is_digit {
        number(buf)
    } else {
        text(buf, false)
    }
}

/// The parse as a stack of open lists: each `-` and each digit/letter change opens one
/// inside the current; at the end they are closed (normalized) innermost first.
struct Parser {
    open: Vec<Vec<Item>>,
}

impl Parser {
    fn current(&mut self) -> &mut Vec<Item> {
        if self.open.is_empty() {
            self.open.push(Vec::new());
        }
        let last = self.open.len() - 1;
        &mut self.open[last]
    }

    fn add(&mut self, item: Item) {
        self.current().push(item);
    }

    fn open_list(&mut self) {
        self.open.push(Vec::new());
    }

    fn finish(mut self) -> Vec<Item> {
        let mut inner: Option<Vec<Item>> = None;
        while let Some(mut list) = self.open.pop() {
            if let Some(child) = inner.take() {
                list.push(Item::List(child));
            }
            normalize(&mut list);
            inner = Some(list);
        }
        inner.unwrap_or_default()
    }
}

/// Drops trailing null items (0, "", empty lists), looking past non-null sub-lists.
fn normalize(list: &mut Vec<Item>) {
    let mut index = list.len();
    while index > 0 {
        index -= 1;
        if list[index].is_null() {
            list.remove(index);
        } else if !matches!(list[index], Item::List(_)) {
            break;
        }
    }
}

fn parse(version: &str) -> Option<Vec<Item>> {
    if version.len() > MAX_LENGTH {
        return None;
    }
    let version = version.to_lowercase();
    let mut parser = Parser {
        open: vec![Vec::new()],
    };
    let mut is_digit = false;
    let mut start = 0;
    for (i, c) in version.char_indices() {
        match c {
            '.' | '-' => {
                let buf = &version[start..i];
                parser.add(if buf.is_empty() {
                    number("0")
                } else {
                    item(is_digit, buf)
                });
                start = i + 1;
                if c == '-' {
                    parser.open_list();
                }
            }
            c if c.is_ascii_digit() => {
                if !is_digit && i > start {
                    // 1.0.0.X1 < 1.0.0-X2: a qualifier after a dot is treated as after a dash.
                    if !parser.current().is_empty() {
                        parser.open_list();
                    }
                    parser.add(text(&version[start..i], true));
                    start = i;
                    parser.open_list();
                }
                is_digit = true;
            }
            _ => {
                if is_digit && i > start {
                    parser.add(number(&version[start..i]));
                    start = i;
                    parser.open_list();
                }
                is_digit = false;
            }
        }
    }
    if version.len() > start {
        if !is_digit && !parser.current().is_empty() {
            parser.open_list();
        }
        parser.add(item(is_digit, &version[start..]));
    }
    Some(parser.finish())
}

/// Compares two Maven versions; see the module doc for strings over [`MAX_LENGTH`].
pub fn compare(a: &str, b: &str) -> Ordering {
    cmp_with_invalid(parse(a).map(Root), a, parse(b).map(Root), b)
}

/// Whether the version is one Maven would reasonably publish: non-empty, at most
/// [`MAX_LENGTH`] bytes, no white space or control characters (Maven itself takes any
/// string).
pub fn is_valid(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_LENGTH
        && !version.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[derive(PartialEq, Eq)]
struct Root(Vec<Item>);

impl Ord for Root {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_lists(&self.0, &other.0)
    }
}

impl PartialOrd for Root {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_order(versions: &[&str]) {
        for (i, low) in versions.iter().enumerate() {
            for high in &versions[i + 1..] {
                assert_eq!(compare(low, high), Ordering::Less, "{low} < {high}");
                assert_eq!(compare(high, low), Ordering::Greater, "{high} > {low}");
            }
        }
    }

    /// `ComparableVersionTest.VERSIONS_QUALIFIER`.
    #[test]
    fn maven_qualifier_order() {
        in_order(&[
            "1-alpha2snapshot",
            "1-alpha2",
            "1-alpha-123",
            "1-beta-2",
            "1-beta123",
            "1-m2",
            "1-m11",
            "1-rc",
            "1-cr2",
            "1-rc123",
            "1-SNAPSHOT",
            "1",
            "1-sp",
            "1-sp2",
            "1-sp123",
            "1-abc",
            "1-def",
            "1-pom-1",
            "1-1-snapshot",
            "1-1",
            "1-2",
            "1-123",
        ]);
    }

    /// `ComparableVersionTest.VERSIONS_NUMBER` as of Maven 3.9 (MNG-7644 moved `2.0.a`).
    #[test]
    fn maven_number_order() {
        in_order(&[
            "2.0", "2.0.a", "2-1", "2.0.2", "2.0.123", "2.1.0", "2.1-a", "2.1b", "2.1-c", "2.1-1",
            "2.1.0.1", "2.2", "2.123", "11.a2", "11.a11", "11.b2", "11.b11", "11.m2", "11.m11",
            "11", "11.a", "11b", "11c", "11m",
        ]);
    }

    #[test]
    fn maven_equal_versions() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1.0.0"),
            ("1", "1-0"),
            ("1.0", "1.0-0"),
            ("1a", "1-a"),
            ("1a", "1.0-a"),
            ("1.0a", "1-a"),
            ("1x", "1.0.0-x"),
            ("1ga", "1"),
            ("1release", "1"),
            ("1final", "1"),
            ("1cr", "1rc"),
            ("1a1", "1-alpha-1"),
            ("1b2", "1-beta-2"),
            ("1m3", "1-milestone-3"),
            ("1X", "1x"),
            ("1FINAL", "1"),
            ("1m3", "1MILESTONE3"),
            ("0000000000000000001", "1"),
            ("000", "0"),
            (
                "1-abcdefghijklmnopqrstuvwxyz",
                "1-ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            ),
        ] {
            assert_eq!(compare(a, b), Ordering::Equal, "{a} == {b}");
        }
    }

    #[test]
    fn maven_comparisons() {
        for (low, high) in [
            ("1", "2"),
            ("1.0.1", "1.1"),
            ("1.0-alpha-1", "1.0"),
            ("1.0-alpha-1", "1.0-beta-1"),
            ("1.0-SNAPSHOT", "1.0"),
            ("1.0-alpha-1-SNAPSHOT", "1.0-alpha-1"),
            ("1.0", "1.0-1"),
            ("1.0.0", "1.0-1"),
            ("2.0-1", "2.0.1"),
            ("2.0.1-klm", "2.0.1-lmn"),
            ("2.0.1", "2.0.1-xyz"),
            ("2.0.1-xyz", "2.0.1-123"),
            // MNG-5568, MNG-6572 and MNG-6964.
            ("6.1.0rc3", "6.1.0"),
            ("6.1.0rc3", "6.1H.5-beta"),
            ("6.1.0", "6.1H.5-beta"),
            ("20190126.230843", "1234567890.12345"),
            (
                "123456789012345.1H.5-beta",
                "12345678901234567890.1H.5-beta",
            ),
            ("1-0.alpha", "1"),
            ("1-0.beta", "1"),
            ("1-0.alpha", "1-0.beta"),
            // The POM reference's examples.
            ("1-snapshot", "1"),
            ("1", "1-sp"),
            ("1-foo2", "1-foo10"),
            ("1-foo", "1-1"),
            ("1-1", "1.1"),
            ("1-ga", "1-sp"),
            ("1-ga.1", "1-sp.1"),
            ("1-sp-1", "1-ga-1"),
        ] {
            assert_eq!(compare(low, high), Ordering::Less, "{low} < {high}");
            assert_eq!(compare(high, low), Ordering::Greater, "{high} > {low}");
        }
    }

    #[test]
    fn long_strings_are_invalid_not_deep() {
        let deep = "1-".repeat(100_000);
        assert!(!is_valid(&deep));
        assert_eq!(compare(&deep, "1"), Ordering::Less);
        assert!(is_valid("1.0-SNAPSHOT"));
        assert!(!is_valid("1.0 beta"));
    }
}
