//! ICMP errors about datagrams this flow sent. They reach the flow as frames on its own RX channel
//! (the flow manager forwards them, or the driver classifies the quoted header); IPv4 parses the
//! message and the quoted IP header, the transport layer matches the quoted ports to the flow.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Ipv4Packet, IPV4_HEADER_LEN};

/// What an ICMP error reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpErrorKind {
    /// Destination unreachable, network (code 0).
    NetUnreachable,
    /// Destination unreachable, host (code 1).
    HostUnreachable,
    /// Destination unreachable, protocol (code 2).
    ProtoUnreachable,
    /// Destination unreachable, port (code 3): nobody listens there.
    PortUnreachable,
    /// Fragmentation needed and DF set (code 4), with the next hop's MTU (0 if the router did not
    /// say, RFC 1191).
    FragNeeded {
        /// The next hop's MTU.
        mtu: u16,
    },
    /// Destination unreachable, administratively prohibited (codes 9, 10, 13).
    Prohibited,
    /// Another destination unreachable code.
    OtherUnreachable(u8),
    /// Time exceeded (code 0: TTL in transit, 1: reassembly).
    TimeExceeded(u8),
    /// Parameter problem.
    ParamProblem,
}

impl fmt::Display for IcmpErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcmpErrorKind::NetUnreachable => f.write_str("network unreachable"),
            IcmpErrorKind::HostUnreachable => f.write_str("host unreachable"),
            IcmpErrorKind::ProtoUnreachable => f.write_str("protocol unreachable"),
            IcmpErrorKind::PortUnreachable => f.write_str("port unreachable"),
            IcmpErrorKind::FragNeeded { mtu } => write!(f, "fragmentation needed (mtu {mtu})"),
            IcmpErrorKind::Prohibited => f.write_str("administratively prohibited"),
            IcmpErrorKind::OtherUnreachable(c) => write!(f, "destination unreachable (code {c})"),
            IcmpErrorKind::TimeExceeded(c) => write!(f, "time exceeded (code {c})"),
            IcmpErrorKind::ParamProblem => f.write_str("parameter problem"),
        }
    }
}

/// An ICMP error as IPv4 passes it up: the report and the quoted datagram's addresses and first
/// eight transport bytes, for the transport layer to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    /// What was reported.
    pub kind: IcmpErrorKind,
    /// Who sent the ICMP message.
    pub from: Ipv4Addr,
    /// Source of the quoted datagram (ours, if it is about us).
    pub quoted_src: Ipv4Addr,
    /// Destination of the quoted datagram.
    pub quoted_dst: Ipv4Addr,
    /// Protocol of the quoted datagram.
    pub quoted_proto: u8,
    /// The quoted datagram's first eight transport bytes (UDP: the whole header).
    pub quoted_l4: [u8; 8],
}

/// An ICMP error matched to this flow, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// What was reported.
    pub kind: IcmpErrorKind,
    /// Who sent the ICMP message.
    pub from: Ipv4Addr,
    /// The destination of the datagram that caused it.
    pub dst: SocketAddrV4,
}

/// Why an ICMP frame was not passed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcmpDrop {
    Malformed,
    BadChecksum,
    Ignored,
    /// The quoted datagram is not from this flow's address and protocol.
    NotForFlow,
}

/// Parses an ICMP message (the IP payload) sent by `from`.
pub(crate) fn parse(icmp: &[u8], from: Ipv4Addr) -> Result<IcmpReport, IcmpDrop> {
    let pkt = Icmpv4Packet::new_checked(icmp).map_err(|_| IcmpDrop::Malformed)?;
    if !pkt.verify_checksum() {
        return Err(IcmpDrop::BadChecksum);
    }
    let code = pkt.msg_code();
    let kind = match pkt.msg_type() {
        Icmpv4Message::DstUnreachable => match code {
            0 => IcmpErrorKind::NetUnreachable,
            1 => IcmpErrorKind::HostUnreachable,
            2 => IcmpErrorKind::ProtoUnreachable,
            3 => IcmpErrorKind::PortUnreachable,
            4 => IcmpErrorKind::FragNeeded {
                // Bytes 6..8 of the header (RFC 1191). smoltcp has no accessor for it;
                // `new_checked` proved the 8-byte header is there.
                mtu: u16::from_be_bytes([icmp[6], icmp[7]]),
            },
            9 | 10 | 13 => IcmpErrorKind::Prohibited,
            c => IcmpErrorKind::OtherUnreachable(c),
        },
        Icmpv4Message::TimeExceeded => IcmpErrorKind::TimeExceeded(code),
        Icmpv4Message::ParamProblem => IcmpErrorKind::ParamProblem,
        _ => return Err(IcmpDrop::Ignored),
    };
    // The quoted datagram: its IP header and at least 8 transport bytes. Routers quote truncated
    // datagrams, so the quoted total length is not checked against what is there (smoltcp's
    // `Icmpv4Repr::parse` does, and would reject most real errors).
    let quoted = pkt.data();
    if quoted.len() < IPV4_HEADER_LEN {
        return Err(IcmpDrop::Malformed);
    }
    let ip = Ipv4Packet::new_unchecked(quoted);
    let ihl = usize::from(ip.header_len());
    if ip.version() != 4 || ihl < IPV4_HEADER_LEN || quoted.len() < ihl + 8 {
        return Err(IcmpDrop::Malformed);
    }
    if ip.frag_offset() != 0 {
        // About a later fragment: no transport header to match.
        return Err(IcmpDrop::Ignored);
    }
    let mut quoted_l4 = [0u8; 8];
    quoted_l4.copy_from_slice(&quoted[ihl..ihl + 8]);
    Ok(IcmpReport {
        kind,
        from,
        quoted_src: ip.src_addr(),
        quoted_dst: ip.dst_addr(),
        quoted_proto: u8::from(ip.next_header()),
        quoted_l4,
    })
}
