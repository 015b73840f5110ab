//! `udp-ping`: a UDP client that checks a remote echo server. It sends datagrams one at a time,
//! each with a payload derived from its sequence number, waits for the echo and checks that it
//! came back byte for byte.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result, UdpFlow};

/// What to send.
#[derive(Debug, Clone)]
pub struct PingOptions {
    /// Datagrams to send.
    pub count: u64,
    /// Payload sizes in bytes, used in turn (datagram `i` has `sizes[i % sizes.len()]`).
    pub sizes: Vec<usize>,
    /// How long to wait for each echo.
    pub timeout: Duration,
    /// Destination, for an unconnected flow (a connected flow sends to its remote).
    pub dst: Option<SocketAddrV4>,
}

impl Default for PingOptions {
    fn default() -> Self {
        PingOptions {
            count: 10,
            sizes: vec![64],
            timeout: Duration::from_secs(1),
            dst: None,
        }
    }
}

/// What came back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PingReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes that matched what was sent, byte for byte.
    pub intact: u64,
    /// Echoes carrying the expected sequence number (or, under 8 bytes, of the expected length)
    /// whose bytes differ from what was sent.
    pub corrupt: u64,
    /// Datagrams whose echo did not come within the timeout.
    pub lost: u64,
    /// Late echoes of earlier datagrams (skipped while waiting for the current one).
    pub stale: u64,
    /// Datagrams answered by an ICMP error (port unreachable, ...) instead of an echo.
    pub icmp_errors: u64,
    /// Payload bytes of the intact echoes.
    pub bytes: u64,
    /// Shortest round trip of an intact echo.
    pub rtt_min: Duration,
    /// Longest round trip of an intact echo.
    pub rtt_max: Duration,
    /// Sum of the round trips of the intact echoes.
    pub rtt_total: Duration,
}

impl PingReport {
    /// Mean round trip of the intact echoes.
    pub fn rtt_mean(&self) -> Duration {
        match u32::try_from(self.intact) {
            Ok(n) if n > 0 => self.rtt_total / n,
            _ => Duration::ZERO,
        }
    }

    /// Whether every datagram came back intact.
    pub fn all_intact(&self) -> bool {
        self.sent > 0 && self.intact == self.sent
    }
}

/// Fills `buf` with the test payload of datagram `seq`: the sequence number big-endian in the
/// first 8 bytes (as far as they go), then bytes from a generator seeded with `seq`, so that a
/// reordered fragment, a shifted byte or another datagram's payload shows.
pub fn fill_payload(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let seq_bytes = seq.to_be_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq_bytes[..n]);
}

/// Sends `opts.count` datagrams one at a time and checks each echo. Stops early on `stop`.
/// Channel failures end it with an error; ICMP errors and timeouts are counted.
pub fn ping(flow: &mut UdpFlow, opts: &PingOptions, stop: &AtomicBool) -> Result<PingReport> {
    let mut r = PingReport {
        rtt_min: Duration::MAX,
        ..PingReport::default()
    };
    let largest = opts.sizes.iter().copied().max().unwrap_or(0);
    let mut expected = vec![0u8; largest];
    for seq in 0..opts.count {
        if stop.load(Ordering::Relaxed) || opts.sizes.is_empty() {
            break;
        }
        let len = opts.sizes[(seq % opts.sizes.len() as u64) as usize];
        let want = &mut expected[..len];
        fill_payload(seq, want);
        let t0 = Instant::now();
        let sent = match opts.dst {
            Some(d) => flow.send_to(want, d),
            None => flow.send(want),
        };
        r.sent += 1;
        match sent {
            Ok(_) => {}
            Err(Error::ConnectionRefused { .. } | Error::Unreachable { .. }) => {
                r.icmp_errors += 1;
                continue;
            }
            Err(e) => return Err(e),
        }
        let deadline = t0 + opts.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                r.lost += 1;
                break;
            }
            flow.set_read_timeout(Some(left));
            let d = match flow.recv_datagram() {
                Ok(d) => d,
                Err(Error::TimedOut | Error::WouldBlock) => continue,
                Err(Error::ConnectionRefused { .. } | Error::Unreachable { .. }) => {
                    r.icmp_errors += 1;
                    break;
                }
                Err(e) => return Err(e),
            };
            if opts.dst.is_some_and(|dst| d.src() != dst) {
                // Not from the server being checked.
                r.stale += 1;
                continue;
            }
            let got = d.payload();
            if got == &*want {
                let rtt = t0.elapsed();
                r.intact += 1;
                r.bytes += len as u64;
                r.rtt_min = r.rtt_min.min(rtt);
                r.rtt_max = r.rtt_max.max(rtt);
                r.rtt_total += rtt;
                break;
            }
            let got_seq = got
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match got_seq {
                Some(s) if s < seq => r.stale += 1,
                Some(s) if s == seq => {
                    r.corrupt += 1;
                    break;
                }
                // Too short to carry a sequence number: an echo of the right length is this
                // datagram's, damaged; any other length is someone else's.
                None if got.len() == len => {
                    r.corrupt += 1;
                    break;
                }
                _ => r.stale += 1,
            }
        }
    }
    if r.intact == 0 {
        r.rtt_min = Duration::ZERO;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_by_sequence_and_start_with_it() {
        let mut a = vec![0u8; 3000];
        let mut b = vec![0u8; 3000];
        fill_payload(1, &mut a);
        fill_payload(2, &mut b);
        assert_ne!(a, b);
        assert_eq!(a[..8], 1u64.to_be_bytes());
        // Each 1480-byte block is distinct, so a fragment in the wrong place shows.
        assert_ne!(a[8..1480], a[1480 + 8..2960]);
        let mut short = [0u8; 3];
        fill_payload(0x0102_0304_0506_0708, &mut short);
        assert_eq!(short, [1, 2, 3]);
    }
}
