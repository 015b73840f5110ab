//! The driver's data path, written against [`Port`]: receive, classify, deliver into each
//! flow's receive channel or drop for that flow alone; let the scheduler pick a flow, take its
//! next iorec, copy and police the frame, and send it paced to the link rate.
//!
//! Everything a flow does is counted on the flow; everything dropped before reaching a flow is
//! counted by reason; every drop goes into the [`DropLog`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use foldhash::fast::RandomState;
use nemflow_proto::ctl::{DropEntry, DropReason, FlowStats, PortInfo};
use nemflow_proto::flow::{Filter, FlowId, Qos, Template};
use nemflow_rbuf::{rmm, tmm, ChannelFds, ChannelSpec, IoRec, CHANNEL_FDS};
use nemflow_sched::{Pick, Scheduler};

use crate::classify::{self, Malformed};
use crate::droplog::DropLog;
use crate::flowtable::{Dest, FilterError, FlowTable, Slot};
use crate::port::{Frame, Port};
use crate::template::{self, Violation};

/// Shortest frame on the wire without FCS: shorter ones are padded, and cost wire time as such.
const MIN_FRAME_BYTES: usize = 60;

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
    /// An empty receive buffer taken but too small for the last frame: used for the next one.
    spare: Option<IoRec>,
    backlogged: bool,
    broken: bool,
    counters: Counters,
    violations: HashMap<Violation, u64, RandomState>,
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
            port,
            config,
            flows: Vec::new(),
            by_id: HashMap::default(),
            sched,
            malformed: HashMap::default(),
            unmatched_dropped: 0,
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
        mut fds: Vec<OwnedFd>,
        now_ns: u64,
    ) -> Result<(), FlowError> {
        if self.by_id.contains_key(&id) {
            return Err(FlowError::Exists(id));
        }
        if fds.len() != 2 * CHANNEL_FDS {
            return Err(FlowError::FdCount {
                expected: 2 * CHANNEL_FDS,
                got: fds.len(),
            });
        }
        let rx_fds = fds.split_off(CHANNEL_FDS);
        let tx = tmm::Consumer::attach(tx_spec, ChannelFds::from_vec(fds)?)?;
        let rx = rmm::Producer::attach(rx_spec, ChannelFds::from_vec(rx_fds)?)?;
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
            template,
            qos,
            tx,
            rx,
            spare: None,
            backlogged: false,
            broken: false,
            counters: Counters::default(),
            violations: HashMap::default(),
        });
        self.by_id.insert(id, slot_id);
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
        let _ = self.sched.remove_flow(id.0);
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
        self.discover_backlog(now_ns);
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
            let bytes = frame.bytes();
            let dest = match classify::parse(bytes, self.config.max_frame_bytes) {
                Ok(parsed) => self.table.lookup(&parsed, now_ns),
                Err(m) => Dest::Drop(m),
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
            }
        }
        frames.clear();
        self.rx_frames = frames;
        n
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
        let buf = match flow.spare.take() {
            Some(rec) => Ok(Some(rec)),
            None => flow.rx.take_empty(),
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
            flow.spare = Some(rec);
            flow.counters.rx_dropped_no_buffer += 1;
            self.drop_log
                .record(Some(flow.id), DropReason::RxNoBuffer, bytes.len());
            return false;
        }
        let result = flow
            .rx
            .copy_in(&rec, bytes)
            .and_then(|()| flow.rx.push_full(rec, bytes.len()));
        match result {
            Ok(()) => {
                flow.counters.rx_packets += 1;
                flow.counters.rx_bytes += bytes.len() as u64;
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

    /// Tells the scheduler about flows whose transmit FIFO became non-empty.
    fn discover_backlog(&mut self, now_ns: u64) {
        for flow in self.flows.iter_mut().flatten() {
            if flow.backlogged || flow.broken {
                continue;
            }
            match flow.tx.ready() {
                Ok(true) => {
                    if self.sched.set_backlogged(flow.id.0, true, now_ns).is_ok() {
                        flow.backlogged = true;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    flow.broken = true;
                    tracing::warn!(flow = %flow.id, "transmit channel broken: {e}");
                }
            }
        }
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
        let sent = if self.staged.is_empty() {
            0
        } else {
            self.port.send(&mut self.staged)
        };
        (sent, wait)
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
        let rec = match flow.tx.pop() {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                flow.backlogged = false;
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
        if let Err(e) = flow.tx.release(rec) {
            tracing::debug!(flow = %id, "release failed: {e}");
        }
        match staged {
            Ok(Some(frame)) => {
                flow.counters.tx_packets += 1;
                flow.counters.tx_bytes += len as u64;
                let wire_len = len.max(MIN_FRAME_BYTES) as u32;
                let _ = self.sched.charge(id.0, wire_len, now_ns);
                self.staged.push(frame);
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
    c.invalid_count
        + c.invalid_overflow
        + c.invalid_out_of_bounds
        + c.invalid_too_long
        + c.invalid_not_owned
        + c.index_backward
        + c.index_too_far
}
