//! Property tests: ring index arithmetic across the u32 wrap, and iorec validation against a
//! model in wide (u64) arithmetic.

use nemflow_rbuf::ring::{check_consumer_index, check_producer_index, distance};
use nemflow_rbuf::{Extent, FifoId, IoRec, Limits, MAX_EXTENTS};
use proptest::prelude::*;

/// Bases near the wrap, and anywhere.
fn base() -> impl Strategy<Value = u32> {
    prop_oneof![u32::MAX - 5000..=u32::MAX, 0u32..5000, any::<u32>()]
}

fn slots() -> impl Strategy<Value = u32> {
    (1u32..=16).prop_map(|s| 1 << s)
}

proptest! {
    /// The consumer accepts exactly the producer indices in [last, tail + slots] (wide model).
    #[test]
    fn producer_index_model(tail in base(), slots in slots(), seen_ahead in 0u64..=200_000,
                            last_ahead_frac in 0.0f64..=1.0, back in 0u64..=70_000, backwards in any::<bool>()) {
        let last_ahead = ((slots as f64) * last_ahead_frac) as u64; // last ∈ [tail, tail + slots]
        let last = (u64::from(tail) + last_ahead) as u32;
        // `seen` as a wide offset from tail; backwards moves go below `last`.
        let seen_off: i64 = if backwards { last_ahead as i64 - back as i64 } else { seen_ahead as i64 };
        let seen = (i64::from(tail) + seen_off).rem_euclid(1 << 32) as u32;
        let valid_model = seen_off >= last_ahead as i64 && seen_off <= i64::from(slots);
        let r = check_producer_index(FifoId::Full, tail, last, seen, slots);
        // The model sees offsets in a 2^32 window; an offset that aliases back into the valid range
        // modulo 2^32 is indistinguishable, so only compare where no aliasing is possible.
        if seen_off > -(1 << 31) && seen_off < (1 << 31) {
            prop_assert_eq!(r.is_ok(), valid_model, "tail {} last {} seen {} slots {}", tail, last, seen, slots);
        }
    }

    /// The producer accepts exactly the consumer indices in [last, head] (wide model).
    #[test]
    fn consumer_index_model(head in base(), slots in slots(), used_frac in 0.0f64..=1.0, seen_off in -200_000i64..=200_000) {
        let used = ((slots as f64) * used_frac) as i64; // head - last ∈ [0, slots]
        let last = (i64::from(head) - used).rem_euclid(1 << 32) as u32;
        let seen = (i64::from(last) + seen_off).rem_euclid(1 << 32) as u32;
        let valid_model = seen_off >= 0 && seen_off <= used;
        prop_assert_eq!(check_consumer_index(FifoId::Empty, head, last, seen, slots).is_ok(), valid_model);
    }

    #[test]
    fn distance_is_wrapping_difference(a in any::<u32>(), d in any::<u32>()) {
        prop_assert_eq!(distance(a, a.wrapping_add(d)), d);
    }

    /// Validation agrees with a u64 model; decode(encode(x)) = x; nothing panics on any bits.
    #[test]
    fn iorec_validation_model(words in any::<[u64; 4]>(), data_bytes in 1u64..=(1u64 << 32),
                              max in any::<u32>()) {
        let rec = IoRec::decode(words);
        let limits = Limits { data_bytes, max_packet_bytes: max };
        let n = usize::from(rec.count);
        let model = (1..=MAX_EXTENTS).contains(&n)
            && rec.extents[..n.min(MAX_EXTENTS)].iter().all(|e| u64::from(e.offset) + u64::from(e.len) <= data_bytes
                && u64::from(e.offset) + u64::from(e.len) <= u64::from(u32::MAX))
            && rec.extents[..n.min(MAX_EXTENTS)].iter().map(|e| u64::from(e.len)).sum::<u64>() <= u64::from(max);
        prop_assert_eq!(rec.validate(&limits).is_ok(), model);
        prop_assert_eq!(IoRec::decode(rec.encode()), rec);
    }

    /// Extents built to fit are accepted; pushing one past the end by any amount is rejected.
    #[test]
    fn extents_at_the_edge(data_kb in 1u32..=1024, len in 0u32..=4096, past in 1u32..=u32::MAX) {
        let data = u64::from(data_kb) * 1024;
        let limits = Limits { data_bytes: data, max_packet_bytes: u32::MAX };
        let len = len.min(data as u32);
        let ok = IoRec::single(Extent::new(data as u32 - len, len), 0);
        prop_assert!(ok.validate(&limits).is_ok());
        let bad = IoRec::single(Extent::new((data as u32 - len).saturating_add(past), len.max(1)), 0);
        prop_assert!(bad.validate(&limits).is_err());
    }
}
