use super::*;
use proptest::prelude::*;

#[test]
fn golden_event_frame() {
    let mut out = Vec::new();
    encode_frame(Kind::Event, b"{}", &mut out).unwrap();
    #[rustfmt::skip]
    let expected = [
        0x48, 0x46,             // magic "HF"
        0x02,                   // kind: event
        0x00,                   // flags
        0x02, 0x00, 0x00, 0x00, // payload length 2, little endian
        b'{', b'}',             // payload
    ];
    assert_eq!(out, expected);
    let mut cursor = &expected[..];
    let mut payload = Vec::new();
    let header = read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload)
        .unwrap()
        .unwrap();
    assert_eq!(header.kind, Kind::Event);
    assert_eq!(payload, b"{}");
    assert!(read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload)
        .unwrap()
        .is_none());
}

#[test]
fn golden_hello_frame() {
    let hello = PluginHello {
        protocol: 1,
        name: "p".into(),
        version: "1".into(),
    };
    let body = serde_json::to_vec(&hello).unwrap();
    assert_eq!(body, br#"{"protocol":1,"name":"p","version":"1"}"#);
    let mut out = Vec::new();
    encode_frame(Kind::Hello, &body, &mut out).unwrap();
    assert_eq!(&out[..8], &[0x48, 0x46, 0x01, 0x00, 39, 0, 0, 0]);
    let back: PluginHello = decode("hello", &out[8..]).unwrap();
    assert_eq!(back, hello);
}

#[test]
fn control_frame_is_tagged_json() {
    let body = serde_json::to_vec(&Control::Shutdown).unwrap();
    assert_eq!(body, br#"{"command":"shutdown"}"#);
    let snapshot = Control::Snapshot { id: "c-17".into() };
    let body = serde_json::to_vec(&snapshot).unwrap();
    assert_eq!(body, br#"{"command":"snapshot","id":"c-17"}"#);
    assert_eq!(decode::<Control>("control", &body).unwrap(), snapshot);
}

/// What a plugin built before `snapshot` existed makes of it: a payload error, which its
/// control reader logs ("ignoring control frame") before reading on.
#[test]
fn an_older_plugin_refuses_a_newer_command_without_losing_the_stream() {
    #[derive(Debug, Deserialize)]
    #[serde(tag = "command", rename_all = "snake_case")]
    enum OldControl {
        Shutdown,
    }
    let mut stream = Vec::new();
    for c in [Control::Snapshot { id: "c".into() }, Control::Shutdown] {
        encode_frame(Kind::Control, &serde_json::to_vec(&c).unwrap(), &mut stream).unwrap();
    }
    let mut cursor = &stream[..];
    let mut payload = Vec::new();
    read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload).unwrap();
    let err = decode::<OldControl>("control", &payload).unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `snapshot`"),
        "{err}"
    );
    read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload).unwrap();
    assert!(matches!(
        decode::<OldControl>("control", &payload).unwrap(),
        OldControl::Shutdown
    ));
}

#[test]
fn garbage_is_refused_at_the_header() {
    let mut cursor = &b"hello world\n"[..];
    let err = read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, WireError::BadMagic(b'h', b'e')), "{err}");
}

#[test]
fn oversized_frame_is_refused_before_allocating() {
    let header = Header {
        kind: Kind::Event,
        flags: 0,
        len: u32::MAX,
    }
    .encode();
    let mut cursor = &header[..];
    let mut payload = Vec::new();
    let err = read_frame(&mut cursor, 1024, &mut payload).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { .. }));
    assert_eq!(payload.capacity(), 0);
}

#[test]
fn truncated_frame_is_an_error_not_a_hang() {
    let mut out = Vec::new();
    encode_frame(Kind::Event, b"{\"a\":1}", &mut out).unwrap();
    for cut in 1..out.len() {
        let mut cursor = &out[..cut];
        let err = read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, WireError::Truncated), "cut at {cut}: {err}");
    }
}

#[test]
fn unknown_kind_is_carried_not_refused() {
    let mut out = Vec::new();
    encode_frame(Kind::Unknown(77), b"x", &mut out).unwrap();
    let mut cursor = &out[..];
    let header = read_frame(&mut cursor, 16, &mut Vec::new())
        .unwrap()
        .unwrap();
    assert_eq!(header.kind, Kind::Unknown(77));
}

#[test]
fn a_payload_written_in_place_makes_the_same_frame() {
    let mut copied = b"before".to_vec();
    encode_frame(Kind::Event, b"{\"a\":1}", &mut copied).unwrap();
    let mut in_place = b"before".to_vec();
    encode_frame_with(Kind::Event, &mut in_place, |out| {
        serde_json::to_writer(out, &serde_json::json!({"a": 1})).map_err(|source| {
            WireError::Payload {
                what: "event",
                source,
            }
        })
    })
    .unwrap();
    assert_eq!(in_place, copied);
}

#[test]
fn a_payload_that_fails_to_write_leaves_no_trace() {
    let mut out = Vec::new();
    encode_frame(Kind::Event, b"{}", &mut out).unwrap();
    let before = out.clone();
    let err = encode_frame_with(Kind::Event, &mut out, |out| {
        out.extend_from_slice(b"{\"half");
        Err(WireError::Truncated)
    })
    .unwrap_err();
    assert!(matches!(err, WireError::Truncated));
    assert_eq!(out, before, "the stream still ends at a frame boundary");
}

#[test]
fn a_frame_is_split_off_only_when_whole() {
    let mut stream = Vec::new();
    encode_frame(Kind::Event, b"{\"a\":1}", &mut stream).unwrap();
    encode_frame(Kind::Health, b"{}", &mut stream).unwrap();
    let first = HEADER_LEN + 7;
    for cut in 0..first {
        assert!(split_frame(&stream[..cut], DEFAULT_MAX_PAYLOAD)
            .unwrap()
            .is_none());
    }
    let (header, payload) = split_frame(&stream, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
    assert_eq!((header.kind, payload), (Kind::Event, &b"{\"a\":1}"[..]));
    let (header, payload) = split_frame(&stream[first..], DEFAULT_MAX_PAYLOAD)
        .unwrap()
        .unwrap();
    assert_eq!((header.kind, payload), (Kind::Health, &b"{}"[..]));
    assert!(matches!(
        split_frame(&stream, 4).unwrap_err(),
        WireError::TooLarge { len: 7, max: 4 }
    ));
    assert!(matches!(
        split_frame(b"GARBAGE!", DEFAULT_MAX_PAYLOAD).unwrap_err(),
        WireError::BadMagic(b'G', b'A')
    ));
}

proptest! {
    #[test]
    fn split_frames_round_trip(frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
        let mut stream = Vec::new();
        for (kind, payload) in &frames {
            encode_frame(Kind::from_byte(*kind), payload, &mut stream).unwrap();
        }
        let mut rest = &stream[..];
        for (kind, expected) in &frames {
            let (header, payload) = split_frame(rest, DEFAULT_MAX_PAYLOAD).unwrap().unwrap();
            prop_assert_eq!(header.kind.to_byte(), *kind);
            prop_assert_eq!(payload, &expected[..]);
            rest = &rest[HEADER_LEN + payload.len()..];
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn frames_round_trip(frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
        let mut stream = Vec::new();
        for (kind, payload) in &frames {
            encode_frame(Kind::from_byte(*kind), payload, &mut stream).unwrap();
        }
        let mut cursor = &stream[..];
        let mut payload = Vec::new();
        for (kind, expected) in &frames {
            let header = read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload).unwrap().unwrap();
            prop_assert_eq!(header.kind.to_byte(), *kind);
            prop_assert_eq!(&payload, expected);
        }
        prop_assert!(read_frame(&mut cursor, DEFAULT_MAX_PAYLOAD, &mut payload).unwrap().is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut cursor = &bytes[..];
        let mut payload = Vec::new();
        // Whatever happens, it ends: each step consumes input or stops.
        for _ in 0..bytes.len() + 1 {
            match read_frame(&mut cursor, 4096, &mut payload) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}
