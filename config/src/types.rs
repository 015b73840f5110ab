//! Value types checked while parsing, so that their errors carry the YAML location.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements `Deserialize` (and `Serialize`) through `FromStr`/`Display`.
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// An IPv4 address with its prefix length, e.g. `10.77.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// An address and prefix; prefix lengths above 32 are clamped to 32.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = if prefix_len > 32 { 32 } else { prefix_len };
        Self { addr, prefix_len }
    }

    /// The address.
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an IPv4 address with prefix (want e.g. 10.77.0.1/24)");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.trim().parse().map_err(|_| bad())?;
        if prefix_len > 32 {
            return Err(bad());
        }
        Ok(Self { addr, prefix_len })
    }
}

serde_via_str!(Ipv4Cidr);

/// An Ethernet MAC address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a MAC address (want six hex pairs, e.g. 02:00:00:00:00:01)");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

serde_via_str!(MacAddr);

/// DPDK virtual-device drivers nemflow knows how to run on.
pub const KNOWN_VDEV_DRIVERS: &[&str] = &[
    "net_tap",
    "net_null",
    "net_memif",
    "net_af_packet",
    "net_ring",
    "net_pcap",
];

/// A DPDK `--vdev` argument such as `net_tap0,iface=nftap0`, checked to name a known driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdevSpec(String);

impl VdevSpec {
    /// The whole argument.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device name (before the first comma), which is also its ethdev name.
    pub fn name(&self) -> &str {
        self.0.split(',').next().unwrap_or_default()
    }

    /// The driver (the name without its trailing instance number).
    pub fn driver(&self) -> &str {
        self.name().trim_end_matches(|c: char| c.is_ascii_digit())
    }

    /// The value of a `key=value` device argument.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.0
            .split(',')
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

impl fmt::Display for VdevSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VdevSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let spec = Self(s.trim().to_owned());
        if spec.0.chars().any(char::is_whitespace) {
            return Err(format!("vdev `{s}` contains white space"));
        }
        let driver = spec.driver();
        if !KNOWN_VDEV_DRIVERS.contains(&driver) {
            return Err(format!(
                "unknown vdev driver `{driver}` in `{s}`; allowed: {}",
                KNOWN_VDEV_DRIVERS.join(", ")
            ));
        }
        if spec.name() == driver {
            return Err(format!(
                "vdev `{s}` needs an instance number (e.g. `{driver}0`)"
            ));
        }
        if driver == "net_tap" {
            if let Some(iface) = spec.arg("iface") {
                if iface.is_empty() || iface.len() > 15 {
                    return Err(format!(
                        "net_tap iface `{iface}` must be 1..=15 characters (a Linux interface name)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

serde_via_str!(VdevSpec);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c: Ipv4Cidr = "10.77.0.1/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 77, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 77, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 77, 1, 1)));
        assert_eq!(c.to_string(), "10.77.0.1/24");
        assert!("10.0.0.1".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.1/33".parse::<Ipv4Cidr>().is_err());
        let zero: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "02:0a:00:00:00:ff".parse().unwrap();
        assert_eq!(m.0, [2, 10, 0, 0, 0, 255]);
        assert_eq!(m.to_string(), "02:0a:00:00:00:ff");
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vdev_parts() {
        let v: VdevSpec = "net_tap0,iface=nftap0,mac=fixed".parse().unwrap();
        assert_eq!(v.name(), "net_tap0");
        assert_eq!(v.driver(), "net_tap");
        assert_eq!(v.arg("iface"), Some("nftap0"));
        assert!("net_tap".parse::<VdevSpec>().is_err());
        assert!("net_bogus0".parse::<VdevSpec>().is_err());
        assert!("net_tap0,iface=waytoolonginterfacename"
            .parse::<VdevSpec>()
            .is_err());
    }
}
