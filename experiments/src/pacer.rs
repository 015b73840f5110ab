//! An exactly paced UDP source at the remote host (experiment 7's sender): raw frames on an
//! AF_PACKET socket inside the remote host's namespace, each sent at its due time on an
//! absolute schedule (frame k of a stream at `t0 + k · interval`, slept for with an absolute
//! `clock_nanosleep`), so no error accumulates and no CPU is burnt spinning: a late wake-up
//! delays one frame by microseconds, never the schedule.
//! Each datagram carries its stream's sequence number in its first 8 payload bytes.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::thread::ClockId;

use nemflow_testkit::frames::UdpFrame;
use nemflow_testkit::RawSocket;

use crate::series::WIRE_OVERHEAD_BYTES;

/// One paced stream.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// Source and destination MAC.
    pub macs: ([u8; 6], [u8; 6]),
    /// Wire rate to send at, bit/s (frame + 24 bytes of overhead).
    pub rate_bps: u64,
    /// UDP payload bytes per datagram (≥ 8).
    pub payload_bytes: usize,
}

impl Stream {
    fn frame(&self, seq: u64) -> Vec<u8> {
        let mut payload = vec![0u8; self.payload_bytes.max(8)];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        UdpFrame {
            src_mac: self.macs.0,
            dst_mac: self.macs.1,
            ..UdpFrame::new(self.src, self.dst, &payload)
        }
        .build()
    }

    /// Nanoseconds between frames.
    pub fn interval_ns(&self) -> f64 {
        let wire = (self.payload_bytes.max(8) as u64 + 42 + WIRE_OVERHEAD_BYTES) * 8;
        wire as f64 * 1e9 / self.rate_bps as f64
    }
}

/// Sends `streams` from `netns`/`iface` for `duration` (or until `stop`); returns the frames
/// sent per stream.
pub fn run(
    netns: &str,
    iface: &str,
    streams: &[Stream],
    duration: Duration,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<u64>, String> {
    let sock = RawSocket::bind_in(netns, iface)?;
    // The source must be punctual whatever else runs: this thread at real-time priority (it
    // sleeps between frames, so it takes little). Without it the schedule still holds on
    // average, but a descheduled source sends late frames in a burst.
    let tid = rustix::thread::gettid().as_raw_nonzero().get().to_string();
    let _ = std::process::Command::new("chrt")
        .args(["-f", "-p", "20", &tid])
        .status();
    let intervals: Vec<f64> = streams.iter().map(Stream::interval_ns).collect();
    let mut sent = vec![0u64; streams.len()];
    let start = Instant::now();
    let t0 = rustix::time::clock_gettime(ClockId::Monotonic);
    let t0_ns = t0.tv_sec as u128 * 1_000_000_000 + t0.tv_nsec as u128;
    loop {
        // The stream whose next frame is due first.
        let (i, due_ns) = intervals
            .iter()
            .enumerate()
            .map(|(i, iv)| (i, sent[i] as f64 * iv))
            .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
        let due = Duration::from_nanos(due_ns as u64);
        if due >= duration || stop.load(Ordering::Relaxed) {
            break;
        }
        if start.elapsed() < due {
            let at = t0_ns + due.as_nanos();
            let ts = rustix::time::Timespec {
                tv_sec: (at / 1_000_000_000) as i64,
                tv_nsec: (at % 1_000_000_000) as i64,
            };
            // EINTR: the frame goes a little early; the schedule is unaffected.
            let _ = rustix::thread::clock_nanosleep_absolute(ClockId::Monotonic, &ts);
        }
        sock.send(&streams[i].frame(sent[i]))?;
        sent[i] += 1;
    }
    Ok(sent)
}
