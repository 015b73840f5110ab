//! The Atropos transmit scheduler.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::admission::Admission;
use crate::heap::{Entry, Heap};
use crate::stats::{FlowStats, PeriodUsage, Usage};
use crate::wire::{
    self, WireClock, WireInstant, MAX_FRAME_BYTES, MAX_LINK_RATE_BPS, UNITS_PER_BIT,
};
use crate::{Qos, SchedError};

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
enum Place {
    None,
    /// Backlogged, guaranteed time left: EDF candidates, keyed by deadline.
    Ready,
    /// Backlogged, allocation used up: keyed by the deadline, when the next allocation starts.
    Waiting,
}

/// Traffic counters kept on the hot path (bits, not ns: exact, and a `u64` never wraps).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    guaranteed_bits: u64,
    extra_bits: u64,
    packets: u64,
    bytes: u64,
}

impl Counters {
    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The state a scheduling decision touches: exactly two cache lines per flow.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Hot {
    /// Guaranteed time left in this period, rate units (may be negative: carried debt).
    r: i128,
    /// The slice in rate units.
    slice_units: i128,
    deadline_ns: u64,
    period_ns: u64,
    /// Sequence number of the flow's live heap entry.
    seq: u32,
    /// Bumped when the slot is freed: invalidates slack ring entries of a removed flow.
    gen: u32,
    id: u32,
    place: Place,
    backlogged: bool,
    extra: bool,
    in_slack: bool,
    live: bool,
    total: Counters,
    period: Counters,
}

/// Accounting touched once per period, on QoS changes and for statistics.
#[derive(Debug, Clone, Default)]
struct Cold {
    qos: Option<Qos>,
    period_start_ns: u64,
    period_held_units: u128,
    period_missed: bool,
    total_held_units: u128,
    last: Option<PeriodUsage>,
    periods: u64,
    misses: u64,
    missed_units: u128,
}

/// An active latency-hint hold: the wire is kept idle for `slot` until `until_ns`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    slot: u32,
    gen: u32,
    /// When the wire went free (the hold's idle time starts here).
    start: WireInstant,
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

/// The Atropos transmit scheduler: EDF over guaranteed flows with time left, slack round robin
/// over `extra` flows, exact wire-time pacing. Pure: time is always passed in (ns, any
/// monotonic origin); calls with an earlier time than one seen before are treated as that time.
#[derive(Debug)]
pub struct Scheduler {
    rate: u64,
    admission: Admission,
    lookahead_ns: u64,
    hot: Vec<Hot>,
    cold: Vec<Cold>,
    free_slots: Vec<u32>,
    index: IdMap,
    ready: Heap,
    waiting: Heap,
    /// Round robin of backlogged `extra` flows: `(slot, gen)`, lazily cleaned.
    slack: VecDeque<(u32, u32)>,
    /// Slack entries of removed flows still in the ring.
    slack_dead: usize,
    wire: WireClock,
    clock_ns: u64,
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
        Ok(Self {
            rate: link_rate_bps,
            admission: Admission::new(reserve_ppm),
            lookahead_ns: 0,
            hot: Vec::new(),
            cold: Vec::new(),
            free_slots: Vec::new(),
            index: IdMap::default(),
            ready: Heap::default(),
            waiting: Heap::default(),
            slack: VecDeque::new(),
            slack_dead: 0,
            wire: WireClock::new(link_rate_bps),
            clock_ns: 0,
            last_pick: None,
            last_sent: None,
            hold: None,
            live: 0,
        })
    }

    /// Lets [`pick`](Self::pick) choose the next frame up to `lookahead_ns` before the wire goes
    /// free (default 0). A driver in front of a real NIC uses this to keep a frame or two in the
    /// hardware queue; the decision is then made as of the moment the wire goes free.
    pub fn set_lookahead_ns(&mut self, lookahead_ns: u64) {
        self.lookahead_ns = lookahead_ns;
    }

    /// The link rate, bit/s.
    pub fn link_rate_bps(&self) -> u64 {
        self.rate
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
        units.div_ceil(self.rate)
    }

    /// When the wire is next free, ns (rounded up to the next whole ns).
    pub fn wire_free_at_ns(&self) -> u64 {
        self.wire.free_at().ceil_ns()
    }

    /// When the wire is next free, exactly.
    pub fn wire_free_at(&self) -> WireInstant {
        self.wire.free_at()
    }

    /// Adds a flow (not yet backlogged). Its first period starts at `now_ns`.
    pub fn add_flow(&mut self, id: u32, qos: Qos, now_ns: u64) -> Result<(), SchedError> {
        qos.validate()?;
        if self.index.contains_key(&id) {
            return Err(SchedError::DuplicateFlow(id));
        }
        self.admission
            .check(id, (qos.period_ns, qos.slice_ns), None)?;
        let t = self.advance_clock(now_ns);
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.hot.len()).map_err(|_| SchedError::TooManyFlows)?;
                self.hot.push(Hot {
                    r: 0,
                    slice_units: 0,
                    deadline_ns: 0,
                    period_ns: 0,
                    seq: 0,
                    gen: 0,
                    id,
                    place: Place::None,
                    backlogged: false,
                    extra: false,
                    in_slack: false,
                    live: false,
                    total: Counters::default(),
                    period: Counters::default(),
                });
                self.cold.push(Cold::default());
                s
            }
        };
        self.admission.add((qos.period_ns, qos.slice_ns));
        let slice_units = self.ns_units(qos.slice_ns);
        let h = &mut self.hot[slot as usize];
        h.r = slice_units;
        h.slice_units = slice_units;
        h.deadline_ns = t.saturating_add(qos.period_ns);
        h.period_ns = qos.period_ns;
        h.id = id;
        h.place = Place::None;
        h.backlogged = false;
        h.extra = qos.extra;
        h.in_slack = false;
        h.live = true;
        h.total.clear();
        h.period.clear();
        self.cold[slot as usize] = Cold {
            qos: Some(qos),
            period_start_ns: t,
            ..Cold::default()
        };
        self.index.insert(id, slot);
        self.live += 1;
        Ok(())
    }

    /// Changes a flow's QoS (admission-checked without its old share). The flow starts a new
    /// period at `now_ns` with the new slice; debt from an overrun is kept.
    pub fn set_qos(&mut self, id: u32, qos: Qos, now_ns: u64) -> Result<(), SchedError> {
        qos.validate()?;
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
        let slice_units = self.ns_units(qos.slice_ns);
        let h = &mut self.hot[slot as usize];
        let old_deadline = h.deadline_ns;
        h.r = h.r.min(0) + slice_units;
        h.slice_units = slice_units;
        h.period_ns = qos.period_ns;
        h.deadline_ns = t.saturating_add(qos.period_ns);
        h.extra = qos.extra;
        self.roll(slot, old_deadline.min(t), t);
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
        let h = &mut self.hot[slot as usize];
        if h.in_slack {
            self.slack_dead += 1;
        }
        h.in_slack = false;
        h.live = false;
        h.backlogged = false;
        h.gen = h.gen.wrapping_add(1);
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
        if self.hot[slot as usize].backlogged == backlogged {
            return Ok(());
        }
        let t = self.advance_clock(now_ns);
        if backlogged {
            if self.hold.is_some_and(|h| h.slot == slot) {
                self.end_hold(t);
            }
            self.refresh(slot, t);
            self.hot[slot as usize].backlogged = true;
            self.place(slot);
            self.join_slack(slot);
        } else {
            self.unplace(slot);
            // Still backlogged for this refresh: a deadline that passed with time left is a miss.
            self.refresh(slot, t);
            self.hot[slot as usize].backlogged = false;
            self.maybe_hold(slot, t);
            self.compact();
        }
        Ok(())
    }

    /// Decides what to send at `now_ns`.
    #[inline]
    pub fn pick(&mut self, now_ns: u64) -> Pick {
        let now = now_ns.max(self.clock_ns);
        let free = self.wire.free_at().ceil_ns();
        if free > now.saturating_add(self.lookahead_ns) {
            return Pick::WaitUntil(free - self.lookahead_ns);
        }
        let t = now.max(free);
        self.clock_ns = t;

        // New allocations for backlogged flows whose period ended.
        while let Some(e) = self.waiting.peek() {
            if e.key > t {
                break;
            }
            self.waiting.pop();
            if !self.is_live(e, Place::Waiting) {
                self.waiting.stale = self.waiting.stale.saturating_sub(1);
                continue;
            }
            self.hot[e.slot as usize].place = Place::None;
            self.refresh(e.slot, t);
            self.place(e.slot);
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
                self.hot[e.slot as usize].place = Place::None;
                self.refresh(e.slot, t);
                self.place(e.slot);
                continue;
            }
            break Some(e);
        };
        if let Some(h) = self.hold {
            let held_deadline = self.hot[h.slot as usize].deadline_ns;
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
            let id = self.hot[e.slot as usize].id;
            self.last_pick = Some((id, e.slot));
            return Pick::Send(id);
        }
        // Slack, round robin.
        while let Some((slot, gen)) = self.slack.pop_front() {
            let h = &mut self.hot[slot as usize];
            if h.gen != gen || !h.live {
                self.slack_dead = self.slack_dead.saturating_sub(1);
                continue;
            }
            if !(h.backlogged && h.extra) {
                h.in_slack = false;
                continue;
            }
            let id = h.id;
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
        let cost = *self.wire.last_cost();
        if self.hot[slot as usize].deadline_ns <= t {
            self.unplace(slot);
            self.refresh(slot, t);
            self.place(slot);
        }
        let h = &mut self.hot[slot as usize];
        h.total.packets += 1;
        h.total.bytes += u64::from(len_bytes);
        h.period.packets += 1;
        h.period.bytes += u64::from(len_bytes);
        if h.slice_units > 0 && (h.r > 0 || !h.extra) {
            h.r -= i128::from(cost.units);
            h.total.guaranteed_bits += cost.bits;
            h.period.guaranteed_bits += cost.bits;
            if h.r <= 0 && h.place == Place::Ready {
                // Usually the flow is the EDF top that `pick` just returned.
                match self.ready.peek() {
                    Some(e) if e.slot == slot && e.seq == h.seq => {
                        self.ready.pop();
                    }
                    _ => self.ready.stale += 1,
                }
                h.place = Place::None;
                self.place(slot);
            }
        } else {
            h.total.extra_bits += cost.bits;
            h.period.extra_bits += cost.bits;
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

    fn ns_units(&self, ns: u64) -> i128 {
        i128::from(ns) * i128::from(self.rate)
    }

    #[inline]
    fn is_live(&self, e: Entry, place: Place) -> bool {
        let h = &self.hot[e.slot as usize];
        h.place == place && h.seq == e.seq
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
        let h = &mut self.hot[slot as usize];
        debug_assert_eq!(h.place, Place::None);
        if !h.backlogged || h.slice_units == 0 || !h.live {
            return;
        }
        h.seq = h.seq.wrapping_add(1);
        let e = Entry {
            key: h.deadline_ns,
            slot,
            seq: h.seq,
        };
        if h.r > 0 {
            h.place = Place::Ready;
            self.ready.push(e);
        } else {
            h.place = Place::Waiting;
            self.waiting.push(e);
        }
    }

    /// Takes a flow out of its heap lazily (its entry turns stale).
    fn unplace(&mut self, slot: u32) {
        let h = &mut self.hot[slot as usize];
        match h.place {
            Place::None => {}
            Place::Ready => self.ready.stale += 1,
            Place::Waiting => self.waiting.stale += 1,
        }
        h.place = Place::None;
    }

    fn join_slack(&mut self, slot: u32) {
        let h = &mut self.hot[slot as usize];
        if h.backlogged && h.extra && !h.in_slack {
            h.in_slack = true;
            self.slack.push_back((slot, h.gen));
        }
    }

    /// Brings a flow's period up to date at `t`: new allocation (Atropos' `d ← d + p`,
    /// `r ← s`, debt carried), deadline-miss accounting, period statistics.
    fn refresh(&mut self, slot: u32, t: u64) {
        let h = &mut self.hot[slot as usize];
        if h.deadline_ns > t {
            return;
        }
        let old_deadline = h.deadline_ns;
        let p = h.period_ns.max(1);
        let new_start;
        if h.backlogged {
            // Keep the phase: periods are back to back while the flow has work.
            let k = (t - old_deadline) / p + 1;
            let c = &mut self.cold[slot as usize];
            if h.slice_units > 0 {
                if h.r > 0 {
                    c.misses += 1;
                    c.missed_units += h.r.unsigned_abs();
                    c.period_missed = true;
                    h.r = 0;
                }
                if k > 1 {
                    // Whole periods in which nobody asked the scheduler: missed entirely.
                    c.misses += k - 1;
                    c.missed_units += u128::from(k - 1) * h.slice_units.unsigned_abs();
                }
                h.r += h.slice_units;
            }
            h.deadline_ns = old_deadline.saturating_add(k.saturating_mul(p));
            new_start = h.deadline_ns - p;
        } else {
            // Idle past its deadline: no hoarding, the next period starts now.
            h.r = h.r.min(0) + h.slice_units;
            h.deadline_ns = t.saturating_add(p);
            new_start = t;
        }
        self.roll(slot, old_deadline, new_start);
    }

    /// Closes the period under way at `end_ns` and opens one at `start_ns`.
    fn roll(&mut self, slot: u32, end_ns: u64, start_ns: u64) {
        let h = &mut self.hot[slot as usize];
        let c = &mut self.cold[slot as usize];
        let usage = usage_of(&h.period, c.period_held_units, self.rate);
        c.last = Some(PeriodUsage {
            start_ns: c.period_start_ns,
            end_ns,
            usage,
            deadline_missed: c.period_missed,
        });
        c.periods += 1;
        c.period_start_ns = start_ns;
        c.period_held_units = 0;
        c.period_missed = false;
        h.period.clear();
    }

    /// Starts a latency-hint hold for a flow that just ran empty, if it qualifies.
    fn maybe_hold(&mut self, slot: u32, t: u64) {
        let Some(hint_ns) = self.cold[slot as usize].qos.and_then(|q| q.latency_hint_ns) else {
            return;
        };
        let h = &self.hot[slot as usize];
        if self.hold.is_some() || self.last_sent != Some(slot) || h.r <= 0 || h.slice_units == 0 {
            return;
        }
        let free = self.wire.free_at();
        let start = if t <= free.ceil_ns() {
            free
        } else {
            WireInstant { ns: t, frac: 0 }
        };
        let budget =
            h.r.unsigned_abs()
                .min(u128::from(hint_ns) * u128::from(self.rate));
        let until =
            wire::units_to_ns_ceil(start.units(self.rate) + budget, self.rate).min(h.deadline_ns);
        if until > start.ceil_ns() {
            self.hold = Some(Hold {
                slot,
                gen: h.gen,
                start,
                until_ns: until,
            });
        }
    }

    /// Ends the hold at `end_ns`, charging the idle time held to the flow.
    fn end_hold(&mut self, end_ns: u64) {
        let Some(hold) = self.hold.take() else { return };
        let rate = self.rate;
        let h = &mut self.hot[hold.slot as usize];
        if !h.live || h.gen != hold.gen {
            return;
        }
        let end = end_ns.min(hold.until_ns);
        let held = (u128::from(end) * u128::from(rate)).saturating_sub(hold.start.units(rate));
        if held == 0 {
            return;
        }
        h.r -= i128::try_from(held).unwrap_or(i128::MAX);
        let c = &mut self.cold[hold.slot as usize];
        c.total_held_units += held;
        c.period_held_units += held;
        // The idle wire time was the flow's: nobody else could send in it.
        let held_end = wire::instant_from_units(hold.start.units(rate) + held, rate);
        self.wire.occupy_until(held_end);
        if h.r <= 0 && h.place == Place::Ready {
            self.unplace(hold.slot);
            self.place(hold.slot);
        }
    }

    /// Rebuilds a heap or the slack ring when stale entries outnumber live ones.
    fn compact(&mut self) {
        let hot = &self.hot;
        if self.ready.stale > self.ready.len() / 2 + 64 {
            self.ready.retain_and_rebuild(|e| {
                hot[e.slot as usize].place == Place::Ready && hot[e.slot as usize].seq == e.seq
            });
        }
        if self.waiting.stale > self.waiting.len() / 2 + 64 {
            self.waiting.retain_and_rebuild(|e| {
                hot[e.slot as usize].place == Place::Waiting && hot[e.slot as usize].seq == e.seq
            });
        }
        if self.slack_dead > self.slack.len() / 2 + 64 {
            self.slack
                .retain(|&(slot, gen)| hot[slot as usize].live && hot[slot as usize].gen == gen);
            self.slack_dead = 0;
        }
    }

    fn stats_of(&self, slot: u32) -> FlowStats {
        let h = &self.hot[slot as usize];
        let c = &self.cold[slot as usize];
        let rate = self.rate;
        let total = Usage {
            held_ns: wire::units_to_ns_floor(c.total_held_units, rate),
            ..usage_of(&h.total, 0, rate)
        };
        let mut current = PeriodUsage {
            start_ns: c.period_start_ns,
            end_ns: h.deadline_ns,
            usage: usage_of(&h.period, c.period_held_units, rate),
            deadline_missed: c.period_missed,
        };
        let mut last = c.last;
        let mut periods = c.periods;
        let remaining_ns = i64::try_from(h.r / i128::from(rate)).unwrap_or(i64::MAX);
        if self.clock_ns >= h.deadline_ns {
            // The period is over on the scheduler's clock; it rolls at the next call.
            last = Some(current);
            periods += 1;
            current = PeriodUsage {
                start_ns: h.deadline_ns,
                end_ns: h.deadline_ns,
                ..PeriodUsage::default()
            };
        }
        FlowStats {
            id: h.id,
            qos: c.qos.unwrap_or(Qos::best_effort(1)),
            backlogged: h.backlogged,
            remaining_ns,
            total,
            current_period: current,
            last_period: last,
            periods,
            deadline_misses: c.misses,
            missed_ns: wire::units_to_ns_floor(c.missed_units, rate),
        }
    }
}

fn usage_of(c: &Counters, held_units: u128, rate: u64) -> Usage {
    let ns =
        |bits: u64| wire::units_to_ns_floor(u128::from(bits) * u128::from(UNITS_PER_BIT), rate);
    Usage {
        guaranteed_ns: ns(c.guaranteed_bits),
        extra_ns: ns(c.extra_bits),
        held_ns: wire::units_to_ns_floor(held_units, rate),
        packets: c.packets,
        bytes: c.bytes,
    }
}
