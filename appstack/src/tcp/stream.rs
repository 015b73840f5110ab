//! One TCP connection: its flow's channels, a smoltcp interface with one TCP socket, and the
//! calls an application makes (connect, read, write, shutdown, close), blocking or not.

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Flow;
use nemflow_proto::app::{Incoming, OpenFlow};
use nemflow_proto::FlowId;
use rustix::event::epoll;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use super::device::{ChannelDevice, DeviceCounters};
use super::{isn, FlowManager, TcpConfig};
use crate::channel::FlowChannels;
use crate::error::{Error, Result};
use crate::wait::{self, Mode};

/// Longest single sleep of a blocking call (it re-checks its deadline at least this often).
const STEP: Duration = Duration::from_millis(100);

/// IPv4 and TCP headers without options: what a segment's payload leaves of the MTU.
const TCP_IP_HEADERS: usize = 40;

/// How long to wait for the last frames to leave before the flow is given back.
const DRAIN: Duration = Duration::from_millis(50);

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// The device (channels as smoltcp sees them).
    pub device: DeviceCounters,
    /// Bytes the app read.
    pub bytes_read: u64,
    /// Bytes the app wrote.
    pub bytes_written: u64,
}

/// smoltcp's interface and socket over the flow's device.
struct Engine {
    dev: ChannelDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    /// Polls in a row that found work due at once: a guard against spinning.
    zero_waits: u32,
}

impl Engine {
    fn new(chan: FlowChannels, cfg: &TcpConfig, seed: u64) -> Result<Self> {
        let fib = chan.fib().clone();
        let remote = fib
            .remote
            .ok_or_else(|| Error::InvalidSetup("a TCP flow needs a remote".into()))?;
        let mac = fib.next_hop_mac.ok_or_else(|| {
            Error::InvalidSetup(format!("TCP flow to {remote} has no next-hop MAC"))
        })?;
        let mut chan = chan;
        let rx_frames = chan.halves().1.buffers().0;
        let mut dev = ChannelDevice::new(chan, mac);
        let mss = dev.mtu().saturating_sub(TCP_IP_HEADERS).max(536);
        // Nothing the peer sends may find the RX channel full: its data is bounded by the
        // window we offer, its ACKs by the segments we have in flight (one ACK at most per
        // segment), and both share the channel. So each gets half of it: the window never
        // offers more than half the RX buffers' worth of full segments, and the send buffer
        // (which bounds what is in flight) holds no more than that either.
        let half = (rx_frames / 2).max(2) * mss;
        let rx_cap = cfg.rx_buffer.min(half).max(2 * mss);
        let tx_cap = cfg.tx_buffer.min(half).max(mss);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let now = smoltcp::time::Instant::now();
        let mut iface = Interface::new(config, &mut dev, now);
        let local_ip = *fib.local.ip();
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(local_ip), fib.subnet.1));
        });
        // Off-link peers: smoltcp needs a route; the device frames everything for the next hop.
        let via = fib.gateway.unwrap_or(*remote.ip());
        iface
            .routes_mut()
            .add_default_ipv4_route(via)
            .map_err(|_| Error::InvalidSetup("cannot add the default route".into()))?;
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rx_cap]),
            tcp::SocketBuffer::new(vec![0u8; tx_cap]),
        );
        sock.set_nagle_enabled(!cfg.nodelay);
        sock.set_congestion_control(cfg.congestion);
        sock.set_keep_alive(cfg.keep_alive.map(to_smol));
        sock.set_timeout(cfg.user_timeout.map(to_smol));
        let mut sockets = SocketSet::new(Vec::new());
        let handle = sockets.add(sock);
        Ok(Engine {
            dev,
            iface,
            sockets,
            handle,
            zero_waits: 0,
        })
    }

    fn sock(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    fn state(&self) -> State {
        self.sockets.get::<tcp::Socket>(self.handle).state()
    }

    /// Runs the engine: received segments in, timers, segments out.
    fn poll(&mut self) -> Result<()> {
        let now = smoltcp::time::Instant::now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.dev.flush()?;
        match self.dev.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the engine has an ACK (or anything else) to send within its ACK delay: in
    /// TIME-WAIT nothing else is due for seconds.
    fn ack_pending(&mut self) -> bool {
        let delay = self
            .sock()
            .ack_delay()
            .map_or(Duration::ZERO, |d| Duration::from_micros(d.total_micros()));
        self.poll_delay().is_some_and(|d| d <= delay)
    }

    /// When the engine next needs a poll (`None`: only when something arrives).
    fn poll_delay(&mut self) -> Option<Duration> {
        let now = smoltcp::time::Instant::now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// Sleeps until a frame arrives, the driver returns TX buffers smoltcp was waiting for,
    /// the engine's next timer, or `deadline` (`Err(TimedOut)` once it has passed).
    fn wait(&mut self, deadline: Option<Instant>) -> Result<()> {
        let tx_blocked = self.dev.take_tx_blocked();
        let mut t = STEP;
        match self.poll_delay() {
            // Work is due at once only because smoltcp wants to send: wait for a buffer.
            Some(d) if d.is_zero() && tx_blocked => {}
            Some(d) => t = t.min(d),
            None => {}
        }
        if let Some(dl) = deadline {
            let left = dl.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::TimedOut);
            }
            t = t.min(left);
        }
        if t.is_zero() {
            self.zero_waits += 1;
            if self.zero_waits < 8 {
                return Ok(());
            }
            t = Duration::from_micros(100);
        }
        self.zero_waits = 0;
        let chan = self.dev.channels_mut();
        if chan.prepare_wait()? {
            return Ok(());
        }
        if tx_blocked && chan.prepare_tx_wait()? {
            chan.finish_wait();
            return Ok(());
        }
        let ts = Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        };
        {
            let mut fds = vec![rustix::event::PollFd::new(
                chan,
                rustix::event::PollFlags::IN,
            )];
            if tx_blocked {
                fds.push(rustix::event::PollFd::from_borrowed_fd(
                    chan.tx_fd(),
                    rustix::event::PollFlags::IN,
                ));
            }
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Os {
                        op: "poll",
                        source: e.into(),
                    })
                }
            }
        }
        chan.finish_wait();
        if tx_blocked {
            chan.finish_tx_wait();
        }
        Ok(())
    }
}

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// The epoll fd an event loop waits on: the RX and TX channels' eventfds and a timerfd set to
/// the engine's next timer.
#[derive(Debug)]
struct ReadyFds {
    epoll: OwnedFd,
    timer: OwnedFd,
}

fn os(op: &'static str) -> impl Fn(rustix::io::Errno) -> Error {
    move |e| Error::Os {
        op,
        source: e.into(),
    }
}

impl ReadyFds {
    fn new(chan: &FlowChannels) -> Result<Self> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(os("timerfd_create"))?;
        for (i, fd) in [chan.as_fd(), chan.tx_fd(), timer.as_fd()]
            .into_iter()
            .enumerate()
        {
            epoll::add(
                &ep,
                fd,
                epoll::EventData::new_u64(i as u64),
                epoll::EventFlags::IN,
            )
            .map_err(os("epoll_ctl"))?;
        }
        Ok(ReadyFds { epoll: ep, timer })
    }

    fn set_timer(&self, after: Option<Duration>) -> Result<()> {
        let value = after.map_or(
            Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            |d| Timespec {
                tv_sec: d.as_secs() as i64,
                // A zero value would disarm the timer: at least 1 ns.
                tv_nsec: i64::from(d.subsec_nanos().max(u32::from(d.as_secs() == 0))),
            },
        );
        rustix::time::timerfd_settime(
            &self.timer,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: value,
            },
        )
        .map_err(os("timerfd_settime"))?;
        Ok(())
    }

    fn drain_timer(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut b);
    }
}

/// A TCP connection over its own flow.
///
/// Blocking by default (with optional read and write timeouts), or non-blocking; implements
/// `std::io::Read` and `Write`. Not `Sync`: one thread drives a connection (the engine's timers
/// run inside its calls), as a non-blocking loop can do reading and writing together.
pub struct TcpStream {
    eng: Engine,
    mode: Mode,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    flow: FlowId,
    owner: Option<FlowManager>,
    cfg: TcpConfig,
    ready: ReadyFds,
    read_shut: bool,
    /// The connection was closed or aborted by us (the flow is given back on drop).
    closed: bool,
    /// A FIN was sent by us (shutdown or close).
    fin_sent: bool,
    was_established: bool,
    counters: TcpCounters,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("flow", &self.flow)
            .field("state", &self.eng.state())
            .finish_non_exhaustive()
    }
}

fn attach(flow: Flow) -> Result<FlowChannels> {
    FlowChannels::from_flow(flow)
}

impl TcpStream {
    /// Connects to `remote` through the flow manager named by `NEMFLOW_FLOWMGR_SOCKET`, on a
    /// connection of its own (closed with the stream).
    pub fn connect(remote: SocketAddrV4) -> Result<Self> {
        let fm = FlowManager::connect_default()?;
        Self::connect_with(&fm, remote, &TcpConfig::default())
    }

    /// Connects to `remote`: the flow manager allocates a local port and installs the flow,
    /// then the engine runs the handshake (blocking up to `cfg.connect_timeout`).
    pub fn connect_with(fm: &FlowManager, remote: SocketAddrV4, cfg: &TcpConfig) -> Result<Self> {
        let mut s = Self::start_connect(fm, remote, cfg)?;
        let deadline = wait::deadline(Some(cfg.connect_timeout));
        loop {
            match s.handshake()? {
                true => return Ok(s),
                false => s.eng.wait(deadline)?,
            }
        }
    }

    /// Starts a connection without waiting for the handshake: the stream reports
    /// `Error::WouldBlock` (non-blocking) or waits until it is established.
    pub fn start_connect(fm: &FlowManager, remote: SocketAddrV4, cfg: &TcpConfig) -> Result<Self> {
        let open = OpenFlow {
            qos: cfg.qos,
            buffers: cfg.buffers,
            ..OpenFlow::tcp(0, remote)
        };
        let flow = fm.lock().open(&open)?;
        let id = flow.id();
        let mut s = match Self::build(attach(flow)?, Some(fm.clone()), id, cfg, None) {
            Ok(s) => s,
            Err(e) => {
                let _ = fm.lock().close(id);
                return Err(e);
            }
        };
        let (local, peer) = (s.local, s.peer);
        let cx = s.eng.iface.context();
        s.eng
            .sockets
            .get_mut::<tcp::Socket>(s.eng.handle)
            .connect(
                cx,
                (IpAddress::Ipv4(*peer.ip()), peer.port()),
                (IpAddress::Ipv4(*local.ip()), local.port()),
            )
            .map_err(|e| Error::InvalidSetup(format!("connect: {e}")))?;
        s.eng.poll()?;
        Ok(s)
    }

    /// A connection accepted by a listener: the flow the flow manager created for it, and the
    /// SYN it handed over, which the engine answers now.
    pub(crate) fn accepted(
        flow: Flow,
        incoming: &Incoming,
        fm: &FlowManager,
        cfg: &TcpConfig,
    ) -> Result<Self> {
        let id = flow.id();
        let started =
            attach(flow).and_then(|chan| Self::accepted_on(chan, incoming, Some(fm.clone()), cfg));
        if started.is_err() {
            // The stream (which would give the flow back on drop) never came to be.
            let _ = fm.lock().close(id);
        }
        started
    }

    /// [`accepted`](Self::accepted) over channels already attached.
    pub(crate) fn accepted_on(
        chan: FlowChannels,
        incoming: &Incoming,
        owner: Option<FlowManager>,
        cfg: &TcpConfig,
    ) -> Result<Self> {
        let id = chan.fib().flow;
        let mut s = Self::build(chan, owner, id, cfg, incoming.isn_above)?;
        let local = s.local;
        s.eng
            .sock()
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*local.ip())),
                port: local.port(),
            })
            .map_err(|e| Error::InvalidSetup(format!("listen: {e}")))?;
        s.eng.dev.inject(incoming.syn.clone());
        s.eng.poll()?;
        Ok(s)
    }

    /// A stream over channels already attached (tests, and apps that open flows themselves).
    /// `owner`: the flow manager connection to give the flow back to when the stream ends.
    pub fn from_channels(
        chan: FlowChannels,
        owner: Option<FlowManager>,
        cfg: &TcpConfig,
    ) -> Result<Self> {
        let id = chan.fib().flow;
        Self::build(chan, owner, id, cfg, None)
    }

    fn build(
        chan: FlowChannels,
        owner: Option<FlowManager>,
        flow: FlowId,
        cfg: &TcpConfig,
        isn_above: Option<u32>,
    ) -> Result<Self> {
        let fib = chan.fib().clone();
        let peer = fib
            .remote
            .ok_or_else(|| Error::InvalidSetup("a TCP flow needs a remote".into()))?;
        let ready = ReadyFds::new(&chan)?;
        let eng = Engine::new(chan, cfg, isn::seed(isn_above))?;
        Ok(TcpStream {
            eng,
            mode: Mode::default(),
            local: fib.local,
            peer,
            flow,
            owner,
            cfg: *cfg,
            ready,
            read_shut: false,
            closed: false,
            fin_sent: false,
            was_established: false,
            counters: TcpCounters::default(),
        })
    }

    /// Passive side of a test: listen on the flow's local port (the peer's SYN then arrives
    /// through the channel).
    pub fn listen_on_flow(&mut self) -> Result<()> {
        let local = self.local;
        self.eng
            .sock()
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*local.ip())),
                port: local.port(),
            })
            .map_err(|e| Error::InvalidSetup(format!("listen: {e}")))
    }

    /// Active side of a test: send the SYN (the flow is already installed).
    pub fn connect_on_flow(&mut self) -> Result<()> {
        let (local, peer) = (self.local, self.peer);
        let cx = self.eng.iface.context();
        self.eng
            .sockets
            .get_mut::<tcp::Socket>(self.eng.handle)
            .connect(
                cx,
                (IpAddress::Ipv4(*peer.ip()), peer.port()),
                (IpAddress::Ipv4(*local.ip()), local.port()),
            )
            .map_err(|e| Error::InvalidSetup(format!("connect: {e}")))?;
        self.eng.poll()
    }

    // ---- accessors ----

    /// Our address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The peer's address and port.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }

    /// The connection's flow.
    pub fn flow(&self) -> FlowId {
        self.flow
    }

    /// The TCP state (RFC 793 names).
    pub fn state(&self) -> State {
        self.eng.state()
    }

    /// The channels under the connection.
    pub fn channels(&self) -> &FlowChannels {
        self.eng.dev.channels()
    }

    /// Counters.
    pub fn counters(&self) -> TcpCounters {
        TcpCounters {
            device: self.eng.dev.counters(),
            ..self.counters
        }
    }

    /// Bytes written but not yet acknowledged by the peer.
    pub fn unacked(&mut self) -> usize {
        self.eng.sock().send_queue()
    }

    // ---- modes ----

    /// Non-blocking: calls return `Error::WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, nonblocking: bool) {
        self.mode.nonblocking = nonblocking;
    }

    /// Blocking reads give up after `timeout` (`None`: never).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.read_timeout = timeout;
    }

    /// Blocking writes give up after `timeout` (`None`: never).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.mode.write_timeout = timeout;
    }

    /// Nagle's algorithm off (`true`) or on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.eng.sock().set_nagle_enabled(!nodelay);
    }

    // ---- state ----

    /// The error a dead connection reports, if it is dead.
    fn dead(&mut self) -> Option<Error> {
        let state = self.eng.state();
        if state == State::Established {
            self.was_established = true;
        }
        if state != State::Closed || self.closed {
            return None;
        }
        let c = self.eng.dev.counters();
        if c.rx_resets > 0 {
            return Some(if self.was_established {
                Error::Reset { peer: self.peer }
            } else {
                Error::Refused { peer: self.peer }
            });
        }
        // Closed without an RST from the peer: both FINs went (a normal close), or smoltcp
        // gave up (user timeout, keep-alive, handshake retransmissions).
        if self.fin_sent && c.rx_fins > 0 {
            None
        } else {
            Some(Error::TimedOut)
        }
    }

    /// Whether the handshake is done: `Ok(true)` established (or already past it), `Ok(false)`
    /// still running, an error if it failed.
    pub(crate) fn handshake(&mut self) -> Result<bool> {
        self.eng.poll()?;
        if let Some(e) = self.dead() {
            return Err(e);
        }
        match self.eng.state() {
            State::SynSent | State::SynReceived => Ok(false),
            // An accepted connection whose SYN-ACK met an RST goes back to listening.
            State::Listen => Err(Error::Refused { peer: self.peer }),
            _ => {
                self.was_established = true;
                Ok(true)
            }
        }
    }

    // ---- receive ----

    /// Waits (per the mode) until data, end of stream or an error can be reported.
    fn wait_readable(&mut self) -> Result<bool> {
        let deadline = wait::deadline(self.mode.read_timeout);
        loop {
            self.eng.poll()?;
            if self.read_shut {
                return Ok(false);
            }
            if let Some(e) = self.dead() {
                return Err(e);
            }
            let s = self.eng.sock();
            if s.can_recv() {
                return Ok(true);
            }
            let opening = matches!(
                s.state(),
                State::Listen | State::SynSent | State::SynReceived
            );
            if !s.may_recv() && !opening {
                return Ok(false);
            }
            if self.mode.nonblocking {
                return Err(Error::WouldBlock);
            }
            self.eng.wait(deadline)?;
        }
    }

    /// Reads into `buf`: bytes read, 0 at the end of the stream (the peer closed, or
    /// `shutdown(Read)`).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.wait_readable()? {
            return Ok(0);
        }
        let n = self.eng.sock().recv_slice(buf).map_err(|_| Error::Closed)?;
        self.counters.bytes_read += n as u64;
        // The window opened: tell the peer now rather than at the next timer.
        self.eng.poll()?;
        Ok(n)
    }

    /// Reads straight from the socket's receive buffer: `f` gets the next contiguous bytes
    /// (at least one) and returns how many it consumed. Returns that count (0 at the end of
    /// the stream, `f` not called).
    pub fn recv_with(&mut self, f: impl FnOnce(&[u8]) -> usize) -> Result<usize> {
        if !self.wait_readable()? {
            return Ok(0);
        }
        let n = self
            .eng
            .sock()
            .recv(|b| {
                let n = f(b).min(b.len());
                (n, n)
            })
            .map_err(|_| Error::Closed)?;
        self.counters.bytes_read += n as u64;
        self.eng.poll()?;
        Ok(n)
    }

    // ---- transmit ----

    /// Waits (per the mode) until the send buffer has room.
    fn wait_writable(&mut self) -> Result<()> {
        let deadline = wait::deadline(self.mode.write_timeout);
        loop {
            self.eng.poll()?;
            if let Some(e) = self.dead() {
                return Err(e);
            }
            let s = self.eng.sock();
            match s.state() {
                State::Listen | State::SynSent | State::SynReceived => {}
                _ if !s.may_send() => return Err(Error::Closed),
                _ if s.can_send() => return Ok(()),
                _ => {}
            }
            if self.mode.nonblocking {
                return Err(Error::WouldBlock);
            }
            self.eng.wait(deadline)?;
        }
    }

    /// Writes from `buf` into the send buffer: bytes taken (at least one unless `buf` is empty).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait_writable()?;
        let n = self.eng.sock().send_slice(buf).map_err(|_| Error::Closed)?;
        self.counters.bytes_written += n as u64;
        self.eng.poll()?;
        Ok(n)
    }

    /// Writes all of `buf` (blocking mode; a non-blocking stream may stop with `WouldBlock`
    /// after part of it: use [`write`](Self::write) there).
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Writes straight into the socket's send buffer: `f` gets free contiguous space (at least
    /// one byte) and returns how much it filled. Returns that count.
    pub fn send_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> Result<usize> {
        self.wait_writable()?;
        let n = self
            .eng
            .sock()
            .send(|b| {
                let n = f(b).min(b.len());
                (n, n)
            })
            .map_err(|_| Error::Closed)?;
        self.counters.bytes_written += n as u64;
        self.eng.poll()?;
        Ok(n)
    }

    /// Runs the engine once without waiting: receives, timers, sends. Event loops call it
    /// (through [`prepare_wait`](Self::prepare_wait)); blocking calls do it themselves.
    pub fn poll(&mut self) -> Result<()> {
        self.eng.poll()
    }

    /// Waits until every byte written has been acknowledged by the peer, or `timeout`.
    pub fn wait_acked(&mut self, timeout: Duration) -> Result<()> {
        let deadline = wait::deadline(Some(timeout));
        loop {
            self.eng.poll()?;
            if let Some(e) = self.dead() {
                return Err(e);
            }
            if self.eng.sock().send_queue() == 0 {
                return Ok(());
            }
            self.eng.wait(deadline)?;
        }
    }

    // ---- close ----

    /// Shuts down reading, writing (sends FIN once the data written has gone), or both.
    pub fn shutdown(&mut self, how: std::net::Shutdown) -> Result<()> {
        if matches!(how, std::net::Shutdown::Read | std::net::Shutdown::Both) {
            self.read_shut = true;
        }
        if matches!(how, std::net::Shutdown::Write | std::net::Shutdown::Both) {
            self.eng.sock().close();
            self.fin_sent = true;
        }
        self.eng.poll()
    }

    /// Closes the connection: FIN after the data written, then waits up to `cfg.linger` for
    /// the peer's FIN (the FIN exchange); if it does not come, resets the connection. The flow
    /// goes back to the flow manager, which holds TIME_WAIT for it.
    pub fn close(mut self) -> Result<()> {
        self.finish()
    }

    /// Resets the connection (RST) and gives the flow back.
    pub fn abort(mut self) -> Result<()> {
        self.eng.sock().abort();
        self.closed = true;
        let r = self.eng.poll();
        self.drain();
        r
    }

    fn finish(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        if !self.was_established
            && matches!(
                self.eng.state(),
                State::Listen | State::SynSent | State::SynReceived
            )
        {
            // Never established: nothing to exchange FINs about; reset the half-open one.
            self.eng.sock().abort();
            self.closed = true;
            let r = self.eng.poll();
            self.drain();
            return r;
        }
        self.eng.sock().close();
        self.fin_sent = true;
        let deadline = wait::deadline(Some(self.cfg.linger));
        let result = loop {
            if let Err(e) = self.eng.poll() {
                break Err(e);
            }
            match self.eng.state() {
                State::Closed | State::Listen => break Ok(()),
                // Both FINs are in, but the ACK of the peer's may still be delayed (or waiting
                // for a transmit buffer): once this stream is gone nobody would send it, and
                // the peer would wait in LAST-ACK. Done when nothing is due sooner than an ACK
                // delay (what is left is the TIME-WAIT timer).
                State::TimeWait if !self.eng.ack_pending() => break Ok(()),
                _ => {}
            }
            if let Err(e) = self.eng.wait(deadline) {
                // The peer did not finish in time: reset rather than leave it hanging.
                self.eng.sock().abort();
                let _ = self.eng.poll();
                break Err(e);
            }
        };
        self.closed = true;
        self.drain();
        result
    }

    /// Gives the driver a moment to send what is queued (the last ACK, an RST) before the flow
    /// is removed.
    fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN;
        while Instant::now() < deadline {
            match self.eng.dev.drained() {
                Ok(true) | Err(_) => return,
                Ok(false) => {
                    let chan = self.eng.dev.channels_mut();
                    let _ = chan.wait_tx(Duration::from_millis(5));
                }
            }
        }
    }

    // ---- readiness ----

    /// Whether a read would not wait: data, end of stream, or an error to report.
    pub fn readable(&mut self) -> bool {
        if self.read_shut || self.dead().is_some() {
            return true;
        }
        let s = self.eng.sock();
        s.can_recv()
            || (!s.may_recv()
                && !matches!(
                    s.state(),
                    State::Listen | State::SynSent | State::SynReceived
                ))
    }

    /// Whether a write would not wait: room in the send buffer, or an error to report.
    pub fn writable(&mut self) -> bool {
        if self.dead().is_some() {
            return true;
        }
        let s = self.eng.sock();
        match s.state() {
            State::Listen | State::SynSent | State::SynReceived => false,
            _ => s.can_send() || !s.may_send(),
        }
    }

    /// For event loops: runs the engine, and says whether the stream is ready now (readable,
    /// or writable when `want_write`): `true` means do not sleep. On `false` it has armed the
    /// wake-ups (a frame arriving, TX buffers coming back, the engine's next timer): wait for
    /// [`AsFd::as_fd`] to be readable (poll/epoll, nested in the app's own epoll if it likes),
    /// then call [`finish_wait`](Self::finish_wait) and try again.
    pub fn prepare_wait(&mut self, want_write: bool) -> Result<bool> {
        self.eng.poll()?;
        if self.readable() || (want_write && self.writable()) {
            return Ok(true);
        }
        let tx_blocked = self.eng.dev.take_tx_blocked();
        let delay = self.eng.poll_delay();
        if delay.is_some_and(|d| d.is_zero()) && !tx_blocked {
            return Ok(true);
        }
        let chan = self.eng.dev.channels_mut();
        if chan.prepare_wait()? {
            return Ok(true);
        }
        if tx_blocked && chan.prepare_tx_wait()? {
            chan.finish_wait();
            return Ok(true);
        }
        self.ready.set_timer(delay.filter(|d| !d.is_zero()))?;
        Ok(false)
    }

    /// Disarms the wake-ups after a sleep.
    pub fn finish_wait(&mut self) {
        let chan = self.eng.dev.channels_mut();
        chan.finish_wait();
        chan.finish_tx_wait();
        self.ready.drain_timer();
    }
}

impl AsFd for TcpStream {
    /// An epoll fd, readable when the connection may have work (after
    /// [`TcpStream::prepare_wait`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready.epoll.as_fd()
    }
}

impl std::io::Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        TcpStream::read(self, buf).map_err(Into::into)
    }
}

impl std::io::Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        TcpStream::write(self, buf).map_err(Into::into)
    }

    /// Hands every segment the engine can send now to the driver (it does not wait for the
    /// peer's acknowledgments: see [`TcpStream::wait_acked`]).
    fn flush(&mut self) -> std::io::Result<()> {
        self.eng.poll().map_err(Into::into)
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        // An open connection is closed as `close` would (bounded by the linger time).
        let _ = self.finish();
        if let Some(fm) = &self.owner {
            let _ = fm.lock().close(self.flow);
        }
    }
}
