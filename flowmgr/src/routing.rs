//! The routing table: the connected subnet, static routes and the default gateway, longest
//! prefix first; and which link-layer destination a route ends at.

use std::net::Ipv4Addr;

use nemflow_proto::app::RouteEntry;

/// Where frames for a destination go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A unicast next hop whose MAC ARP resolves.
    Unicast(Ipv4Addr),
    /// A broadcast destination (limited or the subnet's directed broadcast).
    Broadcast,
    /// An IPv4 multicast group: its MAC is computed.
    Multicast([u8; 6]),
}

impl NextHop {
    /// The MAC, when no ARP is needed.
    pub fn fixed_mac(&self) -> Option<[u8; 6]> {
        match self {
            NextHop::Unicast(_) => None,
            NextHop::Broadcast => Some([0xff; 6]),
            NextHop::Multicast(mac) => Some(*mac),
        }
    }
}

/// Why there is no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No route covers the destination.
    #[error("no route to {0} (connected {1}, no gateway or static route covers it)")]
    NoRoute(Ipv4Addr, String),
    /// The destination cannot be sent to over the link.
    #[error("{0} is not a valid destination: {1}")]
    Invalid(Ipv4Addr, &'static str),
}

/// One static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Static {
    net: u32,
    prefix_len: u8,
    via: Ipv4Addr,
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// The host's routes.
#[derive(Debug, Clone)]
pub struct Routes {
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    statics: Vec<Static>,
}

impl Routes {
    /// The table for a host at `ip/prefix_len`, with a default gateway and static routes
    /// `(network, prefix, via)`. Next hops outside the subnet are dropped (config validation
    /// already refuses them).
    pub fn new(
        ip: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        statics: &[(Ipv4Addr, u8, Ipv4Addr)],
    ) -> Self {
        let mut r = Self {
            ip,
            prefix_len: prefix_len.min(32),
            gateway,
            statics: Vec::new(),
        };
        for &(net, len, via) in statics {
            let len = len.min(32);
            if r.on_link(via) {
                r.statics.push(Static {
                    net: u32::from(net) & mask(len),
                    prefix_len: len,
                    via,
                });
            }
        }
        r.statics.sort_by_key(|s| std::cmp::Reverse(s.prefix_len));
        r
    }

    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The prefix length of the connected subnet.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The connected subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) & mask(self.prefix_len))
    }

    /// The subnet's directed broadcast address.
    pub fn subnet_broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) | !mask(self.prefix_len))
    }

    /// The default gateway.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// Whether `ip` is in the connected subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let m = mask(self.prefix_len);
        u32::from(ip) & m == u32::from(self.ip) & m
    }

    /// Where frames for `dst` go.
    pub fn lookup(&self, dst: Ipv4Addr) -> Result<NextHop, RouteError> {
        if dst.is_broadcast() || dst == self.subnet_broadcast() {
            return Ok(NextHop::Broadcast);
        }
        if dst.is_multicast() {
            let o = dst.octets();
            return Ok(NextHop::Multicast([
                0x01,
                0x00,
                0x5e,
                o[1] & 0x7f,
                o[2],
                o[3],
            ]));
        }
        if dst.is_unspecified() || dst.octets()[0] == 0 {
            return Err(RouteError::Invalid(
                dst,
                "\"this network\" addresses are source-only",
            ));
        }
        if dst.is_loopback() {
            return Err(RouteError::Invalid(
                dst,
                "loopback does not go over the link",
            ));
        }
        if dst.octets()[0] >= 240 {
            return Err(RouteError::Invalid(dst, "reserved (class E) address"));
        }
        if dst == self.ip {
            return Err(RouteError::Invalid(
                dst,
                "this host's own address (nemflow does not loop back)",
            ));
        }
        let d = u32::from(dst);
        for s in &self.statics {
            if s.prefix_len > self.prefix_len && d & mask(s.prefix_len) == s.net {
                return Ok(NextHop::Unicast(s.via));
            }
        }
        if self.on_link(dst) {
            return Ok(NextHop::Unicast(dst));
        }
        for s in &self.statics {
            if d & mask(s.prefix_len) == s.net {
                return Ok(NextHop::Unicast(s.via));
            }
        }
        match self.gateway {
            Some(gw) => Ok(NextHop::Unicast(gw)),
            None => Err(RouteError::NoRoute(
                dst,
                format!("{}/{}", self.network(), self.prefix_len),
            )),
        }
    }

    /// The table, most specific first, default route last.
    pub fn entries(&self) -> Vec<RouteEntry> {
        let mut v = Vec::new();
        let connected = RouteEntry {
            dest: self.network(),
            prefix_len: self.prefix_len,
            via: None,
            src: self.ip,
        };
        let mut placed = false;
        for s in &self.statics {
            if !placed && s.prefix_len <= self.prefix_len {
                v.push(connected);
                placed = true;
            }
            v.push(RouteEntry {
                dest: Ipv4Addr::from(s.net),
                prefix_len: s.prefix_len,
                via: Some(s.via),
                src: self.ip,
            });
        }
        if !placed {
            v.push(connected);
        }
        if let Some(gw) = self.gateway {
            v.push(RouteEntry {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                via: Some(gw),
                src: self.ip,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    #[test]
    fn longest_prefix_then_gateway() {
        let r = Routes::new(
            ip(10, 77, 0, 1),
            24,
            Some(ip(10, 77, 0, 254)),
            &[
                (ip(10, 1, 0, 0), 16, ip(10, 77, 0, 5)),
                (ip(10, 1, 2, 0), 24, ip(10, 77, 0, 6)),
                (ip(10, 77, 0, 128), 25, ip(10, 77, 0, 7)),
            ],
        );
        assert_eq!(
            r.lookup(ip(10, 77, 0, 2)),
            Ok(NextHop::Unicast(ip(10, 77, 0, 2)))
        );
        assert_eq!(
            r.lookup(ip(10, 77, 0, 200)),
            Ok(NextHop::Unicast(ip(10, 77, 0, 7)))
        );
        assert_eq!(
            r.lookup(ip(10, 1, 9, 9)),
            Ok(NextHop::Unicast(ip(10, 77, 0, 5)))
        );
        assert_eq!(
            r.lookup(ip(10, 1, 2, 3)),
            Ok(NextHop::Unicast(ip(10, 77, 0, 6)))
        );
        assert_eq!(
            r.lookup(ip(8, 8, 8, 8)),
            Ok(NextHop::Unicast(ip(10, 77, 0, 254)))
        );
        assert_eq!(r.lookup(ip(10, 77, 0, 255)), Ok(NextHop::Broadcast));
        assert_eq!(r.lookup(ip(255, 255, 255, 255)), Ok(NextHop::Broadcast));
        assert_eq!(
            r.lookup(ip(239, 129, 2, 3)),
            Ok(NextHop::Multicast([1, 0, 0x5e, 1, 2, 3]))
        );
        assert!(r.lookup(ip(127, 0, 0, 1)).is_err());
        assert!(r.lookup(ip(10, 77, 0, 1)).is_err());
        assert!(r.lookup(ip(0, 0, 0, 0)).is_err());
        let e = r.entries();
        assert_eq!(e.first().map(|e| e.prefix_len), Some(25));
        assert_eq!(e.last().map(|e| e.prefix_len), Some(0));
        assert_eq!(e.len(), 5);
    }

    #[test]
    fn no_gateway_no_route() {
        let r = Routes::new(ip(10, 77, 0, 1), 24, None, &[]);
        let err = r.lookup(ip(192, 168, 1, 1)).unwrap_err();
        assert!(err.to_string().contains("no route to 192.168.1.1"), "{err}");
    }
}
