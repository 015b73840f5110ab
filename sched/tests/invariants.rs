//! Property tests of the scheduler's guarantees over random flow sets that pass admission, all
//! flows continuously backlogged, with flows added and removed while the scheduler runs.
//!
//! The admission reserve is [`non_preemption_reserve_ppm`] for the generated set: the margin
//! that non-preemptive frames need (see the crate documentation); with it, every flow set the
//! scheduler admits must meet every guarantee below, checked from the frames on the wire.

// A test crate: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run, service_per_window, Run, TestFlow};
use nemflow_sched::{non_preemption_reserve_ppm, Qos};
use proptest::prelude::*;

const MAX_LEN: u32 = 1514;

#[derive(Debug, Clone)]
struct GSpec {
    /// Period in units of the longest frame's wire time.
    period_frames: u64,
    /// Relative share of the guaranteed load.
    weight: u64,
    extra: bool,
    len_min: u32,
    /// Added at this fraction (/256) of the first third of the run.
    add_at: u8,
    /// Removed at this fraction (/256) of the last two thirds, or never.
    remove_at: Option<u8>,
}

#[derive(Debug, Clone)]
struct Case {
    rate: u64,
    /// Fraction (/1000) of the admissible load the slices use.
    load_permille: u64,
    guaranteed: Vec<GSpec>,
    /// Best-effort flows: (add_at, remove_at) as for guaranteed ones.
    best_effort: Vec<(u8, Option<u8>)>,
}

fn gspec() -> impl Strategy<Value = GSpec> {
    (
        20u64..=120,
        1u64..=100,
        any::<bool>(),
        64u32..=MAX_LEN,
        any::<u8>(),
        proptest::option::weighted(0.3, any::<u8>()),
    )
        .prop_map(
            |(period_frames, weight, extra, len_min, add_at, remove_at)| GSpec {
                period_frames,
                weight,
                extra,
                len_min,
                add_at,
                remove_at,
            },
        )
}

fn case(churn: bool) -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![
            100_000_000u64,
            1_000_000_000,
            3_000_000_000,
            10_000_000_000,
        ]),
        300u64..=1000,
        prop::collection::vec(gspec(), 1..=12),
        prop::collection::vec(
            (any::<u8>(), proptest::option::weighted(0.3, any::<u8>())),
            0..=2,
        ),
    )
        .prop_map(
            move |(rate, load_permille, mut guaranteed, mut best_effort)| {
                if !churn {
                    for g in &mut guaranteed {
                        g.add_at = 0;
                        g.remove_at = None;
                    }
                    best_effort.fill((0, None));
                }
                Case {
                    rate,
                    load_permille,
                    guaranteed,
                    best_effort,
                }
            },
        )
}

/// Exact wire time of the longest frame, rate units; and in ns, rounded up.
fn max_frame(rate: u64) -> (u128, u64) {
    let units = common::wire_units(MAX_LEN);
    (
        units,
        u64::try_from(units.div_ceil(u128::from(rate))).unwrap(),
    )
}

/// Builds the flows and the reserve; returns them with the run's end time.
fn build(c: &Case) -> (Vec<TestFlow>, u32, u64) {
    let (_, f_ns) = max_frame(c.rate);
    let periods: Vec<u64> = c
        .guaranteed
        .iter()
        .map(|g| g.period_frames * f_ns)
        .collect();
    let p_min = *periods.iter().min().unwrap();
    let p_max = *periods.iter().max().unwrap();
    let n = c.guaranteed.len() as u64;
    let reserve = non_preemption_reserve_ppm(n, MAX_LEN, p_min, c.rate);
    let reserve_ppm = u32::try_from(reserve).unwrap();
    // Slices: the admissible load (1 − reserve), times load_permille, split by weight.
    let avail_ppm = 1_000_000 - reserve;
    let total_w: u64 = c.guaranteed.iter().map(|g| g.weight).sum();
    let end_ns = 12 * p_max;
    let third = end_ns / 3;
    let when = |add_at: u8, remove_at: Option<u8>| {
        let add = third * u64::from(add_at) / 256;
        let remove = remove_at.map_or(u64::MAX, |r| third + 2 * third * u64::from(r) / 256);
        (add, remove.max(add + 1))
    };
    let mut flows = Vec::new();
    for (i, (g, &p)) in c.guaranteed.iter().zip(&periods).enumerate() {
        let share_ppb = u128::from(avail_ppm) * 1000 * u128::from(c.load_permille) / 1000
            * u128::from(g.weight)
            / u128::from(total_w);
        let slice = u64::try_from(u128::from(p) * share_ppb / 1_000_000_000)
            .unwrap()
            .max(1);
        let (add_ns, remove_ns) = when(g.add_at, g.remove_at);
        flows.push(TestFlow {
            id: 100 + i as u32,
            qos: Qos::guaranteed(p, slice).with_extra(g.extra),
            add_ns,
            remove_ns,
            len_min: g.len_min,
            len_max: MAX_LEN,
        });
    }
    for (i, &(add_at, remove_at)) in c.best_effort.iter().enumerate() {
        let (add_ns, remove_ns) = when(add_at, remove_at);
        flows.push(TestFlow {
            id: 200 + i as u32,
            qos: Qos::best_effort(p_max),
            add_ns,
            remove_ns,
            len_min: 64,
            len_max: MAX_LEN,
        });
    }
    (flows, reserve_ppm, end_ns)
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let (flows, reserve_ppm, end_ns) = build(c);
    let Run {
        frames,
        stats,
        admitted,
        ..
    } = run(c.rate, reserve_ppm, &flows, end_ns);
    let rate = u128::from(c.rate);
    let (f_max, _) = max_frame(c.rate);
    // Every flow in these sets fits: admission must take them all.
    prop_assert_eq!(
        admitted.len(),
        flows.len(),
        "admission rejected a flow of a set that fits"
    );
    for s in &stats {
        prop_assert_eq!(
            s.deadline_misses,
            0,
            "flow {} missed deadlines: {:?}",
            s.id,
            s
        );
    }

    for f in admitted.iter().filter(|f| f.qos.is_guaranteed()) {
        let s = u128::from(f.qos.slice_ns) * rate;
        let until = f.remove_ns.min(end_ns);
        let all = service_per_window(&frames, f.id, f.add_ns, f.qos.period_ns, until, false);
        let guaranteed = service_per_window(&frames, f.id, f.add_ns, f.qos.period_ns, until, true);
        for (k, (&got, &g)) in all.iter().zip(&guaranteed).enumerate() {
            // At least its slice minus one frame in every period window.
            prop_assert!(
                got + f_max >= s,
                "flow {} window {k}: got {got} < slice {s} - frame {f_max}",
                f.id
            );
            if !f.qos.extra {
                // A flow without slack rights: never more than slice plus one frame.
                prop_assert!(
                    got < s + f_max,
                    "flow {} window {k}: got {got} >= slice {s} + frame {f_max}",
                    f.id
                );
            }
            prop_assert!(g <= got);
        }
        // Whole run: the guaranteed service of K windows is K·s to within one frame.
        let k = guaranteed.len() as u128;
        let cum: u128 = guaranteed.iter().sum();
        prop_assert!(
            cum >= k * s && cum < k * s + f_max,
            "flow {}: {cum} over {k} windows of {s}",
            f.id
        );
        if !f.qos.extra {
            prop_assert!(frames
                .iter()
                .filter(|fr| fr.flow == f.id)
                .all(|fr| !fr.slack));
        }
    }

    // Slack only when no guaranteed flow has time left in its window (so slack can delay a
    // guaranteed flow by at most the one frame already on the wire when its window opens).
    let guaranteed: Vec<&TestFlow> = admitted.iter().filter(|f| f.qos.is_guaranteed()).collect();
    let mut cum = vec![0u128; guaranteed.len()];
    for fr in &frames {
        if fr.slack {
            for (gi, g) in guaranteed.iter().enumerate() {
                if g.add_ns <= fr.decided_ns && fr.decided_ns < g.remove_ns {
                    let windows = u128::from((fr.decided_ns - g.add_ns) / g.qos.period_ns + 1);
                    let owed = windows * u128::from(g.qos.slice_ns) * rate;
                    prop_assert!(
                        cum[gi] >= owed,
                        "slack frame of {} at {} ns while flow {} had {} of {owed} units",
                        fr.flow,
                        fr.decided_ns,
                        g.id,
                        cum[gi]
                    );
                }
            }
        }
        if !fr.slack {
            if let Some(gi) = guaranteed.iter().position(|g| g.id == fr.flow) {
                cum[gi] += fr.end - fr.start;
            }
        }
    }

    // The link is never idle while an extra flow is backlogged (all flows here saturate).
    let extra: Vec<(u128, u128)> = admitted
        .iter()
        .filter(|f| f.qos.extra)
        .map(|f| {
            (
                u128::from(f.add_ns) * rate,
                u128::from(f.remove_ns.min(end_ns)) * rate,
            )
        })
        .collect();
    let mut idle_from = 0u128;
    for fr in &frames {
        prop_assert!(fr.start >= idle_from, "frames overlap on the wire");
        if fr.start > idle_from {
            for &(a, b) in &extra {
                prop_assert!(
                    fr.start <= a || idle_from >= b,
                    "wire idle over ({idle_from}, {}) while an extra flow was backlogged in [{a}, {b})",
                    fr.start
                );
            }
        }
        idle_from = fr.end;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A fixed flow set, everything backlogged from t = 0.
    #[test]
    fn guarantees_hold_for_admitted_sets(c in case(false)) {
        check(&c)?;
    }

    /// Flows join and leave while the scheduler runs.
    #[test]
    fn guarantees_hold_with_flows_added_and_removed(c in case(true)) {
        check(&c)?;
    }
}
