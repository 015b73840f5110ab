//! The port the driver's loop is written against: DPDK in production, memory in tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dpdk::{EthPort, Mbuf};

/// A frame buffer owned by the driver.
pub trait Frame {
    /// The frame's bytes.
    fn bytes(&self) -> &[u8];
    /// The frame's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Whether the frame spans several buffers (then `bytes` is only the first).
    fn is_segmented(&self) -> bool {
        false
    }
}

/// Port counters, in the shape of `rte_eth_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames the NIC dropped because the receive queue was full.
    pub rx_missed: u64,
    /// Erroneous frames received.
    pub rx_errors: u64,
    /// Frames the port failed to transmit.
    pub tx_errors: u64,
    /// Receive buffer allocation failures.
    pub rx_nombuf: u64,
}

/// One receive and one transmit queue of a NIC.
pub trait Port {
    /// The buffer type frames live in.
    type Frame: Frame;

    /// Appends up to `max` received frames to `out`; returns how many.
    fn recv(&mut self, out: &mut Vec<Self::Frame>, max: usize) -> usize;

    /// A transmit buffer holding `len` bytes (contents unspecified), or `None` when out of
    /// buffers or `len` is too large.
    fn alloc(&mut self, len: usize) -> Option<Self::Frame>;

    /// Sends frames from the front of `frames`, removing those the port accepted; returns how
    /// many. Frames the port could not take stay in `frames`, in order.
    fn send(&mut self, frames: &mut Vec<Self::Frame>) -> usize;

    /// The port's MAC address.
    fn mac(&self) -> [u8; 6];

    /// Whether the link is up.
    fn link_up(&self) -> bool;

    /// Counters.
    fn stats(&self) -> PortStats;

    /// Packet buffers in use now, when the port has a pool.
    fn buffers_in_use(&self) -> Option<u32> {
        None
    }
}

impl Frame for Mbuf<'_> {
    fn bytes(&self) -> &[u8] {
        self.data()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }

    fn is_segmented(&self) -> bool {
        self.segments() > 1
    }
}

impl<'eal> Port for EthPort<'eal> {
    type Frame = Mbuf<'eal>;

    fn recv(&mut self, out: &mut Vec<Mbuf<'eal>>, max: usize) -> usize {
        self.rx_burst(out, max)
    }

    fn alloc(&mut self, len: usize) -> Option<Mbuf<'eal>> {
        let mut m = self.pool().alloc()?;
        m.append(len)?;
        Some(m)
    }

    fn send(&mut self, frames: &mut Vec<Mbuf<'eal>>) -> usize {
        self.tx_burst(frames)
    }

    fn mac(&self) -> [u8; 6] {
        EthPort::mac(self)
    }

    fn link_up(&self) -> bool {
        self.link().up
    }

    fn stats(&self) -> PortStats {
        EthPort::stats(self)
    }

    fn buffers_in_use(&self) -> Option<u32> {
        Some(self.pool().in_use())
    }
}

impl Frame for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// The wire of a [`MemPort`], shared with the test that plays the other end.
#[derive(Debug, Default)]
struct Wire {
    /// Frames waiting to be received by the port.
    inbound: VecDeque<Vec<u8>>,
    /// Frames the port sent.
    outbound: Vec<Vec<u8>>,
    /// Frames the port may still send before it reports "queue full"; `None` = unlimited.
    tx_credit: Option<usize>,
    /// Buffers the port may still allocate; `None` = unlimited.
    buffers: Option<usize>,
    link_up: bool,
    stats: PortStats,
}

/// An in-memory port for tests: frames injected by a [`MemPeer`] are received, frames sent are
/// collected for it.
#[derive(Debug)]
pub struct MemPort {
    wire: Arc<Mutex<Wire>>,
    mac: [u8; 6],
    max_frame: usize,
}

/// The far end of a [`MemPort`].
#[derive(Debug, Clone)]
pub struct MemPeer {
    wire: Arc<Mutex<Wire>>,
}

impl MemPort {
    /// A port with `mac`, link up, unlimited buffers and transmit queue, and its peer.
    pub fn new(mac: [u8; 6]) -> (Self, MemPeer) {
        let wire = Arc::new(Mutex::new(Wire {
            link_up: true,
            ..Wire::default()
        }));
        let port = Self {
            wire: Arc::clone(&wire),
            mac,
            max_frame: 9216,
        };
        (port, MemPeer { wire })
    }

    fn wire(&self) -> MutexGuard<'_, Wire> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.wire.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemPeer {
    fn wire(&self) -> MutexGuard<'_, Wire> {
        self.wire.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a frame on the wire towards the port.
    pub fn inject(&self, frame: impl Into<Vec<u8>>) {
        self.wire().inbound.push_back(frame.into());
    }

    /// Takes every frame the port has sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.wire().outbound)
    }

    /// Limits how many more frames the port can send (`None`: unlimited).
    pub fn set_tx_credit(&self, credit: Option<usize>) {
        self.wire().tx_credit = credit;
    }

    /// Limits how many more buffers the port can allocate (`None`: unlimited).
    pub fn set_buffers(&self, buffers: Option<usize>) {
        self.wire().buffers = buffers;
    }

    /// Sets the link state.
    pub fn set_link(&self, up: bool) {
        self.wire().link_up = up;
    }

    /// Frames injected but not yet received by the port.
    pub fn pending_inbound(&self) -> usize {
        self.wire().inbound.len()
    }
}

impl Port for MemPort {
    type Frame = Vec<u8>;

    fn recv(&mut self, out: &mut Vec<Vec<u8>>, max: usize) -> usize {
        let mut wire = self.wire();
        let n = max.min(wire.inbound.len());
        for _ in 0..n {
            if let Some(frame) = wire.inbound.pop_front() {
                wire.stats.rx_packets += 1;
                wire.stats.rx_bytes += frame.len() as u64;
                out.push(frame);
            }
        }
        n
    }

    fn alloc(&mut self, len: usize) -> Option<Vec<u8>> {
        if len > self.max_frame {
            return None;
        }
        let mut wire = self.wire();
        if let Some(left) = wire.buffers.as_mut() {
            if *left == 0 {
                return None;
            }
            *left -= 1;
        }
        Some(vec![0; len])
    }

    fn send(&mut self, frames: &mut Vec<Vec<u8>>) -> usize {
        let mut wire = self.wire();
        let n = wire.tx_credit.map_or(frames.len(), |c| c.min(frames.len()));
        if let Some(c) = wire.tx_credit.as_mut() {
            *c -= n;
        }
        for frame in frames.drain(..n) {
            wire.stats.tx_packets += 1;
            wire.stats.tx_bytes += frame.len() as u64;
            wire.outbound.push(frame);
        }
        n
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.wire().link_up
    }

    fn stats(&self) -> PortStats {
        self.wire().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_port_moves_frames_both_ways() {
        let (mut port, peer) = MemPort::new([2, 0, 0, 0, 0, 1]);
        peer.inject(vec![1, 2, 3]);
        peer.inject(vec![4]);
        let mut rx = Vec::new();
        assert_eq!(port.recv(&mut rx, 1), 1);
        assert_eq!(rx, vec![vec![1, 2, 3]]);
        assert_eq!(peer.pending_inbound(), 1);

        let mut frame = port.alloc(4).unwrap();
        frame.bytes_mut().copy_from_slice(b"abcd");
        peer.set_tx_credit(Some(1));
        let mut tx = vec![frame, vec![9; 2]];
        assert_eq!(port.send(&mut tx), 1);
        assert_eq!(tx, vec![vec![9; 2]], "unsent frames stay, in order");
        assert_eq!(peer.take_sent(), vec![b"abcd".to_vec()]);
        assert_eq!(port.stats().tx_packets, 1);
        assert_eq!(port.stats().rx_packets, 1);
    }

    #[test]
    fn mem_port_runs_out_of_buffers() {
        let (mut port, peer) = MemPort::new([2, 0, 0, 0, 0, 1]);
        peer.set_buffers(Some(1));
        assert!(port.alloc(10).is_some());
        assert!(port.alloc(10).is_none());
        assert!(port.alloc(100_000).is_none());
    }
}
