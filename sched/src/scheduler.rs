//! The Atropos transmit scheduler.
//!
//! # Units
//!
//! Budgets are integers in *units* of `1/K` ns, `K = rate / gcd(rate, 10^9)`: the smallest
//! unit in which both a nanosecond (`K` units) and one bit time (`10^9 / gcd` units) are whole.
//! At 100 Mbit/s a unit is 1 ns, at 10 Gbit/s 0.1 ns, at 25 Gbit/s 0.04 ns. Every charge is
//! exact, and a budget fits an `i64` (a flow's state fits one cache line) as long as a period
//! stays below `2^62 / K` units: over an hour for every rate that is a multiple of 1 Mbit/s,
//! at least a second for any rate (see [`Scheduler::max_period_ns`]).
//!
//! # Memory
//!
//! A decision touches the flow it serves and, when a period ends, the flow being refreshed:
//! one 64-byte line of [`Flow`] each, plus one 64-byte line of [`Acct`] per period roll. Traffic
//! counters are cumulative, so a roll only snapshots them; everything else (QoS, misses, held
//! time) lives in [`Cold`], touched on QoS changes, misses, latency holds and statistics.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::admission::Admission;
use crate::heap::{Entry, Heap};
use crate::stats::{FlowStats, PeriodUsage, Usage};
use crate::waiting::Waiting;
use crate::wire::{
    self, WireClock, WireInstant, MAX_FRAME_BYTES, MAX_LINK_RATE_BPS, UNITS_PER_BIT,
};
use crate::{Qos, SchedError, MAX_PERIOD_NS};

/// What the caller should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pick {
    /// Send one frame of this flow now, then [`Scheduler::charge`] it.
    Send(u32),
    /// Send nothing before this time (ns). The wire is busy (pacing), a latency hint holds the
    /// wire for a flow, or every backlogged flow has used its slice and the earliest new
    /// allocation starts then. Call [`Scheduler::pick`] again then, or earlier if a flow's queue
    /// becomes non-empty.
    WaitUntil(u64),
    /// No flow is backlogged: nothing to do until [`Scheduler::set_backlogged`] says otherwise.
    Idle,
}

/// Which heap holds a flow's live entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Place {
    None,
    /// Backlogged, guaranteed time left: EDF candidates, keyed by deadline.
    Ready,
    /// Backlogged, allocation used up: keyed by the deadline, when the next allocation starts.
    Waiting,
}

const BACKLOGGED: u8 = 1;
const EXTRA: u8 = 2;
const IN_SLACK: u8 = 4;
const LIVE: u8 = 8;

/// The state a decision touches: one cache line per flow.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Flow {
    /// Guaranteed time left in this period, units (negative: debt carried from an overrun).
    r: i64,
    slice_units: i64,
    deadline_ns: u64,
    period_ns: u64,
    /// Cumulative wire bits sent from the allocation, from slack, and frames.
    g_bits: u64,
    x_bits: u64,
    packets: u64,
    /// Sequence number of the flow's live heap entry.
    seq: u32,
    /// Bumped when the slot is freed: invalidates slack ring entries of a removed flow (the
    /// ring is compacted long before a slot could be reused 2^16 times).
    gen: u16,
    place: Place,
    flags: u8,
}

impl Flow {
    const EMPTY: Self = Self {
        r: 0,
        slice_units: 0,
        deadline_ns: 0,
        period_ns: 1,
        g_bits: 0,
        x_bits: 0,
        packets: 0,
        seq: 0,
        gen: 0,
        place: Place::None,
        flags: 0,
    };

    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline]
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    fn snap(&self) -> Snap {
        Snap {
            g_bits: self.g_bits,
            x_bits: self.x_bits,
            packets: self.packets,
        }
    }
}

/// Cumulative counters at some instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snap {
    g_bits: u64,
    x_bits: u64,
    packets: u64,
}

impl Snap {
    fn since(self, base: Snap) -> Snap {
        Snap {
            g_bits: self.g_bits.wrapping_sub(base.g_bits),
            x_bits: self.x_bits.wrapping_sub(base.x_bits),
            packets: self.packets.wrapping_sub(base.packets),
        }
    }
}

/// Per-period bookkeeping, touched once per period: one cache line per flow.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Acct {
    /// Counters when the current period began.
    base: Snap,
    /// Counters when the last completed period began.
    last_base: Snap,
    /// End of the last completed period, ns.
    last_end_ns: u64,
    /// Completed periods (also the index of the current one).
    periods: u64,
}

/// Idle wire time held for a flow (latency hint), per period without touching the flow's
/// period roll: the log is brought up to date when a hold ends.
#[derive(Debug, Clone, Copy)]
struct HeldLog {
    total: u128,
    /// Period index of the holds since `mark`, and the total when the first of them began.
    mark_period: u64,
    mark: u128,
    /// The period before that had holds, and their sum.
    prev_period: u64,
    prev: u128,
}

impl Default for HeldLog {
    fn default() -> Self {
        Self {
            total: 0,
            mark_period: u64::MAX,
            mark: 0,
            prev_period: u64::MAX,
            prev: 0,
        }
    }
}

impl HeldLog {
    fn add(&mut self, period: u64, units: u128) {
        if self.mark_period != period {
            self.prev_period = self.mark_period;
            self.prev = self.total - self.mark;
            self.mark_period = period;
            self.mark = self.total;
        }
        self.total += units;
    }

    fn in_period(&self, period: u64) -> u128 {
        if self.mark_period == period {
            self.total - self.mark
        } else if self.prev_period == period {
            self.prev
        } else {
            0
        }
    }
}

/// Accounting touched on QoS changes, misses, latency holds and for statistics only.
#[derive(Debug, Clone, Default)]
struct Cold {
    qos: Option<Qos>,
    misses: u64,
    missed_units: u128,
    /// Index of the last period that ended in a miss.
    last_miss_period: Option<u64>,
    held: HeldLog,
    /// Start of a period closed early by a QoS change: `(period index, start ns)`.
    closed_early: Option<(u64, u64)>,
}

/// An active latency-hint hold: the wire is kept idle for `slot` until `until_ns`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    slot: u32,
    gen: u16,
    /// When the wire went free (the idle time held starts here), units.
    start_units: u128,
    until_ns: u64,
}

/// Fast hasher for caller-chosen `u32` flow ids (a folded 64×64→128 multiply; the ids are not
/// adversarial: they come from the trusted flow manager).
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let m = u128::from(self.0) * 0x9E37_79B9_7F4A_7C15_u128;
        (m as u64) ^ ((m >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = u64::from(i);
    }
}

type IdMap = HashMap<u32, u32, BuildHasherDefault<IdHasher>>;

/// The exact time unit of a link rate (see the module documentation).
#[derive(Debug, Clone, Copy)]
struct Scale {
    rate: u64,
    /// gcd(rate, 10^9).
    g: u64,
    /// Units per ns.
    per_ns: u64,
    /// Units per bit time.
    per_bit: u64,
}

impl Scale {
    fn new(rate: u64) -> Self {
        let (mut a, mut b) = (rate, UNITS_PER_BIT);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        Self {
            rate,
            g: a,
            per_ns: rate / a,
            per_bit: UNITS_PER_BIT / a,
        }
    }

    fn ns(&self, ns: u64) -> i64 {
        i64::try_from(u128::from(ns) * u128::from(self.per_ns)).unwrap_or(i64::MAX)
    }

    /// A wire instant (`ns + frac/rate`) in units: exact, since every instant on the wire clock
    /// is whole ns plus whole bit times.
    fn instant(&self, at: WireInstant) -> u128 {
        u128::from(at.ns) * u128::from(self.per_ns) + u128::from(at.frac / self.g)
    }

    fn instant_of(&self, units: u128) -> WireInstant {
        let per_ns = u128::from(self.per_ns);
        WireInstant {
            ns: u64::try_from(units / per_ns).unwrap_or(u64::MAX),
            frac: u64::try_from(units % per_ns).unwrap_or(0) * self.g,
        }
    }

    fn bits_to_ns(&self, bits: u64) -> u64 {
        wire::units_to_ns_floor(u128::from(bits) * u128::from(UNITS_PER_BIT), self.rate)
    }

    fn units_to_ns(&self, units: u128) -> u64 {
        u64::try_from(units / u128::from(self.per_ns)).unwrap_or(u64::MAX)
    }
}

/// The Atropos transmit scheduler: EDF over guaranteed flows with time left, slack round robin
/// over `extra` flows, exact wire-time pacing. Pure: time is always passed in (ns, any
/// monotonic origin); calls with an earlier time than one seen before are treated as that time.
#[derive(Debug)]
pub struct Scheduler {
    scale: Scale,
    max_period_ns: u64,
    admission: Admission,
    lookahead_ns: u64,
    flows: Vec<Flow>,
    acct: Vec<Acct>,
    cold: Vec<Cold>,
    ids: Vec<u32>,
    free_slots: Vec<u32>,
    index: IdMap,
    ready: Heap,
    waiting: Waiting,
    /// Round robin of backlogged `extra` flows: `(slot, gen)`, lazily cleaned.
    slack: VecDeque<(u32, u16)>,
    /// Slack entries of removed flows still in the ring.
    slack_dead: usize,
    wire: WireClock,
    /// The scheduler's time: the start of the last frame picked or charged, which with a
    /// look-ahead may run ahead of the caller's clock.
    clock_ns: u64,
    /// The latest `now_ns` a caller passed (the caller's clock, never ahead of it).
    caller_ns: u64,
    /// `(id, slot)` of the last `Send`, so `charge` skips the id lookup.
    last_pick: Option<(u32, u32)>,
    /// Slot of the last flow charged (the one a latency hint may hold the wire for).
    last_sent: Option<u32>,
    hold: Option<Hold>,
    live: usize,
}

impl Scheduler {
    /// A scheduler for a link of `link_rate_bps` bit/s that admits guaranteed flows while
    /// Σ slice/period ≤ 1 − `reserve_ppm` / 10^6.
    pub fn new(link_rate_bps: u64, reserve_ppm: u32) -> Result<Self, SchedError> {
        if link_rate_bps == 0 || link_rate_bps > MAX_LINK_RATE_BPS {
            return Err(SchedError::InvalidLinkRate {
                link_rate_bps,
                max_bps: MAX_LINK_RATE_BPS,
            });
        }
        if reserve_ppm > 1_000_000 {
            return Err(SchedError::InvalidReserve { reserve_ppm });
        }
        let scale = Scale::new(link_rate_bps);
        Ok(Self {
            scale,
            max_period_ns: MAX_PERIOD_NS.min((1u64 << 62) / scale.per_ns),
            admission: Admission::new(reserve_ppm),
            lookahead_ns: 0,
            flows: Vec::new(),
            acct: Vec::new(),
            cold: Vec::new(),
            ids: Vec::new(),
            free_slots: Vec::new(),
            index: IdMap::default(),
            ready: Heap::default(),
            waiting: Waiting::default(),
            slack: VecDeque::new(),
            slack_dead: 0,
            wire: WireClock::new(link_rate_bps),
            clock_ns: 0,
            caller_ns: 0,
            last_pick: None,
            last_sent: None,
            hold: None,
            live: 0,
        })
    }

    /// Lets [`pick`](Self::pick) choose the next frame up to `lookahead_ns` before the wire goes
    /// free (default 0). A driver in front of a real NIC uses this to keep a frame or two in the
    /// hardware queue; the decision is then made as of the moment the wire goes free. It never
    /// lets a flow send before its allocation starts.
    pub fn set_lookahead_ns(&mut self, lookahead_ns: u64) {
        self.lookahead_ns = lookahead_ns;
    }

    /// The link rate, bit/s.
    pub fn link_rate_bps(&self) -> u64 {
        self.scale.rate
    }

    /// The longest period this scheduler accepts: [`MAX_PERIOD_NS`] (one hour), or less for a
    /// link rate with few factors in common with 10^9 (see the module documentation).
    pub fn max_period_ns(&self) -> u64 {
        self.max_period_ns
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there is no flow.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Σ slice/period of the admitted guaranteed flows, parts per billion (rounded up).
    pub fn guaranteed_load_ppb(&self) -> u64 {
        self.admission.load_ppb()
    }

    /// Wire time of a frame of `len_bytes`, ns, rounded up (the exact value carries a
    /// remainder below one ns, which the wire clock keeps).
    pub fn wire_time_ns(&self, len_bytes: u32) -> u64 {
        let units = wire::wire_bits(len_bytes) * UNITS_PER_BIT;
        units.div_ceil(self.scale.rate)
    }

    /// When the wire is next free, ns (rounded up to the next whole ns).
    pub fn wire_free_at_ns(&self) -> u64 {
        self.wire.free_at().ceil_ns()
    }

    /// When the wire is next free, exactly.
    pub fn wire_free_at(&self) -> WireInstant {
        self.wire.free_at()
    }

    fn check_qos(&self, qos: &Qos) -> Result<(), SchedError> {
        qos.validate()?;
        if qos.period_ns > self.max_period_ns {
            return Err(SchedError::PeriodTooLong {
                period_ns: qos.period_ns,
                max_ns: self.max_period_ns,
            });
        }
        Ok(())
    }

    /// Adds a flow (not yet backlogged). Its first period starts at `now_ns`.
    pub fn add_flow(&mut self, id: u32, qos: Qos, now_ns: u64) -> Result<(), SchedError> {
        self.check_qos(&qos)?;
        if self.index.contains_key(&id) {
            return Err(SchedError::DuplicateFlow(id));
        }
        self.admission
            .check(id, (qos.period_ns, qos.slice_ns), None)?;
        let t = self.advance_clock(now_ns);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.flows.len()).map_err(|_| SchedError::TooManyFlows)?;
                self.flows.push(Flow::EMPTY);
                self.acct.push(Acct::default());
                self.cold.push(Cold::default());
                self.ids.push(id);
                s
            }
        };
        self.admission.add((qos.period_ns, qos.slice_ns));
        let slice_units = self.scale.ns(qos.slice_ns);
        let f = &mut self.flows[slot as usize];
        *f = Flow {
            r: slice_units,
            slice_units,
            deadline_ns: t.saturating_add(qos.period_ns),
            period_ns: qos.period_ns,
            seq: f.seq,
            gen: f.gen,
            flags: LIVE | if qos.extra { EXTRA } else { 0 },
            ..Flow::EMPTY
        };
        self.acct[slot as usize] = Acct::default();
        self.cold[slot as usize] = Cold {
            qos: Some(qos),
            ..Cold::default()
        };
        self.ids[slot as usize] = id;
        self.index.insert(id, slot);
        self.live += 1;
        Ok(())
    }

    /// Changes a flow's QoS (admission-checked without its old share). The flow starts a new
    /// period at `now_ns` with the new slice; debt from an overrun is kept.
    pub fn set_qos(&mut self, id: u32, qos: Qos, now_ns: u64) -> Result<(), SchedError> {
        self.check_qos(&qos)?;
        let slot = self.slot(id)?;
        let old = self.cold[slot as usize].qos.unwrap_or(qos);
        self.admission.check(
            id,
            (qos.period_ns, qos.slice_ns),
            Some((old.period_ns, old.slice_ns)),
        )?;
        let t = self.advance_clock(now_ns);
        self.admission.remove((old.period_ns, old.slice_ns));
        self.admission.add((qos.period_ns, qos.slice_ns));
        self.refresh(slot, t);
        self.unplace(slot);
        // Close the period under way now.
        let (old_start, old_end) = {
            let f = &self.flows[slot as usize];
            (f.deadline_ns - f.period_ns, f.deadline_ns.min(t))
        };
        self.cold[slot as usize].closed_early = Some((self.acct[slot as usize].periods, old_start));
        self.roll(slot, old_end);
        let slice_units = self.scale.ns(qos.slice_ns);
        let f = &mut self.flows[slot as usize];
        f.r = f.r.min(0).saturating_add(slice_units);
        f.slice_units = slice_units;
        f.period_ns = qos.period_ns;
        f.deadline_ns = t.saturating_add(qos.period_ns);
        f.set(EXTRA, qos.extra);
        self.cold[slot as usize].qos = Some(qos);
        self.place(slot);
        self.join_slack(slot);
        self.compact();
        Ok(())
    }

    /// Removes a flow and returns its final statistics.
    pub fn remove_flow(&mut self, id: u32) -> Result<FlowStats, SchedError> {
        let slot = self.slot(id)?;
        let stats = self.stats_of(slot);
        if let Some(q) = self.cold[slot as usize].qos {
            self.admission.remove((q.period_ns, q.slice_ns));
        }
        self.unplace(slot);
        if self.hold.is_some_and(|h| h.slot == slot) {
            self.hold = None;
        }
        if self.last_sent == Some(slot) {
            self.last_sent = None;
        }
        self.last_pick = None;
        let f = &mut self.flows[slot as usize];
        if f.has(IN_SLACK) {
            self.slack_dead += 1;
        }
        f.flags = 0;
        f.gen = f.gen.wrapping_add(1);
        self.cold[slot as usize] = Cold::default();
        self.index.remove(&id);
        self.free_slots.push(slot);
        self.live -= 1;
        self.compact();
        Ok(stats)
    }

    /// Tells the scheduler that flow `id`'s transmit queue became non-empty (`true`) or empty
    /// (`false`) at `now_ns`. Repeating the current state is a no-op.
    ///
    /// A flow that wakes after its deadline passed starts a new period at `now_ns` (an idle flow
    /// does not hoard). A flow with a latency hint that runs empty right after sending, with
    /// guaranteed time left, makes the scheduler hold the wire for it (see [`Qos`]).
    pub fn set_backlogged(
        &mut self,
        id: u32,
        backlogged: bool,
        now_ns: u64,
    ) -> Result<(), SchedError> {
        let slot = self.slot(id)?;
        if self.flows[slot as usize].has(BACKLOGGED) == backlogged {
            return Ok(());
        }
        let t = self.advance_clock(now_ns);
        if backlogged {
            if self.hold.is_some_and(|h| h.slot == slot) {
                self.end_hold(t);
            }
            self.refresh(slot, t);
            self.flows[slot as usize].set(BACKLOGGED, true);
            self.place(slot);
            self.join_slack(slot);
        } else {
            self.unplace(slot);
            // Still backlogged for this refresh: a deadline that passed with time left is a miss.
            self.refresh(slot, t);
            self.flows[slot as usize].set(BACKLOGGED, false);
            self.maybe_hold(slot, t);
            self.compact();
        }
        Ok(())
    }

    /// Decides what to send at `now_ns`.
    #[inline]
    pub fn pick(&mut self, now_ns: u64) -> Pick {
        // The look-ahead is measured from the caller's clock: measured from the scheduler's own
        // (which a look-ahead frame moves ahead), the wire could run away from real time.
        let now = now_ns.max(self.caller_ns);
        self.caller_ns = now;
        let free = self.wire.free_at().ceil_ns();
        if free > now.saturating_add(self.lookahead_ns) {
            return Pick::WaitUntil(free - self.lookahead_ns);
        }
        let t = now.max(free).max(self.clock_ns);
        self.clock_ns = t;

        // New allocations for backlogged flows whose period ended.
        while let Some(e) = self.waiting.pop_due(t) {
            if !self.is_live(e, Place::Waiting) {
                self.waiting.stale = self.waiting.stale.saturating_sub(1);
                continue;
            }
            self.flows[e.slot() as usize].place = Place::None;
            self.refresh(e.slot(), t);
            self.place(e.slot());
        }
        // Clean the EDF top: stale entries, and deadlines passed with time left (misses).
        let top = loop {
            let Some(e) = self.ready.peek() else {
                break None;
            };
            if !self.is_live(e, Place::Ready) {
                self.ready.pop();
                self.ready.stale = self.ready.stale.saturating_sub(1);
                continue;
            }
            if e.key <= t {
                self.ready.pop();
                self.flows[e.slot() as usize].place = Place::None;
                self.refresh(e.slot(), t);
                self.place(e.slot());
                continue;
            }
            break Some(e);
        };
        if let Some(h) = self.hold {
            let held_deadline = self.flows[h.slot as usize].deadline_ns;
            if t >= h.until_ns {
                self.end_hold(h.until_ns);
            } else if top.is_some_and(|e| e.key < held_deadline) {
                self.end_hold(t);
            } else {
                let next = self
                    .next_replenish()
                    .map_or(h.until_ns, |w| w.min(h.until_ns));
                return Pick::WaitUntil(next.max(t));
            }
            // Ending a hold may have used up a flow's time: look again.
            return self.pick(now_ns);
        }
        if let Some(e) = top {
            let id = self.ids[e.slot() as usize];
            self.last_pick = Some((id, e.slot()));
            return Pick::Send(id);
        }
        // Slack, round robin.
        while let Some((slot, gen)) = self.slack.pop_front() {
            let f = &mut self.flows[slot as usize];
            if f.gen != gen || !f.has(LIVE) {
                self.slack_dead = self.slack_dead.saturating_sub(1);
                continue;
            }
            if !(f.has(BACKLOGGED) && f.has(EXTRA)) {
                f.set(IN_SLACK, false);
                continue;
            }
            let id = self.ids[slot as usize];
            self.slack.push_back((slot, gen));
            self.last_pick = Some((id, slot));
            return Pick::Send(id);
        }
        match self.next_replenish() {
            Some(w) => Pick::WaitUntil(w),
            None => Pick::Idle,
        }
    }

    /// Charges a frame of `len_bytes` sent by flow `id` at `now_ns`: its wire time comes out of
    /// the flow's guaranteed time if it has some left (or has no `extra`: a flow without slack
    /// rights always pays from its allocation, into debt if it must), otherwise it is slack.
    /// The frame starts when the wire goes free (back to back if `now_ns` is within the
    /// nanosecond the wire went free in), else at `now_ns`, and advances the wire clock.
    #[inline]
    pub fn charge(&mut self, id: u32, len_bytes: u32, now_ns: u64) -> Result<(), SchedError> {
        if len_bytes > MAX_FRAME_BYTES {
            return Err(SchedError::FrameTooLong {
                len_bytes,
                max_bytes: MAX_FRAME_BYTES,
            });
        }
        let slot = match self.last_pick {
            Some((pid, s)) if pid == id => s,
            _ => self.slot(id)?,
        };
        let t = now_ns.max(self.clock_ns);
        self.clock_ns = t;
        if self.hold.is_some() {
            self.end_hold(t);
        }
        self.wire.send(t, len_bytes);
        let bits = self.wire.last_cost().bits;
        if self.flows[slot as usize].deadline_ns <= t {
            self.unplace(slot);
            self.refresh(slot, t);
            self.place(slot);
        }
        let f = &mut self.flows[slot as usize];
        f.packets += 1;
        if f.slice_units > 0 && (f.r > 0 || !f.has(EXTRA)) {
            // bits × units-per-bit: at most 2^23 × 10^9, no overflow.
            f.r = f.r.saturating_sub((bits * self.scale.per_bit) as i64);
            f.g_bits += bits;
            if f.r <= 0 && f.place == Place::Ready {
                // Usually the flow is the EDF top that `pick` just returned.
                match self.ready.peek() {
                    Some(e) if e.slot() == slot && e.seq() == f.seq => {
                        self.ready.pop();
                    }
                    _ => self.ready.stale += 1,
                }
                f.place = Place::None;
                self.place(slot);
            }
        } else {
            f.x_bits += bits;
        }
        self.last_sent = Some(slot);
        Ok(())
    }

    /// Accounting of flow `id`.
    pub fn stats(&self, id: u32) -> Result<FlowStats, SchedError> {
        Ok(self.stats_of(self.slot(id)?))
    }

    /// Ids of all flows, in no particular order.
    pub fn flow_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.keys().copied()
    }

    // ---- internals ----

    fn slot(&self, id: u32) -> Result<u32, SchedError> {
        self.index
            .get(&id)
            .copied()
            .ok_or(SchedError::UnknownFlow(id))
    }

    fn advance_clock(&mut self, now_ns: u64) -> u64 {
        self.clock_ns = self.clock_ns.max(now_ns);
        self.clock_ns
    }

    #[inline]
    fn is_live(&self, e: Entry, place: Place) -> bool {
        let f = &self.flows[e.slot() as usize];
        f.place == place && f.seq == e.seq()
    }

    /// The earliest replenishment of a backlogged flow, cleaning stale entries off the top.
    fn next_replenish(&mut self) -> Option<u64> {
        while let Some(e) = self.waiting.peek() {
            if self.is_live(e, Place::Waiting) {
                return Some(e.key);
            }
            self.waiting.pop();
            self.waiting.stale = self.waiting.stale.saturating_sub(1);
        }
        None
    }

    /// Puts a backlogged guaranteed flow (not in a heap) into the heap its budget says.
    #[inline]
    fn place(&mut self, slot: u32) {
        let f = &mut self.flows[slot as usize];
        debug_assert_eq!(f.place, Place::None);
        if f.flags & (BACKLOGGED | LIVE) != BACKLOGGED | LIVE || f.slice_units == 0 {
            return;
        }
        f.seq = f.seq.wrapping_add(1);
        let e = Entry::new(f.deadline_ns, slot, f.seq);
        if f.r > 0 {
            f.place = Place::Ready;
            self.ready.push(e);
        } else {
            f.place = Place::Waiting;
            self.waiting.push(e, f.period_ns);
        }
    }

    /// Takes a flow out of its heap lazily (its entry turns stale).
    fn unplace(&mut self, slot: u32) {
        let f = &mut self.flows[slot as usize];
        match f.place {
            Place::None => {}
            Place::Ready => self.ready.stale += 1,
            Place::Waiting => self.waiting.stale += 1,
        }
        f.place = Place::None;
    }

    fn join_slack(&mut self, slot: u32) {
        let f = &mut self.flows[slot as usize];
        if f.has(BACKLOGGED) && f.has(EXTRA) && !f.has(IN_SLACK) {
            f.set(IN_SLACK, true);
            self.slack.push_back((slot, f.gen));
        }
    }

    /// Brings a flow's period up to date at `t`: new allocation (Atropos' `d ← d + p`,
    /// `r ← s`, debt carried), deadline-miss accounting, period statistics.
    #[inline]
    fn refresh(&mut self, slot: u32, t: u64) {
        let f = &mut self.flows[slot as usize];
        if f.deadline_ns > t {
            return;
        }
        let old_deadline = f.deadline_ns;
        let p = f.period_ns;
        if f.has(BACKLOGGED) {
            // Keep the phase: periods are back to back while the flow has work.
            let late = t - old_deadline;
            let k = if late < p { 1 } else { late / p + 1 };
            if f.slice_units > 0 && (f.r > 0 || k > 1) {
                let c = &mut self.cold[slot as usize];
                let period = self.acct[slot as usize].periods;
                if f.r > 0 {
                    c.misses += 1;
                    c.missed_units += u128::from(f.r.unsigned_abs());
                    c.last_miss_period = Some(period);
                    f.r = 0;
                }
                if k > 1 {
                    // Whole periods in which nobody asked the scheduler: missed entirely.
                    c.misses += k - 1;
                    c.missed_units += u128::from(k - 1) * u128::from(f.slice_units.unsigned_abs());
                    c.last_miss_period = Some(period);
                }
            }
            f.r = f.r.saturating_add(f.slice_units);
            f.deadline_ns = old_deadline.saturating_add(k.saturating_mul(p));
        } else {
            // Idle past its deadline: no hoarding, the next period starts now.
            f.r = f.r.min(0).saturating_add(f.slice_units);
            f.deadline_ns = t.saturating_add(p);
        }
        self.roll(slot, old_deadline);
    }

    /// Closes the period under way at `end_ns`.
    #[inline]
    fn roll(&mut self, slot: u32, end_ns: u64) {
        let snap = self.flows[slot as usize].snap();
        let a = &mut self.acct[slot as usize];
        a.last_base = a.base;
        a.base = snap;
        a.last_end_ns = end_ns;
        a.periods += 1;
    }

    /// Starts a latency-hint hold for a flow that just ran empty, if it qualifies.
    fn maybe_hold(&mut self, slot: u32, t: u64) {
        let Some(hint_ns) = self.cold[slot as usize].qos.and_then(|q| q.latency_hint_ns) else {
            return;
        };
        let f = &self.flows[slot as usize];
        if self.hold.is_some() || self.last_sent != Some(slot) || f.r <= 0 || f.slice_units == 0 {
            return;
        }
        let free = self.wire.free_at();
        let start = if t <= free.ceil_ns() {
            free
        } else {
            WireInstant { ns: t, frac: 0 }
        };
        let start_units = self.scale.instant(start);
        let budget =
            u128::from(f.r.unsigned_abs()).min(u128::from(hint_ns) * u128::from(self.scale.per_ns));
        let per_ns = u128::from(self.scale.per_ns);
        let until = u64::try_from((start_units + budget).div_ceil(per_ns))
            .unwrap_or(u64::MAX)
            .min(f.deadline_ns);
        if until > start.ceil_ns() {
            self.hold = Some(Hold {
                slot,
                gen: f.gen,
                start_units,
                until_ns: until,
            });
        }
    }

    /// Ends the hold at `end_ns`, charging the idle time held to the flow.
    fn end_hold(&mut self, end_ns: u64) {
        let Some(hold) = self.hold.take() else { return };
        let f = &mut self.flows[hold.slot as usize];
        if !f.has(LIVE) || f.gen != hold.gen {
            return;
        }
        let end = end_ns.min(hold.until_ns);
        let held =
            (u128::from(end) * u128::from(self.scale.per_ns)).saturating_sub(hold.start_units);
        if held == 0 {
            return;
        }
        f.r = f.r.saturating_sub(i64::try_from(held).unwrap_or(i64::MAX));
        let exhausted = f.r <= 0 && f.place == Place::Ready;
        let period = self.acct[hold.slot as usize].periods;
        self.cold[hold.slot as usize].held.add(period, held);
        // The idle wire time was the flow's: nobody else could send in it.
        self.wire
            .occupy_until(self.scale.instant_of(hold.start_units + held));
        if exhausted {
            self.unplace(hold.slot);
            self.place(hold.slot);
        }
    }

    /// Rebuilds a heap or the slack ring when stale entries outnumber live ones.
    fn compact(&mut self) {
        let flows = &self.flows;
        let live = |e: &Entry, p: Place| {
            flows[e.slot() as usize].place == p && flows[e.slot() as usize].seq == e.seq()
        };
        if self.ready.stale > self.ready.len() / 2 + 64 {
            self.ready.retain_and_rebuild(|e| live(e, Place::Ready));
        }
        if self.waiting.stale > 64 && self.waiting.stale > self.waiting.len() / 2 {
            self.waiting.retain(|e| live(e, Place::Waiting));
        }
        if self.slack_dead > self.slack.len() / 2 + 64 {
            self.slack.retain(|&(slot, gen)| {
                flows[slot as usize].has(LIVE) && flows[slot as usize].gen == gen
            });
            self.slack_dead = 0;
        }
    }

    fn usage(&self, s: Snap, held_units: u128) -> Usage {
        let bits = s.g_bits + s.x_bits;
        Usage {
            guaranteed_ns: self.scale.bits_to_ns(s.g_bits),
            extra_ns: self.scale.bits_to_ns(s.x_bits),
            held_ns: self.scale.units_to_ns(held_units),
            packets: s.packets,
            // Each frame is (len + 24) × 8 bits on the wire.
            bytes: (bits / 8).saturating_sub(wire::WIRE_OVERHEAD_BYTES * s.packets),
        }
    }

    fn stats_of(&self, slot: u32) -> FlowStats {
        let f = &self.flows[slot as usize];
        let a = &self.acct[slot as usize];
        let c = &self.cold[slot as usize];
        let now = f.snap();
        let cur_index = a.periods;
        let mut current = PeriodUsage {
            start_ns: f.deadline_ns - f.period_ns,
            end_ns: f.deadline_ns,
            usage: self.usage(now.since(a.base), c.held.in_period(cur_index)),
            deadline_missed: false,
        };
        let mut last = (cur_index > 0).then(|| {
            let index = cur_index - 1;
            let start_ns = match c.closed_early {
                Some((i, start)) if i == index => start,
                _ => a.last_end_ns.saturating_sub(f.period_ns),
            };
            PeriodUsage {
                start_ns,
                end_ns: a.last_end_ns,
                usage: self.usage(a.base.since(a.last_base), c.held.in_period(index)),
                deadline_missed: c.last_miss_period == Some(index),
            }
        });
        let mut periods = a.periods;
        if self.clock_ns >= f.deadline_ns {
            // The period is over on the scheduler's clock; it rolls at the next call.
            last = Some(current);
            periods += 1;
            current = PeriodUsage {
                start_ns: f.deadline_ns,
                end_ns: f.deadline_ns,
                ..PeriodUsage::default()
            };
        }
        let qos = c.qos.unwrap_or(Qos::best_effort(1));
        FlowStats {
            id: self.ids[slot as usize],
            qos,
            backlogged: f.has(BACKLOGGED),
            remaining_ns: f.r / i64::try_from(self.scale.per_ns).unwrap_or(i64::MAX),
            total: self.usage(now, c.held.total),
            current_period: current,
            last_period: last,
            periods,
            deadline_misses: c.misses,
            missed_ns: self.scale.units_to_ns(c.missed_units),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_one_cache_line_each() {
        assert_eq!(std::mem::size_of::<Flow>(), 64);
        assert_eq!(std::mem::size_of::<Acct>(), 64);
    }

    #[test]
    fn scale_units() {
        let s = Scale::new(100_000_000);
        assert_eq!((s.per_ns, s.per_bit), (1, 10));
        let s = Scale::new(10_000_000_000);
        assert_eq!((s.per_ns, s.per_bit), (10, 1));
        let s = Scale::new(300_000_007);
        assert_eq!((s.per_ns, s.per_bit), (300_000_007, 1_000_000_000));
        let at = WireInstant {
            ns: 17,
            frac: 123_456,
        };
        assert_eq!(s.instant_of(s.instant(at)), at);
    }
}
