//! A flow's quality of service: Atropos' `(p, s, x, l)`.

use crate::SchedError;

/// Longest period accepted: one hour. Keeps every product of a period with a link rate far
/// inside `u128` and catches a unit mistake (seconds given as nanoseconds the other way round).
pub const MAX_PERIOD_NS: u64 = 3_600_000_000_000;

/// What a flow is guaranteed: `slice_ns` of wire time in every `period_ns`, optionally more
/// from slack (`extra`). Best effort is `slice_ns = 0, extra = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Qos {
    /// Allocation period `p`, ns (> 0, ≤ [`MAX_PERIOD_NS`]). Also the accounting period of a
    /// best-effort flow.
    pub period_ns: u64,
    /// Guaranteed wire time `s` per period, ns (≤ `period_ns`).
    pub slice_ns: u64,
    /// `x`: may use slack time (wire time no guaranteed flow wants).
    pub extra: bool,
    /// `l`: when the flow's queue runs empty while it has guaranteed time left, hold the wire
    /// for it up to `min(remaining, l)` ns (charged to it) before giving it to another flow.
    pub latency_hint_ns: Option<u64>,
}

impl Qos {
    /// A guaranteed flow: `slice_ns` in every `period_ns`, no slack, no latency hint.
    pub const fn guaranteed(period_ns: u64, slice_ns: u64) -> Self {
        Self {
            period_ns,
            slice_ns,
            extra: false,
            latency_hint_ns: None,
        }
    }

    /// A best-effort flow: slack only. `period_ns` is its accounting period.
    pub const fn best_effort(period_ns: u64) -> Self {
        Self {
            period_ns,
            slice_ns: 0,
            extra: true,
            latency_hint_ns: None,
        }
    }

    /// The same QoS with `extra` set.
    #[must_use]
    pub const fn with_extra(mut self, extra: bool) -> Self {
        self.extra = extra;
        self
    }

    /// The same QoS with a latency hint.
    #[must_use]
    pub const fn with_latency_hint_ns(mut self, hint_ns: u64) -> Self {
        self.latency_hint_ns = Some(hint_ns);
        self
    }

    /// Whether the flow has a guarantee (counts in admission control, scheduled by EDF).
    pub const fn is_guaranteed(&self) -> bool {
        self.slice_ns > 0
    }

    /// Checks the QoS on its own (admission against the other flows is the scheduler's job).
    pub fn validate(&self) -> Result<(), SchedError> {
        if self.period_ns == 0 {
            return Err(SchedError::ZeroPeriod);
        }
        if self.period_ns > MAX_PERIOD_NS {
            return Err(SchedError::PeriodTooLong {
                period_ns: self.period_ns,
                max_ns: MAX_PERIOD_NS,
            });
        }
        if self.slice_ns > self.period_ns {
            return Err(SchedError::SliceExceedsPeriod {
                slice_ns: self.slice_ns,
                period_ns: self.period_ns,
            });
        }
        if self.slice_ns == 0 && !self.extra {
            return Err(SchedError::NeverSends);
        }
        if self.latency_hint_ns == Some(0) {
            return Err(SchedError::ZeroLatencyHint);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(
            Qos::guaranteed(0, 0).validate(),
            Err(SchedError::ZeroPeriod)
        );
        assert_eq!(
            Qos::guaranteed(10, 11).validate(),
            Err(SchedError::SliceExceedsPeriod {
                slice_ns: 11,
                period_ns: 10
            })
        );
        assert_eq!(
            Qos::guaranteed(10, 0).validate(),
            Err(SchedError::NeverSends)
        );
        assert_eq!(
            Qos::guaranteed(10, 5).with_latency_hint_ns(0).validate(),
            Err(SchedError::ZeroLatencyHint)
        );
        assert!(matches!(
            Qos::guaranteed(MAX_PERIOD_NS + 1, 1).validate(),
            Err(SchedError::PeriodTooLong { .. })
        ));
        assert_eq!(Qos::best_effort(100_000_000).validate(), Ok(()));
        assert_eq!(Qos::guaranteed(10, 10).validate(), Ok(()));
        assert!(Qos::guaranteed(10, 1).is_guaranteed());
        assert!(!Qos::best_effort(10).is_guaranteed());
    }
}
