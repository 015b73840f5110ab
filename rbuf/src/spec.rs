//! The channel's geometry, as the flow manager chooses it and sends it to both sides, and the
//! shared control area's layout derived from it.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::iorec::{Limits, SLOT_BYTES};

/// Bytes of a small page: region sizes are multiples of it.
pub const PAGE_BYTES: u64 = 4096;
/// Bytes of a huge page: hugetlb data areas are multiples of it.
pub const HUGE_PAGE_BYTES: u64 = 2 << 20;
/// Largest data area (offsets are 32-bit).
pub const MAX_DATA_BYTES: u64 = 1 << 30;
/// Largest FIFO.
pub const MAX_SLOTS: u32 = 1 << 16;
/// Largest packet one iorec may carry.
pub const MAX_PACKET_BYTES: u32 = 1 << 20;

/// "NEMRBUF1": the first word of every control area.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NEMRBUF1");
/// Layout version of the control area. 3: as 2, and a TMM consumer may return iorecs in run
/// records (kind 1 in the header word, [`crate::iorec::run_words`]). 2: 16-byte slots, an iorec
/// takes one slot (one extent) or two (two or three extents), indices count slots. (1: one
/// 32-byte slot per iorec.)
pub const VERSION: u32 = 3;

/// Geometry of one simplex channel. Trusted: it comes from the flow manager, not from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Size of the data area in bytes: a multiple of 4096 (of 2 MiB when `hugetlb`), at most 1 GiB.
    pub data_bytes: u64,
    /// Slots per FIFO: a power of two, 2..=65536. A FIFO holds this many one-extent iorecs (an
    /// iorec of two or three extents takes two slots).
    pub slots: u32,
    /// Largest total length of one iorec, 1..=min(data_bytes, 1 MiB).
    pub max_packet_bytes: u32,
    /// Back the data area with huge pages when the system has them (falls back to small pages).
    pub hugetlb: bool,
}

impl ChannelSpec {
    /// Checks the spec; every constructor of a channel or endpoint calls this first.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSpec(m));
        if !self.slots.is_power_of_two() || self.slots < 2 || self.slots > MAX_SLOTS {
            return bad(format!(
                "slots = {}: must be a power of two in 2..={MAX_SLOTS}",
                self.slots
            ));
        }
        let unit = if self.hugetlb {
            HUGE_PAGE_BYTES
        } else {
            PAGE_BYTES
        };
        if self.data_bytes == 0
            || self.data_bytes & (unit - 1) != 0
            || self.data_bytes > MAX_DATA_BYTES
        {
            return bad(format!(
                "data_bytes = {}: must be a non-zero multiple of {unit} and at most {MAX_DATA_BYTES}",
                self.data_bytes
            ));
        }
        if self.max_packet_bytes == 0
            || self.max_packet_bytes > MAX_PACKET_BYTES
            || u64::from(self.max_packet_bytes) > self.data_bytes
        {
            return bad(format!(
                "max_packet_bytes = {}: must be in 1..=min(data_bytes, {MAX_PACKET_BYTES})",
                self.max_packet_bytes
            ));
        }
        Ok(())
    }

    /// The limits iorecs of this channel are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            data_bytes: self.data_bytes,
            max_packet_bytes: self.max_packet_bytes,
        }
    }

    /// Size of the control memfd: the header, then the full FIFO's slots, then the empty FIFO's.
    pub fn control_bytes(&self) -> u64 {
        let raw = HEADER_BYTES as u64 + 2 * u64::from(self.slots) * SLOT_BYTES as u64;
        raw.div_ceil(PAGE_BYTES) * PAGE_BYTES
    }

    /// Size of the master's buffers: `max_packet_bytes` rounded up to a cache line.
    pub fn buffer_bytes(&self) -> u32 {
        self.max_packet_bytes.div_ceil(64) * 64
    }
}

/// The control area's header. Everything in it is an atomic, because the peer may write any of it
/// at any time: references to it are sound, and nothing read from it is trusted.
///
/// Producer-written and consumer-written indices live on separate cache lines, as in
/// `rte_ring_core.h`. "Producer" and "consumer" are the data's: the producer pushes on the full
/// FIFO and takes from the empty FIFO.
#[repr(C)]
pub(crate) struct ControlHeader {
    /// [`MAGIC`], written once by the creator.
    pub magic: AtomicU64,
    /// [`VERSION`] in the low half, slots in the high half.
    pub version_slots: AtomicU64,
    /// The data area's size.
    pub data_bytes: AtomicU64,
    /// The packet limit.
    pub max_packet_bytes: AtomicU64,
    /// Full FIFO head: count of slots the producer has published. Written by the producer only.
    pub full_head: CachePadded<AtomicU32>,
    /// Full FIFO tail: count of slots the consumer has finished reading. Written by the consumer.
    pub full_tail: CachePadded<AtomicU32>,
    /// Empty FIFO head: count of slots the consumer has handed back. Written by the consumer.
    pub empty_head: CachePadded<AtomicU32>,
    /// Empty FIFO tail: count of slots of empty iorecs the producer has taken. Written by the
    /// producer.
    pub empty_tail: CachePadded<AtomicU32>,
    /// Non-zero while the producer side is (about to be) asleep on its eventfd.
    pub prod_sleeping: CachePadded<AtomicU32>,
    /// Non-zero while the consumer side is (about to be) asleep on its eventfd.
    pub cons_sleeping: CachePadded<AtomicU32>,
}

/// Bytes of [`ControlHeader`]; the full FIFO's slots start here.
pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<ControlHeader>();

const _: () = assert!(HEADER_BYTES & 63 == 0);
const _: () = assert!(SLOT_BYTES == std::mem::size_of::<crate::ring::Slot>());
