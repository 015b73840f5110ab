//! The scheduler's one error type.

use thiserror::Error;

/// Everything a caller (the driver, the flow manager through it, a scenario file) can get wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedError {
    /// `period_ns` is zero.
    #[error("invalid QoS: period_ns must be > 0")]
    ZeroPeriod,
    /// `period_ns` above [`crate::MAX_PERIOD_NS`].
    #[error("invalid QoS: period_ns {period_ns} is above the maximum {max_ns} ns (1 hour)")]
    PeriodTooLong { period_ns: u64, max_ns: u64 },
    /// The slice does not fit in the period.
    #[error("invalid QoS: slice_ns {slice_ns} is larger than period_ns {period_ns}")]
    SliceExceedsPeriod { slice_ns: u64, period_ns: u64 },
    /// Slice 0 without `extra`: the flow could never send.
    #[error("invalid QoS: slice_ns 0 with extra false could never send (best effort is slice 0, extra true)")]
    NeverSends,
    /// A latency hint of zero (use `None` for no hint).
    #[error("invalid QoS: latency_hint_ns must be > 0 when set (use no hint instead)")]
    ZeroLatencyHint,
    /// Link rate of zero or above [`crate::MAX_LINK_RATE_BPS`].
    #[error("link rate {link_rate_bps} bit/s is outside 1..={max_bps} bit/s")]
    InvalidLinkRate { link_rate_bps: u64, max_bps: u64 },
    /// Admission reserve above 100%.
    #[error("admission reserve {reserve_ppm} ppm is above 1000000 ppm (100%)")]
    InvalidReserve { reserve_ppm: u32 },
    /// Frame longer than [`crate::MAX_FRAME_BYTES`].
    #[error("frame of {len_bytes} bytes is longer than the maximum {max_bytes} bytes")]
    FrameTooLong { len_bytes: u32, max_bytes: u32 },
    /// No flow with this id.
    #[error("no flow with id {0}")]
    UnknownFlow(u32),
    /// A flow with this id exists already.
    #[error("a flow with id {0} exists already")]
    DuplicateFlow(u32),
    /// The flow table is full (`u32::MAX` slots).
    #[error("the flow table is full")]
    TooManyFlows,
    /// Admission control: the guaranteed flows' Σ slice/period would exceed 1 − reserve.
    #[error(
        "admission rejected for flow {id}: {slice_ns} ns per {period_ns} ns would bring the guaranteed \
         load to {requested_ppb} ppb of the link, over the limit of {limit_ppb} ppb by {over_ppb} ppb; \
         the largest slice that fits with this period is {max_slice_ns} ns"
    )]
    Admission {
        /// The flow asking.
        id: u32,
        /// Requested slice, ns.
        slice_ns: u64,
        /// Requested period, ns.
        period_ns: u64,
        /// Σ slice/period with this flow, parts per billion, rounded up.
        requested_ppb: u64,
        /// 1 − reserve, parts per billion.
        limit_ppb: u64,
        /// By how much the request does not fit, parts per billion, rounded up (> 0).
        over_ppb: u64,
        /// The largest slice (ns, for the requested period) that would be admitted now.
        max_slice_ns: u64,
    },
}
