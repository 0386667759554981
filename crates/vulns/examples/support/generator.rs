//! Random version pairs for the differential tests against dpkg and librpm, shared by
//! `tests/ordering.rs` and `examples/vercmp.rs` (so the benchmark and the test draw
//! the same pairs from the same seed). A hand-rolled PRNG keeps the crate free of a
//! `rand` dependency and the sequence fixed across toolchains.
//!
//! The pairs aim at where orderings go wrong: epochs with leading zeros, `~` and `^`,
//! `+`, letters against digits, digit runs longer than 64 bits, leading zeros, missing
//! and empty revisions, `-` and `:` inside the upstream part, a byte above 0x7f. The
//! second version of a pair is usually an edit of the first, so the two share a prefix
//! and the comparison reaches the interesting part.

/// splitmix64: tiny, fast, and good enough to spread test cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[self.below(choices.len())]
    }
}

/// Which tool the pair is meant for: dpkg refuses some strings rpm takes and the other
/// way round, and `^` means something only to rpm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Deb,
    Rpm,
}

impl Flavor {
    pub fn parse(name: &str) -> Option<Flavor> {
        match name {
            "deb" => Some(Flavor::Deb),
            "rpm" => Some(Flavor::Rpm),
            _ => None,
        }
    }
}

fn digits(rng: &mut Rng) -> String {
    let len = match rng.below(100) {
        0..=59 => 1,
        60..=84 => 2,
        85..=93 => 3 + rng.below(4),
        _ => 19 + rng.below(25),
    };
    let mut out: String = (0..len)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    if rng.percent(10) {
        out.insert_str(0, &"0".repeat(1 + rng.below(3)));
    }
    out
}

fn token(rng: &mut Rng, flavor: Flavor) -> String {
    match rng.below(100) {
        0..=39 => digits(rng),
        40..=59 => rng
            .pick(&[
                "a", "b", "z", "A", "Z", "rc", "beta", "dfsg", "git", "el", "p", "ubuntu", "bpo",
            ])
            .to_string(),
        60..=74 => ".".to_string(),
        75..=81 => "~".to_string(),
        82..=87 => "+".to_string(),
        88..=91 => "-".to_string(),
        92..=94 => if flavor == Flavor::Rpm { "^" } else { ":" }.to_string(),
        95..=97 => if flavor == Flavor::Rpm { "_" } else { "~~" }.to_string(),
        _ => "é".to_string(),
    }
}

fn part(rng: &mut Rng, flavor: Flavor, max_tokens: usize) -> String {
    let count = 1 + rng.below(max_tokens);
    (0..count).map(|_| token(rng, flavor)).collect()
}

/// A version as three parts, so that edits can aim at one of them.
#[derive(Clone)]
struct Parts {
    epoch: Option<String>,
    upstream: String,
    revision: Option<String>,
}

impl Parts {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(epoch) = &self.epoch {
            out.push_str(epoch);
            out.push(':');
        }
        out.push_str(&self.upstream);
        if let Some(revision) = &self.revision {
            out.push('-');
            out.push_str(revision);
        }
        out
    }
}

fn fresh(rng: &mut Rng, flavor: Flavor) -> Parts {
    let epoch = rng.percent(25).then(|| match rng.below(10) {
        0 => "0".to_string(),
        1 => "00".to_string(),
        2 if flavor == Flavor::Rpm => String::new(),
        _ => digits(rng).chars().take(9).collect(),
    });
    // Mostly a leading digit, as policy wants; the rest still compares (with a warning).
    let mut upstream = if rng.percent(92) {
        digits(rng)
    } else {
        String::new()
    };
    upstream.push_str(&part(rng, flavor, 8));
    let revision = rng.percent(60).then(|| part(rng, flavor, 5));
    Parts {
        epoch,
        upstream,
        revision,
    }
}

fn edit(rng: &mut Rng, flavor: Flavor, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = rng.below(chars.len() + 1);
    match rng.below(5) {
        0 if at < chars.len() => {
            chars.remove(at);
        }
        1 if at < chars.len() => {
            let replacement: Vec<char> = token(rng, flavor).chars().collect();
            chars.splice(at..at + 1, replacement);
        }
        2 => chars.extend(token(rng, flavor).chars()),
        3 => chars.extend(["0", "a", "~", "^", ".0", "+b1"][rng.below(6)].chars()),
        _ => {
            let inserted: Vec<char> = token(rng, flavor).chars().collect();
            chars.splice(at..at, inserted);
        }
    }
    chars.into_iter().collect()
}

fn mutate(rng: &mut Rng, flavor: Flavor, parts: &Parts) -> Parts {
    let mut out = parts.clone();
    match rng.below(10) {
        0 => {
            out.epoch = if out.epoch.is_some() && rng.percent(50) {
                None
            } else {
                Some(rng.pick(&["0", "00", "1", "01", "2"]).to_string())
            }
        }
        1..=4 => out.upstream = edit(rng, flavor, &out.upstream),
        5..=7 => out.revision = Some(edit(rng, flavor, out.revision.as_deref().unwrap_or(""))),
        8 => {
            out.revision = if out.revision.is_some() {
                None
            } else {
                Some(part(rng, flavor, 3))
            }
        }
        _ => out = fresh(rng, flavor),
    }
    out
}

/// Whether dpkg compares the string at all (it refuses, rather than warns about, these).
fn dpkg_accepts(version: &str) -> bool {
    let rest = match version.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty()
                || epoch.len() > 9
                || !epoch.bytes().all(|c| c.is_ascii_digit())
                || rest.is_empty()
            {
                return false;
            }
            rest
        }
        None => version,
    };
    let upstream_ok = match rest.rsplit_once('-') {
        Some((upstream, revision)) => !upstream.is_empty() && !revision.is_empty(),
        None => !rest.is_empty(),
    };
    // A leading `-` would read as an option to `dpkg --compare-versions`.
    upstream_ok && !version.starts_with('-')
}

/// Whether `rpm.labelCompare` takes the string: it refuses an empty version part.
fn rpm_accepts(evr: &str) -> bool {
    let digits = evr.bytes().take_while(u8::is_ascii_digit).count();
    let rest = if evr[digits..].starts_with(':') {
        &evr[digits + 1..]
    } else {
        evr
    };
    let version = rest.rsplit_once('-').map_or(rest, |(version, _)| version);
    !version.is_empty()
}

fn acceptable(flavor: Flavor, version: &str) -> bool {
    match flavor {
        Flavor::Deb => dpkg_accepts(version),
        Flavor::Rpm => rpm_accepts(version),
    }
}

/// The next pair: the second an edit of the first four times in five.
pub fn pair(rng: &mut Rng, flavor: Flavor) -> (String, String) {
    loop {
        let first = fresh(rng, flavor);
        let second = if rng.percent(80) {
            mutate(rng, flavor, &first)
        } else {
            fresh(rng, flavor)
        };
        let (a, b) = (first.render(), second.render());
        if acceptable(flavor, &a) && acceptable(flavor, &b) {
            return if rng.percent(50) { (a, b) } else { (b, a) };
        }
    }
}

/// `count` pairs from `seed`.
pub fn pairs(flavor: Flavor, seed: u64, count: usize) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| pair(&mut rng, flavor)).collect()
}
