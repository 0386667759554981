use super::*;
use crate::event::EventIds;

/// The ids as compared: host id, sequence, action, plugin, run id.
type Owned = (Option<String>, u64, String, String, String);

fn owned(q: &QuickIds<'_>) -> Owned {
    (
        q.host_id.map(str::to_owned),
        q.sequence,
        q.action.to_owned(),
        q.plugin.to_owned(),
        q.run_id.to_owned(),
    )
}

/// serde_json's reading, the one the fast path must never contradict.
fn by_serde(bytes: &[u8]) -> Option<Owned> {
    let ids: EventIds<'_> = serde_json::from_slice(bytes).ok()?;
    if ids.declares() || ids.hids.stats.is_some() {
        return None;
    }
    Some((
        ids.host.map(|h| h.id.into_owned()),
        ids.event.sequence,
        ids.event.action.into_owned(),
        ids.hids.plugin.into_owned(),
        ids.hids.run_id.into_owned(),
    ))
}

/// Whenever the fast path answers, serde_json accepts the document with the same ids.
fn agrees(doc: &[u8]) {
    if let Some(quick) = scan(doc) {
        assert_eq!(
            Some(owned(&quick)),
            by_serde(doc),
            "on {:?}",
            String::from_utf8_lossy(doc)
        );
    }
}

fn exec_event() -> Vec<u8> {
    let mut ev = crate::event::Producer {
        host: crate::event::Host {
            id: "h1".into(),
            hostname: "web-1".into(),
        },
        labels: std::sync::Arc::new([("idc".to_owned(), "bj 1".to_owned())].into()),
        plugin: "process".into(),
        run_id: "0123456789abcdef".into(),
    }
    .event(
        crate::Timestamp::from_unix_nanos(1_700_000_000_123_456_789),
        18_446_744_073_709_551_615,
        "event",
        "process",
        "start",
        "exec",
    );
    ev.process = Some(crate::event::Process {
        pid: 42,
        args: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            r#"echo "a\b" / 'c' ünï €"#.into(),
            "tab\there".into(),
        ]),
        exit_code: Some(-1),
        ..Default::default()
    });
    ev.hids.capture = Some("ebpf".into());
    ev.hids.pid_ns = Some(4_026_531_836);
    serde_json::to_vec(&ev).unwrap()
}

#[test]
fn a_plugin_event_is_read_by_the_fast_path_as_serde_reads_it() {
    let doc = exec_event();
    let quick = scan(&doc).expect("the plain case");
    assert_eq!(
        quick,
        QuickIds {
            host_id: Some("h1"),
            sequence: u64::MAX,
            action: "exec",
            plugin: "process",
            run_id: "0123456789abcdef",
        }
    );
    agrees(&doc);
}

#[test]
fn what_serde_refuses_or_reads_otherwise_is_left_to_serde() {
    let cases: &[&str] = &[
        // Duplicated known sections and fields: serde_json refuses them.
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"hids":{"plugin":"q","run_id":"r"}}"#,
        r#"{"event":{"sequence":1,"sequence":2},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","plugin":"q","run_id":"r"}}"#,
        r#"{"host":{"id":"a"},"host":null,"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"}}"#,
        // An escaped key is the same key to serde.
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"hi\u0064s":{}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r","dr\u006fpped":[]}}"#,
        // Escaped ids, declarations, stats records.
        r#"{"event":{"sequence":1},"hids":{"plugin":"p\u0031","run_id":"r"}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r","dropped":null}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r","ended":[]}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r","stats":{}}}"#,
        // Sections in serde's sequence form, and missing or mistyped fields.
        r#"{"event":[1,"exec"],"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1},"hids":["p","r"]}"#,
        r#"{"event":{},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p"}}"#,
        r#"{"host":{},"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1,"action":null},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":-1},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1.0},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":1e3},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":01},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#"{"event":{"sequence":18446744073709551616},"hids":{"plugin":"p","run_id":"r"}}"#,
        // Broken JSON anywhere, also where nobody looks.
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":01}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":1.}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":"\q"}"#,
        "{\"event\":{\"sequence\":1},\"hids\":{\"plugin\":\"p\",\"run_id\":\"r\"},\"x\":\"\u{1}\"}",
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":[1,]}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":tru}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"}}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"}} x"#,
    ];
    for case in cases {
        assert!(scan(case.as_bytes()).is_none(), "fast path answered {case}");
    }
    let deep = format!(
        r#"{{"event":{{"sequence":1}},"hids":{{"plugin":"p","run_id":"r"}},"x":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(scan(deep.as_bytes()).is_none());
    assert!(scan(b"{\"x\":\"\xff\"}").is_none());
}

#[test]
fn plain_variants_are_read_as_serde_reads_them() {
    let cases: &[&str] = &[
        r#"{"event":{"sequence":0},"hids":{"plugin":"p","run_id":"r"}}"#,
        r#" { "hids" : { "run_id" : "r" , "plugin" : "p" } , "event" : { "action" : "x" , "sequence" : 7 } , "host" : null } "#,
        r#"{"x":{"event":{"sequence":9}},"event":{"sequence":1,"x":[{"sequence":2}]},"x":1,"hids":{"plugin":"p","run_id":"r","x":-0.5e+3}}"#,
        r#"{"event":{"sequence":1},"hids":{"plugin":"p","run_id":"r"},"x":["a\"b\\c\/\b\f\n\r\t",true,false,null,{},[]]}"#,
    ];
    for case in cases {
        assert!(scan(case.as_bytes()).is_some(), "no answer for {case}");
        agrees(case.as_bytes());
    }
}

/// Mutations of real and odd events: wherever the fast path answers, serde agrees.
#[test]
fn the_fast_path_never_contradicts_serde_on_mutated_events() {
    let mut seeds = vec![exec_event()];
    seeds.push(br#"{"host":{"id":"h"},"event":{"sequence":12,"action":"a"},"hids":{"plugin":"p","run_id":"r"},"x":[1,-2.5e3,"s\"",null]}"#.to_vec());
    let noise = b"{}[]\",:\\0123456789-+.eEtrufalsn \t\r\n\x01\xc3\xa9u";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut answered = 0;
    for round in 0..20_000 {
        let mut doc = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(3) {
            let at = next(doc.len() + 1);
            match next(4) {
                0 if at < doc.len() => {
                    doc.remove(at);
                }
                1 => doc.insert(at, noise[next(noise.len())]),
                2 if at < doc.len() => doc[at] = noise[next(noise.len())],
                _ => {
                    // A slice of the document repeated: duplicated keys and sections.
                    let from = next(doc.len());
                    let to = (from + next(40)).min(doc.len());
                    let piece = doc[from..to].to_vec();
                    doc.splice(at..at, piece);
                }
            }
        }
        agrees(&doc);
        answered += usize::from(scan(&doc).is_some());
    }
    assert!(
        answered > 2_000,
        "only {answered} mutants read by the fast path"
    );
}

#[test]
fn quotes_and_backslashes_are_found_where_they_are() {
    let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\');
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 0..64 {
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Mostly near the targets: 0x21-0x23, 0x5b-0x5d, and anything.
                    match state % 4 {
                        0 => 0x21 + (state >> 8) as u8 % 3,
                        1 => 0x5b + (state >> 8) as u8 % 3,
                        _ => (state >> 16) as u8,
                    }
                })
                .collect();
            assert_eq!(quote_or_backslash(&bytes), naive(&bytes), "{bytes:?}");
        }
    }
}
