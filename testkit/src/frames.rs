//! Hand-made frames for tests, including broken ones: builders produce correct headers and
//! checksums, and the raw bytes can then be damaged on purpose.

use std::net::SocketAddrV4;

/// MAC of the test peer ("remote host") in frames built here.
pub const PEER_MAC: [u8; 6] = [0x02, 0x4e, 0x46, 0xff, 0x00, 0x02];
/// MAC of the nemflow host in frames built here.
pub const HOST_MAC: [u8; 6] = [0x02, 0x4e, 0x46, 0x00, 0x00, 0x01];

/// The Internet checksum of `bytes` (ones' complement of the ones' complement sum).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in bytes.chunks(2) {
        let word = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP-in-IPv4-in-Ethernet frame under construction.
#[derive(Debug, Clone)]
pub struct UdpFrame {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ip_options: Vec<u8>,
    /// IPv4 identification.
    pub ident: u16,
    /// Fragment offset in bytes (a multiple of 8) and the more-fragments flag.
    pub fragment: (u16, bool),
    /// UDP payload.
    pub payload: Vec<u8>,
}

impl UdpFrame {
    /// A frame from `src` to `dst` with `payload`, peer MAC to host MAC.
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self {
            dst_mac: HOST_MAC,
            src_mac: PEER_MAC,
            src,
            dst,
            ip_options: Vec::new(),
            ident: 0x1234,
            fragment: (0, false),
            payload: payload.to_vec(),
        }
    }

    /// The bytes: Ethernet, IPv4 (checksummed), and, unless this is a later fragment, a UDP
    /// header (checksummed over the pseudo-header) followed by the payload. For a later fragment
    /// `payload` is the fragment's data as is.
    pub fn build(&self) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let l4_len = if self.fragment.0 == 0 {
            8 + self.payload.len()
        } else {
            self.payload.len()
        };
        let total = ihl + l4_len;
        let mut f = Vec::with_capacity(14 + total);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        let frag = (self.fragment.0 / 8) | if self.fragment.1 { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src.ip().octets());
        ip[16..20].copy_from_slice(&self.dst.ip().octets());
        ip[20..].copy_from_slice(&self.ip_options);
        let ck = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        f.extend_from_slice(&ip);
        if self.fragment.0 == 0 {
            let udp_len = (8 + self.payload.len()) as u16;
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
            udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
            udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
            udp.extend_from_slice(&self.payload);
            let mut pseudo = Vec::with_capacity(12 + udp.len());
            pseudo.extend_from_slice(&self.src.ip().octets());
            pseudo.extend_from_slice(&self.dst.ip().octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            pseudo.extend_from_slice(&udp);
            let ck = match internet_checksum(&pseudo) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&ck.to_be_bytes());
            f.extend_from_slice(&udp);
        } else {
            f.extend_from_slice(&self.payload);
        }
        f
    }
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place (after damaging a field).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let ck = internet_checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&ck.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_checksum() {
        // The classic example header from RFC 1071 discussions (checksum 0xb861).
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&hdr), 0xb861);
    }

    #[test]
    fn built_frame_verifies() {
        let f = UdpFrame::new(
            "10.0.0.2:5000".parse().unwrap(),
            "10.0.0.1:7000".parse().unwrap(),
            b"hello",
        )
        .build();
        assert_eq!(f.len(), 14 + 20 + 8 + 5);
        assert_eq!(internet_checksum(&f[14..34]), 0, "header sums to zero");
    }
}
