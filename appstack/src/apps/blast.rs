//! `udp-blast`: sends MTU-sized datagrams as fast as the flow allows (its QoS and the driver's
//! back-pressure decide) and reports the achieved rate.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::STAMP_BYTES;
use crate::{Result, UdpFlow};

/// What to send.
#[derive(Debug, Clone, Default)]
pub struct BlastOptions {
    /// Payload bytes per datagram (default: the largest that fits one frame, MTU − 28).
    pub payload_len: Option<usize>,
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Destination, for an unconnected flow.
    pub dst: Option<SocketAddrV4>,
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlastReport {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// From the first send to the last.
    pub elapsed: Duration,
}

impl BlastReport {
    /// Datagrams per second.
    pub fn datagrams_per_sec(&self) -> f64 {
        self.datagrams as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabits per second.
    pub fn payload_mbit_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends until `count`, `duration` or `stop`. Each payload starts with a sequence number and the
/// send time (ns since start, see [`super::read_stamp`]); the rest is zero. Uses the zero-copy
/// path: the payload is written in the TX area. Blocks on back-pressure unless the flow is
/// non-blocking (then a full channel is retried after a yield).
pub fn blast(flow: &mut UdpFlow, opts: &BlastOptions, stop: &AtomicBool) -> Result<BlastReport> {
    let len = opts
        .payload_len
        .unwrap_or_else(|| flow.max_unfragmented_payload(opts.dst.map(|d| *d.ip())));
    let start = Instant::now();
    let mut r = BlastReport::default();
    while !stop.load(Ordering::Relaxed)
        && opts.count.is_none_or(|c| r.datagrams < c)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        let buf = match opts.dst {
            Some(d) => flow.tx_buf_to(len, d),
            None => flow.tx_buf(len),
        };
        let mut buf = match buf {
            Ok(b) => b,
            Err(crate::Error::WouldBlock) | Err(crate::Error::TimedOut) => {
                std::thread::yield_now();
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut stamp = [0u8; STAMP_BYTES];
        stamp[..8].copy_from_slice(&r.datagrams.to_be_bytes());
        stamp[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        let n = STAMP_BYTES.min(len);
        buf.write_at(0, &stamp[..n])?;
        buf.send()?;
        r.datagrams += 1;
        r.bytes += len as u64;
    }
    r.elapsed = start.elapsed();
    Ok(r)
}
