//! A UDP flow: the composed stack `Udp<Ipv4<Ethernet<FlowChannels>>>` with a zero-copy API
//! ([`UdpFlow::tx_buf`], [`UdpFlow::recv_datagram`]) and a socket-like convenience API
//! ([`UdpFlow::send`], [`UdpFlow::send_to`], [`UdpFlow::recv`]) on top, blocking or not, with
//! readiness through the RX channel's eventfd for event loops.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nemflow_proto::flow::{ethertype, ip_proto};
use nemflow_proto::Fib;
use nemflow_rbuf::{ChannelFds, ChannelSpec};

use crate::channel::FlowChannels;
use crate::counters::{FlowCounters, StackCounters};
use crate::error::{Error, Result};
use crate::ethernet::Ethernet;
use crate::icmp::{IcmpError, IcmpErrorKind, IcmpReport};
use crate::ipv4::{Ipv4, Ipv4Config, IP_HEADER};
use crate::layer::{Layer, Now, RxMeta, RxPacket, TxDst, TxPacket, Up};
use crate::liveness::Liveness;
use crate::neighbour::{multicast_mac, NeighbourCache, Resolver};
use crate::udp::{Udp, UDP_HEADER};
use crate::wait::{self, Mode};

/// The stack of a UDP flow, bottom to top: channel, Ethernet, IPv4, UDP.
pub type UdpStack = Udp<Ipv4<Ethernet<FlowChannels>>>;

/// Settings of a flow's stack beyond its FIB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// IPv4: TTL, DF, first identification, reassembly limits.
    pub ip: Ipv4Config,
    /// Entries of the neighbour cache (unconnected flows).
    pub neighbour_capacity: usize,
    /// ICMP error events kept for [`UdpFlow::take_error`]; older ones are dropped and counted.
    pub error_queue: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            ip: Ipv4Config {
                initial_id: initial_ip_id(),
                ..Ipv4Config::default()
            },
            neighbour_capacity: 64,
            error_queue: 16,
        }
    }
}

/// A first IP identification that differs between flows and runs.
fn initial_ip_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16) ^ std::process::id()) as u16
}

/// The time source for reassembly timeouts.
type Clock = Box<dyn Fn() -> Instant + Send>;

/// One UDP flow of an application: its own stack over its own channels.
pub struct UdpFlow {
    stack: UdpStack,
    fib: Fib,
    mode: Mode,
    neighbours: NeighbourCache,
    resolver: Option<Box<dyn Resolver>>,
    subnet_broadcast: Ipv4Addr,
    errors: VecDeque<IcmpError>,
    error_capacity: usize,
    /// Connected flows: the error the next `send`/`recv` reports (Linux's `sk_err`).
    pending_error: Option<IcmpError>,
    clock: Clock,
    counters: FlowCounters,
}

impl std::fmt::Debug for UdpFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpFlow")
            .field("fib", &self.fib)
            .field("mode", &self.mode)
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

fn subnet_broadcast(subnet: (Ipv4Addr, u8)) -> Ipv4Addr {
    let prefix = u32::from(subnet.1.min(32));
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ipv4Addr::from(u32::from(subnet.0) | !mask)
}

fn on_link(subnet: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let prefix = u32::from(subnet.1.min(32));
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(subnet.0) & mask
}

impl UdpFlow {
    /// Builds the flow's stack from the FIB its channels carry.
    pub fn new(channels: FlowChannels, cfg: FlowConfig) -> Result<Self> {
        let fib = channels.fib().clone();
        if fib.local.port() == 0 || fib.local.ip().is_unspecified() {
            return Err(Error::InvalidSetup(format!(
                "UDP flow needs a local address and port, FIB has {}",
                fib.local
            )));
        }
        let dst_mac = match fib.remote {
            Some(r) => Some(fib.next_hop_mac.ok_or_else(|| {
                Error::InvalidSetup(format!("connected flow to {r} has no next-hop MAC"))
            })?),
            None => None,
        };
        let eth = Ethernet::new(channels, fib.src_mac, dst_mac, ethertype::IPV4);
        let ip = Ipv4::new(
            eth,
            *fib.local.ip(),
            fib.remote.map(|r| *r.ip()),
            fib.subnet,
            ip_proto::UDP,
            fib.mtu,
            cfg.ip,
        )?;
        let stack = Udp::new(ip, fib.local, fib.remote);
        Ok(UdpFlow {
            stack,
            subnet_broadcast: subnet_broadcast(fib.subnet),
            fib,
            mode: Mode::default(),
            neighbours: NeighbourCache::new(cfg.neighbour_capacity),
            resolver: None,
            errors: VecDeque::new(),
            error_capacity: cfg.error_queue,
            pending_error: None,
            clock: Box::new(Instant::now),
            counters: FlowCounters::default(),
        })
    }

    /// Attaches the channels the flow manager handed over and builds the stack:
    /// [`FlowChannels::attach`] then [`UdpFlow::new`].
    pub fn attach(
        fib: Fib,
        tx_spec: &ChannelSpec,
        tx_fds: ChannelFds,
        rx_spec: &ChannelSpec,
        rx_fds: ChannelFds,
        cfg: FlowConfig,
    ) -> Result<Self> {
        let ch = FlowChannels::attach(fib, tx_spec, tx_fds, rx_spec, rx_fds)?;
        UdpFlow::new(ch, cfg)
    }

    // ---- accessors ----

    /// The flow information block.
    pub fn fib(&self) -> &Fib {
        &self.fib
    }

    /// Local address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.fib.local
    }

    /// The remote, for a connected flow.
    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        self.fib.remote
    }

    /// The channels.
    pub fn channels(&self) -> &FlowChannels {
        self.stack.lower().lower().lower()
    }

    fn chan_mut(&mut self) -> &mut FlowChannels {
        self.stack.lower_mut().lower_mut().lower_mut()
    }

    fn ip(&self) -> &Ipv4<Ethernet<FlowChannels>> {
        self.stack.lower()
    }

    /// The stack (layers, templates, reassembly state).
    pub fn stack(&self) -> &UdpStack {
        &self.stack
    }

    /// The whole header template of this flow (Ethernet, IPv4, UDP: 42 bytes), as emitted at set-up:
    /// lengths, identification and checksums zero; destination fields zero when unconnected.
    pub fn header_template(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(42);
        t.extend_from_slice(self.ip().lower().template());
        t.extend_from_slice(self.ip().template());
        t.extend_from_slice(self.stack.template());
        t
    }

    /// Largest payload a datagram to `dst` (the remote when `None`) carries in one frame.
    pub fn max_unfragmented_payload(&self, dst: Option<Ipv4Addr>) -> usize {
        let d = dst
            .or(self.fib.remote.map(|r| *r.ip()))
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.ip().path_mtu(d) - IP_HEADER - UDP_HEADER
    }

    /// Largest payload one datagram may have (65 507, or the unfragmented size with DF).
    pub fn max_payload(&self) -> usize {
        self.stack.max_data_len(&TxDst::default())
    }

    /// The path MTU towards `dst`.
    pub fn path_mtu(&self, dst: Ipv4Addr) -> usize {
        self.ip().path_mtu(dst)
    }

    /// All counters of the stack.
    pub fn counters(&self) -> StackCounters {
        let mut c = StackCounters::default();
        self.stack.counters(&mut c);
        c.flow = self.counters;
        c
    }

    // ---- modes ----

    /// Non-blocking: `send`/`recv` return `Err(WouldBlock)` instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.mode.nonblocking = nonblocking;
    }

    /// Blocking receive gives up after `timeout` (`None`: waits forever).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.read_timeout = timeout;
    }

    /// Blocking send gives up waiting for TX buffers after `timeout` (`None`: waits forever).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.write_timeout = timeout;
    }

    /// Ties the flow to the connection that opened it ([`crate::liveness`]): blocking calls
    /// also wake when it closes, and `send`/`recv` fail with [`Error::Revoked`] once the flow
    /// is revoked (non-blocking ones notice when they would block). [`crate::apps::open_flow`]
    /// sets it.
    pub fn set_liveness(&mut self, liveness: Liveness) {
        self.chan_mut().set_liveness(liveness);
    }

    /// For event loops: an fd to poll besides the flow's own ([`AsFd`]), the flow's
    /// connection, while it is open; when it reports anything, call
    /// [`check_liveness`](Self::check_liveness).
    pub fn liveness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.channels().liveness_fd()
    }

    /// `Err(Revoked)` once the flow is revoked.
    pub fn check_liveness(&mut self) -> Result<()> {
        self.chan_mut().check_liveness()
    }

    /// Replaces the clock used for reassembly timeouts (tests drive time with it).
    pub fn set_clock(&mut self, clock: impl Fn() -> Instant + Send + 'static) {
        self.clock = Box::new(clock);
    }

    // ---- neighbours ----

    /// Records an on-link neighbour's MAC (unconnected flows).
    pub fn add_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.neighbours.insert(ip, mac);
    }

    /// Forgets a neighbour.
    pub fn remove_neighbour(&mut self, ip: Ipv4Addr) {
        self.neighbours.remove(ip);
    }

    /// The neighbour cache.
    pub fn neighbours(&self) -> &NeighbourCache {
        &self.neighbours
    }

    /// Sets the resolver asked for on-link MACs the cache does not have.
    pub fn set_resolver(&mut self, resolver: Box<dyn Resolver>) {
        self.resolver = Some(resolver);
    }

    fn neighbour(&mut self, ip: Ipv4Addr) -> Result<[u8; 6]> {
        if let Some(m) = self.neighbours.get(ip) {
            return Ok(m);
        }
        let Some(r) = self.resolver.as_mut() else {
            return Err(Error::NoNeighbour(ip));
        };
        match r.resolve(ip) {
            Ok(Some(mac)) => {
                self.neighbours.insert(ip, mac);
                Ok(mac)
            }
            Ok(None) => Err(Error::NoNeighbour(ip)),
            Err(reason) => Err(Error::Resolver { ip, reason }),
        }
    }

    /// Where a datagram to `dst` goes: next-hop MAC, address, port.
    fn route(&mut self, dst: SocketAddrV4) -> Result<TxDst> {
        if let Some(remote) = self.fib.remote {
            if dst != remote {
                return Err(Error::IsConnected { remote, dst });
            }
            return Ok(TxDst::default());
        }
        let ip = *dst.ip();
        if dst.port() == 0 || ip.is_unspecified() {
            return Err(Error::InvalidDestination(dst));
        }
        let mac = if ip.is_broadcast() || ip == self.subnet_broadcast {
            [0xff; 6]
        } else if ip.is_multicast() {
            multicast_mac(ip)
        } else if on_link(self.fib.subnet, ip) {
            self.neighbour(ip)?
        } else {
            match (self.fib.gateway, self.fib.next_hop_mac) {
                (Some(_), Some(mac)) => mac,
                (Some(gw), None) => self.neighbour(gw)?,
                (None, _) => return Err(Error::NoRoute(ip)),
            }
        };
        Ok(TxDst {
            mac: Some(mac),
            ip: Some(ip),
            port: Some(dst.port()),
        })
    }

    // ---- errors ----

    /// The oldest ICMP error event not read yet (both connected and unconnected flows).
    pub fn take_error(&mut self) -> Option<IcmpError> {
        self.errors.pop_front()
    }

    /// ICMP error events waiting.
    pub fn pending_errors(&self) -> usize {
        self.errors.len()
    }

    fn handle_icmp(&mut self, rep: IcmpReport) {
        let dport = u16::from_be_bytes([rep.quoted_l4[2], rep.quoted_l4[3]]);
        let ev = IcmpError {
            kind: rep.kind,
            from: rep.from,
            dst: SocketAddrV4::new(rep.quoted_dst, dport),
        };
        let mut kind = rep.kind;
        if let IcmpErrorKind::FragNeeded { mtu } = rep.kind {
            let m = self.stack.lower_mut().update_path_mtu(rep.quoted_dst, mtu);
            kind = IcmpErrorKind::FragNeeded { mtu: m };
        }
        if self.errors.len() >= self.error_capacity {
            self.errors.pop_front();
            self.counters.events_overflowed += 1;
        }
        if self.error_capacity > 0 {
            self.errors.push_back(IcmpError { kind, ..ev });
        }
        if self.fib.remote.is_some() && self.to_error(&IcmpError { kind, ..ev }).is_some() {
            self.pending_error = Some(IcmpError { kind, ..ev });
        }
    }

    /// What a connected flow's `send`/`recv` reports for an ICMP error (as Linux: only hard
    /// errors; fragmentation needed only when the flow sets DF).
    fn to_error(&self, ev: &IcmpError) -> Option<Error> {
        let from = ev.from;
        match ev.kind {
            IcmpErrorKind::PortUnreachable | IcmpErrorKind::ProtoUnreachable => {
                Some(Error::ConnectionRefused {
                    from,
                    kind: ev.kind,
                })
            }
            IcmpErrorKind::FragNeeded { mtu } => {
                self.ip().dont_fragment().then_some(Error::MessageTooLong {
                    dst: *ev.dst.ip(),
                    mtu,
                })
            }
            IcmpErrorKind::TimeExceeded(_) => None,
            _ => Some(Error::Unreachable {
                from,
                kind: ev.kind,
            }),
        }
    }

    fn check_pending_error(&mut self) -> Result<()> {
        match self.pending_error.take() {
            Some(ev) => match self.to_error(&ev) {
                Some(e) => Err(e),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    // ---- transmit ----

    /// Pushes frames still waiting for room on the TX FIFO; `Ok(true)` when none is left.
    pub fn flush(&mut self) -> Result<bool> {
        self.chan_mut().flush()
    }

    fn alloc(&mut self, len: usize, dst: TxDst) -> Result<TxPacket> {
        self.check_pending_error()?;
        let max = self.stack.max_data_len(&dst);
        if len > max {
            return Err(Error::TooLong { len, max });
        }
        let need = self.stack.frames_needed(len, &dst);
        let have = self.stack.tx_buffers();
        if need > have {
            return Err(Error::ChannelTooSmall {
                needed: need,
                available: have,
            });
        }
        let deadline = wait::deadline(self.mode.write_timeout);
        loop {
            if self.chan_mut().flush()? && self.stack.tx_free()? >= need {
                if let Some(p) = self.stack.alloc(len, dst)? {
                    return Ok(p);
                }
            }
            if self.mode.nonblocking {
                self.chan_mut().check_liveness_cheap()?;
                return Err(Error::WouldBlock);
            }
            wait::wait_tx(self.chan_mut(), deadline, need)?;
        }
    }

    /// A zero-copy TX buffer for a datagram of `len` payload bytes to the connected remote: write
    /// the payload into it, then [`TxBuf::send`]. Blocks for buffers unless non-blocking.
    pub fn tx_buf(&mut self, len: usize) -> Result<TxBuf<'_>> {
        if self.fib.remote.is_none() {
            return Err(Error::NotConnected);
        }
        let pkt = self.alloc(len, TxDst::default())?;
        Ok(TxBuf {
            flow: self,
            pkt: Some(pkt),
        })
    }

    /// [`tx_buf`](Self::tx_buf) for an unconnected flow, to `dst`.
    pub fn tx_buf_to(&mut self, len: usize, dst: SocketAddrV4) -> Result<TxBuf<'_>> {
        let d = self.route(dst)?;
        let pkt = self.alloc(len, d)?;
        Ok(TxBuf {
            flow: self,
            pkt: Some(pkt),
        })
    }

    fn push(&mut self, pkt: TxPacket) -> Result<()> {
        self.stack.push(pkt)?;
        if self.mode.nonblocking {
            return Ok(());
        }
        // Blocking: wait (within the write timeout) until every frame is on the FIFO; past it,
        // the rest stays queued in the flow and goes with the next call or `flush`.
        let deadline = wait::deadline(self.mode.write_timeout);
        while !self.chan_mut().flush()? {
            match wait::wait_tx(self.chan_mut(), deadline, 1) {
                Err(Error::TimedOut) => break,
                r => r?,
            }
        }
        Ok(())
    }

    /// Sends `data` as one datagram to the connected remote (copying it into the TX area).
    pub fn send(&mut self, data: &[u8]) -> Result<usize> {
        let mut b = self.tx_buf(data.len())?;
        b.copy_from_slice(data)?;
        b.send()?;
        Ok(data.len())
    }

    /// Sends `data` as one datagram to `dst` (unconnected flows).
    pub fn send_to(&mut self, data: &[u8], dst: SocketAddrV4) -> Result<usize> {
        let mut b = self.tx_buf_to(data.len(), dst)?;
        b.copy_from_slice(data)?;
        b.send()?;
        Ok(data.len())
    }

    // ---- receive ----

    /// The next datagram, or error report, without waiting.
    fn poll_rx(&mut self) -> Result<Option<RxPacket>> {
        loop {
            let up = {
                let mut now = Now::new(&*self.clock);
                self.stack.pop(&mut now)?
            };
            match up {
                None => return Ok(None),
                Some(Up::Packet(p)) => {
                    self.counters.rx_delivered += 1;
                    self.counters.rx_bytes += p.len() as u64;
                    return Ok(Some(p));
                }
                Some(Up::Icmp(rep)) => {
                    self.handle_icmp(rep);
                    self.check_pending_error()?;
                }
            }
        }
    }

    /// Receives the next datagram zero-copy: the guard borrows the payload from the RX area and
    /// gives the buffer back to the driver when dropped. Blocks unless non-blocking (then
    /// `Err(WouldBlock)`), up to the read timeout (`Err(TimedOut)`). A connected flow reports an
    /// ICMP error that arrived for it (`ConnectionRefused`, ...) once, as Linux does.
    pub fn recv_datagram(&mut self) -> Result<RxDatagram<'_>> {
        let deadline = wait::deadline(self.mode.read_timeout);
        let pkt = loop {
            self.check_pending_error()?;
            if let Some(p) = self.poll_rx()? {
                break p;
            }
            if self.mode.nonblocking {
                self.chan_mut().check_liveness_cheap()?;
                return Err(Error::WouldBlock);
            }
            wait::wait_rx(self.chan_mut(), deadline)?;
        };
        Ok(RxDatagram {
            flow: self,
            pkt: Some(pkt),
        })
    }

    /// Receives the next datagram into `buf`: returns the bytes copied (the rest of a longer
    /// datagram is discarded, as `recvfrom` does) and the source.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddrV4)> {
        let d = self.recv_datagram()?;
        let p = d.payload();
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        let truncated = n < p.len();
        let src = d.src();
        drop(d);
        if truncated {
            self.counters.rx_truncated += 1;
        }
        Ok((n, src))
    }

    // ---- readiness ----

    /// For event loops: arms the RX eventfd ([`AsFd`]) and says whether something is already
    /// there (`true`: call `recv` now, do not sleep). On `false`, wait for the fd to be
    /// readable, then call [`finish_wait`](Self::finish_wait) and `recv` (non-blocking).
    pub fn prepare_wait(&mut self) -> Result<bool> {
        if self.pending_error.is_some() {
            return Ok(true);
        }
        self.chan_mut().check_liveness_cheap()?;
        self.chan_mut().prepare_wait()
    }

    /// Disarms the RX wake-up after a sleep.
    pub fn finish_wait(&mut self) {
        self.chan_mut().finish_wait();
    }
}

impl AsFd for UdpFlow {
    /// The RX channel's eventfd: readable when the driver pushed a frame (after
    /// [`UdpFlow::prepare_wait`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.channels().as_fd()
    }
}

/// A datagram being built in the flow's TX data area, with room for all headers in front. A
/// datagram larger than the path MTU spans several frames: its payload is then in several
/// segments. Dropping it unsent frees the buffers.
#[derive(Debug)]
pub struct TxBuf<'f> {
    flow: &'f mut UdpFlow,
    pkt: Option<TxPacket>,
}

impl TxBuf<'_> {
    /// Payload length.
    pub fn len(&self) -> usize {
        self.pkt.as_ref().map_or(0, |p| p.data_len())
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of payload segments (frames): 1 unless the datagram is fragmented.
    pub fn segments(&self) -> usize {
        self.pkt.as_ref().map_or(0, |p| p.frame_count())
    }

    /// Segment `i` of the payload, writable.
    pub fn segment_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let e = self.pkt.as_ref()?.segment(i)?;
        self.flow.stack.tx_bytes_mut(e).ok()
    }

    /// The whole payload, writable, when it is one segment (`None` if fragmented: use
    /// [`segment_mut`](Self::segment_mut) or [`write_at`](Self::write_at)).
    pub fn payload_mut(&mut self) -> Option<&mut [u8]> {
        if self.segments() != 1 {
            return None;
        }
        self.segment_mut(0)
    }

    /// Writes `data` at byte `offset` of the payload, across segments.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let total = self.len();
        if offset.checked_add(data.len()).is_none_or(|end| end > total) {
            return Err(Error::OutOfRange {
                offset,
                len: data.len(),
                payload: total,
            });
        }
        let mut seg_start = 0usize;
        let mut src = data;
        let mut at = offset;
        for i in 0..self.segments() {
            if src.is_empty() {
                break;
            }
            let Some(seg) = self.segment_mut(i) else {
                break;
            };
            let seg_end = seg_start + seg.len();
            if at < seg_end {
                let from = at - seg_start;
                let n = (seg.len() - from).min(src.len());
                seg[from..from + n].copy_from_slice(&src[..n]);
                src = &src[n..];
                at += n;
            }
            seg_start = seg_end;
        }
        Ok(())
    }

    /// Fills the whole payload from `data` (of exactly the payload's length).
    pub fn copy_from_slice(&mut self, data: &[u8]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::OutOfRange {
                offset: 0,
                len: data.len(),
                payload: self.len(),
            });
        }
        self.write_at(0, data)
    }

    /// Patches the headers (lengths, id, checksums) and hands the frames to the driver.
    pub fn send(mut self) -> Result<()> {
        match self.pkt.take() {
            Some(p) => self.flow.push(p),
            None => Ok(()),
        }
    }
}

impl Drop for TxBuf<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pkt.take() {
            self.flow.stack.free(p);
        }
    }
}

/// A received datagram, borrowed from the RX data area (or, if it was reassembled, from private
/// memory). Dropping it hands the buffer back to the driver.
#[derive(Debug)]
pub struct RxDatagram<'f> {
    flow: &'f mut UdpFlow,
    pkt: Option<RxPacket>,
}

impl RxDatagram<'_> {
    /// The payload.
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

    /// Payload length.
    pub fn len(&self) -> usize {
        self.pkt.as_ref().map_or(0, |p| p.len())
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn meta(&self) -> RxMeta {
        self.pkt.as_ref().map(|p| p.meta).unwrap_or_default()
    }

    /// Source address and port.
    pub fn src(&self) -> SocketAddrV4 {
        let m = self.meta();
        SocketAddrV4::new(m.src_ip, m.src_port)
    }

    /// Source MAC (the sender's, or the last router's).
    pub fn src_mac(&self) -> [u8; 6] {
        self.meta().src_mac
    }

    /// Destination address (the flow's, or a broadcast or multicast address).
    pub fn dst_ip(&self) -> Ipv4Addr {
        self.meta().dst_ip
    }

    /// Whether the datagram was reassembled from fragments.
    pub fn is_reassembled(&self) -> bool {
        self.pkt.as_ref().is_some_and(|p| p.is_reassembled())
    }
}

impl Drop for RxDatagram<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pkt.take() {
            self.flow.stack.release(p);
        }
    }
}
