//! Compiled detections: what one field value must look like (wildcards, modifiers), and
//! the boolean tree a rule's condition makes of them.

use regex::{Regex, RegexBuilder};

use crate::fields::{EventView, Slot, Text};

/// Compiled regular expressions stay small: a rule cannot make the engine slow or big.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Literals shorter than this say too little to prefilter on (they occur everywhere).
pub(crate) const MIN_LITERAL: usize = 3;

#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Wildcards inside the value; `longest` is its longest literal part.
    Glob {
        regex: Regex,
        longest: String,
    },
}

impl Pattern {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Exact(n) => s == n,
            Pattern::Prefix(n) => s.starts_with(n.as_str()),
            Pattern::Suffix(n) => s.ends_with(n.as_str()),
            Pattern::Contains(n) => s.contains(n.as_str()),
            Pattern::Glob { regex, .. } => regex.is_match(s),
        }
    }

    fn literal(&self) -> &str {
        match self {
            Pattern::Exact(n) | Pattern::Prefix(n) | Pattern::Suffix(n) | Pattern::Contains(n) => n,
            Pattern::Glob { longest, .. } => longest,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ValueMatch {
    /// Needles are lowercased unless `cased`.
    Str {
        pattern: Pattern,
        cased: bool,
    },
    Regex(Regex),
    /// `field: null`: absent or null.
    Null,
    /// `field|exists: true/false`: present (whatever its value) or not.
    Exists(bool),
}

impl ValueMatch {
    pub(crate) fn matches_slot(&self, slot: &Slot<'_>) -> bool {
        match (self, slot) {
            (ValueMatch::Null, Slot::Absent | Slot::Null) => true,
            (ValueMatch::Null, Slot::Texts(_)) => false,
            (ValueMatch::Exists(want), slot) => matches!(slot, Slot::Absent) != *want,
            (_, Slot::Texts(texts)) => texts.iter().any(|t| self.matches_text(t)),
            (_, Slot::Absent | Slot::Null) => false,
        }
    }

    fn matches_text(&self, t: &Text<'_>) -> bool {
        match self {
            ValueMatch::Str { pattern, cased } => {
                pattern.is_match(if *cased { &t.raw } else { &t.lower })
            }
            ValueMatch::Regex(re) => re.is_match(&t.raw),
            ValueMatch::Null | ValueMatch::Exists(_) => false,
        }
    }

    fn literal(&self) -> Option<&str> {
        match self {
            ValueMatch::Str { pattern, .. } => {
                Some(pattern.literal()).filter(|l| l.len() >= MIN_LITERAL)
            }
            ValueMatch::Regex(_) | ValueMatch::Null | ValueMatch::Exists(_) => None,
        }
    }
}

/// A rule's detection, with its condition applied.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    /// At least `n` of the children (`2 of selection_*`).
    AtLeast(usize, Vec<Node>),
    Field {
        slot: usize,
        value: ValueMatch,
    },
    /// A value without a field: searched in every keyword slot.
    Keyword {
        slots: Vec<usize>,
        value: ValueMatch,
    },
}

impl Node {
    pub(crate) fn eval(&self, ev: &EventView<'_>) -> bool {
        match self {
            Node::And(c) => c.iter().all(|n| n.eval(ev)),
            Node::Or(c) => c.iter().any(|n| n.eval(ev)),
            Node::Not(n) => !n.eval(ev),
            Node::AtLeast(k, c) => c.iter().filter(|n| n.eval(ev)).take(*k).count() >= *k,
            Node::Field { slot, value } => {
                ev.slots.get(*slot).is_some_and(|s| value.matches_slot(s))
            }
            Node::Keyword { slots, value } => slots
                .iter()
                .any(|i| ev.slots.get(*i).is_some_and(|s| value.matches_slot(s))),
        }
    }

    /// Literals at least one of which occurs (ASCII case aside) in some field of every
    /// event this node matches; `None` when no such set is known.
    pub(crate) fn required_literals(&self) -> Option<Vec<String>> {
        match self {
            Node::Field { value, .. } | Node::Keyword { value, .. } => {
                value.literal().map(|l| vec![l.to_ascii_lowercase()])
            }
            Node::Not(_) => None,
            Node::Or(c) => union(c),
            Node::AtLeast(k, c) if *k >= 1 => union(c),
            Node::AtLeast(..) => None,
            Node::And(c) => c
                .iter()
                .filter_map(Node::required_literals)
                .max_by_key(|set| selectivity(set)),
        }
    }
}

fn union(children: &[Node]) -> Option<Vec<String>> {
    let mut all = Vec::new();
    for c in children {
        all.extend(c.required_literals()?);
    }
    all.sort();
    all.dedup();
    Some(all)
}

/// Longer shortest literal first (rarer in benign text), then fewer alternatives.
fn selectivity(set: &[String]) -> (usize, std::cmp::Reverse<usize>) {
    let shortest = set.iter().map(String::len).min().unwrap_or(0);
    (shortest, std::cmp::Reverse(set.len()))
}

/// The value modifiers we honour; anything else refuses the rule.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Modifiers {
    pub(crate) contains: bool,
    pub(crate) startswith: bool,
    pub(crate) endswith: bool,
    pub(crate) all: bool,
    pub(crate) re: bool,
    re_flags: (bool, bool, bool),
    pub(crate) cased: bool,
    pub(crate) exists: bool,
    pub(crate) windash: bool,
}

impl Modifiers {
    pub(crate) fn parse<'a>(names: impl Iterator<Item = &'a str>) -> Result<Modifiers, String> {
        let mut m = Modifiers::default();
        for name in names {
            match name {
                "contains" => m.contains = true,
                "startswith" => m.startswith = true,
                "endswith" => m.endswith = true,
                "all" => m.all = true,
                "re" => m.re = true,
                "i" if m.re => m.re_flags.0 = true,
                "m" if m.re => m.re_flags.1 = true,
                "s" if m.re => m.re_flags.2 = true,
                "cased" => m.cased = true,
                "exists" => m.exists = true,
                "windash" => m.windash = true,
                other => return Err(format!("modifier {other:?} not supported")),
            }
        }
        let placements = [m.contains, m.startswith, m.endswith]
            .iter()
            .filter(|b| **b)
            .count();
        if placements > 1 {
            return Err("modifiers contains, startswith and endswith exclude each other".into());
        }
        if m.re && (placements > 0 || m.windash || m.cased) {
            return Err("modifier re cannot be combined with contains, startswith, endswith, windash or cased".into());
        }
        if m.exists && (placements > 0 || m.re || m.windash || m.cased || m.all) {
            return Err("modifier exists takes no other modifier".into());
        }
        Ok(m)
    }

    /// The matchers for one value of a field (windash can make several, all OR'ed).
    pub(crate) fn compile(&self, value: &str) -> Result<Vec<ValueMatch>, String> {
        if self.re {
            let (i, multi, dot) = self.re_flags;
            let re = RegexBuilder::new(value)
                .case_insensitive(i)
                .multi_line(multi)
                .dot_matches_new_line(dot)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("regular expression {value:?}: {e}"))?;
            return Ok(vec![ValueMatch::Regex(re)]);
        }
        let variants = if self.windash {
            windash(value)?
        } else {
            vec![value.to_owned()]
        };
        variants
            .iter()
            .map(|v| {
                Ok(ValueMatch::Str {
                    pattern: self.pattern(v)?,
                    cased: self.cased,
                })
            })
            .collect()
    }

    fn pattern(&self, value: &str) -> Result<Pattern, String> {
        let mut toks = tokenize(value, self.cased);
        if self.contains || self.endswith {
            toks.insert(0, Tok::Star);
        }
        if self.contains || self.startswith {
            toks.push(Tok::Star);
        }
        toks.dedup_by(|a, b| matches!((a, b), (Tok::Star, Tok::Star)));
        Ok(match toks.as_slice() {
            [] => Pattern::Exact(String::new()),
            [Tok::Lit(l)] => Pattern::Exact(l.clone()),
            [Tok::Star] => Pattern::Contains(String::new()),
            [Tok::Star, Tok::Lit(l)] => Pattern::Suffix(l.clone()),
            [Tok::Lit(l), Tok::Star] => Pattern::Prefix(l.clone()),
            [Tok::Star, Tok::Lit(l), Tok::Star] => Pattern::Contains(l.clone()),
            _ => glob(&toks)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(String),
    Star,
    Quest,
}

/// Sigma's wildcards: `*`, `?`; `\*`, `\?` and `\\` are the plain characters; any other
/// backslash is itself.
fn tokenize(value: &str, cased: bool) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut lit = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&next @ ('*' | '?' | '\\')) => {
                    lit.push(next);
                    chars.next();
                }
                _ => lit.push('\\'),
            },
            '*' | '?' => {
                if !lit.is_empty() {
                    toks.push(Tok::Lit(std::mem::take(&mut lit)));
                }
                toks.push(if c == '*' { Tok::Star } else { Tok::Quest });
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        toks.push(Tok::Lit(lit));
    }
    if !cased {
        for t in &mut toks {
            if let Tok::Lit(l) = t {
                l.make_ascii_lowercase();
            }
        }
    }
    toks
}

fn glob(toks: &[Tok]) -> Result<Pattern, String> {
    let mut re = String::from(r"(?s)\A");
    let mut longest = String::new();
    for t in toks {
        match t {
            Tok::Lit(l) => {
                re.push_str(&regex::escape(l));
                if l.len() > longest.len() {
                    longest = l.clone();
                }
            }
            Tok::Star => re.push_str(".*"),
            Tok::Quest => re.push('.'),
        }
    }
    re.push_str(r"\z");
    // Case is handled by lowercasing both sides, not by the regex.
    let regex = RegexBuilder::new(&re)
        .unicode(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("wildcard value: {e}"))?;
    Ok(Pattern::Glob { regex, longest })
}

const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];
/// 5^4 variants of one value at most.
const MAX_WINDASH_POSITIONS: usize = 4;

/// Every spelling of a value with each dash-like character replaced by each other one.
fn windash(value: &str) -> Result<Vec<String>, String> {
    let positions = value.chars().filter(|c| DASHES.contains(c)).count();
    if positions > MAX_WINDASH_POSITIONS {
        return Err(format!(
            "windash on {value:?}: {positions} dashes or slashes, at most {MAX_WINDASH_POSITIONS} are expanded"
        ));
    }
    let mut out = vec![String::new()];
    for c in value.chars() {
        if DASHES.contains(&c) {
            out = out
                .iter()
                .flat_map(|prefix| DASHES.iter().map(move |d| format!("{prefix}{d}")))
                .collect();
        } else {
            out.iter_mut().for_each(|p| p.push(c));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(m: &Modifiers, v: &str) -> Pattern {
        m.pattern(v).unwrap()
    }

    #[test]
    fn wildcards_and_escapes() {
        let m = Modifiers::default();
        assert!(matches!(pat(&m, "abc"), Pattern::Exact(s) if s == "abc"));
        assert!(matches!(pat(&m, "*abc"), Pattern::Suffix(s) if s == "abc"));
        assert!(matches!(pat(&m, "ABC*"), Pattern::Prefix(s) if s == "abc"));
        assert!(matches!(pat(&m, "*a\\*c*"), Pattern::Contains(s) if s == "a*c"));
        assert!(matches!(pat(&m, "a\\\\b"), Pattern::Exact(s) if s == "a\\b"));
        assert!(matches!(pat(&m, "a\\b"), Pattern::Exact(s) if s == "a\\b"));
        let g = pat(&m, "/usr/bin/python?.*");
        assert!(g.is_match("/usr/bin/python3.11"));
        assert!(!g.is_match("/usr/bin/python3"));
        assert_eq!(g.literal(), "/usr/bin/python");
        let c = Modifiers {
            contains: true,
            ..Modifiers::default()
        };
        assert!(matches!(pat(&c, ""), Pattern::Contains(s) if s.is_empty()));
        assert!(pat(&c, "é?x").is_match("aébxz"));
    }

    #[test]
    fn windash_expands_every_dash() {
        let v = windash("-e").unwrap();
        assert_eq!(v.len(), 5);
        assert!(v.contains(&"/e".to_owned()));
        assert!(windash("a-b-c-d-e-f").is_err());
    }

    #[test]
    fn modifier_errors_name_the_modifier() {
        let e = Modifiers::parse(["base64offset"].into_iter()).unwrap_err();
        assert_eq!(e, "modifier \"base64offset\" not supported");
        assert!(Modifiers::parse(["contains", "endswith"].into_iter()).is_err());
        assert!(Modifiers::parse(["i"].into_iter()).is_err());
        assert!(Modifiers::parse(["re", "i"].into_iter()).is_ok());
    }

    #[test]
    fn huge_regex_is_refused_not_built() {
        let m = Modifiers::parse(["re"].into_iter()).unwrap();
        assert!(m.compile("(a{1000}){1000}").is_err());
    }
}
