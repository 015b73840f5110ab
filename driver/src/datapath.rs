//! The driver's data path, written against [`Port`]: receive, classify, deliver into each
//! flow's receive channel or drop for that flow alone; let the scheduler pick a flow, take its
//! next iorec, copy and police the frame, and send it paced to the link rate.
//!
//! Everything a flow does is counted on the flow; everything dropped before reaching a flow is
//! counted by reason; every drop goes into the [`DropLog`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use foldhash::fast::RandomState;
use nemflow_proto::ctl::{
    DropEntry, DropReason, FlowStats, PortInfo, TcpEnds, TcpSeen, MAX_STAGED,
};
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::{rmm, tmm, ChannelFds, ChannelSpec, FdSource, IoRec, CHANNEL_FDS};
use nemflow_sched::{Pick, Scheduler};

use crate::capture::{CaptureError, Captures};
use crate::classify::{self, Malformed};
use crate::droplog::DropLog;
use crate::flowtable::{Dest, FilterError, FlowTable, Slot};
use crate::port::{Frame, Port};
use crate::template::{self, Violation};

/// Most fragments held waiting for their first fragment.
const HELD_MAX_FRAMES: usize = 256;
/// Most bytes of fragments held.
const HELD_MAX_BYTES: usize = 512 * 1024;
/// How long a fragment waits for its first fragment.
const HELD_TIMEOUT_NS: u64 = 1_000_000_000;

/// Identifies the datagram a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeldKey {
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: u8,
    ident: u16,
}

impl HeldKey {
    fn of(i: &classify::Ipv4Info) -> Self {
        Self {
            src: i.src,
            dst: i.dst,
            proto: i.proto,
            ident: i.ident,
        }
    }
}

/// A fragment that came before its datagram's first fragment.
#[derive(Debug)]
struct Held {
    key: HeldKey,
    expires_ns: u64,
    bytes: Vec<u8>,
}

/// Shortest frame on the wire without FCS: shorter ones are padded, and cost wire time as such.
const MIN_FRAME_BYTES: usize = 60;

/// Most iorecs taken from a channel at once (transmit iorecs ahead of the scheduler's picks,
/// empty receive buffers ahead of frames). Each FIFO is written by the app on another core, so
/// every access to it is a cache miss: taken a batch at a time, the misses overlap and the
/// index is published once per batch instead of once per frame.
const AHEAD: usize = 32;

/// While the data path is saturated (a full receive burst, or a full transmit budget last
/// time), every idle transmit channel is looked at within this time, a share of them each poll:
/// a look costs a cache miss or two per channel, and with 1 000 open flows looking at 64 per
/// burst of 32 frames took an eighth of the receive path's time (BENCHMARKS, driver). A flow
/// that starts sending under saturation waits at most this long to be scheduled, small next to
/// the scheduler's periods. Idle, the data path looks at them all every poll.
const SWEEP_WHEN_BUSY_NS: u64 = 500_000;

/// How the data path is set up.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Link rate the scheduler paces to, bit/s.
    pub rate_bps: u64,
    /// Share of the link kept out of admission control, parts per million.
    pub reserve_ppm: u32,
    /// Largest frame without FCS.
    pub max_frame_bytes: usize,
    /// Frames per receive burst and most frames sent per poll.
    pub burst: usize,
    /// Entries kept in the drop log.
    pub drop_log_entries: usize,
    /// The host's subnet broadcast address (for broadcast delivery).
    pub subnet_broadcast: std::net::Ipv4Addr,
    /// The port's name, for statistics.
    pub port_name: String,
}

/// Why a flow could not be installed or changed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A flow with this id exists.
    #[error("flow {0} exists already")]
    Exists(FlowId),
    /// No such flow.
    #[error("no flow {0}")]
    NotFound(FlowId),
    /// The filter clashes or is unsupported.
    #[error("filter: {0}")]
    Filter(#[from] FilterError),
    /// The channel fds or specs are not acceptable.
    #[error("channel: {0}")]
    Channel(#[from] nemflow_rbuf::Error),
    /// The scheduler refused the QoS.
    #[error("scheduler: {0}")]
    Sched(#[from] nemflow_sched::SchedError),
    /// A capture could not start.
    #[error("capture: {0}")]
    Capture(#[from] CaptureError),
    /// No staged channel pair with this id.
    #[error("no staged channel pair {0}")]
    NotStaged(u32),
    /// A staged channel pair with this id exists.
    #[error("staged channel pair {0} exists already")]
    StagedExists(u32),
    /// As many channel pairs are staged as the driver keeps.
    #[error("{0} channel pairs staged already (the most the driver keeps)")]
    TooManyStaged(usize),
    /// Wrong number of fds.
    #[error("expected {expected} fds, got {got}")]
    FdCount {
        /// Expected.
        expected: usize,
        /// Received.
        got: usize,
    },
}

/// Per-flow counters.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped_no_buffer: u64,
    tx_template_violations: u64,
    invalid_iorecs: u64,
    tx_dropped: u64,
}

/// One installed flow.
#[derive(Debug)]
struct Flow {
    id: FlowId,
    filter: Filter,
    template: Template,
    qos: Qos,
    tx: tmm::Consumer,
    rx: rmm::Producer,
    /// Empty receive buffers taken from the app ahead of frames, oldest first (at most
    /// [`AHEAD`]); a buffer too small for a frame goes back to the front for the next one.
    rx_empty: VecDeque<IoRec>,
    /// Receive buffers filled during this burst, pushed to the app in one batch at its end.
    rx_filled: Vec<(IoRec, usize)>,
    /// Transmit iorecs taken from the app ahead of the scheduler's picks, oldest first.
    tx_ahead: VecDeque<IoRec>,
    /// Transmit iorecs done with during this poll, handed back in one batch at its end.
    tx_done: Vec<IoRec>,
    backlogged: bool,
    broken: bool,
    counters: Counters,
    violations: HashMap<Violation, u64, RandomState>,
    /// TCP flows only: the sequence state seen in passing (for the flow manager's RST and
    /// TIME_WAIT answers once the app is gone).
    tcp: Option<TcpTrack>,
    /// A capture wants this flow's frames (the one test per frame a capture costs when off).
    captured: bool,
}

/// A flow's two channels, as the driver attached them.
#[derive(Debug)]
struct Channels {
    tx: tmm::Consumer,
    rx: rmm::Producer,
}

impl Channels {
    /// Checks and attaches the transmit channel's fds then the receive channel's. They come
    /// from their creator, the flow manager, over the root-only control socket; the memory
    /// stays hostile (the app is the peer).
    fn attach(
        tx_spec: &ChannelSpec,
        rx_spec: &ChannelSpec,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Self, FlowError> {
        if fds.len() != 2 * CHANNEL_FDS {
            return Err(FlowError::FdCount {
                expected: 2 * CHANNEL_FDS,
                got: fds.len(),
            });
        }
        let rx_fds = fds.split_off(CHANNEL_FDS);
        let tx =
            tmm::Consumer::attach_from(tx_spec, ChannelFds::from_vec(fds)?, FdSource::Creator)?;
        let rx =
            rmm::Producer::attach_from(rx_spec, ChannelFds::from_vec(rx_fds)?, FdSource::Creator)?;
        Ok(Self { tx, rx })
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Frames received from the port.
    pub received: usize,
    /// Frames handed to the port.
    pub sent: usize,
    /// When the scheduler next wants to send (pacing), if it is waiting.
    pub wait_until_ns: Option<u64>,
}

/// The data path over one port.
#[derive(Debug)]
pub struct Datapath<P: Port> {
    port: P,
    config: DatapathConfig,
    flows: Vec<Option<Flow>>,
    by_id: HashMap<FlowId, Slot, RandomState>,
    table: FlowTable,
    sched: Scheduler,
    drop_log: DropLog,
    malformed: HashMap<Malformed, u64, RandomState>,
    /// Frames for the default flow when there is none or it had no buffer.
    unmatched_dropped: u64,
    rx_frames: Vec<P::Frame>,
    staged: Vec<P::Frame>,
    /// The flow of each staged frame.
    staged_flows: Vec<FlowId>,
    /// Frames the port refused while its link was down, dropped.
    tx_refused: u64,
    /// Channel pairs attached ahead of their flows (`StageChannels`), by the flow manager's id.
    staged_pairs: HashMap<u32, Channels, RandomState>,
    /// The link state last seen by [`Datapath::check_link`], and how often it changed.
    link_up: bool,
    link_changes: u64,
    /// Flows with filled receive buffers / finished transmit iorecs to hand back this poll.
    rx_touched: Vec<Slot>,
    tx_touched: Vec<Slot>,
    /// Flows neither backlogged nor broken: the only ones whose transmit FIFO is looked at for
    /// new work, from `tx_scan_at` on when the look is bounded.
    tx_idle: Vec<Slot>,
    tx_scan_at: usize,
    /// When the idle flows were last looked at (the data path's clock, ns).
    tx_scan_ns: u64,
    /// The last transmit used its whole budget.
    tx_saturated: bool,
    captures: Captures,
    /// Fragments waiting for their first fragment, oldest first.
    held: VecDeque<Held>,
    held_bytes: usize,
}

impl<P: Port> Datapath<P> {
    /// A data path over `port` with no flows.
    pub fn new(port: P, config: DatapathConfig) -> Result<Self, nemflow_sched::SchedError> {
        let sched = Scheduler::new(config.rate_bps, config.reserve_ppm)?;
        Ok(Self {
            table: FlowTable::new(config.subnet_broadcast),
            drop_log: DropLog::new(config.drop_log_entries),
            rx_frames: Vec::with_capacity(config.burst),
            staged: Vec::with_capacity(config.burst),
            staged_flows: Vec::with_capacity(config.burst),
            tx_refused: 0,
            staged_pairs: HashMap::default(),
            link_up: port.link_up(),
            link_changes: 0,
            rx_touched: Vec::new(),
            tx_touched: Vec::new(),
            tx_idle: Vec::new(),
            tx_scan_at: 0,
            tx_scan_ns: 0,
            tx_saturated: false,
            port,
            config,
            flows: Vec::new(),
            by_id: HashMap::default(),
            sched,
            malformed: HashMap::default(),
            unmatched_dropped: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            captures: Captures::new(),
        })
    }

    /// Lets the scheduler release frames up to `ns` before the wire is free (so that a loop
    /// that sleeps between polls does not leave the link idle).
    pub fn set_lookahead_ns(&mut self, ns: u64) {
        self.sched.set_lookahead_ns(ns);
    }

    /// The port.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Installs a flow: `fds` are the transmit channel's then the receive channel's.
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        &mut self,
        id: FlowId,
        filter: Filter,
        template: Template,
        qos: Qos,
        tx_spec: &ChannelSpec,
        rx_spec: &ChannelSpec,
        fds: Vec<OwnedFd>,
        now_ns: u64,
    ) -> Result<(), FlowError> {
        if self.by_id.contains_key(&id) {
            return Err(FlowError::Exists(id));
        }
        let channels = Channels::attach(tx_spec, rx_spec, fds)?;
        self.install_on(id, filter, template, qos, channels, now_ns)
    }

    /// Attaches a channel pair for a later [`install_staged`](Self::install_staged): `fds` are
    /// checked as [`install`](Self::install) checks them.
    pub fn stage(
        &mut self,
        staged: u32,
        tx_spec: &ChannelSpec,
        rx_spec: &ChannelSpec,
        fds: Vec<OwnedFd>,
    ) -> Result<(), FlowError> {
        if self.staged_pairs.contains_key(&staged) {
            return Err(FlowError::StagedExists(staged));
        }
        if self.staged_pairs.len() >= MAX_STAGED {
            return Err(FlowError::TooManyStaged(MAX_STAGED));
        }
        let channels = Channels::attach(tx_spec, rx_spec, fds)?;
        self.staged_pairs.insert(staged, channels);
        Ok(())
    }

    /// Installs a flow on the staged pair `staged`, which this consumes whether or not the
    /// install succeeds (a pair never serves two flows).
    pub fn install_staged(
        &mut self,
        id: FlowId,
        staged: u32,
        filter: Filter,
        template: Template,
        qos: Qos,
        now_ns: u64,
    ) -> Result<(), FlowError> {
        let channels = self
            .staged_pairs
            .remove(&staged)
            .ok_or(FlowError::NotStaged(staged))?;
        if self.by_id.contains_key(&id) {
            return Err(FlowError::Exists(id));
        }
        self.install_on(id, filter, template, qos, channels, now_ns)
    }

    /// Drops one staged channel pair that no flow will use (an app reserved it and left): its
    /// channels are unmapped.
    pub fn drop_staged_pair(&mut self, staged: u32) -> Result<(), FlowError> {
        self.staged_pairs
            .remove(&staged)
            .map(drop)
            .ok_or(FlowError::NotStaged(staged))
    }

    /// Drops every staged channel pair (their flow manager is gone); returns how many.
    pub fn drop_staged(&mut self) -> usize {
        let n = self.staged_pairs.len();
        self.staged_pairs.clear();
        n
    }

    fn install_on(
        &mut self,
        id: FlowId,
        filter: Filter,
        template: Template,
        qos: Qos,
        Channels { tx, rx }: Channels,
        now_ns: u64,
    ) -> Result<(), FlowError> {
        let slot = match self.flows.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.flows.push(None);
                self.flows.len() - 1
            }
        };
        let slot_id = Slot::try_from(slot)
            .map_err(|_| FlowError::Filter(FilterError::Unsupported("too many flows")))?;
        self.sched.add_flow(id.0, to_sched_qos(&qos), now_ns)?;
        if let Err(e) = self.table.insert(&filter, slot_id) {
            let _ = self.sched.remove_flow(id.0);
            return Err(e.into());
        }
        self.flows[slot] = Some(Flow {
            id,
            filter,
            qos,
            tx,
            rx,
            rx_empty: VecDeque::with_capacity(AHEAD),
            rx_filled: Vec::with_capacity(AHEAD),
            tx_ahead: VecDeque::with_capacity(AHEAD),
            tx_done: Vec::with_capacity(AHEAD),
            backlogged: false,
            broken: false,
            counters: Counters::default(),
            violations: HashMap::default(),
            tcp: matches!(
                template.kind,
                TemplateKind::Ipv4 {
                    proto: ip_proto::TCP,
                    ..
                }
            )
            .then(TcpTrack::default),
            template,
            captured: false,
        });
        self.by_id.insert(id, slot_id);
        self.tx_idle.push(slot_id);
        tracing::info!(flow = %id, "flow installed");
        Ok(())
    }

    /// Removes a flow: its filter, its scheduling and its channel mappings.
    pub fn remove(&mut self, id: FlowId) -> Result<FlowStats, FlowError> {
        let slot = self.by_id.remove(&id).ok_or(FlowError::NotFound(id))?;
        let stats = self.stats_of(slot);
        if let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::take) {
            self.table.remove(&flow.filter, slot);
        }
        self.tx_idle.retain(|&s| s != slot);
        let _ = self.sched.remove_flow(id.0);
        self.captures.flow_removed(id);
        tracing::info!(flow = %id, "flow removed");
        Ok(stats.unwrap_or_default())
    }

    /// Changes a flow's QoS.
    pub fn set_qos(&mut self, id: FlowId, qos: Qos, now_ns: u64) -> Result<(), FlowError> {
        let slot = *self.by_id.get(&id).ok_or(FlowError::NotFound(id))?;
        self.sched.set_qos(id.0, to_sched_qos(&qos), now_ns)?;
        if let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) {
            flow.qos = qos;
        }
        Ok(())
    }

    /// Starts capturing a flow's frames into a capture channel (see [`crate::capture`]).
    pub fn capture_start(
        &mut self,
        id: FlowId,
        direction: nemflow_proto::ctl::CaptureDirection,
        spec: &ChannelSpec,
        fds: Vec<OwnedFd>,
    ) -> Result<u32, FlowError> {
        let slot = *self.by_id.get(&id).ok_or(FlowError::NotFound(id))?;
        let cap = self.captures.start(id, direction, spec, fds)?;
        if let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) {
            flow.captured = true;
        }
        Ok(cap)
    }

    /// Ends a capture; its final counters (`None`: no such capture).
    pub fn capture_stop(&mut self, cap: u32) -> Option<nemflow_proto::ctl::CaptureCounters> {
        let flow = self.captures.flow_of(cap)?;
        let counters = self.captures.stop(cap);
        let still = self.captures.wants(flow);
        if let Some(f) = self
            .by_id
            .get(&flow)
            .and_then(|&slot| self.flows.get_mut(slot as usize))
            .and_then(Option::as_mut)
        {
            f.captured = still;
        }
        counters
    }

    /// A capture's counters.
    pub fn capture_stats(&self, cap: u32) -> Option<nemflow_proto::ctl::CaptureCounters> {
        self.captures.stats(cap)
    }

    /// Every flow's QoS, by id (for telemetry).
    pub fn flow_qos(&self) -> Vec<(FlowId, Qos)> {
        let mut v: Vec<(FlowId, Qos)> =
            self.flows.iter().flatten().map(|f| (f.id, f.qos)).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Statistics of one flow or all.
    pub fn flow_stats(&self, id: Option<FlowId>) -> Result<Vec<FlowStats>, FlowError> {
        match id {
            Some(id) => {
                let slot = *self.by_id.get(&id).ok_or(FlowError::NotFound(id))?;
                Ok(self.stats_of(slot).into_iter().collect())
            }
            None => {
                let mut all: Vec<FlowStats> = (0..self.flows.len() as Slot)
                    .filter_map(|s| self.stats_of(s))
                    .collect();
                all.sort_by_key(|s| s.id);
                Ok(all)
            }
        }
    }

    fn stats_of(&self, slot: Slot) -> Option<FlowStats> {
        let flow = self.flows.get(slot as usize)?.as_ref()?;
        let c = flow.counters;
        let sched = self.sched.stats(flow.id.0).ok();
        let tx_counters = flow.tx.counters();
        let rx_counters = flow.rx.counters();
        Some(FlowStats {
            id: flow.id,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            rx_dropped_no_buffer: c.rx_dropped_no_buffer,
            tx_template_violations: c.tx_template_violations,
            invalid_iorecs: c
                .invalid_iorecs
                .max(invalid_total(&tx_counters) + invalid_total(&rx_counters)),
            tx_dropped: c.tx_dropped,
            sched_guaranteed_ns: sched.as_ref().map_or(0, |s| s.total.guaranteed_ns),
            sched_extra_ns: sched.as_ref().map_or(0, |s| s.total.extra_ns),
            sched_deadline_misses: sched.as_ref().map_or(0, |s| s.deadline_misses),
            broken: flow.broken || flow.tx.broken().is_some() || flow.rx.broken().is_some(),
            tcp: flow.tcp.and_then(|t| t.seen()),
        })
    }

    /// The port's state and the counters of frames dropped before any flow.
    pub fn port_info(&self) -> PortInfo {
        let s = self.port.stats();
        let mut drops: Vec<(String, u64)> = Malformed::ALL
            .iter()
            .map(|m| {
                (
                    m.name().to_owned(),
                    self.malformed.get(m).copied().unwrap_or(0),
                )
            })
            .collect();
        drops.push(("unmatched".into(), self.unmatched_dropped));
        PortInfo {
            name: self.config.port_name.clone(),
            mac: self.port.mac(),
            link_up: self.port.link_up(),
            rate_bps: self.config.rate_bps,
            rx_packets: s.rx_packets,
            tx_packets: s.tx_packets,
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            rx_missed: s.rx_missed,
            rx_nombuf: s.rx_nombuf,
            drops,
            flows: self.by_id.len() as u32,
            staged: self.staged_pairs.len() as u32,
            mbufs_in_use: self.port.buffers_in_use().unwrap_or(0),
            tx_errors: self.tx_refused,
            link_changes: self.link_changes,
        }
    }

    /// Drop-log entries after sequence number `after`.
    pub fn drop_log(&self, after: u64, max: usize) -> Vec<DropEntry> {
        self.drop_log.since(after, max)
    }

    /// Frames dropped before reaching a flow, for one reason.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        self.malformed.get(&reason).copied().unwrap_or(0)
    }

    /// One round: receive a burst, find backlogged flows, send what the scheduler allows.
    pub fn poll(&mut self, now_ns: u64) -> Work {
        let received = self.receive(now_ns);
        let busy = received >= self.config.burst || self.tx_saturated;
        self.discover_backlog(now_ns, busy);
        let (sent, wait_until_ns) = self.transmit(now_ns);
        Work {
            received,
            sent,
            wait_until_ns,
        }
    }

    fn receive(&mut self, now_ns: u64) -> usize {
        let mut frames = std::mem::take(&mut self.rx_frames);
        let n = self.port.recv(&mut frames, self.config.burst);
        for frame in &frames {
            if frame.is_segmented() {
                self.count_malformed(Malformed::Oversize, frame.bytes().len());
                continue;
            }
            self.route(frame.bytes(), now_ns);
        }
        frames.clear();
        self.rx_frames = frames;
        self.expire_held(now_ns);
        self.push_filled();
        n
    }

    /// Hands each flow the buffers filled during this burst, one batch per flow.
    fn push_filled(&mut self) {
        for slot in self.rx_touched.drain(..) {
            let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(e) = flow.rx.push_full_batch(&flow.rx_filled) {
                // Not delivered after all (the app broke its channel meanwhile): drops.
                for &(_, len) in &flow.rx_filled {
                    flow.counters.rx_packets -= 1;
                    flow.counters.rx_bytes -= len as u64;
                    flow.counters.rx_dropped_no_buffer += 1;
                    self.drop_log
                        .record(Some(flow.id), DropReason::RxNoBuffer, len);
                }
                tracing::debug!(flow = %flow.id, "receive push failed: {e}");
            }
            flow.rx_filled.clear();
        }
    }

    /// Classifies one received frame and delivers or drops it.
    fn route(&mut self, bytes: &[u8], now_ns: u64) {
        let (dest, fragment) = match classify::parse(bytes, self.config.max_frame_bytes) {
            Ok(parsed) => {
                let key = match &parsed {
                    classify::Parsed::Ipv4(i) if i.frag_offset != 0 || i.more_fragments => {
                        Some(HeldKey::of(i))
                    }
                    _ => None,
                };
                (self.table.lookup(&parsed, now_ns), key)
            }
            Err(m) => (Dest::Drop(m), None),
        };
        match dest {
            Dest::One(slot) => {
                self.deliver(slot, bytes);
            }
            Dest::Many(slots) => {
                for slot in slots {
                    self.deliver(slot, bytes);
                }
            }
            Dest::Default => match self.table.default_slot() {
                Some(slot) => {
                    if !self.deliver(slot, bytes) {
                        self.unmatched_dropped += 1;
                    }
                }
                None => {
                    self.unmatched_dropped += 1;
                    self.drop_log
                        .record(None, DropReason::RxUnmatched, bytes.len());
                }
            },
            Dest::Drop(m) => self.count_malformed(m, bytes.len()),
            Dest::Hold => {
                if let Some(key) = fragment {
                    self.hold(key, bytes, now_ns);
                }
                return;
            }
        }
        // A fragment that found its datagram's state may free fragments that came before it.
        if let Some(key) = fragment {
            self.release_held(key, now_ns);
        }
    }

    /// Keeps a fragment that came before its first fragment, within bounds; the oldest held
    /// one makes room (and counts as an orphan).
    fn hold(&mut self, key: HeldKey, bytes: &[u8], now_ns: u64) {
        while self.held.len() >= HELD_MAX_FRAMES || self.held_bytes + bytes.len() > HELD_MAX_BYTES {
            let Some(old) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= old.bytes.len();
            self.count_malformed(Malformed::FragmentOrphan, old.bytes.len());
        }
        self.held_bytes += bytes.len();
        self.held.push_back(Held {
            key,
            expires_ns: now_ns.saturating_add(HELD_TIMEOUT_NS),
            bytes: bytes.to_vec(),
        });
    }

    /// Routes again the held fragments of `key`'s datagram, now that its state exists.
    fn release_held(&mut self, key: HeldKey, now_ns: u64) {
        if self.held.is_empty() || !self.held.iter().any(|h| h.key == key) {
            return;
        }
        let (mine, rest): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.key == key);
        self.held = rest;
        for h in mine {
            self.held_bytes -= h.bytes.len();
            // Still without state (the first fragment matched nothing): held again, not looped.
            match classify::parse(&h.bytes, self.config.max_frame_bytes)
                .map(|p| self.table.lookup(&p, now_ns))
            {
                Ok(Dest::Hold) => self.count_malformed(Malformed::FragmentOrphan, h.bytes.len()),
                Ok(_) => self.route(&h.bytes, now_ns),
                Err(m) => self.count_malformed(m, h.bytes.len()),
            }
        }
    }

    /// Drops held fragments whose first fragment never came.
    fn expire_held(&mut self, now_ns: u64) {
        while self.held.front().is_some_and(|h| h.expires_ns < now_ns) {
            if let Some(old) = self.held.pop_front() {
                self.held_bytes -= old.bytes.len();
                self.count_malformed(Malformed::FragmentOrphan, old.bytes.len());
            }
        }
    }

    /// Fragments held now (for tests and statistics).
    pub fn fragments_held(&self) -> usize {
        self.held.len()
    }

    fn count_malformed(&mut self, m: Malformed, len: usize) {
        *self.malformed.entry(m).or_default() += 1;
        self.drop_log.record(None, DropReason::RxMalformed, len);
    }

    /// Copies a frame into the flow's next empty buffer; false if it was dropped.
    fn deliver(&mut self, slot: Slot, bytes: &[u8]) -> bool {
        let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) else {
            return false;
        };
        if flow.captured {
            self.captures.record(flow.id, false, bytes);
        }
        let buf = match flow.rx_empty.pop_front() {
            Some(rec) => Ok(Some(rec)),
            None => {
                // A batch of the app's empty buffers; invalid ones are skipped, each counted
                // and logged.
                let mut recs = [IoRec::default(); AHEAD];
                let invalid_before = flow.rx.counters().invalid_iorecs();
                let taken = flow.rx.take_empty_batch(&mut recs);
                let invalid = flow.rx.counters().invalid_iorecs() - invalid_before;
                for _ in 0..invalid {
                    flow.counters.invalid_iorecs += 1;
                    self.drop_log
                        .record(Some(flow.id), DropReason::InvalidIoRec, bytes.len());
                }
                taken.map(|k| {
                    flow.rx_empty.extend(recs.iter().take(k).skip(1));
                    (k > 0).then_some(recs[0])
                })
            }
        };
        let rec = match buf {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                flow.counters.rx_dropped_no_buffer += 1;
                self.drop_log
                    .record(Some(flow.id), DropReason::RxNoBuffer, bytes.len());
                return false;
            }
            Err(e) => {
                flow.counters.invalid_iorecs += 1;
                flow.counters.rx_dropped_no_buffer += 1;
                if flow.rx.broken().is_some() && !flow.broken {
                    flow.broken = true;
                    tracing::warn!(flow = %flow.id, "receive channel broken: {e}");
                }
                self.drop_log
                    .record(Some(flow.id), DropReason::InvalidIoRec, bytes.len());
                return false;
            }
        };
        if rec.total_len() < bytes.len() as u64 {
            // The app's buffers are smaller than this frame: drop it, keep the buffer.
            flow.rx_empty.push_front(rec);
            flow.counters.rx_dropped_no_buffer += 1;
            self.drop_log
                .record(Some(flow.id), DropReason::RxNoBuffer, bytes.len());
            return false;
        }
        match flow.rx.copy_in(&rec, bytes) {
            Ok(()) => {
                // Pushed with the rest of the burst's frames for this flow (`push_filled`).
                if flow.rx_filled.is_empty() {
                    self.rx_touched.push(slot);
                }
                flow.rx_filled.push((rec, bytes.len()));
                flow.counters.rx_packets += 1;
                flow.counters.rx_bytes += bytes.len() as u64;
                if let Some(t) = flow.tcp.as_mut() {
                    t.on_rx(bytes);
                }
                true
            }
            Err(e) => {
                flow.counters.rx_dropped_no_buffer += 1;
                tracing::debug!(flow = %flow.id, "receive copy failed: {e}");
                self.drop_log
                    .record(Some(flow.id), DropReason::RxNoBuffer, bytes.len());
                false
            }
        }
    }

    /// Tells the scheduler about flows whose transmit FIFO became non-empty: looks at every
    /// idle flow, or, round robin when `busy`, at this poll's share of a sweep of them all in
    /// [`SWEEP_WHEN_BUSY_NS`] (at least one).
    fn discover_backlog(&mut self, now_ns: u64, busy: bool) {
        let idle = self.tx_idle.len();
        let since = now_ns.saturating_sub(self.tx_scan_ns);
        self.tx_scan_ns = now_ns;
        let mut budget = if busy {
            let share = (idle as u128 * u128::from(since)).div_ceil(u128::from(SWEEP_WHEN_BUSY_NS));
            usize::try_from(share)
                .unwrap_or(usize::MAX)
                .clamp(1, idle.max(1))
        } else {
            idle
        };
        let mut i = self.tx_scan_at;
        while budget > 0 && !self.tx_idle.is_empty() {
            budget -= 1;
            if i >= self.tx_idle.len() {
                i = 0;
            }
            let slot = self.tx_idle[i];
            let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) else {
                self.tx_idle.swap_remove(i);
                continue;
            };
            if flow.backlogged || flow.broken {
                self.tx_idle.swap_remove(i);
                continue;
            }
            match flow.tx.ready() {
                Ok(true) => {
                    if self.sched.set_backlogged(flow.id.0, true, now_ns).is_ok() {
                        flow.backlogged = true;
                        self.tx_idle.swap_remove(i);
                        continue;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    flow.broken = true;
                    tracing::warn!(flow = %flow.id, "transmit channel broken: {e}");
                    self.tx_idle.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        self.tx_scan_at = i;
    }

    fn transmit(&mut self, now_ns: u64) -> (usize, Option<u64>) {
        let mut wait = None;
        // Frames the port refused last time are sent first (they were charged already).
        let mut budget = self.config.burst.saturating_sub(self.staged.len());
        while budget > 0 {
            match self.sched.pick(now_ns) {
                Pick::Send(id) => {
                    budget -= 1;
                    self.transmit_one(FlowId(id), now_ns);
                }
                Pick::WaitUntil(t) => {
                    wait = Some(t);
                    break;
                }
                Pick::Idle => break,
            }
        }
        self.tx_saturated = budget == 0;
        // The apps' buffers are copied out: hand them back, one batch per flow.
        for slot in self.tx_touched.drain(..) {
            let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(e) = flow.tx.release_batch(&flow.tx_done) {
                tracing::debug!(flow = %flow.id, "release failed: {e}");
            }
            flow.tx_done.clear();
        }
        let sent = if self.staged.is_empty() {
            0
        } else {
            let n = self.port.send(&mut self.staged);
            self.staged_flows.drain(..n.min(self.staged_flows.len()));
            // Refused with the link up: the queue is full for now, they go first next time.
            if !self.staged.is_empty() && !self.port.link_up() {
                self.drop_refused();
            }
            n
        };
        (sent, wait)
    }

    /// Drops the frames the port refused while its link is down: kept, they would hold mbufs
    /// for as long as the link stays down and leave late. Each is counted on the port
    /// (`tx_errors`) and on its flow (`tx_dropped`, no longer `tx_packets`), and logged.
    #[cold]
    fn drop_refused(&mut self) {
        for (frame, id) in self.staged.drain(..).zip(self.staged_flows.drain(..)) {
            let len = frame.bytes().len();
            self.tx_refused += 1;
            if let Some(flow) = self
                .by_id
                .get(&id)
                .and_then(|&slot| self.flows.get_mut(slot as usize))
                .and_then(Option::as_mut)
            {
                flow.counters.tx_packets = flow.counters.tx_packets.saturating_sub(1);
                flow.counters.tx_bytes = flow.counters.tx_bytes.saturating_sub(len as u64);
                flow.counters.tx_dropped += 1;
            }
            self.drop_log.record(Some(id), DropReason::TxNoMbuf, len);
        }
        // Frames and flows stay paired even if a port misbehaved.
        self.staged.clear();
        self.staged_flows.clear();
    }

    /// Looks at the port's link state; a change is counted (`link_changes`) and logged.
    /// Returns whether the link is up.
    pub fn check_link(&mut self) -> bool {
        let up = self.port.link_up();
        if up != self.link_up {
            self.link_up = up;
            self.link_changes += 1;
            if up {
                tracing::info!(port = %self.config.port_name, "link up");
            } else {
                tracing::warn!(port = %self.config.port_name, "link down");
            }
        }
        up
    }

    /// Takes the flow's next iorec, copies and polices it, and stages it for the port.
    fn transmit_one(&mut self, id: FlowId, now_ns: u64) {
        let Some(&slot) = self.by_id.get(&id) else {
            let _ = self.sched.set_backlogged(id.0, false, now_ns);
            return;
        };
        let Some(flow) = self.flows.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let popped = match flow.tx_ahead.pop_front() {
            Some(rec) => Ok(Some(rec)),
            None => {
                // A batch of the app's iorecs; invalid ones are skipped, each counted and logged.
                let mut recs = [IoRec::default(); AHEAD];
                let invalid_before = flow.tx.counters().invalid_iorecs();
                let popped = flow.tx.pop_batch(&mut recs);
                let invalid = flow.tx.counters().invalid_iorecs() - invalid_before;
                for _ in 0..invalid {
                    flow.counters.invalid_iorecs += 1;
                    self.drop_log.record(Some(id), DropReason::InvalidIoRec, 0);
                }
                match popped {
                    Ok(0) if invalid > 0 => return,
                    Ok(k) => {
                        flow.tx_ahead.extend(recs.iter().take(k).skip(1));
                        Ok((k > 0).then_some(recs[0]))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let rec = match popped {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                flow.backlogged = false;
                self.tx_idle.push(slot);
                let _ = self.sched.set_backlogged(id.0, false, now_ns);
                return;
            }
            Err(e) => {
                flow.counters.invalid_iorecs += 1;
                self.drop_log.record(Some(id), DropReason::InvalidIoRec, 0);
                if flow.tx.broken().is_some() {
                    flow.broken = true;
                    flow.backlogged = false;
                    let _ = self.sched.set_backlogged(id.0, false, now_ns);
                    tracing::warn!(flow = %id, "transmit channel broken: {e}");
                }
                return;
            }
        };
        let len = usize::try_from(rec.total_len()).unwrap_or(usize::MAX);
        let verdict = if len > self.config.max_frame_bytes {
            Err(Violation::TooLong)
        } else if len < 14 {
            Err(Violation::TooShort)
        } else {
            Ok(())
        };
        let staged = verdict.and_then(|()| {
            let Some(mut frame) = self.port.alloc(len) else {
                return Ok(None);
            };
            match flow.tx.copy_out(&rec, frame.bytes_mut()) {
                Ok(n) if n == len => {}
                _ => return Err(Violation::TooShort),
            }
            template::check(&flow.template, frame.bytes(), self.config.max_frame_bytes)?;
            Ok(Some(frame))
        });
        // Handed back at the end of the poll (`transmit`), with the flow's other iorecs.
        if flow.tx_done.is_empty() {
            self.tx_touched.push(slot);
        }
        flow.tx_done.push(rec);
        match staged {
            Ok(Some(frame)) => {
                flow.counters.tx_packets += 1;
                flow.counters.tx_bytes += len as u64;
                if let Some(t) = flow.tcp.as_mut() {
                    // The driver's own copy, already checked against the template.
                    t.on_tx(frame.bytes());
                }
                let wire_len = len.max(MIN_FRAME_BYTES) as u32;
                let _ = self.sched.charge(id.0, wire_len, now_ns);
                if flow.captured {
                    self.captures.record(id, true, frame.bytes());
                }
                self.staged.push(frame);
                self.staged_flows.push(id);
            }
            Ok(None) => {
                flow.counters.tx_dropped += 1;
                self.drop_log.record(Some(id), DropReason::TxNoMbuf, len);
            }
            Err(v) => {
                flow.counters.tx_template_violations += 1;
                *flow.violations.entry(v).or_default() += 1;
                self.drop_log.record(Some(id), DropReason::TxTemplate, len);
            }
        }
    }
}

/// A TCP flow's sequence state, updated from each segment's header: a few loads and compares
/// per frame, on headers the data path has in cache anyway.
#[derive(Debug, Clone, Copy, Default)]
struct TcpTrack {
    seen: TcpSeen,
    /// A segment was sent / received (the sequence fields are valid).
    tx_any: bool,
    rx_any: bool,
}

/// The parts of a TCP segment the tracker uses.
struct Segment {
    seq: u32,
    ack: u32,
    /// `SEG.LEN`: payload bytes plus one for SYN and one for FIN.
    len: u32,
    flags: u8,
    /// Source as `local`, destination as `remote` and the destination MAC (a sent segment's
    /// view).
    ends: TcpEnds,
}

/// Parses the TCP header of an Ethernet/IPv4 frame; `None` for anything else, a fragment, or
/// lengths that do not add up.
fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != ip_proto::TCP {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    if frag & 0x3fff != 0 || ihl < 20 || total > ip.len() {
        return None;
    }
    let tcp = ip.get(ihl..total)?;
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let flags = tcp[13];
    let syn_fin = u32::from(flags & TcpSeen::SYN != 0) + u32::from(flags & TcpSeen::FIN != 0);
    let mut next_hop_mac = [0u8; 6];
    next_hop_mac.copy_from_slice(&frame[..6]);
    Some(Segment {
        seq: word(4),
        ack: word(8),
        len: (tcp.len() - doff) as u32 + syn_fin,
        flags,
        ends: TcpEnds {
            local: SocketAddrV4::new(addr(12), port(0)),
            remote: SocketAddrV4::new(addr(16), port(2)),
            next_hop_mac,
        },
    })
}

/// `a` is after `b` in sequence space (RFC 793: modulo 2³², within half the space).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Moves `at` forward to `to` (or sets it, on the first segment).
fn advance(at: &mut u32, to: u32, first: bool) {
    if first || seq_after(to, *at) {
        *at = to;
    }
}

impl TcpTrack {
    fn on_tx(&mut self, frame: &[u8]) {
        let Some(s) = tcp_segment(frame) else { return };
        let t = &mut self.seen;
        t.ends = Some(s.ends);
        // An RST consumes no sequence space and may carry an unrelated sequence number.
        if s.flags & TcpSeen::RST == 0 {
            advance(&mut t.snd_nxt, s.seq.wrapping_add(s.len), !self.tx_any);
            self.tx_any = true;
        }
        if s.flags & TcpSeen::ACK != 0 {
            advance(&mut t.rcv_nxt, s.ack, t.tx_flags & TcpSeen::ACK == 0);
        }
        t.tx_flags |= s.flags;
    }

    fn on_rx(&mut self, frame: &[u8]) {
        let Some(s) = tcp_segment(frame) else { return };
        let t = &mut self.seen;
        if s.flags & TcpSeen::RST == 0 {
            advance(&mut t.peer_nxt, s.seq.wrapping_add(s.len), !self.rx_any);
            self.rx_any = true;
        }
        if s.flags & TcpSeen::ACK != 0 {
            advance(&mut t.peer_ack, s.ack, t.rx_flags & TcpSeen::ACK == 0);
        }
        t.rx_flags |= s.flags;
    }

    /// The state for statistics, once a segment passed either way.
    fn seen(self) -> Option<TcpSeen> {
        (self.seen.tx_flags | self.seen.rx_flags != 0).then_some(self.seen)
    }
}

/// The scheduler's QoS from the protocol's.
fn to_sched_qos(q: &Qos) -> nemflow_sched::Qos {
    nemflow_sched::Qos {
        period_ns: q.period_ns,
        slice_ns: q.slice_ns,
        extra: q.extra,
        latency_hint_ns: q.latency_hint_ns,
    }
}

/// Every iorec or index violation an rbuf endpoint counted.
fn invalid_total(c: &nemflow_rbuf::Counters) -> u64 {
    c.invalid_iorecs() + c.index_violations()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::{Ipv4Addr, SocketAddrV4};

    use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
    use nemflow_rbuf::IoRec;
    use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber,
    };

    use super::*;
    use crate::port::{MemPeer, MemPort};

    const HOST_MAC: [u8; 6] = [2, 0x4e, 0x46, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0x4e, 0x46, 0xff, 0, 2];
    const HOST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 5000);
    const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 80);

    /// An Ethernet/IPv4/TCP frame `from` → `to` with `flags` (TcpSeen bits) and `payload`.
    fn segment(
        from: (SocketAddrV4, [u8; 6]),
        to: (SocketAddrV4, [u8; 6]),
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 14 + 20 + 20 + payload.len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(from.1),
            dst_addr: EthernetAddress(to.1),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        Ipv4Repr {
            src_addr: *from.0.ip(),
            dst_addr: *to.0.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: 20 + payload.len(),
            hop_limit: 64,
        }
        .emit(&mut ip, &ChecksumCapabilities::default());
        let mut t = TcpPacket::new_unchecked(ip.payload_mut());
        t.set_src_port(from.0.port());
        t.set_dst_port(to.0.port());
        t.set_seq_number(TcpSeqNumber(seq as i32));
        t.set_ack_number(TcpSeqNumber(ack as i32));
        t.set_header_len(20);
        t.clear_flags();
        t.set_fin(flags & TcpSeen::FIN != 0);
        t.set_syn(flags & TcpSeen::SYN != 0);
        t.set_rst(flags & TcpSeen::RST != 0);
        t.set_ack(flags & TcpSeen::ACK != 0);
        t.set_window_len(1000);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(&IpAddress::Ipv4(*from.0.ip()), &IpAddress::Ipv4(*to.0.ip()));
        buf
    }

    fn out(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        segment((HOST, HOST_MAC), (PEER, PEER_MAC), seq, ack, flags, payload)
    }

    fn inbound(seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        segment((PEER, PEER_MAC), (HOST, HOST_MAC), seq, ack, flags, payload)
    }

    fn setup() -> (Datapath<MemPort>, MemPeer, AppEnds) {
        let (port, peer) = MemPort::new(HOST_MAC);
        let mut dp = Datapath::new(
            port,
            DatapathConfig {
                rate_bps: 1_000_000_000,
                reserve_ppm: 20_000,
                max_frame_bytes: 1514,
                burst: 32,
                drop_log_entries: 100,
                subnet_broadcast: Ipv4Addr::new(10, 77, 0, 255),
                port_name: "mem0".into(),
            },
        )
        .unwrap();
        let (app, fds) = flow_channels(&spec(16), &spec(16)).unwrap();
        dp.install(
            FlowId(2),
            Filter::Connected {
                proto: ip_proto::TCP,
                local: HOST,
                remote: PEER,
            },
            Template {
                src_mac: HOST_MAC,
                kind: TemplateKind::Ipv4 {
                    src: *HOST.ip(),
                    proto: ip_proto::TCP,
                    src_port: HOST.port(),
                    dst: Some(PEER),
                },
            },
            Qos::BEST_EFFORT,
            &spec(16),
            &spec(16),
            fds,
            0,
        )
        .unwrap();
        (dp, peer, app)
    }

    fn send(dp: &mut Datapath<MemPort>, app: &mut AppEnds, frame: &[u8], now_ns: &mut u64) {
        let ext = app.tx.alloc(frame.len()).unwrap().expect("tx buffer");
        app.tx.buf_mut(ext).unwrap().copy_from_slice(frame);
        app.tx.push(IoRec::single(ext, 0)).unwrap();
        *now_ns += 1_000_000;
        dp.poll(*now_ns);
        app.tx.reclaim().unwrap();
    }

    fn seen(dp: &Datapath<MemPort>) -> Option<TcpSeen> {
        dp.flow_stats(Some(FlowId(2))).unwrap()[0].tcp
    }

    #[test]
    fn tcp_flows_record_the_sequence_state_they_pass() {
        let (mut dp, peer, mut app) = setup();
        let mut now = 0u64;
        assert_eq!(seen(&dp), None, "nothing passed yet");
        // SYN out (ISN near the wrap), SYN-ACK in, 100 bytes out, 10 in, FIN out.
        let isn = u32::MAX - 10;
        send(&mut dp, &mut app, &out(isn, 0, TcpSeen::SYN, b""), &mut now);
        let s = seen(&dp).unwrap();
        assert_eq!((s.snd_nxt, s.tx_flags), (isn.wrapping_add(1), TcpSeen::SYN));
        // The ends, as the sent segment named them: what a restarted flow manager resets.
        assert_eq!(
            s.ends,
            Some(TcpEnds {
                local: HOST,
                remote: PEER,
                next_hop_mac: PEER_MAC
            })
        );
        peer.inject(inbound(
            7000,
            isn.wrapping_add(1),
            TcpSeen::SYN | TcpSeen::ACK,
            b"",
        ));
        dp.poll(now);
        let s = seen(&dp).unwrap();
        assert_eq!((s.peer_nxt, s.peer_ack), (7001, isn.wrapping_add(1)));
        let data = [7u8; 100];
        let seq = isn.wrapping_add(1);
        send(
            &mut dp,
            &mut app,
            &out(seq, 7001, TcpSeen::ACK, &data),
            &mut now,
        );
        peer.inject(inbound(7001, seq.wrapping_add(60), TcpSeen::ACK, &[1; 10]));
        dp.poll(now);
        let s = seen(&dp).unwrap();
        assert_eq!(s.snd_nxt, seq.wrapping_add(100), "across the wrap");
        assert_eq!(
            (s.rcv_nxt, s.peer_nxt, s.peer_ack),
            (7001, 7011, seq.wrapping_add(60))
        );
        // A retransmission and an old ACK do not move anything back; an RST moves no sequence.
        send(
            &mut dp,
            &mut app,
            &out(seq, 7011, TcpSeen::ACK, &data[..50]),
            &mut now,
        );
        peer.inject(inbound(7011, seq.wrapping_add(10), TcpSeen::ACK, b""));
        dp.poll(now);
        send(&mut dp, &mut app, &out(5, 0, TcpSeen::RST, b""), &mut now);
        let s = seen(&dp).unwrap();
        assert_eq!(
            (s.snd_nxt, s.rcv_nxt, s.peer_ack),
            (seq.wrapping_add(100), 7011, seq.wrapping_add(60))
        );
        // FIN counts one.
        let fin_at = seq.wrapping_add(100);
        send(
            &mut dp,
            &mut app,
            &out(fin_at, 7011, TcpSeen::FIN | TcpSeen::ACK, b""),
            &mut now,
        );
        let s = seen(&dp).unwrap();
        assert_eq!(s.snd_nxt, fin_at.wrapping_add(1));
        assert_eq!(
            s.tx_flags,
            TcpSeen::SYN | TcpSeen::ACK | TcpSeen::RST | TcpSeen::FIN
        );
        assert_eq!(s.rx_flags, TcpSeen::SYN | TcpSeen::ACK);
        assert_eq!(peer.take_sent().len(), 5, "every segment was sent");
        // Frames the app received were delivered (and counted).
        let stats = &dp.flow_stats(Some(FlowId(2))).unwrap()[0];
        assert_eq!(stats.rx_packets, 3);
    }

    #[test]
    fn udp_flows_and_odd_frames_leave_no_tcp_state() {
        assert!(tcp_segment(&[0u8; 10]).is_none());
        let mut f = out(1, 2, TcpSeen::ACK, b"abc");
        f[14 + 6] = 0x20; // more fragments: not parsed
        assert!(tcp_segment(&f).is_none());
        let mut f = out(1, 2, TcpSeen::ACK, b"abc");
        f[14 + 20 + 12] = 0xf0; // data offset beyond the segment
        assert!(tcp_segment(&f).is_none());
        let f = out(1, 2, TcpSeen::ACK, b"abc");
        let s = tcp_segment(&f).unwrap();
        assert_eq!((s.seq, s.ack, s.len, s.flags), (1, 2, 3, TcpSeen::ACK));
        assert!(seq_after(1, u32::MAX) && !seq_after(u32::MAX, 1));
    }

    /// A data path with `n` bound UDP flows on ports 7000.. (ids 1..=n), `slots` buffers each way.
    fn udp_flows(n: u16, slots: u32) -> (Datapath<MemPort>, MemPeer, Vec<AppEnds>) {
        let (port, peer) = MemPort::new(HOST_MAC);
        let mut dp = Datapath::new(
            port,
            DatapathConfig {
                rate_bps: 10_000_000_000,
                reserve_ppm: 20_000,
                max_frame_bytes: 1514,
                burst: 32,
                drop_log_entries: 100,
                subnet_broadcast: Ipv4Addr::new(10, 77, 0, 255),
                port_name: "mem0".into(),
            },
        )
        .unwrap();
        dp.set_lookahead_ns(1_000_000);
        let mut apps = Vec::new();
        for i in 0..n {
            let local = SocketAddrV4::new(*HOST.ip(), 7000 + i);
            let (app, fds) = flow_channels(&spec(slots), &spec(slots)).unwrap();
            dp.install(
                FlowId(u32::from(i) + 1),
                Filter::Bound {
                    proto: ip_proto::UDP,
                    local,
                    broadcast: false,
                },
                Template {
                    src_mac: HOST_MAC,
                    kind: TemplateKind::Ipv4 {
                        src: *HOST.ip(),
                        proto: ip_proto::UDP,
                        src_port: local.port(),
                        dst: None,
                    },
                },
                Qos::BEST_EFFORT,
                &spec(slots),
                &spec(slots),
                fds,
                0,
            )
            .unwrap();
            apps.push(app);
        }
        (dp, peer, apps)
    }

    fn udp(from: (SocketAddrV4, [u8; 6]), to: (SocketAddrV4, [u8; 6]), seq: u32) -> Vec<u8> {
        nemflow_testkit::frames::UdpFrame {
            src_mac: from.1,
            dst_mac: to.1,
            ..nemflow_testkit::frames::UdpFrame::new(from.0, to.0, &seq.to_be_bytes())
        }
        .build()
    }

    fn seq_of(frame: &[u8]) -> u32 {
        let p = &frame[frame.len() - 4..];
        u32::from_be_bytes([p[0], p[1], p[2], p[3]])
    }

    #[test]
    fn batched_channels_keep_order_and_hand_buffers_back_every_poll() {
        let (mut dp, peer, mut apps) = udp_flows(1, 64);
        let app = &mut apps[0];
        let local = SocketAddrV4::new(*HOST.ip(), 7000);
        // Receive: 100 frames, 40 a round (more than a burst), drained between polls.
        let mut got = Vec::new();
        for round in 0..3u32 {
            for k in 0..40u32 {
                let seq = round * 40 + k;
                if seq < 100 {
                    peer.inject(udp((PEER, PEER_MAC), (local, HOST_MAC), seq));
                }
            }
            for t in 0..2u64 {
                dp.poll(u64::from(round) * 10 + t);
                while let Some(p) = app.rx.pop().unwrap() {
                    got.push(seq_of(app.rx.payload(&p)));
                    app.rx.repost(p).unwrap();
                }
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "every frame, in order");
        // Transmit: 40 frames queued; a poll sends a burst and, by its end, has handed every
        // buffer it copied back to the app.
        app.tx.reclaim().unwrap();
        let mut recs = Vec::new();
        for seq in 0..40u32 {
            let frame = udp((local, HOST_MAC), (PEER, PEER_MAC), seq);
            let ext = app.tx.alloc(frame.len()).unwrap().unwrap();
            app.tx.buf_mut(ext).unwrap().copy_from_slice(&frame);
            recs.push(IoRec::single(ext, 0));
        }
        assert_eq!(app.tx.push_batch(&recs).unwrap(), 40);
        let w = dp.poll(1_000);
        assert_eq!(w.sent, 32);
        assert_eq!(
            app.tx.reclaim().unwrap(),
            32,
            "the burst's buffers are back"
        );
        let w = dp.poll(2_000);
        assert_eq!(w.sent, 8);
        assert_eq!(app.tx.reclaim().unwrap(), 8);
        let sent: Vec<u32> = peer.take_sent().iter().map(|f| seq_of(f)).collect();
        assert_eq!(sent, (0..40).collect::<Vec<_>>());
        let st = &dp.flow_stats(None).unwrap()[0];
        assert_eq!((st.rx_packets, st.tx_packets), (100, 40));
    }

    #[test]
    fn a_flow_that_starts_sending_under_receive_load_is_found_within_a_sweep() {
        let flows = 200u16;
        let (mut dp, peer, mut apps) = udp_flows(flows, 16);
        let busy = SocketAddrV4::new(*HOST.ip(), 7000);
        let last = SocketAddrV4::new(*HOST.ip(), 7000 + flows - 1);
        let frame = udp((last, HOST_MAC), (PEER, PEER_MAC), 7);
        let app = &mut apps[usize::from(flows) - 1];
        let ext = app.tx.alloc(frame.len()).unwrap().unwrap();
        app.tx.buf_mut(ext).unwrap().copy_from_slice(&frame);
        app.tx.push(IoRec::single(ext, 0)).unwrap();
        // Every poll meets a full receive burst (one every 5 µs, ~6 Mpps): the idle flows are
        // looked at a share at a time, all of them within a sweep.
        const POLL_NS: u64 = 5_000;
        let bound = SWEEP_WHEN_BUSY_NS.div_ceil(POLL_NS) + 1;
        let mut polls = 0;
        while peer.take_sent().is_empty() {
            assert!(polls <= bound, "not sent within {bound} busy polls");
            for seq in 0..40 {
                peer.inject(udp((PEER, PEER_MAC), (busy, HOST_MAC), seq));
            }
            let w = dp.poll(polls * POLL_NS);
            assert!(w.received == 32 || w.sent == 1);
            polls += 1;
            while let Some(p) = apps[0].rx.pop().unwrap() {
                apps[0].rx.repost(p).unwrap();
            }
        }
        // Idle, one poll looks at every flow.
        let app = &mut apps[1];
        let frame = udp(
            (SocketAddrV4::new(*HOST.ip(), 7001), HOST_MAC),
            (PEER, PEER_MAC),
            8,
        );
        let ext = app.tx.alloc(frame.len()).unwrap().unwrap();
        app.tx.buf_mut(ext).unwrap().copy_from_slice(&frame);
        app.tx.push(IoRec::single(ext, 0)).unwrap();
        while dp.poll(1_000_000).received > 0 {}
        let w = dp.poll(2_000_000);
        assert!(w.sent == 1 || !peer.take_sent().is_empty());
    }
}
