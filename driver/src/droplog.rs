//! The drop log: the last N frames the driver dropped, with when, which flow and why — as the
//! Nemesis driver kept one, so that an experiment can check that a flow's losses are exactly
//! what the driver logged for it.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use nemflow_proto::ctl::{DropEntry, DropReason};
use nemflow_proto::FlowId;

/// A bounded log of drops; the oldest entries make room for new ones.
#[derive(Debug)]
pub struct DropLog {
    entries: VecDeque<DropEntry>,
    capacity: usize,
    next_seq: u64,
}

impl DropLog {
    /// A log keeping the last `capacity` drops.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            next_seq: 1,
        }
    }

    /// Records one drop, timestamped now (wall clock, ns).
    pub fn record(&mut self, flow: Option<FlowId>, reason: DropReason, len: usize) {
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(DropEntry {
            seq: self.next_seq,
            time_ns,
            flow,
            reason,
            len: u32::try_from(len).unwrap_or(u32::MAX),
        });
        self.next_seq += 1;
    }

    /// Entries with a sequence number above `after`, oldest first, at most `max`.
    pub fn since(&self, after: u64, max: usize) -> Vec<DropEntry> {
        // Sequence numbers are consecutive, so the first wanted entry's index is computable.
        let first_seq = self.entries.front().map_or(self.next_seq, |e| e.seq);
        let skip = after.saturating_add(1).saturating_sub(first_seq) as usize;
        self.entries.iter().skip(skip).take(max).cloned().collect()
    }

    /// Drops recorded since start (including those no longer kept).
    pub fn total(&self) -> u64 {
        self.next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_in_order() {
        let mut log = DropLog::new(3);
        for i in 0..5 {
            log.record(Some(FlowId(i)), DropReason::RxNoBuffer, 100);
        }
        assert_eq!(log.total(), 5);
        let all = log.since(0, 10);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(log.since(4, 10).len(), 1);
        assert_eq!(log.since(5, 10).len(), 0);
        assert_eq!(log.since(0, 2).len(), 2);
    }
}
