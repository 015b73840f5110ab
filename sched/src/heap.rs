//! A 4-ary min-heap of `(key, slot, seq)` entries with lazy deletion.
//!
//! Four children per node halve the depth of a binary heap (10 000 entries: 7 levels instead of
//! 14) and the four children of a node are 64 contiguous bytes, one cache line when aligned.
//! Entries are never removed from the middle: a flow that leaves a heap bumps its sequence
//! number, which turns its entry stale; stale entries are dropped when they reach the top, and
//! the owner rebuilds the heap when stale entries outnumber live ones (amortised O(1)). That
//! saves keeping every entry's position in the flow table, which would cost a scattered write
//! on every swap.

/// One heap entry: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Deadline or replenishment time, ns.
    pub key: u64,
    /// Index into the flow table.
    pub slot: u32,
    /// The flow's heap sequence number when this entry was pushed.
    pub seq: u32,
}

const ARITY: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Heap {
    v: Vec<Entry>,
    /// Entries known to be stale (the owner counts them as it invalidates them).
    pub stale: usize,
}

impl Heap {
    pub fn len(&self) -> usize {
        self.v.len()
    }

    #[inline]
    pub fn peek(&self) -> Option<Entry> {
        self.v.first().copied()
    }

    #[inline]
    pub fn push(&mut self, e: Entry) {
        self.v.push(e);
        self.sift_up(self.v.len() - 1);
    }

    /// Removes and returns the smallest entry.
    #[inline]
    pub fn pop(&mut self) -> Option<Entry> {
        let last = self.v.pop()?;
        if self.v.is_empty() {
            return Some(last);
        }
        let top = self.v[0];
        // Move the hole at the root down along the smallest children to a leaf (3 comparisons
        // a level, none against `last`), then let `last` rise from there: it came from the
        // bottom, so it rarely rises far.
        let n = self.v.len();
        let mut hole = 0;
        loop {
            let first = ARITY * hole + 1;
            if first >= n {
                break;
            }
            let end = (first + ARITY).min(n);
            let mut best = first;
            let mut best_key = self.v[first].key;
            for c in first + 1..end {
                let k = self.v[c].key;
                if k < best_key {
                    best = c;
                    best_key = k;
                }
            }
            self.v[hole] = self.v[best];
            hole = best;
        }
        self.v[hole] = last;
        self.sift_up(hole);
        Some(top)
    }

    #[inline]
    fn sift_up(&mut self, mut i: usize) {
        let e = self.v[i];
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.v[parent].key <= e.key {
                break;
            }
            self.v[i] = self.v[parent];
            i = parent;
        }
        self.v[i] = e;
    }

    /// Keeps only the entries for which `live` holds, then restores the heap order in O(n).
    pub fn retain_and_rebuild(&mut self, mut live: impl FnMut(&Entry) -> bool) {
        self.v.retain(|e| live(e));
        self.stale = 0;
        let n = self.v.len();
        if n < 2 {
            return;
        }
        for i in (0..=(n - 2) / ARITY).rev() {
            self.sift_down(i);
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.v.len();
        let e = self.v[i];
        loop {
            let first = ARITY * i + 1;
            if first >= n {
                break;
            }
            let end = (first + ARITY).min(n);
            let mut best = first;
            for c in first + 1..end {
                if self.v[c].key < self.v[best].key {
                    best = c;
                }
            }
            if self.v[best].key >= e.key {
                break;
            }
            self.v[i] = self.v[best];
            i = best;
        }
        self.v[i] = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order() {
        let mut h = Heap::default();
        let mut x: u64 = 12345;
        let mut keys = Vec::new();
        for i in 0..1000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = x >> 40;
            keys.push(key);
            h.push(Entry {
                key,
                slot: i,
                seq: 0,
            });
        }
        keys.sort_unstable();
        let popped: Vec<u64> = std::iter::from_fn(|| h.pop().map(|e| e.key)).collect();
        assert_eq!(popped, keys);
    }

    #[test]
    fn rebuild_drops_and_orders() {
        let mut h = Heap::default();
        for i in 0..100u32 {
            h.push(Entry {
                key: u64::from((i * 37) % 100),
                slot: i,
                seq: 0,
            });
        }
        h.retain_and_rebuild(|e| e.slot % 3 != 0);
        let mut last = 0;
        let mut n = 0;
        while let Some(e) = h.pop() {
            assert!(e.key >= last && e.slot % 3 != 0);
            last = e.key;
            n += 1;
        }
        assert_eq!(n, 66);
    }
}
