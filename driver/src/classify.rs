//! Receive classification: what a frame is, as far as demultiplexing needs to know, and every
//! reason it may be malformed.
//!
//! This is policing, not a general wire-format parser: it reads exactly the fields the filters
//! match on, checks exactly what must hold for that match to be trustworthy (versions, header
//! lengths, total length inside the frame, the transport header present), and names the first
//! check that failed so that each reason has its own counter. IP options are skipped by the
//! header length, never interpreted, so they cannot move the ports a filter sees; source-route
//! options are refused outright.

use std::net::Ipv4Addr;

use nemflow_proto::flow::{ethertype, ip_proto};

/// Why a received frame was dropped before reaching any flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    Runt,
    /// 802.1Q-tagged: nemflow's port is untagged.
    VlanTagged,
    /// IPv4 frame too short for an IPv4 header.
    IpTruncated,
    /// IP version is not 4.
    IpVersion,
    /// IPv4 header length below 5 words or past the frame.
    IpHeaderLength,
    /// IPv4 total length below the header or past the frame.
    IpTotalLength,
    /// IPv4 header checksum wrong.
    IpChecksum,
    /// Loose or strict source route option.
    IpSourceRoute,
    /// A first fragment (or unfragmented datagram) too short for its transport header.
    L4Truncated,
    /// A later fragment whose first fragment was not seen (or has expired).
    FragmentOrphan,
    /// Fragment state is full.
    FragmentTableFull,
    /// Frame larger than the port's maximum.
    Oversize,
}

impl Malformed {
    /// Every reason, for listing counters.
    pub const ALL: [Malformed; 12] = [
        Malformed::Runt,
        Malformed::VlanTagged,
        Malformed::IpTruncated,
        Malformed::IpVersion,
        Malformed::IpHeaderLength,
        Malformed::IpTotalLength,
        Malformed::IpChecksum,
        Malformed::IpSourceRoute,
        Malformed::L4Truncated,
        Malformed::FragmentOrphan,
        Malformed::FragmentTableFull,
        Malformed::Oversize,
    ];

    /// Counter name (snake case).
    pub fn name(self) -> &'static str {
        match self {
            Malformed::Runt => "runt",
            Malformed::VlanTagged => "vlan_tagged",
            Malformed::IpTruncated => "ip_truncated",
            Malformed::IpVersion => "ip_version",
            Malformed::IpHeaderLength => "ip_header_length",
            Malformed::IpTotalLength => "ip_total_length",
            Malformed::IpChecksum => "ip_checksum",
            Malformed::IpSourceRoute => "ip_source_route",
            Malformed::L4Truncated => "l4_truncated",
            Malformed::FragmentOrphan => "fragment_orphan",
            Malformed::FragmentTableFull => "fragment_table_full",
            Malformed::Oversize => "oversize",
        }
    }
}

/// The fields of a received IPv4 datagram that filters match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Identification (for fragments).
    pub ident: u16,
    /// Fragment offset in bytes.
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Source and destination port, when this is a first fragment (or whole datagram) of UDP or
    /// TCP.
    pub ports: Option<(u16, u16)>,
    /// For ICMP errors: the quoted datagram's protocol, source and destination with ports.
    pub icmp_quote: Option<IcmpQuote>,
}

impl Ipv4Info {
    /// Whether this is a fragment other than the first.
    pub fn is_later_fragment(&self) -> bool {
        self.frag_offset != 0
    }

    /// Whether this is the first of several fragments.
    pub fn is_first_fragment(&self) -> bool {
        self.frag_offset == 0 && self.more_fragments
    }
}

/// The datagram an ICMP error quotes (one this host sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpQuote {
    /// Quoted protocol.
    pub proto: u8,
    /// Quoted source (this host) address and port.
    pub src: (Ipv4Addr, u16),
    /// Quoted destination address and port.
    pub dst: (Ipv4Addr, u16),
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// An IPv4 datagram (or fragment).
    Ipv4(Ipv4Info),
    /// Any other ethertype (ARP included).
    Other(u16),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// The ones'-complement sum of `bytes` folded to 16 bits (the Internet checksum before the
/// final complement).
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks a received frame and extracts what filters match on. `max_frame` is the largest frame
/// (without FCS) the port accepts.
pub fn parse(frame: &[u8], max_frame: usize) -> Result<Parsed, Malformed> {
    if frame.len() < 14 {
        return Err(Malformed::Runt);
    }
    if frame.len() > max_frame {
        return Err(Malformed::Oversize);
    }
    let ethertype = be16(frame, 12);
    if ethertype == ethertype::VLAN {
        return Err(Malformed::VlanTagged);
    }
    if ethertype != ethertype::IPV4 {
        return Ok(Parsed::Other(ethertype));
    }
    parse_ipv4(&frame[14..], true).map(Parsed::Ipv4)
}

/// Parses an IPv4 header at the start of `ip` (`outer`: a received datagram, whose ICMP errors
/// are looked into; a quoted datagram is not).
fn parse_ipv4(ip: &[u8], outer: bool) -> Result<Ipv4Info, Malformed> {
    if ip.len() < 20 {
        return Err(Malformed::IpTruncated);
    }
    if ip[0] >> 4 != 4 {
        return Err(Malformed::IpVersion);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ihl > ip.len() {
        return Err(Malformed::IpHeaderLength);
    }
    let total = usize::from(be16(ip, 2));
    // A quoted datagram is cut short by design; only its header is checked.
    if outer && (total < ihl || total > ip.len()) {
        return Err(Malformed::IpTotalLength);
    }
    if outer && ones_complement_sum(&ip[..ihl]) != 0xffff {
        return Err(Malformed::IpChecksum);
    }
    if ihl > 20 && has_source_route(&ip[20..ihl]) {
        return Err(Malformed::IpSourceRoute);
    }
    let flags_frag = be16(ip, 6);
    let frag_offset = (flags_frag & 0x1fff) * 8;
    let more_fragments = flags_frag & 0x2000 != 0;
    let proto = ip[9];
    let end = if outer { total } else { ip.len() };
    let l4 = &ip[ihl..end];
    let mut info = Ipv4Info {
        src: addr(ip, 12),
        dst: addr(ip, 16),
        proto,
        ident: be16(ip, 4),
        frag_offset,
        more_fragments,
        ports: None,
        icmp_quote: None,
    };
    if frag_offset == 0 {
        match proto {
            ip_proto::UDP | ip_proto::TCP => {
                // The ports are the first 4 bytes of both headers; the rest of the header must be
                // there too for the flow to trust it (8 bytes UDP, 20 TCP). A quote carries 8.
                let need = match (outer, proto) {
                    (false, _) | (true, ip_proto::UDP) => 8,
                    _ => 20,
                };
                if l4.len() < need {
                    return Err(Malformed::L4Truncated);
                }
                info.ports = Some((be16(l4, 0), be16(l4, 2)));
            }
            ip_proto::ICMP if outer => {
                if l4.len() < 8 {
                    return Err(Malformed::L4Truncated);
                }
                // Destination unreachable, source quench, time exceeded, parameter problem
                // quote the offending datagram after the 8-byte ICMP header.
                if matches!(l4[0], 3 | 4 | 11 | 12) {
                    if let Ok(q) = parse_ipv4(&l4[8..], false) {
                        if let (Some((sp, dp)), 0) = (q.ports, q.frag_offset) {
                            info.icmp_quote = Some(IcmpQuote {
                                proto: q.proto,
                                src: (q.src, sp),
                                dst: (q.dst, dp),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Whether IPv4 options contain a loose (131) or strict (137) source route. Walks the options
/// with a bounded loop; malformed options end the walk.
fn has_source_route(mut opts: &[u8]) -> bool {
    while let Some(&kind) = opts.first() {
        match kind {
            0 => return false,
            1 => opts = &opts[1..],
            131 | 137 => return true,
            _ => {
                let len = opts.get(1).copied().map_or(0, usize::from);
                if len < 2 || len > opts.len() {
                    return false;
                }
                opts = &opts[len..];
            }
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use nemflow_testkit::frames::fix_ip_checksum;

    /// A UDP frame with correct checksums; `ip_extra` are option bytes (a multiple of 4).
    pub(crate) fn udp_frame(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
        ip_extra: &[u8],
    ) -> Vec<u8> {
        let mut f = nemflow_testkit::frames::UdpFrame::new(
            std::net::SocketAddrV4::new(src.into(), sport),
            std::net::SocketAddrV4::new(dst.into(), dport),
            payload,
        );
        f.ip_options = ip_extra.to_vec();
        f.build()
    }

    #[test]
    fn udp_ports_are_found() {
        let f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 5000, 7000, b"hi", &[]);
        let Parsed::Ipv4(info) = parse(&f, 1514).unwrap() else {
            panic!()
        };
        assert_eq!(info.ports, Some((5000, 7000)));
        assert_eq!(info.src, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(info.proto, ip_proto::UDP);
        assert!(!info.is_later_fragment());
    }

    #[test]
    fn options_do_not_move_the_ports() {
        // A record-route-like option of 8 bytes (type 7): the ports come after it.
        let opts = [7, 8, 4, 0, 0, 0, 0, 0];
        let f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 5000, 7000, b"x", &opts);
        let Parsed::Ipv4(info) = parse(&f, 1514).unwrap() else {
            panic!()
        };
        assert_eq!(info.ports, Some((5000, 7000)));
        let lsrr = [131, 7, 4, 10, 0, 0, 9, 0];
        let f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 5000, 7000, b"x", &lsrr);
        assert_eq!(parse(&f, 1514), Err(Malformed::IpSourceRoute));
    }

    #[test]
    fn each_malformation_has_its_reason() {
        let good = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 1, 2, b"abcd", &[]);
        assert_eq!(parse(&good[..13], 1514), Err(Malformed::Runt));
        assert_eq!(parse(&good, 40), Err(Malformed::Oversize));
        assert_eq!(parse(&good[..30], 1514), Err(Malformed::IpTruncated));

        let mut v = good.clone();
        v[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(parse(&v, 1514), Err(Malformed::VlanTagged));

        let mut v = good.clone();
        v[14] = 0x65;
        assert_eq!(parse(&v, 1514), Err(Malformed::IpVersion));

        let mut v = good.clone();
        v[14] = 0x44;
        fix_ip_checksum(&mut v);
        assert_eq!(parse(&v, 1514), Err(Malformed::IpHeaderLength));

        let mut v = good.clone();
        v[16..18].copy_from_slice(&2000u16.to_be_bytes());
        fix_ip_checksum(&mut v);
        assert_eq!(parse(&v, 1514), Err(Malformed::IpTotalLength));

        let mut v = good.clone();
        v[16..18].copy_from_slice(&24u16.to_be_bytes());
        fix_ip_checksum(&mut v);
        assert_eq!(parse(&v, 1514), Err(Malformed::L4Truncated));

        let mut v = good.clone();
        v[22] ^= 1;
        assert_eq!(parse(&v, 1514), Err(Malformed::IpChecksum));
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 1, 2, &[0u8; 16], &[]);
        f[20..22].copy_from_slice(&(0x2000u16 | 3).to_be_bytes()); // MF, offset 24
        fix_ip_checksum(&mut f);
        let Parsed::Ipv4(info) = parse(&f, 1514).unwrap() else {
            panic!()
        };
        assert!(info.is_later_fragment());
        assert_eq!(info.frag_offset, 24);
        assert_eq!(info.ports, None);
    }

    #[test]
    fn icmp_error_quotes_are_read() {
        let quoted = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 4000, 9, b"payload", &[]);
        let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        let total = 20 + icmp.len();
        let mut f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 0, 0, &[], &[]);
        f.truncate(14 + 20);
        f.extend_from_slice(&icmp);
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[23] = ip_proto::ICMP;
        fix_ip_checksum(&mut f);
        let Parsed::Ipv4(info) = parse(&f, 1514).unwrap() else {
            panic!()
        };
        let q = info.icmp_quote.expect("quote");
        assert_eq!(q.proto, ip_proto::UDP);
        assert_eq!(q.src, (Ipv4Addr::new(10, 0, 0, 1), 4000));
        assert_eq!(q.dst, (Ipv4Addr::new(10, 0, 0, 2), 9));
    }

    #[test]
    fn other_ethertypes_pass_through() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&f, 1514), Ok(Parsed::Other(ethertype::ARP)));
    }
}
