//! The ARP cache (no I/O: time is passed in) and ARP frames.
//!
//! An entry is *Reachable* for `timeout` after it was last confirmed, then *Stale*: still used,
//! and refreshed by a new request on its next use. An unresolved address is *Incomplete* while
//! requests go out every `retry` up to `retries` times; then it *fails* and its waiters learn
//! that the host is unreachable. The cache is bounded: an address that would not fit is refused.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nemflow_proto::app::{ArpEntry, ArpState};
use nemflow_proto::flow::ethertype;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

/// Most entries the cache holds.
pub const MAX_ENTRIES: usize = 4096;

/// Bytes of an ARP frame (Ethernet header + ARP for IPv4), before padding.
pub const ARP_FRAME_BYTES: usize = 14 + 28;

#[derive(Debug, Clone, Copy)]
enum State {
    Resolved {
        mac: [u8; 6],
        confirmed: Instant,
        refreshing: bool,
    },
    Incomplete {
        sent: u32,
        next_at: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    changed: Instant,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The MAC is known. `refresh`: the entry is stale, send a request (the MAC is still used).
    Hit {
        /// The MAC.
        mac: [u8; 6],
        /// Whether to send a refreshing request now.
        refresh: bool,
    },
    /// Resolution started now: send a request and wait.
    Started,
    /// Resolution is under way: wait.
    Pending,
    /// The cache is full.
    Full,
}

/// News from the cache for whoever waits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpNews {
    /// `ip` is at `mac`; `previous` is the MAC it had before, if it changed.
    Resolved {
        /// The address.
        ip: Ipv4Addr,
        /// Its MAC.
        mac: [u8; 6],
        /// Whether it had another MAC before (`None`: new, or unchanged).
        previous: Option<[u8; 6]>,
        /// Whether the entry was incomplete (waiters can go on).
        completed: bool,
    },
    /// Nobody answered for `ip`.
    Failed {
        /// The address.
        ip: Ipv4Addr,
    },
}

/// The cache.
#[derive(Debug)]
pub struct ArpCache {
    entries: HashMap<Ipv4Addr, Entry>,
    timeout: Duration,
    retry: Duration,
    retries: u32,
}

impl ArpCache {
    /// A cache whose entries stay fresh for `timeout`, retrying every `retry`, `retries` times.
    pub fn new(timeout: Duration, retry: Duration, retries: u32) -> Self {
        Self {
            entries: HashMap::new(),
            timeout,
            retry,
            retries: retries.max(1),
        }
    }

    /// Looks `ip` up, starting resolution when unknown. On `Started` (and `Hit` with
    /// `refresh`), the caller sends a request.
    pub fn lookup(&mut self, ip: Ipv4Addr, now: Instant) -> Lookup {
        let timeout = self.timeout;
        let retry = self.retry;
        match self.entries.get_mut(&ip) {
            Some(Entry {
                state:
                    State::Resolved {
                        mac,
                        confirmed,
                        refreshing,
                    },
                ..
            }) => {
                let stale = now.saturating_duration_since(*confirmed) >= timeout;
                let refresh = stale && !*refreshing;
                if refresh {
                    *refreshing = true;
                }
                Lookup::Hit { mac: *mac, refresh }
            }
            Some(Entry {
                state: State::Incomplete { .. },
                ..
            }) => Lookup::Pending,
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    return Lookup::Full;
                }
                self.entries.insert(
                    ip,
                    Entry {
                        state: State::Incomplete {
                            sent: 1,
                            next_at: now + retry,
                        },
                        changed: now,
                    },
                );
                Lookup::Started
            }
        }
    }

    /// The MAC of `ip`, if resolved (fresh or stale), without side effects.
    pub fn peek(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        match self.entries.get(&ip)?.state {
            State::Resolved { mac, .. } => Some(mac),
            State::Incomplete { .. } => None,
        }
    }

    /// Learns that `ip` is at `mac`. Existing entries are always updated (RFC 826 merge); a new
    /// one is created only with `create` (the frame was addressed to us).
    pub fn learn(
        &mut self,
        ip: Ipv4Addr,
        mac: [u8; 6],
        create: bool,
        now: Instant,
    ) -> Option<ArpNews> {
        let resolved = State::Resolved {
            mac,
            confirmed: now,
            refreshing: false,
        };
        let room = self.entries.len() < MAX_ENTRIES;
        match self.entries.get_mut(&ip) {
            Some(e) => {
                let (previous, completed) = match e.state {
                    State::Resolved { mac: old, .. } => ((old != mac).then_some(old), false),
                    State::Incomplete { .. } => (None, true),
                };
                if previous.is_some() || completed {
                    e.changed = now;
                }
                e.state = resolved;
                Some(ArpNews::Resolved {
                    ip,
                    mac,
                    previous,
                    completed,
                })
            }
            None if create && room => {
                self.entries.insert(
                    ip,
                    Entry {
                        state: resolved,
                        changed: now,
                    },
                );
                Some(ArpNews::Resolved {
                    ip,
                    mac,
                    previous: None,
                    completed: false,
                })
            }
            None => None,
        }
    }

    /// Advances time: returns the addresses to send a request for now, and the news of
    /// addresses that failed (their entries are removed).
    pub fn poll(&mut self, now: Instant) -> (Vec<Ipv4Addr>, Vec<ArpNews>) {
        let mut send = Vec::new();
        let mut failed = Vec::new();
        for (&ip, e) in &mut self.entries {
            if let State::Incomplete { sent, next_at } = &mut e.state {
                if *next_at <= now {
                    if *sent >= self.retries {
                        failed.push(ip);
                    } else {
                        *sent += 1;
                        *next_at = now + self.retry;
                        send.push(ip);
                    }
                }
            }
        }
        for ip in &failed {
            self.entries.remove(ip);
        }
        (
            send,
            failed
                .into_iter()
                .map(|ip| ArpNews::Failed { ip })
                .collect(),
        )
    }

    /// When [`poll`](Self::poll) has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Incomplete { next_at, .. } => Some(next_at),
                State::Resolved { .. } => None,
            })
            .min()
    }

    /// The cache, sorted by address.
    pub fn entries(&self, now: Instant) -> Vec<ArpEntry> {
        let mut v: Vec<ArpEntry> = self
            .entries
            .iter()
            .map(|(&ip, e)| {
                let (mac, state) = match e.state {
                    State::Resolved { mac, confirmed, .. } => (
                        Some(mac),
                        if now.saturating_duration_since(confirmed) >= self.timeout {
                            ArpState::Stale
                        } else {
                            ArpState::Reachable
                        },
                    ),
                    State::Incomplete { .. } => (None, ArpState::Incomplete),
                };
                ArpEntry {
                    ip,
                    mac,
                    state,
                    age_ms: now.saturating_duration_since(e.changed).as_millis() as u64,
                }
            })
            .collect();
        v.sort_by_key(|e| e.ip);
        v
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An ARP packet for IPv4 over Ethernet, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpIn {
    /// Request or reply.
    pub request: bool,
    /// Ethernet source of the frame.
    pub eth_src: [u8; 6],
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Why an ARP frame is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpReject {
    /// Too short, or not Ethernet/IPv4 ARP.
    Malformed,
    /// An operation other than request or reply.
    Operation,
    /// The sender MAC is a group (broadcast/multicast) address.
    GroupSender,
}

/// Parses the ARP payload of an Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<ArpIn, ArpReject> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| ArpReject::Malformed)?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return Err(ArpReject::Malformed);
    }
    let pkt = ArpPacket::new_checked(eth.payload()).map_err(|_| ArpReject::Malformed)?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_hardware_addr,
        target_protocol_addr,
    } = ArpRepr::parse(&pkt).map_err(|_| ArpReject::Malformed)?
    else {
        return Err(ArpReject::Malformed);
    };
    let request = match operation {
        ArpOperation::Request => true,
        ArpOperation::Reply => false,
        _ => return Err(ArpReject::Operation),
    };
    let sha = source_hardware_addr.0;
    if sha[0] & 1 != 0 {
        return Err(ArpReject::GroupSender);
    }
    Ok(ArpIn {
        request,
        eth_src: eth.src_addr().0,
        sha,
        spa: source_protocol_addr,
        tha: target_hardware_addr.0,
        tpa: target_protocol_addr,
    })
}

/// Builds an ARP frame.
pub fn frame(
    eth_dst: [u8; 6],
    request: bool,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: if request {
            ArpOperation::Request
        } else {
            ArpOperation::Reply
        },
        source_hardware_addr: EthernetAddress(sha),
        source_protocol_addr: spa,
        target_hardware_addr: EthernetAddress(tha),
        target_protocol_addr: tpa,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(sha),
        dst_addr: EthernetAddress(eth_dst),
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + repr.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    repr.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    debug_assert_eq!(u16::from(EthernetProtocol::Arp), ethertype::ARP);
    buf
}

/// A broadcast request for `target` from `mac`/`ip`.
pub fn request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    frame([0xff; 6], true, mac, ip, [0; 6], target)
}

/// A gratuitous ARP announcement of `ip` at `mac` (RFC 5227 §2.3: a request, sender = target).
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    frame([0xff; 6], true, mac, ip, [0; 6], ip)
}

/// The reply to `req`, saying that `ip` is at `mac`.
pub fn reply(req: &ArpIn, mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    frame(req.sha, false, mac, ip, req.sha, req.spa)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn resolve_retry_fail() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = ArpCache::new(ms(1000), ms(100), 3);
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(c.lookup(ip, t0), Lookup::Started);
        assert_eq!(c.lookup(ip, t0), Lookup::Pending);
        assert_eq!(c.next_deadline(), Some(t0 + ms(100)));
        assert_eq!(c.poll(t0 + ms(100)).0, vec![ip]);
        assert_eq!(c.poll(t0 + ms(200)).0, vec![ip]);
        let (send, failed) = c.poll(t0 + ms(300));
        assert!(send.is_empty());
        assert_eq!(failed, vec![ArpNews::Failed { ip }]);
        assert!(c.is_empty());
        // Next time it starts again.
        assert_eq!(c.lookup(ip, t0 + ms(400)), Lookup::Started);
        let news = c.learn(ip, PEER, false, t0 + ms(450));
        assert_eq!(
            news,
            Some(ArpNews::Resolved {
                ip,
                mac: PEER,
                previous: None,
                completed: true
            })
        );
        assert_eq!(
            c.lookup(ip, t0 + ms(500)),
            Lookup::Hit {
                mac: PEER,
                refresh: false
            }
        );
        // Stale: used, refreshed once.
        assert_eq!(
            c.lookup(ip, t0 + ms(1500)),
            Lookup::Hit {
                mac: PEER,
                refresh: true
            }
        );
        assert_eq!(
            c.lookup(ip, t0 + ms(1501)),
            Lookup::Hit {
                mac: PEER,
                refresh: false
            }
        );
        assert_eq!(c.entries(t0 + ms(1501))[0].state, ArpState::Stale);
        // A changed MAC is news.
        let news = c.learn(ip, MAC, false, t0 + ms(1600));
        assert!(matches!(
            news,
            Some(ArpNews::Resolved {
                previous: Some(PEER),
                ..
            })
        ));
        // Unsolicited replies for unknown addresses do not create entries.
        assert_eq!(c.learn(Ipv4Addr::new(10, 0, 0, 9), PEER, false, t0), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn frames_round_trip() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let target = Ipv4Addr::new(10, 0, 0, 2);
        let req = request(MAC, ip, target);
        assert_eq!(req.len(), ARP_FRAME_BYTES);
        assert_eq!(&req[..6], &[0xff; 6]);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        let parsed = parse(&req).unwrap();
        assert!(parsed.request);
        assert_eq!((parsed.sha, parsed.spa, parsed.tpa), (MAC, ip, target));
        let rep = reply(&parsed, PEER, target);
        let p = parse(&rep).unwrap();
        assert!(!p.request);
        assert_eq!(&rep[..6], &MAC);
        assert_eq!((p.sha, p.spa, p.tha, p.tpa), (PEER, target, MAC, ip));
        let ann = parse(&announcement(MAC, ip)).unwrap();
        assert_eq!((ann.spa, ann.tpa), (ip, ip));
        // Damaged frames are rejected, never panic.
        for cut in 0..req.len() {
            assert!(parse(&req[..cut]).is_err());
        }
        let mut bad = req.clone();
        bad[14 + 8] = 0x01; // sender MAC with the group bit
        assert_eq!(parse(&bad), Err(ArpReject::GroupSender));
        let mut bad = req.clone();
        bad[14 + 7] = 9; // operation 9
        assert_eq!(parse(&bad), Err(ArpReject::Operation));
    }
}
