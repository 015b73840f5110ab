//! A flow's two channel endpoints and its FIB: the bottom layer of every stack.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nemflow_proto::Fib;
use nemflow_rbuf::{rmm, tmm, ChannelFds, ChannelSpec, Extent, IoRec};
use smallvec::smallvec;

use crate::counters::{ChannelCounters, StackCounters};
use crate::error::{Error, Result};
use crate::layer::{Layer, Now, RxBuf, RxPacket, TxDst, TxPacket, Up};
use crate::liveness::{self, Liveness, PROBE_INTERVAL};

/// Ethernet header bytes (no VLAN tag).
pub(crate) const ETH_HEADER: usize = 14;

/// What the flow manager hands an application for one flow, attached: the transmit channel's
/// producer (TMM, the app chooses buffers), the receive channel's consumer (RMM, the app posts
/// empty buffers, which happens here), and the FIB.
#[derive(Debug)]
pub struct FlowChannels {
    fib: Fib,
    tx: tmm::Producer,
    rx: rmm::Consumer,
    /// Largest frame one TX buffer carries.
    max_frame: usize,
    /// Iorecs of a datagram that did not fit on the full FIFO yet, in order.
    pending: VecDeque<IoRec>,
    counters: ChannelCounters,
    /// The flow's connection to the flow manager, watched by the waits (`None`: not watched).
    liveness: Option<Liveness>,
}

impl FlowChannels {
    /// Attaches both channels: `tx` read-write (the app is the TMM producer), `rx` read-only data
    /// (the app is the RMM consumer), and posts every RX buffer for the driver to fill.
    pub fn attach(
        fib: Fib,
        tx_spec: &ChannelSpec,
        tx_fds: ChannelFds,
        rx_spec: &ChannelSpec,
        rx_fds: ChannelFds,
    ) -> Result<Self> {
        let tx = tmm::Producer::attach(tx_spec, tx_fds)?;
        let rx = rmm::Consumer::attach(rx_spec, rx_fds)?;
        Self::from_endpoints(fib, tx, rx)
    }

    /// Attaches the channels of a flow the flow manager's client opened (its fds checked as
    /// coming from their creator, [`nemflow_flowmgr::client::Flow::attach`]), or takes the
    /// endpoints it attached already when the flow was opened on a reserved pair.
    pub fn from_flow(flow: nemflow_flowmgr::client::Flow) -> Result<Self> {
        let fib = flow.fib.clone();
        let (tx, rx) = flow.attach()?;
        Self::from_endpoints(fib, tx, rx)
    }

    /// Wraps endpoints already attached (e.g. by the flow manager's client, whose `Flow::attach`
    /// returns them with the RX buffers posted). Posts any RX buffer still free.
    pub fn from_endpoints(fib: Fib, tx: tmm::Producer, mut rx: rmm::Consumer) -> Result<Self> {
        rx.post_free()?;
        let max_frame = tx.buffer_bytes();
        if max_frame <= ETH_HEADER {
            return Err(Error::InvalidSetup(format!(
                "TX channel carries frames of at most {max_frame} bytes"
            )));
        }
        Ok(FlowChannels {
            fib,
            tx,
            rx,
            max_frame,
            pending: VecDeque::new(),
            counters: ChannelCounters::default(),
            liveness: None,
        })
    }

    /// The flow information block.
    pub fn fib(&self) -> &Fib {
        &self.fib
    }

    /// Largest frame (Ethernet header included) one TX buffer carries.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    /// Frames waiting for room on the TX FIFO.
    pub fn pending_frames(&self) -> usize {
        self.pending.len()
    }

    /// Pushes waiting frames; `Ok(true)` when none is left.
    pub fn flush(&mut self) -> Result<bool> {
        self.halves().0.flush()
    }

    /// The transmit and receive sides borrowed apart (the TCP device hands smoltcp a receive
    /// token and a transmit token at once).
    pub(crate) fn halves(&mut self) -> (TxHalf<'_>, &mut rmm::Consumer) {
        (
            TxHalf {
                tx: &mut self.tx,
                pending: &mut self.pending,
                counters: &mut self.counters,
                max_frame: self.max_frame,
            },
            &mut self.rx,
        )
    }

    /// Blocks until a frame may be waiting on the RX channel, or `timeout` (`Err(TimedOut)`).
    /// With a [`Liveness`] set, also wakes when the flow's connection closes, and fails with
    /// [`Error::Revoked`] once the flow is revoked.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<()> {
        let Some(live) = self.liveness.as_mut() else {
            return match self.rx.wait_ready(timeout) {
                Err(nemflow_rbuf::Error::Timeout) => Err(Error::TimedOut),
                r => Ok(r?),
            };
        };
        live.check()?;
        if self.rx.prepare_wait()? {
            return Ok(());
        }
        let woke = liveness::poll_with(self.rx.as_fd(), None, Some(live), watched(live, timeout));
        self.rx.finish_wait();
        let woke = woke?;
        live.check()?;
        if woke || self.rx.ready()? {
            Ok(())
        } else {
            Err(Error::TimedOut)
        }
    }

    /// Blocks until the driver made TX progress (room on the FIFO, a buffer back), or `timeout`.
    /// With a [`Liveness`] set, as [`wait_rx`](Self::wait_rx).
    pub fn wait_tx(&mut self, timeout: Duration) -> Result<()> {
        let Some(live) = self.liveness.as_mut() else {
            return match self.tx.wait_ready(timeout) {
                Err(nemflow_rbuf::Error::Timeout) => Err(Error::TimedOut),
                r => Ok(r?),
            };
        };
        live.check()?;
        if self.tx.prepare_wait()? {
            return Ok(());
        }
        let woke = liveness::poll_with(self.tx.as_fd(), None, Some(live), watched(live, timeout));
        self.tx.finish_wait();
        let woke = woke?;
        live.check()?;
        if woke || self.tx.ready()? {
            Ok(())
        } else {
            Err(Error::TimedOut)
        }
    }

    /// Ties the flow to its connection to the flow manager: waits watch it, and calls fail
    /// with [`Error::Revoked`] once the flow is revoked (see [`crate::liveness`]).
    pub fn set_liveness(&mut self, liveness: Liveness) {
        self.liveness = Some(liveness);
    }

    /// The flow's watched connection, if one is set.
    pub fn liveness(&self) -> Option<&Liveness> {
        self.liveness.as_ref()
    }

    /// For event loops: poll this fd too (any events; a hang-up is always reported), then
    /// call [`check_liveness`](Self::check_liveness). `None` when no connection is watched or
    /// it already closed.
    pub fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.liveness.as_ref().and_then(Liveness::fd)
    }

    /// `Err(Revoked)` once the flow is revoked (a system call: the connection is looked at).
    pub fn check_liveness(&mut self) -> Result<()> {
        self.liveness.as_mut().map_or(Ok(()), Liveness::check)
    }

    /// [`check_liveness`](Self::check_liveness) at most once per
    /// [`crate::liveness::CHECK_INTERVAL`]: for calls that would block in non-blocking mode.
    pub fn check_liveness_cheap(&mut self) -> Result<()> {
        self.liveness.as_mut().map_or(Ok(()), Liveness::check_cheap)
    }

    /// For event loops (receive): arms the RX eventfd and says whether a frame is already there
    /// (`true`: do not sleep). On `false`, wait for [`AsFd::as_fd`] to be readable, then call
    /// [`finish_wait`](Self::finish_wait).
    pub fn prepare_wait(&mut self) -> Result<bool> {
        Ok(self.rx.prepare_wait()?)
    }

    /// Disarms the RX wake-up and drains the eventfd after a sleep.
    pub fn finish_wait(&mut self) {
        self.rx.finish_wait();
    }

    /// For event loops (transmit): as [`prepare_wait`](Self::prepare_wait), for TX progress on
    /// [`tx_fd`](Self::tx_fd).
    pub fn prepare_tx_wait(&mut self) -> Result<bool> {
        Ok(self.tx.prepare_wait()?)
    }

    /// Disarms the TX wake-up after a sleep.
    pub fn finish_tx_wait(&mut self) {
        self.tx.finish_wait();
    }

    /// Readable when the driver made TX progress (after [`prepare_tx_wait`](Self::prepare_tx_wait)).
    pub fn tx_fd(&self) -> BorrowedFd<'_> {
        self.tx.as_fd()
    }

    /// The TX endpoint's own counters (rbuf's view).
    pub fn tx_channel_counters(&self) -> nemflow_rbuf::Counters {
        self.tx.counters()
    }

    /// The RX endpoint's own counters (rbuf's view).
    pub fn rx_channel_counters(&self) -> nemflow_rbuf::Counters {
        self.rx.counters()
    }
}

/// How long a watched wait may sleep: an orphaned flow's probe is due every [`PROBE_INTERVAL`].
fn watched(live: &Liveness, timeout: Duration) -> Duration {
    match live.fd() {
        Some(_) => timeout,
        None => timeout.min(PROBE_INTERVAL),
    }
}

/// The transmit side of a flow's channels: allocate a buffer, fill it, push it (frames that
/// find the FIFO full wait in order in `pending`).
#[derive(Debug)]
pub(crate) struct TxHalf<'a> {
    tx: &'a mut tmm::Producer,
    pending: &'a mut VecDeque<IoRec>,
    counters: &'a mut ChannelCounters,
    max_frame: usize,
}

impl TxHalf<'_> {
    /// Pushes waiting frames; `Ok(true)` when none is left.
    pub(crate) fn flush(&mut self) -> Result<bool> {
        while !self.pending.is_empty() {
            let (a, b) = self.pending.as_slices();
            let batch = if a.is_empty() { b } else { a };
            let n = self.tx.push_batch(batch)?;
            if n == 0 {
                self.counters.tx_fifo_full += 1;
                return Ok(false);
            }
            for rec in self.pending.drain(..n) {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += rec.total_len();
            }
        }
        Ok(true)
    }

    /// Frames waiting for room on the FIFO.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A buffer for a frame of `len` bytes, if one is free (or comes back) now.
    pub(crate) fn alloc(&mut self, len: usize) -> Result<Option<Extent>> {
        if len > self.max_frame {
            return Err(Error::TooLong {
                len,
                max: self.max_frame,
            });
        }
        Ok(self.tx.alloc(len)?)
    }

    /// The writable bytes of an allocated buffer.
    pub(crate) fn buf_mut(&mut self, extent: Extent) -> Result<&mut [u8]> {
        Ok(self.tx.buf_mut(extent)?)
    }

    /// Hands a filled buffer to the driver (after any frames still waiting).
    pub(crate) fn push(&mut self, extent: Extent) -> Result<()> {
        self.pending.push_back(IoRec::single(extent, 0));
        self.flush()?;
        Ok(())
    }

    /// Buffers in all, and free now (after taking back what the driver returned).
    pub(crate) fn buffers(&mut self) -> Result<(usize, usize)> {
        self.tx.reclaim()?;
        Ok(self.tx.buffers())
    }
}

impl AsFd for FlowChannels {
    /// Readable when the driver pushed a frame (after [`FlowChannels::prepare_wait`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

impl Layer for FlowChannels {
    fn max_data_len(&self, _dst: &TxDst) -> usize {
        self.max_frame
    }

    fn frames_needed(&self, _len: usize, _dst: &TxDst) -> usize {
        1
    }

    fn tx_free(&mut self) -> Result<usize> {
        self.tx.reclaim()?;
        Ok(self.tx.buffers().1)
    }

    fn tx_buffers(&self) -> usize {
        self.tx.buffers().0
    }

    fn alloc(&mut self, len: usize, dst: TxDst) -> Result<Option<TxPacket>> {
        if len > self.max_frame {
            return Err(Error::TooLong {
                len,
                max: self.max_frame,
            });
        }
        Ok(self.tx.alloc(len)?.map(|e| TxPacket {
            frames: smallvec![e],
            first: 0,
            rest: 0,
            dst,
        }))
    }

    fn free(&mut self, pkt: TxPacket) {
        for e in pkt.frames {
            // Cannot fail for a buffer this producer allocated and did not push.
            let _ = self.tx.free(e);
        }
    }

    fn tx_bytes_mut(&mut self, extent: Extent) -> Result<&mut [u8]> {
        Ok(self.tx.buf_mut(extent)?)
    }

    fn push(&mut self, pkt: TxPacket) -> Result<()> {
        // Frames of an earlier datagram still waiting go first; whatever does not fit now goes
        // when the driver makes room (`flush`).
        self.pending
            .extend(pkt.frames.iter().map(|e| IoRec::single(*e, 0)));
        self.flush()?;
        Ok(())
    }

    fn pop(&mut self, _now: &mut Now<'_>) -> Result<Option<Up>> {
        loop {
            match self.rx.pop() {
                Ok(Some(p)) => {
                    let len = p.len();
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    return Ok(Some(Up::Packet(RxPacket {
                        buf: RxBuf::Frame(p),
                        start: 0,
                        end: len,
                        meta: Default::default(),
                    })));
                }
                Ok(None) => return Ok(None),
                // Discarded and counted by rbuf; the FIFO is bounded, so this loop is too.
                Err(nemflow_rbuf::Error::InvalidIoRec(_)) => self.counters.rx_invalid_iorecs += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn rx_bytes<'a>(&'a self, pkt: &'a RxPacket) -> &'a [u8] {
        match &pkt.buf {
            RxBuf::Frame(p) => self.rx.payload(p),
            RxBuf::Owned(v) => v,
        }
    }

    fn release(&mut self, pkt: RxPacket) {
        if let RxBuf::Frame(p) = pkt.buf {
            // Fails only on a broken channel, which the next pop reports.
            let _ = self.rx.repost(p);
        }
    }

    fn rx_ready(&mut self) -> Result<bool> {
        Ok(self.rx.ready()?)
    }

    fn counters(&self, out: &mut StackCounters) {
        out.channel = self.counters;
    }
}
