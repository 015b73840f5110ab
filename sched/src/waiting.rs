//! The set of backlogged flows waiting for their next allocation, keyed by when it starts.
//!
//! Under EDF, flows that share a period run out of time in order of their deadlines: the flow
//! served is always the one with the earliest deadline, and a flow that gets a new allocation
//! later has a deadline a whole period ahead. So the replenishment times of one period class
//! arrive sorted, and a FIFO per period (a *run*) holds them with O(1) push and pop. Anything
//! that arrives out of order (a flow waking with debt, a charge without a pick) and the
//! classes beyond [`MAX_RUNS`] go to a heap. The earliest entry is the least of the runs' fronts
//! and the heap's top. Entries are deleted lazily, as in [`Heap`].

use std::collections::VecDeque;

use crate::heap::{Entry, Heap};

/// Period classes with their own run. Finding the earliest entry looks at each run's front.
const MAX_RUNS: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// `(period_ns, entries in non-decreasing key order)`.
    runs: Vec<(u64, VecDeque<Entry>)>,
    heap: Heap,
    /// Entries known to be stale.
    pub stale: usize,
}

/// Where the earliest entry is.
#[derive(Debug, Clone, Copy)]
enum Source {
    Run(usize),
    Heap,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.heap.len() + self.runs.iter().map(|(_, r)| r.len()).sum::<usize>()
    }

    #[inline]
    pub fn push(&mut self, e: Entry, period_ns: u64) {
        let mut free = None;
        for (i, (p, run)) in self.runs.iter_mut().enumerate() {
            if *p == period_ns {
                if run.back().is_none_or(|b| b.key <= e.key) {
                    run.push_back(e);
                } else {
                    self.heap.push(e);
                }
                return;
            }
            if run.is_empty() && free.is_none() {
                free = Some(i);
            }
        }
        // A new class: a run of its own if there is room, or an empty run to take over.
        if self.runs.len() < MAX_RUNS {
            self.runs.push((period_ns, VecDeque::from([e])));
        } else if let Some(i) = free {
            self.runs[i].0 = period_ns;
            self.runs[i].1.push_back(e);
        } else {
            self.heap.push(e);
        }
    }

    #[inline]
    fn min(&self) -> Option<(Entry, Source)> {
        let mut best = self.heap.peek().map(|e| (e, Source::Heap));
        for (i, (_, run)) in self.runs.iter().enumerate() {
            if let Some(&e) = run.front() {
                if best.is_none_or(|(b, _)| e.key < b.key) {
                    best = Some((e, Source::Run(i)));
                }
            }
        }
        best
    }

    /// The earliest entry.
    #[inline]
    pub fn peek(&self) -> Option<Entry> {
        self.min().map(|(e, _)| e)
    }

    /// Removes and returns the earliest entry if its key is at most `t`.
    #[inline]
    pub fn pop_due(&mut self, t: u64) -> Option<Entry> {
        let (e, src) = self.min()?;
        if e.key > t {
            return None;
        }
        match src {
            Source::Heap => {
                self.heap.pop();
            }
            Source::Run(i) => {
                self.runs[i].1.pop_front();
            }
        }
        Some(e)
    }

    /// Removes the earliest entry (whatever its key).
    pub fn pop(&mut self) -> Option<Entry> {
        self.pop_due(u64::MAX)
    }

    /// Keeps only the entries for which `live` holds.
    pub fn retain(&mut self, mut live: impl FnMut(&Entry) -> bool) {
        for (_, run) in &mut self.runs {
            run.retain(|e| live(e));
        }
        self.heap.retain_and_rebuild(&mut live);
        self.stale = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_across_runs_and_heap() {
        let mut w = Waiting::default();
        let mut want = Vec::new();
        let mut x: u64 = 99;
        // Ten period classes (two more than runs), each pushing sorted keys, plus strays.
        for i in 0..400u32 {
            let class = u64::from(i % 10);
            let key = u64::from(i) * 10 + class;
            w.push(Entry::new(key, i, 0), 1000 + class);
            want.push(key);
            if i % 7 == 0 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                let stray = (x >> 40) % 4000;
                w.push(Entry::new(stray, i, 1), 1000 + class);
                want.push(stray);
            }
        }
        want.sort_unstable();
        assert_eq!(w.len(), want.len());
        assert_eq!(w.peek().map(|e| e.key), Some(want[0]));
        if want[0] > 0 {
            assert!(w.pop_due(want[0] - 1).is_none());
        }
        let got: Vec<u64> = std::iter::from_fn(|| w.pop().map(|e| e.key)).collect();
        assert_eq!(got, want);
    }
}
