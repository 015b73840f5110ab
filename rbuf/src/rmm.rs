//! Receive master mode: the consumer (the application) chooses the buffers. Driver → app.
//!
//! ```text
//! Consumer (app, master, data read-only)         Producer (driver, slave)
//!   post_free / repost ───── empty FIFO ────►  take_empty → validate → copy_in
//!   pop → read ◄──────────── full FIFO ◄─────  push_full
//! ```
//! No empty buffer when a frame arrives: the driver drops it and counts, for this flow only.

use std::time::Duration;

use crate::channel::{can_consume, consumable, ChannelFds, Core, FdSource, Side};
use crate::error::{Error, IoRecError, Result};
use crate::event::Waker;
use crate::iorec::IoRec;
use crate::pool::Pool;
use crate::ring::{ConsCursor, ProdCursor, Record};
use crate::spec::ChannelSpec;

/// A received packet: the application holds its buffer until it reposts or releases it.
/// Deliberately not `Clone`: a buffer goes back exactly once.
#[derive(Debug, PartialEq, Eq)]
pub struct RxPacket {
    rec: IoRec,
}

impl RxPacket {
    /// The iorec the driver returned (validated against the buffers this side posted).
    pub fn iorec(&self) -> &IoRec {
        &self.rec
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.rec.total_len() as usize
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flags the driver set.
    pub fn flags(&self) -> u16 {
        self.rec.flags
    }
}

/// The application's end of a receive channel: posts empty buffers, pops filled ones. Its
/// mapping of the data area is read-only.
#[derive(Debug)]
pub struct Consumer {
    core: Core,
    waker: Waker,
    empty: ProdCursor,
    full: ConsCursor,
    pool: Pool,
}

impl Consumer {
    /// Attaches from the channel's fds (a read-only data fd suffices) and the trusted spec,
    /// checking every fd exactly ([`FdSource::Any`]).
    pub fn attach(spec: &ChannelSpec, fds: ChannelFds) -> Result<Self> {
        Self::attach_from(spec, fds, FdSource::Any)
    }

    /// [`attach`](Self::attach), checking the fds as fits where they came from.
    pub fn attach_from(spec: &ChannelSpec, fds: ChannelFds, source: FdSource) -> Result<Self> {
        let (core, waker) = Core::attach(spec, fds, Side::Consumer, false, source)?;
        Ok(Consumer {
            empty: ProdCursor::new(core.empty, 0),
            full: ConsCursor::new(core.full, 0),
            pool: Pool::new(spec.data_bytes, spec.buffer_bytes(), spec.max_packet_bytes),
            core,
            waker,
        })
    }

    /// Posts free buffers on the empty FIFO, as many as fit; returns how many.
    #[inline]
    pub fn post_free(&mut self) -> Result<usize> {
        self.core.check()?;
        let want = u32::try_from(self.pool.free_count()).unwrap_or(u32::MAX);
        if want == 0 {
            return Ok(0);
        }
        let room = self
            .empty
            .room(want)
            .map_err(|e| self.core.index_violation(e))?;
        let n = want.min(room);
        self.empty.prefetch(n);
        for i in 0..n {
            let Some(e) = self.pool.alloc() else { break };
            let rec = IoRec::single(e, 0);
            // Cannot fail: the buffer was just allocated (HELD), and it is one extent.
            let _ = self.pool.hand_out(&rec);
            // One extent: one slot.
            self.empty.write(i, &rec);
        }
        if n > 0 {
            self.empty.publish(n);
            self.core.counters.iorecs_out += u64::from(n);
            self.waker.notify_peer();
        }
        Ok(n as usize)
    }

    /// Pops one filled buffer. `Ok(None)`: nothing there. An iorec that does not name a buffer
    /// this side posted is consumed, counted and returned as `Err(InvalidIoRec)`.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<RxPacket>> {
        self.core.check()?;
        let avail = self
            .full
            .avail(1)
            .map_err(|e| self.core.index_violation(e))?;
        if avail == 0 {
            return Ok(None);
        }
        let (r, slots) = self.read_one(0, avail);
        self.full.consume(slots);
        self.waker.notify_peer();
        r.map(Some)
    }

    /// Reads, checks and takes back the record at slot `at`; returns it and the slots it took.
    #[inline(always)]
    fn read_one(&mut self, at: u32, avail: u32) -> (Result<RxPacket>, u32) {
        match self.full.read(at, avail) {
            Record::Read { rec, slots } => (self.accept(rec), slots),
            Record::Truncated { count } => {
                (Err(self.core.invalid(IoRecError::Truncated { count })), 1)
            }
            // Only a TMM consumer writes runs (on its empty FIFO).
            Record::Run { first, n } => {
                (Err(self.core.invalid(IoRecError::BadRun { first, n })), 1)
            }
            // Unreachable with `limit == avail` (`read` says Truncated first); if it were not,
            // consuming the slot as invalid keeps every turn moving.
            Record::Stop => (
                Err(self.core.invalid(IoRecError::Truncated { count: 2 })),
                1,
            ),
        }
    }

    #[inline(always)]
    fn accept(&mut self, rec: IoRec) -> Result<RxPacket> {
        if let Err(e) = rec.validate(&self.core.limits) {
            return Err(self.core.invalid(e));
        }
        if let Err(e) = self.pool.take_back(&rec) {
            return Err(self.core.invalid(e));
        }
        self.core.counters.iorecs_in += 1;
        Ok(RxPacket { rec })
    }

    /// Pops up to `max` filled buffers into `out`; returns how many. Invalid iorecs are consumed,
    /// counted and skipped.
    #[inline]
    pub fn pop_batch(&mut self, out: &mut Vec<RxPacket>, max: usize) -> Result<usize> {
        self.core.check()?;
        let want = u32::try_from(max).unwrap_or(u32::MAX);
        let avail = self
            .full
            .avail(want)
            .map_err(|e| self.core.index_violation(e))?;
        self.full.prefetch(avail.min(want));
        let mut k = 0;
        let mut at = 0;
        // Every turn consumes at least one slot: at most `avail` turns.
        while at < avail && k < max {
            let (r, slots) = self.read_one(at, avail);
            at += slots;
            if let Ok(p) = r {
                out.push(p);
                k += 1;
            }
        }
        if at > 0 {
            self.full.consume(at);
            self.waker.notify_peer();
        }
        Ok(k)
    }

    /// The packet's bytes (first extent; the driver fills one buffer per frame). Sound because the
    /// buffer is held by this side: the driver writes a buffer only between our post and its
    /// `push_full`, and `repost`/`release` take the packet by value, ending this borrow first.
    #[inline]
    pub fn payload(&self, pkt: &RxPacket) -> &[u8] {
        let e = pkt.rec.extents[0];
        // SAFETY: `accept` proved the extent lies inside one buffer of the pool, inside the data
        // mapping, and moved that buffer to HELD: the trusted driver no longer writes it. The slice
        // borrows `self` (the mapping outlives it) and `pkt`, which must be given up by value to
        // hand the buffer back.
        unsafe {
            std::slice::from_raw_parts(
                self.core.data.ptr().as_ptr().add(e.offset as usize),
                e.len as usize,
            )
        }
    }

    /// Copies the packet's bytes (all extents) into `dst`; returns the length.
    #[inline]
    pub fn copy_out(&self, pkt: &RxPacket, dst: &mut [u8]) -> Result<usize> {
        // SAFETY: `dst` is a live exclusive slice in private memory: valid for writes of its
        // length and not overlapping the mapping.
        unsafe { self.core.gather(&pkt.rec, dst.as_mut_ptr(), dst.len()) }
    }

    /// Gives the packet's buffer back to the driver: frees it and posts free buffers (it stays in
    /// the free pool if the empty FIFO is full).
    #[inline]
    pub fn repost(&mut self, pkt: RxPacket) -> Result<()> {
        self.pool.free_rec(&pkt.rec)?;
        self.post_free().map(|_| ())
    }

    /// Returns the packet's buffer to the free pool (post it later with `post_free`).
    #[inline]
    pub fn release(&mut self, pkt: RxPacket) -> Result<()> {
        self.pool.free_rec(&pkt.rec)
    }

    /// Whether `pop` would return something now.
    pub fn ready(&mut self) -> Result<bool> {
        self.core.check()?;
        Ok(self
            .full
            .avail(1)
            .map_err(|e| self.core.index_violation(e))?
            > 0)
    }

    /// Blocks until [`ready`](Self::ready) or `timeout` (`Err(Timeout)`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let Consumer {
            core, waker, full, ..
        } = self;
        waker.wait(timeout, || {
            core.check()?;
            Ok(full.avail(1).map_err(|e| core.index_violation(e))? > 0)
        })
    }

    /// Buffers in the pool, and of those free (not posted, not held) now.
    pub fn buffers(&self) -> (usize, usize) {
        (self.pool.buffers(), self.pool.free_count())
    }
}

crate::channel::endpoint_common!(Consumer, "Readable when the driver pushed a filled buffer.");

/// The driver's end of a receive channel: takes validated empty buffers, copies frames in and
/// pushes them full. Treats everything in shared memory as hostile.
#[derive(Debug)]
pub struct Producer {
    core: Core,
    waker: Waker,
    empty: ConsCursor,
    full: ProdCursor,
    /// Empty iorecs taken and not yet pushed.
    held: u32,
    /// Slots those take on the full FIFO: `take_empty` only runs while the full FIFO has room
    /// for all of them, so `push_full` never finds it full.
    held_slots: u32,
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
            empty: ConsCursor::new(core.empty, 0),
            full: ProdCursor::new(core.full, 0),
            held: 0,
            held_slots: 0,
            core,
            waker,
        })
    }

    /// Takes one empty buffer, validated. `Ok(None)`: none posted (or no room to push it back);
    /// the caller drops the frame and counts it. An invalid iorec is consumed, counted and
    /// returned as `Err(InvalidIoRec)`.
    #[inline]
    pub fn take_empty(&mut self) -> Result<Option<IoRec>> {
        let mut out = [IoRec::default()];
        match self.take_records(&mut out, true)? {
            0 => Ok(None),
            _ => Ok(Some(out[0])),
        }
    }

    /// Takes up to `out.len()` empty buffers; returns how many valid ones it stored at the front.
    #[inline]
    pub fn take_empty_batch(&mut self, out: &mut [IoRec]) -> Result<usize> {
        self.take_records(out, false)
    }

    /// `take_empty_batch`; with `one`, an invalid first iorec is returned as its error instead,
    /// and finding none counts as a frame without a buffer.
    #[inline(always)]
    fn take_records(&mut self, out: &mut [IoRec], one: bool) -> Result<usize> {
        self.core.check()?;
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let limit = consumable(
            &mut self.core,
            &mut self.empty,
            &mut self.full,
            self.held_slots,
            want,
        )?;
        self.empty.prefetch(limit.min(want));
        let mut k = 0;
        let mut at = 0;
        let mut slots_kept = 0;
        let mut first_err = None;
        // Every turn consumes at least one slot or stops: at most `limit` turns.
        while at < limit && k < out.len() {
            let valid = match self.empty.read(at, limit) {
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
                // Only a TMM consumer writes runs (on its empty FIFO).
                Record::Run { first, n } => {
                    at += 1;
                    Err(IoRecError::BadRun { first, n })
                }
                Record::Stop => break,
            };
            match valid {
                Ok(slots) => {
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
            self.empty.consume(at);
            self.held += k as u32;
            self.held_slots += slots_kept;
            self.core.counters.iorecs_in += k as u64;
            self.waker.notify_peer();
        }
        if one && k == 0 && first_err.is_none() {
            self.core.counters.no_empty_buffer += 1;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(k),
        }
    }

    /// Copies `frame` into the buffer `rec` names (extents in order). `Err(TooLarge)` if it does
    /// not fit; the buffer stays held for the next frame.
    #[inline]
    pub fn copy_in(&mut self, rec: &IoRec, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is a live slice of private memory: valid for reads of its length, and
        // not part of the data mapping.
        unsafe { self.core.scatter(rec, frame.as_ptr(), frame.len()) }
    }

    /// [`copy_in`](Self::copy_in) from raw memory, e.g. straight from an mbuf.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes and must not overlap this channel's data area.
    pub unsafe fn copy_in_raw(&mut self, rec: &IoRec, src: *const u8, len: usize) -> Result<()> {
        // SAFETY: the caller's contract is exactly `scatter`'s.
        unsafe { self.core.scatter(rec, src, len) }
    }

    /// Pushes a filled buffer with its actual length: the extents are trimmed to `len` bytes.
    #[inline]
    pub fn push_full(&mut self, rec: IoRec, len: usize) -> Result<()> {
        self.push_full_batch(&[(rec, len)])
    }

    /// Pushes filled buffers (never `Full` while the peer's index is sane: `take_empty` kept room).
    #[inline]
    pub fn push_full_batch(&mut self, recs: &[(IoRec, usize)]) -> Result<()> {
        self.core.check()?;
        let n = u32::try_from(recs.len()).unwrap_or(u32::MAX);
        let slots = recs
            .iter()
            .fold(0u32, |a, (r, _)| a.saturating_add(r.slots()));
        if n > self.held || slots > self.held_slots {
            return Err(Error::NotHeld { offset: 0, len: 0 });
        }
        let room = self
            .full
            .room(slots)
            .map_err(|e| self.core.index_violation(e))?;
        if room < slots {
            return Err(Error::Full);
        }
        self.full.prefetch(slots);
        let mut at = 0;
        for (rec, len) in recs {
            let mut out = *rec;
            let mut left = *len as u64;
            for e in out
                .extents
                .iter_mut()
                .take(usize::from(rec.count).min(crate::MAX_EXTENTS))
            {
                let take = left.min(u64::from(e.len));
                e.len = take as u32;
                left -= take;
            }
            at += self.full.write(at, &out);
        }
        self.full.publish(at);
        self.held -= n;
        self.held_slots -= at;
        self.core.counters.iorecs_out += u64::from(n);
        self.waker.notify_peer();
        Ok(())
    }

    /// Whether `take_empty` would return something now.
    pub fn ready(&mut self) -> Result<bool> {
        can_consume(
            &mut self.core,
            &mut self.empty,
            &mut self.full,
            self.held_slots,
        )
    }

    /// Blocks until [`ready`](Self::ready) or `timeout` (`Err(Timeout)`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let Producer {
            core,
            waker,
            empty,
            full,
            held_slots,
            ..
        } = self;
        waker.wait(timeout, || can_consume(core, empty, full, *held_slots))
    }

    /// Empty buffers taken and not yet pushed.
    pub fn held(&self) -> u32 {
        self.held
    }
}

crate::channel::endpoint_common!(
    Producer,
    "Readable when the application posted buffers or popped filled ones."
);
