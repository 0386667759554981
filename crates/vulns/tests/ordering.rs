//! Differential tests of the dpkg and rpm orderings against the tools themselves:
//! 3,000 generated pairs each against `dpkg --compare-versions` and against librpm
//! (`rpm.labelCompare` through Debian's python3-rpm, one python process for all pairs).
//! `bench/versions/run` does the same with 100,000 pairs each.
//!
//! Needs the Debian packages dpkg and python3-rpm. Without them the tests say so and
//! pass, except under CI (env CI set), where they fail.

#[path = "../examples/support/generator.rs"]
#[allow(dead_code)]
mod generator;

use std::cmp::Ordering;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use generator::Flavor;
use hids_vulns::version::{compare, Scheme};

const PAIRS: usize = 3_000;
const DEB_SEED: u64 = 17;
const RPM_SEED: u64 = 4_18;
/// /usr/bin/python3 explicitly: a python3 earlier on PATH (pyenv) lacks Debian's `rpm`.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn missing_tool(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why} (required under CI)");
    }
    eprintln!("skipping: {why}");
}

/// `dpkg --compare-versions A REL B` as a bool; panics on anything but a yes or a no
/// (dpkg refusing a version means the generator made one it should not have).
fn dpkg_relation(a: &str, relation: &str, b: &str) -> bool {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, relation, b])
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("cannot run dpkg: {error}"));
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("dpkg --compare-versions {a:?} {relation} {b:?} exited with {other:?}"),
    }
}

fn dpkg_order(a: &str, b: &str) -> Ordering {
    if dpkg_relation(a, "lt", b) {
        Ordering::Less
    } else if dpkg_relation(a, "eq", b) {
        Ordering::Equal
    } else {
        Ordering::Greater
    }
}

fn report(tool: &str, disagreements: &[(String, String, Ordering, Ordering)]) {
    for (a, b, ours, theirs) in disagreements.iter().take(20) {
        eprintln!("{tool}: {a:?} vs {b:?}: ours {ours:?}, {tool} {theirs:?}");
    }
    assert!(
        disagreements.is_empty(),
        "{} of {PAIRS} pairs disagree with {tool}",
        disagreements.len()
    );
}

#[test]
fn deb_ordering_matches_dpkg_compare_versions() {
    if Command::new("dpkg").arg("--version").output().is_err() {
        return missing_tool("dpkg not found (Debian package dpkg)");
    }
    let pairs = generator::pairs(Flavor::Deb, DEB_SEED, PAIRS);
    // Two spawns per pair at worst: three threads keep the test to seconds.
    let chunk = PAIRS.div_ceil(3);
    let disagreements: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = pairs
            .chunks(chunk)
            .map(|slice| {
                scope.spawn(move || {
                    slice
                        .iter()
                        .filter_map(|(a, b)| {
                            let (ours, theirs) = (compare(Scheme::Deb, a, b), dpkg_order(a, b));
                            (ours != theirs).then(|| (a.clone(), b.clone(), ours, theirs))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    report("dpkg", &disagreements);
}

#[test]
fn rpm_ordering_matches_librpm_label_compare() {
    let has_rpm_module = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import rpm"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_rpm_module {
        return missing_tool("/usr/bin/python3 cannot import rpm (Debian package python3-rpm)");
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/versions/librpm_compare.py");
    let pairs = generator::pairs(Flavor::Rpm, RPM_SEED, PAIRS);
    let mut child = Command::new(SYSTEM_PYTHON)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = pairs.iter().map(|(a, b)| format!("{a}\t{b}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: python answers as it reads, and a full stdout pipe would
    // otherwise block both sides.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{} failed", script.display());
    writer.join().unwrap().unwrap();
    let answers: Vec<Ordering> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.parse::<i8>().unwrap().cmp(&0))
        .collect();
    assert_eq!(
        answers.len(),
        pairs.len(),
        "librpm answered {} of {} pairs",
        answers.len(),
        pairs.len()
    );
    let disagreements: Vec<_> = pairs
        .iter()
        .zip(answers)
        .filter_map(|((a, b), theirs)| {
            let ours = compare(Scheme::Rpm, a, b);
            (ours != theirs).then(|| (a.clone(), b.clone(), ours, theirs))
        })
        .collect();
    report("librpm", &disagreements);
}

/// Sorting needs a consistent order: the generated pairs give it a thorough workout.
#[test]
fn generated_pairs_are_antisymmetric() {
    for (flavor, scheme) in [(Flavor::Deb, Scheme::Deb), (Flavor::Rpm, Scheme::Rpm)] {
        for (a, b) in generator::pairs(flavor, 1, 20_000) {
            assert_eq!(
                compare(scheme, a.as_str(), &b),
                compare(scheme, &b, &a).reverse(),
                "{a:?} {b:?}"
            );
        }
    }
}
