//! The interface every layer offers the layer above, in the shape of the Rbuf channel below it
//! (the Nemesis paper §4.2): allocate a buffer, fill it, push it down; pop a packet up, read it,
//! hand the buffer back. The channel itself ([`crate::FlowChannels`]) is the bottom layer, so
//! layers compose like the real channel, by ordinary procedure calls, per flow.
//!
//! Header space for all layers is known at flow set-up, so a packet is allocated once, at the
//! bottom, with room for every header in front of the data; each layer on the way down writes its
//! precomputed header template into that room and patches the per-packet fields. A packet that IP
//! fragments occupies several frames (one buffer each); a layer's data is then the concatenation
//! of the frames' tails.

use std::net::Ipv4Addr;
use std::time::Instant;

use nemflow_rbuf::rmm;
use nemflow_rbuf::Extent;
use smallvec::SmallVec;

use crate::counters::StackCounters;
use crate::error::Result;
use crate::icmp::IcmpReport;

/// Where an outgoing packet goes, for unconnected flows; `None` fields take the template's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxDst {
    /// Next-hop MAC (Ethernet).
    pub mac: Option<[u8; 6]>,
    /// Destination address (IPv4).
    pub ip: Option<Ipv4Addr>,
    /// Destination port (UDP).
    pub port: Option<u16>,
}

/// An outgoing packet on its way down: the frames it occupies in the TX data area and where the
/// current layer's data starts in them.
#[derive(Debug)]
pub struct TxPacket {
    /// Whole frames, in order; one TX buffer each.
    pub(crate) frames: SmallVec<[Extent; 1]>,
    /// Offset of the current layer's data in the first frame.
    pub(crate) first: u32,
    /// Offset of the current layer's data in later frames.
    pub(crate) rest: u32,
    /// Destination (unconnected flows).
    pub(crate) dst: TxDst,
}

impl TxPacket {
    /// Offset of the current layer's data in frame `i`.
    #[inline]
    pub(crate) fn offset(&self, i: usize) -> u32 {
        if i == 0 {
            self.first
        } else {
            self.rest
        }
    }

    /// The current layer's data in frame `i`, as an extent of the data area.
    #[inline]
    pub(crate) fn segment(&self, i: usize) -> Option<Extent> {
        let f = self.frames.get(i)?;
        let off = self.offset(i).min(f.len);
        Some(Extent::new(f.offset + off, f.len - off))
    }

    /// Length of the current layer's data.
    pub(crate) fn data_len(&self) -> usize {
        (0..self.frames.len())
            .filter_map(|i| self.segment(i))
            .map(|e| e.len as usize)
            .sum()
    }

    /// Number of frames.
    pub(crate) fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

/// What a received packet's bytes live in.
#[derive(Debug)]
pub(crate) enum RxBuf {
    /// A frame in the RX data area, held until the packet is released.
    Frame(rmm::RxPacket),
    /// A datagram reassembled into private memory.
    Owned(Vec<u8>),
}

/// What the layers below learned about a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    /// Source MAC (Ethernet).
    pub src_mac: [u8; 6],
    /// Source address (IPv4; unspecified below it).
    pub src_ip: Ipv4Addr,
    /// Destination address (IPv4).
    pub dst_ip: Ipv4Addr,
    /// Source port (UDP).
    pub src_port: u16,
}

impl Default for RxMeta {
    fn default() -> Self {
        RxMeta {
            src_mac: [0; 6],
            src_ip: Ipv4Addr::UNSPECIFIED,
            dst_ip: Ipv4Addr::UNSPECIFIED,
            src_port: 0,
        }
    }
}

/// A received packet on its way up: its buffer and the current layer's data range in it.
#[derive(Debug)]
pub struct RxPacket {
    pub(crate) buf: RxBuf,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) meta: RxMeta,
}

impl RxPacket {
    /// What the layers below learned.
    pub fn meta(&self) -> &RxMeta {
        &self.meta
    }

    /// Length of the current layer's data.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the current layer's data is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether the packet was reassembled from fragments (and so lives in private memory).
    pub fn is_reassembled(&self) -> bool {
        matches!(self.buf, RxBuf::Owned(_))
    }
}

/// What a layer passes up: a packet, or an error report about a packet this flow sent.
#[derive(Debug)]
pub enum Up {
    /// A received packet.
    Packet(RxPacket),
    /// An ICMP error quoting a packet this flow (probably) sent.
    Icmp(IcmpReport),
}

/// The current time, read from the flow's clock at most once per call and only if a layer needs
/// it (reassembly), so tests can drive time and the common path reads no clock.
pub struct Now<'c> {
    clock: &'c dyn Fn() -> Instant,
    at: Option<Instant>,
}

impl std::fmt::Debug for Now<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Now").field("at", &self.at).finish()
    }
}

impl<'c> Now<'c> {
    /// A lazy reading of `clock`.
    pub fn new(clock: &'c dyn Fn() -> Instant) -> Self {
        Now { clock, at: None }
    }

    /// The time (read once, then cached).
    pub fn get(&mut self) -> Instant {
        *self.at.get_or_insert_with(self.clock)
    }
}

/// A protocol layer, or the channel at the bottom: the Rbuf-like interface layers stack on.
pub trait Layer {
    /// Largest data this layer carries in one packet towards `dst`.
    fn max_data_len(&self, dst: &TxDst) -> usize;

    /// Frames one packet of `len` data bytes towards `dst` occupies.
    fn frames_needed(&self, len: usize, dst: &TxDst) -> usize;

    /// TX buffers free now (after reclaiming what the driver returned).
    fn tx_free(&mut self) -> Result<usize>;

    /// TX buffers the channel has in all.
    fn tx_buffers(&self) -> usize;

    /// Allocates a packet with `len` bytes of this layer's data towards `dst`, with room for the
    /// headers of this layer and those below. `Ok(None)`: not enough free buffers now.
    fn alloc(&mut self, len: usize, dst: TxDst) -> Result<Option<TxPacket>>;

    /// Frees an allocated packet that will not be sent.
    fn free(&mut self, pkt: TxPacket);

    /// The writable bytes of a TX extent the packet holds (a frame or part of one).
    fn tx_bytes_mut(&mut self, extent: Extent) -> Result<&mut [u8]>;

    /// Sends the packet down: this layer writes its headers, then the layer below does.
    fn push(&mut self, pkt: TxPacket) -> Result<()>;

    /// Receives the next packet (or error report) for the layer above; frames this layer rejects
    /// are counted, handed back and skipped. `Ok(None)`: nothing now.
    fn pop(&mut self, now: &mut Now<'_>) -> Result<Option<Up>>;

    /// The whole buffer of a received packet (its current data is `[start..end]`).
    fn rx_bytes<'a>(&'a self, pkt: &'a RxPacket) -> &'a [u8];

    /// Hands a received packet's buffer back (to the driver, for a frame).
    fn release(&mut self, pkt: RxPacket);

    /// Whether `pop` may have something now (a hint for readiness: it can be a frame that turns
    /// out to be dropped).
    fn rx_ready(&mut self) -> Result<bool>;

    /// Copies this layer's counters (and those below) into `out`.
    fn counters(&self, out: &mut StackCounters);
}
