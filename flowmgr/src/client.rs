//! The library applications link to talk to the flow manager: connect, open, close, change QoS,
//! resolve a neighbour, and receive events (FIB changed, flow revoked).
//!
//! ```no_run
//! use nemflow_flowmgr::client::Client;
//! use nemflow_proto::app::OpenFlow;
//! use std::net::{Ipv4Addr, SocketAddrV4};
//!
//! let mut fm = Client::connect_default()?;
//! let flow = fm.open(&OpenFlow::udp(0, Some(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 7))))?;
//! println!("flow {} from {}", flow.fib.flow, flow.fib.local);
//! let (tx, rx) = flow.attach()?; // tmm::Producer, rmm::Consumer
//! # drop((tx, rx));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The flow lives as long as this connection: dropping the [`Client`] (or the process dying)
//! closes every flow it opened.
//!
//! # Reserving a channel pair ahead of an open
//! Most of an open's time is not the flow manager's work but handing the app its two channels
//! (8 fds) and the app attaching them (checks, 4 `mmap`s, page faults, posting the receive
//! buffers). An app that expects to open a flow soon can do that part early, while it has
//! nothing better to do: [`Client::reserve`] takes a channel pair the flow manager staged in the
//! driver and attaches it at once; the next [`Client::open`] of the default geometry then runs
//! on it: a request and a reply without fds, and the [`Flow`] it returns carries the attached
//! endpoints ([`Flow::attach`] hands them over, attaching nothing). Reserving is the app's
//! choice and never automatic: a held pair is one flow's worth of channel memory (~0.5 MiB
//! with the default `flowmgr.channel_bytes`, mostly not resident) counted against the uid's
//! limits until it is used, given back ([`Client::unreserve`]) or the connection closes.
//!
//! ```no_run
//! # use nemflow_flowmgr::client::Client;
//! # use nemflow_proto::app::OpenFlow;
//! # let mut fm = Client::connect_default()?;
//! let ready = fm.reserve()?; // false: no pair to take now; `open` works as without it
//! let flow = fm.open(&OpenFlow::udp(0, None))?; // on the reserved pair when `ready`
//! let (tx, rx) = flow.attach()?; // already attached: returned as they are
//! # drop((ready, tx, rx));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nemflow_proto::app::{
    AcceptFlow, AppError, AppErrorKind, AppEvent, AppReply, AppRequest, ArpEntry, Buffers,
    FlowInfo, HostInfo, Neighbour, OpenFlow, Opened, RouteEntry, ServerMsg, StatsReport,
    DEFAULT_SOCKET, OPENED_FDS,
};
use nemflow_proto::wire::{self, Decoder, WireError};
use nemflow_proto::{Fib, FlowId, Qos};
use nemflow_rbuf::{rmm, tmm, ChannelFds, ChannelSpec, FdSource, CHANNEL_FDS};

/// Environment variable naming the flow manager's socket (default [`DEFAULT_SOCKET`]).
pub const SOCKET_ENV: &str = "NEMFLOW_FLOWMGR_SOCKET";

/// How long a reply may take by default (ARP resolution with retries included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking to the flow manager.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No flow manager listens on the socket.
    #[error("no flow manager at {}: {source} (is nemflow-flowmgr running?)", path.display())]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The socket exists but this user may not connect to it.
    #[error("cannot connect to the flow manager at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The flow manager refused the request; [`AppError::errno`] is what a socket would say.
    #[error("{0}")]
    Refused(#[from] AppError),
    /// The connection failed or carried something that is not the protocol.
    #[error("flow manager connection: {0}")]
    Wire(#[from] WireError),
    /// The flow manager answered with something that does not fit the request.
    #[error("flow manager protocol: {0}")]
    Protocol(String),
    /// Attaching a reserved channel pair failed (its fds, or mapping them).
    #[error("attaching a reserved channel pair: {0}")]
    Channel(#[from] nemflow_rbuf::Error),
}

impl ClientError {
    /// The errno a socket user would see for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Refused(e) => e.errno(),
            ClientError::NotRunning { source, .. } | ClientError::Connect { source, .. } => source
                .raw_os_error()
                .unwrap_or(rustix::io::Errno::CONNREFUSED.raw_os_error()),
            ClientError::Wire(_) | ClientError::Protocol(_) => {
                rustix::io::Errno::PROTO.raw_os_error()
            }
            ClientError::Channel(nemflow_rbuf::Error::Os { source, .. }) => source
                .raw_os_error()
                .unwrap_or(rustix::io::Errno::NOMEM.raw_os_error()),
            ClientError::Channel(_) => rustix::io::Errno::INVAL.raw_os_error(),
        }
    }

    /// The kind of refusal, when the flow manager refused.
    pub fn kind(&self) -> Option<AppErrorKind> {
        match self {
            ClientError::Refused(e) => Some(e.kind),
            _ => None,
        }
    }
}

impl From<ClientError> for std::io::Error {
    fn from(e: ClientError) -> Self {
        let os = std::io::Error::from_raw_os_error(e.errno());
        std::io::Error::new(os.kind(), e.to_string())
    }
}

/// The flow manager's socket: `NEMFLOW_FLOWMGR_SOCKET`, or [`DEFAULT_SOCKET`].
pub fn default_socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// An open flow: what the app stack is built from, and its two channels.
#[derive(Debug)]
pub struct Flow {
    /// The flow information block.
    pub fib: Fib,
    /// The QoS admitted.
    pub qos: Qos,
    /// Geometry of the transmit channel.
    pub tx_spec: ChannelSpec,
    /// Geometry of the receive channel.
    pub rx_spec: ChannelSpec,
    /// The two channels: fds to attach, or (opened on a reserved pair) endpoints attached
    /// already. [`Flow::attach`] gives endpoints either way.
    pub ends: FlowEnds,
}

/// A flow's channels as its open left them.
#[derive(Debug)]
pub enum FlowEnds {
    /// The fds the flow manager sent with the reply.
    Fds {
        /// Transmit channel fds (data writable): attach a [`tmm::Producer`].
        tx: ChannelFds,
        /// Receive channel fds (data read-only): attach an [`rmm::Consumer`].
        rx: ChannelFds,
    },
    /// The endpoints of the pair [`Client::reserve`] attached (receive buffers posted).
    Attached {
        /// The transmit channel's producer.
        tx: Box<tmm::Producer>,
        /// The receive channel's consumer.
        rx: Box<rmm::Consumer>,
    },
}

impl Flow {
    /// The flow's id.
    pub fn id(&self) -> FlowId {
        self.fib.flow
    }

    /// Whether the flow was opened on a reserved pair (its endpoints are attached already).
    pub fn reserved(&self) -> bool {
        matches!(self.ends, FlowEnds::Attached { .. })
    }

    /// Both endpoints, the receive side with its empty buffers posted: attached now from the
    /// fds, or, for a flow opened on a reserved pair, the ones attached at the reserve.
    ///
    /// The fds came from the flow manager, the channels' creator, over its socket (the app
    /// trusts it with its flows anyway), so they are checked as [`FdSource::Creator`] fds: the
    /// memfds fully, the eventfds by one `fstat` each. The shared memory stays hostile: the
    /// driver's end of it is checked on every read.
    pub fn attach(self) -> Result<(tmm::Producer, rmm::Consumer), nemflow_rbuf::Error> {
        match self.ends {
            FlowEnds::Attached { tx, rx } => Ok((*tx, *rx)),
            FlowEnds::Fds { tx, rx } => attach_pair(&self.tx_spec, tx, &self.rx_spec, rx),
        }
    }
}

fn attach_pair(
    tx_spec: &ChannelSpec,
    tx: ChannelFds,
    rx_spec: &ChannelSpec,
    rx: ChannelFds,
) -> Result<(tmm::Producer, rmm::Consumer), nemflow_rbuf::Error> {
    let tx = tmm::Producer::attach_from(tx_spec, tx, FdSource::Creator)?;
    let mut rx = rmm::Consumer::attach_from(rx_spec, rx, FdSource::Creator)?;
    rx.post_free()?;
    Ok((tx, rx))
}

/// A reserved channel pair, attached, waiting for an open.
#[derive(Debug)]
struct Held {
    id: u32,
    tx_spec: ChannelSpec,
    rx_spec: ChannelSpec,
    tx: tmm::Producer,
    rx: rmm::Consumer,
}

impl Held {
    /// Whether an open asking for `b` gets this pair's geometry (zero fields: the defaults,
    /// which the pair has).
    fn fits(&self, b: &Buffers) -> bool {
        let ok = |asked: u64, has: u64| asked == 0 || asked == has;
        ok(b.tx_bytes, self.tx_spec.data_bytes)
            && ok(u64::from(b.tx_slots), u64::from(self.tx_spec.slots))
            && ok(b.rx_bytes, self.rx_spec.data_bytes)
            && ok(u64::from(b.rx_slots), u64::from(self.rx_spec.slots))
    }
}

/// A connection to the flow manager.
#[derive(Debug)]
pub struct Client {
    sock: UnixStream,
    decoder: Decoder,
    events: VecDeque<AppEvent>,
    timeout: Duration,
    host: HostInfo,
    /// The pair [`Client::reserve`] took, attached, for the next open.
    held: Option<Held>,
}

impl Client {
    /// Connects to the socket named by `NEMFLOW_FLOWMGR_SOCKET`, or [`DEFAULT_SOCKET`].
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(default_socket())
    }

    /// Connects to the flow manager at `path` and introduces itself with the program's name.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let name = std::env::args()
            .next()
            .and_then(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "app".into());
        Self::connect_as(path, &name)
    }

    /// Connects to the flow manager at `path`, introducing itself as `name` (for listings).
    pub fn connect_as(path: impl AsRef<Path>, name: &str) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let sock = UnixStream::connect(path).map_err(|source| {
            use std::io::ErrorKind as K;
            match source.kind() {
                K::NotFound | K::ConnectionRefused => ClientError::NotRunning {
                    path: path.to_owned(),
                    source,
                },
                _ => ClientError::Connect {
                    path: path.to_owned(),
                    source,
                },
            }
        })?;
        let mut client = Client {
            sock,
            decoder: Decoder::new(OPENED_FDS),
            events: VecDeque::new(),
            timeout: DEFAULT_TIMEOUT,
            host: HostInfo {
                ip: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                mac: [0; 6],
                mtu: 0,
                gateway: None,
                uid: 0,
                pid: 0,
            },
            held: None,
        };
        let name: String = name.chars().take(64).collect();
        match client.call(&AppRequest::Hello { client: name })? {
            (AppReply::Hello(host), _) => client.host = host,
            (other, _) => return Err(unexpected("Hello", &other)),
        }
        Ok(client)
    }

    /// The host as the flow manager described it at connect time.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// Sets how long to wait for each reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Opens a flow: on the reserved pair when this client holds one ([`Client::reserve`]) and
    /// the request asks for the default geometry (zero [`Buffers`], or the pair's own sizes),
    /// otherwise with channels the reply brings. A refused open leaves the pair reserved.
    pub fn open(&mut self, req: &OpenFlow) -> Result<Flow, ClientError> {
        if let Some(id) = self
            .held
            .as_ref()
            .filter(|h| h.fits(&req.buffers))
            .map(|h| h.id)
        {
            match self.call(&AppRequest::OpenReserved {
                open: req.clone(),
                reserved: id,
            }) {
                Ok((AppReply::Opened(opened), fds)) => return self.take_reserved_flow(opened, fds),
                Ok((other, _)) => return Err(unexpected("OpenReserved", &other)),
                // The flow manager does not know the pair (it should): open without it.
                Err(ClientError::Refused(e)) if e.kind == AppErrorKind::NoSuchFlow => {
                    self.held = None;
                }
                Err(e) => return Err(e),
            }
        }
        match self.call(&AppRequest::Open(req.clone()))? {
            (AppReply::Opened(opened), fds) => into_flow(opened, fds),
            (other, _) => Err(unexpected("Open", &other)),
        }
    }

    fn take_reserved_flow(
        &mut self,
        opened: Opened,
        fds: Vec<OwnedFd>,
    ) -> Result<Flow, ClientError> {
        let Some(held) = self.held.take() else {
            return Err(ClientError::Protocol("an open on no reserved pair".into()));
        };
        if !fds.is_empty() {
            return Err(ClientError::Protocol(format!(
                "an open on a reserved pair carried {} fds",
                fds.len()
            )));
        }
        if opened.tx != held.tx_spec || opened.rx != held.rx_spec {
            return Err(ClientError::Protocol(
                "an open on a reserved pair answered another geometry".into(),
            ));
        }
        Ok(Flow {
            fib: opened.fib,
            qos: opened.qos,
            tx_spec: opened.tx,
            rx_spec: opened.rx,
            ends: FlowEnds::Attached {
                tx: Box::new(held.tx),
                rx: Box::new(held.rx),
            },
        })
    }

    /// Takes a channel pair for the next [`Client::open`] and attaches it now (transmit
    /// producer, receive consumer with its buffers posted), unless one is held already. Returns
    /// whether a pair is held: `false` when the flow manager has none to give now (opens then
    /// work as without one). Refused ([`AppErrorKind::NoBufferSpace`]) when the uid is at its
    /// channel-memory or flow limit: the pair counts as one flow's channels. Not automatic: see
    /// the module docs for what a held pair costs.
    pub fn reserve(&mut self) -> Result<bool, ClientError> {
        if self.held.is_some() {
            return Ok(true);
        }
        let (id, tx_spec, rx_spec, fds) = match self.call(&AppRequest::Reserve) {
            Ok((AppReply::Reserved { id, tx, rx }, fds)) => (id, tx, rx, fds),
            Ok((other, _)) => return Err(unexpected("Reserve", &other)),
            Err(ClientError::Refused(e)) if e.kind == AppErrorKind::NotReady => return Ok(false),
            Err(e) => return Err(e),
        };
        let attached = split_fds(fds).and_then(|(tx, rx)| {
            attach_pair(&tx_spec, tx, &rx_spec, rx).map_err(ClientError::Channel)
        });
        match attached {
            Ok((mut tx, rx)) => {
                // The buffer the first send will take (the free list is a stack): its page
                // is faulted in now rather than on that send.
                if let Ok(Some(ext)) = tx.alloc(1) {
                    if let Ok(b) = tx.buf_mut(ext) {
                        b.fill(0);
                    }
                    let _ = tx.free(ext);
                }
                self.held = Some(Held {
                    id,
                    tx_spec,
                    rx_spec,
                    tx,
                    rx,
                });
                Ok(true)
            }
            Err(e) => {
                // Unusable here: give it back rather than hold the quota.
                let _ = self.expect_ok(&AppRequest::Unreserve { reserved: id });
                Err(e)
            }
        }
    }

    /// Whether this client holds a reserved pair for its next open.
    pub fn holds_reserve(&self) -> bool {
        self.held.is_some()
    }

    /// Gives the reserved pair back (unmapped here and in the driver, its quota released).
    pub fn unreserve(&mut self) -> Result<(), ClientError> {
        match self.held.take() {
            Some(h) => self.expect_ok(&AppRequest::Unreserve { reserved: h.id }),
            None => Ok(()),
        }
    }

    /// Changes a flow's QoS.
    pub fn set_qos(&mut self, flow: FlowId, qos: Qos) -> Result<(), ClientError> {
        self.expect_ok(&AppRequest::SetQos { flow, qos })
    }

    /// Closes a flow (dropping the client closes all of them).
    pub fn close(&mut self, flow: FlowId) -> Result<(), ClientError> {
        self.expect_ok(&AppRequest::Close { flow })
    }

    /// Registers for TCP connections to `port` (0 = allocate); returns the port.
    pub fn listen(&mut self, port: u16) -> Result<u16, ClientError> {
        match self.call(&AppRequest::Listen {
            local_ip: None,
            port,
        })? {
            (AppReply::Listening { port }, _) => Ok(port),
            (other, _) => Err(unexpected("Listen", &other)),
        }
    }

    /// Registers for TCP connections to `port` (0 = allocate) with at most `backlog` connection
    /// requests waiting for this app's answer; returns the port.
    pub fn listen_backlog(&mut self, port: u16, backlog: u32) -> Result<u16, ClientError> {
        match self.call(&AppRequest::ListenBacklog {
            local_ip: None,
            port,
            backlog,
        })? {
            (AppReply::Listening { port }, _) => Ok(port),
            (other, _) => Err(unexpected("ListenBacklog", &other)),
        }
    }

    /// Accepts a connection announced by [`AppEvent::Incoming`]: returns its flow.
    pub fn accept(&mut self, req: &AcceptFlow) -> Result<Flow, ClientError> {
        match self.call(&AppRequest::Accept(req.clone()))? {
            (AppReply::Opened(opened), fds) => into_flow(opened, fds),
            (other, _) => Err(unexpected("Accept", &other)),
        }
    }

    /// Refuses a connection announced by [`AppEvent::Incoming`] (with an RST if `reset`).
    pub fn reject(
        &mut self,
        listen_port: u16,
        remote: SocketAddrV4,
        reset: bool,
    ) -> Result<(), ClientError> {
        self.expect_ok(&AppRequest::Reject {
            listen_port,
            remote,
            reset,
        })
    }

    /// Drops a listen registration.
    pub fn unlisten(&mut self, port: u16) -> Result<(), ClientError> {
        self.expect_ok(&AppRequest::Unlisten { port })
    }

    /// This connection's flows and listen registrations.
    pub fn flows(&mut self) -> Result<Vec<FlowInfo>, ClientError> {
        self.flows_of(AppRequest::ListFlows)
    }

    /// Every flow on the host.
    pub fn all_flows(&mut self) -> Result<Vec<FlowInfo>, ClientError> {
        self.flows_of(AppRequest::AllFlows)
    }

    fn flows_of(&mut self, req: AppRequest) -> Result<Vec<FlowInfo>, ClientError> {
        match self.call(&req)? {
            (AppReply::Flows(f), _) => Ok(f),
            (other, _) => Err(unexpected("flow listing", &other)),
        }
    }

    /// Where to send frames for `ip` (for unconnected UDP `send_to`).
    pub fn resolve(&mut self, ip: Ipv4Addr) -> Result<Neighbour, ClientError> {
        match self.call(&AppRequest::Resolve { ip })? {
            (AppReply::Resolved(n), _) => Ok(n),
            (other, _) => Err(unexpected("Resolve", &other)),
        }
    }

    /// Counters of every flow, the port and the flow manager.
    pub fn stats(&mut self) -> Result<StatsReport, ClientError> {
        match self.call(&AppRequest::Stats)? {
            (AppReply::Stats(s), _) => Ok(s),
            (other, _) => Err(unexpected("Stats", &other)),
        }
    }

    /// The ARP cache.
    pub fn arp(&mut self) -> Result<Vec<ArpEntry>, ClientError> {
        match self.call(&AppRequest::Arp)? {
            (AppReply::Arp(a), _) => Ok(a),
            (other, _) => Err(unexpected("Arp", &other)),
        }
    }

    /// The routing table.
    pub fn routes(&mut self) -> Result<Vec<RouteEntry>, ClientError> {
        match self.call(&AppRequest::Routes)? {
            (AppReply::Routes(r), _) => Ok(r),
            (other, _) => Err(unexpected("Routes", &other)),
        }
    }

    /// The next event, without blocking: one already received, or one readable now.
    pub fn poll_event(&mut self) -> Result<Option<AppEvent>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                match frame.decode::<ServerMsg>()? {
                    ServerMsg::Event(e) => return Ok(Some(e)),
                    ServerMsg::Reply(r) => return Err(unexpected("no request", &r)),
                }
            }
            let mut fds = [rustix::event::PollFd::new(
                &self.sock,
                rustix::event::PollFlags::IN,
            )];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let ready = rustix::event::poll(&mut fds, Some(&zero)).map_err(|e| WireError::Io {
                op: "poll",
                source: e.into(),
            })?;
            if ready == 0 {
                return Ok(None);
            }
            self.decoder.read_from(&self.sock)?;
        }
    }

    /// Events received and kept (while waiting for replies) but not yet taken: an event loop
    /// that sleeps on the socket must take these first, they will not make it readable.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// The next event, waiting up to `timeout` for one (`None`: forever).
    pub fn wait_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<AppEvent>, ClientError> {
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            if let Some(e) = self.poll_event()? {
                return Ok(Some(e));
            }
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(rustix::event::Timespec {
                        tv_sec: left.as_secs() as i64,
                        tv_nsec: i64::from(left.subsec_nanos()),
                    })
                }
                None => None,
            };
            let mut fds = [rustix::event::PollFd::new(
                &self.sock,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, left.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(ClientError::Wire(WireError::Io {
                        op: "poll",
                        source: e.into(),
                    }))
                }
            }
        }
    }

    /// Sends one request and waits for its reply, keeping events that arrive meanwhile.
    pub fn call(&mut self, req: &AppRequest) -> Result<(AppReply, Vec<OwnedFd>), ClientError> {
        wire::send(&self.sock, req, &[])?;
        loop {
            let frame = self.decoder.recv(&self.sock, Some(self.timeout))?;
            match frame.decode::<ServerMsg>()? {
                ServerMsg::Event(e) => {
                    if !frame.fds.is_empty() {
                        return Err(ClientError::Protocol("an event carried fds".into()));
                    }
                    self.events.push_back(e);
                }
                ServerMsg::Reply(AppReply::Error(e)) => return Err(ClientError::Refused(e)),
                ServerMsg::Reply(r) => return Ok((r, frame.fds)),
            }
        }
    }

    fn expect_ok(&mut self, req: &AppRequest) -> Result<(), ClientError> {
        match self.call(req)? {
            (AppReply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected("Ok", &other)),
        }
    }
}

impl AsFd for Client {
    /// The socket: readable when an event (or a reply) arrived, for apps' event loops.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A reply's eight fds as the transmit channel's and the receive channel's.
fn split_fds(fds: Vec<OwnedFd>) -> Result<(ChannelFds, ChannelFds), ClientError> {
    if fds.len() != OPENED_FDS {
        return Err(ClientError::Protocol(format!(
            "the reply carried {} fds, expected {OPENED_FDS}",
            fds.len()
        )));
    }
    let mut fds = fds;
    let rx_fds = fds.split_off(CHANNEL_FDS);
    let tx = ChannelFds::from_vec(fds).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let rx = ChannelFds::from_vec(rx_fds).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok((tx, rx))
}

fn into_flow(opened: Opened, fds: Vec<OwnedFd>) -> Result<Flow, ClientError> {
    let (tx, rx) = split_fds(fds)?;
    Ok(Flow {
        fib: opened.fib,
        qos: opened.qos,
        tx_spec: opened.tx,
        rx_spec: opened.rx,
        ends: FlowEnds::Fds { tx, rx },
    })
}

fn unexpected(wanted: &str, got: &AppReply) -> ClientError {
    let name = match got {
        AppReply::Hello(_) => "Hello",
        AppReply::Opened(_) => "Opened",
        AppReply::Ok => "Ok",
        AppReply::Listening { .. } => "Listening",
        AppReply::Flows(_) => "Flows",
        AppReply::Resolved(_) => "Resolved",
        AppReply::Stats(_) => "Stats",
        AppReply::Arp(_) => "Arp",
        AppReply::Routes(_) => "Routes",
        AppReply::Error(_) => "Error",
        AppReply::Reserved { .. } => "Reserved",
    };
    ClientError::Protocol(format!("expected a reply to {wanted}, got {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = Client::connect(&path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no flow manager at"), "{text}");
        assert!(text.contains("nemflow-flowmgr running"), "{text}");
        let io: std::io::Error = err.into();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
