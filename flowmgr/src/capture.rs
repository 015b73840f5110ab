//! `nemflow capture`: writes what one flow sends and receives as a pcap file.
//!
//! The tool creates a receive-master Rbuf channel, hands it to the driver with
//! [`DriverRequest::CaptureStart`] on the driver's control socket (root only, like `tcpdump`)
//! and is that channel's consumer: it posts empty buffers, the driver fills one per frame of the
//! flow (a [`CaptureHeader`] then the frame) and the tool writes each to the file, nanosecond
//! timestamps, Ethernet link type. The driver never waits for the tool: with no empty buffer
//! posted it counts a capture drop, which the tool reports at the end. The capture ends after
//! `count` frames, on SIGINT/SIGTERM, or when the flow goes away; the driver also ends it when
//! the tool's control connection closes, however the tool died.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{
    CaptureCounters, CaptureDirection, CaptureHeader, DriverReply, DriverRequest,
};
use nemflow_proto::flow::FlowId;
use nemflow_rbuf::{rmm, ChannelSpec};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::TsResolution;

use crate::driver::{DriverLink, SocketDriver};

/// Bytes of each frame kept (the longest Ethernet frame nemflow handles is 9216 bytes).
pub const SNAP_BYTES: u32 = 9216;
/// Capture buffers the tool posts: what the driver may fill before the tool reads.
pub const CAPTURE_SLOTS: u32 = 1024;

/// What to capture and where.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The flow.
    pub flow: FlowId,
    /// Which of its frames.
    pub direction: CaptureDirection,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Bytes kept per frame (at most [`SNAP_BYTES`]).
    pub snap_bytes: u32,
}

/// How a capture went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureSummary {
    /// Frames written.
    pub written: u64,
    /// Of them, sent by the flow.
    pub tx: u64,
    /// Of them, received.
    pub rx: u64,
    /// The driver's counters at the end.
    pub driver: CaptureCounters,
    /// Whether it ended because the flow went away.
    pub flow_gone: bool,
}

fn call(link: &mut SocketDriver, req: &DriverRequest) -> Result<DriverReply, String> {
    match link.call(req, &[]).map_err(|e| e.to_string())? {
        DriverReply::Error { message, .. } => Err(format!("driver: {message}")),
        r => Ok(r),
    }
}

/// Runs a capture into `out` until `count` frames, `stop` turns true, or the flow goes away.
/// `started` is called once the driver captures (for "listening on …" lines and tests).
pub fn run(
    driver_socket: &Path,
    out: &Path,
    opts: &CaptureOptions,
    stop: &AtomicBool,
    started: impl FnOnce(u32),
) -> Result<CaptureSummary, String> {
    let snap = opts.snap_bytes.clamp(64, SNAP_BYTES);
    let max_packet_bytes = CaptureHeader::BYTES as u32 + snap;
    // Buffers are spaced by their size rounded up; enough data for every slot.
    let per_buffer = u64::from(max_packet_bytes.next_power_of_two().max(2048));
    let data_bytes = (per_buffer * u64::from(CAPTURE_SLOTS)).next_multiple_of(4096);
    let spec = ChannelSpec {
        data_bytes,
        slots: CAPTURE_SLOTS,
        max_packet_bytes,
        hugetlb: false,
    };
    let file = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let header = PcapHeader {
        ts_resolution: TsResolution::NanoSecond,
        snaplen: snap,
        ..PcapHeader::default()
    };
    let mut writer =
        PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| e.to_string())?;

    let mut link =
        SocketDriver::connect(driver_socket, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let chan = nemflow_rbuf::create(&spec).map_err(|e| e.to_string())?;
    // Buffers posted before the driver starts filling them: no frame is lost to a late start.
    let ro = chan.with_read_only_data().map_err(|e| e.to_string())?;
    let mut rx = rmm::Consumer::attach(&spec, ro).map_err(|e| e.to_string())?;
    rx.post_free().map_err(|e| e.to_string())?;
    let req = DriverRequest::CaptureStart {
        flow: opts.flow,
        direction: opts.direction,
        spec,
    };
    let id = match link.call(&req, &chan.as_fds()).map_err(|e| e.to_string())? {
        DriverReply::CaptureStarted { id } => id,
        DriverReply::Error { message, .. } => return Err(format!("driver: {message}")),
        other => return Err(format!("driver: unexpected reply {other:?}")),
    };
    drop(chan);
    started(id);

    let mut summary = CaptureSummary::default();
    let mut packets = Vec::with_capacity(CAPTURE_SLOTS as usize);
    let mut next_check = Instant::now() + Duration::from_millis(250);
    let result = loop {
        if stop.load(Ordering::Relaxed) || opts.count.is_some_and(|c| summary.written >= c) {
            break Ok(());
        }
        match rx.wait_ready(Duration::from_millis(100)) {
            Ok(()) | Err(nemflow_rbuf::Error::Timeout) => {}
            Err(e) => break Err(format!("capture channel: {e}")),
        }
        packets.clear();
        if let Err(e) = rx.pop_batch(&mut packets, CAPTURE_SLOTS as usize) {
            break Err(format!("capture channel: {e}"));
        }
        let mut failed = None;
        for pkt in packets.drain(..) {
            let bytes = rx.payload(&pkt);
            let want = opts.count.is_none_or(|c| summary.written < c);
            if let (true, Some(h)) = (want, CaptureHeader::decode(bytes)) {
                let frame = &bytes[CaptureHeader::BYTES..];
                let p = PcapPacket::new(Duration::from_nanos(h.time_ns), h.orig_len, frame);
                if let Err(e) = writer.write_packet(&p) {
                    failed = Some(format!("{}: {e}", out.display()));
                }
                summary.written += 1;
                if h.tx {
                    summary.tx += 1;
                } else {
                    summary.rx += 1;
                }
            }
            if let Err(e) = rx.repost(pkt) {
                failed = Some(format!("capture channel: {e}"));
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_millis(250);
            match call(&mut link, &DriverRequest::CaptureStats { id }) {
                Ok(DriverReply::Capture(c)) if !c.active => {
                    // Drain what the driver pushed before it stopped, then end.
                    summary.flow_gone = true;
                    continue_drain(&mut rx, &mut writer, &mut summary, opts.count);
                    break Ok(());
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    };
    if let Ok(DriverReply::Capture(c)) = call(&mut link, &DriverRequest::CaptureStop { id }) {
        summary.driver = c;
    }
    if result.is_ok() {
        continue_drain(&mut rx, &mut writer, &mut summary, opts.count);
    }
    let flushed = writer
        .into_writer()
        .flush()
        .map_err(|e| format!("{}: {e}", out.display()));
    result.and(flushed).map(|()| summary)
}

/// Writes whatever is still in the channel (up to `count` frames in all).
fn continue_drain(
    rx: &mut rmm::Consumer,
    writer: &mut PcapWriter<BufWriter<File>>,
    summary: &mut CaptureSummary,
    count: Option<u64>,
) {
    let mut packets = Vec::new();
    while rx
        .pop_batch(&mut packets, CAPTURE_SLOTS as usize)
        .unwrap_or(0)
        > 0
    {
        for pkt in packets.drain(..) {
            let bytes = rx.payload(&pkt);
            if count.is_none_or(|c| summary.written < c) {
                if let Some(h) = CaptureHeader::decode(bytes) {
                    let frame = &bytes[CaptureHeader::BYTES..];
                    let p = PcapPacket::new(Duration::from_nanos(h.time_ns), h.orig_len, frame);
                    if writer.write_packet(&p).is_ok() {
                        summary.written += 1;
                        if h.tx {
                            summary.tx += 1;
                        } else {
                            summary.rx += 1;
                        }
                    }
                }
            }
            let _ = rx.release(pkt);
        }
    }
}
