//! One control FIFO, seen from one side: the single-producer/single-consumer ring of iorec slots
//! with free-running 32-bit indices (the paper's event counts), masked by `slots - 1`.
//!
//! Each side keeps its own index privately and only *stores* it to shared memory; it never reads
//! its own shared copy back (the peer may have overwritten it). The peer's index is read once per
//! refresh (Acquire) and checked: it may only move forward, and by no more than is possible.
//!
//! Memory ordering, as in DPDK's `rte_ring_core.h`:
//! - the producer writes slots (plain copies), then stores its head with Release;
//!   the consumer loads that head with Acquire before reading the slots;
//! - the consumer reads slots, then stores its tail with Release;
//!   the producer loads that tail with Acquire before overwriting those slots.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{FifoId, IndexError};
use crate::iorec::{is_run, slots_of_header, Extent, IoRec};

/// One slot: two words, half of a record image (see [`crate::iorec`]); four slots share a cache
/// line. Typed as atomics so that shared references to the control area are sound; the ring
/// copies whole slots in and out with raw-pointer copies (one 16-byte move instead of two 8-byte
/// atomic ones: the producer's slot stores miss in cache while the consumer holds the line, and
/// one store per word filled the store buffer and stalled the producer — measured 3x slower).
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Slot(pub(crate) [AtomicU64; 2]);

/// What reading one record at the head of the available slots found.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Record {
    /// A record of `slots` slots, copied out of shared memory (not validated yet).
    Read { rec: IoRec, slots: u32 },
    /// A header saying two slots where the producer published one: a protocol violation (a
    /// correct producer publishes whole records). Consumes its one slot.
    Truncated { count: u8 },
    /// A two-slot record when the caller may consume only one more slot now: stop before it.
    Stop,
    /// A run record (one slot, [`crate::iorec::run_words`]): push numbers `first..first + n`.
    Run { first: u32, n: u32 },
}

/// Number of iorecs between two free-running indices (`later - earlier`, wrapping).
#[inline]
pub fn distance(earlier: u32, later: u32) -> u32 {
    later.wrapping_sub(earlier)
}

/// Checks a consumer index `seen` read from the peer by the producer, which has published up to
/// `head` and had last seen `last`. Valid iff `last ≤ seen ≤ head` in wrapping order.
#[inline]
pub fn check_consumer_index(
    fifo: FifoId,
    head: u32,
    last: u32,
    seen: u32,
    slots: u32,
) -> Result<(), IndexError> {
    if distance(seen, head) <= distance(last, head) {
        return Ok(());
    }
    // Out of [last, head]: backwards if just behind `last`, otherwise too far (past our head).
    if distance(seen, last) <= slots {
        Err(IndexError::Backward { fifo, last, seen })
    } else {
        Err(IndexError::TooFar {
            fifo,
            last,
            seen,
            limit: head,
        })
    }
}

/// Checks a producer index `seen` read from the peer by the consumer, which has consumed up to
/// `tail` and had last seen `last`. Valid iff `last ≤ seen ≤ tail + slots` in wrapping order.
#[inline]
pub fn check_producer_index(
    fifo: FifoId,
    tail: u32,
    last: u32,
    seen: u32,
    slots: u32,
) -> Result<(), IndexError> {
    let avail = distance(tail, seen);
    if avail <= slots && avail >= distance(tail, last) {
        return Ok(());
    }
    if distance(seen, last) <= slots {
        Err(IndexError::Backward { fifo, last, seen })
    } else {
        Err(IndexError::TooFar {
            fifo,
            last,
            seen,
            limit: tail.wrapping_add(slots),
        })
    }
}

/// Whether the CPU has PREFETCHW (CPUID 0x8000_0001 ECX bit 8, "3DNowPrefetch"/PRFCHW).
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86_64 CPU; leaf 0x8000_0001 exists on all of them.
        let r = unsafe { std::arch::x86_64::__cpuid(0x8000_0001) };
        r.ecx & (1 << 8) != 0
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn has_prefetchw() -> bool {
    false
}

/// Raw view of one FIFO in a mapping: where its two indices and its slots are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FifoView {
    pub id: FifoId,
    pub head: NonNull<AtomicU32>,
    pub tail: NonNull<AtomicU32>,
    pub slots: NonNull<Slot>,
    pub size: u32,
}

impl FifoView {
    #[inline]
    fn head(&self) -> &AtomicU32 {
        // SAFETY: `FifoView::head` points into a mapping (or allocation) that the owning endpoint
        // keeps alive for as long as this view exists; it is an atomic, so a shared reference is
        // sound even while the peer writes it.
        unsafe { self.head.as_ref() }
    }

    #[inline]
    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as for `head`.
        unsafe { self.tail.as_ref() }
    }

    #[inline(always)]
    fn slot_ptr(&self, index: u32) -> *mut [u64; 2] {
        let i = (index & (self.size - 1)) as usize;
        // SAFETY: `slots` points to `size` slots kept alive by the owner; `i < size` by the mask
        // (size is a power of two), so the offset stays inside the slot array.
        unsafe { self.slots.as_ptr().add(i).cast::<[u64; 2]>() }
    }

    /// Starts fetching the cache lines of slots `index..index + n` (for writing if `write`, which
    /// the caller sets only if the CPU [`has_prefetchw`]), so
    /// the transfers from the other core overlap instead of stalling one store or load at a time.
    #[inline]
    fn prefetch(&self, index: u32, n: u32, write: bool) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // Four 16-byte slots per 64-byte line: one prefetch per line the slots touch.
            if n == 0 {
                return;
            }
            let n = n.min(self.size);
            let mut i = 0;
            while i < n + (index & 3) {
                let p = self
                    .slot_ptr((index & !3).wrapping_add(i))
                    .cast::<i8>()
                    .cast_const();
                if write {
                    // SAFETY: PREFETCHW (checked present by the caller) is only a hint: it never faults and has
                    // no architectural effect; the address is inside the slot array anyway.
                    // (`_MM_HINT_ET0` compiles to a read prefetch without the `prfchw` target
                    // feature, hence the asm.)
                    unsafe {
                        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly))
                    };
                } else {
                    // SAFETY: as above, a read prefetch is only a hint.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
                }
                i += 4;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (index, n, write);
    }

    /// Copies slot `index` out, once, with a raw-pointer copy (no reference to shared memory).
    /// Ordering comes from the index Acquire that precedes it.
    #[inline(always)]
    fn read_slot(&self, index: u32) -> [u64; 2] {
        // SAFETY: the pointer is in bounds and aligned (slots are 16-byte aligned); every bit
        // pattern is a valid `[u64; 4]`. A correct peer does not write this slot between its
        // Release publish and our Release consume (the protocol's happens-before); a hostile one
        // writing it concurrently lives in another process and can only change which bits we copy.
        unsafe { self.slot_ptr(index).read() }
    }

    /// Writes slot `index` (published by the index Release that follows).
    #[inline(always)]
    fn write_slot(&self, index: u32, words: [u64; 2]) {
        // SAFETY: in bounds and aligned as above; the mapping is writable (the control area is
        // mapped read-write by both sides). The consumer does not read this slot until our
        // Release publish (and released it before we reuse it: our Acquire of its tail).
        unsafe { self.slot_ptr(index).write(words) }
    }
}

/// The producer's side of a FIFO: private head, last consumer index seen.
#[derive(Debug)]
pub(crate) struct ProdCursor {
    view: FifoView,
    head: u32,
    tail_seen: u32,
    /// [`has_prefetchw`], read once at construction (its `OnceLock` stayed out of line).
    prefetchw: bool,
}

impl ProdCursor {
    /// Starts at `start` (both indices), as the creator initialised them.
    pub(crate) fn new(view: FifoView, start: u32) -> Self {
        ProdCursor {
            view,
            head: start,
            tail_seen: start,
            prefetchw: has_prefetchw(),
        }
    }

    /// Free slots according to the last consumer index seen (no shared read).
    #[inline]
    pub(crate) fn room_cached(&self) -> u32 {
        self.view.size - distance(self.tail_seen, self.head)
    }

    /// Reads the consumer's tail once and checks it.
    #[inline]
    pub(crate) fn refresh(&mut self) -> Result<u32, IndexError> {
        // Acquire: pairs with the consumer's Release store of its tail after reading the slots,
        // so those reads are done before we overwrite the slots.
        let seen = self.view.tail().load(Ordering::Acquire);
        check_consumer_index(
            self.view.id,
            self.head,
            self.tail_seen,
            seen,
            self.view.size,
        )?;
        self.tail_seen = seen;
        Ok(self.room_cached())
    }

    /// Free slots, reading the consumer's index only if the cached view shows fewer than `want`.
    #[inline]
    pub(crate) fn room(&mut self, want: u32) -> Result<u32, IndexError> {
        let room = self.room_cached();
        if room >= want {
            return Ok(room);
        }
        self.refresh()
    }

    /// Announces that the next `n` slots will be written.
    #[inline]
    pub(crate) fn prefetch(&self, n: u32) {
        self.view.prefetch(self.head, n, self.prefetchw);
    }

    /// Writes `rec` from the `i`-th free slot on (not yet published); returns the slots it took
    /// ([`IoRec::slots`]). Caller checked the room.
    #[inline(always)]
    pub(crate) fn write(&self, i: u32, rec: &IoRec) -> u32 {
        let at = self.head.wrapping_add(i);
        self.view
            .write_slot(at, [rec.header_word(), rec.extents[0].word()]);
        if rec.slots() == 1 {
            return 1;
        }
        self.view.write_slot(
            at.wrapping_add(1),
            [rec.extents[1].word(), rec.extents[2].word()],
        );
        2
    }

    /// Writes the raw words of one slot, the `i`-th free one (not yet published). Caller checked
    /// the room.
    #[inline(always)]
    pub(crate) fn write_words(&self, i: u32, words: [u64; 2]) {
        self.view.write_slot(self.head.wrapping_add(i), words);
    }

    /// Writes one one-slot record per extent, `[header, extent word]`, from the first free slot
    /// on (not yet published), with the view's fields in locals. Caller checked the room for
    /// `extents.len()` slots.
    #[inline(always)]
    pub(crate) fn write_singles(&self, header: u64, extents: &[Extent]) {
        let (slots, mask, head) = (
            self.view.slots.as_ptr().cast::<[u64; 2]>(),
            self.view.size - 1,
            self.head,
        );
        for (i, e) in extents.iter().enumerate() {
            let at = (head.wrapping_add(i as u32) & mask) as usize;
            // SAFETY: as in `FifoView::write_slot`: `at < size` by the mask (size is a power of
            // two), so the slot is in bounds and 16-byte aligned in the writable control mapping;
            // the consumer reads it only after our Release publish.
            unsafe { slots.add(at).write([header, e.word()]) };
        }
    }

    /// Publishes `n` written slots.
    #[inline]
    pub(crate) fn publish(&mut self, n: u32) {
        self.head = self.head.wrapping_add(n);
        // Release: publishes the slots written above; pairs with the Acquire in
        // `ConsCursor::refresh` on the other side.
        self.view.head().store(self.head, Ordering::Release);
    }
}

/// The consumer's side of a FIFO: private tail, last producer index seen.
#[derive(Debug)]
pub(crate) struct ConsCursor {
    view: FifoView,
    tail: u32,
    head_seen: u32,
}

impl ConsCursor {
    /// Starts at `start` (both indices), as the creator initialised them.
    pub(crate) fn new(view: FifoView, start: u32) -> Self {
        ConsCursor {
            view,
            tail: start,
            head_seen: start,
        }
    }

    /// Iorecs available according to the last producer index seen (no shared read).
    #[inline]
    pub(crate) fn avail_cached(&self) -> u32 {
        distance(self.tail, self.head_seen)
    }

    /// Reads the producer's head once and checks it.
    #[inline]
    pub(crate) fn refresh(&mut self) -> Result<u32, IndexError> {
        // Acquire: pairs with the producer's Release store of its head in `ProdCursor::publish`,
        // making the slots it wrote visible to the loads in `read`.
        let seen = self.view.head().load(Ordering::Acquire);
        check_producer_index(
            self.view.id,
            self.tail,
            self.head_seen,
            seen,
            self.view.size,
        )?;
        self.head_seen = seen;
        Ok(self.avail_cached())
    }

    /// Iorecs available, reading the producer's index only if the cached view shows fewer than
    /// `want`.
    #[inline]
    pub(crate) fn avail(&mut self, want: u32) -> Result<u32, IndexError> {
        let avail = self.avail_cached();
        if avail >= want {
            return Ok(avail);
        }
        self.refresh()
    }

    /// Announces that the next `n` available slots will be read.
    #[inline]
    pub(crate) fn prefetch(&self, n: u32) {
        self.view.prefetch(self.tail, n, false);
    }

    /// Copies the record that starts at the `i`-th available slot out of shared memory, each
    /// slot once, deciding from the private copy of its header whether it has a second slot.
    /// The caller checked `i < limit ≤` [`avail_cached`](Self::avail_cached); `limit` is how
    /// many slots it may consume now.
    #[inline(always)]
    pub(crate) fn read(&self, i: u32, limit: u32) -> Record {
        self.read_from(self.first_slot(i), i, limit)
    }

    /// Copies the `i`-th available slot out of shared memory (the caller checked `i` as for
    /// [`read`](Self::read)), to look at its header before deciding how to read the record.
    #[inline(always)]
    pub(crate) fn first_slot(&self, i: u32) -> [u64; 2] {
        self.view.read_slot(self.tail.wrapping_add(i))
    }

    /// [`read`](Self::read) with the record's first slot already copied out (`first`).
    #[inline(always)]
    pub(crate) fn read_from(&self, first: [u64; 2], i: u32, limit: u32) -> Record {
        let at = self.tail.wrapping_add(i);
        if is_run(first[0]) {
            return Record::Run {
                first: first[1] as u32,
                n: (first[1] >> 32) as u32,
            };
        }
        let mut rec = IoRec::from_first_slot(first);
        if slots_of_header(first[0]) == 1 {
            return Record::Read { rec, slots: 1 };
        }
        // `i + 1` cannot overflow: `i < limit ≤ size ≤ 2^16`.
        if i + 1 >= self.avail_cached() {
            return Record::Truncated { count: rec.count };
        }
        if i + 1 >= limit {
            return Record::Stop;
        }
        let second = self.view.read_slot(at.wrapping_add(1));
        rec.extents[1] = Extent::from_word(second[0]);
        rec.extents[2] = Extent::from_word(second[1]);
        Record::Read { rec, slots: 2 }
    }

    /// Whether a call allowed to consume `limit` slots (from [`avail`](Self::avail)'s count)
    /// would take the record at the head: always with two or more; with one, unless the head is
    /// a whole two-slot record (a header saying two slots with one published is consumed as
    /// invalid). Peeks at the header only to answer readiness; `read` copies it again.
    #[inline]
    pub(crate) fn head_fits(&self, limit: u32) -> bool {
        match limit {
            0 => false,
            1 => self.avail_cached() < 2 || slots_of_header(self.view.read_slot(self.tail)[0]) == 1,
            _ => true,
        }
    }

    /// Hands `n` read slots back to the producer.
    #[inline]
    pub(crate) fn consume(&mut self, n: u32) {
        self.tail = self.tail.wrapping_add(n);
        // Release: our reads of the slots above happen before the producer may reuse them; pairs
        // with the Acquire in `ProdCursor::refresh`.
        self.view.tail().store(self.tail, Ordering::Release);
    }
}

// SAFETY: a view only holds pointers to atomics in a mapping owned by the endpoint that holds the
// view (moved together with it); nothing is thread-local.
unsafe impl Send for FifoView {}
// SAFETY: the cursors only hold pointers to atomics in a mapping owned by the endpoint that owns
// them (moved together with it); nothing is thread-local.
unsafe impl Send for ProdCursor {}
// SAFETY: as for `ProdCursor`.
unsafe impl Send for ConsCursor {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::iorec::Extent;
    use std::sync::atomic::AtomicU32;

    /// A FIFO in ordinary heap memory (works under Miri, which cannot map memfds).
    pub(crate) struct HeapFifo {
        head: Box<AtomicU32>,
        tail: Box<AtomicU32>,
        slots: Box<[Slot]>,
    }

    impl HeapFifo {
        pub(crate) fn new(size: u32, start: u32) -> Self {
            let slots = (0..size)
                .map(|_| Slot([AtomicU64::new(0), AtomicU64::new(0)]))
                .collect();
            HeapFifo {
                head: Box::new(AtomicU32::new(start)),
                tail: Box::new(AtomicU32::new(start)),
                slots,
            }
        }

        pub(crate) fn view(&self) -> FifoView {
            FifoView {
                id: FifoId::Full,
                head: NonNull::from(&*self.head),
                tail: NonNull::from(&*self.tail),
                // From the whole slice (not its first element), so the pointer may reach every slot.
                slots: NonNull::from(&*self.slots).cast::<Slot>(),
                size: self.slots.len() as u32,
            }
        }
    }

    /// Record `i` of the test stream: every third one has three extents (two slots).
    fn rec(i: u32) -> IoRec {
        if i % 3 == 2 {
            let e = |k: u32| Extent::new(i.wrapping_mul(3).wrapping_add(k), !i);
            IoRec::from_extents(&[e(0), e(1), e(2)], 9).unwrap_or_default()
        } else {
            IoRec::single(Extent::new(i, !i), 7)
        }
    }

    #[test]
    fn spsc_threads_wrap_around() {
        // Starts just below u32::MAX so the indices wrap during the run; the ring's 8 slots hold
        // a mix of one- and two-slot records, so two-slot records also straddle the ring's end.
        let n: u32 = if cfg!(miri) { 300 } else { 200_000 };
        let fifo = HeapFifo::new(8, u32::MAX - 50);
        let view = fifo.view();
        let mut prod = ProdCursor::new(view, u32::MAX - 50);
        let mut cons = ConsCursor::new(view, u32::MAX - 50);
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0u32;
                while i < n {
                    let room = prod.room(2).unwrap();
                    let mut used = 0;
                    for _ in 0..3 {
                        if i == n || used + rec(i).slots() > room {
                            break;
                        }
                        used += prod.write(used, &rec(i));
                        i += 1;
                    }
                    prod.publish(used);
                    if used == 0 {
                        std::thread::yield_now();
                    }
                }
            });
            s.spawn(move || {
                let mut i = 0u32;
                while i < n {
                    let avail = cons.avail(1).unwrap();
                    let mut at = 0;
                    while at < avail {
                        match cons.read(at, avail) {
                            Record::Read { rec: r, slots } => {
                                assert_eq!((r, slots), (rec(i), rec(i).slots()));
                                at += slots;
                                i += 1;
                            }
                            other => panic!("{other:?} at {i}"),
                        }
                    }
                    cons.consume(avail);
                    if avail == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        });
    }

    #[test]
    fn half_published_and_room_limited_records() {
        let fifo = HeapFifo::new(8, 0);
        let mut prod = ProdCursor::new(fifo.view(), 0);
        let mut cons = ConsCursor::new(fifo.view(), 0);
        assert_eq!(prod.write(0, &rec(0)), 1);
        assert_eq!(prod.write(1, &rec(2)), 2);
        // A (hostile) head between the two slots of the second record.
        prod.publish(2);
        assert_eq!(cons.refresh(), Ok(2));
        assert!(matches!(cons.read(0, 2), Record::Read { slots: 1, .. }));
        assert!(matches!(cons.read(1, 2), Record::Truncated { count: 3 }));
        prod.publish(1);
        assert_eq!(cons.refresh(), Ok(3));
        // Room for one more slot only: stop before the two-slot record, read it with room.
        assert!(matches!(cons.read(1, 2), Record::Stop));
        assert!(matches!(cons.read(1, 3), Record::Read { slots: 2, rec: r } if r == rec(2)));
    }

    #[test]
    fn peer_index_violations() {
        let fifo = HeapFifo::new(8, 0);
        let mut prod = ProdCursor::new(fifo.view(), 0);
        let mut cons = ConsCursor::new(fifo.view(), 0);
        fifo.head.store(9, Ordering::Relaxed);
        assert!(matches!(cons.refresh(), Err(IndexError::TooFar { .. })));
        fifo.head.store(8, Ordering::Relaxed);
        assert_eq!(cons.refresh(), Ok(8));
        fifo.head.store(7, Ordering::Relaxed);
        assert!(matches!(cons.refresh(), Err(IndexError::Backward { .. })));
        // Producer at 0 published nothing: any consumer index but 0 is impossible.
        fifo.tail.store(1, Ordering::Relaxed);
        assert!(matches!(prod.refresh(), Err(IndexError::TooFar { .. })));
        fifo.tail.store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(prod.refresh(), Err(IndexError::Backward { .. })));
    }

    proptest::proptest! {
        /// Random interleavings of push and pop from any start (including just below the wrap):
        /// the consumer sees exactly what was pushed, in order, and room/avail never exceed the ring.
        #[test]
        fn random_ops_match_a_queue_model(
            start in proptest::prop_oneof![u32::MAX - 64..=u32::MAX, proptest::prelude::any::<u32>()],
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0u32..12), 1..200),
        ) {
            let fifo = HeapFifo::new(8, start);
            let mut prod = ProdCursor::new(fifo.view(), start);
            let mut cons = ConsCursor::new(fifo.view(), start);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u32;
            for (push, k) in ops {
                if push {
                    let room = prod.refresh().unwrap();
                    proptest::prop_assert_eq!(room as usize, 8 - model.len());
                    let k = k.min(room);
                    for j in 0..k {
                        prod.write(j, &IoRec::single(Extent::new(next, 1), 0));
                        model.push_back(next);
                        next += 1;
                    }
                    prod.publish(k);
                } else {
                    let avail = cons.refresh().unwrap();
                    proptest::prop_assert_eq!(avail as usize, model.len());
                    let k = k.min(avail);
                    for j in 0..k {
                        let Record::Read { rec, slots: 1 } = cons.read(j, k) else {
                            proptest::prop_assert!(false, "not a one-slot record");
                            return Ok(());
                        };
                        proptest::prop_assert_eq!(Some(rec.extents[0].offset), model.pop_front());
                    }
                    cons.consume(k);
                }
            }
        }
    }
}
