//! How a flow is described to the driver: its receive filter, its transmit template and its QoS,
//! and to the application: its flow information block (FIB).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// IPv4 protocol numbers nemflow knows.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Ethertypes nemflow knows.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// A flow's identity, chosen by the flow manager; unique while the flow exists.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct FlowId(pub u32);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the driver matches received frames against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Filter {
    /// A connected IPv4 flow: protocol, local and remote address and port (the 5-tuple).
    Connected {
        /// IPv4 protocol number ([`ip_proto`]).
        proto: u8,
        /// Local address and port.
        local: SocketAddrV4,
        /// Remote address and port.
        remote: SocketAddrV4,
    },
    /// A bound IPv4 flow: protocol, local address and port (the 3-tuple). With `broadcast`, it
    /// also receives datagrams to that port sent to a broadcast address.
    Bound {
        /// IPv4 protocol number.
        proto: u8,
        /// Local address and port.
        local: SocketAddrV4,
        /// Also accept broadcast datagrams to the port.
        broadcast: bool,
    },
    /// Every frame of one ethertype (raw flows).
    Ethertype(u16),
    /// Whatever no other filter matched: the flow manager's own flow.
    Default,
}

/// What the driver checks every transmitted frame of a flow against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The only source MAC the flow may send from.
    pub src_mac: [u8; 6],
    /// What else is fixed.
    pub kind: TemplateKind,
}

/// The fixed part of a flow's headers beyond the source MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateKind {
    /// IPv4 with a fixed source address, protocol and source port; for connected flows also the
    /// destination. Frames must carry no IP options and consistent lengths.
    Ipv4 {
        /// Source address.
        src: Ipv4Addr,
        /// IPv4 protocol number.
        proto: u8,
        /// Source port (UDP, TCP).
        src_port: u16,
        /// Destination address and port, for connected flows.
        dst: Option<SocketAddrV4>,
    },
    /// Raw frames of one ethertype.
    Ethertype(u16),
    /// Anything from `src_mac` (the flow manager's own flow: ARP, ICMP, RST).
    Any,
}

/// Quality of service of a flow's transmissions, in wire time (Atropos: `slice` in every
/// `period`, `extra` = may also use slack). Best effort is `slice_ns = 0, extra = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// Period in ns.
    pub period_ns: u64,
    /// Guaranteed wire time per period, in ns.
    pub slice_ns: u64,
    /// May use slack time beyond its slice.
    pub extra: bool,
    /// How long the scheduler may wait for a momentarily idle flow, in ns.
    pub latency_hint_ns: Option<u64>,
}

impl Qos {
    /// Best effort: no guarantee, slack only.
    pub const BEST_EFFORT: Qos = Qos {
        period_ns: 100_000_000,
        slice_ns: 0,
        extra: true,
        latency_hint_ns: None,
    };

    /// The guaranteed share of the link, `slice / period`.
    pub fn share(&self) -> f64 {
        if self.period_ns == 0 {
            0.0
        } else {
            self.slice_ns as f64 / self.period_ns as f64
        }
    }
}

/// The flow information block: what an application's stack needs to build its headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fib {
    /// The flow.
    pub flow: FlowId,
    /// Local address and port (port 0 for raw flows).
    pub local: SocketAddrV4,
    /// Remote address and port, for connected flows.
    pub remote: Option<SocketAddrV4>,
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// MAC of the next hop towards `remote` (connected flows), or of the gateway.
    pub next_hop_mac: Option<[u8; 6]>,
    /// The host's subnet, so an unconnected flow knows which destinations are on-link.
    pub subnet: (Ipv4Addr, u8),
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU of the link in bytes.
    pub mtu: u16,
}
