//! A memory-mapped AF_PACKET receive ring (`TPACKET_V3`, `PACKET_RX_RING`): captures millions
//! of frames a second where a `recv` per frame cannot keep up.
//!
//! The kernel fills blocks of the shared ring with frames and hands each block over whole
//! (`TP_STATUS_USER`); [`RxRing::next_block`] lends one block at a time, its frames are read in
//! place, and dropping the [`Block`] hands it back (`TP_STATUS_KERNEL`). Every offset and length
//! the kernel wrote into a block is checked against the block's bounds before a byte is read, so
//! a surprise in the ring is an error, never a read outside it. Frames the ring had no room for
//! are counted by the kernel and reported by [`RxRing::stats`].

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::raw::last_os_error;

/// The shape of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block: a multiple of the page size (a power of two is best).
    pub block_bytes: u32,
    /// Number of blocks.
    pub blocks: u32,
    /// Largest frame kept whole (longer ones are cut to fit; see [`RxFrame::wire_len`]); a
    /// multiple of 16, at most `block_bytes`.
    pub frame_bytes: u32,
    /// A block that is not full is handed over anyway after this long (ms).
    pub retire_ms: u32,
    /// Capture only the frames that arrive, not those this host sends on the interface
    /// (`PACKET_IGNORE_OUTGOING`, Linux ≥ 4.20; set before the socket is bound, so that not one
    /// slips in).
    pub incoming_only: bool,
}

impl Default for RingConfig {
    /// 64 blocks of 1 MiB: room for about 350 000 small frames while the reader is away.
    fn default() -> Self {
        Self {
            block_bytes: 1 << 20,
            blocks: 64,
            frame_bytes: 2048,
            retire_ms: 10,
            incoming_only: false,
        }
    }
}

/// The capture socket's counters since it was opened (`PACKET_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames the kernel handed to the socket, including those it then dropped.
    pub packets: u64,
    /// Frames dropped because the ring was full.
    pub drops: u64,
    /// Times the ring was found full (the queue froze until a block came back).
    pub freezes: u64,
}

/// A `TPACKET_V3` receive ring on one interface.
#[derive(Debug)]
pub struct RxRing {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    block_bytes: usize,
    blocks: usize,
    next: usize,
    totals: RingStats,
}

// SAFETY: the ring's memory is owned by this value alone (the mapping is private to it and only
// reached through `&mut self`); moving it to another thread moves that ownership.
unsafe impl Send for RxRing {}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T, what: &str) -> Result<(), String> {
    // SAFETY: `value` is a live `T` and we pass exactly its size; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(last_os_error(what));
    }
    Ok(())
}

impl RxRing {
    /// Opens a ring of `config` on `iface` in the current network namespace, receiving every
    /// ethertype.
    pub fn bind(iface: &str, config: RingConfig) -> Result<Self, String> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| "sysconf(_SC_PAGESIZE) failed".to_string())?;
        let g = config;
        if g.block_bytes == 0 || g.blocks == 0 || !(g.block_bytes as usize).is_multiple_of(page) {
            return Err(format!(
                "ring config {g:?}: blocks must be a non-zero multiple of the page size ({page})"
            ));
        }
        if g.frame_bytes < libc::TPACKET3_HDRLEN as u32
            || !g.frame_bytes.is_multiple_of(libc::TPACKET_ALIGNMENT as u32)
            || g.frame_bytes > g.block_bytes
        {
            return Err(format!(
                "ring config {g:?}: frame_bytes must be a multiple of {} between {} and block_bytes",
                libc::TPACKET_ALIGNMENT,
                libc::TPACKET3_HDRLEN
            ));
        }
        let map_len = (g.block_bytes as usize)
            .checked_mul(g.blocks as usize)
            .ok_or_else(|| format!("ring config {g:?}: too large"))?;
        // Protocol 0: the socket receives nothing until it is bound, after the ring is in place.
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last_os_error("socket(AF_PACKET)"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
            "PACKET_VERSION",
        )?;
        let req = libc::tpacket_req3 {
            tp_block_size: g.block_bytes,
            tp_block_nr: g.blocks,
            tp_frame_size: g.frame_bytes,
            tp_frame_nr: (g.block_bytes / g.frame_bytes) * g.blocks,
            tp_retire_blk_tov: g.retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            "PACKET_RX_RING",
        )?;
        // SAFETY: mapping the ring the kernel just allocated for this socket, exactly its size,
        // shared; the result is checked and unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_os_error("mmap(PACKET_RX_RING)"));
        }
        let map = NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned null")?;
        let mut ring = Self {
            fd,
            map,
            map_len,
            block_bytes: g.block_bytes as usize,
            blocks: g.blocks as usize,
            next: 0,
            totals: RingStats::default(),
        };
        if g.incoming_only {
            let on: libc::c_int = 1;
            setsockopt(
                &ring.fd,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                &on,
                "PACKET_IGNORE_OUTGOING",
            )?;
        }
        let cname = std::ffi::CString::new(iface).map_err(|_| "interface name has NUL")?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(last_os_error(&format!("no interface {iface}")));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size we pass.
        let ret = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(last_os_error(&format!("bind to {iface}")));
        }
        ring.stats()?; // start the counters from the bind
        ring.totals = RingStats::default();
        Ok(ring)
    }

    /// [`bind`](Self::bind) to `iface` inside the network namespace `netns` (by name, as
    /// `ip netns` knows it). The socket stays in that namespace; the calling thread does not
    /// move.
    pub fn bind_in(netns: &str, iface: &str, config: RingConfig) -> Result<Self, String> {
        let path = format!("/var/run/netns/{netns}");
        let ns = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let iface = iface.to_owned();
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace fd we opened; it only affects this new thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(last_os_error("setns"));
            }
            Self::bind(&iface, config)
        })
        .join()
        .map_err(|_| "ring thread panicked".to_string())?
    }

    /// The status word of block `index`, shared with the kernel.
    fn status(&self, index: usize) -> &AtomicU32 {
        debug_assert!(index < self.blocks);
        let at = index * self.block_bytes
            + offset_of!(libc::tpacket_block_desc, hdr)
            + offset_of!(libc::tpacket_hdr_v1, block_status);
        // SAFETY: `index < blocks`, so `at + 4 ≤ map_len` (a block is at least a page); the
        // mapping is page-aligned and `at` a multiple of 4, so the word is aligned. The kernel
        // and we only ever access it as a whole 32-bit word, and it lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(at).cast::<u32>()) }
    }

    /// The next block the kernel has filled, waiting up to `timeout` for one; `None` if none
    /// came. The block goes back to the kernel when the returned [`Block`] is dropped.
    pub fn next_block(&mut self, timeout: Duration) -> Result<Option<Block<'_>>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(self.next).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER != 0 {
                let index = self.next;
                self.next = (self.next + 1) % self.blocks;
                return Ok(Some(Block { ring: self, index }));
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(None);
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDNORM | libc::POLLERR,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ret < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                return Err(last_os_error("poll(PACKET_RX_RING)"));
            }
        }
    }

    /// The socket's counters since the ring was bound (the kernel's counters are read and reset,
    /// and added up here).
    pub fn stats(&mut self) -> Result<RingStats, String> {
        let st = crate::raw::packet_statistics(
            self.fd.as_fd(),
            libc::tpacket_stats_v3 {
                tp_packets: 0,
                tp_drops: 0,
                tp_freeze_q_cnt: 0,
            },
        )?;
        self.totals.packets += u64::from(st.tp_packets);
        self.totals.drops += u64::from(st.tp_drops);
        self.totals.freezes += u64::from(st.tp_freeze_q_cnt);
        Ok(self.totals)
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `bind`, of its length; no `Block` (which
        // borrows `self`) can be alive here.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// One block of frames, lent by the kernel; handed back when dropped.
#[derive(Debug)]
pub struct Block<'r> {
    ring: &'r mut RxRing,
    index: usize,
}

/// One captured frame, read in place in its block.
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'b> {
    /// The bytes captured, from the Ethernet header on.
    pub data: &'b [u8],
    /// The frame's length on the wire (longer than `data` if it was cut to fit).
    pub wire_len: u32,
    /// `PACKET_HOST`, `PACKET_OTHERHOST`, `PACKET_OUTGOING`, …
    pub pkttype: u8,
    /// Kernel receive time, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// The VLAN tag the kernel took off the frame before `data` (it strips a received frame's
    /// outer tag), if it had one: see [`RxFrame::wire_bytes`].
    pub vlan: Option<VlanTag>,
}

/// A VLAN tag as it was on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    /// The tag protocol identifier (0x8100, 0x88a8, …).
    pub tpid: u16,
    /// The tag control information (priority, DEI, VLAN id).
    pub tci: u16,
}

impl<'b> RxFrame<'b> {
    /// The frame as it was on the wire: `data` with the stripped VLAN tag, if any, put back
    /// after the MAC addresses.
    pub fn wire_bytes(&self) -> std::borrow::Cow<'b, [u8]> {
        match self.vlan {
            Some(tag) if self.data.len() >= 12 => {
                let mut f = Vec::with_capacity(self.data.len() + 4);
                f.extend_from_slice(&self.data[..12]);
                f.extend_from_slice(&tag.tpid.to_be_bytes());
                f.extend_from_slice(&tag.tci.to_be_bytes());
                f.extend_from_slice(&self.data[12..]);
                std::borrow::Cow::Owned(f)
            }
            _ => std::borrow::Cow::Borrowed(self.data),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

impl Block<'_> {
    /// The whole block's bytes.
    fn bytes(&self) -> &[u8] {
        let start = self.index * self.ring.block_bytes;
        // SAFETY: `index < blocks`, so the range is inside the mapping. The block's status is
        // TP_STATUS_USER (checked with acquire ordering in `next_block`): the kernel has
        // finished writing it and does not touch it again until `Drop` hands it back, which
        // cannot happen while this borrow of `self` lives. Every byte value is a valid `u8`.
        unsafe {
            std::slice::from_raw_parts(
                self.ring.map.as_ptr().add(start).cast_const(),
                self.ring.block_bytes,
            )
        }
    }

    /// The block's sequence number (counts every block the kernel filled; a gap would be a
    /// block this reader skipped).
    pub fn seq(&self) -> u64 {
        let at =
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, seq_num);
        self.bytes()
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    }

    /// The frames in the block, in arrival order. An offset or length outside the block ends
    /// the iteration with an error.
    pub fn frames(&self) -> Frames<'_> {
        let b = self.bytes();
        let hdr = offset_of!(libc::tpacket_block_desc, hdr);
        let num = u32_at(b, hdr + offset_of!(libc::tpacket_hdr_v1, num_pkts)).unwrap_or(0);
        let first = u32_at(
            b,
            hdr + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
        );
        let blk_len = u32_at(b, hdr + offset_of!(libc::tpacket_hdr_v1, blk_len));
        let end = blk_len.map_or(0, |l| (l as usize).min(b.len()));
        let (at, error) = match (first, blk_len) {
            (Some(f), Some(l))
                if f as usize >= size_of::<libc::tpacket_block_desc>()
                    && l as usize <= b.len() =>
            {
                (f as usize, None)
            }
            _ => (
                0,
                Some(format!(
                    "block header out of bounds: first frame at {first:?}, block length {blk_len:?}, block {} bytes",
                    b.len()
                )),
            ),
        };
        Frames {
            block: &b[..end],
            at,
            left: if error.is_some() { 0 } else { num },
            error,
        }
    }

    /// How many frames the block holds.
    pub fn len(&self) -> usize {
        let at =
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
        u32_at(self.bytes(), at).unwrap_or(0) as usize
    }

    /// Whether the block holds no frame (a block retired by its timer may be empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        // Release: our reads of the block happen before the kernel may write it again.
        self.ring
            .status(self.index)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

/// Iterator over a [`Block`]'s frames.
#[derive(Debug)]
pub struct Frames<'b> {
    block: &'b [u8],
    at: usize,
    left: u32,
    error: Option<String>,
}

impl<'b> Frames<'b> {
    fn frame(&self) -> Result<(RxFrame<'b>, u32), String> {
        let b = self.block;
        let at = self.at;
        let field = |off: usize| {
            u32_at(b, at.saturating_add(off)).ok_or_else(|| {
                format!(
                    "frame header at {at} runs past the block ({} bytes)",
                    b.len()
                )
            })
        };
        if at.saturating_add(size_of::<libc::tpacket3_hdr>()) > b.len() {
            return Err(format!(
                "frame header at {at} runs past the block ({} bytes)",
                b.len()
            ));
        }
        let next = field(offset_of!(libc::tpacket3_hdr, tp_next_offset))?;
        let sec = field(offset_of!(libc::tpacket3_hdr, tp_sec))?;
        let nsec = field(offset_of!(libc::tpacket3_hdr, tp_nsec))?;
        let snaplen = field(offset_of!(libc::tpacket3_hdr, tp_snaplen))? as usize;
        let wire_len = field(offset_of!(libc::tpacket3_hdr, tp_len))?;
        let status = field(offset_of!(libc::tpacket3_hdr, tp_status))?;
        let hv1 = at + offset_of!(libc::tpacket3_hdr, hv1);
        let tci = u32_at(b, hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci)).unwrap_or(0);
        let tpid = u16_at(
            b,
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
        )
        .unwrap_or(0);
        let vlan = (status & libc::TP_STATUS_VLAN_VALID != 0).then_some(VlanTag {
            tpid: if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                tpid
            } else {
                0x8100
            },
            tci: tci as u16,
        });
        let mac = u16_at(b, at + offset_of!(libc::tpacket3_hdr, tp_mac)).unwrap_or(0) as usize;
        // The link-layer address follows the header, aligned (TPACKET_ALIGN).
        let sll = at + size_of::<libc::tpacket3_hdr>().next_multiple_of(libc::TPACKET_ALIGNMENT);
        if mac < sll - at + size_of::<libc::sockaddr_ll>() {
            return Err(format!(
                "frame at {at}: data offset {mac} overlaps its headers"
            ));
        }
        let pkttype = *b
            .get(sll + offset_of!(libc::sockaddr_ll, sll_pkttype))
            .ok_or_else(|| format!("frame at {at}: address runs past the block"))?;
        let start = at + mac;
        let data = start
            .checked_add(snaplen)
            .and_then(|stop| b.get(start..stop))
            .ok_or_else(|| {
                format!(
                    "frame at {at}: {snaplen} bytes at offset {mac} run past the block ({} bytes)",
                    b.len()
                )
            })?;
        Ok((
            RxFrame {
                data,
                wire_len,
                pkttype,
                timestamp_ns: u64::from(sec) * 1_000_000_000 + u64::from(nsec),
                vlan,
            },
            next,
        ))
    }
}

impl<'b> Iterator for Frames<'b> {
    type Item = Result<RxFrame<'b>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        if self.left == 0 {
            return None;
        }
        match self.frame() {
            Ok((frame, next)) => {
                self.left -= 1;
                if self.left > 0 {
                    if next == 0 {
                        self.left = 0;
                        self.error = Some(format!(
                            "frame at {}: no next offset with frames left",
                            self.at
                        ));
                    }
                    self.at = self.at.saturating_add(next as usize);
                }
                Some(Ok(frame))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}
