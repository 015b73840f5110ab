//! Port allocation: who owns which local service access point.
//!
//! The host has one address, so a SAP is `(protocol, port)`. A port belongs to one client at a
//! time. Within it: at most one bound (unconnected) flow, any number of connected flows with
//! distinct remotes (as accepted TCP connections share their listener's port), and for TCP one
//! listen registration. A closed TCP connection's 5-tuple is held for TIME_WAIT: that exact
//! 5-tuple cannot be reused until it expires, and the ephemeral allocator skips its port.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use nemflow_proto::ctl::TcpSeen;

/// Opaque owner of a port (the daemon's client id).
pub type OwnerId = u64;

/// Why a port cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Another client owns the port.
    #[error("{proto} port {port} is in use by another application")]
    InUse {
        /// Protocol name.
        proto: &'static str,
        /// The port.
        port: u16,
    },
    /// This client already has a flow with this exact local and remote SAP.
    #[error("{proto} port {port} already has a flow {what}")]
    Duplicate {
        /// Protocol name.
        proto: &'static str,
        /// The port.
        port: u16,
        /// `bound`, `to <remote>` or `listening`.
        what: String,
    },
    /// The 5-tuple is held for TIME_WAIT.
    #[error("tcp port {port} to {remote} is in TIME_WAIT for another {left_ms} ms")]
    TimeWait {
        /// The port.
        port: u16,
        /// The remote.
        remote: SocketAddrV4,
        /// Milliseconds left.
        left_ms: u64,
    },
    /// Every port of the ephemeral range is taken.
    #[error("no free {proto} port in the ephemeral range {first}..={last}")]
    Exhausted {
        /// Protocol name.
        proto: &'static str,
        /// First ephemeral port.
        first: u16,
        /// Last ephemeral port.
        last: u16,
    },
}

/// What a client holds on one port.
#[derive(Debug, Clone, Default)]
struct PortUse {
    owner: OwnerId,
    bound: bool,
    listen: bool,
    connected: HashSet<SocketAddrV4>,
}

impl PortUse {
    fn is_empty(&self) -> bool {
        !self.bound && !self.listen && self.connected.is_empty()
    }
}

/// What is being claimed on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An unconnected flow.
    Bound,
    /// A connected flow to this remote.
    Connected(SocketAddrV4),
    /// A TCP listen registration.
    Listen,
}

/// All ports of the host, per IPv4 protocol.
#[derive(Debug)]
pub struct PortTable {
    first: u16,
    last: u16,
    /// Next ephemeral candidate per protocol.
    cursor: HashMap<u8, u16>,
    uses: HashMap<(u8, u16), PortUse>,
    /// TCP 5-tuples in TIME_WAIT: (local port, remote) → expiry and the old connection's
    /// sequence state (when it closed cleanly).
    time_wait: HashMap<(u16, SocketAddrV4), (Instant, Option<TcpSeen>)>,
    /// TIME_WAIT entries per local port.
    tw_ports: BTreeMap<u16, u32>,
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        nemflow_proto::flow::ip_proto::TCP => "tcp",
        nemflow_proto::flow::ip_proto::UDP => "udp",
        _ => "ip",
    }
}

impl PortTable {
    /// An empty table allocating ephemeral ports from `first..=last`.
    pub fn new(first: u16, last: u16) -> Self {
        Self {
            first: first.max(1),
            last: last.max(first.max(1)),
            cursor: HashMap::new(),
            uses: HashMap::new(),
            time_wait: HashMap::new(),
            tw_ports: BTreeMap::new(),
        }
    }

    /// Claims `port` (0: an ephemeral one) for `owner`; returns the port.
    pub fn claim(
        &mut self,
        proto: u8,
        port: u16,
        claim: Claim,
        owner: OwnerId,
        now: Instant,
    ) -> Result<u16, PortError> {
        let port = if port == 0 {
            self.ephemeral(proto)?
        } else {
            self.check(proto, port, claim, owner, now)?;
            port
        };
        let entry = self.uses.entry((proto, port)).or_insert_with(|| PortUse {
            owner,
            ..PortUse::default()
        });
        match claim {
            Claim::Bound => entry.bound = true,
            Claim::Listen => entry.listen = true,
            Claim::Connected(r) => {
                entry.connected.insert(r);
            }
        }
        Ok(port)
    }

    fn check(
        &self,
        proto: u8,
        port: u16,
        claim: Claim,
        owner: OwnerId,
        now: Instant,
    ) -> Result<(), PortError> {
        let name = proto_name(proto);
        if let Some(u) = self.uses.get(&(proto, port)) {
            if u.owner != owner {
                return Err(PortError::InUse { proto: name, port });
            }
            let dup = match claim {
                Claim::Bound if u.bound => Some("bound".to_string()),
                Claim::Listen if u.listen => Some("listening".to_string()),
                Claim::Connected(r) if u.connected.contains(&r) => Some(format!("to {r}")),
                _ => None,
            };
            if let Some(what) = dup {
                return Err(PortError::Duplicate {
                    proto: name,
                    port,
                    what,
                });
            }
        }
        if let Claim::Connected(remote) = claim {
            if proto == nemflow_proto::flow::ip_proto::TCP {
                if let Some(&(until, _)) = self.time_wait.get(&(port, remote)) {
                    if until > now {
                        return Err(PortError::TimeWait {
                            port,
                            remote,
                            left_ms: until.saturating_duration_since(now).as_millis() as u64,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn ephemeral(&mut self, proto: u8) -> Result<u16, PortError> {
        let span = u32::from(self.last - self.first) + 1;
        let start = *self.cursor.get(&proto).unwrap_or(&self.first);
        let start = if (self.first..=self.last).contains(&start) {
            start
        } else {
            self.first
        };
        let mut p = start;
        for _ in 0..span {
            let free = !self.uses.contains_key(&(proto, p))
                && (proto != nemflow_proto::flow::ip_proto::TCP || !self.tw_ports.contains_key(&p));
            let next = if p == self.last { self.first } else { p + 1 };
            if free {
                self.cursor.insert(proto, next);
                return Ok(p);
            }
            p = next;
        }
        Err(PortError::Exhausted {
            proto: proto_name(proto),
            first: self.first,
            last: self.last,
        })
    }

    /// Releases a claim. A connected TCP claim released with `time_wait` is held that long.
    pub fn release(
        &mut self,
        proto: u8,
        port: u16,
        claim: Claim,
        owner: OwnerId,
        time_wait: Option<(Instant, Duration)>,
    ) {
        let Some(u) = self.uses.get_mut(&(proto, port)) else {
            return;
        };
        if u.owner != owner {
            return;
        }
        match claim {
            Claim::Bound => u.bound = false,
            Claim::Listen => u.listen = false,
            Claim::Connected(r) => {
                u.connected.remove(&r);
                if let (Some((now, d)), true) =
                    (time_wait, proto == nemflow_proto::flow::ip_proto::TCP)
                {
                    if !d.is_zero() && self.time_wait.insert((port, r), (now + d, None)).is_none() {
                        *self.tw_ports.entry(port).or_default() += 1;
                    }
                }
            }
        }
        if u.is_empty() {
            self.uses.remove(&(proto, port));
        }
    }

    /// Drops TIME_WAIT entries that expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        let tw_ports = &mut self.tw_ports;
        self.time_wait.retain(|(port, _), (until, _)| {
            let keep = *until > now;
            if !keep {
                if let Some(n) = tw_ports.get_mut(port) {
                    *n -= 1;
                    if *n == 0 {
                        tw_ports.remove(port);
                    }
                }
            }
            keep
        });
    }

    /// When the next TIME_WAIT entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.time_wait.values().map(|(t, _)| *t).min()
    }

    /// Records the sequence state of a connection held for TIME_WAIT (after
    /// [`release`](Self::release) put it there).
    pub fn set_time_wait_state(&mut self, port: u16, remote: SocketAddrV4, seen: TcpSeen) {
        if let Some(e) = self.time_wait.get_mut(&(port, remote)) {
            e.1 = Some(seen);
        }
    }

    /// The TIME_WAIT hold of a 4-tuple, if one is in force at `now`: `Some(state)`.
    pub fn time_wait_of(
        &self,
        port: u16,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Option<Option<TcpSeen>> {
        self.time_wait
            .get(&(port, remote))
            .filter(|(until, _)| *until > now)
            .map(|(_, seen)| *seen)
    }

    /// Ends a TIME_WAIT hold early: a new incarnation of the connection was accepted.
    pub fn clear_time_wait(&mut self, port: u16, remote: SocketAddrV4) {
        if self.time_wait.remove(&(port, remote)).is_some() {
            if let Some(n) = self.tw_ports.get_mut(&port) {
                *n -= 1;
                if *n == 0 {
                    self.tw_ports.remove(&port);
                }
            }
        }
    }

    /// Whether a flow holds `port` for datagrams or segments from `remote` (bound, or connected
    /// to `remote`; a listen registration is not a flow).
    pub fn holds(&self, proto: u8, port: u16, remote: SocketAddrV4) -> bool {
        self.uses
            .get(&(proto, port))
            .is_some_and(|u| u.bound || u.connected.contains(&remote))
    }

    /// Whether a client listens on TCP `port`.
    pub fn is_listening(&self, port: u16) -> bool {
        self.uses
            .get(&(nemflow_proto::flow::ip_proto::TCP, port))
            .is_some_and(|u| u.listen)
    }

    /// The client listening on TCP `port`.
    pub fn listener(&self, port: u16) -> Option<OwnerId> {
        self.uses
            .get(&(nemflow_proto::flow::ip_proto::TCP, port))
            .filter(|u| u.listen)
            .map(|u| u.owner)
    }

    /// TIME_WAIT entries: local port, remote, time left.
    pub fn time_waits(&self, now: Instant) -> Vec<(u16, SocketAddrV4, Duration)> {
        let mut v: Vec<_> = self
            .time_wait
            .iter()
            .map(|(&(p, r), &(until, _))| (p, r, until.saturating_duration_since(now)))
            .collect();
        v.sort();
        v
    }

    /// Ports in use (for tests and listings).
    pub fn in_use(&self) -> usize {
        self.uses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nemflow_proto::flow::ip_proto::{TCP, UDP};
    use std::net::Ipv4Addr;

    fn remote(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port)
    }

    #[test]
    fn one_owner_per_port() {
        let now = Instant::now();
        let mut t = PortTable::new(50000, 50001);
        assert_eq!(t.claim(UDP, 53, Claim::Bound, 1, now), Ok(53));
        assert_eq!(
            t.claim(UDP, 53, Claim::Bound, 2, now),
            Err(PortError::InUse {
                proto: "udp",
                port: 53
            })
        );
        assert!(matches!(
            t.claim(UDP, 53, Claim::Bound, 1, now),
            Err(PortError::Duplicate { .. })
        ));
        // Same owner, connected flows with distinct remotes share the port.
        assert_eq!(
            t.claim(UDP, 53, Claim::Connected(remote(1)), 1, now),
            Ok(53)
        );
        assert!(t
            .claim(UDP, 53, Claim::Connected(remote(1)), 1, now)
            .is_err());
        // TCP is another namespace.
        assert_eq!(t.claim(TCP, 53, Claim::Listen, 2, now), Ok(53));
        t.release(UDP, 53, Claim::Bound, 1, None);
        t.release(UDP, 53, Claim::Connected(remote(1)), 1, None);
        assert_eq!(t.claim(UDP, 53, Claim::Bound, 2, now), Ok(53));
    }

    #[test]
    fn ephemeral_range_is_exhausted_cleanly() {
        let now = Instant::now();
        let mut t = PortTable::new(50000, 50001);
        let a = t.claim(UDP, 0, Claim::Bound, 1, now).unwrap();
        let b = t.claim(UDP, 0, Claim::Bound, 1, now).unwrap();
        assert_ne!(a, b);
        assert!(matches!(
            t.claim(UDP, 0, Claim::Bound, 1, now),
            Err(PortError::Exhausted { .. })
        ));
        t.release(UDP, a, Claim::Bound, 1, None);
        assert_eq!(t.claim(UDP, 0, Claim::Bound, 3, now), Ok(a));
    }

    #[test]
    fn time_wait_holds_the_five_tuple() {
        let now = Instant::now();
        let mut t = PortTable::new(50000, 50000);
        let p = t
            .claim(TCP, 0, Claim::Connected(remote(80)), 1, now)
            .unwrap();
        t.release(
            TCP,
            p,
            Claim::Connected(remote(80)),
            1,
            Some((now, Duration::from_secs(60))),
        );
        assert_eq!(t.in_use(), 0);
        assert!(matches!(
            t.claim(TCP, p, Claim::Connected(remote(80)), 2, now),
            Err(PortError::TimeWait { .. })
        ));
        // Another remote on the same port is fine, but the allocator skips the port.
        assert!(matches!(
            t.claim(TCP, 0, Claim::Connected(remote(81)), 2, now),
            Err(PortError::Exhausted { .. })
        ));
        assert_eq!(t.next_expiry(), Some(now + Duration::from_secs(60)));
        // The hold carries the old connection's state, and a reopened connection ends it.
        assert_eq!(t.time_wait_of(p, remote(80), now), Some(None));
        let seen = TcpSeen {
            snd_nxt: 9,
            ..TcpSeen::default()
        };
        t.set_time_wait_state(p, remote(80), seen);
        assert_eq!(t.time_wait_of(p, remote(80), now), Some(Some(seen)));
        assert_eq!(
            t.time_wait_of(p, remote(80), now + Duration::from_secs(60)),
            None
        );
        t.clear_time_wait(p, remote(80));
        assert_eq!(t.time_wait_of(p, remote(80), now), None);
        assert_eq!(t.claim(TCP, p, Claim::Connected(remote(80)), 2, now), Ok(p));
        t.release(
            TCP,
            p,
            Claim::Connected(remote(80)),
            2,
            Some((now, Duration::from_secs(60))),
        );
        t.expire(now + Duration::from_secs(61));
        assert_eq!(
            t.claim(TCP, 0, Claim::Connected(remote(80)), 2, now),
            Ok(50000)
        );
    }
}
