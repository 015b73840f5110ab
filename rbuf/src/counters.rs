//! Per-endpoint counters: every peer violation is counted here as well as returned as an error.

use crate::error::{IndexError, IoRecError};

/// What one endpoint has seen. Plain numbers, private to the endpoint (never in shared memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Valid iorecs this endpoint took from a FIFO (popped, taken or reclaimed).
    pub iorecs_in: u64,
    /// Iorecs this endpoint put on a FIFO.
    pub iorecs_out: u64,
    /// Invalid iorecs: extent count 0 or above [`crate::MAX_EXTENTS`], or a two-slot record of
    /// which the producer published one slot ([`IoRecError::Truncated`]).
    pub invalid_count: u64,
    /// Invalid iorecs: `offset + len` overflowed.
    pub invalid_overflow: u64,
    /// Invalid iorecs: an extent outside the data area.
    pub invalid_out_of_bounds: u64,
    /// Invalid iorecs: longer than `max_packet_bytes`.
    pub invalid_too_long: u64,
    /// Invalid iorecs: the master got back a buffer it had not handed out.
    pub invalid_not_owned: u64,
    /// Invalid run records ([`IoRecError::BadRun`]): misplaced, or naming iorecs not out.
    pub invalid_run: u64,
    /// Peer index moved backwards.
    pub index_backward: u64,
    /// Peer index jumped too far.
    pub index_too_far: u64,
    /// `take_empty` found no empty buffer (RMM producer: the caller drops the frame).
    pub no_empty_buffer: u64,
    /// Push refused because the FIFO was full (back-pressure).
    pub full: u64,
    /// Times this side went to sleep.
    pub sleeps: u64,
    /// Times this side wrote the peer's eventfd.
    pub wakeups_sent: u64,
    /// Blocking calls that timed out.
    pub timeouts: u64,
}

impl Counters {
    /// Sum of all invalid-iorec counters.
    pub fn invalid_iorecs(&self) -> u64 {
        self.invalid_count
            + self.invalid_overflow
            + self.invalid_out_of_bounds
            + self.invalid_too_long
            + self.invalid_not_owned
            + self.invalid_run
    }

    /// Sum of the index-violation counters.
    pub fn index_violations(&self) -> u64 {
        self.index_backward + self.index_too_far
    }

    pub(crate) fn count_iorec(&mut self, e: &IoRecError) {
        match e {
            IoRecError::BadCount { .. } | IoRecError::Truncated { .. } => self.invalid_count += 1,
            IoRecError::Overflow { .. } => self.invalid_overflow += 1,
            IoRecError::OutOfBounds { .. } => self.invalid_out_of_bounds += 1,
            IoRecError::TooLong { .. } => self.invalid_too_long += 1,
            IoRecError::NotOwned { .. } => self.invalid_not_owned += 1,
            IoRecError::BadRun { .. } => self.invalid_run += 1,
        }
    }

    pub(crate) fn count_index(&mut self, e: &IndexError) {
        match e {
            IndexError::Backward { .. } => self.index_backward += 1,
            IndexError::TooFar { .. } => self.index_too_far += 1,
        }
    }
}
