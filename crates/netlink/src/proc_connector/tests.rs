use super::*;
use proptest::prelude::*;

/// An exec event as the kernel sends it (x86_64, little endian): 76 bytes.
#[rustfmt::skip]
const EXEC_DATAGRAM: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00,             // nlmsg_type NLMSG_DONE
    0x00, 0x00,             // nlmsg_flags
    0x11, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid 0: from the kernel
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x11, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00,             // len 40: sizeof(struct proc_event)
    0x00, 0x00,             // flags
    // proc_event
    0x02, 0x00, 0x00, 0x00, // what PROC_EVENT_EXEC
    0x01, 0x00, 0x00, 0x00, // cpu 1
    0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, // timestamp_ns 0x0123456789ab
    0x92, 0x10, 0x00, 0x00, // process_pid 4242
    0x92, 0x10, 0x00, 0x00, // process_tgid 4242
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // rest of the union
];

fn rewrite(datagram: &[u8], what: u32, data: &[u32]) -> Vec<u8> {
    let mut d = datagram.to_vec();
    d[36..40].copy_from_slice(&what.to_le_bytes());
    for (i, v) in data.iter().enumerate() {
        let off = 52 + 4 * i;
        d[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    d
}

fn only_event(datagram: &[u8]) -> ProcEvent {
    let all: Vec<_> = messages(datagram).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    match all[0] {
        Ok(Message::Event(ev)) => ev,
        ref other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn golden_exec() {
    let ev = only_event(&EXEC_DATAGRAM);
    assert_eq!(ev.cpu, 1);
    assert_eq!(ev.timestamp_ns, 0x0123_4567_89ab);
    assert_eq!(ev.cn_seq, 0x11);
    assert_eq!(
        ev.data,
        EventData::Exec {
            pid: 4242,
            tgid: 4242
        }
    );
}

#[test]
fn golden_fork_exit_uid_comm() {
    let fork = rewrite(&EXEC_DATAGRAM, PROC_EVENT_FORK, &[1, 1, 77, 77]);
    assert_eq!(
        only_event(&fork).data,
        EventData::Fork {
            parent_pid: 1,
            parent_tgid: 1,
            child_pid: 77,
            child_tgid: 77
        }
    );
    let exit = rewrite(&EXEC_DATAGRAM, PROC_EVENT_EXIT, &[77, 77, 256, 17, 1, 1]);
    assert_eq!(
        only_event(&exit).data,
        EventData::Exit {
            pid: 77,
            tgid: 77,
            exit_code: 256,
            exit_signal: 17,
            parent_pid: Some(1),
            parent_tgid: Some(1)
        }
    );
    let uid = rewrite(&EXEC_DATAGRAM, PROC_EVENT_UID, &[77, 77, 1000, 0]);
    assert_eq!(
        only_event(&uid).data,
        EventData::Uid {
            pid: 77,
            tgid: 77,
            ruid: 1000,
            euid: 0
        }
    );
    let mut comm = rewrite(&EXEC_DATAGRAM, PROC_EVENT_COMM, &[77, 77]);
    comm[60..64].copy_from_slice(b"bash");
    match only_event(&comm).data {
        EventData::Comm { comm, .. } => assert_eq!(&comm[..5], b"bash\0"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exit_from_an_old_kernel_has_no_parent() {
    // Before 4.18 the exit record ended after exit_signal: a 32-byte proc_event.
    let mut d = rewrite(&EXEC_DATAGRAM, PROC_EVENT_EXIT, &[77, 77, 0, 17]);
    d.truncate(16 + 20 + 32);
    d[0] = 68;
    d[32] = 32;
    match only_event(&d).data {
        EventData::Exit { parent_pid, .. } => assert_eq!(parent_pid, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_event_type_is_kept_not_refused() {
    let d = rewrite(&EXEC_DATAGRAM, 0x0000_0800, &[]);
    assert_eq!(only_event(&d).data, EventData::Unknown { what: 0x800 });
}

#[test]
fn other_connectors_are_ignored() {
    let mut d = EXEC_DATAGRAM;
    d[16] = 7;
    assert_eq!(messages(&d).next(), Some(Ok(Message::Ignored)));
}

#[test]
fn two_messages_in_one_datagram() {
    let mut d = EXEC_DATAGRAM.to_vec();
    d.extend_from_slice(&EXEC_DATAGRAM);
    assert_eq!(messages(&d).filter(|m| m.is_ok()).count(), 2);
}

#[test]
fn truncations_are_errors() {
    for cut in 1..EXEC_DATAGRAM.len() {
        let results: Vec<_> = messages(&EXEC_DATAGRAM[..cut]).collect();
        assert!(results.iter().any(|r| r.is_err()), "cut {cut}: {results:?}");
    }
}

#[test]
fn subscription_request_layout() {
    let req = subscription_request(PROC_CN_MCAST_LISTEN, 9, 1234);
    #[rustfmt::skip]
    let expected: [u8; 40] = [
        40, 0, 0, 0,   3, 0,   0, 0,   9, 0, 0, 0,   0xd2, 0x04, 0, 0, // nlmsghdr, pid 1234
        1, 0, 0, 0,   1, 0, 0, 0,   9, 0, 0, 0,   9, 0, 0, 0,   4, 0,   0, 0, // cn_msg
        1, 0, 0, 0, // PROC_CN_MCAST_LISTEN
    ];
    assert_eq!(req, expected);
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for m in messages(&bytes) {
            let _ = m;
        }
    }

    #[test]
    fn mutated_exec_never_panics(pos in 0usize..76, byte in any::<u8>()) {
        let mut d = EXEC_DATAGRAM;
        d[pos] = byte;
        for m in messages(&d) {
            let _ = m;
        }
    }
}
