//! A virtual-time driver for the scheduler that records every frame, shared by the integration
//! tests. All times are exact: `u128` rate units (1 unit = 1/rate ns), as in the crate.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use nemflow_sched::{FlowStats, Pick, Qos, Scheduler};

/// One frame as it went on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub flow: u32,
    /// The `now_ns` of the decision (pick and charge).
    pub decided_ns: u64,
    /// Exact wire start and end, rate units.
    pub start: u128,
    pub end: u128,
    /// The scheduler charged it to slack (read from the flow's statistics).
    pub slack: bool,
}

/// A flow in a test run: saturating (always backlogged) from `add_ns` to `remove_ns`.
#[derive(Debug, Clone, Copy)]
pub struct TestFlow {
    pub id: u32,
    pub qos: Qos,
    pub add_ns: u64,
    pub remove_ns: u64,
    /// Frame lengths cycle through `len_min..=len_max` (bytes).
    pub len_min: u32,
    pub len_max: u32,
}

impl TestFlow {
    /// Length of this flow's `k`-th frame: deterministic, varied.
    pub fn len(&self, k: u64) -> u32 {
        let span = u64::from(self.len_max - self.len_min) + 1;
        let mix = k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ u64::from(self.id);
        self.len_min + (mix % span) as u32
    }
}

/// Exact wire time of `len` bytes, rate units.
pub fn wire_units(len: u32) -> u128 {
    (u128::from(len) + 24) * 8 * 1_000_000_000
}

/// The outcome of [`run`].
#[derive(Debug)]
pub struct Run {
    pub frames: Vec<Frame>,
    /// Final statistics of every admitted flow (at removal or at the end).
    pub stats: Vec<FlowStats>,
    /// Flows that passed admission (the others were never added).
    pub admitted: Vec<TestFlow>,
    pub sched: Scheduler,
    pub end_ns: u64,
}

/// Runs saturating flows until `end_ns`; flows that fail admission are left out.
pub fn run(rate: u64, reserve_ppm: u32, flows: &[TestFlow], end_ns: u64) -> Run {
    let mut sched = Scheduler::new(rate, reserve_ppm).unwrap();
    let mut frames = Vec::new();
    let mut admitted = Vec::new();
    let mut added = vec![false; flows.len()];
    let mut removed = vec![false; flows.len()];
    let mut sent = vec![0u64; flows.len()];
    let mut stats = Vec::new();
    let mut t = 0u64;
    while t < end_ns {
        for (i, f) in flows.iter().enumerate() {
            if added[i] && !removed[i] && f.remove_ns <= t {
                removed[i] = true;
                stats.push(sched.remove_flow(f.id).unwrap());
            }
        }
        for (i, f) in flows.iter().enumerate() {
            if !added[i] && f.add_ns <= t && f.remove_ns > t {
                added[i] = true;
                if sched.add_flow(f.id, f.qos, t).is_ok() {
                    sched.set_backlogged(f.id, true, t).unwrap();
                    admitted.push(TestFlow { add_ns: t, ..*f });
                } else {
                    removed[i] = true;
                }
            }
        }
        let next_event = flows
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if !added[i] {
                    f.add_ns
                } else if !removed[i] {
                    f.remove_ns
                } else {
                    u64::MAX
                }
            })
            .min()
            .unwrap_or(u64::MAX)
            .min(end_ns);
        match sched.pick(t) {
            Pick::Send(id) => {
                let i = flows.iter().position(|f| f.id == id).unwrap();
                let len = flows[i].len(sent[i]);
                sent[i] += 1;
                // Every frame here lasts over 1 ns, so the charged class's ns counter moves.
                let before = sched.stats(id).unwrap().total.extra_ns;
                sched.charge(id, len, t).unwrap();
                let after = sched.stats(id).unwrap().total.extra_ns;
                let end = sched.wire_free_at().units(rate);
                frames.push(Frame {
                    flow: id,
                    decided_ns: t,
                    start: end - wire_units(len),
                    end,
                    slack: after > before,
                });
            }
            Pick::WaitUntil(w) => {
                assert!(w > t, "WaitUntil({w}) at {t} does not move time forward");
                t = w.min(next_event);
            }
            Pick::Idle => t = next_event.max(t + 1),
        }
    }
    for (i, f) in flows.iter().enumerate() {
        if added[i] && !removed[i] {
            stats.push(sched.stats(f.id).unwrap());
        }
    }
    Run {
        frames,
        stats,
        admitted,
        sched,
        end_ns,
    }
}

/// Sum of wire time per window `[a + k·p, a + (k+1)·p)` of frames of `flow` decided in it,
/// for the windows that end by `until_ns`.
pub fn service_per_window(
    frames: &[Frame],
    flow: u32,
    a: u64,
    p: u64,
    until_ns: u64,
    guaranteed_only: bool,
) -> Vec<u128> {
    if until_ns < a {
        return Vec::new();
    }
    let windows = ((until_ns - a) / p) as usize;
    let mut out = vec![0u128; windows];
    for fr in frames
        .iter()
        .filter(|f| f.flow == flow && !(guaranteed_only && f.slack))
    {
        if fr.decided_ns < a {
            continue;
        }
        let k = ((fr.decided_ns - a) / p) as usize;
        if k < windows {
            out[k] += fr.end - fr.start;
        }
    }
    out
}
