//! Next-hop MACs for unconnected flows: a small per-flow neighbour cache the application fills,
//! and the [`Resolver`] hook the flow manager's client implements (it owns ARP).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Resolves an on-link address to a MAC. The flow manager's client implements it (the flow
/// manager owns ARP); it may block for a bounded time while the flow manager asks.
pub trait Resolver: Send {
    /// The MAC of `ip`: `Ok(None)` if it is not known (the send fails with `NoNeighbour`),
    /// `Err(reason)` if asking failed.
    fn resolve(&mut self, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, String>;
}

/// A bounded map of on-link addresses to MACs; the oldest entry goes when it is full.
#[derive(Debug, Clone)]
pub struct NeighbourCache {
    map: HashMap<Ipv4Addr, [u8; 6]>,
    order: VecDeque<Ipv4Addr>,
    capacity: usize,
}

impl NeighbourCache {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        NeighbourCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// The MAC of `ip`, if known.
    pub fn get(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.map.get(&ip).copied()
    }

    /// Records (or updates) `ip`'s MAC.
    pub fn insert(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(ip, mac).is_none() {
            self.order.push_back(ip);
            while self.map.len() > self.capacity {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    /// Forgets `ip`.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        let r = self.map.remove(&ip);
        if r.is_some() {
            self.order.retain(|a| *a != ip);
        }
        r
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The Ethernet address an IPv4 multicast group maps to (RFC 1112 §6.4).
pub fn multicast_mac(group: Ipv4Addr) -> [u8; 6] {
    let o = group.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_oldest_goes_first() {
        let mut c = NeighbourCache::new(2);
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        c.insert(ip(1), [1; 6]);
        c.insert(ip(2), [2; 6]);
        c.insert(ip(1), [9; 6]); // update, not a new entry
        c.insert(ip(3), [3; 6]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(ip(1)), None);
        assert_eq!(c.get(ip(2)), Some([2; 6]));
        assert_eq!(c.get(ip(3)), Some([3; 6]));
        assert_eq!(
            multicast_mac(Ipv4Addr::new(239, 129, 2, 3)),
            [1, 0, 0x5e, 1, 2, 3]
        );
    }
}
