//! Seeds for a flow's smoltcp interface: random per flow, and when the flow manager reopens a
//! 4-tuple from TIME_WAIT, chosen so that the new connection's initial sequence number is above
//! the old connection's last one (RFC 1122 §4.2.2.13, condition 1).
//!
//! smoltcp draws the ISN from its interface's PRNG (sPCG32) with no other way to set it; the
//! first draws of a fresh interface are the IPv4 identification, then the ISN. [`predicted_isn`]
//! replays them; a test checks the prediction against the SYN-ACK smoltcp really sends, so a
//! smoltcp that changes its order of draws fails loudly rather than silently.

use std::io::Read;

/// The sPCG32 step smoltcp's `Rand` uses.
fn next(state: &mut u64) -> u32 {
    const M: u64 = 0xbb2e_fcec_3c39_611d;
    const A: u64 = 0x7590_ef39;
    let s = state.wrapping_mul(M).wrapping_add(A);
    *state = s;
    let shift = 29 - (s >> 61);
    (s >> shift) as u32
}

/// The ISN the first TCP socket of an interface seeded with `seed` picks.
pub(crate) fn predicted_isn(seed: u64) -> u32 {
    let mut st = seed;
    // `Interface::new`: the first non-zero IPv4 identification.
    loop {
        let n = next(&mut st);
        if (n ^ (n >> 16)) as u16 != 0 {
            break;
        }
    }
    next(&mut st)
}

/// `a` is after `b` in sequence space.
pub(crate) fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// 64 random bits (the kernel's, or time and pid mixed when it cannot say).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// A seed for a new flow's interface; with `isn_above`, one whose ISN is above it (and within
/// a quarter of the sequence space, well clear of wrapping back below it).
pub(crate) fn seed(isn_above: Option<u32>) -> u64 {
    let mut s = random_u64();
    let Some(floor) = isn_above else {
        return s;
    };
    // Each try succeeds with probability 1/4: give up after many (never in practice) with the
    // last seed, which is still a valid random seed.
    for _ in 0..256 {
        let isn = predicted_isn(s);
        if seq_after(isn, floor) && isn.wrapping_sub(floor) < 1 << 30 {
            return s;
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_meet_the_floor_across_the_wrap() {
        for floor in [0u32, 1 << 31, u32::MAX - 5, 12345] {
            for _ in 0..20 {
                let isn = predicted_isn(seed(Some(floor)));
                assert!(seq_after(isn, floor), "{isn} not above {floor}");
            }
        }
        // Different seeds, different ISNs.
        assert_ne!(predicted_isn(seed(None)), predicted_isn(seed(None)));
    }
}
