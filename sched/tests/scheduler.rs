//! The scheduler's behaviour through its public API, in virtual time: admission, EDF, slack,
//! debt, no hoarding, pacing, the latency hint, accounting.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nemflow_sched::{non_preemption_reserve_ppm, Pick, Qos, SchedError, Scheduler};

const RATE: u64 = 100_000_000;
/// Wire time of a 1514-byte frame at 100 Mbit/s: 1538 × 8 bit = 123.04 µs.
const F: u64 = 123_040;
const MS: u64 = 1_000_000;

/// Sends every frame the scheduler asks for until `until_ns` (all flows saturating unless
/// `len_of` says otherwise); returns `(decision time, flow)` of each.
fn drive(s: &mut Scheduler, from_ns: u64, until_ns: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut t = from_ns;
    while t < until_ns {
        match s.pick(t) {
            Pick::Send(id) => {
                s.charge(id, 1514, t).unwrap();
                out.push((t, id));
            }
            Pick::WaitUntil(w) => {
                assert!(w > t);
                t = w;
            }
            Pick::Idle => break,
        }
    }
    out
}

fn count(sent: &[(u64, u32)], id: u32) -> usize {
    sent.iter().filter(|&&(_, f)| f == id).count()
}

#[test]
fn admission_rejects_and_says_by_how_much() {
    let mut s = Scheduler::new(RATE, 10_000).unwrap(); // keep 1% free
    s.add_flow(1, Qos::guaranteed(100 * MS, 90 * MS), 0)
        .unwrap();
    let err = s.add_flow(2, Qos::guaranteed(10 * MS, MS), 0).unwrap_err();
    assert_eq!(
        err,
        SchedError::Admission {
            id: 2,
            slice_ns: MS,
            period_ns: 10 * MS,
            requested_ppb: 1_000_000_000,
            limit_ppb: 990_000_000,
            over_ppb: 10_000_000,
            max_slice_ns: 900_000,
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("over the limit of 990000000 ppb by 10000000 ppb"),
        "{msg}"
    );
    assert!(
        msg.contains("largest slice that fits with this period is 900000 ns"),
        "{msg}"
    );
    // What it proposes fits, exactly to the limit.
    s.add_flow(2, Qos::guaranteed(10 * MS, 900_000), 0).unwrap();
    assert_eq!(s.guaranteed_load_ppb(), 990_000_000);
    // Best effort never counts.
    s.add_flow(3, Qos::best_effort(100 * MS), 0).unwrap();
    // Not one more nanosecond.
    assert!(matches!(
        s.add_flow(4, Qos::guaranteed(MS, 1), 0),
        Err(SchedError::Admission {
            max_slice_ns: 0,
            ..
        })
    ));
    // A QoS change is checked without the flow's own share; a rejected one changes nothing.
    assert!(s.set_qos(1, Qos::guaranteed(100 * MS, 91 * MS), 0).is_err());
    assert_eq!(s.stats(1).unwrap().qos.slice_ns, 90 * MS);
    s.set_qos(1, Qos::guaranteed(100 * MS, 80 * MS), 0).unwrap();
    s.set_qos(1, Qos::guaranteed(100 * MS, 90 * MS), 0).unwrap();
    // Removing a flow frees its share.
    s.remove_flow(1).unwrap();
    s.add_flow(4, Qos::guaranteed(MS, MS / 2), 0).unwrap();
    assert_eq!(s.len(), 3);
}

#[test]
fn rejects_bad_input() {
    assert!(matches!(
        Scheduler::new(0, 0),
        Err(SchedError::InvalidLinkRate { .. })
    ));
    assert!(matches!(
        Scheduler::new(RATE, 1_000_001),
        Err(SchedError::InvalidReserve { .. })
    ));
    let mut s = Scheduler::new(RATE, 0).unwrap();
    assert_eq!(
        s.add_flow(1, Qos::guaranteed(0, 0), 0),
        Err(SchedError::ZeroPeriod)
    );
    assert_eq!(
        s.add_flow(1, Qos::guaranteed(10, 0), 0),
        Err(SchedError::NeverSends)
    );
    s.add_flow(1, Qos::best_effort(MS), 0).unwrap();
    assert_eq!(
        s.add_flow(1, Qos::best_effort(MS), 0),
        Err(SchedError::DuplicateFlow(1))
    );
    assert_eq!(
        s.set_backlogged(2, true, 0),
        Err(SchedError::UnknownFlow(2))
    );
    assert_eq!(s.charge(2, 64, 0), Err(SchedError::UnknownFlow(2)));
    assert!(matches!(
        s.charge(1, 2 << 20, 0),
        Err(SchedError::FrameTooLong { .. })
    ));
    assert_eq!(s.remove_flow(2).unwrap_err(), SchedError::UnknownFlow(2));
    assert_eq!(s.pick(0), Pick::Idle);
}

#[test]
fn earliest_deadline_first_then_slack_round_robin() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(10, Qos::guaranteed(10 * MS, 2 * F), 0).unwrap();
    s.add_flow(11, Qos::guaranteed(MS, F), 0).unwrap();
    for id in [20, 21, 22] {
        s.add_flow(id, Qos::best_effort(MS), 0).unwrap();
    }
    for id in [20, 21, 22, 10, 11] {
        s.set_backlogged(id, true, 0).unwrap();
    }
    let sent: Vec<u32> = drive(&mut s, 0, 8 * F)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    // Flow 11 (deadline 1 ms) first, then 10 (deadline 10 ms) for its two frames, then slack.
    assert_eq!(sent, [11, 10, 10, 20, 21, 22, 20, 21]);
}

#[test]
fn debt_from_an_overrun_is_carried_into_the_next_period() {
    // 1.5 frames per 1 ms period: 2 frames, then 1 (the half-frame overrun repaid), then 2...
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(1, Qos::guaranteed(MS, F + F / 2), 0).unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    let sent = drive(&mut s, 0, 100 * MS);
    let per_period: Vec<usize> = (0..100)
        .map(|k| sent.iter().filter(|&&(t, _)| t / MS == k).count())
        .collect();
    for (k, &n) in per_period.iter().enumerate() {
        assert_eq!(n, if k % 2 == 0 { 2 } else { 1 }, "period {k}");
    }
    assert_eq!(sent.len(), 150); // exactly 100 × 1.5 frames
    let st = s.stats(1).unwrap();
    assert_eq!(st.deadline_misses, 0);
    assert_eq!(st.total.extra_ns, 0);
}

#[test]
fn an_idle_flow_does_not_hoard() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(1, Qos::guaranteed(10 * MS, 3 * F), 0).unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    assert_eq!(s.pick(0), Pick::Send(1));
    s.charge(1, 1514, 0).unwrap();
    s.set_backlogged(1, false, 0).unwrap();
    // Back before its deadline: the rest of this period's slice (2 frames), then wait for the next.
    s.set_backlogged(1, true, 5 * MS).unwrap();
    let sent = drive(&mut s, 5 * MS, 10 * MS);
    assert_eq!(sent.len(), 2);
    assert_eq!(s.pick(5 * MS + 2 * F), Pick::WaitUntil(10 * MS));
    s.set_backlogged(1, false, 5 * MS + 2 * F).unwrap();
    // Idle across two deadlines: on waking the period restarts now, with one slice, not three.
    s.set_backlogged(1, true, 37 * MS).unwrap();
    let st = s.stats(1).unwrap();
    assert_eq!(st.current_period.start_ns, 37 * MS);
    assert_eq!(st.current_period.end_ns, 47 * MS);
    assert_eq!(st.last_period.unwrap().end_ns, 10 * MS);
    assert_eq!(st.last_period.unwrap().usage.packets, 3);
    assert_eq!(st.deadline_misses, 0, "idle is not a miss");
    let sent = drive(&mut s, 37 * MS, 47 * MS);
    assert_eq!(sent.len(), 3);
    assert_eq!(s.pick(37 * MS + 3 * F), Pick::WaitUntil(47 * MS));
}

#[test]
fn pick_paces_by_the_wire_and_waits_for_allocations() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(1, Qos::guaranteed(MS, F), 0).unwrap();
    assert_eq!(s.pick(0), Pick::Idle);
    s.set_backlogged(1, true, 0).unwrap();
    assert_eq!(s.pick(0), Pick::Send(1));
    s.charge(1, 1514, 0).unwrap();
    assert_eq!(s.wire_free_at_ns(), F);
    assert_eq!(s.pick(1000), Pick::WaitUntil(F)); // wire busy
    assert_eq!(s.pick(F), Pick::WaitUntil(MS)); // slice used: next allocation at the deadline
    assert_eq!(s.pick(MS), Pick::Send(1));
    // Lookahead covers a busy wire only: a frame may be chosen up to 50 µs before the wire
    // frees (and is then queued behind the one on it), never before the flow's allocation.
    s.charge(1, 1514, MS).unwrap();
    s.set_lookahead_ns(50_000);
    assert_eq!(s.pick(MS + F - 60_000), Pick::WaitUntil(MS + F - 50_000));
    assert_eq!(s.pick(MS + F - 50_000), Pick::WaitUntil(2 * MS));
    s.add_flow(2, Qos::best_effort(MS), MS + F - 50_000)
        .unwrap();
    s.set_backlogged(2, true, MS + F - 50_000).unwrap();
    assert_eq!(s.pick(MS + F - 40_000), Pick::Send(2));
    s.charge(2, 1514, MS + F - 40_000).unwrap();
    assert_eq!(
        s.wire_free_at_ns(),
        MS + 2 * F,
        "queued back to back behind the frame on the wire"
    );
}

#[test]
fn accounting_splits_guaranteed_and_slack_per_period() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(1, Qos::guaranteed(MS, 2 * F).with_extra(true), 0)
        .unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    // Decisions at 0, F, .., 8F are in the first period (8F = 984.32 µs); 9F is in the second.
    let sent = drive(&mut s, 0, 9 * F + 1);
    assert_eq!(sent.len(), 10);
    let st = s.stats(1).unwrap();
    let last = st.last_period.unwrap();
    assert_eq!((last.start_ns, last.end_ns), (0, MS));
    assert_eq!(last.usage.guaranteed_ns, 2 * F);
    assert_eq!(last.usage.extra_ns, 7 * F);
    assert_eq!(last.usage.packets, 9);
    assert_eq!(last.usage.bytes, 9 * 1514);
    assert!(!last.deadline_missed);
    assert_eq!(st.current_period.usage.guaranteed_ns, F);
    assert_eq!(st.total.guaranteed_ns, 3 * F);
    assert_eq!(st.total.extra_ns, 7 * F);
    assert_eq!(st.total.packets, 10);
    assert_eq!(st.periods, 1);
    assert_eq!(st.remaining_ns, i64::try_from(F).unwrap());
    // A period that ended on the scheduler's clock shows as completed before it rolls.
    s.set_backlogged(1, false, 9 * F).unwrap();
    s.pick(5 * MS);
    let st = s.stats(1).unwrap();
    assert_eq!(st.periods, 2);
    assert_eq!(st.last_period.unwrap().usage.packets, 1);
}

#[test]
fn without_frame_margin_ties_miss_and_misses_are_counted() {
    // Three flows of exactly a third of the link each: the fluid test admits them (reserve 0),
    // but each rounds its 2.71 frames up to 3, so 3 × 3 frames (1.107 ms) do not fit in the
    // 1 ms period and the last flow served is cut short. The scheduler counts the miss.
    let mut s = Scheduler::new(RATE, 0).unwrap();
    for id in 1..=3 {
        s.add_flow(id, Qos::guaranteed(MS, 333_333), 0).unwrap();
        s.set_backlogged(id, true, 0).unwrap();
    }
    drive(&mut s, 0, 100 * MS);
    let misses: u64 = (1..=3).map(|id| s.stats(id).unwrap().deadline_misses).sum();
    let missed: u64 = (1..=3).map(|id| s.stats(id).unwrap().missed_ns).sum();
    // Period 1 fits (the last flow's third frame starts at 984 µs), but from then on every
    // period starts with the wire busy with last period's overrun.
    assert!(misses >= 10, "{misses} misses");
    assert!(missed > 0);
    // The reserve that covers non-preemption would not have admitted them.
    let reserve = non_preemption_reserve_ppm(3, 1514, MS, RATE);
    assert_eq!(reserve, 492_160); // 4 frames of 123.04 µs per 1 ms
    let mut s = Scheduler::new(RATE, u32::try_from(reserve).unwrap()).unwrap();
    s.add_flow(1, Qos::guaranteed(MS, 333_333), 0).unwrap();
    assert!(s.add_flow(2, Qos::guaranteed(MS, 333_333), 0).is_err());
}

#[test]
fn latency_hint_holds_the_wire_and_charges_the_wait() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(
        1,
        Qos::guaranteed(10 * MS, 5 * MS).with_latency_hint_ns(MS),
        0,
    )
    .unwrap();
    s.add_flow(2, Qos::best_effort(10 * MS), 0).unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    s.set_backlogged(2, true, 0).unwrap();
    assert_eq!(s.pick(0), Pick::Send(1));
    s.charge(1, 1514, 0).unwrap();
    s.set_backlogged(1, false, 0).unwrap(); // its FIFO ran empty
                                            // The wire is held for flow 1 for 1 ms after its frame, not given to the best-effort flow.
    assert_eq!(s.pick(F), Pick::WaitUntil(F + MS));
    // It comes back within the hold: it sends, and pays for the 376.96 µs the wire idled.
    s.set_backlogged(1, true, 500_000).unwrap();
    assert_eq!(s.pick(500_000), Pick::Send(1));
    s.charge(1, 1514, 500_000).unwrap();
    assert_eq!(s.stats(1).unwrap().total.held_ns, 500_000 - F);
    // Empty again: held until the hint runs out, then the best-effort flow goes.
    s.set_backlogged(1, false, 500_000).unwrap();
    assert_eq!(s.pick(500_000 + F), Pick::WaitUntil(500_000 + F + MS));
    assert_eq!(s.pick(500_000 + F + MS), Pick::Send(2));
    let st = s.stats(1).unwrap();
    assert_eq!(st.total.held_ns, 500_000 - F + MS);
    let used = 2 * F + 500_000 - F + MS;
    assert_eq!(st.remaining_ns, i64::try_from(5 * MS - used).unwrap());
}

#[test]
fn latency_hold_yields_to_an_earlier_deadline() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    s.add_flow(
        1,
        Qos::guaranteed(10 * MS, 5 * MS).with_latency_hint_ns(2 * MS),
        0,
    )
    .unwrap();
    s.add_flow(2, Qos::guaranteed(MS, F), 0).unwrap();
    s.set_backlogged(1, true, 0).unwrap();
    assert_eq!(s.pick(0), Pick::Send(1));
    s.charge(1, 1514, 0).unwrap();
    s.set_backlogged(1, false, 0).unwrap();
    assert_eq!(s.pick(F), Pick::WaitUntil(F + 2 * MS));
    // Flow 2 wakes with deadline 1.3 ms, earlier than flow 1's 10 ms: the hold ends.
    s.set_backlogged(2, true, 300_000).unwrap();
    assert_eq!(s.pick(300_000), Pick::Send(2));
    assert_eq!(s.stats(1).unwrap().total.held_ns, 300_000 - F);
}

#[test]
fn removing_and_changing_flows_while_backlogged() {
    let mut s = Scheduler::new(RATE, 0).unwrap();
    for id in 1..=4 {
        s.add_flow(id, Qos::guaranteed(MS, 2 * F).with_extra(id % 2 == 0), 0)
            .unwrap();
        s.set_backlogged(id, true, 0).unwrap();
    }
    drive(&mut s, 0, 3 * MS);
    let gone = s.remove_flow(2).unwrap();
    assert!(gone.total.packets > 0);
    s.set_qos(3, Qos::best_effort(MS), 3 * MS).unwrap();
    // Slot reuse: a new flow takes the removed one's place without inheriting anything.
    s.add_flow(5, Qos::guaranteed(MS, F), 3 * MS).unwrap();
    s.set_backlogged(5, true, 3 * MS).unwrap();
    let sent = drive(&mut s, 3 * MS, 13 * MS);
    assert_eq!(count(&sent, 2), 0);
    assert_eq!(count(&sent, 5), 10); // one frame per period
    assert_eq!(count(&sent, 1), 20); // two per period, no slack
                                     // Flow 4 (extra) and 3 (now best effort) share the rest round robin.
    let (n3, n4) = (count(&sent, 3), count(&sent, 4));
    assert!(n3.abs_diff(n4 - 20) <= 1, "slack split {n3} / {}", n4 - 20);
    assert_eq!(s.stats(5).unwrap().total.packets, 10);
    for id in [1, 3, 4, 5] {
        assert_eq!(s.stats(id).unwrap().deadline_misses, 0, "flow {id}");
    }
}

#[test]
fn a_lookahead_longer_than_frames_keeps_the_link_rate() {
    // A look-ahead of many frame times lets the caller queue frames ahead of the wire; the wire
    // must still run at the link rate (it used to run away when the look-ahead exceeded one frame).
    for lookahead in [0, 50_000, 2_000_000, 20_000_000] {
        let mut s = Scheduler::new(RATE, 20_000).unwrap();
        s.set_lookahead_ns(lookahead);
        for id in 1..=2 {
            s.add_flow(id, Qos::best_effort(100 * MS), 0).unwrap();
            s.set_backlogged(id, true, 0).unwrap();
        }
        let (mut now, mut frames) = (0u64, 0u64);
        while now < 1_000 * MS {
            for _ in 0..10_000 {
                match s.pick(now) {
                    Pick::Send(id) => {
                        s.charge(id, 1514, now).unwrap();
                        frames += 1;
                    }
                    _ => break,
                }
            }
            assert!(
                s.wire_free_at_ns() <= now + lookahead + F,
                "wire at most one look-ahead and a frame ahead of the caller"
            );
            now += 10_000;
        }
        let wire_bits = frames * (1514 + 24) * 8;
        let max_bits = RATE * (1_000 * MS + lookahead) / 1_000_000_000 + (1514 + 24) * 8;
        assert!(
            wire_bits <= max_bits,
            "lookahead {lookahead}: {wire_bits} bits sent, at most {max_bits}"
        );
        if lookahead >= 50_000 {
            // A look-ahead longer than the polling step keeps the wire busy all the time.
            assert!(
                wire_bits * 1000 >= RATE * 999,
                "lookahead {lookahead}: only {wire_bits} bits"
            );
        }
    }
}
