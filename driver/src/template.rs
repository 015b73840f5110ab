//! Transmit policing: a frame an application wants sent must match its flow's template.
//!
//! The check runs on the driver's private copy of the frame (in the mbuf), never on the
//! application's data area, which the application may rewrite at any moment.

use nemflow_proto::flow::{ethertype, ip_proto, Template, TemplateKind};

use crate::classify::ones_complement_sum;

/// Why a transmitted frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// Shorter than the headers the template fixes.
    TooShort,
    /// Larger than the port's maximum frame.
    TooLong,
    /// Source MAC differs.
    SrcMac,
    /// Ethertype differs (VLAN tags included).
    Ethertype,
    /// Not IPv4 version 4 with a 20-byte header (applications may not send IP options).
    IpHeader,
    /// IPv4 total length inconsistent with the frame.
    IpLength,
    /// IPv4 header checksum wrong.
    IpChecksum,
    /// Source address differs.
    SrcIp,
    /// Protocol differs.
    Protocol,
    /// Source port differs.
    SrcPort,
    /// Destination address or port differs (connected flows).
    Destination,
    /// Transport length field inconsistent with the datagram (UDP).
    L4Length,
}

impl Violation {
    /// Counter name.
    pub fn name(self) -> &'static str {
        match self {
            Violation::TooShort => "too_short",
            Violation::TooLong => "too_long",
            Violation::SrcMac => "src_mac",
            Violation::Ethertype => "ethertype",
            Violation::IpHeader => "ip_header",
            Violation::IpLength => "ip_length",
            Violation::IpChecksum => "ip_checksum",
            Violation::SrcIp => "src_ip",
            Violation::Protocol => "protocol",
            Violation::SrcPort => "src_port",
            Violation::Destination => "destination",
            Violation::L4Length => "l4_length",
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks `frame` against `template`; `max_frame` bounds its length.
pub fn check(template: &Template, frame: &[u8], max_frame: usize) -> Result<(), Violation> {
    if frame.len() > max_frame {
        return Err(Violation::TooLong);
    }
    if matches!(template.kind, TemplateKind::Any) {
        // The flow manager's own flow: trusted, but still a whole Ethernet header.
        return if frame.len() < 14 {
            Err(Violation::TooShort)
        } else {
            Ok(())
        };
    }
    if frame.len() < 14 {
        return Err(Violation::TooShort);
    }
    if frame[6..12] != template.src_mac {
        return Err(Violation::SrcMac);
    }
    let et = be16(frame, 12);
    match template.kind {
        TemplateKind::Any => Ok(()),
        TemplateKind::Ethertype(want) => {
            if et == want {
                Ok(())
            } else {
                Err(Violation::Ethertype)
            }
        }
        TemplateKind::Ipv4 {
            src,
            proto,
            src_port,
            dst,
        } => {
            if et != ethertype::IPV4 {
                return Err(Violation::Ethertype);
            }
            let ip = &frame[14..];
            if ip.len() < 20 {
                return Err(Violation::TooShort);
            }
            if ip[0] != 0x45 {
                return Err(Violation::IpHeader);
            }
            let total = usize::from(be16(ip, 2));
            if total < 20 || total > ip.len() {
                return Err(Violation::IpLength);
            }
            if ones_complement_sum(&ip[..20]) != 0xffff {
                return Err(Violation::IpChecksum);
            }
            if ip[12..16] != src.octets() {
                return Err(Violation::SrcIp);
            }
            if ip[9] != proto {
                return Err(Violation::Protocol);
            }
            if let Some(d) = dst {
                if ip[16..20] != d.ip().octets() {
                    return Err(Violation::Destination);
                }
            }
            let frag_offset = be16(ip, 6) & 0x1fff;
            if frag_offset != 0 {
                // Later fragments carry no transport header; address and protocol are checked.
                return Ok(());
            }
            let l4 = &ip[20..total];
            let need = if proto == ip_proto::TCP { 20 } else { 8 };
            if l4.len() < need {
                return Err(Violation::TooShort);
            }
            if be16(l4, 0) != src_port {
                return Err(Violation::SrcPort);
            }
            if let Some(d) = dst {
                if be16(l4, 2) != d.port() {
                    return Err(Violation::Destination);
                }
            }
            if proto == ip_proto::UDP {
                let more_fragments = be16(ip, 6) & 0x2000 != 0;
                let udp_len = usize::from(be16(l4, 4));
                // Unfragmented: the UDP length is the datagram's; first fragment: at least it.
                let ok = if more_fragments {
                    udp_len >= l4.len()
                } else {
                    udp_len == l4.len()
                };
                if !ok || udp_len < 8 {
                    return Err(Violation::L4Length);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::tests::{fix_ip_checksum, udp_frame};
    use std::net::{Ipv4Addr, SocketAddrV4};

    const MAC: [u8; 6] = nemflow_testkit::frames::PEER_MAC;

    fn tmpl(dst: Option<SocketAddrV4>) -> Template {
        Template {
            src_mac: MAC,
            kind: TemplateKind::Ipv4 {
                src: Ipv4Addr::new(10, 0, 0, 1),
                proto: ip_proto::UDP,
                src_port: 7000,
                dst,
            },
        }
    }

    fn good() -> Vec<u8> {
        udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 7000, 5000, b"payload", &[])
    }

    #[test]
    fn matching_frames_pass() {
        assert_eq!(check(&tmpl(None), &good(), 1514), Ok(()));
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000);
        assert_eq!(check(&tmpl(Some(dst)), &good(), 1514), Ok(()));
    }

    #[test]
    fn every_spoof_is_caught() {
        let t = tmpl(Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 5000)));
        let cases: Vec<(Vec<u8>, Violation)> = vec![
            (
                udp_frame([10, 0, 0, 9], [10, 0, 0, 2], 7000, 5000, b"p", &[]),
                Violation::SrcIp,
            ),
            (
                udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 7001, 5000, b"p", &[]),
                Violation::SrcPort,
            ),
            (
                udp_frame([10, 0, 0, 1], [10, 0, 0, 3], 7000, 5000, b"p", &[]),
                Violation::Destination,
            ),
            (
                udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 7000, 5001, b"p", &[]),
                Violation::Destination,
            ),
            (
                udp_frame(
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                    7000,
                    5000,
                    b"p",
                    &[1, 1, 1, 1],
                ),
                Violation::IpHeader,
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(check(&t, &frame, 1514), Err(want));
        }
        let mut f = good();
        f[6] = 9;
        assert_eq!(check(&t, &f, 1514), Err(Violation::SrcMac));
        let mut f = good();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(check(&t, &f, 1514), Err(Violation::Ethertype));
        let mut f = good();
        f[23] = ip_proto::TCP;
        fix_ip_checksum(&mut f);
        assert_eq!(check(&t, &f, 1514), Err(Violation::Protocol));
        let mut f = good();
        f[16..18].copy_from_slice(&500u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        assert_eq!(check(&t, &f, 1514), Err(Violation::IpLength));
        let mut f = good();
        f[26] ^= 0xff;
        assert_eq!(check(&t, &f, 1514), Err(Violation::IpChecksum));
        let mut f = good();
        f[38..40].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(check(&t, &f, 1514), Err(Violation::L4Length));
        assert_eq!(check(&t, &good()[..20], 1514), Err(Violation::TooShort));
        assert_eq!(check(&t, &good(), 40), Err(Violation::TooLong));
    }

    #[test]
    fn later_fragments_check_addresses_only() {
        let t = tmpl(None);
        let mut f = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"data", &[]);
        f[20..22].copy_from_slice(&3u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        assert_eq!(check(&t, &f, 1514), Ok(()));
        let mut f = udp_frame([10, 0, 0, 9], [10, 0, 0, 2], 1, 2, b"data", &[]);
        f[20..22].copy_from_slice(&3u16.to_be_bytes());
        fix_ip_checksum(&mut f);
        assert_eq!(check(&t, &f, 1514), Err(Violation::SrcIp));
    }
}
