//! Wire time is exact: summing frames never drifts from the closed form.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nemflow_sched::{Pick, Qos, Scheduler, WireClock, WireInstant};

/// `n` frames of `len` bytes back to back from t = 0 end exactly at `n·(len+24)·8·10^9/rate` ns.
fn closed_form(n: u64, len: u32, rate: u64) -> WireInstant {
    let units = u128::from(n) * (u128::from(len) + 24) * 8 * 1_000_000_000;
    let rate = u128::from(rate);
    WireInstant {
        ns: u64::try_from(units / rate).unwrap(),
        frac: u64::try_from(units % rate).unwrap(),
    }
}

/// 10^9 frames through the wire clock the scheduler uses, each at the nanosecond the caller
/// sees the wire free (as a pacing driver would): 11.4 hours of a 300 000 007 bit/s wire (a rate
/// with no factor in common with 10^9), so every frame carries a sub-nanosecond remainder. A
/// clock rounded to the nanosecond per frame would be off by up to a second here.
#[test]
fn wire_clock_no_drift_over_1e9_frames() {
    const N: u64 = 1_000_000_000;
    let rate = 300_000_007;
    let mut clock = WireClock::new(rate);
    for _ in 0..N {
        let now = clock.free_at().ceil_ns();
        clock.send(now, 1514);
    }
    assert_eq!(clock.free_at(), closed_form(N, 1514, rate));
    // 10^9 × 12304 bit × 10^9 / 300 000 007 bit/s = 41 013 332 376 355 ns + 173 365 515 / rate.
    assert_eq!(
        clock.free_at(),
        WireInstant {
            ns: 41_013_332_376_355,
            frac: 173_365_515
        }
    );
}

/// Mixed frame lengths on a link rate that shares no factor with 10^9.
#[test]
fn wire_clock_no_drift_mixed_lengths_odd_rate() {
    let rate = 999_999_937; // prime
    let mut clock = WireClock::new(rate);
    let lens = [64u32, 1514, 576, 9000, 1500, 65];
    let mut units: u128 = 0;
    for i in 0..3_000_000u64 {
        let len = lens[(i % 6) as usize];
        let now = clock.free_at().ceil_ns();
        clock.send(now, len);
        units += (u128::from(len) + 24) * 8 * 1_000_000_000;
    }
    assert_eq!(clock.free_at().units(rate), units);
}

/// A frame sent after the wire has been idle starts at `now`, not back to back.
#[test]
fn idle_wire_restarts_at_now() {
    let mut clock = WireClock::new(100_000_000);
    assert_eq!(clock.send(0, 1514), WireInstant { ns: 0, frac: 0 });
    assert_eq!(clock.free_at().ns, 123_040);
    assert_eq!(clock.send(500_000, 1514).ns, 500_000);
    assert_eq!(clock.free_at().ns, 623_040);
    // Early caller: queued behind the frame on the wire.
    assert_eq!(clock.send(600_000, 64).ns, 623_040);
}

/// Through the whole scheduler: a saturated best-effort flow for 10^6 decisions keeps the
/// wire exactly busy, and `pick` paces (WaitUntil the wire is free) in between.
#[test]
fn scheduler_paces_exactly() {
    let rate = 3_000_000_000;
    let mut s = Scheduler::new(rate, 0).unwrap();
    s.add_flow(1, Qos::best_effort(1_000_000), 0).unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    let mut t = 0;
    let mut sent = 0u64;
    while sent < 1_000_000 {
        match s.pick(t) {
            Pick::Send(1) => {
                s.charge(1, 1514, t).unwrap();
                sent += 1;
            }
            Pick::WaitUntil(w) => {
                assert_eq!(w, s.wire_free_at_ns());
                assert!(w > t);
                t = w;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(s.wire_free_at(), closed_form(sent, 1514, rate));
    assert_eq!(s.wire_time_ns(1514), 4102);
    let st = s.stats(1).unwrap();
    assert_eq!(st.total.packets, sent);
    assert_eq!(st.total.bytes, sent * 1514);
    assert_eq!(st.total.extra_ns, s.wire_free_at().ns);
}
