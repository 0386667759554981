//! Python package versions as PEP 440 orders them (the rules of `packaging.version`):
//! `[N!]N(.N)*[{a|b|rc}N][.postN][.devN][+local]`, with the spellings PEP 440 accepts
//! and normalizes (`alpha`, `beta`, `c`, `pre`, `preview`, `-N` for a post release,
//! `rev`, `r`, `-`/`_`/`.` separators, a leading `v`, any case, surrounding white
//! space). Not differentially tested against `packaging`; the unit tests are PEP 440's
//! own examples.
//!
//! A version that does not parse (pre-PEP 440 "legacy" versions) sorts before every
//! valid one; two of them compare by their bytes.

use std::cmp::Ordering;

use super::{cmp_digits, cmp_with_invalid};

/// A number of any size, compared by value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Number(String);

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_digits(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The pre-release slot of packaging's sort key: a dev-only release sorts before every
/// pre-release, a final release after them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pre {
    DevOnly,
    Labelled(u8, Number),
    Final,
}

/// A local segment: numbers sort after strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LocalPart {
    Text(String),
    Number(Number),
}

/// Field order is the sort order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    epoch: Number,
    release: Vec<Number>,
    pre: Pre,
    post: Option<Number>,
    /// `None` sorts first, so a missing dev release is stored as the largest key.
    dev: (bool, Option<Number>),
    local: Option<Vec<LocalPart>>,
}

/// Compares two PEP 440 versions; see the module doc for versions that do not parse.
pub fn compare(a: &str, b: &str) -> Ordering {
    cmp_with_invalid(parse(a), a, parse(b), b)
}

/// Whether the version parses under PEP 440.
pub fn is_valid(version: &str) -> bool {
    parse(version).is_some()
}

/// A cursor over the lower-cased version.
struct Cursor<'a> {
    text: &'a str,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, prefix: &str) -> bool {
        match self.text.strip_prefix(prefix) {
            Some(rest) => {
                self.text = rest;
                true
            }
            None => false,
        }
    }

    fn number(&mut self) -> Option<Number> {
        let len = self.text.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let (digits, rest) = self.text.split_at(len);
        self.text = rest;
        Some(Number(digits.trim_start_matches('0').to_string()))
    }

    fn separator(&mut self) -> bool {
        self.eat("-") || self.eat("_") || self.eat(".")
    }

    /// `[sep]label[sep][N]` for the first label that matches, the cursor left alone
    /// when none does.
    fn labelled(&mut self, labels: &[&str]) -> Option<(&'static str, Number)> {
        let saved = self.text;
        self.separator();
        for label in labels {
            if self.eat(label) {
                let before_number = self.text;
                self.separator();
                let number = self.number().unwrap_or_else(|| {
                    self.text = before_number;
                    Number(String::new())
                });
                return Some((normalize_label(label), number));
            }
        }
        self.text = saved;
        None
    }
}

fn normalize_label(label: &str) -> &'static str {
    match label {
        "a" | "alpha" => "a",
        "b" | "beta" => "b",
        "c" | "rc" | "pre" | "preview" => "rc",
        "post" | "rev" | "r" => "post",
        _ => "dev",
    }
}

fn parse(version: &str) -> Option<Key> {
    let lower = version.trim().to_ascii_lowercase();
    let mut cursor = Cursor { text: &lower };
    cursor.eat("v");
    let mut release = vec![cursor.number()?];
    let epoch = if cursor.eat("!") {
        Some(release.remove(0))
    } else {
        None
    };
    if epoch.is_some() {
        release.push(cursor.number()?);
    }
    while cursor.text.starts_with('.') && cursor.text[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        cursor.eat(".");
        release.push(cursor.number()?);
    }
    let pre = cursor.labelled(&["alpha", "a", "beta", "b", "preview", "pre", "c", "rc"]);
    let post = post_release(&mut cursor);
    let dev = cursor.labelled(&["dev"]).map(|(_, number)| number);
    let local = if cursor.eat("+") {
        Some(local_parts(cursor.text)?)
    } else {
        None
    };
    if local.is_none() && !cursor.text.is_empty() {
        return None;
    }
    while release.len() > 1 && release.last().is_some_and(|n| n.0.is_empty()) {
        release.pop();
    }
    let pre = match (pre, &post, &dev) {
        (Some((label, number)), _, _) => Pre::Labelled(label_rank(label), number),
        (None, None, Some(_)) => Pre::DevOnly,
        (None, _, _) => Pre::Final,
    };
    Some(Key {
        epoch: epoch.unwrap_or(Number(String::new())),
        release,
        pre,
        post,
        dev: (dev.is_none(), dev),
        local,
    })
}

fn label_rank(label: &str) -> u8 {
    match label {
        "a" => 0,
        "b" => 1,
        _ => 2,
    }
}

/// `-N` (the implicit post release) or `[sep]post|rev|r[sep][N]`.
fn post_release(cursor: &mut Cursor<'_>) -> Option<Number> {
    let saved = cursor.text;
    if cursor.eat("-") {
        if let Some(number) = cursor.number() {
            return Some(number);
        }
        cursor.text = saved;
    }
    cursor
        .labelled(&["post", "rev", "r"])
        .map(|(_, number)| number)
}

/// `[a-z0-9]+([-_.][a-z0-9]+)*`, all of the rest of the string.
fn local_parts(text: &str) -> Option<Vec<LocalPart>> {
    text.split(['-', '_', '.'])
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|c| c.is_ascii_alphanumeric()) {
                None
            } else if part.bytes().all(|c| c.is_ascii_digit()) {
                Some(LocalPart::Number(Number(
                    part.trim_start_matches('0').to_string(),
                )))
            } else {
                Some(LocalPart::Text(part.to_string()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ordering example of PEP 440 ("Summary of permitted suffixes and relative
    /// ordering"), in increasing order.
    #[test]
    fn pep440_summary_example_is_in_order() {
        let versions = [
            "1.dev0",
            "1.0.dev456",
            "1.0a1",
            "1.0a2.dev456",
            "1.0a12.dev456",
            "1.0a12",
            "1.0b1.dev456",
            "1.0b2",
            "1.0b2.post345.dev456",
            "1.0b2.post345",
            "1.0rc1.dev456",
            "1.0rc1",
            "1.0",
            "1.0+abc.5",
            "1.0+abc.7",
            "1.0+5",
            "1.0.post456.dev34",
            "1.0.post456",
            "1.0.15",
            "1.1.dev1",
        ];
        super::super::assert_ascending(compare, &versions);
    }

    #[test]
    fn normalized_spellings_are_equal() {
        for (a, b) in [
            ("1.0", "1.0.0"),
            ("1.0", "v1.0"),
            ("1.0ALPHA1", "1.0a1"),
            ("1.0-beta.2", "1.0b2"),
            ("1.0c1", "1.0rc1"),
            ("1.0pre1", "1.0rc1"),
            ("1.0-1", "1.0.post1"),
            ("1.0.rev1", "1.0.post1"),
            ("1.0-r", "1.0.post0"),
            ("1.0a", "1.0a0"),
            ("1.0.dev", "1.0.dev0"),
            ("0!1.0", "1.0"),
            ("1.0+ubuntu-1", "1.0+ubuntu.1"),
            ("1.0+01", "1.0+1"),
            (" 1.0\n", "1.0"),
            ("1.01", "1.1"),
        ] {
            assert_eq!(compare(a, b), Ordering::Equal, "{a} == {b}");
        }
    }

    #[test]
    fn epochs_and_invalid_versions() {
        assert_eq!(compare("1!0.1", "2024.1"), Ordering::Greater);
        assert_eq!(compare("not a version", "0.0.1"), Ordering::Less);
        assert_eq!(compare("1.0.post", "1.0"), Ordering::Greater);
        for bad in [
            "",
            "1.0-",
            "1.0+",
            "1.0+a..b",
            "french toast",
            "1.0.x",
            "1!",
            "1.0a1b1",
            "v",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        for good in [
            "2!1.0.post1.dev2+local.7",
            "1.0rc1",
            "0.9.8.1",
            "1.0.0-alpha.1",
        ] {
            assert!(is_valid(good), "{good}");
        }
    }
}
