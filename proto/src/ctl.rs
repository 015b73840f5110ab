//! The flow manager ⇄ driver control protocol (root only, on the driver's control socket).
//!
//! Every request gets exactly one reply. `InstallFlow` carries the flow's two channels as fds:
//! the transmit channel's four, then the receive channel's four (see
//! [`nemflow_rbuf::ChannelFds`] for their order).
//!
//! **Staged channels.** Creating and attaching a flow's two channels costs far more than
//! installing its filter, so the flow manager hands the driver channel pairs ahead of time,
//! while it is idle (`StageChannels`, with the same eight fds), and an open then names one
//! (`InstallStaged`: filter, template and QoS only). A staged pair serves exactly one flow: it
//! is consumed by the `InstallStaged` that names it, whether that succeeds or not, and never
//! reused after the flow goes. Staged pairs belong to the connection that staged them (the flow
//! manager's): the driver drops every one of them when that connection closes, and counts them
//! in [`PortInfo::staged`] meanwhile. A pair the flow manager will not use after all (an app
//! reserved it and went away) is dropped by `DropStaged`.

use serde::{Deserialize, Serialize};

use crate::flow::{Filter, FlowId, Qos, Template};
use nemflow_rbuf::ChannelSpec;

/// Fds that travel with [`DriverRequest::InstallFlow`].
pub const INSTALL_FLOW_FDS: usize = 2 * nemflow_rbuf::CHANNEL_FDS;

/// A request to the driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverRequest {
    /// Who is asking; answered with [`DriverReply::Hello`].
    Hello {
        /// A name for logs.
        client: String,
    },
    /// Installs a flow; its channels' fds come with the message.
    InstallFlow {
        /// The flow's id (unique among installed flows).
        id: FlowId,
        /// Receive filter.
        filter: Filter,
        /// Transmit template.
        template: Template,
        /// Transmit QoS.
        qos: Qos,
        /// Geometry of the transmit channel (app → driver).
        tx: ChannelSpec,
        /// Geometry of the receive channel (driver → app).
        rx: ChannelSpec,
    },
    /// Changes a flow's QoS.
    SetQos {
        /// The flow.
        id: FlowId,
        /// Its new QoS.
        qos: Qos,
    },
    /// Removes a flow: filter, scheduling and channel mappings go at once. Answered with
    /// `FlowStats` holding the flow's last counters (a TCP flow's sequence state as it stood
    /// when it stopped sending).
    RemoveFlow {
        /// The flow.
        id: FlowId,
    },
    /// Statistics of one flow, or of all when `None`.
    FlowStats {
        /// The flow, or all.
        id: Option<FlowId>,
    },
    /// The port's state and counters.
    PortInfo,
    /// Drop-log entries with a sequence number above `after`, at most `max`.
    DropLog {
        /// Last sequence number already seen (0 for all).
        after: u64,
        /// Most entries to return.
        max: u32,
    },
    /// Starts copying a flow's frames into a capture channel whose four fds come with the
    /// message (an rmm channel: the capturing tool is its consumer and posts the empty
    /// buffers, the driver fills them). Each captured buffer holds a [`CaptureHeader`] and
    /// then the frame's first bytes. A frame that finds no empty buffer is counted as a
    /// capture drop: the data path never waits for the tool. Answered with
    /// [`DriverReply::CaptureStarted`]. The capture ends with `CaptureStop`, when the flow is
    /// removed, or when the connection that started it closes.
    CaptureStart {
        /// The flow to capture.
        flow: FlowId,
        /// Which of its frames.
        direction: CaptureDirection,
        /// Geometry of the capture channel (`max_packet_bytes` bounds header + snapshot).
        spec: ChannelSpec,
    },
    /// Counters of a capture; answered with [`DriverReply::Capture`].
    CaptureStats {
        /// The capture.
        id: u32,
    },
    /// Ends a capture and unmaps its channel; answered with its final [`DriverReply::Capture`].
    CaptureStop {
        /// The capture.
        id: u32,
    },
    /// Attaches a channel pair for a later [`InstallStaged`](Self::InstallStaged); its eight
    /// fds come with the message, in `InstallFlow`'s order, and are checked as `InstallFlow`'s
    /// are. At most [`MAX_STAGED`] pairs wait at once (`Exhausted` beyond); an id already
    /// staged is `Exists`.
    StageChannels {
        /// The pair's id, chosen by the flow manager.
        id: u32,
        /// Geometry of the transmit channel (app → driver).
        tx: ChannelSpec,
        /// Geometry of the receive channel (driver → app).
        rx: ChannelSpec,
    },
    /// Installs a flow on a staged channel pair (no fds), which it consumes even when the
    /// install fails. An unknown pair is `NotFound`.
    InstallStaged {
        /// The flow's id (unique among installed flows).
        id: FlowId,
        /// The staged pair.
        staged: u32,
        /// Receive filter.
        filter: Filter,
        /// Transmit template.
        template: Template,
        /// Transmit QoS.
        qos: Qos,
    },
    /// Drops one staged pair (unmaps the driver's ends) that no flow will use: one an app
    /// reserved and never opened a flow on. An unknown pair is `NotFound`. Like `RemoveFlow`,
    /// the flow manager sends it without waiting for the reply.
    DropStaged {
        /// The staged pair.
        id: u32,
    },
}

/// Most channel pairs staged at once (`StageChannels`).
pub const MAX_STAGED: usize = 16;

/// The driver's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DriverReply {
    /// Done.
    Ok,
    /// Answer to `Hello`.
    Hello(PortInfo),
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A readable explanation.
        message: String,
    },
    /// Flow statistics.
    FlowStats(Vec<FlowStats>),
    /// Port state.
    PortInfo(PortInfo),
    /// Drop-log entries, oldest first.
    DropLog(Vec<DropEntry>),
    /// Answer to `CaptureStart`.
    CaptureStarted {
        /// The capture's id, for `CaptureStats` and `CaptureStop`.
        id: u32,
    },
    /// A capture's counters.
    Capture(CaptureCounters),
}

/// Fds that travel with [`DriverRequest::CaptureStart`].
pub const CAPTURE_FDS: usize = nemflow_rbuf::CHANNEL_FDS;

/// Which frames of a flow a capture copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CaptureDirection {
    /// Frames received for the flow (whether or not it had a buffer for them).
    Rx,
    /// Frames the flow sent (after the template check).
    Tx,
    /// Both.
    Both,
}

impl CaptureDirection {
    /// Whether frames going `tx` (true) or received (false) are captured.
    pub fn wants(self, tx: bool) -> bool {
        match self {
            CaptureDirection::Rx => !tx,
            CaptureDirection::Tx => tx,
            CaptureDirection::Both => true,
        }
    }
}

/// A capture's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CaptureCounters {
    /// The capture.
    pub id: u32,
    /// The flow it captures.
    pub flow: FlowId,
    /// Frames copied into the capture channel.
    pub captured: u64,
    /// Frames not captured: the tool had no empty buffer posted (it fell behind).
    pub dropped: u64,
    /// False once the flow is gone (or the channel failed): no more frames will come.
    pub active: bool,
}

/// What precedes each frame in a capture buffer: 16 bytes, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureHeader {
    /// When the driver saw the frame, ns since the Unix epoch (`CLOCK_REALTIME`).
    pub time_ns: u64,
    /// The frame's length on the wire (the buffer may hold fewer bytes: the snapshot).
    pub orig_len: u32,
    /// True for a frame the flow sent, false for one it received.
    pub tx: bool,
}

impl CaptureHeader {
    /// Encoded size.
    pub const BYTES: usize = 16;

    /// The header as bytes.
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..8].copy_from_slice(&self.time_ns.to_le_bytes());
        b[8..12].copy_from_slice(&self.orig_len.to_le_bytes());
        b[12] = u8::from(self.tx);
        b
    }

    /// Reads a header from the front of `b` (`None` if it is too short).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let time_ns = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let orig_len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
        Some(Self {
            time_ns,
            orig_len,
            tx: *b.get(12)? != 0,
        })
    }
}

/// Kinds of failure a request can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed or its values are out of range.
    Invalid,
    /// A flow with this id or filter exists already.
    Exists,
    /// No such flow.
    NotFound,
    /// The channels' fds are not what the request promised.
    BadChannel,
    /// The scheduler's admission control refused the QoS.
    Admission,
    /// The driver is out of a resource (flows, memory).
    Exhausted,
    /// Another connection manages the driver's flows: the driver serves one flow manager at a
    /// time (reading statistics and capturing stay open to every root client).
    Busy,
}

/// The port's identity, link and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortInfo {
    /// Device name (`net_tap0`, a PCI address …).
    pub name: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Link up.
    pub link_up: bool,
    /// Link rate the driver paces to, bit/s.
    pub rate_bps: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the NIC dropped for lack of descriptors.
    pub rx_missed: u64,
    /// Receive buffer allocation failures.
    pub rx_nombuf: u64,
    /// Frames the driver dropped before any flow, by reason (name, count).
    pub drops: Vec<(String, u64)>,
    /// Flows installed.
    pub flows: u32,
    /// Channel pairs staged for future flows (`StageChannels`) and not yet used.
    pub staged: u32,
    /// Packet buffers (mbufs) of the driver's pool in use now: in the port's rings and in
    /// flight. Back to its resting level when traffic stops; growing without bound is a leak.
    pub mbufs_in_use: u32,
    /// Frames the port refused to transmit while its link was down, dropped by the driver (each
    /// also counted as its flow's `tx_dropped` and logged).
    pub tx_errors: u64,
    /// Times the link went down or came up since the driver started.
    pub link_changes: u64,
}

/// Counters of one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlowStats {
    /// The flow.
    pub id: FlowId,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames delivered to the flow.
    pub rx_packets: u64,
    /// Bytes delivered.
    pub rx_bytes: u64,
    /// Frames dropped because the flow had no empty receive buffer.
    pub rx_dropped_no_buffer: u64,
    /// Transmitted frames that did not match the template (dropped, never sent).
    pub tx_template_violations: u64,
    /// Iorecs from the app that failed validation.
    pub invalid_iorecs: u64,
    /// Frames the port refused or that found no mbuf (dropped after scheduling).
    pub tx_dropped: u64,
    /// Guaranteed wire time used, ns.
    pub sched_guaranteed_ns: u64,
    /// Slack wire time used, ns.
    pub sched_extra_ns: u64,
    /// Periods whose slice was not delivered while the flow was backlogged.
    pub sched_deadline_misses: u64,
    /// Whether the flow's channels were marked broken (the app misbehaved).
    pub broken: bool,
    /// TCP flows: what the driver saw of the connection's sequence space (`None` for other
    /// flows, and before the first segment). The flow manager uses it to reset a connection
    /// whose app died and to answer for a connection in TIME_WAIT.
    pub tcp: Option<TcpSeen>,
}

/// A TCP flow's sequence state as the driver saw it in the segments it passed (sent segments
/// from its own policed copy of the header; received ones as delivered to the flow). Sequence
/// numbers only move forward (compared modulo 2³², RFC 793), so a retransmission does not move
/// them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TcpSeen {
    /// Our next sequence number: the highest `SEG.SEQ + SEG.LEN` (SYN and FIN count one each)
    /// of the segments sent (valid when `tx_flags` has SYN or ACK; RSTs do not move it).
    pub snd_nxt: u32,
    /// Our receive point: the acknowledgment number of the latest segment sent with ACK (valid
    /// when `tx_flags` has ACK).
    pub rcv_nxt: u32,
    /// How far the peer has acknowledged our data: the highest acknowledgment number received
    /// (valid when `rx_flags` has ACK).
    pub peer_ack: u32,
    /// The peer's next sequence number: the highest `SEG.SEQ + SEG.LEN` received (valid when
    /// `rx_flags` has SYN or ACK).
    pub peer_nxt: u32,
    /// Every TCP flag seen in sent segments, ORed (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub tx_flags: u8,
    /// Every TCP flag seen in received segments, ORed.
    pub rx_flags: u8,
    /// The connection's ends as the latest segment sent named them (from the driver's policed
    /// copy), `None` before one was sent: what a flow manager that did not open the flow (it
    /// restarted) needs to reset the connection.
    pub ends: Option<TcpEnds>,
}

/// The two ends of a TCP connection and the station its segments went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpEnds {
    /// Our address and port.
    pub local: std::net::SocketAddrV4,
    /// The peer's address and port.
    pub remote: std::net::SocketAddrV4,
    /// The destination MAC of the segments sent (the next hop's).
    pub next_hop_mac: [u8; 6],
}

impl TcpSeen {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// One dropped frame, as the driver logged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropEntry {
    /// Sequence number, increasing from 1.
    pub seq: u64,
    /// When, in ns of `CLOCK_REALTIME`.
    pub time_ns: u64,
    /// The flow the frame belonged to, if any.
    pub flow: Option<FlowId>,
    /// Why it was dropped.
    pub reason: DropReason,
    /// Frame length in bytes.
    pub len: u32,
}

/// Why the driver dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DropReason {
    /// Received for a flow that had no empty buffer.
    RxNoBuffer,
    /// Transmitted frame did not match the flow's template.
    TxTemplate,
    /// An iorec from the app failed validation.
    InvalidIoRec,
    /// The port did not take a frame or no mbuf was free.
    TxNoMbuf,
    /// Received frame was malformed.
    RxMalformed,
    /// Received frame matched no flow and the flow manager's flow was full or absent.
    RxUnmatched,
}
