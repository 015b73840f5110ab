//! The crate's error type: one variant per kind of failure a caller, the channel or a peer can
//! cause. Malformed received frames are not errors: they are dropped and counted
//! ([`crate::StackCounters`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::icmp::IcmpErrorKind;

/// Errors of the application stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Rbuf channel failed (broken by a misbehaving peer, a system call failed, ...).
    #[error("channel: {0}")]
    Channel(#[from] nemflow_rbuf::Error),
    /// Non-blocking operation: nothing to receive, or no buffer or FIFO room to send now.
    #[error("operation would block")]
    WouldBlock,
    /// A blocking operation's timeout passed.
    #[error("timed out")]
    TimedOut,
    /// The datagram (or raw frame) is larger than the flow can carry.
    #[error("message of {len} bytes is too long (at most {max})")]
    TooLong {
        /// Bytes requested.
        len: usize,
        /// The largest possible.
        max: usize,
    },
    /// The datagram needs more TX buffers than the flow's channel has at all.
    #[error("datagram needs {needed} TX buffers, the channel has {available}")]
    ChannelTooSmall {
        /// Buffers (frames) needed.
        needed: usize,
        /// Buffers the channel has.
        available: usize,
    },
    /// An ICMP port (or protocol) unreachable arrived for this connected flow (`ECONNREFUSED`).
    #[error("connection refused (ICMP {kind} from {from})")]
    ConnectionRefused {
        /// The host that sent the ICMP error.
        from: Ipv4Addr,
        /// What it reported.
        kind: IcmpErrorKind,
    },
    /// An ICMP host or network unreachable (or time exceeded) arrived for this connected flow.
    #[error("destination unreachable (ICMP {kind} from {from})")]
    Unreachable {
        /// The host that sent the ICMP error.
        from: Ipv4Addr,
        /// What it reported.
        kind: IcmpErrorKind,
    },
    /// An ICMP fragmentation needed arrived for this connected flow, which sets DF (`EMSGSIZE`);
    /// the path MTU has been lowered, send again.
    #[error("message too long: path MTU to {dst} is {mtu}")]
    MessageTooLong {
        /// The destination.
        dst: Ipv4Addr,
        /// The path MTU now in use.
        mtu: u16,
    },
    /// `send_to` on a connected flow with another destination (the driver would reject it).
    #[error("flow is connected to {remote}, cannot send to {dst}")]
    IsConnected {
        /// The flow's remote.
        remote: SocketAddrV4,
        /// The destination asked for.
        dst: SocketAddrV4,
    },
    /// `send` on an unconnected flow (`EDESTADDRREQ`): use `send_to`.
    #[error("flow is not connected: use send_to")]
    NotConnected,
    /// The destination cannot be sent to (port 0, address 0.0.0.0).
    #[error("invalid destination {0}")]
    InvalidDestination(SocketAddrV4),
    /// The destination is off-link and the FIB has no gateway (or no next-hop MAC for it).
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    /// No MAC address is known for an on-link destination: fill the neighbour cache or set a
    /// [`crate::Resolver`].
    #[error("no MAC address known for {0} (add a neighbour or set a resolver)")]
    NoNeighbour(Ipv4Addr),
    /// The resolver failed.
    #[error("resolving {ip}: {reason}")]
    Resolver {
        /// The address being resolved.
        ip: Ipv4Addr,
        /// Why it failed.
        reason: String,
    },
    /// The FIB or the channel specs cannot make a working flow.
    #[error("invalid flow set-up: {0}")]
    InvalidSetup(String),
    /// The flow manager refused the request or could not be reached.
    #[error("flow manager: {0}")]
    FlowManager(#[from] nemflow_flowmgr::client::ClientError),
    /// TCP: the peer refused the connection (RST in answer to our SYN).
    #[error("connection to {peer} refused")]
    Refused {
        /// The peer.
        peer: SocketAddrV4,
    },
    /// TCP: the peer reset the connection (or it was aborted: user timeout, keep-alive).
    #[error("connection with {peer} reset")]
    Reset {
        /// The peer.
        peer: SocketAddrV4,
    },
    /// TCP: the connection is closed for sending (after `shutdown`/`close`, or closed by both).
    #[error("connection closed")]
    Closed,
    /// The flow was revoked: the app's connection to the flow manager closed (the flow manager
    /// shut down, lost its driver, or was restarted), and with it the flow (`ECONNRESET`). Open
    /// a new flow once a flow manager runs again.
    #[error("flow {flow} revoked: {reason}")]
    Revoked {
        /// The flow.
        flow: nemflow_proto::FlowId,
        /// Why.
        reason: String,
    },
    /// A system call failed (the readiness fds: epoll, timerfd).
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A write to a [`crate::TxBuf`] fell outside its payload.
    #[error("write of {len} bytes at {offset} is outside the {payload}-byte payload")]
    OutOfRange {
        /// Where the write started.
        offset: usize,
        /// Its length.
        len: usize,
        /// The payload's length.
        payload: usize,
    },
}

impl Error {
    /// The closest [`io::ErrorKind`], for apps that speak `std::io`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Channel(_) | Error::Closed => io::ErrorKind::BrokenPipe,
            Error::FlowManager(e) => io::Error::from_raw_os_error(e.errno()).kind(),
            Error::Refused { .. } => io::ErrorKind::ConnectionRefused,
            Error::Reset { .. } | Error::Revoked { .. } => io::ErrorKind::ConnectionReset,
            Error::Os { source, .. } => source.kind(),
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::TimedOut => io::ErrorKind::TimedOut,
            Error::TooLong { .. } | Error::MessageTooLong { .. } => io::ErrorKind::InvalidInput,
            Error::ChannelTooSmall { .. } => io::ErrorKind::OutOfMemory,
            Error::ConnectionRefused { .. } => io::ErrorKind::ConnectionRefused,
            Error::Unreachable { .. } | Error::NoRoute(_) => io::ErrorKind::HostUnreachable,
            Error::IsConnected { .. } => io::ErrorKind::AlreadyExists,
            Error::NotConnected => io::ErrorKind::NotConnected,
            Error::NoNeighbour(_) | Error::Resolver { .. } => io::ErrorKind::AddrNotAvailable,
            Error::InvalidSetup(_) | Error::OutOfRange { .. } | Error::InvalidDestination(_) => {
                io::ErrorKind::InvalidInput
            }
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
