//! Iorecs: the FIFO entries. A FIFO slot is two 64-bit words (16 bytes) in shared memory; an
//! iorec occupies one slot when it has one extent (the common case: every packet the driver and
//! the app stack exchange) and two consecutive slots when it has two or three. An [`IoRec`] is
//! the private, plain copy of one; every bit pattern decodes, and [`IoRec::validate`] then decides.
//!
//! The record image, four words, [`IoRec::encode`]: word 0 = `flags | count << 16 | kind << 24`
//! (kind 0 for an iorec; bits 32..64 reserved, written 0, ignored on decode), words 1..4 =
//! `offset | len << 32` of extents 0..3. Words 0 and 1 are the first slot; words 2 and 3, the
//! second slot, exist only when `count ≥ 2` ([`slots_of_header`]).
//!
//! A **run** record (kind 1, count 0, [`run_words`]) is one slot: word 0 = `1 << 24`, word 1 =
//! `first | n << 32`. Only a TMM consumer writes one, on the empty FIFO: "the `n` iorecs the
//! producer pushed as numbers `first..first + n` (its count of iorecs pushed, from 0, wrapping)
//! are back" (among the producer's last [`RUN_WINDOW`] × slots pushes). Anywhere else a run is
//! an invalid record ([`IoRecError::BadRun`]).

use crate::error::IoRecError;

/// Most extents one iorec can carry (a header word and three extents: two slots).
pub const MAX_EXTENTS: usize = 3;

/// Size of one FIFO slot in bytes.
pub const SLOT_BYTES: usize = 16;

/// Size of the largest record image (two slots): what [`IoRec::decode_bytes`] takes.
pub const RECORD_BYTES: usize = 2 * SLOT_BYTES;

/// Slots a record takes, by its header word (its first word): one for `count ≤ 1`, two otherwise
/// (a count above [`MAX_EXTENTS`] is invalid, but the record still takes two slots, so that a
/// consumer skips it whole).
#[inline(always)]
pub const fn slots_of_header(header: u64) -> u32 {
    if (header >> 16) as u8 >= 2 {
        2
    } else {
        1
    }
}

/// The kind byte of a run record's header word (see the module doc).
const RUN_KIND: u64 = 1 << 24;

/// Whether a header word is a run record's: kind 1 and count 0 (so a run takes one slot by
/// [`slots_of_header`] too; kind bits with a non-zero count are ignored, as before).
#[inline(always)]
pub(crate) const fn is_run(header: u64) -> bool {
    header & 0xFFFF_0000 == RUN_KIND
}

/// How far back, in FIFO lengths (`slots`), a TMM producer remembers what it pushed: a run may
/// name only push numbers among its last `RUN_WINDOW × slots` pushes. A consumer sends runs only
/// for push numbers within `(RUN_WINDOW - 1) × slots` of the newest it has read (the producer
/// is ahead of that by at most the full FIFO's slots), and older iorecs one record each.
pub const RUN_WINDOW: u32 = 4;

/// The slot of a run record: iorecs `first..first + n` (push numbers) are back.
#[inline(always)]
pub const fn run_words(first: u32, n: u32) -> [u64; 2] {
    [RUN_KIND, first as u64 | (n as u64) << 32]
}

/// A byte range of the data area, by offset (the two sides map the area at different addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct Extent {
    /// Offset from the start of the data area.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Extent {
    /// An extent of `len` bytes at `offset`.
    pub const fn new(offset: u32, len: u32) -> Self {
        Extent { offset, len }
    }

    /// Its word in a record image: `offset | len << 32`.
    #[inline(always)]
    pub(crate) const fn word(&self) -> u64 {
        self.offset as u64 | (self.len as u64) << 32
    }

    /// Overwrites this extent with the one `w` describes ([`from_word`](Self::from_word)) in one
    /// 8-byte store (the compiler splits a field-wise store in two).
    #[inline(always)]
    pub(crate) fn store_word(&mut self, w: u64) {
        // The fields in memory order (`repr(C)`): offset, then len.
        let halves = [w as u32, (w >> 32) as u32];
        let bytes = [halves[0].to_ne_bytes(), halves[1].to_ne_bytes()];
        let mut image = [0u8; 8];
        image[..4].copy_from_slice(&bytes[0]);
        image[4..].copy_from_slice(&bytes[1]);
        // SAFETY: `Extent` is `repr(C, align(8))` of two `u32`s: 8 bytes, 8-aligned, no padding,
        // offset first; every bit pattern is valid. `self` is an exclusive reference.
        unsafe {
            std::ptr::from_mut(self)
                .cast::<u64>()
                .write(u64::from_ne_bytes(image))
        };
    }

    /// The extent an image word describes (any bits).
    #[inline(always)]
    pub(crate) const fn from_word(w: u64) -> Self {
        Extent {
            offset: w as u32,
            len: (w >> 32) as u32,
        }
    }

    /// Checks that `[offset, offset + len)` lies inside a data area of `data_bytes`, with
    /// overflow-checked arithmetic; `index` only labels the error.
    #[inline(always)]
    pub fn check_bounds(&self, index: usize, data_bytes: u64) -> Result<(), IoRecError> {
        let end = self
            .offset
            .checked_add(self.len)
            .ok_or(IoRecError::Overflow {
                index,
                offset: self.offset,
                len: self.len,
            })?;
        if u64::from(end) > data_bytes {
            return Err(IoRecError::OutOfBounds {
                index,
                offset: self.offset,
                len: self.len,
                data_bytes,
            });
        }
        Ok(())
    }
}

/// The limits an iorec is checked against: the data area's size and the channel's packet limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the data area in bytes.
    pub data_bytes: u64,
    /// Largest total length of one iorec.
    pub max_packet_bytes: u32,
}

/// One FIFO entry, copied out of shared memory: a header (flags, extent count) and up to
/// [`MAX_EXTENTS`] extents. A plain value: nothing here points into shared memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IoRec {
    /// Free for the layers above (the driver passes them through untouched).
    pub flags: u16,
    /// Number of extents in use. Unchecked until [`IoRec::validate`].
    pub count: u8,
    /// The extents; those past `count` are ignored.
    pub extents: [Extent; MAX_EXTENTS],
}

impl IoRec {
    /// An iorec of one extent.
    pub const fn single(extent: Extent, flags: u16) -> Self {
        IoRec {
            flags,
            count: 1,
            extents: [extent, Extent::new(0, 0), Extent::new(0, 0)],
        }
    }

    /// An iorec of up to [`MAX_EXTENTS`] extents (`None` if more).
    pub fn from_extents(extents: &[Extent], flags: u16) -> Option<Self> {
        if extents.is_empty() || extents.len() > MAX_EXTENTS {
            return None;
        }
        let mut rec = IoRec {
            flags,
            count: extents.len() as u8,
            ..IoRec::default()
        };
        rec.extents[..extents.len()].copy_from_slice(extents);
        Some(rec)
    }

    /// The extents in use (at most [`MAX_EXTENTS`] even when `count` is larger: never panics).
    #[inline(always)]
    pub fn extents(&self) -> &[Extent] {
        &self.extents[..usize::from(self.count).min(MAX_EXTENTS)]
    }

    /// Sum of the lengths of the extents in use.
    #[inline(always)]
    pub fn total_len(&self) -> u64 {
        self.extents().iter().map(|e| u64::from(e.len)).sum()
    }

    /// Checks the count, every extent's bounds (overflow-checked) and the total length.
    #[inline(always)]
    pub fn validate(&self, limits: &Limits) -> Result<(), IoRecError> {
        // One extent (every packet today): one 64-bit sum covers overflow and bounds; anything
        // wrong takes the general path below, which says what.
        let e = self.extents[0];
        let end = u64::from(e.offset) + u64::from(e.len);
        if self.count == 1 && end <= limits.data_bytes && e.len <= limits.max_packet_bytes {
            return Ok(());
        }
        if self.count == 0 || usize::from(self.count) > MAX_EXTENTS {
            return Err(IoRecError::BadCount { count: self.count });
        }
        let mut total = 0u64;
        for (index, e) in self.extents().iter().enumerate() {
            e.check_bounds(index, limits.data_bytes)?;
            total += u64::from(e.len);
        }
        if total > u64::from(limits.max_packet_bytes) {
            return Err(IoRecError::TooLong {
                len: total,
                max: limits.max_packet_bytes,
            });
        }
        Ok(())
    }

    /// Slots this iorec takes on a FIFO (1 for one extent, 2 for two or three).
    #[inline(always)]
    pub const fn slots(&self) -> u32 {
        slots_of_header((self.count as u64) << 16)
    }

    /// The header word: `flags | count << 16`.
    #[inline(always)]
    pub(crate) fn header_word(&self) -> u64 {
        u64::from(self.flags) | u64::from(self.count) << 16
    }

    /// The record image (see the module doc); words 2 and 3 are 0 for a one-slot record.
    #[inline(always)]
    pub fn encode(&self) -> [u64; 4] {
        let mut w = [self.header_word(), self.extents[0].word(), 0, 0];
        if self.slots() == 2 {
            w[2] = self.extents[1].word();
            w[3] = self.extents[2].word();
        }
        w
    }

    /// Decodes a record image; words 2 and 3 are read only if the header says the record has a
    /// second slot. Every bit pattern gives some `IoRec` (validate it before use).
    #[inline(always)]
    pub fn decode(w: [u64; 4]) -> Self {
        let mut rec = IoRec::from_first_slot([w[0], w[1]]);
        if slots_of_header(w[0]) == 2 {
            rec.extents[1] = Extent::from_word(w[2]);
            rec.extents[2] = Extent::from_word(w[3]);
        }
        rec
    }

    /// Decodes a record's first slot (extents 1 and 2 left empty).
    #[inline(always)]
    pub(crate) fn from_first_slot(w: [u64; 2]) -> Self {
        IoRec {
            flags: w[0] as u16,
            count: (w[0] >> 16) as u8,
            extents: [
                Extent::from_word(w[1]),
                Extent::new(0, 0),
                Extent::new(0, 0),
            ],
        }
    }

    /// Decodes a 32-byte record image (native endian), as a fuzzer or a test supplies it.
    pub fn decode_bytes(b: &[u8; RECORD_BYTES]) -> Self {
        let mut w = [0u64; 4];
        for (i, chunk) in b.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            w[i] = u64::from_ne_bytes(a);
        }
        IoRec::decode(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        data_bytes: 1 << 20,
        max_packet_bytes: 2048,
    };

    #[test]
    fn golden_slot_words() {
        let rec = IoRec::from_extents(&[Extent::new(0x40, 60), Extent::new(0x1000, 1400)], 0xBEEF)
            .unwrap();
        let w = rec.encode();
        assert_eq!(w, [0x0002_BEEF, 60 << 32 | 0x40, 1400 << 32 | 0x1000, 0]);
        assert_eq!(IoRec::decode(w), rec);
        assert_eq!(rec.slots(), 2);
        // One extent: one slot, and the second slot's words are not part of the record.
        let one = IoRec::single(Extent::new(0x1000, 1514), 7);
        assert_eq!(one.encode(), [0x0001_0007, 1514 << 32 | 0x1000, 0, 0]);
        assert_eq!(one.slots(), 1);
        assert_eq!(
            IoRec::decode([0x0001_0007, 1514 << 32 | 0x1000, !0, !0]),
            one
        );
        // Counts 0 and 1 take one slot, anything above two (valid or not).
        assert_eq!(
            [0u64, 1, 2, 3, 200].map(|c| slots_of_header(c << 16)),
            [1, 1, 2, 2, 2]
        );
    }

    #[test]
    fn overflowing_extent_is_rejected() {
        let rec = IoRec::single(Extent::new(0xFFFF_FFFE, 4), 0);
        assert_eq!(
            rec.validate(&L),
            Err(IoRecError::Overflow {
                index: 0,
                offset: 0xFFFF_FFFE,
                len: 4
            })
        );
    }

    #[test]
    fn bad_counts_and_bounds() {
        let mut rec = IoRec::single(Extent::new(0, 1), 0);
        rec.count = 0;
        assert!(matches!(
            rec.validate(&L),
            Err(IoRecError::BadCount { count: 0 })
        ));
        rec.count = 200;
        assert!(matches!(
            rec.validate(&L),
            Err(IoRecError::BadCount { count: 200 })
        ));
        assert_eq!(rec.extents().len(), MAX_EXTENTS);
        let r = IoRec::single(Extent::new((1 << 20) - 10, 11), 0);
        assert!(matches!(
            r.validate(&L),
            Err(IoRecError::OutOfBounds { .. })
        ));
        let r = IoRec::single(Extent::new((1 << 20) - 10, 10), 0);
        assert_eq!(r.validate(&L), Ok(()));
        let r = IoRec::from_extents(&[Extent::new(0, 2000), Extent::new(4096, 100)], 0).unwrap();
        assert!(matches!(
            r.validate(&L),
            Err(IoRecError::TooLong { len: 2100, .. })
        ));
    }
}
