use super::*;

fn sock(pid: u32, state: FarmState, local: &str, peer: Option<&str>) -> FarmSocket {
    FarmSocket {
        pid,
        state,
        local: local.parse().unwrap(),
        peer: peer.map(|p| p.parse().unwrap()),
    }
}

fn sample() -> Vec<FarmSocket> {
    vec![
        sock(10, FarmState::Listen, "127.0.0.2:5000", None),
        sock(10, FarmState::Unconnected, "127.0.0.2:5001", None),
        sock(
            10,
            FarmState::Established,
            "127.0.0.2:5000",
            Some("127.0.0.1:40000"),
        ),
        sock(
            11,
            FarmState::Established,
            "127.0.0.1:40000",
            Some("127.0.0.2:5000"),
        ),
        sock(
            11,
            FarmState::Established,
            "[::1]:40001",
            Some("[::1]:6000"),
        ),
    ]
}

/// A snapshot line as the plugin's output contract describes it.
fn line(action: &str, transport: &str, pid: u32, src: &str, dst: Option<&str>) -> String {
    let ep = |a: &str| {
        let a: SocketAddr = a.parse().unwrap();
        serde_json::json!({"ip": a.ip().to_string(), "port": a.port()})
    };
    let mut ev = serde_json::json!({
        "event": {"action": action},
        "network": {"transport": transport},
        "source": ep(src),
        "process": {"pid": pid},
    });
    if let Some(d) = dst {
        ev["destination"] = ep(d);
    }
    ev.to_string()
}

fn perfect() -> Vec<String> {
    vec![
        line("listening", "tcp", 10, "127.0.0.2:5000", Some("0.0.0.0:0")),
        line("listening", "udp", 10, "127.0.0.2:5001", None),
        line("connection", "tcp", 10, "127.0.0.2:5000", Some("127.0.0.1:40000")),
        line("connection", "tcp", 11, "127.0.0.1:40000", Some("127.0.0.2:5000")),
        line("connection", "tcp", 11, "[::1]:40001", Some("[::1]:6000")),
        // Not the farm's: ignored.
        line("connection", "tcp", 99, "10.0.0.1:22", Some("10.0.0.2:50000")),
        r#"{"event":{"kind":"metric","action":"stats"},"hids":{"stats":{"snapshot":{"method":"bpf_iter"}}}}"#.to_owned(),
    ]
}

fn check(lines: &[String]) -> SnapshotCheck {
    check_snapshot(&sample(), lines.join("\n").as_bytes())
}

#[test]
fn truth_lines_round_trip() {
    let text: String = std::iter::once(TRUTH_HEADER.to_owned())
        .chain(sample().iter().map(format_truth))
        .map(|l| l + "\n")
        .collect();
    assert_eq!(parse_truth(&text).unwrap(), sample());
    assert!(
        text.contains("10\ttcp\tlisten\t127.0.0.2\t5000\t-\t-\n"),
        "{text}"
    );
    assert!(parse_truth("10\tudp\tlisten\t127.0.0.2\t1\t-\t-").is_err());
    assert!(parse_truth("10\ttcp\testablished\t127.0.0.2\t1").is_err());
}

#[test]
fn a_right_snapshot_passes() {
    let c = check(&perfect());
    assert!(c.passed(), "{c:?}");
    assert_eq!((c.matched, c.expected, c.lines), (5, 5, 7));
    assert_eq!(
        c.stats.unwrap()["hids"]["stats"]["snapshot"]["method"],
        "bpf_iter"
    );
}

#[test]
fn swapped_ends_name_the_wrong_owner() {
    let mut lines = perfect();
    // Local and peer swapped: each line lands on the other end, held by the other pid.
    lines[2] = line(
        "connection",
        "tcp",
        10,
        "127.0.0.1:40000",
        Some("127.0.0.2:5000"),
    );
    lines[3] = line(
        "connection",
        "tcp",
        11,
        "127.0.0.2:5000",
        Some("127.0.0.1:40000"),
    );
    let c = check(&lines);
    assert!(!c.passed());
    assert_eq!((c.wrong_count, c.matched), (2, 3));
}

#[test]
fn missing_duplicated_and_garbled_lines_fail() {
    let mut lines = perfect();
    lines.remove(4);
    let c = check(&lines);
    assert_eq!((c.missing_count, c.matched), (1, 4));
    assert_eq!(c.missing[0].local, "[::1]:40001".parse().unwrap());

    let mut lines = perfect();
    lines.push(lines[3].clone());
    let c = check(&lines);
    assert_eq!((c.duplicated, c.matched), (1, 4));
    assert!(!c.passed());

    let mut lines = perfect();
    lines.push("{not json".to_owned());
    assert!(!check(&lines).passed());

    let mut lines = perfect();
    lines[0] = line("connection", "tcp", 10, "127.0.0.2:5000", None);
    assert_eq!(
        check(&lines).wrong_count,
        1,
        "a listener reported as a connection"
    );
}

#[test]
fn worker_addresses_are_distinct_loopback() {
    let ips: std::collections::HashSet<_> = (0..600).map(worker_ip).collect();
    assert_eq!(ips.len(), 600);
    assert!(ips
        .iter()
        .all(|ip| ip.is_loopback() && *ip != IpAddr::from([127, 0, 0, 1])));
}

/// The farm holds what it says, in separate processes, and leaves nothing behind.
#[test]
fn farm_holds_its_connections_in_other_processes() {
    let n = 3_000;
    let farm = SocketFarm::start(n);
    let established: Vec<_> = farm.established().collect();
    assert_eq!(established.len(), 2 * n);
    assert_eq!(farm.listeners().count(), 3);
    let pids = farm.pids();
    assert!(!pids.contains(&std::process::id()));
    assert!(pids.iter().all(|&p| crate::alive(p)));
    // Both ends of each connection are in the truth, held by different processes when
    // there are several (a single worker connects to itself).
    let by_ends: HashMap<_, _> = established
        .iter()
        .map(|s| ((s.local, s.peer), s.pid))
        .collect();
    for s in &established {
        assert!(
            by_ends.contains_key(&(s.peer.unwrap(), Some(s.local))),
            "{s:?}"
        );
    }
    assert!(established.iter().any(|s| s.local.is_ipv6()));
    // Each pid really holds its sockets: its fd table has that many sockets.
    for &pid in &pids {
        let held = farm.sockets().iter().filter(|s| s.pid == pid).count();
        let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter(|e| {
                let target = std::fs::read_link(e.as_ref().unwrap().path()).unwrap_or_default();
                target.to_string_lossy().starts_with("socket:")
            })
            .count();
        assert_eq!(sockets, held, "pid {pid}");
    }
    drop(farm);
    assert!(
        pids.iter().all(|&p| !crate::alive(p)),
        "farm processes left behind"
    );
}

#[test]
fn farm_spreads_large_counts_over_processes() {
    let n = 20_000;
    let farm = SocketFarm::start(n);
    let pids = farm.pids();
    assert_eq!(pids.len(), (2 * n).div_ceil(SOCKETS_PER_WORKER));
    for &pid in &pids {
        let held = farm.sockets().iter().filter(|s| s.pid == pid).count();
        assert!(held < MAX_FDS_PER_PROCESS, "pid {pid} holds {held}");
    }
    assert_eq!(farm.established().count(), 2 * n);
}

#[test]
fn farm_dies_with_a_panicking_test() {
    let pids = std::panic::catch_unwind(|| {
        let farm = SocketFarm::start(100);
        let pids = farm.pids();
        std::panic::panic_any(pids);
    })
    .unwrap_err()
    .downcast::<Vec<u32>>()
    .unwrap();
    assert!(!pids.is_empty());
    assert!(
        pids.iter().all(|&p| !crate::alive(p)),
        "farm processes left behind"
    );
}
