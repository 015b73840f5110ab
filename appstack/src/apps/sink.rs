//! `udp-sink`: receives, logs each datagram's size and arrival time, and optionally spends CPU
//! per datagram — more of it on a schedule, like the paper's overloaded receiver (§5, figure 7:
//! "every 20000 packets, spend more time per packet").

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::read_stamp;
use crate::{Error, Result, UdpFlow};

/// A slowdown schedule, as the paper's overloaded receiver: every `every` datagrams the
/// processing time per datagram grows by `step`, for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slowdown {
    /// Datagrams between slowdowns.
    pub every: u64,
    /// What each slowdown adds to the processing time of every later datagram.
    pub step: Duration,
}

/// How to receive.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Processing time per datagram (busy, as real work would be).
    pub cost: Duration,
    /// Extra slowdown schedule.
    pub slowdown: Option<Slowdown>,
}

impl SinkOptions {
    /// Processing time of datagram number `n` (0-based).
    pub fn cost_of(&self, n: u64) -> Duration {
        match self.slowdown {
            Some(s) if s.every > 0 => {
                let steps = u32::try_from(n / s.every).unwrap_or(u32::MAX);
                self.cost.saturating_add(s.step.saturating_mul(steps))
            }
            _ => self.cost,
        }
    }
}

/// What was received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Datagrams received.
    pub datagrams: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// From the start to the last datagram.
    pub elapsed: Duration,
    /// Sequence numbers skipped (datagrams carrying `udp-blast` stamps).
    pub lost: u64,
    /// Datagrams whose sequence number was below one seen before.
    pub reordered: u64,
}

/// Receives until `count`, `duration` or `stop`, writing one line per datagram to `log`:
/// `arrival_ns size seq` (arrival since start; `seq` is `-` for datagrams without a stamp).
/// Waits in steps of at most 100 ms so `stop` and `duration` are noticed (a non-blocking flow
/// is looked at every millisecond instead).
pub fn sink(
    flow: &mut UdpFlow,
    opts: &SinkOptions,
    stop: &AtomicBool,
    log: &mut dyn Write,
) -> Result<SinkReport> {
    flow.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut r = SinkReport::default();
    let mut next_seq: Option<u64> = None;
    while !stop.load(Ordering::Relaxed)
        && opts.count.is_none_or(|c| r.datagrams < c)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        let d = match flow.recv_datagram() {
            Ok(d) => d,
            Err(Error::TimedOut) => continue,
            // A non-blocking flow: do "other work" for a millisecond, then look again.
            Err(Error::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(
                Error::ConnectionRefused { .. }
                | Error::Unreachable { .. }
                | Error::MessageTooLong { .. },
            ) => continue,
            Err(e) => return Err(e),
        };
        let at = start.elapsed();
        let p = d.payload();
        let seq = read_stamp(p).map(|(s, _)| s);
        let size = p.len();
        // The work happens while the buffer is held, as a real receiver's would.
        let cost = opts.cost_of(r.datagrams);
        if !cost.is_zero() {
            let t = Instant::now();
            while t.elapsed() < cost {
                std::hint::spin_loop();
            }
        }
        drop(d);
        r.datagrams += 1;
        r.bytes += size as u64;
        r.elapsed = at;
        if let Some(s) = seq {
            match next_seq {
                Some(n) if s < n => r.reordered += 1,
                Some(n) => {
                    r.lost += s - n;
                    next_seq = Some(s + 1);
                }
                None => next_seq = Some(s + 1),
            }
        }
        let line = match seq {
            Some(s) => writeln!(log, "{} {size} {s}", at.as_nanos()),
            None => writeln!(log, "{} {size} -", at.as_nanos()),
        };
        // A log that cannot be written is not the flow's failure: keep receiving.
        let _ = line;
    }
    Ok(r)
}
