//! Transmit master mode: the producer (the application) chooses the buffers. App → driver.
//!
//! ```text
//! Producer (app, master)                         Consumer (driver, slave)
//!   alloc → fill → push ──── full FIFO ────►  pop → validate → copy_out
//!   reclaim ◄────────────── empty FIFO ◄───  release
//! ```
//!
//! The consumer hands back iorecs it releases in the order it popped them (the usual case) as
//! one *run* record per stretch of consecutive push numbers ([`crate::iorec::run_words`]); the
//! producer frees their buffers from its private shadow of what it pushed, without reading
//! them back from shared memory. Out-of-order releases go back one record per iorec, as before.

use std::time::Duration;

use crate::channel::{can_consume, consumable, ChannelFds, Core, FdSource, Side};
use crate::error::{Error, IoRecError, Result};
use crate::event::Waker;
use crate::iorec::{is_run, run_words, slots_of_header, Extent, IoRec, Limits, RUN_WINDOW};
use crate::pool::{Pool, NO_BUF};
use crate::ring::{distance, ConsCursor, ProdCursor, Record};
use crate::spec::ChannelSpec;

/// The application's end of a transmit channel: owns the buffer allocator, pushes iorecs on the
/// full FIFO and reclaims buffers the driver returns on the empty FIFO.
#[derive(Debug)]
pub struct Producer {
    core: Core,
    waker: Waker,
    full: ProdCursor,
    empty: ConsCursor,
    pool: Pool,
    shadow: Shadow,
    /// Iorecs pushed since the last reclaim: reclaiming every quarter ring keeps the empty FIFO
    /// from filling up, which would stop the consumer (it pops only with room to hand back).
    since_reclaim: u32,
    /// Pushes that found the full FIFO short of room (see `push_each`).
    full_tries: u32,
}

/// Set in [`Shadow::first`] when [`Shadow::more`] holds the iorec's other buffers.
const MORE: u32 = 1 << 31;

/// The producer's private record of the buffers of the iorecs it pushed, by push number (its
/// count of iorecs pushed, from 0, wrapping), for the last [`RUN_WINDOW`] × slots pushes (the
/// consumer sends older ones one record each). Never shared, so a run record costs the producer
/// no shared read per iorec.
#[derive(Debug)]
struct Shadow {
    /// First buffer of each iorec (buffer indices are below 2^24), [`MORE`] set for two or three.
    first: Box<[u32]>,
    /// Second and third buffers ([`NO_BUF`] for none) of iorecs with [`MORE`].
    more: Box<[[u32; 2]]>,
    /// Iorecs pushed so far; its low 32 bits are the next iorec's push number.
    pushed: u64,
}

impl Shadow {
    fn new(slots: u32) -> Self {
        let len = (RUN_WINDOW * slots) as usize;
        Shadow {
            first: vec![0; len].into_boxed_slice(),
            more: vec![[NO_BUF; 2]; len].into_boxed_slice(),
            pushed: 0,
        }
    }

    #[inline(always)]
    fn at(&self, seq: u32) -> usize {
        // The length is a power of two (RUN_WINDOW times the FIFO's slots, both powers of two).
        seq as usize & (self.first.len() - 1)
    }

    /// Notes the buffers ([`crate::pool::Pool::hand_out`]'s) of the next iorec pushed.
    #[inline(always)]
    fn record(&mut self, bufs: [u32; 3]) {
        let i = self.at(self.pushed as u32);
        if bufs[1] == NO_BUF {
            self.first[i] = bufs[0];
        } else {
            self.first[i] = bufs[0] | MORE;
            self.more[i] = [bufs[1], bufs[2]];
        }
        self.pushed += 1;
    }

    /// Frees the buffers of the run `first..first + n` (a peer's record): each iorec whose
    /// buffers are all out; the others and a run that names iorecs not pushed within the last
    /// `len` pushes are counted as invalid. Returns how many iorecs came back.
    #[inline(always)]
    fn take_back(&self, core: &mut Core, pool: &mut Pool, first: u32, n: u32) -> usize {
        // How long ago `first` was pushed, if at all, and remembered.
        let back = distance(first, self.pushed as u32);
        if n == 0 || n > back || u64::from(back) > self.pushed.min(self.first.len() as u64) {
            core.invalid(IoRecError::BadRun { first, n });
            return 0;
        }
        // At most `len` ≤ 2^18 iorecs (checked above). One-buffer iorecs in one tight loop; an
        // entry with MORE is no buffer index (≥ 2^31), so that loop stops there and leaves it,
        // or a buffer that is not out, to the code below, then goes on after it.
        let (n, mut k, mut ok) = (n as usize, 0usize, 0usize);
        loop {
            let freed = pool.free_out_run(&self.first, (first as usize).wrapping_add(k), n - k);
            (k, ok) = (k + freed, ok + freed);
            if k == n {
                return ok;
            }
            let i = self.at(first.wrapping_add(k as u32));
            let b = self.first[i];
            let taken = if b & MORE == 0 {
                Err(IoRecError::NotOwned {
                    index: 0,
                    offset: b.wrapping_mul(pool.buf_bytes()),
                    len: pool.buf_len(),
                })
            } else {
                let [b1, b2] = self.more[i];
                pool.free_out_all([b & !MORE, b1, b2])
            };
            match taken {
                Ok(()) => ok += 1,
                Err(e) => {
                    core.invalid(e);
                }
            }
            k += 1;
        }
    }
}

impl Producer {
    /// Attaches from the channel's fds (data fd read-write) and the trusted spec,
    /// checking every fd exactly ([`FdSource::Any`]).
    pub fn attach(spec: &ChannelSpec, fds: ChannelFds) -> Result<Self> {
        Self::attach_from(spec, fds, FdSource::Any)
    }

    /// [`attach`](Self::attach), checking the fds as fits where they came from.
    pub fn attach_from(spec: &ChannelSpec, fds: ChannelFds, source: FdSource) -> Result<Self> {
        let (core, waker) = Core::attach(spec, fds, Side::Producer, true, source)?;
        Ok(Producer {
            full: ProdCursor::new(core.full, 0),
            empty: ConsCursor::new(core.empty, 0),
            pool: Pool::new(spec.data_bytes, spec.buffer_bytes(), spec.max_packet_bytes),
            shadow: Shadow::new(spec.slots),
            since_reclaim: 0,
            full_tries: 0,
            core,
            waker,
        })
    }

    /// Takes a free buffer for `len` bytes (reclaiming returned ones first if none is free).
    /// `Ok(None)`: every buffer is in flight. The extent covers `len` bytes at the buffer's start.
    #[inline]
    pub fn alloc(&mut self, len: usize) -> Result<Option<Extent>> {
        self.core.check()?;
        let max = self.pool.buf_len() as usize;
        if len > max {
            return Err(Error::TooLarge {
                requested: len,
                max,
            });
        }
        if self.pool.free_count() == 0 {
            self.reclaim()?;
        }
        Ok(self.pool.alloc().map(|e| Extent::new(e.offset, len as u32)))
    }

    /// Takes up to `out.len()` free buffers for `len` bytes each, at once (reclaiming returned
    /// ones first if fewer are free); returns how many it stored at the front of `out` (0: every
    /// buffer is in flight). Each extent covers `len` bytes at its buffer's start.
    #[inline]
    pub fn alloc_batch(&mut self, len: usize, out: &mut [Extent]) -> Result<usize> {
        self.core.check()?;
        let max = self.pool.buf_len() as usize;
        if len > max {
            return Err(Error::TooLarge {
                requested: len,
                max,
            });
        }
        if self.pool.free_count() < out.len() {
            self.reclaim()?;
        }
        Ok(self.pool.alloc_batch(len as u32, out))
    }

    /// The writable bytes of `extent`, which must lie in a buffer this producer holds (allocated,
    /// not yet pushed).
    #[inline]
    pub fn buf_mut(&mut self, extent: Extent) -> Result<&mut [u8]> {
        if !self.pool.is_held(&extent) {
            return Err(Error::NotHeld {
                offset: extent.offset,
                len: extent.len,
            });
        }
        // SAFETY: `is_held` proved the extent lies inside one buffer of the pool, and the pool
        // only covers the data mapping. The buffer is HELD: the consumer (which only reads the
        // data area) has not been handed it, so nothing else accesses these bytes; `&mut self`
        // keeps `push`/`free` from running while the slice lives; the mapping outlives `self`.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(
                self.core.data.ptr().as_ptr().add(extent.offset as usize),
                extent.len as usize,
            )
        })
    }

    /// Returns an allocated, unpushed buffer to the pool.
    pub fn free(&mut self, extent: Extent) -> Result<()> {
        self.pool.free_rec(&IoRec::single(extent, 0))
    }

    /// Pushes one iorec (its extents in distinct buffers this producer holds). `Err(Full)`: the
    /// full FIFO has no room (back-pressure); try later.
    #[inline]
    pub fn push(&mut self, rec: IoRec) -> Result<()> {
        match self.push_batch(std::slice::from_ref(&rec))? {
            1 => Ok(()),
            _ => Err(Error::Full),
        }
    }

    /// Pushes as many of `recs` as there is room for, in order; returns how many (0 = full).
    /// An iorec naming buffers this producer does not hold stops the batch (an error if first).
    #[inline]
    pub fn push_batch(&mut self, recs: &[IoRec]) -> Result<usize> {
        let slots = recs.iter().fold(0u32, |a, r| a.saturating_add(r.slots()));
        self.push_each(recs, slots, |r| *r)
    }

    /// [`push_batch`](Self::push_batch) of one-extent iorecs, one per extent (each a buffer this
    /// producer holds, as [`alloc_batch`](Self::alloc_batch) gives them, trimmed to the bytes
    /// written), all with `flags`: no [`IoRec`] to build per packet.
    #[inline]
    pub fn push_extents(&mut self, extents: &[Extent], flags: u16) -> Result<usize> {
        self.core.check()?;
        let want = u32::try_from(extents.len()).unwrap_or(u32::MAX);
        let room = self.room_for(want)?;
        let n = extents.len().min(room as usize);
        self.full.prefetch(n as u32);
        // One slot per iorec: ownership first, in a loop of its own (each buffer HELD → OUT and
        // noted in the shadow), then the slot stores back to back (see `push_each`).
        let Producer {
            pool, shadow, full, ..
        } = self;
        let done = pool.hand_out_extents(&extents[..n], &mut shadow.first, shadow.pushed as usize);
        shadow.pushed += done as u64;
        full.write_singles(
            IoRec::single(Extent::default(), flags).header_word(),
            &extents[..done],
        );
        if done < n {
            if done == 0 {
                let e = extents[0];
                return Err(Error::NotHeld {
                    offset: e.offset,
                    len: e.len,
                });
            }
        } else if done < extents.len() {
            self.core.counters.full += 1;
        }
        self.published(done, done as u32)?;
        Ok(done)
    }

    /// Free slots on the full FIFO for a push of `want_slots` (the consumer's index is read again
    /// whenever the cached room is short of them).
    #[inline(always)]
    fn room_for(&mut self, want_slots: u32) -> Result<u32> {
        let mut room = self
            .full
            .room(want_slots)
            .map_err(|e| self.core.index_violation(e))?;
        if room < want_slots {
            // The consumer only pops while it has room to hand buffers back: reclaim first, on
            // one try in 32 (pushes reclaim every quarter ring anyway; reading the consumer's
            // empty FIFO on every try would only take its cache lines away while it catches up).
            self.full_tries = self.full_tries.wrapping_add(1);
            if self.full_tries.is_multiple_of(32) {
                self.reclaim()?;
                room = self
                    .full
                    .refresh()
                    .map_err(|e| self.core.index_violation(e))?;
            }
        }
        Ok(room)
    }

    /// Publishes `done` iorecs written in `used` slots (if any), wakes the consumer and reclaims
    /// every quarter ring.
    #[inline(always)]
    fn published(&mut self, done: usize, used: u32) -> Result<()> {
        if done > 0 {
            self.full.publish(used);
            self.core.counters.iorecs_out += done as u64;
            self.waker.notify_peer();
            self.since_reclaim += used;
            if self.since_reclaim >= self.core.full.size / 4 {
                self.reclaim()?;
            }
        }
        Ok(())
    }

    /// Pushes the iorecs `rec_of` makes of `items`, `want_slots` slots in all (one per
    /// one-extent iorec, two otherwise; see [`push_batch`](Self::push_batch)).
    #[inline(always)]
    fn push_each<T>(
        &mut self,
        items: &[T],
        want_slots: u32,
        rec_of: impl Fn(&T) -> IoRec,
    ) -> Result<usize> {
        self.core.check()?;
        let room = self.room_for(want_slots)?;
        self.full.prefetch(want_slots.min(room));
        let mut used = 0u32;
        let mut done = 0usize;
        let mut err = None;
        // Ownership first (private stores, cache hits), then the slot stores back to back: those
        // miss (the consumer has the lines), and x86 commits stores in order, so bookkeeping
        // stores between them would hold the store buffer and keep their misses from overlapping.
        for item in items {
            let rec = rec_of(item);
            if used + rec.slots() > room {
                break;
            }
            match self.pool.hand_out(&rec) {
                Ok(bufs) => self.shadow.record(bufs),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            used += rec.slots();
            done += 1;
        }
        let mut at = 0;
        for item in &items[..done] {
            at += self.full.write(at, &rec_of(item));
        }
        if done < items.len() && err.is_none() {
            self.core.counters.full += 1;
        }
        self.published(done, used)?;
        match err {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Takes back every buffer the consumer returned on the empty FIFO; returns how many iorecs.
    /// Iorecs naming buffers that are not in flight are counted and discarded. (`alloc`,
    /// `push_batch` on a full FIFO and the waits call it too: the consumer only pops while it has
    /// room to hand buffers back.)
    #[inline]
    pub fn reclaim(&mut self) -> Result<usize> {
        self.since_reclaim = 0;
        reclaim(
            &mut self.core,
            &self.waker,
            &mut self.empty,
            &mut self.pool,
            &self.shadow,
        )
    }

    /// Whether a push could go ahead now: room on the full FIFO and a free or reclaimable buffer.
    pub fn ready(&mut self) -> Result<bool> {
        ready(
            &mut self.core,
            &self.waker,
            &mut self.full,
            &mut self.empty,
            &mut self.pool,
            &self.shadow,
        )
    }

    /// Blocks until [`ready`](Self::ready) or `timeout` (`Err(Timeout)`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let Producer {
            core,
            waker,
            full,
            empty,
            pool,
            shadow,
            ..
        } = self;
        let waker = &*waker;
        waker.wait(timeout, || ready(core, waker, full, empty, pool, shadow))
    }

    /// Buffers in the pool, and of those free now.
    pub fn buffers(&self) -> (usize, usize) {
        (self.pool.buffers(), self.pool.free_count())
    }

    /// Size of each buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.pool.buf_len() as usize
    }
}

fn reclaim(
    core: &mut Core,
    waker: &Waker,
    empty: &mut ConsCursor,
    pool: &mut Pool,
    shadow: &Shadow,
) -> Result<usize> {
    core.check()?;
    let avail = empty.refresh().map_err(|e| core.index_violation(e))?;
    empty.prefetch(avail);
    let mut ok = 0;
    let mut at = 0;
    // Every turn consumes at least one slot: at most `avail` ≤ ring size turns.
    while at < avail {
        let taken = match empty.read(at, avail) {
            Record::Read { rec, slots } => {
                at += slots;
                pool.take_back_free(&rec)
            }
            Record::Truncated { count } => {
                at += 1;
                Err(IoRecError::Truncated { count })
            }
            Record::Run { first, n } => {
                at += 1;
                ok += shadow.take_back(core, pool, first, n);
                continue;
            }
            // Cannot happen with `limit == avail`; stop rather than spin.
            Record::Stop => break,
        };
        match taken {
            Ok(()) => ok += 1,
            Err(e) => {
                core.invalid(e);
            }
        }
    }
    if at > 0 {
        empty.consume(at);
        core.counters.iorecs_in += ok as u64;
        waker.notify_peer();
    }
    Ok(ok)
}

/// Reclaims, then: room on the full FIFO and a free buffer?
fn ready(
    core: &mut Core,
    waker: &Waker,
    full: &mut ProdCursor,
    empty: &mut ConsCursor,
    pool: &mut Pool,
    shadow: &Shadow,
) -> Result<bool> {
    reclaim(core, waker, empty, pool, shadow)?;
    Ok(full.refresh().map_err(|e| core.index_violation(e))? > 0 && pool.free_count() > 0)
}

crate::channel::endpoint_common!(
    Producer,
    "Readable when the consumer made progress (room on the full FIFO, buffers returned)."
);

/// The driver's end of a transmit channel: pops and validates iorecs, copies their bytes out,
/// releases them back. Treats everything in shared memory as hostile; maps the data area
/// read-only.
#[derive(Debug)]
pub struct Consumer {
    core: Core,
    waker: Waker,
    full: ConsCursor,
    empty: ProdCursor,
    /// Iorecs popped and not yet released.
    held: u32,
    /// Slots those take on the empty FIFO: `pop` only runs while the empty FIFO has room for all
    /// of them, so `release` never finds it full.
    held_slots: u32,
    /// Push number of the next record read from the full FIFO (the producer's count, valid or
    /// not), for run records.
    read_seq: u32,
    /// The popped iorecs not yet released, oldest first: a ring of the empty FIFO's size (more
    /// cannot be held) indexed by `log_tail..log_head`, so that `release_batch` recognises an
    /// in-order release and sends runs.
    log: Box<[Popped]>,
    log_tail: u32,
    log_head: u32,
}

/// A popped iorec as the consumer remembers it: its push number and first extent.
#[derive(Debug, Clone, Copy, Default)]
struct Popped {
    seq: u32,
    first: Extent,
}

impl Consumer {
    /// Attaches from the channel's fds (the data fd may be read-only) and the trusted spec,
    /// checking every fd exactly ([`FdSource::Any`]).
    pub fn attach(spec: &ChannelSpec, fds: ChannelFds) -> Result<Self> {
        Self::attach_from(spec, fds, FdSource::Any)
    }

    /// [`attach`](Self::attach), checking the fds as fits where they came from.
    pub fn attach_from(spec: &ChannelSpec, fds: ChannelFds, source: FdSource) -> Result<Self> {
        let (core, waker) = Core::attach(spec, fds, Side::Consumer, false, source)?;
        Ok(Consumer {
            full: ConsCursor::new(core.full, 0),
            empty: ProdCursor::new(core.empty, 0),
            held: 0,
            held_slots: 0,
            read_seq: 0,
            log: vec![Popped::default(); spec.slots as usize].into_boxed_slice(),
            log_tail: 0,
            log_head: 0,
            core,
            waker,
        })
    }

    /// Pops one iorec, validated. `Ok(None)`: nothing there (or no room to release it later).
    /// An invalid iorec is consumed, counted and returned as `Err(InvalidIoRec)`.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<IoRec>> {
        let mut out = [IoRec::default()];
        match self.pop_records(&mut out, true)? {
            0 => Ok(None),
            _ => Ok(Some(out[0])),
        }
    }

    /// Pops up to `out.len()` iorecs; returns how many valid ones it stored at the front of
    /// `out`. Invalid ones are consumed, counted and skipped.
    #[inline]
    pub fn pop_batch(&mut self, out: &mut [IoRec]) -> Result<usize> {
        self.pop_records(out, false)
    }

    /// `pop_batch`; with `one`, an invalid first iorec is returned as its error instead.
    #[inline(always)]
    fn pop_records(&mut self, out: &mut [IoRec], one: bool) -> Result<usize> {
        self.core.check()?;
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let limit = consumable(
            &mut self.core,
            &mut self.full,
            &mut self.empty,
            self.held_slots,
            want,
        )?;
        self.full.prefetch(limit.min(want));
        // One-slot iorecs of one extent that pass validation (every packet today), in a loop of
        // their own with everything in registers; it stops at anything else, which the general
        // loop below takes from there.
        let mut k = self.pop_plain(out, limit);
        let mut at = k as u32;
        let mut slots_kept = at;
        let mut first_err = None;
        // Every turn consumes at least one slot or stops: at most `limit` turns.
        while at < limit && k < out.len() {
            let seq = self.read_seq;
            let first = self.full.first_slot(at);
            let valid = if slots_of_header(first[0]) == 1 && !is_run(first[0]) {
                // One slot (every packet today): the record's other extents are known empty.
                at += 1;
                out[k] = IoRec::from_first_slot(first);
                out[k].validate(&self.core.limits).map(|()| 1)
            } else {
                match self.full.read_from(first, at, limit) {
                    Record::Read { rec, slots } => {
                        at += slots;
                        // Copied straight into the caller's array (a private copy), checked there.
                        out[k] = rec;
                        out[k].validate(&self.core.limits).map(|()| slots)
                    }
                    Record::Truncated { count } => {
                        at += 1;
                        Err(IoRecError::Truncated { count })
                    }
                    // Only this side writes runs (on the empty FIFO).
                    Record::Run { first, n } => {
                        at += 1;
                        Err(IoRecError::BadRun { first, n })
                    }
                    Record::Stop => break,
                }
            };
            self.read_seq = seq.wrapping_add(1);
            match valid {
                Ok(slots) => {
                    self.remember(seq, out[k].extents[0]);
                    k += 1;
                    slots_kept += slots;
                }
                Err(e) => {
                    let e = self.core.invalid(e);
                    if one {
                        first_err = Some(e);
                        break;
                    }
                }
            }
        }
        if at > 0 {
            self.full.consume(at);
            self.held += k as u32;
            self.held_slots += slots_kept;
            self.core.counters.iorecs_in += k as u64;
            self.waker.notify_peer();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(k),
        }
    }

    /// Pops the leading one-slot, one-extent iorecs that are valid (at most `limit` slots and
    /// `out.len()` iorecs) into `out` and the log; returns how many. The first record of any
    /// other kind, or invalid, stops it and is left for the general loop of `pop_records`.
    #[inline(always)]
    fn pop_plain(&mut self, out: &mut [IoRec], limit: u32) -> usize {
        let n = out.len().min(limit as usize);
        let Limits {
            data_bytes,
            max_packet_bytes,
        } = self.core.limits;
        let mask = self.log.len() as u32 - 1;
        let (seq, head) = (self.read_seq, self.log_head);
        let mut k = 0;
        while k < n {
            let w = self.full.first_slot(k as u32);
            let e = Extent::from_word(w[1]);
            // Count 1 and kind 0 in the header; the extent inside the data area (one 64-bit sum:
            // no overflow) and no longer than a packet, as `IoRec::validate` checks it.
            if (w[0] as u32) >> 16 != 1
                || u64::from(e.offset) + u64::from(e.len) > data_bytes
                || e.len > max_packet_bytes
            {
                break;
            }
            out[k] = IoRec::single(e, w[0] as u16);
            let i = k as u32;
            self.log[(head.wrapping_add(i) & mask) as usize] = Popped {
                seq: seq.wrapping_add(i),
                first: e,
            };
            k += 1;
        }
        let i = k as u32;
        self.read_seq = seq.wrapping_add(i);
        self.log_head = head.wrapping_add(i);
        // A full log forgets its oldest entries (see `remember`).
        if distance(self.log_tail, self.log_head) > mask + 1 {
            self.log_tail = self.log_head.wrapping_sub(mask + 1);
        }
        k
    }

    /// Copies the bytes of `rec`'s extents, in order, into `dst`; returns the length. The bytes
    /// are the producer's and may change while we copy: check headers in the copy, not before.
    #[inline]
    pub fn copy_out(&self, rec: &IoRec, dst: &mut [u8]) -> Result<usize> {
        // SAFETY: `dst` is a live exclusive slice of `dst.len()` bytes in private memory, so it is
        // valid for writes and cannot overlap the shared mapping.
        unsafe { self.core.gather(rec, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies one extent (e.g. just the header) into `dst`; returns the length.
    pub fn copy_extent_out(&self, extent: Extent, dst: &mut [u8]) -> Result<usize> {
        self.copy_out(&IoRec::single(extent, 0), dst)
    }

    /// [`copy_out`](Self::copy_out) into raw memory, e.g. straight into an mbuf's data room.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `cap` bytes and must not overlap this channel's data area.
    pub unsafe fn copy_out_raw(&self, rec: &IoRec, dst: *mut u8, cap: usize) -> Result<usize> {
        // SAFETY: the caller's contract is exactly `gather`'s.
        unsafe { self.core.gather(rec, dst, cap) }
    }

    /// Hands one popped iorec back to the producer on the empty FIFO.
    #[inline]
    pub fn release(&mut self, rec: IoRec) -> Result<()> {
        self.release_batch(std::slice::from_ref(&rec))
    }

    /// Hands popped iorecs back (never `Full` while the peer's index is sane: `pop` kept room).
    /// Iorecs released in the order they were popped go back as run records, one per stretch of
    /// consecutive push numbers; any other order, one record per iorec.
    #[inline]
    pub fn release_batch(&mut self, recs: &[IoRec]) -> Result<()> {
        self.core.check()?;
        let n = u32::try_from(recs.len()).unwrap_or(u32::MAX);
        if n > self.held {
            return Err(Error::NotHeld { offset: 0, len: 0 });
        }
        // In pop order (the usual case): runs, at most one slot per iorec, and the iorecs' slots
        // counted on the way.
        let room = self
            .empty
            .room(n)
            .map_err(|e| self.core.index_violation(e))?;
        let (at, slots) = match (room >= n).then(|| self.write_runs(recs)).flatten() {
            Some((at, slots)) if slots <= self.held_slots => {
                self.log_tail = self.log_tail.wrapping_add(n);
                (at, slots)
            }
            _ => {
                let slots = recs.iter().fold(0u32, |a, r| a.saturating_add(r.slots()));
                if slots > self.held_slots {
                    return Err(Error::NotHeld { offset: 0, len: 0 });
                }
                let room = self
                    .empty
                    .room(slots)
                    .map_err(|e| self.core.index_violation(e))?;
                if room < slots {
                    return Err(Error::Full);
                }
                (self.write_each(recs, slots), slots)
            }
        };
        self.empty.publish(at);
        self.held -= n;
        self.held_slots -= slots;
        if self.held == 0 {
            // Whatever the log still has was released under another description: forget it.
            self.log_tail = self.log_head;
        }
        self.core.counters.iorecs_out += u64::from(n);
        self.waker.notify_peer();
        Ok(())
    }

    /// Notes a popped iorec in the log (forgetting the oldest entry if it is full, which only
    /// happens after releases of iorecs that were not popped).
    #[inline(always)]
    fn remember(&mut self, seq: u32, first: Extent) {
        let mask = self.log.len() as u32 - 1;
        self.log[(self.log_head & mask) as usize] = Popped { seq, first };
        self.log_head = self.log_head.wrapping_add(1);
        if distance(self.log_tail, self.log_head) > mask + 1 {
            self.log_tail = self.log_tail.wrapping_add(1);
        }
    }

    /// If `recs` are the oldest popped iorecs not yet released, in order (by first extent),
    /// writes them as run records (the caller checked room for one slot per iorec); returns the
    /// slots written and the slots the iorecs took on the full FIFO. The caller drops them from
    /// the log. `None`: not in order, nothing to publish was written.
    #[inline(always)]
    fn write_runs(&self, recs: &[IoRec]) -> Option<(u32, u32)> {
        let mask = self.log.len() as u32 - 1;
        let tail = self.log_tail;
        if recs.is_empty() || recs.len() > distance(tail, self.log_head) as usize {
            return None;
        }
        let log = &self.log[..];
        let entry = |k: usize| log[(tail.wrapping_add(k as u32) & mask) as usize];
        // Push numbers only grow along the log: its oldest tells whether the producer still
        // remembers them all (see `RUN_WINDOW`).
        let oldest = entry(0).seq;
        if distance(oldest, self.read_seq) > (RUN_WINDOW - 1) * (mask + 1) {
            return None;
        }
        // One run (the usual case): a plain loop of compares, one slot written after it.
        let mut slots = 0u32;
        let mut k = 0;
        while k < recs.len() {
            let (p, rec) = (entry(k), &recs[k]);
            if p.first.word() != rec.extents[0].word() || p.seq != oldest.wrapping_add(k as u32) {
                break;
            }
            slots += rec.slots();
            k += 1;
        }
        if k == recs.len() {
            self.empty.write_words(0, run_words(oldest, k as u32));
            return Some((1, slots));
        }
        // Several runs: gaps in the push numbers (iorecs released out of order before, or
        // rejected at pop).
        let mut at = 0;
        let (mut first, mut run) = (oldest, 0u32);
        for (k, rec) in recs.iter().enumerate() {
            let p = entry(k);
            if p.first != rec.extents[0] {
                // Unpublished slots: the per-iorec path overwrites them.
                return None;
            }
            if p.seq != first.wrapping_add(run) {
                self.empty.write_words(at, run_words(first, run));
                at += 1;
                (first, run) = (p.seq, 0);
            }
            run += 1;
        }
        self.empty.write_words(at, run_words(first, run));
        let slots = recs.iter().fold(0u32, |a, r| a.saturating_add(r.slots()));
        Some((at + 1, slots))
    }

    /// Writes one record per iorec (`slots` in all) and drops them from the log (for each, the
    /// oldest entry with its first extent); returns the slots written.
    #[inline(never)]
    fn write_each(&mut self, recs: &[IoRec], slots: u32) -> u32 {
        self.empty.prefetch(slots);
        let mut at = 0;
        for rec in recs {
            at += self.empty.write(at, rec);
        }
        let mask = self.log.len() as u32 - 1;
        let mut gone: Vec<Extent> = recs.iter().map(|r| r.extents[0]).collect();
        let mut keep = self.log_tail;
        for k in 0..distance(self.log_tail, self.log_head) {
            let p = self.log[(self.log_tail.wrapping_add(k) & mask) as usize];
            match gone.iter().position(|e| *e == p.first) {
                Some(g) => {
                    gone.swap_remove(g);
                }
                None => {
                    self.log[(keep & mask) as usize] = p;
                    keep = keep.wrapping_add(1);
                }
            }
        }
        self.log_head = keep;
        at
    }

    /// Whether `pop` would return something now.
    pub fn ready(&mut self) -> Result<bool> {
        can_consume(
            &mut self.core,
            &mut self.full,
            &mut self.empty,
            self.held_slots,
        )
    }

    /// Blocks until [`ready`](Self::ready) or `timeout` (`Err(Timeout)`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let Consumer {
            core,
            waker,
            full,
            empty,
            held_slots,
            ..
        } = self;
        waker.wait(timeout, || can_consume(core, full, empty, *held_slots))
    }

    /// Iorecs popped and not yet released.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// The data area (read-only mapping) as a raw range, for registering it with DPDK as external
    /// memory. Never dereference it as a Rust reference: the producer writes it at any time.
    pub fn data_area(&self) -> (std::ptr::NonNull<u8>, usize) {
        (self.core.data.ptr(), self.core.data.len())
    }
}

crate::channel::endpoint_common!(Consumer, "Readable when the producer pushed or reclaimed.");
