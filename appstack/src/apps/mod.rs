//! The example applications' logic, as library functions over an already-open flow. The binaries
//! (`udp-blast`, `udp-sink`, `udp-echo`, `udp-ping`) are thin `main`s over them; [`open_flow`]
//! gets the flow from the flow manager.

use std::net::SocketAddrV4;
use std::os::fd::AsFd;

use nemflow_proto::Qos;

use nemflow_flowmgr::client::Client;
use nemflow_proto::app::{Buffers, OpenFlow};

use crate::{FlowChannels, FlowConfig, Liveness, UdpFlow};

mod blast;
mod echo;
mod ping;
mod sink;
mod stats;

pub use blast::{blast, BlastOptions, BlastReport};
pub use echo::{echo, EchoOptions, EchoReport};
pub use ping::{fill_payload, ping, PingOptions, PingReport};
pub use sink::{sink, SinkOptions, SinkReport, Slowdown};
pub use stats::{parse_stats, stats_text};

/// What an example app asks the flow manager for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRequest {
    /// Local port (0: any).
    pub local_port: u16,
    /// Remote address and port, for a connected flow.
    pub remote: Option<SocketAddrV4>,
    /// Transmit QoS.
    pub qos: Qos,
    /// Channel sizes (zero fields: the flow manager's defaults).
    pub buffers: Buffers,
}

/// Channel sizes for `slots` frames of up to 2 KiB each way (`tx`/`rx` false: default size).
pub fn buffers_for(tx_slots: Option<u32>, rx_slots: Option<u32>) -> Buffers {
    let bytes = |slots: u32| (u64::from(slots) * 2048).div_ceil(4096) * 4096;
    Buffers {
        tx_bytes: tx_slots.map_or(0, bytes),
        tx_slots: tx_slots.unwrap_or(0),
        rx_bytes: rx_slots.map_or(0, bytes),
        rx_slots: rx_slots.unwrap_or(0),
    }
}

/// Why no flow could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The flow manager is absent or refused the request.
    #[error(transparent)]
    FlowManager(#[from] nemflow_flowmgr::client::ClientError),
    /// The channels it handed over could not be attached.
    #[error("attaching the flow's channels: {0}")]
    Attach(#[from] crate::Error),
}

/// An open UDP flow and the flow-manager connection it lives by: the flow is torn down when
/// this is dropped (or the process dies), as a socket would be closed. The flow watches the
/// connection ([`crate::liveness`]): once it closes, `send`/`recv` fail with
/// [`crate::Error::Revoked`] instead of waiting for a driver that may be gone.
#[derive(Debug)]
pub struct AppFlow {
    /// The flow's stack.
    pub flow: UdpFlow,
    /// The connection to the flow manager (for QoS changes, events, and the flow's lifetime).
    pub client: Client,
}

/// A [`crate::Resolver`] that asks the flow manager (ARP on this host's behalf) over its own
/// connection.
#[derive(Debug)]
pub struct FlowManagerResolver(Client);

impl crate::Resolver for FlowManagerResolver {
    fn resolve(&mut self, ip: std::net::Ipv4Addr) -> std::result::Result<Option<[u8; 6]>, String> {
        match self.0.resolve(ip) {
            Ok(n) => Ok(Some(n.mac)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Opens a UDP flow through the flow manager (socket from `NEMFLOW_FLOWMGR_SOCKET`, else the
/// default) and builds its stack. Unconnected flows resolve destinations through the flow
/// manager.
pub fn open_flow(req: &FlowRequest) -> Result<AppFlow, OpenError> {
    open_flow_with(req, FlowConfig::default())
}

/// [`open_flow`] with stack settings of the app's choosing (reassembly limits, DF, ...).
pub fn open_flow_with(req: &FlowRequest, cfg: FlowConfig) -> Result<AppFlow, OpenError> {
    let socket = nemflow_flowmgr::client::default_socket();
    let mut client = Client::connect(&socket)?;
    let open = OpenFlow {
        qos: req.qos,
        buffers: req.buffers,
        ..OpenFlow::udp(req.local_port, req.remote)
    };
    let f = client.open(&open)?;
    let id = f.id();
    let mut flow = UdpFlow::new(FlowChannels::from_flow(f)?, cfg)?;
    let conn = client
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| crate::Error::Os {
            op: "dup flow manager connection",
            source: e,
        })?;
    flow.set_liveness(Liveness::new(conn, id).with_probe(socket));
    if req.remote.is_none() {
        if let Ok(resolver) = Client::connect_default() {
            flow.set_resolver(Box::new(FlowManagerResolver(resolver)));
        }
    }
    Ok(AppFlow { flow, client })
}

/// A flag set by SIGINT or SIGTERM, so an app ends its loop and reports instead of dying.
pub fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler the signal keeps its default action: the app still stops.
        let _ = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop));
    }
    stop
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
