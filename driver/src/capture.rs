//! Flow capture (`nemflow capture`): copies the frames one flow sends and receives into a
//! capture channel of the capturing tool, which writes them out as pcap.
//!
//! The capture channel is an ordinary receive-master Rbuf channel (`rmm`), created and sealed by
//! the tool and handed to the driver with [`DriverRequest::CaptureStart`]: the tool posts empty
//! buffers, the driver fills one per captured frame — a [`CaptureHeader`] (wall-clock time,
//! original length, direction) followed by the frame's first bytes — and pushes it full. A frame
//! that finds no empty buffer is counted as a capture drop and the data path goes on: the tool
//! can fall behind, never slow the driver down. The channel's FIFO size bounds what is in flight.
//!
//! Cost when no capture runs: one test of a `bool` the data path already has in cache (the
//! flow's `captured` flag) per frame. With a capture on: a clock read and one copy per frame of
//! the captured flow; other flows are untouched.
//!
//! [`DriverRequest::CaptureStart`]: nemflow_proto::ctl::DriverRequest::CaptureStart

use std::os::fd::OwnedFd;
use std::time::{SystemTime, UNIX_EPOCH};

use nemflow_proto::ctl::{CaptureCounters, CaptureDirection, CaptureHeader};
use nemflow_proto::flow::FlowId;
use nemflow_rbuf::{rmm, ChannelFds, ChannelSpec};

/// Most captures running at once (each maps a channel).
pub const MAX_CAPTURES: usize = 8;

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// [`MAX_CAPTURES`] are running.
    #[error("{MAX_CAPTURES} captures are running already: stop one first")]
    TooMany,
    /// The channel's buffers cannot hold a header and any frame bytes.
    #[error("capture buffers of {0} bytes are too small (at least {min} bytes)", min = CaptureHeader::BYTES + 64)]
    TooSmall(u32),
    /// The channel's fds or spec were refused.
    #[error("capture channel: {0}")]
    Channel(#[from] nemflow_rbuf::Error),
}

/// One running capture.
#[derive(Debug)]
struct Capture {
    id: u32,
    flow: FlowId,
    direction: CaptureDirection,
    chan: rmm::Producer,
    /// Frame bytes kept per buffer (the rest is cut, as `tcpdump -s`).
    snap_bytes: usize,
    captured: u64,
    dropped: u64,
    active: bool,
}

impl Capture {
    fn counters(&self) -> CaptureCounters {
        CaptureCounters {
            id: self.id,
            flow: self.flow,
            captured: self.captured,
            dropped: self.dropped,
            active: self.active,
        }
    }

    /// Copies one frame in (or counts a drop).
    fn record(&mut self, scratch: &mut Vec<u8>, header: &CaptureHeader, frame: &[u8]) {
        let rec = match self.chan.take_empty() {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                self.dropped += 1;
                return;
            }
            Err(e) => {
                self.dropped += 1;
                if self.chan.broken().is_some() {
                    self.active = false;
                    tracing::warn!(capture = self.id, flow = %self.flow, "capture channel broken: {e}");
                }
                return;
            }
        };
        let room = usize::try_from(rec.total_len()).unwrap_or(0);
        let snap = frame
            .len()
            .min(self.snap_bytes)
            .min(room.saturating_sub(CaptureHeader::BYTES));
        scratch.clear();
        if room >= CaptureHeader::BYTES {
            scratch.extend_from_slice(&header.encode());
            scratch.extend_from_slice(&frame[..snap]);
        }
        let result = self
            .chan
            .copy_in(&rec, scratch)
            .and_then(|()| self.chan.push_full(rec, scratch.len()));
        match result {
            Ok(()) if !scratch.is_empty() => self.captured += 1,
            Ok(()) => self.dropped += 1,
            Err(e) => {
                self.dropped += 1;
                self.active = false;
                tracing::warn!(capture = self.id, flow = %self.flow, "capture channel failed: {e}");
            }
        }
    }
}

/// The running captures of one data path.
#[derive(Debug, Default)]
pub struct Captures {
    list: Vec<Capture>,
    next_id: u32,
    scratch: Vec<u8>,
}

impl Captures {
    /// No captures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts capturing `flow` into the channel of `fds` (its consumer is the tool).
    pub fn start(
        &mut self,
        flow: FlowId,
        direction: CaptureDirection,
        spec: &ChannelSpec,
        fds: Vec<OwnedFd>,
    ) -> Result<u32, CaptureError> {
        if self.list.len() >= MAX_CAPTURES {
            return Err(CaptureError::TooMany);
        }
        if (spec.max_packet_bytes as usize) < CaptureHeader::BYTES + 64 {
            return Err(CaptureError::TooSmall(spec.max_packet_bytes));
        }
        let chan = rmm::Producer::attach(spec, ChannelFds::from_vec(fds)?)?;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        let snap_bytes = spec.max_packet_bytes as usize - CaptureHeader::BYTES;
        if self.scratch.capacity() < spec.max_packet_bytes as usize {
            self.scratch
                .reserve(spec.max_packet_bytes as usize - self.scratch.len());
        }
        self.list.push(Capture {
            id,
            flow,
            direction,
            chan,
            snap_bytes,
            captured: 0,
            dropped: 0,
            active: true,
        });
        tracing::info!(capture = id, flow = %flow, ?direction, "capture started");
        Ok(id)
    }

    /// Ends a capture (unmapping its channel); its final counters.
    pub fn stop(&mut self, id: u32) -> Option<CaptureCounters> {
        let at = self.list.iter().position(|c| c.id == id)?;
        let c = self.list.swap_remove(at);
        tracing::info!(
            capture = id,
            flow = %c.flow,
            captured = c.captured,
            dropped = c.dropped,
            "capture stopped"
        );
        Some(CaptureCounters {
            active: false,
            ..c.counters()
        })
    }

    /// A capture's counters.
    pub fn stats(&self, id: u32) -> Option<CaptureCounters> {
        self.list.iter().find(|c| c.id == id).map(Capture::counters)
    }

    /// The flow of a capture.
    pub fn flow_of(&self, id: u32) -> Option<FlowId> {
        self.list.iter().find(|c| c.id == id).map(|c| c.flow)
    }

    /// Whether an active capture wants `flow`'s frames.
    pub fn wants(&self, flow: FlowId) -> bool {
        self.list.iter().any(|c| c.active && c.flow == flow)
    }

    /// Captures running (active or not yet stopped by their tool).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `flow` went away: its captures end (the tool sees `active: false`); their channels are
    /// unmapped when the tool stops them or disconnects.
    pub fn flow_removed(&mut self, flow: FlowId) {
        for c in self.list.iter_mut().filter(|c| c.flow == flow) {
            c.active = false;
        }
    }

    /// Copies a frame of `flow` (sent if `tx`) into every active capture that wants it. Only
    /// called for flows whose `captured` flag is set, so it stays off the common path.
    #[cold]
    #[inline(never)]
    pub fn record(&mut self, flow: FlowId, tx: bool, frame: &[u8]) {
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let header = CaptureHeader {
            time_ns,
            orig_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            tx,
        };
        let scratch = &mut self.scratch;
        for c in self
            .list
            .iter_mut()
            .filter(|c| c.active && c.flow == flow && c.direction.wants(tx))
        {
            c.record(scratch, &header, frame);
        }
    }
}
