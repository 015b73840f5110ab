//! Admission control: Σ slice/period over guaranteed flows ≤ 1 − reserve, decided exactly.
//!
//! Flows are grouped by period (slices of one period add up as integers), and the check is made
//! over the common denominator `D = lcm(periods, 10^6)` in arbitrary precision, so `3 × 1/3`
//! fits exactly into a reserve of zero and nothing is ever admitted by rounding. Admission runs
//! on the control path only; the cost is O(distinct periods) big-integer operations.

use std::collections::BTreeMap;

use num_bigint::BigUint;
use num_integer::Integer;

use crate::SchedError;

const PPM: u64 = 1_000_000;
const PPB: u64 = 1_000_000_000;

/// The guaranteed load admitted so far.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    reserve_ppm: u32,
    /// Σ slice_ns per distinct period_ns, guaranteed flows only.
    by_period: BTreeMap<u64, u128>,
}

/// A `(period_ns, slice_ns)` pair.
pub(crate) type Share = (u64, u64);

impl Admission {
    pub fn new(reserve_ppm: u32) -> Self {
        Self {
            reserve_ppm,
            by_period: BTreeMap::new(),
        }
    }

    /// Checks that `add` fits once `remove` (the flow's current share, on a QoS change) is gone.
    /// Best-effort shares (slice 0) always fit.
    pub fn check(&self, id: u32, add: Share, remove: Option<Share>) -> Result<(), SchedError> {
        let (period_ns, slice_ns) = add;
        if slice_ns == 0 {
            return Ok(());
        }
        let mut groups = self.by_period.clone();
        if let Some(old) = remove {
            sub_share(&mut groups, old);
        }
        // D = lcm of every period present, the new one and 10^6 (the reserve's denominator).
        let mut d = BigUint::from(PPM);
        for &p in groups.keys().chain(std::iter::once(&period_ns)) {
            d = d.lcm(&BigUint::from(p));
        }
        // others = Σ S_P·D/P, mine = s·D/p, limit = (10^6 − reserve)·D/10^6: all exact integers.
        let mut others = BigUint::default();
        for (&p, &s) in &groups {
            others += BigUint::from(s) * (&d / p);
        }
        let per_ns = &d / period_ns;
        let mine = BigUint::from(slice_ns) * &per_ns;
        let limit_ppm = PPM - u64::from(self.reserve_ppm);
        let limit = BigUint::from(limit_ppm) * (&d / PPM);
        let total = &others + &mine;
        if total <= limit {
            return Ok(());
        }
        let ppb_ceil =
            |x: &BigUint| -> u64 { u64::try_from((x * PPB).div_ceil(&d)).unwrap_or(u64::MAX) };
        let max_slice_ns = if limit > others {
            let fit = (&limit - &others) / &per_ns;
            u64::try_from(fit).unwrap_or(u64::MAX).min(period_ns)
        } else {
            0
        };
        Err(SchedError::Admission {
            id,
            slice_ns,
            period_ns,
            requested_ppb: ppb_ceil(&total),
            limit_ppb: limit_ppm * (PPB / PPM),
            over_ppb: ppb_ceil(&(&total - &limit)),
            max_slice_ns,
        })
    }

    pub fn add(&mut self, share: Share) {
        if share.1 > 0 {
            *self.by_period.entry(share.0).or_default() += u128::from(share.1);
        }
    }

    pub fn remove(&mut self, share: Share) {
        sub_share(&mut self.by_period, share);
    }

    /// Σ slice/period of the admitted guaranteed flows, parts per billion, rounded up.
    pub fn load_ppb(&self) -> u64 {
        let mut d = BigUint::from(1u32);
        for &p in self.by_period.keys() {
            d = d.lcm(&BigUint::from(p));
        }
        let mut n = BigUint::default();
        for (&p, &s) in &self.by_period {
            n += BigUint::from(s) * (&d / p);
        }
        u64::try_from((n * PPB).div_ceil(&d)).unwrap_or(u64::MAX)
    }
}

fn sub_share(groups: &mut BTreeMap<u64, u128>, (period_ns, slice_ns): Share) {
    if slice_ns == 0 {
        return;
    }
    if let Some(s) = groups.get_mut(&period_ns) {
        *s = s.saturating_sub(u128::from(slice_ns));
        if *s == 0 {
            groups.remove(&period_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirds_fit_exactly() {
        let mut a = Admission::new(0);
        for id in 0..3 {
            a.check(id, (3, 1), None).unwrap();
            a.add((3, 1));
        }
        assert_eq!(a.load_ppb(), PPB);
        // Not one more nanosecond in any period.
        assert!(a.check(9, (1_000_000_007, 1), None).is_err());
    }

    #[test]
    fn rejection_says_by_how_much() {
        let mut a = Admission::new(10_000); // keep 1%
        a.add((100_000_000, 90_000_000)); // 90%
        let err = a.check(7, (10_000_000, 1_000_000), None).unwrap_err(); // +10%
        assert_eq!(
            err,
            SchedError::Admission {
                id: 7,
                slice_ns: 1_000_000,
                period_ns: 10_000_000,
                requested_ppb: 1_000_000_000,
                limit_ppb: 990_000_000,
                over_ppb: 10_000_000,
                max_slice_ns: 900_000,
            }
        );
        // The slice it proposes is admitted.
        a.check(7, (10_000_000, 900_000), None).unwrap();
        // A QoS change that frees the flow's own share is checked without it.
        a.check(
            8,
            (100_000_000, 99_000_000),
            Some((100_000_000, 90_000_000)),
        )
        .unwrap();
    }
}
