//! nemflow's transmit scheduler: Atropos (Nemesis, seed 002 §4.4) over wire time.
//!
//! Every flow has a [`Qos`] `(period p, slice s, extra x, latency hint l)`. The scheduler keeps
//! per flow a deadline `d` and the guaranteed time `r` left in the current period, and on each
//! decision sends, in this order:
//!
//! 1. the backlogged flow with time left (`r > 0`) whose deadline is earliest (EDF);
//! 2. else a backlogged `extra` flow, round robin (slack: best effort is `s = 0, x = true`);
//! 3. else nothing: [`Pick::WaitUntil`] the next new allocation, or [`Pick::Idle`].
//!
//! When a period ends, a backlogged flow gets `d ← d + p`, `r ← s + min(r, 0)`: a frame is
//! never preempted, so `r` can end a period below zero by less than one frame, and that debt is
//! repaid from the next period (the long-run rate is exact). Time left at a deadline while the
//! flow was backlogged is a *deadline miss*: counted, and forfeited. An idle flow does not
//! hoard: if it wakes after its deadline passed, its next period starts at the wake-up time.
//!
//! Time is wire time: a frame of `L` bytes costs `(L + 24) × 8 / rate` (preamble, inter-frame
//! gap, FCS), computed exactly (see [`wire`]), and the scheduler keeps the wire clock, so the
//! caller paces its transmissions by it ([`Pick::WaitUntil`], [`Scheduler::wire_free_at_ns`]).
//! The scheduler never reads a clock: every call takes `now_ns` (any monotonic origin), so the
//! simulator ([`sim`]) and the tests run it in virtual time.
//!
//! # How the driver uses it
//!
//! ```
//! use nemflow_sched::{Pick, Qos, Scheduler};
//! # fn main() -> Result<(), nemflow_sched::SchedError> {
//! let mut sched = Scheduler::new(100_000_000, 10_000)?; // 100 Mbit/s, keep 1% free
//! sched.add_flow(7, Qos::guaranteed(100_000_000, 4_000_000), 0)?; // 4 ms per 100 ms
//! sched.add_flow(9, Qos::best_effort(100_000_000), 0)?;
//! sched.set_backlogged(7, true, 0)?; // its TX FIFO became non-empty
//! sched.set_backlogged(9, true, 0)?;
//! let now = 0;
//! match sched.pick(now) {
//!     Pick::Send(id) => {
//!         // pop one frame from flow `id`'s FIFO, check it, stage it for tx_burst, then:
//!         sched.charge(id, 1514, now)?;
//!         // and if the FIFO is now empty: sched.set_backlogged(id, false, now)?;
//!     }
//!     Pick::WaitUntil(t_ns) => { /* poll RX, come back at t_ns (or when a FIFO fills) */ }
//!     Pick::Idle => { /* nothing backlogged */ }
//! }
//! assert_eq!(sched.wire_free_at_ns(), 123_040); // 1538 bytes on the wire at 100 Mbit/s
//! # Ok(()) }
//! ```
//!
//! Each decision is O(log n) in the number of backlogged flows at worst: a 4-ary heap keyed by
//! deadline for the flows with time left (EDF), a set of flows waiting for their next
//! allocation (refreshed lazily when their deadline comes: a FIFO per period class, since EDF
//! exhausts flows of one period in deadline order, and a heap for the rest: O(1) in the common
//! case), and a ring for slack. A flow that sends several frames in a row stays at the top of
//! the EDF heap: no heap operation until it exhausts its slice.
//!
//! # Admission, and what it guarantees at frame granularity
//!
//! [`Scheduler::add_flow`] admits a guaranteed flow while Σ s/p ≤ 1 − reserve, decided in
//! exact rational arithmetic; a rejection ([`SchedError::Admission`]) says by how much the
//! request is over and the largest slice that would fit. That test is for a fluid link. Frames
//! are not preemptible, so in the worst case every guaranteed flow overruns its slice by up to
//! one frame and one frame of a later-deadline (or slack) flow blocks the wire when a period
//! starts (the demand bound of limited-preemptive EDF). Every backlogged guaranteed flow
//! receives at least `s − one frame` in every period, and its long-run rate within one frame
//! of `s/p`, when in addition `(n + 1) × max frame time ≤ (1 − Σ s/p) × shortest period`.
//! An admission reserve of at least [`non_preemption_reserve_ppm`] guarantees that for every
//! set it admits (the property tests run with it). With no such margin
//! (say `Σ s/p = 1`), flows that tie on a deadline can be cut short by the frames their peers
//! overran, and the scheduler counts those misses in [`FlowStats::deadline_misses`].
#![forbid(unsafe_code)]

mod admission;
mod error;
mod heap;
mod qos;
mod scheduler;
mod stats;
mod waiting;
pub mod wire;

#[cfg(feature = "sim")]
pub mod sim;

pub use error::SchedError;
pub use qos::{Qos, MAX_PERIOD_NS};
pub use scheduler::{Pick, Scheduler};
pub use stats::{FlowStats, PeriodUsage, Usage};
pub use wire::{WireClock, WireInstant, MAX_FRAME_BYTES, MAX_LINK_RATE_BPS, WIRE_OVERHEAD_BYTES};

/// The admission reserve (ppm, rounded up) that covers non-preemption for `flows` guaranteed
/// flows sending frames of up to `max_frame_bytes` with periods of at least `min_period_ns`
/// on a link of `link_rate_bps`: `(flows + 1) × wire time / min period`. Add it to the reserve
/// kept for other reasons; see the crate documentation.
pub fn non_preemption_reserve_ppm(
    flows: u64,
    max_frame_bytes: u32,
    min_period_ns: u64,
    link_rate_bps: u64,
) -> u64 {
    if min_period_ns == 0 || link_rate_bps == 0 {
        return 1_000_000;
    }
    let units =
        u128::from(flows + 1) * u128::from(wire::wire_bits(max_frame_bytes)) * 1_000_000_000;
    // units / (rate × min_period) × 10^6, rounded up.
    let den = u128::from(link_rate_bps) * u128::from(min_period_ns);
    u64::try_from((units * 1_000_000).div_ceil(den))
        .unwrap_or(u64::MAX)
        .min(1_000_000)
}
