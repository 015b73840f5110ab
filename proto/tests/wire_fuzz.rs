//! Every message survives a round trip; hostile bytes on a control socket are errors, never
//! panics: the fuzz corpus (`proto/fuzz/corpus/decode_stream`) replayed, samples of every
//! message mutated at random, and hostile headers (truncated, 4 GiB length, wrong version).

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::path::Path;

use nemflow_proto::fuzzing::{decode_stream, samples};
use nemflow_proto::wire::{self, Decoder, WireError};
use proptest::prelude::*;

/// Every sample, framed.
fn framed() -> Vec<Vec<u8>> {
    let (d, r, a, s) = samples();
    let mut out: Vec<Vec<u8>> = Vec::new();
    out.extend(d.iter().map(|m| wire::encode(m).unwrap()));
    out.extend(r.iter().map(|m| wire::encode(m).unwrap()));
    out.extend(a.iter().map(|m| wire::encode(m).unwrap()));
    out.extend(s.iter().map(|m| wire::encode(m).unwrap()));
    out
}

#[test]
fn every_message_round_trips() {
    let (d, r, a, s) = samples();
    for m in &d {
        let b = wire::encode(m).unwrap();
        assert_eq!(
            &wire::decode::<nemflow_proto::ctl::DriverRequest>(&b[wire::HEADER_BYTES..]).unwrap(),
            m
        );
    }
    for m in &r {
        let b = wire::encode(m).unwrap();
        assert_eq!(
            &wire::decode::<nemflow_proto::ctl::DriverReply>(&b[wire::HEADER_BYTES..]).unwrap(),
            m
        );
    }
    for m in &a {
        let b = wire::encode(m).unwrap();
        assert_eq!(
            &wire::decode::<nemflow_proto::app::AppRequest>(&b[wire::HEADER_BYTES..]).unwrap(),
            m
        );
    }
    for m in &s {
        let b = wire::encode(m).unwrap();
        assert_eq!(
            &wire::decode::<nemflow_proto::app::ServerMsg>(&b[wire::HEADER_BYTES..]).unwrap(),
            m
        );
    }
    // The samples cover every request variant (counted from the enums' shapes).
    assert!(d.len() >= 10 && a.len() >= 16, "a sample of every request");
}

#[test]
fn corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_stream");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            decode_stream(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} corpus files");
}

#[test]
fn hostile_headers_end_the_stream_cleanly() {
    let mut four_gib = b"NF".to_vec();
    four_gib.extend_from_slice(&wire::VERSION.to_le_bytes());
    four_gib.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut dec = Decoder::new(0);
    dec.feed(&four_gib);
    assert!(matches!(dec.next_frame(), Err(WireError::TooLarge(_))));

    let mut wrong = wire::encode(&nemflow_proto::app::AppRequest::Stats).unwrap();
    wrong[2] = 99;
    let mut dec = Decoder::new(0);
    dec.feed(&wrong);
    assert!(matches!(
        dec.next_frame(),
        Err(WireError::Version { got: 99 })
    ));

    // Truncated: no frame yet, no error, no allocation of the claimed length.
    let full = wire::encode(&nemflow_proto::app::AppRequest::Stats).unwrap();
    let mut dec = Decoder::new(0);
    dec.feed(&full[..full.len() - 1]);
    assert!(dec.next_frame().unwrap().is_none());

    // An unknown variant: the frame arrives, its payload does not decode.
    let mut unknown = wire::encode(&nemflow_proto::app::AppRequest::Stats).unwrap();
    unknown[wire::HEADER_BYTES] = 0x7f;
    let mut dec = Decoder::new(0);
    dec.feed(&unknown);
    let frame = dec.next_frame().unwrap().unwrap();
    assert!(frame.decode::<nemflow_proto::app::AppRequest>().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Samples of every message with random bytes changed, cut or glued together.
    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        glue in any::<bool>(),
    ) {
        let all = framed();
        let mut bytes = all[which % all.len()].clone();
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        bytes.truncate(cut % (bytes.len() + 1).max(1) + 1);
        if glue {
            bytes.extend_from_slice(&all[(which + 1) % all.len()]);
        }
        decode_stream(&bytes);
    }
}
