//! A 4-ary min-heap of `(key, slot, seq)` entries with lazy deletion.
//!
//! Four children per node halve the depth of a binary heap (10 000 entries: 7 levels instead of
//! 14) and the four children of a node are 64 contiguous bytes, one cache line when aligned.
//! Entries are never removed from the middle: a flow that leaves a heap bumps its sequence
//! number, which turns its entry stale; stale entries are dropped when they reach the top, and
//! the owner rebuilds the heap when stale entries outnumber live ones (amortised O(1)). That
//! saves keeping every entry's position in the flow table, which would cost a scattered write
//! on every swap.

/// One heap entry: 16 bytes, written and read as two 8-byte words (the slot and sequence
/// number share one, so that reading an entry soon after writing it is forwarded from the
/// store buffer instead of stalling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Deadline or replenishment time, ns.
    pub key: u64,
    /// `slot | seq << 32`.
    tag: u64,
}

impl Entry {
    #[inline]
    pub fn new(key: u64, slot: u32, seq: u32) -> Self {
        Self {
            key,
            tag: u64::from(slot) | (u64::from(seq) << 32),
        }
    }

    /// Index into the flow table.
    #[inline]
    pub fn slot(&self) -> u32 {
        self.tag as u32
    }

    /// The flow's heap sequence number when this entry was pushed.
    #[inline]
    pub fn seq(&self) -> u32 {
        (self.tag >> 32) as u32
    }
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
        let i = self.v.len();
        self.v.push(e);
        self.sift_up(i, e);
    }

    /// Removes and returns the smallest entry.
    #[inline]
    pub fn pop(&mut self) -> Option<Entry> {
        let last = self.v.pop()?;
        if self.v.is_empty() {
            return Some(last);
        }
        let top = self.v[0];
        // Classic sift-down with an early stop: flows that share a deadline (the same period,
        // started together) are common, and then the moved entry stops at once.
        self.sift_down(0, last);
        Some(top)
    }

    /// Moves `e`, whose slot is `i`, up to its place. `e` is passed by value, not read back
    /// from the slot just written (a load that spans two narrower stores cannot be forwarded
    /// from the store buffer and stalls).
    #[inline]
    fn sift_up(&mut self, mut i: usize, e: Entry) {
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
            let e = self.v[i];
            self.sift_down(i, e);
        }
    }

    /// Index of the smallest of the four children starting at `first` (all present), without
    /// a branch: keys in a heap are in no predictable order, so a compare-and-jump would
    /// mispredict about every other time, on every level.
    #[inline(always)]
    fn min_of_four(v: &[Entry], first: usize) -> (usize, u64) {
        let c = &v[first..first + 4];
        let (k0, k1, k2, k3) = (c[0].key, c[1].key, c[2].key, c[3].key);
        let i01 = usize::from(k1 < k0);
        let k01 = k0.min(k1);
        let i23 = 2 + usize::from(k3 < k2);
        let k23 = k2.min(k3);
        let right = usize::from(k23 < k01);
        // right ? i23 : i01, as arithmetic.
        let i = i01 ^ ((i01 ^ i23) & right.wrapping_neg());
        (first + i, k01.min(k23))
    }

    /// Moves `e` down from slot `i` to its place (the slot's old content is overwritten).
    #[inline]
    fn sift_down(&mut self, mut i: usize, e: Entry) {
        let n = self.v.len();
        loop {
            let first = ARITY * i + 1;
            let (best, best_key) = if first + ARITY <= n {
                Self::min_of_four(&self.v, first)
            } else if first < n {
                let mut best = first;
                for c in first + 1..n {
                    if self.v[c].key < self.v[best].key {
                        best = c;
                    }
                }
                (best, self.v[best].key)
            } else {
                break;
            };
            if best_key >= e.key {
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
            h.push(Entry::new(key, i, 0));
        }
        keys.sort_unstable();
        let popped: Vec<u64> = std::iter::from_fn(|| h.pop().map(|e| e.key)).collect();
        assert_eq!(popped, keys);
    }

    #[test]
    fn rebuild_drops_and_orders() {
        let mut h = Heap::default();
        for i in 0..100u32 {
            h.push(Entry::new(u64::from((i * 37) % 100), i, 7));
        }
        h.retain_and_rebuild(|e| e.slot() % 3 != 0);
        let mut last = 0;
        let mut n = 0;
        while let Some(e) = h.pop() {
            assert!(e.key >= last && e.slot() % 3 != 0 && e.seq() == 7);
            last = e.key;
            n += 1;
        }
        assert_eq!(n, 66);
    }
}
