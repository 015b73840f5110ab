//! Per-flow accounting, as Nemesis' `qosentry` kept it.

use crate::Qos;

/// Wire time and traffic of one flow over some interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Wire time of frames sent from the guaranteed allocation, ns (rounded down).
    pub guaranteed_ns: u64,
    /// Wire time of frames sent from slack, ns (rounded down).
    pub extra_ns: u64,
    /// Idle wire time held for the flow by its latency hint (charged to its allocation), ns.
    pub held_ns: u64,
    /// Frames sent.
    pub packets: u64,
    /// Bytes sent (frame lengths as charged, without the 24 bytes of wire overhead).
    pub bytes: u64,
}

/// One allocation period of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeriodUsage {
    /// When the period began, ns.
    pub start_ns: u64,
    /// Its deadline (end), ns.
    pub end_ns: u64,
    /// What the flow used in it.
    pub usage: Usage,
    /// The flow was backlogged with guaranteed time left when the deadline came.
    pub deadline_missed: bool,
}

/// A snapshot of one flow's accounting.
///
/// Periods roll lazily, at the first scheduler call at or after their deadline; a snapshot taken
/// later than a deadline the scheduler has not yet acted on shows that period as the last
/// completed one already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    /// The flow's id.
    pub id: u32,
    /// Its QoS.
    pub qos: Qos,
    /// Whether the caller last reported its queue non-empty.
    pub backlogged: bool,
    /// Guaranteed time left in the current period, ns (negative: debt from a frame that
    /// overran the allocation, repaid from the next period).
    pub remaining_ns: i64,
    /// Everything since the flow was added.
    pub total: Usage,
    /// The period under way.
    pub current_period: PeriodUsage,
    /// The last completed period, if any.
    pub last_period: Option<PeriodUsage>,
    /// Completed periods.
    pub periods: u64,
    /// Periods whose deadline passed while the flow was backlogged with guaranteed time left.
    pub deadline_misses: u64,
    /// Guaranteed time forfeited by those misses, ns.
    pub missed_ns: u64,
}
