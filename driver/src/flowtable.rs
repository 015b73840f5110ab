//! The receive filters of installed flows, and where a classified frame goes.
//!
//! Exact matches only: the 5-tuple of connected flows first, then the 3-tuple of bound flows,
//! then broadcast subscribers, ethertype subscribers, and finally the flow manager's default
//! flow. Later IPv4 fragments carry no ports; they follow the first fragment of their datagram
//! through a bounded table of `(src, dst, proto, id)` entries that expire.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use foldhash::fast::RandomState;
use nemflow_proto::flow::{ethertype, ip_proto, Filter};

use crate::classify::{Ipv4Info, Malformed, Parsed};

/// Index of a flow in the driver's flow slab.
pub type Slot = u32;

/// Where a received frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// One flow.
    One(Slot),
    /// Several flows (broadcast, or an ethertype several flows subscribe to); each gets a copy.
    Many(Vec<Slot>),
    /// The flow manager's default flow (or a drop, counted, when there is none).
    Default,
    /// A later fragment whose first fragment has not arrived (yet): the caller holds it for a
    /// while and looks it up again when that first fragment comes.
    Hold,
    /// Dropped before any flow.
    Drop(Malformed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key5 {
    proto: u8,
    local: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key3 {
    proto: u8,
    local: (Ipv4Addr, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
}

#[derive(Debug, Clone, Copy)]
struct FragEntry {
    /// `None`: the default flow.
    slot: Option<Slot>,
    expires_ns: u64,
}

/// Why a filter cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Another flow has exactly this filter.
    #[error("another flow already has this filter")]
    Exists,
    /// The filter is not one the driver can match.
    #[error("unsupported filter: {0}")]
    Unsupported(&'static str),
}

/// All installed filters.
#[derive(Debug)]
pub struct FlowTable {
    connected: HashMap<Key5, Slot, RandomState>,
    bound: HashMap<Key3, Slot, RandomState>,
    broadcast: HashMap<(u8, u16), Vec<Slot>, RandomState>,
    ethertypes: HashMap<u16, Vec<Slot>, RandomState>,
    default: Option<Slot>,
    frags: HashMap<FragKey, FragEntry, RandomState>,
    frag_capacity: usize,
    frag_timeout_ns: u64,
    /// The host's directed broadcast address.
    subnet_broadcast: Ipv4Addr,
}

impl FlowTable {
    /// An empty table for a host whose subnet broadcast address is `subnet_broadcast`.
    pub fn new(subnet_broadcast: Ipv4Addr) -> Self {
        Self {
            connected: HashMap::default(),
            bound: HashMap::default(),
            broadcast: HashMap::default(),
            ethertypes: HashMap::default(),
            default: None,
            frags: HashMap::default(),
            frag_capacity: 4096,
            frag_timeout_ns: 5_000_000_000,
            subnet_broadcast,
        }
    }

    /// Sets the fragment table's bound and timeout.
    pub fn set_fragment_limits(&mut self, capacity: usize, timeout_ns: u64) {
        self.frag_capacity = capacity;
        self.frag_timeout_ns = timeout_ns;
    }

    /// Datagrams whose later fragments are being followed.
    pub fn fragments_tracked(&self) -> usize {
        self.frags.len()
    }

    /// Installs `filter` for `slot`.
    pub fn insert(&mut self, filter: &Filter, slot: Slot) -> Result<(), FilterError> {
        match *filter {
            Filter::Connected {
                proto,
                local,
                remote,
            } => {
                check_proto(proto)?;
                let key = Key5 {
                    proto,
                    local: (*local.ip(), local.port()),
                    remote: (*remote.ip(), remote.port()),
                };
                if self.connected.contains_key(&key) {
                    return Err(FilterError::Exists);
                }
                self.connected.insert(key, slot);
            }
            Filter::Bound {
                proto,
                local,
                broadcast,
            } => {
                check_proto(proto)?;
                let key = Key3 {
                    proto,
                    local: (*local.ip(), local.port()),
                };
                if self.bound.contains_key(&key) {
                    return Err(FilterError::Exists);
                }
                self.bound.insert(key, slot);
                if broadcast {
                    self.broadcast
                        .entry((proto, local.port()))
                        .or_default()
                        .push(slot);
                }
            }
            Filter::Ethertype(et) => {
                if et == ethertype::IPV4 || et == ethertype::VLAN {
                    return Err(FilterError::Unsupported(
                        "IPv4 and VLAN are demultiplexed by their own filters",
                    ));
                }
                let subs = self.ethertypes.entry(et).or_default();
                if subs.contains(&slot) {
                    return Err(FilterError::Exists);
                }
                subs.push(slot);
            }
            Filter::Default => {
                if self.default.is_some() {
                    return Err(FilterError::Exists);
                }
                self.default = Some(slot);
            }
        }
        Ok(())
    }

    /// Removes `filter` of `slot` (and any fragment state pointing at it).
    pub fn remove(&mut self, filter: &Filter, slot: Slot) {
        match *filter {
            Filter::Connected {
                proto,
                local,
                remote,
            } => {
                let key = Key5 {
                    proto,
                    local: (*local.ip(), local.port()),
                    remote: (*remote.ip(), remote.port()),
                };
                if self.connected.get(&key) == Some(&slot) {
                    self.connected.remove(&key);
                }
            }
            Filter::Bound { proto, local, .. } => {
                let key = Key3 {
                    proto,
                    local: (*local.ip(), local.port()),
                };
                if self.bound.get(&key) == Some(&slot) {
                    self.bound.remove(&key);
                }
                remove_from(&mut self.broadcast, &(proto, local.port()), slot);
            }
            Filter::Ethertype(et) => remove_from(&mut self.ethertypes, &et, slot),
            Filter::Default => {
                if self.default == Some(slot) {
                    self.default = None;
                }
            }
        }
        self.frags.retain(|_, e| e.slot != Some(slot));
    }

    /// The default flow's slot.
    pub fn default_slot(&self) -> Option<Slot> {
        self.default
    }

    /// Where a parsed frame goes. `now_ns` ages fragment state.
    pub fn lookup(&mut self, parsed: &Parsed, now_ns: u64) -> Dest {
        match parsed {
            Parsed::Other(et) => self.lookup_ethertype(*et),
            Parsed::Ipv4(info) => self.lookup_ipv4(info, now_ns),
        }
    }

    fn lookup_ethertype(&self, et: u16) -> Dest {
        match self.ethertypes.get(&et) {
            Some(subs) if !subs.is_empty() => {
                // The flow manager answers ARP whoever else listens.
                if et == ethertype::ARP {
                    if let Some(d) = self.default {
                        let mut all = subs.clone();
                        all.push(d);
                        return Dest::Many(all);
                    }
                }
                if subs.len() == 1 {
                    Dest::One(subs[0])
                } else {
                    Dest::Many(subs.clone())
                }
            }
            _ => Dest::Default,
        }
    }

    fn lookup_ipv4(&mut self, info: &Ipv4Info, now_ns: u64) -> Dest {
        let key = FragKey {
            src: info.src,
            dst: info.dst,
            proto: info.proto,
            ident: info.ident,
        };
        if info.is_later_fragment() {
            // Fragments may arrive in any order: without state yet, the caller holds the frame.
            // State lives until it expires (not until the last fragment: a middle one may come
            // after it).
            let Some(entry) = self.frags.get(&key).copied() else {
                return Dest::Hold;
            };
            if entry.expires_ns < now_ns {
                self.frags.remove(&key);
                return Dest::Hold;
            }
            return entry.slot.map_or(Dest::Default, Dest::One);
        }
        let dest = self.match_datagram(info);
        if info.is_first_fragment() {
            let slot = match &dest {
                Dest::One(s) => Some(*s),
                // Broadcast fragments go to the default flow only.
                _ => None,
            };
            if self.frags.len() >= self.frag_capacity {
                self.frags.retain(|_, e| e.expires_ns >= now_ns);
            }
            if self.frags.len() >= self.frag_capacity && !self.frags.contains_key(&key) {
                return Dest::Drop(Malformed::FragmentTableFull);
            }
            self.frags.insert(
                key,
                FragEntry {
                    slot,
                    expires_ns: now_ns.saturating_add(self.frag_timeout_ns),
                },
            );
            if slot.is_none() {
                return Dest::Default;
            }
        }
        dest
    }

    /// Filter match for a whole datagram or first fragment.
    fn match_datagram(&self, info: &Ipv4Info) -> Dest {
        if let Some(q) = info.icmp_quote {
            // An ICMP error about a datagram this host sent: the quoted source is the flow's
            // local end.
            let key5 = Key5 {
                proto: q.proto,
                local: q.src,
                remote: q.dst,
            };
            if let Some(&s) = self.connected.get(&key5) {
                return Dest::One(s);
            }
            let key3 = Key3 {
                proto: q.proto,
                local: q.src,
            };
            return self
                .bound
                .get(&key3)
                .map_or(Dest::Default, |&s| Dest::One(s));
        }
        let Some((sport, dport)) = info.ports else {
            return Dest::Default;
        };
        let key5 = Key5 {
            proto: info.proto,
            local: (info.dst, dport),
            remote: (info.src, sport),
        };
        if let Some(&s) = self.connected.get(&key5) {
            return Dest::One(s);
        }
        let key3 = Key3 {
            proto: info.proto,
            local: (info.dst, dport),
        };
        if let Some(&s) = self.bound.get(&key3) {
            return Dest::One(s);
        }
        let multi =
            info.dst.is_broadcast() || info.dst.is_multicast() || info.dst == self.subnet_broadcast;
        if multi && info.proto == ip_proto::UDP {
            if let Some(subs) = self.broadcast.get(&(info.proto, dport)) {
                match subs.len() {
                    0 => {}
                    1 => return Dest::One(subs[0]),
                    _ => return Dest::Many(subs.clone()),
                }
            }
        }
        Dest::Default
    }
}

fn check_proto(proto: u8) -> Result<(), FilterError> {
    match proto {
        ip_proto::UDP | ip_proto::TCP => Ok(()),
        _ => Err(FilterError::Unsupported("IPv4 filters are for UDP and TCP")),
    }
}

fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Vec<Slot>, RandomState>,
    key: &K,
    slot: Slot,
) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|&s| s != slot);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{parse, tests::fix_ip_checksum, tests::udp_frame};
    use std::net::SocketAddrV4;

    const HOST: [u8; 4] = [10, 0, 0, 1];
    const PEER: [u8; 4] = [10, 0, 0, 2];

    fn table() -> FlowTable {
        let mut t = FlowTable::new(Ipv4Addr::new(10, 0, 0, 255));
        t.insert(&Filter::Default, 0).unwrap();
        t.insert(
            &Filter::Bound {
                proto: ip_proto::UDP,
                local: SocketAddrV4::new(HOST.into(), 7000),
                broadcast: true,
            },
            1,
        )
        .unwrap();
        t.insert(
            &Filter::Connected {
                proto: ip_proto::UDP,
                local: SocketAddrV4::new(HOST.into(), 7000),
                remote: SocketAddrV4::new(PEER.into(), 5000),
            },
            2,
        )
        .unwrap();
        t
    }

    fn dest(t: &mut FlowTable, f: &[u8]) -> Dest {
        match parse(f, 1514) {
            Ok(p) => t.lookup(&p, 0),
            Err(m) => Dest::Drop(m),
        }
    }

    #[test]
    fn five_tuple_before_three_tuple() {
        let mut t = table();
        assert_eq!(
            dest(&mut t, &udp_frame(PEER, HOST, 5000, 7000, b"a", &[])),
            Dest::One(2)
        );
        assert_eq!(
            dest(&mut t, &udp_frame(PEER, HOST, 5001, 7000, b"a", &[])),
            Dest::One(1)
        );
        assert_eq!(
            dest(&mut t, &udp_frame(PEER, HOST, 5000, 7001, b"a", &[])),
            Dest::Default
        );
        assert_eq!(
            dest(
                &mut t,
                &udp_frame(PEER, [10, 0, 0, 255], 5000, 7000, b"a", &[])
            ),
            Dest::One(1),
            "subnet broadcast to a subscriber"
        );
    }

    #[test]
    fn duplicate_filters_are_refused() {
        let mut t = table();
        assert_eq!(t.insert(&Filter::Default, 9), Err(FilterError::Exists));
        let f = Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST.into(), 7000),
            broadcast: false,
        };
        assert_eq!(t.insert(&f, 9), Err(FilterError::Exists));
        t.remove(&f, 1);
        assert_eq!(
            dest(&mut t, &udp_frame(PEER, HOST, 5001, 7000, b"a", &[])),
            Dest::Default
        );
        t.insert(&f, 9).unwrap();
        assert_eq!(
            dest(&mut t, &udp_frame(PEER, HOST, 5001, 7000, b"a", &[])),
            Dest::One(9)
        );
    }

    #[test]
    fn fragments_follow_the_first() {
        let mut t = table();
        let mut first = udp_frame(PEER, HOST, 5000, 7000, &[0; 32], &[]);
        first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ip_checksum(&mut first);
        let mut later = udp_frame(PEER, HOST, 0, 0, &[0; 32], &[]);
        later[20..22].copy_from_slice(&5u16.to_be_bytes()); // last fragment, offset 40
        fix_ip_checksum(&mut later);
        assert_eq!(
            dest(&mut t, &later),
            Dest::Hold,
            "before its first: held by the caller"
        );
        assert_eq!(dest(&mut t, &first), Dest::One(2));
        assert_eq!(t.fragments_tracked(), 1);
        assert_eq!(dest(&mut t, &later), Dest::One(2));
        assert_eq!(
            dest(&mut t, &later),
            Dest::One(2),
            "state outlives the last fragment"
        );
        assert_eq!(t.fragments_tracked(), 1);
    }

    #[test]
    fn fragment_state_is_bounded_and_expires() {
        let mut t = table();
        t.set_fragment_limits(2, 1000);
        let frag = |ident: u16| {
            let mut f = udp_frame(PEER, HOST, 5000, 7000, &[0; 8], &[]);
            f[18..20].copy_from_slice(&ident.to_be_bytes());
            f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
            fix_ip_checksum(&mut f);
            parse(&f, 1514).unwrap()
        };
        assert_eq!(t.lookup(&frag(1), 0), Dest::One(2));
        assert_eq!(t.lookup(&frag(2), 0), Dest::One(2));
        assert_eq!(
            t.lookup(&frag(3), 10),
            Dest::Drop(Malformed::FragmentTableFull)
        );
        assert_eq!(t.fragments_tracked(), 2);
        assert_eq!(
            t.lookup(&frag(3), 2000),
            Dest::One(2),
            "expired entries make room"
        );
        assert_eq!(t.fragments_tracked(), 1);
    }

    #[test]
    fn arp_goes_to_the_flow_manager_and_subscribers() {
        let mut t = table();
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(dest(&mut t, &arp), Dest::Default);
        t.insert(&Filter::Ethertype(ethertype::ARP), 5).unwrap();
        assert_eq!(dest(&mut t, &arp), Dest::Many(vec![5, 0]));
        assert!(t.insert(&Filter::Ethertype(ethertype::IPV4), 6).is_err());
    }
}
