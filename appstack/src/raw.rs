//! A raw-ethertype flow: Ethernet alone over the channels. Frames of one ethertype, sent from the
//! flow's MAC to a given MAC (or the FIB's next hop), received whole (payload after the header).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nemflow_rbuf::{ChannelFds, ChannelSpec};

use crate::channel::FlowChannels;
use crate::counters::{FlowCounters, StackCounters};
use crate::error::{Error, Result};
use crate::ethernet::Ethernet;
use crate::layer::{Layer, Now, RxPacket, TxDst, TxPacket, Up};
use crate::wait::{self, Mode};

/// One raw-ethertype flow.
#[derive(Debug)]
pub struct RawFlow {
    stack: Ethernet<FlowChannels>,
    default_dst: Option<[u8; 6]>,
    mode: Mode,
    counters: FlowCounters,
}

impl RawFlow {
    /// Builds the flow for `ethertype` (the FIB does not carry it: the flow manager's `OpenFlow`
    /// named it). Frames go to the FIB's next-hop MAC unless [`RawFlow::send_to`] names one.
    pub fn new(channels: FlowChannels, ethertype: u16) -> Self {
        let fib = channels.fib().clone();
        RawFlow {
            stack: Ethernet::new(channels, fib.src_mac, fib.next_hop_mac, ethertype),
            default_dst: fib.next_hop_mac,
            mode: Mode::default(),
            counters: FlowCounters::default(),
        }
    }

    /// [`FlowChannels::attach`] then [`RawFlow::new`].
    pub fn attach(
        fib: nemflow_proto::Fib,
        ethertype: u16,
        tx_spec: &ChannelSpec,
        tx_fds: ChannelFds,
        rx_spec: &ChannelSpec,
        rx_fds: ChannelFds,
    ) -> Result<Self> {
        let ch = FlowChannels::attach(fib, tx_spec, tx_fds, rx_spec, rx_fds)?;
        Ok(RawFlow::new(ch, ethertype))
    }

    /// Largest payload of one frame.
    pub fn max_payload(&self) -> usize {
        let mtu = usize::from(self.stack.lower().fib().mtu);
        self.stack.max_data_len(&TxDst::default()).min(mtu)
    }

    /// The header template (14 bytes).
    pub fn header_template(&self) -> &[u8] {
        self.stack.template()
    }

    /// The channels.
    pub fn channels(&self) -> &FlowChannels {
        self.stack.lower()
    }

    /// All counters (Ethernet and channel sections).
    pub fn counters(&self) -> StackCounters {
        let mut c = StackCounters::default();
        self.stack.counters(&mut c);
        c.flow = self.counters;
        c
    }

    /// Non-blocking mode.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.mode.nonblocking = nonblocking;
    }

    /// Read timeout for blocking receives.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.read_timeout = timeout;
    }

    /// Write timeout for blocking sends.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.write_timeout = timeout;
    }

    fn alloc(&mut self, len: usize, dst: TxDst) -> Result<TxPacket> {
        let max = self.max_payload();
        if len > max {
            return Err(Error::TooLong { len, max });
        }
        let deadline = wait::deadline(self.mode.write_timeout);
        loop {
            if self.stack.lower_mut().flush()? {
                if let Some(p) = self.stack.alloc(len, dst)? {
                    return Ok(p);
                }
            }
            if self.mode.nonblocking {
                return Err(Error::WouldBlock);
            }
            wait::wait_tx(self.stack.lower_mut(), deadline, 1)?;
        }
    }

    /// A zero-copy TX buffer for a frame of `len` payload bytes to `dst_mac`.
    pub fn tx_buf(&mut self, len: usize, dst_mac: [u8; 6]) -> Result<RawTxBuf<'_>> {
        let pkt = self.alloc(
            len,
            TxDst {
                mac: Some(dst_mac),
                ..TxDst::default()
            },
        )?;
        Ok(RawTxBuf {
            flow: self,
            pkt: Some(pkt),
        })
    }

    /// Sends one frame with `payload` to `dst_mac`.
    pub fn send_to(&mut self, payload: &[u8], dst_mac: [u8; 6]) -> Result<usize> {
        let mut b = self.tx_buf(payload.len(), dst_mac)?;
        if let Some(buf) = b.payload_mut() {
            buf.copy_from_slice(payload);
        }
        b.send()?;
        Ok(payload.len())
    }

    /// Sends one frame with `payload` to the FIB's next hop.
    pub fn send(&mut self, payload: &[u8]) -> Result<usize> {
        let dst = self.default_dst.ok_or(Error::NotConnected)?;
        self.send_to(payload, dst)
    }

    fn poll_rx(&mut self) -> Result<Option<RxPacket>> {
        let clock = std::time::Instant::now;
        let mut now = Now::new(&clock);
        match self.stack.pop(&mut now)? {
            Some(Up::Packet(p)) => {
                self.counters.rx_delivered += 1;
                self.counters.rx_bytes += p.len() as u64;
                Ok(Some(p))
            }
            // Ethernet alone produces no error reports.
            Some(Up::Icmp(_)) | None => Ok(None),
        }
    }

    /// Receives the next frame zero-copy (blocking unless non-blocking).
    pub fn recv_frame(&mut self) -> Result<RawFrame<'_>> {
        let deadline = wait::deadline(self.mode.read_timeout);
        let pkt = loop {
            if let Some(p) = self.poll_rx()? {
                break p;
            }
            if self.mode.nonblocking {
                return Err(Error::WouldBlock);
            }
            wait::wait_rx(self.stack.lower_mut(), deadline)?;
        };
        Ok(RawFrame {
            flow: self,
            pkt: Some(pkt),
        })
    }

    /// Receives the next frame's payload into `buf`: bytes copied and the source MAC.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(usize, [u8; 6])> {
        let f = self.recv_frame()?;
        let p = f.payload();
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        let truncated = n < p.len();
        let src = f.src_mac();
        drop(f);
        if truncated {
            self.counters.rx_truncated += 1;
        }
        Ok((n, src))
    }

    /// For event loops: see [`crate::UdpFlow::prepare_wait`].
    pub fn prepare_wait(&mut self) -> Result<bool> {
        self.stack.lower_mut().prepare_wait()
    }

    /// Disarms the RX wake-up after a sleep.
    pub fn finish_wait(&mut self) {
        self.stack.lower_mut().finish_wait();
    }
}

impl AsFd for RawFlow {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stack.lower().as_fd()
    }
}

/// A raw frame being built in the TX data area (the Ethernet header is written on send).
#[derive(Debug)]
pub struct RawTxBuf<'f> {
    flow: &'f mut RawFlow,
    pkt: Option<TxPacket>,
}

impl RawTxBuf<'_> {
    /// The payload, writable.
    pub fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let e = self.pkt.as_ref()?.segment(0)?;
        self.flow.stack.tx_bytes_mut(e).ok()
    }

    /// Writes the header and hands the frame to the driver.
    pub fn send(mut self) -> Result<()> {
        match self.pkt.take() {
            Some(p) => {
                self.flow.stack.push(p)?;
                if !self.flow.mode.nonblocking {
                    let deadline = wait::deadline(self.flow.mode.write_timeout);
                    while !self.flow.stack.lower_mut().flush()? {
                        match wait::wait_tx(self.flow.stack.lower_mut(), deadline, 1) {
                            Err(Error::TimedOut) => break,
                            r => r?,
                        }
                    }
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for RawTxBuf<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pkt.take() {
            self.flow.stack.free(p);
        }
    }
}

/// A received raw frame, borrowed from the RX data area; dropping it hands the buffer back.
#[derive(Debug)]
pub struct RawFrame<'f> {
    flow: &'f mut RawFlow,
    pkt: Option<RxPacket>,
}

impl RawFrame<'_> {
    /// The payload (after the Ethernet header).
    pub fn payload(&self) -> &[u8] {
        match &self.pkt {
            Some(p) => self
                .flow
                .stack
                .rx_bytes(p)
                .get(p.start..p.end)
                .unwrap_or_default(),
            None => &[],
        }
    }

    /// The source MAC.
    pub fn src_mac(&self) -> [u8; 6] {
        self.pkt.as_ref().map_or([0; 6], |p| p.meta.src_mac)
    }
}

impl Drop for RawFrame<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pkt.take() {
            self.flow.stack.release(p);
        }
    }
}
