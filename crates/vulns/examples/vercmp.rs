//! The differential benchmark's view of our version ordering (`bench/versions/run`).
//!
//! `vercmp pairs deb|rpm COUNT SEED` prints COUNT generated pairs as
//! `A<TAB>B<TAB>ORDER`, ORDER being our answer (-1, 0 or 1);
//! `vercmp compare deb|rpm|pep440|semver|maven` reads `A<TAB>B` lines on stdin and
//! prints our answer for each.

#[path = "support/generator.rs"]
mod generator;

use std::cmp::Ordering;
use std::error::Error;
use std::io::{BufRead, BufWriter, Write};

use hids_vulns::version::{compare, Scheme};

fn sign(order: Ordering) -> i8 {
    match order {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

fn scheme(name: &str) -> Option<Scheme> {
    Some(match name {
        "deb" => Scheme::Deb,
        "rpm" => Scheme::Rpm,
        "pep440" => Scheme::Pep440,
        "semver" => Scheme::Semver,
        "maven" => Scheme::Maven,
        _ => return None,
    })
}

fn print_pairs(flavor: &str, count: &str, seed: &str) -> Result<(), Box<dyn Error>> {
    let generator_flavor = generator::Flavor::parse(flavor).ok_or("pairs: flavor is deb or rpm")?;
    let scheme = scheme(flavor).ok_or("pairs: flavor is deb or rpm")?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (a, b) in generator::pairs(generator_flavor, seed.parse()?, count.parse()?) {
        writeln!(out, "{a}\t{b}\t{}", sign(compare(scheme, &a, &b)))?;
    }
    out.flush()?;
    Ok(())
}

fn compare_stdin(name: &str) -> Result<(), Box<dyn Error>> {
    let scheme = scheme(name).ok_or("compare: scheme is deb, rpm, pep440, semver or maven")?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (a, b) = line
            .split_once('\t')
            .ok_or_else(|| format!("no tab in {line:?}"))?;
        writeln!(out, "{}", sign(compare(scheme, a, b)))?;
    }
    out.flush()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["pairs", flavor, count, seed] => print_pairs(flavor, count, seed),
        ["compare", name] => compare_stdin(name),
        _ => Err("usage: vercmp pairs deb|rpm COUNT SEED | vercmp compare SCHEME < PAIRS".into()),
    }
}
