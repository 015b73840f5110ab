//! The smoltcp device of one TCP flow: its transmit and receive Rbuf channels.
//!
//! smoltcp works in IP packets (`Medium::Ip`); the device adds the flow's Ethernet header, fixed
//! at set-up from the FIB, so smoltcp never sends ARP (which the flow's template would refuse).
//! Transmit is zero-copy into the TX data area: a token exists only while a TX buffer is free
//! and no frame is waiting for FIFO room, so smoltcp never emits more than the channel holds —
//! a segment it cannot send now stays in its own buffer and goes on the next poll, instead of
//! being dropped in the channel. Receive is zero-copy out of the RX data area; the buffer goes
//! back to the driver when smoltcp is done with the packet.

use std::collections::VecDeque;

use nemflow_proto::Fib;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::channel::{FlowChannels, TxHalf, ETH_HEADER};
use crate::error::Result;

/// IPv4 ethertype.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// Replies smoltcp makes while processing a received frame (a challenge ACK, an RST) when no TX
/// buffer is free are kept in private memory, at most this many; beyond it they are dropped
/// and counted (TCP recovers from a lost ACK).
const MAX_OVERFLOW: usize = 16;

/// What the device counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Frames received and handed to smoltcp.
    pub rx_frames: u64,
    /// Frames received that were not IPv4 over Ethernet (dropped).
    pub rx_not_ipv4: u64,
    /// Invalid iorecs on the RX channel (discarded by rbuf).
    pub rx_invalid_iorecs: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Times smoltcp wanted to send and every TX buffer was in flight (it sent later).
    pub tx_waits: u64,
    /// Replies kept in private memory for lack of a TX buffer.
    pub tx_overflow: u64,
    /// Replies dropped: the private queue was full too.
    pub tx_overflow_dropped: u64,
    /// RST segments received.
    pub rx_resets: u64,
    /// FIN segments received.
    pub rx_fins: u64,
}

/// A flow's channels as a smoltcp device.
#[derive(Debug)]
pub(crate) struct ChannelDevice {
    chan: FlowChannels,
    eth: [u8; ETH_HEADER],
    mtu: usize,
    /// Frames to receive before the channel's (the SYN the flow manager handed over).
    injected: VecDeque<Vec<u8>>,
    /// Frames built while no TX buffer was free, in order.
    overflow: VecDeque<Vec<u8>>,
    /// smoltcp was refused a token since the last check: wake on TX progress.
    tx_blocked: bool,
    /// The channel failed: reported by the next stream operation.
    error: Option<crate::Error>,
    counters: DeviceCounters,
}

impl ChannelDevice {
    /// The device over `chan`: frames go to the FIB's next hop.
    pub(crate) fn new(chan: FlowChannels, next_hop_mac: [u8; 6]) -> Self {
        let fib: &Fib = chan.fib();
        let mut eth = [0u8; ETH_HEADER];
        eth[..6].copy_from_slice(&next_hop_mac);
        eth[6..12].copy_from_slice(&fib.src_mac);
        eth[12..].copy_from_slice(&ETHERTYPE_IPV4);
        let mtu = usize::from(fib.mtu).min(chan.max_frame_len() - ETH_HEADER);
        ChannelDevice {
            chan,
            eth,
            mtu,
            injected: VecDeque::new(),
            overflow: VecDeque::new(),
            tx_blocked: false,
            error: None,
            counters: DeviceCounters::default(),
        }
    }

    /// The channels.
    pub(crate) fn channels(&self) -> &FlowChannels {
        &self.chan
    }

    /// The channels, mutably (waits).
    pub(crate) fn channels_mut(&mut self) -> &mut FlowChannels {
        &mut self.chan
    }

    /// The IP MTU smoltcp is told.
    pub(crate) fn mtu(&self) -> usize {
        self.mtu
    }

    /// Queues a whole Ethernet frame to be received before the channel's.
    pub(crate) fn inject(&mut self, frame: Vec<u8>) {
        self.injected.push_back(frame);
    }

    /// Counters.
    pub(crate) fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Whether smoltcp was refused a TX token since the last call (and clears it).
    pub(crate) fn take_tx_blocked(&mut self) -> bool {
        std::mem::take(&mut self.tx_blocked)
    }

    /// The first channel error met inside a token, if any (and clears it).
    pub(crate) fn take_error(&mut self) -> Option<crate::Error> {
        self.error.take()
    }

    /// Pushes frames waiting for FIFO room and replies kept for lack of a buffer; `Ok(true)`
    /// when nothing is left waiting.
    pub(crate) fn flush(&mut self) -> Result<bool> {
        let (mut tx, _) = self.chan.halves();
        if !tx.flush()? {
            return Ok(false);
        }
        while let Some(frame) = self.overflow.front() {
            let Some(ext) = tx.alloc(frame.len())? else {
                return Ok(false);
            };
            tx.buf_mut(ext)?.copy_from_slice(frame);
            tx.push(ext)?;
            self.counters.tx_frames += 1;
            self.overflow.pop_front();
        }
        Ok(tx.pending() == 0)
    }

    /// Whether every frame handed to the driver has been sent (all TX buffers are back).
    pub(crate) fn drained(&mut self) -> Result<bool> {
        if !self.flush()? {
            return Ok(false);
        }
        let (total, free) = self.chan.halves().0.buffers()?;
        Ok(total == free)
    }

    /// Whether a TX token can be had now (a buffer is free and nothing waits before it).
    fn tx_room(&mut self) -> bool {
        match self.flush() {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                self.error.get_or_insert(e);
                return false;
            }
        }
        match self.chan.halves().0.buffers() {
            Ok((_, free)) => free > 0,
            Err(e) => {
                self.error.get_or_insert(e);
                false
            }
        }
    }
}

/// A received frame for smoltcp (IPv4 over Ethernet: checked before the token is made).
pub(crate) struct RxToken<'a> {
    rx: &'a mut nemflow_rbuf::rmm::Consumer,
    frame: Frame,
}

enum Frame {
    Channel(nemflow_rbuf::rmm::RxPacket),
    Owned(Vec<u8>),
}

/// A transmit buffer for smoltcp.
pub(crate) struct TxToken<'a> {
    tx: TxHalf<'a>,
    eth: [u8; ETH_HEADER],
    overflow: &'a mut VecDeque<Vec<u8>>,
    error: &'a mut Option<crate::Error>,
    counters: &'a mut DeviceCounters,
}

/// Whether an Ethernet frame carries IPv4 (counted), noting an RST or FIN segment in it.
fn check_frame(frame: &[u8], counters: &mut DeviceCounters) -> bool {
    if frame.len() <= ETH_HEADER + 20 || frame[12..14] != ETHERTYPE_IPV4 {
        counters.rx_not_ipv4 += 1;
        return false;
    }
    counters.rx_frames += 1;
    let ip = &frame[ETH_HEADER..];
    // The TCP flags byte, for telling a reset from a close; smoltcp validates everything.
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] == 6 {
        if let Some(flags) = ip.get(ihl + 13) {
            counters.rx_resets += u64::from(flags & 0x04 != 0);
            counters.rx_fins += u64::from(flags & 0x01 != 0);
        }
    }
    true
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        match self.frame {
            Frame::Owned(v) => f(v.get(ETH_HEADER..).unwrap_or_default()),
            Frame::Channel(p) => {
                let r = f(self.rx.payload(&p).get(ETH_HEADER..).unwrap_or_default());
                // Fails only on a broken channel, which the next receive reports.
                let _ = self.rx.repost(p);
                r
            }
        }
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(mut self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let total = len + ETH_HEADER;
        let ext = match self.tx.alloc(total) {
            Ok(e) => e,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        };
        if let Some(ext) = ext {
            if let Ok(buf) = self.tx.buf_mut(ext) {
                buf[..ETH_HEADER].copy_from_slice(&self.eth);
                let r = f(&mut buf[ETH_HEADER..total]);
                match self.tx.push(ext) {
                    Ok(()) => self.counters.tx_frames += 1,
                    Err(e) => {
                        self.error.get_or_insert(e);
                    }
                }
                return r;
            }
        }
        // No buffer (only for replies made while receiving): keep it in private memory.
        let mut v = vec![0u8; total];
        v[..ETH_HEADER].copy_from_slice(&self.eth);
        let r = f(&mut v[ETH_HEADER..]);
        if self.overflow.len() < MAX_OVERFLOW {
            self.counters.tx_overflow += 1;
            self.overflow.push_back(v);
        } else {
            self.counters.tx_overflow_dropped += 1;
        }
        r
    }
}

impl phy::Device for ChannelDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = loop {
            if let Some(v) = self.injected.pop_front() {
                if check_frame(&v, &mut self.counters) {
                    break Frame::Owned(v);
                }
                continue;
            }
            let (_, rx) = self.chan.halves();
            match rx.pop() {
                Ok(Some(p)) => {
                    if check_frame(rx.payload(&p), &mut self.counters) {
                        break Frame::Channel(p);
                    }
                    let _ = rx.repost(p);
                }
                Ok(None) => return None,
                // Discarded and counted by rbuf; the FIFO is bounded, so is this loop.
                Err(nemflow_rbuf::Error::InvalidIoRec(_)) => {
                    self.counters.rx_invalid_iorecs += 1;
                }
                Err(e) => {
                    self.error.get_or_insert(e.into());
                    return None;
                }
            }
        };
        let (tx, rx) = self.chan.halves();
        Some((
            RxToken { rx, frame },
            TxToken {
                tx,
                eth: self.eth,
                overflow: &mut self.overflow,
                error: &mut self.error,
                counters: &mut self.counters,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.tx_room() {
            self.tx_blocked = true;
            self.counters.tx_waits += 1;
            return None;
        }
        let (tx, _) = self.chan.halves();
        Some(TxToken {
            tx,
            eth: self.eth,
            overflow: &mut self.overflow,
            error: &mut self.error,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}
