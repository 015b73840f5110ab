//! The example applications' logic, as library functions over an already-open flow. The binaries
//! (`udp-blast`, `udp-sink`, `udp-echo`) are thin `main`s over them, so the flow manager's client
//! plugs in at one place ([`open_flow`]) without touching the logic.

use std::net::SocketAddrV4;

use nemflow_proto::Qos;

use crate::UdpFlow;

mod blast;
mod echo;
mod sink;

pub use blast::{blast, BlastOptions, BlastReport};
pub use echo::{echo, EchoOptions, EchoReport};
pub use sink::{sink, SinkOptions, SinkReport, Slowdown};

/// What an example app asks the flow manager for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRequest {
    /// Local port (0: any).
    pub local_port: u16,
    /// Remote address and port, for a connected flow.
    pub remote: Option<SocketAddrV4>,
    /// Transmit QoS.
    pub qos: Qos,
}

/// Why no flow could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The flow manager's client library does not exist yet: the apps cannot get a flow.
    #[error("flow manager client not available yet (cannot open a flow for {0:?})")]
    NoFlowManagerClient(FlowRequest),
}

/// Opens a UDP flow through the flow manager. Not available yet: the flow manager's client is
/// being written; until then this always fails, and the binaries say so.
pub fn open_flow(req: &FlowRequest) -> Result<UdpFlow, OpenError> {
    Err(OpenError::NoFlowManagerClient(req.clone()))
}

/// First bytes of a test datagram's payload: sequence number and send time, both big-endian.
pub const STAMP_BYTES: usize = 16;

/// Reads the sequence number and send time (ns since the sender started) of a test datagram.
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = payload.get(0..8)?;
    let t = payload.get(8..16)?;
    Some((
        u64::from_be_bytes(seq.try_into().ok()?),
        u64::from_be_bytes(t.try_into().ok()?),
    ))
}
