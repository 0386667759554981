//! Rules that are wrong in every way we could think of: refused with a reason that says
//! what, never a panic, and the rest of the set still loads.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::sync::Arc;

use hids_detect::{Detector, FrequencyLimits, Level, RuleSet, RuleStatus};
use serde_json::json;

fn one(text: &str) -> (RuleStatus, hids_detect::RuleInfo) {
    let set = RuleSet::from_sources(vec![("t.yml".into(), Ok(text.to_owned()))]);
    let info = set.rules().first().cloned().unwrap();
    (info.status.clone(), info)
}

fn refusal(text: &str) -> String {
    match one(text).0 {
        RuleStatus::Refused(why) => why,
        RuleStatus::Loaded => panic!("loaded:\n{text}"),
    }
}

const HEAD: &str = "title: t\nid: r1\nlogsource: {category: process_creation, product: linux}\n";

fn rule(detection: &str) -> String {
    format!("{HEAD}detection:\n{detection}")
}

#[test]
fn reasons_say_exactly_what() {
    let cases = [
        (rule("  s:\n    CommandLine|base64offset|contains: x\n  condition: s\n"), "search s: modifier \"base64offset\" not supported"),
        (rule("  s:\n    Hashes: x\n  condition: s\n"), "field \"Hashes\" is not in our exec events"),
        (rule("  s:\n    Image: x\n  condition: s and t\n"), "condition names \"t\", which the detection does not define"),
        (rule("  s:\n    Image: x\n  condition: s | count() > 5\n"), "aggregations (|) are not supported"),
        (rule("  s:\n    Image: x\n  condition: 1 of f*\n"), "matches no search"),
        (rule("  s:\n    Image: x\n  condition: (s\n"), "condition ends too early"),
        (rule("  s:\n    Image: x\n  condition: s s\n"), "unexpected"),
        (rule("  s:\n    Image: x\n"), "no condition"),
        (rule("  s:\n    Image|re: '('\n  condition: s\n"), "regular expression"),
        (rule("  s:\n    Image: []\n  condition: s\n"), "empty list"),
        (rule("  s:\n    Image: [a, null]\n  condition: s\n"), "null cannot be one of a list"),
        (rule("  s:\n    Image: {a: b}\n  condition: s\n"), "is not a text or a number"),
        (rule("  s:\n    Image|exists: yes please\n  condition: s\n"), "exists takes true or false"),
        (rule("  s:\n    Image: x\n  timeframe: 5m\n  condition: s\n"), "timeframe"),
        ("title: t\nid: r1\nlogsource: {category: file_event, product: linux}\ndetection:\n  s:\n    TargetFilename: x\n  condition: s\n".to_string(), "logsource category file_event: no plugin collects it yet"),
        ("title: t\nid: r1\nlogsource: {category: process_creation, product: windows}\ndetection:\n  s:\n    Image: x\n  condition: s\n".to_string(), "logsource product windows"),
        ("title: t\nid: r1\nlogsource: {product: linux, service: auditd}\ndetection:\n  s:\n    type: x\n  condition: s\n".to_string(), "logsource service auditd"),
        ("title: t\nlogsource: {category: process_creation}\ndetection:\n  s:\n    Image: x\n  condition: s\n".to_string(), "no id"),
        (format!("{HEAD}level: severe\ndetection:\n  s:\n    Image: x\n  condition: s\n"), "unknown level \"severe\""),
        ("title: t\nid: r1\n".to_owned(), "logsource missing"),
        ("title: t\nid: r1\nlogsource: {category: process_creation}\n".to_owned(), "no detection and no correlation"),
        ("- a\n- b\n".to_owned(), "not a map"),
        ("title: [unclosed\n".to_owned(), "YAML:"),
        ("title: t\nid: r1\n  bad indent: x\n".to_owned(), "YAML:"),
        ("".to_owned(), "no rule in the file"),
        ("title: c\nid: c1\ncorrelation: {type: value_count, rules: [x], timespan: 1m, condition: {gte: 2}}\n".to_owned(), "correlation type value_count not supported"),
        ("title: c\nid: c1\ncorrelation: {type: event_count, rules: [x], timespan: 1m, condition: {lt: 2}}\n".to_owned(), "correlation condition lt not supported"),
        ("title: c\nid: c1\ncorrelation: {type: event_count, rules: [x], timespan: 1w, condition: {gte: 2}}\n".to_owned(), "timespan \"1w\""),
        ("title: c\nid: c1\ncorrelation: {type: event_count, rules: [nope], timespan: 1m, condition: {gte: 2}}\n".to_owned(), "refers to rule \"nope\", which is not loaded"),
        ("title: c\nid: c1\ncorrelation: {type: event_count, rules: [x], group-by: [Hashes], timespan: 1m, condition: {gte: 2}}\n".to_owned(), "field \"Hashes\""),
    ];
    for (text, want) in cases {
        let why = refusal(&text);
        assert!(why.contains(want), "{why:?} does not say {want:?}\n{text}");
    }
}

#[test]
fn wrong_types_and_huge_values_never_panic() {
    let texts = [
        "title: 1\nid: 2\nlevel: 3\ntags: 4\nlogsource: 5\ndetection: 6\n".to_owned(),
        "id: [a]\ndetection: {condition: [1, 2]}\n".to_owned(),
        rule("  s: null\n  condition: s\n"),
        rule("  s: []\n  condition: s\n"),
        rule("  s: [{}, {}]\n  condition: s\n"),
        rule("  s: [a, {b: c}]\n  condition: s\n"),
        rule("  ? [a]\n  : x\n  condition: s\n"),
        rule("  s:\n    Image|windash: '-a-b-c-d-e-f-g'\n  condition: s\n"),
        rule(&format!("  s:\n    Image: '{}'\n  condition: s\n", "*a?".repeat(20_000))),
        rule(&format!("  s:\n    Image|re: '{}'\n  condition: s\n", "(a+)+".repeat(5_000))),
        rule(&format!("  s:\n    Image: x\n  condition: {}s{}\n", "(".repeat(500), ")".repeat(500))),
        rule(&format!("  s:\n    Image: x\n  condition: {}s\n", "not ".repeat(500))),
        rule("  s:\n    Image: !!binary aGVsbG8=\n  condition: s\n"),
        format!("{}: x\n", "a".repeat(100_000)),
        "&a [*a]\n".to_owned(),
        "a: &x [*x, *x]\n".to_owned(),
        "\u{0}\u{1}\u{2}".to_owned(),
        "title: c\nid: c1\ncorrelation: {type: event_count, rules: [x], timespan: 9999999999999999999s, condition: {gt: 18446744073709551615}}\n".to_owned(),
    ];
    for t in texts {
        // Each is listed, loaded (a harmless oddity) or refused; none panics.
        let set = RuleSet::from_sources(vec![("t.yml".into(), Ok(t))]);
        assert_eq!(set.rules().len(), 1);
    }
    // Events of every wrong shape meet a loaded rule set without harm.
    let set = Arc::new(RuleSet::load(true, &[]).unwrap());
    let mut det = Detector::new(set, FrequencyLimits { max_keys: 4 });
    let big = "x".repeat(1 << 20);
    let events = [
        json!(null),
        json!([1, 2]),
        json!({"event": {"action": "exec"}}),
        json!({"event": {"action": "exec"}, "process": "oops", "host": 7}),
        json!({"event": {"action": "exec"}, "process": {"command_line": ["a", 1, null, {"x": 1}], "executable": 5}}),
        json!({"event": {"action": "exec"}, "@timestamp": "yesterday", "process": {"executable": "/usr/bin/whoami", "command_line": big}}),
        json!({"event": {"action": ["exec"]}, "process": {"executable": "/dev/shm/x"}}),
    ];
    let mut hits = Vec::new();
    for ev in &events {
        det.detect(ev, &mut hits);
    }
    assert_eq!(det.stats().events, events.len() as u64);
    assert_eq!(det.stats().frequency_untimed, 1);
}

#[test]
fn one_bad_document_does_not_take_its_neighbours() {
    let text = format!(
        "{}\n---\ntitle: broken\nid: r2\ndetection: {{}}\n---\n{}",
        rule("  s:\n    Image|endswith: /x\n  condition: s\n"),
        rule("  s:\n    Image: y\n  condition: s\n").replace("id: r1", "id: r3")
    );
    let set = RuleSet::from_sources(vec![
        ("t.yml".into(), Ok(text)),
        ("gone.yml".into(), Err("cannot read: denied".into())),
    ]);
    let status: Vec<_> = set
        .rules()
        .iter()
        .map(|r| (r.id.as_str(), r.status == RuleStatus::Loaded))
        .collect();
    assert_eq!(
        status,
        vec![
            ("gone.yml", false),
            ("r1", true),
            ("r2", false),
            ("r3", true)
        ]
    );
    assert_eq!(set.loaded(), 2);
}

#[test]
fn missing_directory_is_a_config_error() {
    let err = RuleSet::load(false, &["/nonexistent/rules".into()]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/rules"), "{err}");
}

#[test]
fn files_are_found_recursively_and_others_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(
        dir.path().join("a/b/r.yaml"),
        rule("  s:\n    Image: x\n  condition: s\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("a/broken.yml"), "title: [").unwrap();
    std::fs::write(dir.path().join("README.md"), "not a rule").unwrap();
    let set = RuleSet::load(false, &[dir.path().to_owned()]).unwrap();
    assert_eq!(set.rules().len(), 2);
    assert_eq!(set.loaded(), 1);
    assert!(set
        .rules()
        .iter()
        .any(|r| r.source.ends_with("a/b/r.yaml") && r.level == Level::Medium));
}

fn matches(detection: &str, event: serde_json::Value) -> bool {
    let set = RuleSet::from_sources(vec![("t.yml".into(), Ok(rule(detection)))]);
    assert_eq!(set.loaded(), 1, "{:?}", set.rules());
    let mut det = Detector::new(Arc::new(set), FrequencyLimits::default());
    let mut hits = Vec::new();
    det.detect(&event, &mut hits);
    !hits.is_empty()
}

fn exec(process: serde_json::Value) -> serde_json::Value {
    json!({"event": {"action": "exec"}, "process": process, "user": {"name": "root", "audit": {"id": "0"}}})
}

#[test]
fn sigma_semantics() {
    let ev = exec(
        json!({"executable": "/usr/bin/Curl", "command_line": "curl -O http://x/A*B", "pid": 42,
                         "parent": {"executable": "/usr/sbin/nginx"}}),
    );
    let yes = |d: &str| assert!(matches(d, ev.clone()), "should match: {d}");
    let no = |d: &str| assert!(!matches(d, ev.clone()), "should not match: {d}");
    yes("  s:\n    Image: /usr/bin/curl\n  condition: s\n");
    no("  s:\n    Image|cased: /usr/bin/curl\n  condition: s\n");
    yes("  s:\n    Image|cased: /usr/bin/Curl\n  condition: s\n");
    yes("  s:\n    CommandLine|contains|all: [curl, ' -O ']\n  condition: s\n");
    no("  s:\n    CommandLine|contains|all: [curl, wget]\n  condition: s\n");
    yes("  s:\n    CommandLine|contains: [wget, curl]\n  condition: s\n");
    yes("  s:\n    CommandLine: 'curl*a\\*b'\n  condition: s\n");
    no("  s:\n    CommandLine: 'curl*a\\*c'\n  condition: s\n");
    yes("  s:\n    CommandLine: 'curl ?O*'\n  condition: s\n");
    yes("  s:\n    ProcessId: 42\n  condition: s\n");
    yes("  s:\n    LogonId: 0\n  User: root\n  condition: s\n"
        .replace("  User", "    User")
        .as_str());
    yes("  s:\n    CurrentDirectory: null\n  condition: s\n");
    no("  s:\n    CommandLine: null\n  condition: s\n");
    yes("  s:\n    ParentImage|exists: true\n  condition: s\n");
    no("  s:\n    CurrentDirectory|exists: true\n  condition: s\n");
    yes("  s:\n    CommandLine|re: 'curl\\s-O'\n  condition: s\n");
    no("  s:\n    CommandLine|re: 'CURL'\n  condition: s\n");
    yes("  s:\n    CommandLine|re|i: 'CURL'\n  condition: s\n");
    yes("  s:\n    CommandLine|windash|contains: ' /O '\n  condition: s\n");
    yes("  k:\n    - nothing\n    - HTTP://X\n  condition: k\n");
    yes("  k:\n    '|all': [curl, nginx]\n  condition: k\n");
    no("  k:\n    '|all': [curl, apache]\n  condition: k\n");
    yes("  a:\n    Image|endswith: /curl\n  _b:\n    Image: nope\n  condition: 1 of them and not 1 of _*\n");
    no("  a:\n    Image|endswith: /curl\n  b:\n    Image: nope\n  condition: all of them\n");
    yes("  a:\n    Image|endswith: /curl\n  b:\n    Image: nope\n  condition: a and not (b or not a)\n");
    yes("  a:\n    - Image: nope\n    - ParentImage|endswith: nginx\n  condition: a\n");
    yes("  a:\n    Image: nope\n  b:\n    Image|endswith: curl\n  condition: [a, b]\n");
    no("  s:\n    Image: /usr/bin/cur\n  condition: s\n");
    // Not an exec event: no rule applies.
    let mut other = ev.clone();
    other["event"]["action"] = "exit".into();
    assert!(!matches(
        "  s:\n    Image: /usr/bin/curl\n  condition: s\n",
        other
    ));
}

#[test]
fn a_rule_named_by_a_refused_frequency_rule_still_alerts() {
    let base = "title: b\nid: base\nlogsource: {category: process_creation, product: linux}\n\
                detection:\n  s:\n    CommandLine|contains: marker\n  condition: s\n";
    // The frequency rule is refused (its level is wrong): nothing counts `base`, so
    // `base` must alert itself rather than go silent.
    let refused = "title: f\nid: f1\nlevel: severe\ncorrelation: {type: event_count, rules: [base], timespan: 1m, condition: {gte: 2}}\n";
    let set = RuleSet::from_sources(vec![
        ("b.yml".into(), Ok(base.to_owned())),
        ("f.yml".into(), Ok(refused.to_owned())),
    ]);
    let info = set.rules().iter().find(|r| r.id == "base").unwrap();
    assert!(info.generates, "{info:?}");
    let mut det = Detector::new(Arc::new(set), FrequencyLimits::default());
    let mut hits = Vec::new();
    let ev = json!({"@timestamp": "2026-11-30T10:00:00Z", "event": {"action": "exec"}, "host": {"id": "h"},
                    "process": {"command_line": "run marker", "executable": "/bin/run"}});
    det.detect(&ev, &mut hits);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].rule.id, "base");
}
