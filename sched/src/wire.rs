//! Exact wire time.
//!
//! A frame of `L` bytes occupies an Ethernet wire for `(L + 24) * 8` bit times: the frame, its
//! FCS, preamble + start delimiter and the inter-frame gap (`24` = 4 + 8 + 12 bytes). At a link
//! rate of `R` bit/s that is `(L + 24) * 8 * 10^9 / R` ns, which is rarely a whole number of
//! nanoseconds (or of picoseconds: 3 Gbit/s gives thirds of a picosecond).
//!
//! # Representation, and why
//!
//! Nothing here is rounded. The wire clock ([`WireInstant`], [`WireClock`]) is whole
//! nanoseconds plus a carried remainder below one nanosecond, in units of `1/R` ns, so that the
//! caller, who compares it with a nanosecond clock on every poll, never needs a division, and a
//! sum of 10^9 frames is identical to the closed form `N * (L + 24) * 8 * 10^9 / R`: no drift
//! over hours or years (see the `wire_clock_no_drift` tests). The scheduler keeps budgets in the
//! smallest unit in which both nanoseconds and bit times are whole (see the scheduler module),
//! which makes every charge exact too.

/// Bytes each frame costs on the wire beyond its own length: FCS (4), preamble and start frame
/// delimiter (8), inter-frame gap (12).
pub const WIRE_OVERHEAD_BYTES: u64 = 24;

/// Bit times in one rate unit's worth of a nanosecond: one bit time is `10^9` rate units.
pub(crate) const UNITS_PER_BIT: u64 = 1_000_000_000;

/// Highest link rate accepted (10 Tbit/s): keeps every intermediate product far inside `u64`
/// for a single frame and inside `u128` for any sum.
pub const MAX_LINK_RATE_BPS: u64 = 10_000_000_000_000;

/// Longest frame accepted by [`crate::Scheduler::charge`]: 1 MiB (far above any jumbo frame or
/// TSO segment), so `(L + 24) * 8 * 10^9` fits in a `u64`.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Bits a frame of `len_bytes` occupies on the wire, overhead included.
#[inline]
pub const fn wire_bits(len_bytes: u32) -> u64 {
    (len_bytes as u64 + WIRE_OVERHEAD_BYTES) * 8
}

/// An exact point on the wire clock: `ns + frac / link_rate_bps` nanoseconds, `frac < rate`.
///
/// The derived ordering is correct because `frac` is always normalised below the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct WireInstant {
    /// Whole nanoseconds.
    pub ns: u64,
    /// Fraction of the next nanosecond, in units of `1 / link_rate_bps` ns.
    pub frac: u64,
}

impl WireInstant {
    /// The instant as an exact count of rate units (`ns * rate + frac`).
    #[inline]
    pub fn units(self, rate: u64) -> u128 {
        u128::from(self.ns) * u128::from(rate) + u128::from(self.frac)
    }

    /// The first whole nanosecond at or after this instant.
    #[inline]
    pub fn ceil_ns(self) -> u64 {
        self.ns.saturating_add(u64::from(self.frac != 0))
    }
}

/// The wire time of one frame length, split for the two uses: `units` for budgets,
/// `ns` + `frac` for advancing the [`WireInstant`] clock without a division.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameCost {
    pub len_bytes: u32,
    pub bits: u64,
    /// `bits * 10^9`: the wire time in rate units.
    pub units: u64,
    pub ns: u64,
    pub frac: u64,
}

impl FrameCost {
    #[inline]
    pub fn new(len_bytes: u32, rate: u64) -> Self {
        let bits = wire_bits(len_bytes);
        let units = bits * UNITS_PER_BIT;
        Self {
            len_bytes,
            bits,
            units,
            ns: units / rate,
            frac: units % rate,
        }
    }
}

/// Adds a frame's wire time to an instant, carrying the sub-nanosecond remainder.
#[inline]
pub(crate) fn advance(at: WireInstant, cost: &FrameCost, rate: u64) -> WireInstant {
    let mut ns = at.ns + cost.ns;
    let mut frac = at.frac + cost.frac;
    if frac >= rate {
        frac -= rate;
        ns += 1;
    }
    WireInstant { ns, frac }
}

/// The wire clock: when the wire is next free, exactly, for one link rate.
///
/// [`send`](Self::send) puts a frame on the wire: it starts when the wire goes free, or at
/// `now_ns` if the wire has been idle since before then. A caller that comes back within the
/// nanosecond in which the wire went free (it can only name whole nanoseconds) continues back
/// to back, so no fraction of a nanosecond is ever lost or gained.
#[derive(Debug, Clone)]
pub struct WireClock {
    rate: u64,
    free: WireInstant,
    /// Wire time of the last frame length seen (one division per change of length).
    cost: FrameCost,
}

impl WireClock {
    /// A clock for a link of `link_rate_bps` (1..=[`MAX_LINK_RATE_BPS`]), free at time 0.
    pub fn new(link_rate_bps: u64) -> Self {
        let rate = link_rate_bps.clamp(1, MAX_LINK_RATE_BPS);
        Self {
            rate,
            free: WireInstant::default(),
            cost: FrameCost::new(0, rate),
        }
    }

    /// The link rate, bit/s.
    pub fn rate_bps(&self) -> u64 {
        self.rate
    }

    /// When the wire is next free.
    #[inline]
    pub fn free_at(&self) -> WireInstant {
        self.free
    }

    /// Sends a frame of `len_bytes` (≤ [`MAX_FRAME_BYTES`]) at `now_ns`; returns when it
    /// starts. The wire is then free at `start + wire time`.
    #[inline]
    pub fn send(&mut self, now_ns: u64, len_bytes: u32) -> WireInstant {
        if self.cost.len_bytes != len_bytes {
            self.cost = FrameCost::new(len_bytes.min(MAX_FRAME_BYTES), self.rate);
        }
        let start = if now_ns <= self.free.ceil_ns() {
            self.free
        } else {
            WireInstant {
                ns: now_ns,
                frac: 0,
            }
        };
        self.free = advance(start, &self.cost, self.rate);
        start
    }

    /// The wire time of the frame last sent, rate units and bits.
    #[inline]
    pub(crate) fn last_cost(&self) -> &FrameCost {
        &self.cost
    }

    /// Keeps the wire busy until at least `until` (a latency-hint hold).
    pub(crate) fn occupy_until(&mut self, until: WireInstant) {
        self.free = self.free.max(until);
    }
}

/// `units` rate units as whole nanoseconds, rounded down.
#[inline]
pub(crate) fn units_to_ns_floor(units: u128, rate: u64) -> u64 {
    u64::try_from(units / u128::from(rate)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_cost_at_100_mbit() {
        // 1514-byte frame: (1514 + 24) * 8 = 12304 bits = 123.04 us at 100 Mbit/s, exactly.
        let c = FrameCost::new(1514, 100_000_000);
        assert_eq!(c.bits, 12_304);
        assert_eq!((c.ns, c.frac), (123_040, 0));
        // 64-byte frame at 3 Gbit/s: 704 bits = 234.666.. ns.
        let c = FrameCost::new(64, 3_000_000_000);
        assert_eq!((c.ns, c.frac), (234, 2_000_000_000));
    }

    #[test]
    fn advance_carries_remainder() {
        let rate = 3_000_000_000;
        let c = FrameCost::new(64, rate);
        let mut at = WireInstant::default();
        for _ in 0..3 {
            at = advance(at, &c, rate);
        }
        // 3 * 704 bits = 2112 bits = 704 ns exactly.
        assert_eq!(at, WireInstant { ns: 704, frac: 0 });
        assert_eq!(WireInstant { ns: 5, frac: 1 }.ceil_ns(), 6);
        assert_eq!(WireInstant { ns: 5, frac: 0 }.ceil_ns(), 5);
    }
}
