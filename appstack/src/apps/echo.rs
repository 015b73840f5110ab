//! `udp-echo`: sends every datagram back to where it came from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result, UdpFlow};

/// How long to echo.
#[derive(Debug, Clone, Default)]
pub struct EchoOptions {
    /// Stop after this many datagrams.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// What was echoed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoReport {
    /// Datagrams echoed.
    pub datagrams: u64,
    /// Payload bytes echoed.
    pub bytes: u64,
    /// Datagrams that could not be sent back (no route, no MAC, ICMP error, ...).
    pub failed: u64,
}

/// Echoes until `count`, `duration` or `stop`. An unconnected flow learns each on-link sender's
/// MAC from its frame (so it can answer without asking the resolver) and replies with `send_to`.
pub fn echo(flow: &mut UdpFlow, opts: &EchoOptions, stop: &AtomicBool) -> Result<EchoReport> {
    flow.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut r = EchoReport::default();
    let mut buf = vec![0u8; crate::MAX_UDP_PAYLOAD];
    let connected = flow.peer_addr().is_some();
    while !stop.load(Ordering::Relaxed)
        && opts.count.is_none_or(|c| r.datagrams + r.failed < c)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        let (n, src, mac) = match flow.recv_datagram() {
            Ok(d) => {
                let p = d.payload();
                buf[..p.len()].copy_from_slice(p);
                (p.len(), d.src(), d.src_mac())
            }
            Err(Error::TimedOut | Error::WouldBlock) => continue,
            Err(Error::ConnectionRefused { .. } | Error::Unreachable { .. }) => continue,
            Err(e) => return Err(e),
        };
        let sent = if connected {
            flow.send(&buf[..n])
        } else {
            if flow.neighbours().get(*src.ip()).is_none() {
                flow.add_neighbour(*src.ip(), mac);
            }
            flow.send_to(&buf[..n], src)
        };
        match sent {
            Ok(_) => {
                r.datagrams += 1;
                r.bytes += n as u64;
            }
            Err(Error::Channel(e)) => return Err(Error::Channel(e)),
            Err(_) => r.failed += 1,
        }
    }
    Ok(r)
}
