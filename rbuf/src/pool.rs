//! The master's buffer allocator: the data area cut into equal buffers spaced
//! [`ChannelSpec::buffer_bytes`](crate::ChannelSpec::buffer_bytes) apart (cache-line aligned),
//! each usable for `max_packet_bytes` (so that every buffer handed out is an iorec the peer will
//! accept), a free stack, and each buffer's owner. The master uses it to check what the peer hands
//! back, too.

use crate::error::{Error, IoRecError, Result};
use crate::iorec::{Extent, IoRec};

/// No buffer: an unused entry of a record's buffer list (see [`Pool::hand_out`]).
pub(crate) const NO_BUF: u32 = u32::MAX;

// A buffer's state: below HELD, where it was last put on the free stack (free if it is still
// there, else held: see `Pool`).
/// The master holds it (TX: being filled; RX: being read), marked so (an RMM reclaim).
const HELD: u32 = u32::MAX - 1;
/// The peer has it (TX: in flight; RX: posted empty).
const OUT: u32 = u32::MAX;

/// A buffer put on the free stack has as its state its position there, `p`; it is free while it
/// is still there, and held otherwise: an allocation only takes buffers off the stack, with no
/// store per buffer (the allocation's stores waited in the store buffer behind the previous
/// push's slot stores, which miss). It is there iff `p < free_len` and `free[p] == b`: every
/// entry below `free_len` was written by a push since `free_len` last fell below it, and only a
/// buffer that is not free (held or out, checked) is ever pushed.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Distance between buffer starts.
    buf_bytes: u32,
    /// Usable bytes of each buffer (≤ `buf_bytes`).
    buf_len: u32,
    /// `log2(buf_bytes)` when it is a power of two: a shift instead of a division per extent.
    shift: Option<u32>,
    state: Box<[u32]>,
    /// Free buffers, a stack: `free[..free_len]`, room for every buffer (a buffer is on it at
    /// most once: only a buffer held or out is put there).
    free: Box<[u32]>,
    free_len: usize,
}

impl Pool {
    pub(crate) fn new(data_bytes: u64, buf_bytes: u32, buf_len: u32) -> Self {
        let n = (data_bytes / u64::from(buf_bytes.max(1))) as u32;
        // Lowest offsets on top of the stack, so a fresh channel fills the area from its start.
        Pool {
            buf_bytes,
            buf_len: buf_len.min(buf_bytes),
            shift: buf_bytes
                .is_power_of_two()
                .then(|| buf_bytes.trailing_zeros()),
            // Buffer b at position n - 1 - b, as `free`.
            state: (0..n).rev().collect(),
            free: (0..n).rev().collect(),
            free_len: n as usize,
        }
    }

    /// Usable bytes of one buffer.
    pub(crate) fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Distance between buffer starts.
    pub(crate) fn buf_bytes(&self) -> u32 {
        self.buf_bytes
    }

    pub(crate) fn buffers(&self) -> usize {
        self.state.len()
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free_len
    }

    /// Puts `b` (held or out) on the free stack: it is free.
    #[inline(always)]
    fn push_free(&mut self, b: u32) {
        // Always room (see `free`); `get_mut` only keeps a broken invariant from panicking.
        if let (Some(f), Some(s)) = (
            self.free.get_mut(self.free_len),
            self.state.get_mut(b as usize),
        ) {
            *f = b;
            *s = self.free_len as u32;
            self.free_len += 1;
        }
    }

    /// Whether buffer `b` is held (see [`Pool`]).
    #[inline(always)]
    fn held(&self, b: usize) -> bool {
        held(&self.state, &self.free[..self.free_len], b)
    }

    /// Takes a free buffer: it is now held (off the stack). Returns the whole buffer's extent.
    #[inline(always)]
    pub(crate) fn alloc(&mut self) -> Option<Extent> {
        self.free_len = self.free_len.checked_sub(1)?;
        let b = self.free[self.free_len];
        Some(self.extent(b))
    }

    /// Takes up to `out.len()` free buffers at once (all held: off the stack), each as an extent
    /// of `len` bytes (≤ `buf_len`, checked by the caller) at its start; returns how many.
    #[inline(always)]
    pub(crate) fn alloc_batch(&mut self, len: u32, out: &mut [Extent]) -> usize {
        let k = out.len().min(self.free_len);
        let rest = self.free_len - k;
        // Popped in stack order (the top first), like `alloc`.
        for (o, &b) in out
            .iter_mut()
            .zip(self.free[rest..self.free_len].iter().rev())
        {
            // One 8-byte store (two 4-byte ones wait in the store buffer behind the last push's
            // slot stores, which miss), and none for the buffer's state.
            o.store_word(u64::from(b * self.buf_bytes) | u64::from(len) << 32);
        }
        self.free_len = rest;
        k
    }

    fn extent(&self, b: u32) -> Extent {
        Extent::new(b * self.buf_bytes, self.buf_len)
    }

    /// The buffer `e` lies in, if it lies entirely inside one (wide arithmetic: no overflow).
    #[inline(always)]
    fn buffer_of(&self, e: &Extent) -> Option<u32> {
        let b = match self.shift {
            Some(s) => e.offset >> s,
            None => e.offset / self.buf_bytes,
        };
        let buf_end = u64::from(b) * u64::from(self.buf_bytes) + u64::from(self.buf_len);
        let end = u64::from(e.offset) + u64::from(e.len);
        ((b as usize) < self.state.len() && end <= buf_end).then_some(b)
    }

    /// The buffer of a one-extent `rec` if it is in state `want` (OUT) or held (`want` HELD),
    /// the common case, without the general path's loop and duplicate check.
    #[inline(always)]
    fn single_in(&self, rec: &IoRec, want: u32) -> Option<usize> {
        let b = self.buffer_of(&rec.extents[0])? as usize;
        self.is(b, want).then_some(b)
    }

    /// Whether buffer `b` is out (`want` OUT) or held (`want` HELD).
    #[inline(always)]
    fn is(&self, b: usize, want: u32) -> bool {
        if want == HELD {
            self.held(b)
        } else {
            self.state.get(b) == Some(&want)
        }
    }

    /// The distinct buffers of `rec`, each of which must be in `want` (as for `single_in`); else
    /// the first bad extent.
    #[inline(always)]
    fn buffers_in(&self, rec: &IoRec, want: u32) -> std::result::Result<[u32; 3], usize> {
        let mut bufs = [u32::MAX; 3];
        for (i, e) in rec.extents().iter().enumerate() {
            match self.buffer_of(e) {
                Some(b) if self.is(b as usize, want) && !bufs[..i].contains(&b) => bufs[i] = b,
                _ => return Err(i),
            }
        }
        Ok(bufs)
    }

    #[inline(always)]
    fn set(&mut self, bufs: [u32; 3], n: usize, to: u32) {
        for &b in &bufs[..n] {
            self.state[b as usize] = to;
        }
    }

    /// HELD → OUT for every buffer of `rec` (caller's iorec; distinct buffers required). Returns
    /// the buffers, in extent order, [`NO_BUF`] after the last.
    #[inline(always)]
    pub(crate) fn hand_out(&mut self, rec: &IoRec) -> Result<[u32; 3]> {
        if rec.count == 1 {
            if let Some(b) = self.single_in(rec, HELD) {
                self.state[b] = OUT;
                return Ok([b as u32, NO_BUF, NO_BUF]);
            }
        }
        if rec.count == 0 || usize::from(rec.count) > crate::MAX_EXTENTS {
            return Err(IoRecError::BadCount { count: rec.count }.into());
        }
        let bufs = self.buffers_in(rec, HELD).map_err(|i| Error::NotHeld {
            offset: rec.extents[i].offset,
            len: rec.extents[i].len,
        })?;
        self.set(bufs, rec.extents().len(), OUT);
        Ok(bufs)
    }

    /// HELD → OUT for the buffers of one-extent iorecs (the caller's), in order, each noted in
    /// `shadow[(start + k) % shadow.len()]`, stopping at the first extent that is not inside a
    /// held buffer; returns how many it handed out. The pool's fields are copied into locals
    /// first (the compiler reloaded them around every state store). `shadow`'s length must be a
    /// power of two.
    #[inline(always)]
    pub(crate) fn hand_out_extents(
        &mut self,
        extents: &[Extent],
        shadow: &mut [u32],
        start: usize,
    ) -> usize {
        let (buf_bytes, buf_len) = (self.buf_bytes, u64::from(self.buf_len));
        let (state, free) = (&mut self.state[..], &self.free[..self.free_len]);
        let mask = shadow.len().wrapping_sub(1);
        // Buffer index and offset in the buffer: a shift and a mask for the usual power-of-two
        // spacing.
        let mut run = |split: &dyn Fn(u32) -> (u32, u32)| {
            let mut k = 0;
            for e in extents {
                let (b, within) = split(e.offset);
                // Inside the buffer (64-bit: no overflow), and held.
                if u64::from(within) + u64::from(e.len) > buf_len {
                    break;
                }
                if !held(state, free, b as usize) {
                    break;
                }
                state[b as usize] = OUT;
                if let Some(sh) = shadow.get_mut(start.wrapping_add(k) & mask) {
                    *sh = b;
                }
                k += 1;
            }
            k
        };
        match self.shift {
            Some(sh) => run(&|off| (off >> sh, off & (buf_bytes - 1))),
            None => run(&|off| (off / buf_bytes, off % buf_bytes)),
        }
    }

    /// OUT → HELD for every buffer of `rec` (peer's iorec; all or nothing).
    #[inline(always)]
    pub(crate) fn take_back(&mut self, rec: &IoRec) -> std::result::Result<(), IoRecError> {
        if rec.count == 1 {
            if let Some(b) = self.single_in(rec, OUT) {
                self.state[b] = HELD;
                return Ok(());
            }
        }
        if rec.count == 0 || usize::from(rec.count) > crate::MAX_EXTENTS {
            return Err(IoRecError::BadCount { count: rec.count });
        }
        let bufs = self
            .buffers_in(rec, OUT)
            .map_err(|i| IoRecError::NotOwned {
                index: i,
                offset: rec.extents[i].offset,
                len: rec.extents[i].len,
            })?;
        self.set(bufs, rec.extents().len(), HELD);
        Ok(())
    }

    /// OUT → FREE for every buffer of `rec` (peer's iorec; all or nothing): a TMM reclaim.
    #[inline(always)]
    pub(crate) fn take_back_free(&mut self, rec: &IoRec) -> std::result::Result<(), IoRecError> {
        if rec.count == 1 {
            if let Some(b) = self.single_in(rec, OUT) {
                self.push_free(b as u32);
                return Ok(());
            }
        }
        if rec.count == 0 || usize::from(rec.count) > crate::MAX_EXTENTS {
            return Err(IoRecError::BadCount { count: rec.count });
        }
        let bufs = self
            .buffers_in(rec, OUT)
            .map_err(|i| IoRecError::NotOwned {
                index: i,
                offset: rec.extents[i].offset,
                len: rec.extents[i].len,
            })?;
        for &b in &bufs[..rec.extents().len()] {
            self.push_free(b);
        }
        Ok(())
    }

    /// OUT → FREE for the buffers `ring[(start + k) % ring.len()]`, `k = 0, 1, …` up to `n` (the
    /// master's shadow of what it pushed, by push number: a TMM run), stopping at the first
    /// entry that is not an out buffer's index; returns how many it freed (`n` if all). One plain
    /// loop with everything in registers (an iterator and callbacks kept the free stack's length
    /// on the stack). `ring`'s length must be a power of two.
    #[inline(always)]
    pub(crate) fn free_out_run(&mut self, ring: &[u32], start: usize, n: usize) -> usize {
        let mask = ring.len().wrapping_sub(1);
        let (state, free) = (&mut self.state[..], &mut self.free[..]);
        let mut len = self.free_len;
        let mut k = 0;
        while k < n {
            let b = ring[start.wrapping_add(k) & mask];
            match state.get_mut(b as usize) {
                Some(s) if *s == OUT => *s = len as u32,
                _ => break,
            }
            // Always room (see `free`).
            if let Some(f) = free.get_mut(len) {
                *f = b;
                len += 1;
            }
            k += 1;
        }
        self.free_len = len;
        k
    }

    /// OUT → FREE for the buffers of one iorec known by index ([`NO_BUF`] after the last; the
    /// master's shadow of an iorec of several buffers), all or nothing; else the first that is
    /// not out.
    pub(crate) fn free_out_all(&mut self, bufs: [u32; 3]) -> std::result::Result<(), IoRecError> {
        let n = bufs.iter().position(|&b| b == NO_BUF).unwrap_or(bufs.len());
        for (index, &b) in bufs[..n].iter().enumerate() {
            if self.state.get(b as usize) != Some(&OUT) || bufs[..index].contains(&b) {
                return Err(IoRecError::NotOwned {
                    index,
                    offset: b.wrapping_mul(self.buf_bytes),
                    len: self.buf_len,
                });
            }
        }
        for &b in &bufs[..n] {
            self.push_free(b);
        }
        Ok(())
    }

    /// HELD → FREE for every buffer of `rec`.
    #[inline(always)]
    pub(crate) fn free_rec(&mut self, rec: &IoRec) -> Result<()> {
        let bufs = self.buffers_in(rec, HELD).map_err(|i| Error::NotHeld {
            offset: rec.extents[i].offset,
            len: rec.extents[i].len,
        })?;
        for &b in &bufs[..rec.extents().len()] {
            self.push_free(b);
        }
        Ok(())
    }

    /// Whether `e` lies inside a buffer the master holds.
    #[inline(always)]
    pub(crate) fn is_held(&self, e: &Extent) -> bool {
        self.buffer_of(e).is_some_and(|b| self.held(b as usize))
    }
}

/// Whether buffer `b` is held: marked HELD, or put on the free stack and no longer on its live
/// part `free` (see [`Pool`]).
#[inline(always)]
fn held(state: &[u32], free: &[u32], b: usize) -> bool {
    match state.get(b) {
        // On the live part of the stack, unless that entry is another buffer's now.
        Some(&t) if (t as usize) < free.len() => free[t as usize] != b as u32,
        // Taken off the stack (a position at or above its length), or marked HELD; not OUT.
        Some(&t) => t != OUT,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_foreign_extents() {
        let mut p = Pool::new(4096, 1024, 1024);
        assert_eq!(p.buffers(), 4);
        let a = p.alloc().unwrap();
        assert_eq!(a, Extent::new(0, 1024));
        let rec = IoRec::single(Extent::new(10, 100), 0);
        p.hand_out(&rec).unwrap();
        assert!(p.hand_out(&rec).is_err(), "already out");
        // Peer hands back an extent straddling two buffers, or an unknown one.
        assert!(p
            .take_back(&IoRec::single(Extent::new(1000, 100), 0))
            .is_err());
        assert!(p
            .take_back(&IoRec::single(Extent::new(0xFFFF_FFFE, 4), 0))
            .is_err());
        // Same buffer twice in one iorec.
        let dup = IoRec::from_extents(&[Extent::new(0, 1), Extent::new(5, 1)], 0).unwrap();
        assert!(p.take_back(&dup).is_err());
        p.take_back(&rec).unwrap();
        assert!(p.take_back(&rec).is_err(), "returned twice");
        p.free_rec(&rec).unwrap();
        assert_eq!(p.free_count(), 4);
    }

    #[test]
    fn held_is_off_the_stack() {
        let mut p = Pool::new(4096, 1024, 1024);
        let held = |p: &Pool, e: Extent| p.is_held(&e);
        let a = p.alloc().unwrap();
        let c = p.alloc().unwrap();
        assert!(held(&p, a) && held(&p, c));
        assert!(!held(&p, Extent::new(2048, 1)) && !held(&p, Extent::new(3072, 1)));
        // `a` goes back where `c` was taken from: `c`'s old stack entry is overwritten.
        p.free_rec(&IoRec::single(a, 0)).unwrap();
        assert!(!held(&p, a) && held(&p, c));
        assert!(p.hand_out(&IoRec::single(a, 0)).is_err(), "free, not held");
        p.hand_out(&IoRec::single(c, 0)).unwrap();
        assert!(!held(&p, c));
        assert!(p.hand_out(&IoRec::single(c, 0)).is_err(), "out");
        assert_eq!(p.alloc(), Some(a));
        assert!(held(&p, a));
    }

    proptest::proptest! {
        /// Random allocations (one or a batch), frees, pushes (`hand_out` and
        /// `hand_out_extents`), returns (to the stack or held) and runs on 8 buffers, against a
        /// model of each buffer's owner: every operation is accepted exactly when the model
        /// allows it, and `is_held` agrees with the model after each.
        #[test]
        fn ownership_matches_a_model(
            ops in proptest::collection::vec((0u8..7, 0u32..8, 1usize..4), 1..300),
        ) {
            #[derive(Clone, Copy, PartialEq, Debug)]
            enum Own { Free, Held, Out }
            let mut p = Pool::new(8 * 64, 64, 64);
            let mut model = [Own::Free; 8];
            let mut shadow = [0u32; 8];
            let mut pushed = 0usize;
            let rec = |b: u32| IoRec::single(Extent::new(b * 64, 8), 0);
            for (op, b, n) in ops {
                match op {
                    0 => {
                        let got = p.alloc().map(|e| e.offset / 64);
                        let free = model.iter().filter(|&&o| o == Own::Free).count();
                        proptest::prop_assert_eq!(got.is_some(), free > 0);
                        if let Some(g) = got {
                            proptest::prop_assert_eq!(model[g as usize], Own::Free);
                            model[g as usize] = Own::Held;
                        }
                    }
                    1 => {
                        let mut out = [Extent::default(); 3];
                        let k = p.alloc_batch(8, &mut out[..n]);
                        let free = model.iter().filter(|&&o| o == Own::Free).count();
                        proptest::prop_assert_eq!(k, n.min(free));
                        for e in &out[..k] {
                            let g = (e.offset / 64) as usize;
                            proptest::prop_assert_eq!(model[g], Own::Free);
                            model[g] = Own::Held;
                        }
                    }
                    2 => {
                        let ok = p.free_rec(&rec(b)).is_ok();
                        proptest::prop_assert_eq!(ok, model[b as usize] == Own::Held);
                        if ok {
                            model[b as usize] = Own::Free;
                        }
                    }
                    3 => {
                        let ok = p.hand_out(&rec(b)).is_ok();
                        proptest::prop_assert_eq!(ok, model[b as usize] == Own::Held);
                        if ok {
                            model[b as usize] = Own::Out;
                        }
                    }
                    4 => {
                        let k = p.hand_out_extents(&[rec(b).extents[0]], &mut shadow, pushed);
                        proptest::prop_assert_eq!(k == 1, model[b as usize] == Own::Held);
                        if k == 1 {
                            model[b as usize] = Own::Out;
                            pushed += 1;
                        }
                    }
                    5 => {
                        let ok = p.take_back_free(&rec(b)).is_ok();
                        proptest::prop_assert_eq!(ok, model[b as usize] == Own::Out);
                        if ok {
                            model[b as usize] = Own::Free;
                        }
                    }
                    _ => {
                        // A run over the last pushes (some may have come back already): frees
                        // the leading ones that are out.
                        let m = n.min(pushed).min(shadow.len());
                        let start = pushed - m;
                        let freed = p.free_out_run(&shadow, start, m);
                        let mut want = 0;
                        for k in 0..m {
                            let g = shadow[(start + k) % shadow.len()] as usize;
                            if model[g] != Own::Out {
                                break;
                            }
                            model[g] = Own::Free;
                            want += 1;
                        }
                        proptest::prop_assert_eq!(freed, want);
                    }
                }
                for (g, &o) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(
                        p.is_held(&Extent::new(g as u32 * 64, 8)),
                        o == Own::Held,
                        "buffer {}", g
                    );
                }
                let free = model.iter().filter(|&&o| o == Own::Free).count();
                proptest::prop_assert_eq!(p.free_count(), free);
            }
        }
    }
}
