//! Packet buffers: mempools and an owning `Mbuf`.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

use dpdk_sys::{rte_mbuf, rte_mempool};

use super::{errno, strerror, DpdkError, Eal};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`).
///
/// Pools are never freed before the EAL is: mbufs can sit in a PMD's queues after their last
/// Rust owner let go, and `rte_eal_cleanup` releases all DPDK memory anyway.
#[derive(Debug, Clone, Copy)]
pub struct Mempool<'eal> {
    raw: NonNull<rte_mempool>,
    _eal: PhantomData<&'eal Eal>,
}

impl<'eal> Mempool<'eal> {
    /// Creates a pool of `count` mbufs with `data_room` bytes each (plus DPDK's headroom).
    pub fn new(_eal: &'eal Eal, name: &str, count: u32, data_room: u16) -> Result<Self, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.into()))?;
        let cache = count.div_ceil(16).min(256);
        let room = data_room.saturating_add(dpdk_sys::RTE_PKTMBUF_HEADROOM as u16);
        // SAFETY: the EAL is running (we borrow it); the name is a valid C string copied by
        // DPDK; SOCKET_ID_ANY is -1. Returns NULL and sets rte_errno on failure.
        let raw =
            unsafe { dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, room, -1) };
        let raw = NonNull::new(raw).ok_or_else(|| DpdkError::Call {
            op: format!("rte_pktmbuf_pool_create({name}, {count} mbufs)"),
            code: errno(),
            msg: strerror(errno()),
        })?;
        Ok(Self {
            raw,
            _eal: PhantomData,
        })
    }

    /// A fresh, empty mbuf, or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf<'eal>> {
        // SAFETY: `raw` is a live pktmbuf pool; returns NULL when empty.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.raw.as_ptr()) };
        NonNull::new(m).map(|raw| Mbuf {
            raw,
            _eal: PhantomData,
        })
    }

    /// Mbufs currently available in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: `raw` is a live pool; the count is a best-effort read.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs currently handed out.
    pub fn in_use(&self) -> u32 {
        // SAFETY: as in `available`.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut rte_mempool {
        self.raw.as_ptr()
    }
}

/// One owned packet buffer (a single segment), freed on drop.
///
/// Ownership moves into the PMD on transmit ([`Mbuf::into_raw`]).
#[derive(Debug)]
pub struct Mbuf<'eal> {
    raw: NonNull<rte_mbuf>,
    _eal: PhantomData<&'eal Eal>,
}

// SAFETY: an mbuf is a plain buffer owned by exactly one Mbuf; DPDK allows freeing it from any
// thread (mempool put is thread-safe for the default ring-based pools).
unsafe impl Send for Mbuf<'_> {}

impl<'eal> Mbuf<'eal> {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nobody else owns or frees, allocated from a pool of an
    /// EAL that lives for `'eal`.
    pub unsafe fn from_raw(raw: NonNull<rte_mbuf>) -> Self {
        Self {
            raw,
            _eal: PhantomData,
        }
    }

    /// Gives up ownership (e.g. to `rte_eth_tx_burst`) without freeing.
    pub fn into_raw(self) -> NonNull<rte_mbuf> {
        let raw = self.raw;
        std::mem::forget(self);
        raw
    }

    pub(crate) fn as_ptr(&self) -> *mut rte_mbuf {
        self.raw.as_ptr()
    }

    /// Bytes of data in the first segment.
    pub fn len(&self) -> usize {
        // SAFETY: we own a valid mbuf; data_len is a plain field.
        usize::from(unsafe { self.raw.as_ref() }.data_len)
    }

    /// Whether the first segment holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segments in the chain (frames larger than one buffer arrive as several).
    pub fn segments(&self) -> u16 {
        // SAFETY: as in `len`.
        unsafe { self.raw.as_ref() }.nb_segs
    }

    /// Total packet length over all segments.
    pub fn pkt_len(&self) -> usize {
        // SAFETY: as in `len`.
        unsafe { self.raw.as_ref() }.pkt_len as usize
    }

    /// The data of the first segment (`rte_pktmbuf_mtod`).
    pub fn data(&self) -> &[u8] {
        // SAFETY: we own the mbuf; buf_addr + data_off points at data_len initialised bytes
        // inside the buffer, which nobody else touches while we hold `&self`.
        unsafe {
            let m = self.raw.as_ref();
            let start = m.buf_addr.cast::<u8>().add(usize::from(m.data_off));
            std::slice::from_raw_parts(start, usize::from(m.data_len))
        }
    }

    /// The data of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, with exclusive access through `&mut self`.
        unsafe {
            let m = self.raw.as_ref();
            let start = m.buf_addr.cast::<u8>().add(usize::from(m.data_off));
            std::slice::from_raw_parts_mut(start, usize::from(m.data_len))
        }
    }

    /// Grows the data by `len` bytes at the end and returns them, or `None` if the buffer's
    /// tailroom is too small (`rte_pktmbuf_append`).
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: we own the mbuf; append returns NULL without change if there is no room,
        // otherwise a pointer to `len` new bytes inside the buffer, exclusively ours.
        unsafe {
            let p = dpdk_sys::rte_pktmbuf_append(self.raw.as_ptr(), len16);
            if p.is_null() {
                None
            } else {
                Some(std::slice::from_raw_parts_mut(p.cast::<u8>(), len))
            }
        }
    }

    /// Room left at the end of the first segment.
    pub fn tailroom(&self) -> usize {
        // SAFETY: as in `len`.
        let m = unsafe { self.raw.as_ref() };
        usize::from(m.buf_len).saturating_sub(usize::from(m.data_off) + usize::from(m.data_len))
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (chain included) and nobody uses it after this.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}
