//! The flow manager daemon: the event loop, the flow table, and the life of every flow from
//! `Open` to `Close` or its owner's socket closing. See the crate docs for the loop's design.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use nemflow_config::Config;
use nemflow_proto::app::{
    AcceptFlow, AppError, AppErrorKind, AppEvent, AppReply, AppRequest, Buffers, FlowInfo,
    FlowKind, HostInfo, Incoming, Neighbour, OpenFlow, Opened, Owner, ServerMsg, StatsReport,
    Transport, DEFAULT_BACKLOG, MAX_BACKLOG, MAX_RESERVED_PER_CLIENT,
};
use nemflow_proto::ctl::{
    DriverReply, DriverRequest, ErrorKind as DrvErr, FlowStats, PortInfo, TcpEnds, TcpSeen,
};
use nemflow_proto::flow::{ip_proto, Fib, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_proto::wire::{self, Decoder, WireError};
use nemflow_rbuf::spec::{MAX_SLOTS, PAGE_BYTES};
use nemflow_rbuf::{fdpass, rmm, tmm, ChannelFds, ChannelSpec, IoRec};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::arp::{ArpNews, Lookup};
use crate::driver::{DriverLink, LinkError, Pipeline};
use crate::host::{Host, HostConfig, News, SapLookup, SynNews};
use crate::policy::Policy;
use crate::ports::{Claim, PortError, PortTable};
use crate::routing::{NextHop, RouteError, Routes};

/// The flow manager's own flow.
pub const HOST_FLOW: FlowId = FlowId(1);

/// Most bytes queued for one client before it counts as not reading and is dropped.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// Requests taken from one client per loop turn (fairness between clients).
const REQUESTS_PER_TURN: usize = 32;

/// Frames taken from the host flow per loop turn.
const FRAMES_PER_TURN: usize = 256;

/// How long a SYN called back waits for the app's `Accept` or `Reject` before its place in the
/// backlog is freed (the peer retransmits its SYN meanwhile; those are duplicates).
pub const PENDING_SYN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the daemon could not start; `Display` is the one line the binary prints.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another flow manager serves the socket.
    #[error("socket {} is in use by another flow manager", .0.display())]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot create socket {}: {source}{hint}", path.display())]
    Socket {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// What to do.
        hint: &'static str,
    },
    /// The driver could not be reached.
    #[error("{0}")]
    Driver(#[from] LinkError),
    /// The driver refused something at start-up.
    #[error("driver refused {what}: {message}")]
    DriverRefused {
        /// What was asked.
        what: &'static str,
        /// The driver's message.
        message: String,
    },
    /// The configuration does not fit (link rate, reserve).
    #[error("configuration: {0}")]
    Config(String),
    /// Creating or attaching the host flow's channels failed.
    #[error("host flow channels: {0}")]
    Channel(#[from] nemflow_rbuf::Error),
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The driver connection failed.
    #[error("driver lost: {0}")]
    Driver(String),
    /// The host flow's channels failed.
    #[error("host flow: {0}")]
    HostFlow(String),
    /// `poll` failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

macro_rules! counters {
    ($(#[$doc:meta])* $name:ident { $($(#[$m:meta])* $f:ident,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$m])* pub $f: u64,)* }
        impl $name {
            /// Every counter with its name.
            pub fn list(&self) -> Vec<(String, u64)> {
                vec![$((stringify!($f).to_string(), self.$f),)*]
            }
        }
    };
}

counters! {
    /// The daemon's own counters: every refusal and every disconnect has its reason.
    Counters {
        /// Connections accepted.
        clients_accepted,
        /// Connections closed at once: `max_clients` reached.
        clients_over_limit,
        /// Connections from uids the policy does not allow.
        clients_denied,
        /// Connections that closed (any reason).
        clients_closed,
        /// Clients dropped for stalling mid-message past `client_timeout_ms`.
        clients_stalled,
        /// Clients dropped for not reading their replies.
        clients_slow,
        /// Clients dropped for a framing error (magic, version, length, fds).
        clients_bad_framing,
        /// Requests that did not decode (answered with an error).
        requests_malformed,
        /// Requests handled.
        requests,
        /// Requests refused (any reason; the reply says which).
        requests_refused,
        /// Flows opened.
        flows_opened,
        /// Flows closed by request.
        flows_closed,
        /// Flows closed because their owner's socket closed.
        flows_closed_on_exit,
        /// Opens that waited for ARP.
        opens_parked,
        /// Channel pairs handed to the driver ahead of their flows (`StageChannels`).
        pairs_staged,
        /// Opens served from a staged pair (no channel set-up on their path, and answered
        /// while the driver installs the filter).
        opens_staged,
        /// Flows the driver refused after their open was answered (revoked at once).
        opens_revoked_by_driver,
        /// Staged pairs handed to apps ahead of their opens (`Reserve`).
        reserves_taken,
        /// `Reserve` answered "not now" (`NotReady`): no staged pair was ready, or the most
        /// pairs the driver keeps are reserved already.
        reserves_unavailable,
        /// `Reserve` refused: the uid's channel memory or flows, or the connection's
        /// reserves, at their limit.
        reserves_refused,
        /// Reserved pairs their apps never used, dropped from the driver (`DropStaged`) when
        /// their connection closed or they gave them back (`Unreserve`).
        reserves_dropped,
        /// Opens served on a pair the app had reserved (`OpenReserved`: no fds in the reply).
        opens_reserved,
        /// `OpenReserved` (or `Unreserve`) naming a pair this connection does not hold
        /// (another's, used, or never reserved), or asking for another geometry.
        opens_reserved_refused,
        /// Frames the host flow sent.
        host_tx_frames,
        /// Frames the host flow could not send (no free buffer or FIFO full).
        host_tx_dropped,
        /// Invalid iorecs on the host flow's receive channel.
        host_rx_invalid,
        /// Events sent to apps (FIB changed, revoked, incoming connections).
        events_sent,
        /// SYNs to a listening port passed to its app (`Incoming`).
        syn_callbacks,
        /// SYNs for a connection request already waiting for its app (retransmissions).
        syn_duplicates,
        /// SYNs dropped: the listening port's backlog of waiting requests was full.
        syn_backlog_full,
        /// Connection requests whose app answered neither `Accept` nor `Reject` in time.
        syn_expired,
        /// Connections accepted (`Accept`).
        tcp_accepts,
        /// Connection requests refused (`Reject`).
        tcp_rejects,
        /// TCP connections reset by the flow manager: their flow went away (app exit, crash,
        /// close) before the connection was closed both ways.
        tcp_resets_on_close,
        /// TCP connections closed both ways, held for TIME_WAIT with their sequence state.
        tcp_time_waits,
    }
}

/// A listening port: who listens, the connection requests waiting for its answer, and the
/// port's own flow in the driver.
#[derive(Debug)]
struct Listener {
    owner: u64,
    backlog: u32,
    pending: BTreeMap<SocketAddrV4, PendingSyn>,
    /// The port's flow (3-tuple filter): every segment to the port that no connection's
    /// 5-tuple takes — SYNs above all — lands here instead of on the host flow. It is read
    /// only while the backlog has room, so a SYN flood fills this flow's channel and the
    /// driver drops the rest, counted on this flow: the flood costs the driver a lookup per
    /// frame, and neither the flow manager nor any other service anything (the Nemesis
    /// paper's discard pattern, §3.2). `None` if the driver refused it: SYNs then come by the
    /// host flow.
    flow: Option<ListenFlow>,
}

/// A listening port's flow: the receive side the flow manager reads.
#[derive(Debug)]
struct ListenFlow {
    id: FlowId,
    rx: rmm::Consumer,
}

/// Channel geometry of a listening port's flow: up to this many segments wait in it.
const LISTEN_FLOW_SLOTS: u32 = 64;

/// A SYN called back, waiting for `Accept` or `Reject`.
#[derive(Debug)]
struct PendingSyn {
    syn: Vec<u8>,
    since: Instant,
    reopens_time_wait: bool,
}

/// One queued message to a client.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

/// One connected application.
#[derive(Debug)]
struct Conn {
    sock: UnixStream,
    uid: u32,
    pid: i32,
    comm: String,
    denied: Option<AppError>,
    decoder: Decoder,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    /// When the message now being received began (for the stall timeout).
    msg_started: Option<Instant>,
    /// A request waits for ARP: do not read more.
    parked: bool,
    /// Close once the output queue is empty.
    closing: bool,
    flows: BTreeSet<FlowId>,
    listens: BTreeSet<u16>,
    /// Staged pairs this connection reserved (`Reserve`) and has not opened a flow on yet;
    /// each holds one flow's channel memory of the uid's quota.
    reserved: Vec<u32>,
}

impl Conn {
    /// The connected process, as `nemflow flows` shows it.
    fn owner(&self) -> Owner {
        Owner {
            uid: self.uid,
            pid: self.pid,
            comm: self.comm.clone(),
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
struct Who {
    cid: u64,
    uid: u32,
    pid: i32,
    comm: String,
}

/// An installed flow.
#[derive(Debug)]
struct FlowEntry {
    owner: u64,
    who: Owner,
    transport: Transport,
    claim: Option<(u8, u16, Claim)>,
    qos: Qos,
    fib: Fib,
    /// The IP whose MAC is the FIB's next hop (for FIB-changed events).
    next_hop: Option<Ipv4Addr>,
    channel_bytes: u64,
    opened: Instant,
}

/// A flow between admission and installation (possibly waiting for ARP).
#[derive(Debug)]
struct Prepared {
    id: FlowId,
    who: Who,
    transport: Transport,
    local: SocketAddrV4,
    remote: Option<SocketAddrV4>,
    broadcast: bool,
    claim: Option<(u8, u16, Claim)>,
    qos: Qos,
    tx: ChannelSpec,
    rx: ChannelSpec,
    channel_bytes: u64,
    next_hop: Option<Ipv4Addr>,
    /// The staged pair the app reserved for this flow (`OpenReserved`): the flow's quota is the
    /// pair's, held since the reserve, and its channels are the app's already.
    reserved: Option<u32>,
}

/// Work waiting for ARP.
#[derive(Debug)]
enum Job {
    Open(Box<Prepared>),
    Resolve { dst: Ipv4Addr },
}

#[derive(Debug)]
struct Parked {
    cid: u64,
    ip: Ipv4Addr,
    job: Job,
}

/// The flow manager's own flow: its ends of the two channels.
#[derive(Debug)]
struct HostFlow {
    tx: tmm::Producer,
    rx: rmm::Consumer,
    buf: Vec<u8>,
}

/// Settings taken from the configuration.
#[derive(Debug, Clone)]
struct Settings {
    max_clients: usize,
    client_timeout: Duration,
    time_wait: Duration,
    channel_bytes: u64,
    channel_slots: u32,
    max_channel_bytes: u64,
    max_frame_bytes: u32,
    mtu: u16,
}

/// The flow manager.
#[derive(Debug)]
pub struct Daemon<D: DriverLink> {
    set: Settings,
    driver: Pipeline<D, InFlight>,
    listener: UnixListener,
    socket_path: Option<PathBuf>,
    stop: Option<OwnedFd>,
    clients: BTreeMap<u64, Conn>,
    next_client: u64,
    flows: BTreeMap<FlowId, FlowEntry>,
    next_flow: u32,
    policy: Policy,
    ports: PortTable,
    admission: nemflow_sched::Scheduler,
    routes: Routes,
    host: Host,
    host_flow: HostFlow,
    host_flow_opened: Instant,
    mac: [u8; 6],
    parked: Vec<Parked>,
    counters: Counters,
    /// Frames the host wants to send.
    tx: Vec<Vec<u8>>,
    /// Set when the driver link failed: the loop ends with this error.
    fatal: Option<String>,
    /// Flows to remove once the current reply is sent.
    deferred: Vec<FlowId>,
    /// `InstallStaged` requests to send the driver once the open's reply is sent: the app,
    /// woken by the reply, attaches its channels meanwhile, and the driver, woken by the
    /// request, does not compete with it for a CPU before it is on its way. Sent before anything
    /// else goes to the driver (see [`Daemon::send_installs`]).
    installs: Vec<(FlowId, DriverRequest)>,
    /// Listening TCP ports.
    listeners: BTreeMap<u16, Listener>,
    /// Channel pairs (tx, rx, rx read-only) of the default geometry, made ahead of time by a
    /// factory thread: creating a channel costs tens of µs of system calls, which this takes
    /// off the open path. The thread shares nothing with the loop but this bounded queue.
    spare: Receiver<SparePair>,
    default_spec: ChannelSpec,
    /// Pairs of the default geometry the driver holds attached already (`StageChannels`), for
    /// the next opens; staged while the loop is idle.
    staged: VecDeque<StagedPair>,
    /// The id the next staged pair gets.
    next_staged: u32,
    /// False once the driver refused to stage (opens then hand it their channels).
    staging: bool,
    /// No staging before then (the factory had no pair ready last time).
    stage_after: Instant,
    /// No staging before then either, unless nothing is staged (see [`STAGE_QUIET`]).
    quiet_until: Instant,
}

/// Most staged pairs apps may hold reserved at once, all together: with the flow manager's own
/// [`STAGED_PAIRS`], as many as the driver keeps staged ([`nemflow_proto::ctl::MAX_STAGED`]).
/// Beyond it `Reserve` is answered "not now", never a refused `StageChannels` (which would turn
/// staging off).
const MAX_RESERVED: usize = nemflow_proto::ctl::MAX_STAGED - STAGED_PAIRS;

/// How many channel pairs the flow manager keeps staged in the driver.
const STAGED_PAIRS: usize = 4;
const _: () = assert!(STAGED_PAIRS <= nemflow_proto::ctl::MAX_STAGED);

/// A request sent to the driver whose reply the loop reads later.
#[derive(Debug)]
enum InFlight {
    /// `StageChannels` for this pair: staged once the driver says so.
    Stage(StagedPair),
    /// `InstallStaged` for this flow, whose open was answered already.
    Install(FlowId),
    /// `RemoveFlow` for this flow, gone from the flow manager already.
    Remove(FlowId),
    /// `DropStaged` for a pair an app reserved and never used.
    DropStaged(u32),
}

/// How long replies to requests sent ahead may wait unread (read at once when a request needs
/// them: an open taking a staged pair, any call; the driver has answered long before).
const SETTLE_WHEN_IDLE: Duration = Duration::from_millis(1);

/// How long after a client's request the loop stages no pair while one is staged: staging's
/// work, and the driver's in attaching the pair, would otherwise compete for the CPUs with the
/// app the reply just woke, while it attaches its own channels.
const STAGE_QUIET: Duration = Duration::from_micros(300);

/// How long staging waits when the channel factory had no pair ready.
const FACTORY_RETRY: Duration = Duration::from_millis(1);

/// A channel pair staged in the driver: its id there, and the app's ends (the transmit
/// channel's fds, the receive channel's with its data area read-only). Used by one flow only.
#[derive(Debug)]
struct StagedPair {
    id: u32,
    tx: ChannelFds,
    rx: ChannelFds,
}

/// Channel pairs kept ready.
const SPARE_CHANNELS: usize = 4;

type SparePair = (ChannelFds, ChannelFds, ChannelFds);

/// Makes channel pairs of `spec` ahead of time until the receiving end goes away.
fn channel_factory(spec: ChannelSpec) -> std::io::Result<Receiver<SparePair>> {
    let (tx, rx) = sync_channel(SPARE_CHANNELS);
    std::thread::Builder::new()
        .name("channel-factory".into())
        .spawn(move || loop {
            // Background work at the lowest priority (nice is per thread on Linux; one cheap
            // call per pair), so that making spares never takes a CPU from an open in progress,
            // which creates its own channels when no spare is ready.
            let _ = rustix::process::setpriority_process(None, 19);
            let pair = (|| -> Result<SparePair, nemflow_rbuf::Error> {
                let t = nemflow_rbuf::create(&spec)?;
                let r = nemflow_rbuf::create(&spec)?;
                let ro = r.with_read_only_data()?;
                Ok((t, r, ro))
            })();
            match pair {
                Ok(p) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Out of fds or memory: the open path creates its own and reports it.
                    tracing::warn!(error = %e, "channel factory cannot create channels");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(rx)
}

/// Binds the application socket at `path` with permissions `mode`: creates its directory, and
/// replaces a stale socket file but never one another flow manager still serves.
pub fn bind_app_socket(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    let sock_err = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
            " (run as root, or set flowmgr.socket to a writable place)"
        } else {
            ""
        };
        StartError::Socket {
            path: path.to_owned(),
            source,
            hint,
        }
    };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(sock_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(sock_err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(StartError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(sock_err)?;
    listener.set_nonblocking(true).map_err(sock_err)?;
    Ok(listener)
}

fn app_err(kind: AppErrorKind, message: impl Into<String>) -> AppError {
    AppError::new(kind, message)
}

fn to_sched(q: &Qos) -> nemflow_sched::Qos {
    nemflow_sched::Qos {
        period_ns: q.period_ns,
        slice_ns: q.slice_ns,
        extra: q.extra,
        latency_hint_ns: q.latency_hint_ns,
    }
}

fn sched_err(e: nemflow_sched::SchedError) -> AppError {
    match e {
        nemflow_sched::SchedError::Admission { max_slice_ns, .. } => AppError {
            kind: AppErrorKind::Admission,
            message: e.to_string(),
            max_slice_ns: Some(max_slice_ns),
        },
        other => app_err(AppErrorKind::Invalid, other.to_string()),
    }
}

fn port_err(e: PortError) -> AppError {
    let kind = match e {
        PortError::Exhausted { .. } => AppErrorKind::AddrNotAvailable,
        _ => AppErrorKind::AddrInUse,
    };
    app_err(kind, e.to_string())
}

fn route_err(e: RouteError) -> AppError {
    let kind = match e {
        RouteError::NoRoute(..) => AppErrorKind::NetUnreachable,
        RouteError::Invalid(..) => AppErrorKind::Invalid,
    };
    app_err(kind, e.to_string())
}

fn drv_err(kind: DrvErr, message: String) -> AppError {
    let k = match kind {
        DrvErr::Exists => AppErrorKind::AddrInUse,
        DrvErr::Admission => AppErrorKind::Admission,
        DrvErr::Exhausted => AppErrorKind::NoBufferSpace,
        DrvErr::NotFound => AppErrorKind::NoSuchFlow,
        DrvErr::Invalid | DrvErr::BadChannel | DrvErr::Busy => AppErrorKind::DriverUnavailable,
    };
    app_err(k, format!("driver: {message}"))
}

/// What a flow manager that started over found in the driver: the stale flows it removed, and
/// of those the TCP connections their apps left open, to reset once the host flow is up.
struct Stale {
    removed: usize,
    open_tcp: Vec<(TcpEnds, TcpSeen)>,
}

/// Removes every flow the driver holds: at start the flow manager has created none, so each
/// one is left by a previous run that did not stop cleanly (killed, crashed). Their apps count
/// them revoked once this flow manager listens (`nemflow_appstack::liveness`); removing them
/// stops their traffic, frees their share of the link and unmaps their channels in the driver.
/// The first removal also makes this connection the driver's flow manager: a driver that
/// already serves another refuses it (`Busy`), and that ends the start.
fn remove_stale_flows<D: DriverLink>(driver: &mut D) -> Result<Stale, StartError> {
    let refused = |message: String| StartError::DriverRefused {
        what: "removing stale flows",
        message,
    };
    let stale = match driver.call(&DriverRequest::FlowStats { id: None }, &[])? {
        DriverReply::FlowStats(v) => v,
        DriverReply::Error { message, .. } => return Err(refused(message)),
        _ => return Err(refused("unexpected reply to FlowStats".into())),
    };
    let mut found = Stale {
        removed: 0,
        open_tcp: Vec::new(),
    };
    for f in &stale {
        match driver.call(&DriverRequest::RemoveFlow { id: f.id }, &[])? {
            DriverReply::Ok | DriverReply::FlowStats(_) => {
                found.removed += 1;
                tracing::debug!(flow = %f.id, tx_packets = f.tx_packets, rx_packets = f.rx_packets, "stale flow removed");
                if let Some(seen) = f
                    .tcp
                    .filter(|s| matches!(tcp_close(s), TcpClose::Reset { .. }))
                {
                    if let Some(ends) = seen.ends {
                        found.open_tcp.push((ends, seen));
                    }
                }
            }
            // Gone meanwhile: nothing to do.
            DriverReply::Error {
                kind: DrvErr::NotFound,
                ..
            } => {}
            DriverReply::Error { message, .. } => return Err(refused(message)),
            _ => return Err(refused("unexpected reply to RemoveFlow".into())),
        }
    }
    Ok(found)
}

/// What a TCP connection whose flow is gone needs, from what the driver saw of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpClose {
    /// Closed both ways (FIN sent and received): TIME_WAIT, answered by the flow manager.
    TimeWait,
    /// Left open (the app exited, crashed or was killed): an RST the peer accepts, at our
    /// next sequence number, acknowledging what we received if we ever acknowledged.
    Reset { seq: u32, ack: Option<u32> },
    /// Reset already, or never synchronized: nothing.
    Nothing,
}

fn tcp_close(seen: &TcpSeen) -> TcpClose {
    let both_fins = seen.tx_flags & TcpSeen::FIN != 0 && seen.rx_flags & TcpSeen::FIN != 0;
    let reset = (seen.tx_flags | seen.rx_flags) & TcpSeen::RST != 0;
    let synchronized = seen.tx_flags & (TcpSeen::SYN | TcpSeen::ACK) != 0;
    if reset {
        TcpClose::Nothing
    } else if both_fins {
        TcpClose::TimeWait
    } else if synchronized {
        TcpClose::Reset {
            seq: seen.snd_nxt,
            ack: (seen.tx_flags & TcpSeen::ACK != 0).then_some(seen.rcv_nxt),
        }
    } else {
        TcpClose::Nothing
    }
}

fn read_comm(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end().to_owned())
}

impl<D: DriverLink> Daemon<D> {
    /// Starts the flow manager: greets the driver, installs the host flow (default filter,
    /// any-template), announces the host's address, and serves `listener`.
    pub fn start(
        config: &Config,
        mut driver: D,
        listener: UnixListener,
    ) -> Result<Self, StartError> {
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Socket {
                path: PathBuf::new(),
                source,
                hint: "",
            })?;
        let fm = &config.flowmgr;
        let port = match driver.call(
            &DriverRequest::Hello {
                client: "nemflow-flowmgr".into(),
            },
            &[],
        )? {
            DriverReply::Hello(p) => p,
            DriverReply::Error { message, .. } => {
                return Err(StartError::DriverRefused {
                    what: "Hello",
                    message,
                })
            }
            _ => {
                return Err(StartError::DriverRefused {
                    what: "Hello",
                    message: "unexpected reply".into(),
                })
            }
        };
        let stale = remove_stale_flows(&mut driver)?;
        if stale.removed > 0 {
            tracing::warn!(
                flows = stale.removed,
                "removed {} stale flows a previous flow manager left in the driver",
                stale.removed
            );
        } else {
            tracing::info!("no stale flows in the driver");
        }
        let mac = config.host.mac.map(|m| m.0).unwrap_or(port.mac);
        // As the driver computes it, so that both admit exactly the same flows.
        let reserve_ppm = (fm.reserve * 1e6) as u32;
        let admission = nemflow_sched::Scheduler::new(config.link.rate_bps, reserve_ppm)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let max_frame_bytes = u32::from(config.port.max_frame_bytes);
        let set = Settings {
            max_clients: fm.max_clients as usize,
            client_timeout: Duration::from_millis(fm.client_timeout_ms),
            time_wait: Duration::from_millis(fm.time_wait_ms),
            channel_bytes: fm.channel_bytes,
            channel_slots: fm.channel_slots,
            max_channel_bytes: fm.max_channel_bytes,
            max_frame_bytes,
            mtu: config.port.max_frame_bytes.saturating_sub(14),
        };
        let ip = config.host.ip.addr();
        let prefix_len = config.host.ip.prefix_len();
        let statics: Vec<_> = config
            .host
            .routes
            .iter()
            .map(|r| (r.dest.addr(), r.dest.prefix_len(), r.via))
            .collect();
        let routes = Routes::new(ip, prefix_len, config.host.gateway, &statics);
        let host = Host::new(HostConfig {
            ip,
            prefix_len,
            mac,
            errors_per_sec: fm.icmp_errors_per_sec,
            errors_burst: fm.icmp_errors_burst,
            echo_per_sec: fm.echo_replies_per_sec,
            arp_timeout: Duration::from_millis(fm.arp_timeout_ms),
            arp_retry: Duration::from_millis(fm.arp_retry_ms),
            arp_retries: fm.arp_retries,
        });

        // The host flow: whatever no filter matches; may send anything from our MAC.
        let spec = ChannelSpec {
            data_bytes: 512 << 10,
            slots: 256,
            max_packet_bytes: max_frame_bytes,
            hugetlb: false,
        };
        let tx = nemflow_rbuf::create(&spec)?;
        let rx = nemflow_rbuf::create(&spec)?;
        let fds: Vec<BorrowedFd<'_>> = tx.as_fds().into_iter().chain(rx.as_fds()).collect();
        let req = DriverRequest::InstallFlow {
            id: HOST_FLOW,
            filter: Filter::Default,
            template: Template {
                src_mac: mac,
                kind: TemplateKind::Any,
            },
            qos: Qos {
                period_ns: 10_000_000,
                ..Qos::BEST_EFFORT
            },
            tx: spec,
            rx: spec,
        };
        match driver.call(&req, &fds)? {
            DriverReply::Ok => {}
            DriverReply::Error { message, .. } => {
                return Err(StartError::DriverRefused {
                    what: "the flow manager's own flow",
                    message,
                })
            }
            _ => {
                return Err(StartError::DriverRefused {
                    what: "the flow manager's own flow",
                    message: "unexpected reply".into(),
                })
            }
        }
        drop(fds);
        let rx_ro = rx.with_read_only_data()?;
        drop(rx);
        let mut host_rx = rmm::Consumer::attach(&spec, rx_ro)?;
        host_rx.post_free()?;
        let host_tx = tmm::Producer::attach(&spec, tx)?;
        let [first, last] = fm.ephemeral_ports;
        let mut d = Daemon {
            set,
            driver: Pipeline::new(driver),
            listener,
            socket_path: None,
            stop: None,
            clients: BTreeMap::new(),
            next_client: 1,
            flows: BTreeMap::new(),
            next_flow: HOST_FLOW.0 + 1,
            policy: Policy::new(fm),
            ports: PortTable::new(first, last),
            admission,
            routes,
            host,
            host_flow: HostFlow {
                tx: host_tx,
                rx: host_rx,
                buf: vec![0; max_frame_bytes as usize],
            },
            host_flow_opened: Instant::now(),
            mac,
            parked: Vec::new(),
            counters: Counters::default(),
            tx: Vec::new(),
            fatal: None,
            deferred: Vec::new(),
            installs: Vec::new(),
            listeners: BTreeMap::new(),
            spare: sync_channel(0).1,
            default_spec: spec,
            staged: VecDeque::with_capacity(STAGED_PAIRS),
            next_staged: 0,
            staging: true,
            stage_after: Instant::now(),
            quiet_until: Instant::now(),
        };
        d.default_spec = d
            .channel_spec(0, 0, "default")
            .map_err(|e| StartError::Config(e.message))?;
        d.spare = channel_factory(d.default_spec).map_err(|e| {
            StartError::Config(format!("cannot start the channel factory thread: {e}"))
        })?;
        d.host.announce(&mut d.tx);
        // The connections the stale flows' apps left open: their peers would otherwise wait
        // for segments that never come (until their own timeouts).
        for (ends, seen) in stale.open_tcp {
            if let TcpClose::Reset { seq, ack } = tcp_close(&seen) {
                d.host.reset(
                    ends.local.port(),
                    ends.remote,
                    ends.next_hop_mac,
                    seq,
                    ack,
                    &mut d.tx,
                );
                d.counters.tcp_resets_on_close += 1;
                tracing::info!(local = %ends.local, remote = %ends.remote, "stale connection reset");
            }
        }
        d.transmit();
        tracing::info!(
            ip = %ip, prefix_len, mac = %crate::host::fmt_mac(mac), port = %port.name,
            "flow manager up: host flow installed, address announced"
        );
        Ok(d)
    }

    /// Removes the socket file at `path` when the daemon stops.
    pub fn remove_socket_on_exit(&mut self, path: PathBuf) {
        self.socket_path = Some(path);
    }

    /// Stops the loop (after tearing every flow down) when `fd` becomes readable (a signal
    /// pipe, or one end of a socket pair a test or benchmark holds).
    pub fn set_stop_fd(&mut self, fd: OwnedFd) {
        self.stop = Some(fd);
    }

    /// The daemon's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Serves until the stop fd fires (then tears down every flow) or the driver is lost.
    pub fn run(&mut self) -> Result<(), RunError> {
        let result = loop {
            match self.turn() {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
            if let Some(msg) = self.fatal.take() {
                break Err(RunError::Driver(msg));
            }
        };
        let reason = match &result {
            Ok(()) => "flow manager shutting down".to_owned(),
            Err(e) => format!("flow manager stopped: {e}"),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, flows = self.flows.len(), "revoking every flow and stopping");
        }
        self.shutdown(result.is_ok(), &reason);
        result
    }

    /// Revokes every flow (each app gets a `Revoked` event with `reason` before its connection
    /// closes, so it learns at once and does not count its flow orphaned), then tears down.
    /// `driver_ok`: remove the flows from the driver (false when the link is gone).
    fn shutdown(&mut self, driver_ok: bool, reason: &str) {
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for cid in ids {
            for fid in self
                .clients
                .get(&cid)
                .map(|c| c.flows.clone())
                .unwrap_or_default()
            {
                self.send_event(
                    cid,
                    AppEvent::Revoked {
                        flow: fid,
                        reason: reason.to_owned(),
                    },
                );
            }
            if let Some(c) = self.clients.get_mut(&cid) {
                let _ = flush(c);
            }
            self.disconnect(cid, driver_ok);
        }
        // Resets for connections left open go out before the host flow does.
        self.transmit();
        if driver_ok {
            let _ = self
                .driver
                .call(&DriverRequest::RemoveFlow { id: HOST_FLOW }, &[]);
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("flow manager stopped");
    }

    /// One turn of the loop; `Ok(true)` when asked to stop.
    fn turn(&mut self) -> Result<bool, RunError> {
        let now = Instant::now();
        self.on_timers(now);
        self.transmit();
        let host_ready = match self.host_flow.rx.prepare_wait() {
            Ok(r) => r,
            Err(e) => return Err(RunError::HostFlow(e.to_string())),
        };
        // Listening ports' flows, read only while their backlog has room.
        let mut listen_armed: Vec<u16> = Vec::new();
        let mut listen_ready = false;
        for (&port, l) in &mut self.listeners {
            if l.pending.len() >= l.backlog as usize {
                continue;
            }
            if let Some(f) = &mut l.flow {
                match f.rx.prepare_wait() {
                    Ok(r) => {
                        listen_ready |= r;
                        listen_armed.push(port);
                    }
                    Err(e) => tracing::warn!(port, error = %e, "listening port's flow failed"),
                }
            }
        }
        let mut deadline: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d: Instant| d.min(t)));
            }
        };
        consider(self.host.next_deadline());
        consider(self.ports.next_expiry());
        for l in self.listeners.values() {
            consider(
                l.pending
                    .values()
                    .map(|p| p.since + PENDING_SYN_TIMEOUT)
                    .min(),
            );
        }
        for c in self.clients.values() {
            consider(c.msg_started.map(|t| t + self.set.client_timeout));
        }
        let stage = self.wants_staging();
        let settle_at = self.driver.in_flight_since().map(|t| t + SETTLE_WHEN_IDLE);
        let in_flight = settle_at.is_some();
        consider(settle_at);
        let timeout = if host_ready || listen_ready {
            Duration::ZERO
        } else {
            let t = deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if stage {
                // A pair is staged by the first turn that finds nothing else to do (once the
                // factory has one).
                t.min(self.stage_at().saturating_duration_since(now))
            } else {
                t
            }
        };

        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };

        let mut ids = Vec::with_capacity(self.clients.len());
        let mut idle = false;
        let (revents, stop, listen, host_ev, listen_ev, driver_ev) = {
            let mut pfds = Vec::with_capacity(self.clients.len() + listen_armed.len() + 4);
            pfds.push(PollFd::new(&self.listener, PollFlags::IN));
            pfds.push(PollFd::new(&self.host_flow.rx, PollFlags::IN));
            let stop_at = self.stop.as_ref().map(|s| {
                pfds.push(PollFd::new(s, PollFlags::IN));
                pfds.len() - 1
            });
            // The driver's connection: it never speaks unasked, so an event is its end.
            // With requests in flight, only its end: their replies are read when needed or
            // when the loop is idle, not one wake-up each.
            let driver_flags = if in_flight {
                PollFlags::RDHUP
            } else {
                PollFlags::IN
            };
            let driver_at = self.driver.watch_fd().map(|fd| {
                pfds.push(PollFd::from_borrowed_fd(fd, driver_flags));
                pfds.len() - 1
            });
            // The listening ports' flows follow.
            let listens_start = pfds.len();
            for port in &listen_armed {
                if let Some(f) = self.listeners.get(port).and_then(|l| l.flow.as_ref()) {
                    pfds.push(PollFd::new(&f.rx, PollFlags::IN));
                }
            }
            let listens_end = pfds.len();
            let base = pfds.len();
            for (&id, c) in &self.clients {
                let mut f = PollFlags::empty();
                if !c.parked && !c.closing {
                    f |= PollFlags::IN;
                }
                if !c.out.is_empty() {
                    f |= PollFlags::OUT;
                }
                pfds.push(PollFd::new(&c.sock, f));
                ids.push(id);
            }
            match rustix::event::poll(&mut pfds, Some(&ts)) {
                Ok(n) => idle = n == 0,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(RunError::Poll(e.into())),
            }
            let listen = pfds[0].revents();
            let host_ev = pfds[1].revents();
            let fired = |at: Option<usize>| at.is_some_and(|i| !pfds[i].revents().is_empty());
            let stop = fired(stop_at);
            let driver_ev = fired(driver_at);
            let listen_ev = pfds[listens_start..listens_end]
                .iter()
                .any(|p| !p.revents().is_empty());
            let rev: Vec<PollFlags> = pfds[base..].iter().map(|p| p.revents()).collect();
            (rev, stop, listen, host_ev, listen_ev, driver_ev)
        };
        self.host_flow.rx.finish_wait();
        for port in &listen_armed {
            if let Some(f) = self.listeners.get_mut(port).and_then(|l| l.flow.as_mut()) {
                f.rx.finish_wait();
            }
        }
        if stop {
            return Ok(true);
        }
        if driver_ev {
            if self.driver.in_flight().next().is_some() {
                // Replies to requests sent ahead.
                self.settle();
            } else if let Some(why) = self.driver.watch_fd().and_then(crate::driver::why_readable) {
                return Err(RunError::Driver(why));
            }
        }
        let now = Instant::now();
        if !host_ev.is_empty() || host_ready {
            self.on_host_frames(now)?;
        }
        if listen_ev || listen_ready {
            for port in listen_armed {
                self.on_listen_frames(port, now);
            }
        }
        if !listen.is_empty() {
            self.accept(now);
        }
        for (cid, ev) in ids.into_iter().zip(revents) {
            if ev.is_empty() {
                continue;
            }
            if ev.contains(PollFlags::IN) {
                self.quiet_until = now + STAGE_QUIET;
            }
            self.on_client(cid, ev, now);
            if self.fatal.is_some() {
                break;
            }
        }
        // Close clients that finished their last reply.
        let done: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.closing && c.out.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for cid in done {
            self.disconnect(cid, true);
        }
        self.transmit();
        if settle_at.is_some_and(|t| now >= t) && self.fatal.is_none() {
            self.settle();
        }
        // Replies read by calls made this turn.
        self.on_answered();
        if stage && idle && self.fatal.is_none() {
            self.stage_one(now);
        }
        Ok(false)
    }

    /// Channels for a flow: from the pool when the geometry is the default one.
    fn channels(
        &mut self,
        tx: &ChannelSpec,
        rx: &ChannelSpec,
    ) -> Result<(ChannelFds, ChannelFds, ChannelFds), nemflow_rbuf::Error> {
        if *tx == self.default_spec && *rx == self.default_spec {
            if let Ok(c) = self.spare.try_recv() {
                return Ok(c);
            }
        }
        let t = nemflow_rbuf::create(tx)?;
        let r = nemflow_rbuf::create(rx)?;
        let ro = r.with_read_only_data()?;
        Ok((t, r, ro))
    }

    /// Whether the loop should stage a pair when it is idle.
    fn wants_staging(&self) -> bool {
        let staging = self
            .driver
            .in_flight()
            .filter(|f| matches!(f, InFlight::Stage(_)))
            .count();
        self.staging && self.staged.len() + staging < STAGED_PAIRS
    }

    /// When the loop may stage next.
    fn stage_at(&self) -> Instant {
        if self.staged.is_empty() {
            self.stage_after
        } else {
            self.stage_after.max(self.quiet_until)
        }
    }

    /// Sends the driver one channel pair of the default geometry, if the factory has one ready,
    /// for a later open; the loop does not wait for the driver to attach it. A refusal turns
    /// staging off (an older driver, or one short of resources: opens then hand it their own
    /// channels, as before).
    fn stage_one(&mut self, now: Instant) {
        if now < self.stage_at() {
            return;
        }
        let Ok((tx, rx, app_rx)) = self.spare.try_recv() else {
            self.stage_after = now + FACTORY_RETRY;
            return;
        };
        let id = self.next_staged;
        self.next_staged = self.next_staged.wrapping_add(1);
        let req = DriverRequest::StageChannels {
            id,
            tx: self.default_spec,
            rx: self.default_spec,
        };
        let fds: Vec<BorrowedFd<'_>> = tx.as_fds().into_iter().chain(rx.as_fds()).collect();
        match self.driver.send(&req, &fds) {
            Ok(sent) => sent.tag(InFlight::Stage(StagedPair { id, tx, rx: app_rx })),
            Err(e) => self.fatal = Some(e.to_string()),
        }
    }

    /// Reads the driver's replies to the requests in flight and acts on every one read.
    fn settle(&mut self) {
        if let Err(e) = self.driver.drain() {
            self.fatal = Some(e.to_string());
        }
        self.on_answered();
    }

    /// Acts on the replies read to requests sent ahead (staged pairs, installs on them).
    fn on_answered(&mut self) {
        while let Some((what, reply)) = self.driver.take_answered() {
            match (what, reply) {
                (InFlight::Stage(pair), DriverReply::Ok) => {
                    self.counters.pairs_staged += 1;
                    self.staged.push_back(pair);
                }
                (InFlight::Stage(_), reply) => {
                    tracing::warn!(
                        ?reply,
                        "the driver does not stage channel pairs: opens hand it their channels"
                    );
                    self.staging = false;
                }
                (InFlight::Install(_) | InFlight::Remove(_), DriverReply::Ok)
                | (InFlight::Remove(_), DriverReply::FlowStats(_)) => {}
                (InFlight::Remove(fid), DriverReply::Error { message, .. }) => {
                    tracing::warn!(flow = %fid, %message, "driver did not remove the flow");
                }
                (InFlight::Remove(fid), _) => {
                    tracing::warn!(flow = %fid, "unexpected driver reply to RemoveFlow");
                }
                (InFlight::DropStaged(_), DriverReply::Ok) => {}
                (InFlight::DropStaged(id), reply) => {
                    // An older driver, or a pair it no longer has: nothing to undo here (the
                    // driver drops what is left with our connection).
                    tracing::warn!(pair = id, ?reply, "driver did not drop a reserved pair");
                }
                (InFlight::Install(fid), reply) => {
                    let message = match reply {
                        DriverReply::Error { message, .. } => message,
                        other => format!("unexpected reply {other:?}"),
                    };
                    self.revoke_refused(fid, &message);
                }
            }
        }
    }

    /// A flow whose open was answered and which the driver then refused: its app learns at
    /// once (`Revoked`), and everything it held is released.
    fn revoke_refused(&mut self, fid: FlowId, message: &str) {
        self.counters.opens_revoked_by_driver += 1;
        tracing::warn!(flow = %fid, %message, "the driver refused a flow already opened: revoked");
        let Some(owner) = self.flows.get(&fid).map(|f| f.owner) else {
            return;
        };
        if let Some(c) = self.clients.get_mut(&owner) {
            c.flows.remove(&fid);
        }
        self.send_event(
            owner,
            AppEvent::Revoked {
                flow: fid,
                reason: format!("the driver refused the flow: {message}"),
            },
        );
        self.teardown(fid, false);
    }

    fn on_timers(&mut self, now: Instant) {
        let news = self.host.poll(now, &mut self.tx);
        for n in news {
            self.on_arp_news(n, now);
        }
        self.ports.expire(now);
        for l in self.listeners.values_mut() {
            let before = l.pending.len();
            l.pending
                .retain(|_, p| now.saturating_duration_since(p.since) < PENDING_SYN_TIMEOUT);
            self.counters.syn_expired += (before - l.pending.len()) as u64;
        }
        let timeout = self.set.client_timeout;
        let stalled: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.msg_started
                    .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
            })
            .map(|(&id, _)| id)
            .collect();
        for cid in stalled {
            self.counters.clients_stalled += 1;
            tracing::info!(client = cid, "dropping client stalled mid-message");
            self.disconnect(cid, true);
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..64 {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued; try next turn.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            if self.clients.len() >= self.set.max_clients {
                self.counters.clients_over_limit += 1;
                continue;
            }
            let Ok(cred) = rustix::net::sockopt::socket_peercred(&sock) else {
                continue;
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let uid = cred.uid.as_raw();
            let pid = cred.pid.as_raw_pid();
            let denied = self.policy.check_connect(uid).err();
            if denied.is_some() {
                self.counters.clients_denied += 1;
            }
            self.counters.clients_accepted += 1;
            let cid = self.next_client;
            self.next_client += 1;
            let comm = read_comm(pid).unwrap_or_else(|| "?".into());
            tracing::debug!(client = cid, uid, pid, %comm, "client connected");
            let _ = now;
            self.clients.insert(
                cid,
                Conn {
                    sock,
                    uid,
                    pid,
                    comm,
                    denied,
                    decoder: Decoder::new(0),
                    out: VecDeque::new(),
                    out_bytes: 0,
                    msg_started: None,
                    parked: false,
                    closing: false,
                    flows: BTreeSet::new(),
                    listens: BTreeSet::new(),
                    reserved: Vec::new(),
                },
            );
        }
    }

    fn on_client(&mut self, cid: u64, ev: PollFlags, now: Instant) {
        let Some(c) = self.clients.get_mut(&cid) else {
            return;
        };
        if ev.contains(PollFlags::OUT) && flush(c).is_err() {
            self.disconnect(cid, true);
            return;
        }
        if c.parked || c.closing {
            if ev.intersects(PollFlags::HUP | PollFlags::ERR) {
                self.disconnect(cid, true);
            }
            return;
        }
        if !ev.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            return;
        }
        match c.decoder.read_from(&c.sock) {
            Ok(_) => {}
            // A peer that exits with our messages unread resets the connection (ECONNRESET):
            // it closed, it did not break the protocol.
            Err(WireError::Closed) | Err(WireError::Truncated(_)) | Err(WireError::Io { .. }) => {
                self.disconnect(cid, true);
                return;
            }
            Err(e) => {
                self.framing_error(cid, &e);
                return;
            }
        }
        self.process(cid, now);
    }

    /// Handles the complete requests a client has buffered (up to a fair share per turn).
    fn process(&mut self, cid: u64, now: Instant) {
        for _ in 0..REQUESTS_PER_TURN {
            let Some(c) = self.clients.get_mut(&cid) else {
                return;
            };
            if c.parked || c.closing {
                break;
            }
            let frame = match c.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.framing_error(cid, &e);
                    return;
                }
            };
            let req = frame.decode::<AppRequest>();
            drop(frame);
            let Some(c) = self.clients.get_mut(&cid) else {
                return;
            };
            c.msg_started = None;
            let who = Who {
                cid,
                uid: c.uid,
                pid: c.pid,
                comm: c.comm.clone(),
            };
            let denied = c.denied.clone();
            self.counters.requests += 1;
            let outcome = match (req, denied) {
                (_, Some(err)) => {
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.closing = true;
                    }
                    Some(Err(err))
                }
                (Err(e), None) => {
                    self.counters.requests_malformed += 1;
                    Some(Err(app_err(
                        AppErrorKind::Invalid,
                        format!("malformed request: {e}"),
                    )))
                }
                (Ok(req), None) => self.handle(&who, req, now),
            };
            match outcome {
                Some(r) => {
                    self.reply(cid, r);
                    for fid in std::mem::take(&mut self.deferred) {
                        self.teardown(fid, true);
                    }
                }
                None => {
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.parked = true;
                    }
                    break;
                }
            }
            if self.fatal.is_some() {
                return;
            }
        }
        if let Some(c) = self.clients.get_mut(&cid) {
            if c.decoder.pending() > 0 {
                c.msg_started.get_or_insert(now);
            } else {
                c.msg_started = None;
            }
        }
    }

    /// A framing error: tell the client what was wrong (best effort) and drop it.
    fn framing_error(&mut self, cid: u64, e: &WireError) {
        self.counters.clients_bad_framing += 1;
        tracing::info!(client = cid, error = %e, "dropping client: framing error");
        let err = app_err(AppErrorKind::Invalid, format!("protocol error: {e}"));
        self.reply(cid, Err(err));
        if let Some(c) = self.clients.get_mut(&cid) {
            c.closing = true;
            c.parked = false;
        }
    }

    /// Sends the driver the `InstallStaged` requests of opens answered (or being answered).
    /// Every path to the driver other than an open's reply calls this first, so the driver
    /// sees them in order. A failure ends the loop, as a failed call does.
    fn send_installs(&mut self) {
        for (id, req) in std::mem::take(&mut self.installs) {
            if self.fatal.is_some() {
                break;
            }
            match self.driver.send(&req, &[]) {
                Ok(s) => s.tag(InFlight::Install(id)),
                Err(e) => self.fatal = Some(e.to_string()),
            }
        }
    }

    fn reply(&mut self, cid: u64, r: Result<(AppReply, Vec<OwnedFd>), AppError>) {
        let (msg, fds) = match r {
            Ok((rep, fds)) => (ServerMsg::Reply(rep), fds),
            Err(e) => {
                self.counters.requests_refused += 1;
                let who = self
                    .clients
                    .get(&cid)
                    .map(|c| (c.uid, c.pid, c.comm.as_str()));
                crate::logging::refused(cid, who, &e);
                (ServerMsg::Reply(AppReply::Error(e)), Vec::new())
            }
        };
        self.queue(cid, &msg, fds);
        self.send_installs();
    }

    fn send_event(&mut self, cid: u64, ev: AppEvent) {
        self.counters.events_sent += 1;
        self.queue(cid, &ServerMsg::Event(ev), Vec::new());
    }

    fn queue(&mut self, cid: u64, msg: &ServerMsg, fds: Vec<OwnedFd>) {
        let Some(c) = self.clients.get_mut(&cid) else {
            return;
        };
        let bytes = match wire::encode(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a reply");
                match wire::encode(&ServerMsg::Reply(AppReply::Error(app_err(
                    AppErrorKind::NoBufferSpace,
                    format!("reply too large: {e}"),
                )))) {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
        };
        c.out_bytes += bytes.len();
        c.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
        });
        if c.out_bytes > MAX_QUEUED_BYTES {
            self.counters.clients_slow += 1;
            self.disconnect(cid, true);
            return;
        }
        if flush(c).is_err() {
            self.disconnect(cid, true);
        }
    }

    /// Drops a client and everything it held. `driver_ok`: tell the driver (false when the
    /// link is already gone).
    fn disconnect(&mut self, cid: u64, driver_ok: bool) {
        let Some(c) = self.clients.remove(&cid) else {
            return;
        };
        self.counters.clients_closed += 1;
        let parked: Vec<Parked> = {
            let (mine, rest) = std::mem::take(&mut self.parked)
                .into_iter()
                .partition(|p| p.cid == cid);
            self.parked = rest;
            mine
        };
        for p in parked {
            if let Job::Open(prep) = p.job {
                self.rollback(&prep);
            }
        }
        let n = c.flows.len();
        for fid in &c.flows {
            self.teardown(*fid, driver_ok);
            self.counters.flows_closed_on_exit += 1;
        }
        for port in &c.listens {
            self.ports
                .release(ip_proto::TCP, *port, Claim::Listen, cid, None);
            self.drop_listener(*port, driver_ok);
        }
        for id in c.reserved {
            self.drop_reserved(c.uid, id, driver_ok);
        }
        tracing::debug!(
            client = cid,
            pid = c.pid,
            flows = n,
            "client gone: its flows are torn down"
        );
    }

    /// Staged pairs held by apps (`Reserve`), all connections together.
    fn reserved_total(&self) -> usize {
        self.clients.values().map(|c| c.reserved.len()).sum()
    }

    /// Gives a reserved pair its app never used back: its quota to the uid, and the driver
    /// unmaps it (`DropStaged`, not waited for, like `RemoveFlow`).
    fn drop_reserved(&mut self, uid: u32, id: u32, driver_ok: bool) {
        self.send_installs();
        self.counters.reserves_dropped += 1;
        self.policy.release(uid, self.pair_bytes());
        if driver_ok && self.fatal.is_none() {
            match self.driver.send(&DriverRequest::DropStaged { id }, &[]) {
                Ok(sent) => sent.tag(InFlight::DropStaged(id)),
                Err(e) => self.fatal = Some(e.to_string()),
            }
        }
        tracing::debug!(pair = id, uid, "reserved pair dropped unused");
    }

    /// Channel memory of one pair of the default geometry (what a reserve holds of a quota).
    fn pair_bytes(&self) -> u64 {
        2 * (self.default_spec.data_bytes + self.default_spec.control_bytes())
    }

    /// `Reserve`: hands the app a staged pair for a later `OpenReserved`.
    fn reserve(&mut self, who: &Who) -> Result<(AppReply, Vec<OwnedFd>), AppError> {
        let held = self.clients.get(&who.cid).map_or(0, |c| c.reserved.len());
        if held >= MAX_RESERVED_PER_CLIENT {
            self.counters.reserves_refused += 1;
            return Err(app_err(
                AppErrorKind::NoBufferSpace,
                format!(
                    "this connection holds {held} reserved channel pair(s) already, the most one may hold"
                ),
            ));
        }
        let not_now = |why: &str| {
            app_err(
                AppErrorKind::NotReady,
                format!("no channel pair to reserve now ({why}): open without one"),
            )
        };
        if !self.staging {
            self.counters.reserves_unavailable += 1;
            return Err(not_now("the driver does not stage pairs"));
        }
        if self.reserved_total() >= MAX_RESERVED {
            self.counters.reserves_unavailable += 1;
            return Err(not_now("the most pairs the driver keeps are reserved"));
        }
        if self.staged.is_empty()
            && self
                .driver
                .in_flight()
                .any(|f| matches!(f, InFlight::Stage(_)))
        {
            self.settle();
        }
        if self.staged.is_empty() {
            self.counters.reserves_unavailable += 1;
            return Err(not_now("none staged"));
        }
        let bytes = self.pair_bytes();
        if let Err(mut e) = self.policy.reserve(who.uid, bytes) {
            self.counters.reserves_refused += 1;
            e.message = format!("cannot reserve a channel pair: {}", e.message);
            return Err(e);
        }
        let Some(pair) = self.staged.pop_front() else {
            self.policy.release(who.uid, bytes);
            self.counters.reserves_unavailable += 1;
            return Err(not_now("none staged"));
        };
        if let Some(c) = self.clients.get_mut(&who.cid) {
            c.reserved.push(pair.id);
        }
        self.counters.reserves_taken += 1;
        tracing::debug!(pair = pair.id, uid = who.uid, "channel pair reserved");
        let mut fds = pair.tx.into_vec();
        fds.extend(pair.rx.into_vec());
        Ok((
            AppReply::Reserved {
                id: pair.id,
                tx: self.default_spec,
                rx: self.default_spec,
            },
            fds,
        ))
    }

    /// Removes an installed flow everywhere.
    fn teardown(&mut self, fid: FlowId, driver_ok: bool) {
        // A reply that could not be sent (its client is being dropped) left its install here.
        self.send_installs();
        let Some(f) = self.flows.remove(&fid) else {
            return;
        };
        // A TCP connection: what the driver saw of it decides between TIME_WAIT and RST.
        let tcp_conn = match (f.claim, f.fib.remote) {
            (Some((ip_proto::TCP, port, Claim::Connected(_))), Some(remote)) => {
                Some((port, remote))
            }
            _ => None,
        };
        let mut seen = None;
        if driver_ok && self.fatal.is_none() {
            if tcp_conn.is_some() {
                // Waited for: the reply carries the connection's sequence state as it stood
                // when the flow stopped sending, which the RST must match (asked before the
                // removal, it would miss what the flow sent in between).
                seen = self.remove_tcp_flow(fid);
            } else {
                // Not waited for: the driver removes it before it serves our next request, and
                // the reply is checked when read (`on_answered`).
                match self
                    .driver
                    .send(&DriverRequest::RemoveFlow { id: fid }, &[])
                {
                    Ok(sent) => sent.tag(InFlight::Remove(fid)),
                    Err(e) => self.fatal = Some(e.to_string()),
                }
            }
        }
        let _ = self.admission.remove_flow(fid.0);
        if let Some((proto, port, claim)) = f.claim {
            let tw = matches!(claim, Claim::Connected(_)) && proto == ip_proto::TCP;
            self.ports.release(
                proto,
                port,
                claim,
                f.owner,
                tw.then_some((Instant::now(), self.set.time_wait)),
            );
        }
        if let (Some((port, remote)), Some(seen)) = (tcp_conn, seen) {
            self.after_tcp_close(port, remote, f.fib.next_hop_mac, seen);
        }
        self.policy.release(f.who.uid, f.channel_bytes);
        tracing::debug!(flow = %fid, "flow removed");
    }

    /// Removes a TCP flow from the driver; its sequence space as the driver saw it last
    /// (`None` if it never carried a segment or the driver cannot say).
    fn remove_tcp_flow(&mut self, fid: FlowId) -> Option<TcpSeen> {
        match self
            .driver
            .call(&DriverRequest::RemoveFlow { id: fid }, &[])
        {
            Ok(DriverReply::FlowStats(v)) => v.into_iter().find(|s| s.id == fid)?.tcp,
            Ok(DriverReply::Error { message, .. }) => {
                tracing::warn!(flow = %fid, %message, "driver did not remove the flow");
                None
            }
            Ok(_) => None,
            Err(e) => {
                self.fatal = Some(e.to_string());
                None
            }
        }
    }

    /// A TCP connection's flow is gone. Closed both ways (FIN sent and received): TIME_WAIT
    /// with its sequence state, so the flow manager answers for it (RFC 793, the registry
    /// server of the Mach paper §3.4). Otherwise its app left it open (exit, crash, `kill -9`):
    /// the peer gets an RST it accepts, at our next sequence number.
    fn after_tcp_close(
        &mut self,
        port: u16,
        remote: SocketAddrV4,
        mac: Option<[u8; 6]>,
        seen: TcpSeen,
    ) {
        match tcp_close(&seen) {
            TcpClose::TimeWait => {
                self.ports.set_time_wait_state(port, remote, seen);
                self.counters.tcp_time_waits += 1;
            }
            TcpClose::Reset { seq, ack } => {
                if let Some(mac) = mac {
                    self.host.reset(port, remote, mac, seq, ack, &mut self.tx);
                    self.counters.tcp_resets_on_close += 1;
                    tracing::debug!(port, %remote, "connection left open: reset");
                }
            }
            TcpClose::Nothing => {}
        }
    }

    /// Installs a listening port's own flow (see [`Listener::flow`]); `None` (and a warning)
    /// if that fails: SYNs then reach the flow manager through its host flow.
    fn listen_flow(&mut self, port: u16) -> Option<ListenFlow> {
        let spec = ChannelSpec {
            data_bytes: (u64::from(LISTEN_FLOW_SLOTS) * u64::from(self.set.max_frame_bytes))
                .div_ceil(PAGE_BYTES)
                * PAGE_BYTES,
            slots: LISTEN_FLOW_SLOTS,
            max_packet_bytes: self.set.max_frame_bytes,
            hugetlb: false,
        };
        let id = self.alloc_flow_id();
        let result = (|| -> Result<ListenFlow, String> {
            let tx = nemflow_rbuf::create(&spec).map_err(|e| e.to_string())?;
            let rx = nemflow_rbuf::create(&spec).map_err(|e| e.to_string())?;
            self.admission
                .add_flow(id.0, to_sched(&Qos::BEST_EFFORT), 0)
                .map_err(|e| e.to_string())?;
            let local = SocketAddrV4::new(self.routes.ip(), port);
            let req = DriverRequest::InstallFlow {
                id,
                filter: Filter::Bound {
                    proto: ip_proto::TCP,
                    local,
                    broadcast: false,
                },
                template: Template {
                    src_mac: self.mac,
                    kind: TemplateKind::Ipv4 {
                        src: *local.ip(),
                        proto: ip_proto::TCP,
                        src_port: port,
                        dst: None,
                    },
                },
                qos: Qos::BEST_EFFORT,
                tx: spec,
                rx: spec,
            };
            let fds: Vec<BorrowedFd<'_>> = tx.as_fds().into_iter().chain(rx.as_fds()).collect();
            let reply = self.driver.call(&req, &fds);
            drop(fds);
            match reply {
                Ok(DriverReply::Ok) => {}
                Ok(DriverReply::Error { message, .. }) => {
                    let _ = self.admission.remove_flow(id.0);
                    return Err(message);
                }
                Ok(_) => {
                    let _ = self.admission.remove_flow(id.0);
                    return Err("unexpected driver reply".into());
                }
                Err(e) => {
                    let _ = self.admission.remove_flow(id.0);
                    self.fatal = Some(e.to_string());
                    return Err(e.to_string());
                }
            }
            let ro = rx.with_read_only_data().map_err(|e| e.to_string())?;
            drop(rx);
            let mut consumer = rmm::Consumer::attach(&spec, ro).map_err(|e| e.to_string())?;
            consumer.post_free().map_err(|e| e.to_string())?;
            Ok(ListenFlow { id, rx: consumer })
        })();
        match result {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(port, error = %e, "no flow of its own for the listening port: SYNs come by the host flow");
                None
            }
        }
    }

    /// Ends a listen registration: its waiting requests go, its flow leaves the driver.
    fn drop_listener(&mut self, port: u16, driver_ok: bool) {
        let Some(l) = self.listeners.remove(&port) else {
            return;
        };
        if let Some(f) = l.flow {
            if driver_ok && self.fatal.is_none() {
                if let Err(e) = self
                    .driver
                    .call(&DriverRequest::RemoveFlow { id: f.id }, &[])
                {
                    self.fatal = Some(e.to_string());
                }
            }
            let _ = self.admission.remove_flow(f.id.0);
        }
    }

    /// Reads a listening port's flow while its backlog has room: SYNs become call-backs, other
    /// segments get the host's answers (TIME_WAIT, RST).
    fn on_listen_frames(&mut self, port: u16, now: Instant) {
        let mut frames = Vec::new();
        {
            let Some(l) = self.listeners.get_mut(&port) else {
                return;
            };
            let room = (l.backlog as usize).saturating_sub(l.pending.len());
            let Some(f) = l.flow.as_mut() else { return };
            // A few more than the room: stray segments and duplicates take no place.
            for _ in 0..(room + 8).min(FRAMES_PER_TURN) {
                match f.rx.pop() {
                    Ok(Some(pkt)) => {
                        let n = f.rx.copy_out(&pkt, &mut self.host_flow.buf).unwrap_or(0);
                        frames.push(self.host_flow.buf[..n].to_vec());
                        if f.rx.repost(pkt).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(nemflow_rbuf::Error::InvalidIoRec(_)) => {
                        self.counters.host_rx_invalid += 1;
                    }
                    Err(e) => {
                        tracing::warn!(port, error = %e, "listening port's flow failed");
                        break;
                    }
                }
            }
        }
        for f in frames {
            self.on_unmatched(&f, now);
        }
    }

    /// A SYN to a listening port: call its app back, within the port's backlog.
    fn on_syn(&mut self, syn: SynNews, now: Instant) {
        let Some(l) = self.listeners.get_mut(&syn.port) else {
            return;
        };
        if l.pending.contains_key(&syn.remote) {
            self.counters.syn_duplicates += 1;
            return;
        }
        if l.pending.len() >= l.backlog as usize {
            self.counters.syn_backlog_full += 1;
            return;
        }
        l.pending.insert(
            syn.remote,
            PendingSyn {
                syn: syn.frame.clone(),
                since: now,
                reopens_time_wait: syn.reopens_time_wait,
            },
        );
        let owner = l.owner;
        self.counters.syn_callbacks += 1;
        self.send_event(
            owner,
            AppEvent::Incoming(Incoming {
                listen_port: syn.port,
                remote: syn.remote,
                syn: syn.frame,
                isn_above: syn.isn_above,
            }),
        );
    }

    /// Takes the waiting request `remote` → `port` of this client off its listener.
    fn take_pending(
        &mut self,
        who: &Who,
        port: u16,
        remote: SocketAddrV4,
    ) -> Result<PendingSyn, AppError> {
        let l = self
            .listeners
            .get_mut(&port)
            .filter(|l| l.owner == who.cid)
            .ok_or_else(|| {
                app_err(
                    AppErrorKind::Invalid,
                    format!("not listening on tcp port {port}"),
                )
            })?;
        l.pending.remove(&remote).ok_or_else(|| {
            app_err(
                AppErrorKind::Invalid,
                format!("no connection request from {remote} to port {port} is waiting"),
            )
        })
    }

    /// `Accept`: the connection's own flow, opened as a connected TCP flow on the listening
    /// port (the listener's owner owns the port, so the claim is its own).
    fn accept_flow(
        &mut self,
        who: &Who,
        a: AcceptFlow,
        now: Instant,
    ) -> Option<Result<(AppReply, Vec<OwnedFd>), AppError>> {
        let pending = match self.take_pending(who, a.listen_port, a.remote) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if pending.reopens_time_wait {
            self.ports.clear_time_wait(a.listen_port, a.remote);
        }
        self.counters.tcp_accepts += 1;
        let open = OpenFlow {
            qos: a.qos,
            buffers: a.buffers,
            ..OpenFlow::tcp(a.listen_port, a.remote)
        };
        match self.open(who, open, None, now) {
            Ok(Some(p)) => Some(self.finish_open(*p.0, p.1)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Undoes a prepared (not installed) flow. A reserved pair's quota stays with the pair,
    /// which stays reserved.
    fn rollback(&mut self, p: &Prepared) {
        let _ = self.admission.remove_flow(p.id.0);
        if let Some((proto, port, claim)) = p.claim {
            self.ports.release(proto, port, claim, p.who.cid, None);
        }
        if p.reserved.is_none() {
            self.policy.release(p.who.uid, p.channel_bytes);
        }
    }

    /// Handles one request; `None` when it waits for ARP.
    fn handle(
        &mut self,
        who: &Who,
        req: AppRequest,
        now: Instant,
    ) -> Option<Result<(AppReply, Vec<OwnedFd>), AppError>> {
        let plain = |r: Result<AppReply, AppError>| Some(r.map(|r| (r, Vec::new())));
        match req {
            AppRequest::Hello { client } => {
                if let Some(c) = self.clients.get_mut(&who.cid) {
                    if c.comm == "?" {
                        c.comm = client
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(32)
                            .collect();
                    }
                }
                plain(Ok(AppReply::Hello(HostInfo {
                    ip: self.routes.ip(),
                    prefix_len: self.routes.prefix_len(),
                    mac: self.mac,
                    mtu: self.set.mtu,
                    gateway: self.routes.gateway(),
                    uid: who.uid,
                    pid: who.pid,
                })))
            }
            AppRequest::Open(o) => match self.open(who, o, None, now) {
                Ok(Some(p)) => {
                    let r = self.finish_open(*p.0, p.1);
                    Some(r)
                }
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            },
            AppRequest::Reserve => Some(self.reserve(who)),
            AppRequest::Unreserve { reserved } => {
                let had = self.clients.get_mut(&who.cid).is_some_and(|c| {
                    let before = c.reserved.len();
                    c.reserved.retain(|&r| r != reserved);
                    c.reserved.len() < before
                });
                if !had {
                    self.counters.opens_reserved_refused += 1;
                    return plain(Err(app_err(
                        AppErrorKind::NoSuchFlow,
                        format!("no reserved channel pair {reserved} on this connection"),
                    )));
                }
                self.drop_reserved(who.uid, reserved, true);
                plain(Ok(AppReply::Ok))
            }
            AppRequest::OpenReserved { open, reserved } => {
                let holds = self
                    .clients
                    .get(&who.cid)
                    .is_some_and(|c| c.reserved.contains(&reserved));
                if !holds {
                    self.counters.opens_reserved_refused += 1;
                    return Some(Err(app_err(
                        AppErrorKind::NoSuchFlow,
                        format!(
                            "no reserved channel pair {reserved} on this connection (another's, used already, or never reserved)"
                        ),
                    )));
                }
                match self.open(who, open, Some(reserved), now) {
                    Ok(Some(p)) => Some(self.finish_open(*p.0, p.1)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                }
            }
            AppRequest::SetQos { flow, qos } => {
                plain(self.set_qos(who, flow, qos).map(|()| AppReply::Ok))
            }
            AppRequest::Close { flow } => {
                let owned = self.flows.get(&flow).is_some_and(|f| f.owner == who.cid);
                if !owned {
                    return plain(Err(no_such_flow(flow)));
                }
                if let Some(c) = self.clients.get_mut(&who.cid) {
                    c.flows.remove(&flow);
                }
                // Removed right after the reply is on its way: the app need not wait for the
                // driver, and nothing else is served before the removal is complete.
                self.deferred.push(flow);
                self.counters.flows_closed += 1;
                plain(Ok(AppReply::Ok))
            }
            AppRequest::Listen { local_ip, port } => {
                plain(self.listen(who, local_ip, port, DEFAULT_BACKLOG, now))
            }
            AppRequest::Unlisten { port } => {
                let had = self
                    .clients
                    .get_mut(&who.cid)
                    .is_some_and(|c| c.listens.remove(&port));
                if !had {
                    return plain(Err(app_err(
                        AppErrorKind::Invalid,
                        format!("not listening on tcp port {port}"),
                    )));
                }
                self.ports
                    .release(ip_proto::TCP, port, Claim::Listen, who.cid, None);
                self.drop_listener(port, true);
                plain(Ok(AppReply::Ok))
            }
            AppRequest::ListFlows => plain(Ok(AppReply::Flows(self.listing(who, true, now)))),
            AppRequest::AllFlows => plain(Ok(AppReply::Flows(self.listing(who, false, now)))),
            AppRequest::Resolve { ip } => match self.resolve(who, ip, now) {
                Ok(Some(n)) => plain(Ok(AppReply::Resolved(n))),
                Ok(None) => None,
                Err(e) => plain(Err(e)),
            },
            AppRequest::Stats => plain(self.stats(who, now).map(AppReply::Stats)),
            AppRequest::Arp => plain(Ok(AppReply::Arp(self.host.arp().entries(now)))),
            AppRequest::Routes => plain(Ok(AppReply::Routes(self.routes.entries()))),
            AppRequest::ListenBacklog {
                local_ip,
                port,
                backlog,
            } => plain(self.listen(who, local_ip, port, backlog, now)),
            AppRequest::Accept(a) => self.accept_flow(who, a, now),
            AppRequest::Reject {
                listen_port,
                remote,
                reset,
            } => {
                let pending = match self.take_pending(who, listen_port, remote) {
                    Ok(p) => p,
                    Err(e) => return plain(Err(e)),
                };
                self.counters.tcp_rejects += 1;
                if reset {
                    self.host.refuse_syn(now, &pending.syn, &mut self.tx);
                }
                plain(Ok(AppReply::Ok))
            }
        }
    }

    fn check_local_ip(&self, ip: Option<Ipv4Addr>) -> Result<Ipv4Addr, AppError> {
        match ip {
            None => Ok(self.routes.ip()),
            Some(a) if a.is_unspecified() || a == self.routes.ip() => Ok(self.routes.ip()),
            Some(a) => Err(app_err(
                AppErrorKind::AddrNotAvailable,
                format!("{a} is not this host's address ({})", self.routes.ip()),
            )),
        }
    }

    fn channel_spec(&self, bytes: u64, slots: u32, dir: &str) -> Result<ChannelSpec, AppError> {
        let bytes = if bytes == 0 {
            self.set.channel_bytes
        } else {
            bytes
        };
        let bytes = bytes.div_ceil(PAGE_BYTES).saturating_mul(PAGE_BYTES);
        if bytes > self.set.max_channel_bytes {
            return Err(app_err(
                AppErrorKind::NoBufferSpace,
                format!(
                    "{dir} buffer of {bytes} bytes is larger than flowmgr.max_channel_bytes ({})",
                    self.set.max_channel_bytes
                ),
            ));
        }
        let bytes =
            bytes.max(u64::from(self.set.max_frame_bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES);
        let slots = if slots == 0 {
            self.set.channel_slots
        } else {
            slots
        };
        let slots = slots.clamp(2, MAX_SLOTS).next_power_of_two().min(MAX_SLOTS);
        let spec = ChannelSpec {
            data_bytes: bytes,
            slots,
            max_packet_bytes: self.set.max_frame_bytes,
            hugetlb: false,
        };
        spec.validate()
            .map_err(|e| app_err(AppErrorKind::Invalid, format!("{dir} buffers: {e}")))?;
        Ok(spec)
    }

    fn alloc_flow_id(&mut self) -> FlowId {
        loop {
            let id = FlowId(self.next_flow);
            self.next_flow = self.next_flow.checked_add(1).unwrap_or(HOST_FLOW.0 + 1);
            if id != HOST_FLOW && id.0 != 0 && !self.flows.contains_key(&id) {
                return id;
            }
        }
    }

    /// Phase one of an open: checks, port, admission, route. Returns the prepared flow and its
    /// next hop's MAC when it can be installed now; `None` when it was parked for ARP.
    #[allow(clippy::type_complexity)]
    /// `reserved`: the staged pair the app reserved for the flow (`OpenReserved`), which holds
    /// the flow's quota already.
    fn open(
        &mut self,
        who: &Who,
        o: OpenFlow,
        reserved: Option<u32>,
        now: Instant,
    ) -> Result<Option<(Box<Prepared>, Option<[u8; 6]>)>, AppError> {
        to_sched(&o.qos).validate().map_err(sched_err)?;
        let local_ip = self.check_local_ip(o.local_ip)?;
        let Buffers {
            tx_bytes,
            tx_slots,
            rx_bytes,
            rx_slots,
        } = o.buffers;
        let tx = self.channel_spec(tx_bytes, tx_slots, "transmit")?;
        let rx = self.channel_spec(rx_bytes, rx_slots, "receive")?;
        let channel_bytes = tx.data_bytes + tx.control_bytes() + rx.data_bytes + rx.control_bytes();
        if reserved.is_some() && (tx != self.default_spec || rx != self.default_spec) {
            self.counters.opens_reserved_refused += 1;
            return Err(app_err(
                AppErrorKind::Invalid,
                "a reserved channel pair has the default geometry: open it with default buffers",
            ));
        }
        // A reserved pair took the flow's quota when it was reserved.
        let quota = reserved.is_none();
        let mut next = None;
        let (claim, local) = match o.transport {
            Transport::Raw { ethertype } => {
                self.policy.check_raw(who.uid, ethertype)?;
                if o.remote.is_some() {
                    return Err(app_err(AppErrorKind::Invalid, "raw flows have no remote"));
                }
                (None, SocketAddrV4::new(local_ip, 0))
            }
            Transport::Udp | Transport::Tcp => {
                let proto = o.transport.ip_proto().unwrap_or(ip_proto::UDP);
                let name = if proto == ip_proto::TCP { "tcp" } else { "udp" };
                if proto == ip_proto::TCP && o.remote.is_none() {
                    return Err(app_err(
                        AppErrorKind::Invalid,
                        "TCP flows are connected: give the remote (use Listen to wait for connections)",
                    ));
                }
                if let Some(r) = o.remote {
                    if r.port() == 0 {
                        return Err(app_err(
                            AppErrorKind::AddrNotAvailable,
                            format!("remote {r}: port 0 cannot be sent to"),
                        ));
                    }
                    let nh = self.routes.lookup(*r.ip()).map_err(route_err)?;
                    if proto == ip_proto::TCP && nh.fixed_mac().is_some() {
                        return Err(app_err(
                            AppErrorKind::Invalid,
                            format!(
                                "TCP to {}: broadcast and multicast have no connections",
                                r.ip()
                            ),
                        ));
                    }
                    next = Some(nh);
                }
                self.policy.check_port(who.uid, name, o.local_port)?;
                let claim = match o.remote {
                    Some(r) => Claim::Connected(r),
                    None => Claim::Bound,
                };
                if quota {
                    self.policy.reserve(who.uid, channel_bytes)?;
                }
                let port = match self.ports.claim(proto, o.local_port, claim, who.cid, now) {
                    Ok(p) => p,
                    Err(e) => {
                        if quota {
                            self.policy.release(who.uid, channel_bytes);
                        }
                        return Err(port_err(e));
                    }
                };
                (
                    Some((proto, port, claim)),
                    SocketAddrV4::new(local_ip, port),
                )
            }
        };
        if claim.is_none() && quota {
            self.policy.reserve(who.uid, channel_bytes)?;
        }
        let id = self.alloc_flow_id();
        let mut prep = Box::new(Prepared {
            id,
            who: who.clone(),
            transport: o.transport,
            local,
            remote: o.remote,
            broadcast: o.broadcast,
            claim,
            qos: o.qos,
            tx,
            rx,
            channel_bytes,
            next_hop: None,
            reserved,
        });
        if let Err(e) = self.admission.add_flow(id.0, to_sched(&o.qos), 0) {
            // The flow is not in the scheduler: undo port and policy only.
            if let Some((proto, port, claim)) = prep.claim {
                self.ports.release(proto, port, claim, who.cid, None);
            }
            if quota {
                self.policy.release(who.uid, channel_bytes);
            }
            return Err(sched_err(e));
        }
        let mac = match (next, o.transport) {
            (Some(nh), _) => match nh {
                NextHop::Unicast(ip) => {
                    prep.next_hop = Some(ip);
                    match self.host.resolve(ip, now, &mut self.tx) {
                        Lookup::Hit { mac, .. } => Some(mac),
                        Lookup::Started | Lookup::Pending => {
                            self.counters.opens_parked += 1;
                            self.parked.push(Parked {
                                cid: who.cid,
                                ip,
                                job: Job::Open(prep),
                            });
                            return Ok(None);
                        }
                        Lookup::Full => {
                            self.rollback(&prep);
                            return Err(app_err(AppErrorKind::NoBufferSpace, "ARP cache is full"));
                        }
                    }
                }
                other => other.fixed_mac(),
            },
            (None, Transport::Raw { .. }) => None,
            (None, _) => match self.routes.gateway() {
                Some(gw) => {
                    prep.next_hop = Some(gw);
                    // Known: use it; unknown: resolve in the background (FIB-changed follows).
                    match self.host.resolve(gw, now, &mut self.tx) {
                        Lookup::Hit { mac, .. } => Some(mac),
                        _ => None,
                    }
                }
                None => None,
            },
        };
        Ok(Some((prep, mac)))
    }

    /// Phase two of an open: channels, driver, reply.
    fn finish_open(
        &mut self,
        p: Prepared,
        mac: Option<[u8; 6]>,
    ) -> Result<(AppReply, Vec<OwnedFd>), AppError> {
        let r = self.install(&p, mac);
        if r.is_err() {
            self.rollback(&p);
        }
        r
    }

    fn install(
        &mut self,
        p: &Prepared,
        mac: Option<[u8; 6]>,
    ) -> Result<(AppReply, Vec<OwnedFd>), AppError> {
        let no_mem = |e: nemflow_rbuf::Error| {
            app_err(
                AppErrorKind::NoBufferSpace,
                format!("cannot create channels: {e}"),
            )
        };
        let (filter, kind) = match (p.transport, p.claim) {
            (Transport::Raw { ethertype }, _) => (
                Filter::Ethertype(ethertype),
                TemplateKind::Ethertype(ethertype),
            ),
            (_, Some((proto, port, _))) => {
                let filter = match p.remote {
                    Some(remote) => Filter::Connected {
                        proto,
                        local: p.local,
                        remote,
                    },
                    None => Filter::Bound {
                        proto,
                        local: p.local,
                        broadcast: p.broadcast,
                    },
                };
                (
                    filter,
                    TemplateKind::Ipv4 {
                        src: *p.local.ip(),
                        proto,
                        src_port: port,
                        dst: p.remote,
                    },
                )
            }
            (_, None) => return Err(app_err(AppErrorKind::Invalid, "IP flow without a port")),
        };
        let template = Template {
            src_mac: self.mac,
            kind,
        };
        if let Some(pair) = p.reserved {
            return self.install_reserved(p, pair, mac, filter, template);
        }
        let default_geometry = p.tx == self.default_spec && p.rx == self.default_spec;
        if default_geometry && self.staged.is_empty() {
            // A pair the driver is attaching now is ready sooner than a new one.
            if self
                .driver
                .in_flight()
                .any(|f| matches!(f, InFlight::Stage(_)))
            {
                self.settle();
            }
        }
        let staged = if default_geometry {
            self.staged.pop_front()
        } else {
            None
        };
        // The app's ends: from the staged pair, or made now and handed to the driver with the
        // request.
        let (tx, app_rx, reply) = match staged {
            Some(pair) => {
                // Answered without waiting for the driver: it installs the filter while the
                // app attaches, before any later request of ours (it serves them in order).
                // Every check the driver makes on the flow was made here already; should it
                // refuse all the same, the flow is revoked (`on_answered`).
                self.counters.opens_staged += 1;
                let req = DriverRequest::InstallStaged {
                    id: p.id,
                    staged: pair.id,
                    filter,
                    template,
                    qos: p.qos,
                };
                self.installs.push((p.id, req));
                (pair.tx, pair.rx, Ok(DriverReply::Ok))
            }
            None => {
                let (tx, rx, app_rx) = self.channels(&p.tx, &p.rx).map_err(no_mem)?;
                let req = DriverRequest::InstallFlow {
                    id: p.id,
                    filter,
                    template,
                    qos: p.qos,
                    tx: p.tx,
                    rx: p.rx,
                };
                let fds: Vec<BorrowedFd<'_>> = tx.as_fds().into_iter().chain(rx.as_fds()).collect();
                let reply = self.driver.call(&req, &fds);
                (tx, app_rx, reply)
            }
        };
        {
            match reply {
                Ok(DriverReply::Ok) => {}
                Ok(DriverReply::Error { kind, message }) => return Err(drv_err(kind, message)),
                Ok(_) => {
                    return Err(app_err(
                        AppErrorKind::DriverUnavailable,
                        "unexpected driver reply to InstallFlow",
                    ))
                }
                Err(e) => {
                    self.fatal = Some(e.to_string());
                    return Err(app_err(AppErrorKind::DriverUnavailable, e.to_string()));
                }
            }
        }
        let opened = self.record_flow(p, mac);
        let mut fds = tx.into_vec();
        fds.extend(app_rx.into_vec());
        Ok((opened, fds))
    }

    /// An open on a pair the app reserved: the driver gets `InstallStaged` after the reply, as
    /// for any staged pair, and the reply carries no fds (the app holds the channels already).
    fn install_reserved(
        &mut self,
        p: &Prepared,
        pair: u32,
        mac: Option<[u8; 6]>,
        filter: Filter,
        template: Template,
    ) -> Result<(AppReply, Vec<OwnedFd>), AppError> {
        // Checked when the request came; the connection was parked since if it waited for ARP.
        let taken = self.clients.get_mut(&p.who.cid).is_some_and(|c| {
            let before = c.reserved.len();
            c.reserved.retain(|&r| r != pair);
            c.reserved.len() < before
        });
        if !taken {
            self.counters.opens_reserved_refused += 1;
            return Err(app_err(
                AppErrorKind::NoSuchFlow,
                format!("no reserved channel pair {pair} on this connection"),
            ));
        }
        self.counters.opens_reserved += 1;
        self.installs.push((
            p.id,
            DriverRequest::InstallStaged {
                id: p.id,
                staged: pair,
                filter,
                template,
                qos: p.qos,
            },
        ));
        Ok((self.record_flow(p, mac), Vec::new()))
    }

    /// Enters an installed (or being installed) flow in the table; returns the app's `Opened`
    /// reply (its FIB, QoS and channel geometry).
    fn record_flow(&mut self, p: &Prepared, mac: Option<[u8; 6]>) -> AppReply {
        let fib = Fib {
            flow: p.id,
            local: p.local,
            remote: p.remote,
            src_mac: self.mac,
            next_hop_mac: mac,
            subnet: (self.routes.network(), self.routes.prefix_len()),
            gateway: self.routes.gateway(),
            mtu: self.set.mtu,
        };
        self.flows.insert(
            p.id,
            FlowEntry {
                owner: p.who.cid,
                who: Owner {
                    uid: p.who.uid,
                    pid: p.who.pid,
                    comm: p.who.comm.clone(),
                },
                transport: p.transport,
                claim: p.claim,
                qos: p.qos,
                fib: fib.clone(),
                next_hop: p.next_hop,
                channel_bytes: p.channel_bytes,
                opened: Instant::now(),
            },
        );
        if let Some(c) = self.clients.get_mut(&p.who.cid) {
            c.flows.insert(p.id);
        }
        self.counters.flows_opened += 1;
        tracing::debug!(flow = %p.id, local = %p.local, remote = ?p.remote, uid = p.who.uid, "flow installed");
        AppReply::Opened(Opened {
            fib,
            qos: p.qos,
            tx: p.tx,
            rx: p.rx,
        })
    }

    fn set_qos(&mut self, who: &Who, fid: FlowId, qos: Qos) -> Result<(), AppError> {
        let Some(f) = self.flows.get(&fid).filter(|f| f.owner == who.cid) else {
            return Err(no_such_flow(fid));
        };
        let old = f.qos;
        self.admission
            .set_qos(fid.0, to_sched(&qos), 0)
            .map_err(sched_err)?;
        match self
            .driver
            .call(&DriverRequest::SetQos { id: fid, qos }, &[])
        {
            Ok(DriverReply::Ok) => {
                if let Some(f) = self.flows.get_mut(&fid) {
                    f.qos = qos;
                }
                Ok(())
            }
            other => {
                let _ = self.admission.set_qos(fid.0, to_sched(&old), 0);
                match other {
                    Ok(DriverReply::Error { kind, message }) => Err(drv_err(kind, message)),
                    Err(e) => {
                        self.fatal = Some(e.to_string());
                        Err(app_err(AppErrorKind::DriverUnavailable, e.to_string()))
                    }
                    Ok(_) => Err(app_err(
                        AppErrorKind::DriverUnavailable,
                        "unexpected driver reply to SetQos",
                    )),
                }
            }
        }
    }

    fn listen(
        &mut self,
        who: &Who,
        local_ip: Option<Ipv4Addr>,
        port: u16,
        backlog: u32,
        now: Instant,
    ) -> Result<AppReply, AppError> {
        self.check_local_ip(local_ip)?;
        self.policy.check_port(who.uid, "tcp", port)?;
        let port = self
            .ports
            .claim(ip_proto::TCP, port, Claim::Listen, who.cid, now)
            .map_err(port_err)?;
        if let Some(c) = self.clients.get_mut(&who.cid) {
            c.listens.insert(port);
        }
        let flow = self.listen_flow(port);
        self.listeners.insert(
            port,
            Listener {
                owner: who.cid,
                backlog: backlog.clamp(1, MAX_BACKLOG),
                pending: BTreeMap::new(),
                flow,
            },
        );
        Ok(AppReply::Listening { port })
    }

    fn resolve(
        &mut self,
        who: &Who,
        dst: Ipv4Addr,
        now: Instant,
    ) -> Result<Option<Neighbour>, AppError> {
        let nh = self.routes.lookup(dst).map_err(route_err)?;
        let ip = match nh {
            NextHop::Unicast(ip) => ip,
            other => {
                return Ok(Some(Neighbour {
                    ip: dst,
                    next_hop: dst,
                    mac: other.fixed_mac().unwrap_or([0xff; 6]),
                }))
            }
        };
        match self.host.resolve(ip, now, &mut self.tx) {
            Lookup::Hit { mac, .. } => Ok(Some(Neighbour {
                ip: dst,
                next_hop: ip,
                mac,
            })),
            Lookup::Started | Lookup::Pending => {
                self.parked.push(Parked {
                    cid: who.cid,
                    ip,
                    job: Job::Resolve { dst },
                });
                Ok(None)
            }
            Lookup::Full => Err(app_err(AppErrorKind::NoBufferSpace, "ARP cache is full")),
        }
    }

    fn on_arp_news(&mut self, news: ArpNews, now: Instant) {
        let ip = match news {
            ArpNews::Resolved { ip, .. } | ArpNews::Failed { ip } => ip,
        };
        // Waiters first.
        let waiting: Vec<Parked> = {
            let (mine, rest) = std::mem::take(&mut self.parked)
                .into_iter()
                .partition(|p| p.ip == ip);
            self.parked = rest;
            mine
        };
        for p in waiting {
            if let Some(c) = self.clients.get_mut(&p.cid) {
                c.parked = false;
            }
            let result = match (news, p.job) {
                (ArpNews::Resolved { mac, .. }, Job::Open(prep)) => {
                    self.finish_open(*prep, Some(mac))
                }
                (ArpNews::Resolved { mac, .. }, Job::Resolve { dst }) => Ok((
                    AppReply::Resolved(Neighbour {
                        ip: dst,
                        next_hop: ip,
                        mac,
                    }),
                    Vec::new(),
                )),
                (ArpNews::Failed { .. }, job) => {
                    if let Job::Open(prep) = &job {
                        self.rollback(prep);
                    }
                    Err(app_err(
                        AppErrorKind::HostUnreachable,
                        format!("no ARP reply from {ip}"),
                    ))
                }
            };
            self.reply(p.cid, result);
            // Requests that arrived behind the parked one.
            self.process(p.cid, now);
        }
        // Then flows whose next hop's MAC changed or became known.
        if let ArpNews::Resolved { mac, .. } = news {
            let changed: Vec<(u64, Fib)> = self
                .flows
                .values_mut()
                .filter(|f| f.next_hop == Some(ip) && f.fib.next_hop_mac != Some(mac))
                .map(|f| {
                    f.fib.next_hop_mac = Some(mac);
                    (f.owner, f.fib.clone())
                })
                .collect();
            for (owner, fib) in changed {
                self.send_event(owner, AppEvent::FibChanged(fib));
            }
        }
    }

    fn on_host_frames(&mut self, now: Instant) -> Result<(), RunError> {
        let mut frames = Vec::new();
        for _ in 0..FRAMES_PER_TURN {
            match self.host_flow.rx.pop() {
                Ok(Some(pkt)) => {
                    let n = self
                        .host_flow
                        .rx
                        .copy_out(&pkt, &mut self.host_flow.buf)
                        .unwrap_or(0);
                    frames.push(self.host_flow.buf[..n].to_vec());
                    if let Err(e) = self.host_flow.rx.repost(pkt) {
                        return Err(RunError::HostFlow(e.to_string()));
                    }
                }
                Ok(None) => break,
                Err(nemflow_rbuf::Error::InvalidIoRec(_)) => self.counters.host_rx_invalid += 1,
                Err(e) => return Err(RunError::HostFlow(e.to_string())),
            }
        }
        for f in frames {
            self.on_unmatched(&f, now);
        }
        Ok(())
    }

    /// A frame no connection took (from the host flow or a listening port's flow).
    fn on_unmatched(&mut self, f: &[u8], now: Instant) {
        let ports = &self.ports;
        let listeners = &self.listeners;
        let lookup = |proto: u8, port: u16, remote: SocketAddrV4| {
            let tcp = proto == ip_proto::TCP;
            SapLookup {
                held: ports.holds(proto, port, remote),
                listening: tcp && listeners.contains_key(&port),
                time_wait: if tcp {
                    ports.time_wait_of(port, remote, now)
                } else {
                    None
                },
            }
        };
        match self.host.on_frame(now, f, lookup, &mut self.tx) {
            Some(News::Arp(n)) => self.on_arp_news(n, now),
            Some(News::Syn(syn)) => self.on_syn(syn, now),
            None => {}
        }
    }

    /// Sends what the host queued on its own flow.
    fn transmit(&mut self) {
        for mut frame in self.tx.drain(..) {
            if frame.len() < 60 {
                frame.resize(60, 0);
            }
            let sent = (|| -> Result<bool, nemflow_rbuf::Error> {
                let Some(ext) = self.host_flow.tx.alloc(frame.len())? else {
                    return Ok(false);
                };
                self.host_flow.tx.buf_mut(ext)?.copy_from_slice(&frame);
                match self.host_flow.tx.push(IoRec::single(ext, 0)) {
                    Ok(()) => Ok(true),
                    Err(nemflow_rbuf::Error::Full) => {
                        self.host_flow.tx.free(ext)?;
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })();
            match sent {
                Ok(true) => self.counters.host_tx_frames += 1,
                Ok(false) => self.counters.host_tx_dropped += 1,
                Err(e) => {
                    self.counters.host_tx_dropped += 1;
                    tracing::warn!(error = %e, "host flow transmit failed");
                }
            }
        }
    }

    fn flow_info(&self, id: FlowId, f: &FlowEntry, show_owner: bool, now: Instant) -> FlowInfo {
        FlowInfo {
            id,
            kind: FlowKind::Flow,
            transport: f.transport,
            local: f.fib.local,
            remote: f.fib.remote,
            qos: f.qos,
            owner: show_owner.then(|| f.who.clone()),
            channel_bytes: f.channel_bytes,
            age_ms: now.saturating_duration_since(f.opened).as_millis() as u64,
        }
    }

    fn listing(&self, who: &Who, mine: bool, now: Instant) -> Vec<FlowInfo> {
        let see = |uid: u32| who.uid == 0 || who.uid == uid;
        let mut v = Vec::new();
        if !mine {
            v.push(FlowInfo {
                id: HOST_FLOW,
                kind: FlowKind::Host,
                transport: Transport::Raw { ethertype: 0 },
                local: SocketAddrV4::new(self.routes.ip(), 0),
                remote: None,
                qos: Qos::BEST_EFFORT,
                owner: Some(Owner {
                    uid: rustix::process::getuid().as_raw(),
                    pid: rustix::process::getpid().as_raw_pid(),
                    comm: "nemflow-flowmgr".into(),
                }),
                channel_bytes: 0,
                age_ms: now
                    .saturating_duration_since(self.host_flow_opened)
                    .as_millis() as u64,
            });
        }
        for (&id, f) in &self.flows {
            if mine && f.owner != who.cid {
                continue;
            }
            v.push(self.flow_info(id, f, see(f.who.uid), now));
        }
        for (&cid, c) in &self.clients {
            if mine && cid != who.cid {
                continue;
            }
            for &port in &c.listens {
                let id = self
                    .listeners
                    .get(&port)
                    .and_then(|l| l.flow.as_ref())
                    .map_or(FlowId(0), |f| f.id);
                v.push(FlowInfo {
                    id,
                    kind: FlowKind::Listen,
                    transport: Transport::Tcp,
                    local: SocketAddrV4::new(self.routes.ip(), port),
                    remote: None,
                    qos: Qos::BEST_EFFORT,
                    owner: see(c.uid).then(|| c.owner()),
                    channel_bytes: 0,
                    age_ms: 0,
                });
            }
        }
        for (&cid, c) in &self.clients {
            if mine && cid != who.cid {
                continue;
            }
            for _ in &c.reserved {
                v.push(FlowInfo {
                    id: FlowId(0),
                    kind: FlowKind::Reserved,
                    transport: Transport::Raw { ethertype: 0 },
                    local: SocketAddrV4::new(self.routes.ip(), 0),
                    remote: None,
                    qos: Qos::BEST_EFFORT,
                    owner: see(c.uid).then(|| c.owner()),
                    channel_bytes: self.pair_bytes(),
                    age_ms: 0,
                });
            }
        }
        if !mine {
            for (port, remote, left) in self.ports.time_waits(now) {
                v.push(FlowInfo {
                    id: FlowId(0),
                    kind: FlowKind::TimeWait,
                    transport: Transport::Tcp,
                    local: SocketAddrV4::new(self.routes.ip(), port),
                    remote: Some(remote),
                    qos: Qos::BEST_EFFORT,
                    owner: None,
                    channel_bytes: 0,
                    age_ms: left.as_millis() as u64,
                });
            }
        }
        v
    }

    fn stats(&mut self, who: &Who, now: Instant) -> Result<StatsReport, AppError> {
        let lost = |d: &mut Self, e: LinkError| {
            d.fatal = Some(e.to_string());
            app_err(AppErrorKind::DriverUnavailable, e.to_string())
        };
        let flow_stats = match self
            .driver
            .call(&DriverRequest::FlowStats { id: None }, &[])
        {
            Ok(DriverReply::FlowStats(s)) => s,
            Ok(DriverReply::Error { kind, message }) => return Err(drv_err(kind, message)),
            Ok(_) => Vec::new(),
            Err(e) => return Err(lost(self, e)),
        };
        let port = match self.driver.call(&DriverRequest::PortInfo, &[]) {
            Ok(DriverReply::PortInfo(p)) => p,
            Ok(DriverReply::Error { kind, message }) => return Err(drv_err(kind, message)),
            Ok(_) => PortInfo::default(),
            Err(e) => return Err(lost(self, e)),
        };
        let by_id: BTreeMap<FlowId, FlowStats> =
            flow_stats.into_iter().map(|s| (s.id, s)).collect();
        let flows = self
            .listing(who, false, now)
            .into_iter()
            .filter(|f| {
                matches!(f.kind, FlowKind::Flow | FlowKind::Host)
                    || (f.kind == FlowKind::Listen && f.id != FlowId(0))
            })
            .map(|f| {
                let s = by_id.get(&f.id).cloned().unwrap_or(FlowStats {
                    id: f.id,
                    ..FlowStats::default()
                });
                (f, s)
            })
            .collect();
        let mut flowmgr = self.counters.list();
        flowmgr.extend(self.host.counters().list());
        Ok(StatsReport {
            port,
            flows,
            flowmgr,
        })
    }
}

fn no_such_flow(fid: FlowId) -> AppError {
    app_err(
        AppErrorKind::NoSuchFlow,
        format!("no flow {fid} on this connection"),
    )
}

/// Writes as much of a client's queue as the socket takes now.
fn flush(c: &mut Conn) -> Result<(), ()> {
    while let Some(o) = c.out.front_mut() {
        if o.sent == 0 {
            let fds: Vec<BorrowedFd<'_>> = o.fds.iter().map(|f| f.as_fd()).collect();
            match fdpass::send_fds(&c.sock, &o.bytes, &fds) {
                Ok(n) => {
                    o.sent = n;
                    o.fds.clear();
                }
                Err(nemflow_rbuf::Error::Os { source, .. })
                    if source.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    return Ok(())
                }
                Err(_) => return Err(()),
            }
        } else {
            match rustix::net::send(
                &c.sock,
                &o.bytes[o.sent..],
                rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => o.sent += n,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Err(()),
            }
        }
        if o.sent >= o.bytes.len() {
            c.out_bytes -= o.bytes.len();
            c.out.pop_front();
        }
    }
    Ok(())
}
