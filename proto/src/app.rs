//! The application ⇄ flow manager protocol (on the flow manager's socket, any allowed uid).
//!
//! Framing is [`crate::wire`]'s: every [`AppRequest`] is answered by exactly one
//! [`ServerMsg::Reply`], in order; [`ServerMsg::Event`]s (FIB changed, flow revoked) may arrive
//! between replies at any time. Who is asking comes from `SO_PEERCRED`, never from a message
//! field, and the app's flows live exactly as long as its connection: when the socket closes
//! (exit, crash, `kill -9`) every flow it opened is torn down.
//!
//! [`AppReply::Opened`] carries the flow's channels as [`OPENED_FDS`] fds: the transmit channel's
//! four (data writable), then the receive channel's four (data read-only), each in
//! [`nemflow_rbuf::ChannelFds`] order. No request carries fds; a request with fds is an error.
//!
//! **Reserved channel pairs.** An app may take a channel pair ahead of any open
//! ([`AppRequest::Reserve`], answered with [`AppReply::Reserved`] and its [`OPENED_FDS`] fds in
//! `Opened`'s order), attach it while it has nothing better to do, and name it in a later open
//! ([`AppRequest::OpenReserved`]), which is then answered with an [`AppReply::Opened`] that
//! carries **no** fds: the flow runs on the channels the app mapped already. A reserved pair is
//! of the flow manager's default geometry, counts against the uid's channel memory (and flows)
//! from the moment it is taken, serves exactly one flow, and goes back to the driver when its
//! connection closes unused or is given back ([`AppRequest::Unreserve`]). At most [`MAX_RESERVED_PER_CLIENT`] per connection. When the flow
//! manager has no pair ready it answers [`AppErrorKind::NotReady`] (`EAGAIN`): open as usual.
//! These messages were appended to their enums: every older message keeps its encoding, and a
//! peer that predates them answers them as malformed requests (an error reply, not a hang-up).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use nemflow_rbuf::ChannelSpec;
use serde::{Deserialize, Serialize};

use crate::ctl::{FlowStats, PortInfo};
use crate::flow::{Fib, FlowId, Qos};

/// Fds that travel with [`AppReply::Opened`]: transmit channel's four, then receive channel's.
pub const OPENED_FDS: usize = 2 * nemflow_rbuf::CHANNEL_FDS;

/// Default path of the flow manager's application socket.
pub const DEFAULT_SOCKET: &str = "/run/nemflow/flowmgr.sock";

/// The transport a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    /// UDP over IPv4.
    Udp,
    /// TCP over IPv4.
    Tcp,
    /// Raw Ethernet frames of one ethertype (not IPv4, ARP or VLAN: the host owns those).
    Raw {
        /// The ethertype.
        ethertype: u16,
    },
}

impl Transport {
    /// The IPv4 protocol number, for UDP and TCP.
    pub fn ip_proto(self) -> Option<u8> {
        match self {
            Transport::Udp => Some(crate::flow::ip_proto::UDP),
            Transport::Tcp => Some(crate::flow::ip_proto::TCP),
            Transport::Raw { .. } => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Udp => f.write_str("udp"),
            Transport::Tcp => f.write_str("tcp"),
            Transport::Raw { ethertype } => write!(f, "raw:{ethertype:#06x}"),
        }
    }
}

/// Sizes of a flow's two channels; zero fields take the flow manager's defaults. The flow
/// manager rounds data areas up to whole pages and slots up to a power of two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffers {
    /// Transmit data area, bytes.
    pub tx_bytes: u64,
    /// Transmit FIFO slots.
    pub tx_slots: u32,
    /// Receive data area, bytes.
    pub rx_bytes: u64,
    /// Receive FIFO slots.
    pub rx_slots: u32,
}

/// Asks for a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFlow {
    /// UDP, TCP or a raw ethertype.
    pub transport: Transport,
    /// Local address: `None` (or the unspecified address) for the host's own.
    pub local_ip: Option<Ipv4Addr>,
    /// Local port; 0 allocates one from the ephemeral range. Ignored for raw flows.
    pub local_port: u16,
    /// Remote address and port: a connected flow (5-tuple filter, destination fixed in the
    /// transmit template). `None`: a bound flow that may send anywhere.
    pub remote: Option<SocketAddrV4>,
    /// Also receive datagrams sent to a broadcast address (UDP bound flows).
    pub broadcast: bool,
    /// Transmit QoS.
    pub qos: Qos,
    /// Channel sizes.
    pub buffers: Buffers,
}

impl OpenFlow {
    /// A best-effort UDP flow: bound to `local_port` (0 = any), connected when `remote` is set.
    pub fn udp(local_port: u16, remote: Option<SocketAddrV4>) -> Self {
        Self {
            transport: Transport::Udp,
            local_ip: None,
            local_port,
            remote,
            broadcast: false,
            qos: Qos::BEST_EFFORT,
            buffers: Buffers::default(),
        }
    }

    /// A best-effort TCP flow from `local_port` (0 = any) to `remote`.
    pub fn tcp(local_port: u16, remote: SocketAddrV4) -> Self {
        Self {
            transport: Transport::Tcp,
            ..Self::udp(local_port, Some(remote))
        }
    }

    /// A best-effort raw flow of one ethertype.
    pub fn raw(ethertype: u16) -> Self {
        Self {
            transport: Transport::Raw { ethertype },
            ..Self::udp(0, None)
        }
    }

    /// The same request with another QoS.
    #[must_use]
    pub fn with_qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// The same request with other channel sizes.
    #[must_use]
    pub fn with_buffers(mut self, buffers: Buffers) -> Self {
        self.buffers = buffers;
        self
    }
}

/// A request from an application (or the `nemflow` tool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppRequest {
    /// Who is asking (a name for logs and `nemflow flows`); answered with [`AppReply::Hello`].
    Hello {
        /// A name for logs.
        client: String,
    },
    /// Opens a flow; answered with [`AppReply::Opened`] and [`OPENED_FDS`] fds.
    Open(OpenFlow),
    /// Changes one of my flows' QoS (admission-checked without its old share).
    SetQos {
        /// The flow.
        flow: FlowId,
        /// Its new QoS.
        qos: Qos,
    },
    /// Closes one of my flows.
    Close {
        /// The flow.
        flow: FlowId,
    },
    /// Registers for TCP connections to a local port (0 allocates one); answered with
    /// [`AppReply::Listening`]. A SYN to the port comes back as [`AppEvent::Incoming`]; at most
    /// [`DEFAULT_BACKLOG`] of them wait for an answer at a time (see
    /// [`AppRequest::ListenBacklog`]).
    Listen {
        /// Local address, as in [`OpenFlow::local_ip`].
        local_ip: Option<Ipv4Addr>,
        /// Local port.
        port: u16,
    },
    /// Drops a listen registration.
    Unlisten {
        /// The port.
        port: u16,
    },
    /// My flows and listen registrations.
    ListFlows,
    /// The link-layer address to send to `ip` through (the next hop's), resolving it with ARP if
    /// needed: for unconnected UDP `send_to`.
    Resolve {
        /// The destination.
        ip: Ipv4Addr,
    },
    /// Every flow on the host (owners of other uids' flows are shown to root only).
    AllFlows,
    /// Driver counters per flow and for the port, and the flow manager's own counters.
    Stats,
    /// The ARP cache.
    Arp,
    /// The routing table.
    Routes,
    /// [`AppRequest::Listen`] with a limit on connection requests (SYNs) waiting for this app's
    /// answer: beyond it further SYNs to the port are dropped and counted, so a SYN flood
    /// degrades this service only. Answered with [`AppReply::Listening`].
    ListenBacklog {
        /// Local address, as in [`OpenFlow::local_ip`].
        local_ip: Option<Ipv4Addr>,
        /// Local port (0 allocates one).
        port: u16,
        /// Most SYNs waiting for `Accept` or `Reject` (clamped to 1..=[`MAX_BACKLOG`]).
        backlog: u32,
    },
    /// Accepts a connection announced by [`AppEvent::Incoming`]: the flow manager creates the
    /// connection's own flow (5-tuple filter, channels, QoS) and answers with
    /// [`AppReply::Opened`] and [`OPENED_FDS`] fds; the app's stack then answers the SYN it was
    /// handed.
    Accept(AcceptFlow),
    /// Refuses a connection announced by [`AppEvent::Incoming`]: with `reset` the flow manager
    /// answers the SYN with RST (connection refused), otherwise it drops it silently. Answered
    /// with [`AppReply::Ok`].
    Reject {
        /// The listening port.
        listen_port: u16,
        /// The connecting peer.
        remote: SocketAddrV4,
        /// Answer with RST.
        reset: bool,
    },
    /// Takes a channel pair of the default geometry for a later [`AppRequest::OpenReserved`];
    /// answered with [`AppReply::Reserved`] and [`OPENED_FDS`] fds. Refused with
    /// [`AppErrorKind::NotReady`] when no pair is ready now, and with
    /// [`AppErrorKind::NoBufferSpace`] when the uid's channel memory or flows are at their limit
    /// or this connection holds [`MAX_RESERVED_PER_CLIENT`] pairs already.
    Reserve,
    /// Opens a flow on a pair this connection reserved; answered with [`AppReply::Opened`]
    /// **without** fds. The request must ask for the default geometry (zero or default
    /// [`Buffers`]). A pair that is not this connection's, or was used already, is refused
    /// ([`AppErrorKind::NoSuchFlow`]); any other refusal (port in use, admission …) leaves the
    /// pair reserved.
    OpenReserved {
        /// The flow asked for.
        open: OpenFlow,
        /// The pair, as [`AppReply::Reserved`] named it.
        reserved: u32,
    },
    /// Gives back a pair this connection reserved and will not use (the driver unmaps it, its
    /// quota is released); answered with [`AppReply::Ok`]. Not this connection's: `NoSuchFlow`.
    Unreserve {
        /// The pair.
        reserved: u32,
    },
}

/// Most channel pairs one connection may hold reserved ([`AppRequest::Reserve`]).
pub const MAX_RESERVED_PER_CLIENT: usize = 1;

/// Connection requests waiting for an answer per listening port, unless the app says otherwise.
pub const DEFAULT_BACKLOG: u32 = 64;

/// Largest backlog a listener may ask for.
pub const MAX_BACKLOG: u32 = 4096;

/// Asks for the flow of a connection announced by [`AppEvent::Incoming`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptFlow {
    /// The listening port the SYN came to.
    pub listen_port: u16,
    /// The connecting peer.
    pub remote: SocketAddrV4,
    /// The connection's transmit QoS.
    pub qos: Qos,
    /// The connection's channel sizes.
    pub buffers: Buffers,
}

/// A connection request to a port the app listens on (the SYN call-back of the Nemesis paper,
/// §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// The listening port.
    pub listen_port: u16,
    /// The connecting peer.
    pub remote: SocketAddrV4,
    /// The SYN as received (Ethernet frame): after `Accept`, the app's stack processes it and
    /// answers with SYN-ACK.
    pub syn: Vec<u8>,
    /// The 4-tuple was in TIME_WAIT and the SYN reopens it (RFC 1122 §4.2.2.13): the new
    /// connection's initial sequence number must be above this one (modulo 2³²), the last
    /// one the previous incarnation used.
    pub isn_above: Option<u32>,
}

/// The flow manager's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AppReply {
    /// Answer to `Hello`.
    Hello(HostInfo),
    /// The flow is installed; its channels' fds come with this message.
    Opened(Opened),
    /// Done.
    Ok,
    /// Listening on this port.
    Listening {
        /// The port (allocated when 0 was asked).
        port: u16,
    },
    /// Flows (mine for `ListFlows`, all for `AllFlows`).
    Flows(Vec<FlowInfo>),
    /// Answer to `Resolve`.
    Resolved(Neighbour),
    /// Answer to `Stats`.
    Stats(StatsReport),
    /// Answer to `Arp`.
    Arp(Vec<ArpEntry>),
    /// Answer to `Routes`.
    Routes(Vec<RouteEntry>),
    /// The request failed.
    Error(AppError),
    /// A channel pair reserved for a later [`AppRequest::OpenReserved`]; its [`OPENED_FDS`] fds
    /// come with this message, in [`AppReply::Opened`]'s order.
    Reserved {
        /// The pair's name, for `OpenReserved`.
        id: u32,
        /// Geometry of the transmit channel (the app is its TMM producer).
        tx: ChannelSpec,
        /// Geometry of the receive channel (the app is its RMM consumer).
        rx: ChannelSpec,
    },
}

/// What the flow manager sends: replies in request order, events at any time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The answer to the oldest unanswered request.
    Reply(AppReply),
    /// Something changed for one of my flows.
    Event(AppEvent),
}

/// Unsolicited news about one of the app's flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppEvent {
    /// The flow's FIB changed (e.g. its next hop's MAC): rebuild header templates from it.
    FibChanged(Fib),
    /// The flow was torn down by the flow manager (driver lost, shutdown).
    Revoked {
        /// The flow.
        flow: FlowId,
        /// Why.
        reason: String,
    },
    /// A SYN arrived for a port this app listens on: answer with [`AppRequest::Accept`] or
    /// [`AppRequest::Reject`].
    Incoming(Incoming),
}

/// The host as the flow manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Its MAC.
    pub mac: [u8; 6],
    /// IP MTU of the link.
    pub mtu: u16,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Who the flow manager thinks the caller is.
    pub uid: u32,
    /// Caller's pid (from `SO_PEERCRED`).
    pub pid: i32,
}

/// A flow, as installed: everything an app stack needs to attach to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// The flow information block.
    pub fib: Fib,
    /// The QoS admitted.
    pub qos: Qos,
    /// Geometry of the transmit channel (the app is its TMM producer).
    pub tx: ChannelSpec,
    /// Geometry of the receive channel (the app is its RMM consumer).
    pub rx: ChannelSpec,
}

/// A neighbour: where to send frames for an IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The destination asked about.
    pub ip: Ipv4Addr,
    /// The next hop (the destination itself when on-link).
    pub next_hop: Ipv4Addr,
    /// The next hop's MAC (broadcast/multicast MACs for such destinations).
    pub mac: [u8; 6],
}

/// What a flow is, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowKind {
    /// An open flow with channels in the driver.
    Flow,
    /// A TCP listen registration (no channels).
    Listen,
    /// A closed TCP connection's 5-tuple held for TIME_WAIT (no owner).
    TimeWait,
    /// The flow manager's own last-resort flow.
    Host,
    /// A channel pair an app reserved for a later open (`Reserve`): channels, no flow yet.
    Reserved,
}

/// One line of `nemflow flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// The flow (0 for listen registrations and TIME_WAIT entries).
    pub id: FlowId,
    /// What it is.
    pub kind: FlowKind,
    /// Transport.
    pub transport: Transport,
    /// Local address and port.
    pub local: SocketAddrV4,
    /// Remote address and port, when connected.
    pub remote: Option<SocketAddrV4>,
    /// QoS.
    pub qos: Qos,
    /// Owner: uid, pid and command name, when the asker may see them.
    pub owner: Option<Owner>,
    /// Channel memory of the flow, bytes (data and control areas, both directions).
    pub channel_bytes: u64,
    /// Milliseconds since it was opened (or, for TIME_WAIT, until it expires).
    pub age_ms: u64,
}

/// Who holds a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Uid from `SO_PEERCRED`.
    pub uid: u32,
    /// Pid from `SO_PEERCRED`.
    pub pid: i32,
    /// Command name (`/proc/<pid>/comm` at connect time), or the `Hello` name.
    pub comm: String,
}

/// Answer to `Stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// The port, from the driver.
    pub port: PortInfo,
    /// Each flow with its driver counters.
    pub flows: Vec<(FlowInfo, FlowStats)>,
    /// The flow manager's own counters (requests, refusals, ARP, ICMP, RST, suppressed replies).
    pub flowmgr: Vec<(String, u64)>,
}

/// State of an ARP cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArpState {
    /// Resolved and fresh.
    Reachable,
    /// Resolved, older than the ARP timeout: refreshed on next use.
    Stale,
    /// Being resolved.
    Incomplete,
    /// Resolution failed recently.
    Failed,
}

/// One ARP cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpEntry {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its MAC, when known.
    pub mac: Option<[u8; 6]>,
    /// State.
    pub state: ArpState,
    /// Milliseconds since the entry last changed.
    pub age_ms: u64,
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Destination network (`0.0.0.0/0` for the default route).
    pub dest: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop; `None`: on-link (the connected subnet).
    pub via: Option<Ipv4Addr>,
    /// Preferred source address.
    pub src: Ipv4Addr,
}

/// Why a request failed, in the terms socket users know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppErrorKind {
    /// `EADDRINUSE`: the local port (or the 5-tuple) is taken, or held for TIME_WAIT.
    AddrInUse,
    /// `EACCES`: policy forbids it (uid not allowed, privileged port, reserved ethertype).
    PermissionDenied,
    /// `EADDRNOTAVAIL`: not one of the host's addresses, or the ephemeral range is exhausted.
    AddrNotAvailable,
    /// `ENOBUFS`: a per-uid limit (flows, channel memory) or the flow manager's resources.
    NoBufferSpace,
    /// `EBUSY`: admission control refused the QoS (the message says what would fit).
    Admission,
    /// `ENETUNREACH`: no route to the destination.
    NetUnreachable,
    /// `EHOSTUNREACH`: the next hop did not answer ARP.
    HostUnreachable,
    /// `EINVAL`: the request is malformed or its values are out of range.
    Invalid,
    /// `EBADF`: no such flow of this caller.
    NoSuchFlow,
    /// `ENETDOWN`: the driver is unreachable or refused the flow.
    DriverUnavailable,
    /// `EAGAIN`: nothing to give now (no channel pair ready for `Reserve`): try later, or open
    /// without one.
    NotReady,
}

impl AppErrorKind {
    /// The errno a socket user would see for this failure.
    pub fn errno(self) -> i32 {
        use rustix::io::Errno;
        match self {
            AppErrorKind::AddrInUse => Errno::ADDRINUSE,
            AppErrorKind::PermissionDenied => Errno::ACCESS,
            AppErrorKind::AddrNotAvailable => Errno::ADDRNOTAVAIL,
            AppErrorKind::NoBufferSpace => Errno::NOBUFS,
            AppErrorKind::Admission => Errno::BUSY,
            AppErrorKind::NetUnreachable => Errno::NETUNREACH,
            AppErrorKind::HostUnreachable => Errno::HOSTUNREACH,
            AppErrorKind::Invalid => Errno::INVAL,
            AppErrorKind::NoSuchFlow => Errno::BADF,
            AppErrorKind::DriverUnavailable => Errno::NETDOWN,
            AppErrorKind::NotReady => Errno::AGAIN,
        }
        .raw_os_error()
    }
}

/// A refused request: a kind with its errno and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    /// What kind of failure.
    pub kind: AppErrorKind,
    /// What exactly, and what would be allowed.
    pub message: String,
    /// For admission refusals: the largest slice (ns, for the requested period) that fits now.
    pub max_slice_ns: Option<u64>,
}

impl AppError {
    /// An error of `kind` with `message`.
    pub fn new(kind: AppErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            max_slice_ns: None,
        }
    }

    /// The errno a socket user would see.
    pub fn errno(&self) -> i32 {
        self.kind.errno()
    }
}

impl From<AppError> for std::io::Error {
    fn from(e: AppError) -> Self {
        let os = std::io::Error::from_raw_os_error(e.errno());
        std::io::Error::new(os.kind(), format!("{} ({os})", e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn errors_map_to_socket_errnos() {
        let e = AppError::new(AppErrorKind::AddrInUse, "port 53 is taken");
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        assert!(io.to_string().starts_with("port 53 is taken"));
        assert_eq!(
            AppErrorKind::PermissionDenied.errno(),
            rustix::io::Errno::ACCESS.raw_os_error()
        );
        assert_eq!(
            std::io::Error::from(AppError::new(AppErrorKind::AddrNotAvailable, "x")).kind(),
            std::io::ErrorKind::AddrNotAvailable
        );
    }

    #[test]
    fn requests_round_trip_through_the_wire() {
        let reqs = [
            AppRequest::Hello { client: "t".into() },
            AppRequest::Open(
                OpenFlow::udp(
                    5000,
                    Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 53)),
                )
                .with_buffers(Buffers {
                    tx_bytes: 1 << 16,
                    ..Buffers::default()
                }),
            ),
            AppRequest::Open(OpenFlow::raw(0x88b5)),
            AppRequest::Close { flow: FlowId(7) },
            AppRequest::Resolve {
                ip: Ipv4Addr::new(10, 0, 0, 9),
            },
            AppRequest::Stats,
            AppRequest::ListenBacklog {
                local_ip: None,
                port: 80,
                backlog: 16,
            },
            AppRequest::Accept(AcceptFlow {
                listen_port: 80,
                remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
                qos: Qos::BEST_EFFORT,
                buffers: Buffers::default(),
            }),
            AppRequest::Reject {
                listen_port: 80,
                remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40001),
                reset: true,
            },
            AppRequest::Reserve,
            AppRequest::OpenReserved {
                open: OpenFlow::udp(0, None),
                reserved: 3,
            },
            AppRequest::Unreserve { reserved: 3 },
        ];
        for req in reqs {
            let bytes = wire::encode(&req).unwrap();
            let back: AppRequest = wire::decode(&bytes[wire::HEADER_BYTES..]).unwrap();
            assert_eq!(back, req);
        }
        let reply = ServerMsg::Reply(AppReply::Error(AppError::new(
            AppErrorKind::Admission,
            "no",
        )));
        let bytes = wire::encode(&reply).unwrap();
        let back: ServerMsg = wire::decode(&bytes[wire::HEADER_BYTES..]).unwrap();
        assert_eq!(back, reply);
        let ev = ServerMsg::Event(AppEvent::Incoming(Incoming {
            listen_port: 80,
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
            syn: vec![1, 2, 3],
            isn_above: Some(7),
        }));
        let bytes = wire::encode(&ev).unwrap();
        assert_eq!(
            wire::decode::<ServerMsg>(&bytes[wire::HEADER_BYTES..]).unwrap(),
            ev
        );
    }

    #[test]
    fn older_encodings_still_decode() {
        // New variants went to the end of their enums: the first ones keep their tags.
        let old = wire::encode(&AppRequest::Hello { client: "x".into() }).unwrap();
        assert_eq!(old[wire::HEADER_BYTES], 0, "Hello is still tag 0");
        let ev = wire::encode(&ServerMsg::Event(AppEvent::Revoked {
            flow: FlowId(3),
            reason: String::new(),
        }))
        .unwrap();
        assert_eq!(&ev[wire::HEADER_BYTES..wire::HEADER_BYTES + 2], &[1, 1]);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let _ = wire::decode::<AppRequest>(&bytes);
        }
    }
}
