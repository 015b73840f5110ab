//! nemflow's application stacks (DESIGN.md §6, the Nemesis paper §3.3 and §4.2): each flow of an
//! application gets its own vertical stack, Ethernet / IPv4 / UDP (or Ethernet alone for a
//! raw-ethertype flow), over its own Rbuf channels. Nothing here is shared between flows.
//!
//! # Layers
//! Every layer offers the layer above the shape of the channel below it ([`Layer`]: allocate,
//! fill, push down; pop up, read, release), so layers compose per flow by procedure calls:
//! `Udp<Ipv4<Ethernet<FlowChannels>>>`. Header space for all layers is known at flow set-up: each
//! layer emits its header template once (through `smoltcp::wire`) and per packet only patches
//! lengths, IP identification and checksums, starting from the template's precomputed sum.
//!
//! # Using a flow
//! The flow manager hands the app a [`nemflow_proto::Fib`] and the fds of both channels;
//! [`UdpFlow::attach`] (or [`FlowChannels::attach`] + [`UdpFlow::new`]) builds the stack. Then:
//! - zero-copy: [`UdpFlow::tx_buf`] / [`UdpFlow::tx_buf_to`] → write the payload → [`TxBuf::send`];
//!   [`UdpFlow::recv_datagram`] → [`RxDatagram::payload`] borrows the RX area; dropping it
//!   reposts the buffer to the driver;
//! - convenience: [`UdpFlow::send`], [`UdpFlow::send_to`], [`UdpFlow::recv`];
//! - blocking (default), non-blocking, timeouts; readiness through the RX eventfd
//!   ([`std::os::fd::AsFd`], with [`UdpFlow::prepare_wait`]) for epoll loops;
//! - ICMP errors for the flow: [`UdpFlow::take_error`], and `recv`/`send` fail once with
//!   [`Error::ConnectionRefused`] (and friends) on a connected flow, as on Linux.
//!
//! Malformed received frames never panic and never reach the app: they are dropped and counted
//! by reason ([`StackCounters`]).

#![forbid(unsafe_code)]

pub mod apps;
mod channel;
pub mod checksum;
pub mod counters;
mod error;
pub mod ethernet;
mod flow;
pub mod icmp;
pub mod ipv4;
pub mod layer;
pub mod liveness;
pub mod neighbour;
mod raw;
pub mod reasm;
pub mod tcp;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod udp;
mod wait;

pub use channel::FlowChannels;
pub use counters::StackCounters;
pub use error::{Error, Result};
pub use flow::{FlowConfig, RxDatagram, TxBuf, UdpFlow, UdpStack};
pub use icmp::{IcmpError, IcmpErrorKind};
pub use ipv4::Ipv4Config;
pub use layer::Layer;
pub use liveness::{Liveness, LivenessState};
pub use neighbour::{NeighbourCache, Resolver};
pub use raw::{RawFlow, RawFrame, RawTxBuf};
pub use reasm::ReassemblyLimits;
pub use tcp::{FlowManager, TcpConfig, TcpListener, TcpStream};
pub use udp::MAX_UDP_PAYLOAD;
