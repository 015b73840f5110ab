//! Frames built by hand for the receive-path tests (independently of the stack's own emit code):
//! checksums through testkit's `internet_checksum`.

#![allow(dead_code)]

use std::net::Ipv4Addr;

use nemflow_appstack::testing::MAC_A;
use nemflow_testkit::frames::{internet_checksum, PEER_MAC};

/// An Ethernet + IPv4 frame to host A: `proto`, identification, fragment offset (bytes) and MF,
/// carrying `data` as the IP payload.
pub fn ip_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
    offset: usize,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + data.len());
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + data.len()) as u16;
    let fw = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[6..8].copy_from_slice(&fw.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let ck = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(data);
    f
}

/// A UDP datagram (header + payload) with its checksum.
pub fn udp_bytes(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + u.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&u);
    let ck = match internet_checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&ck.to_be_bytes());
    u
}

/// The fragments (offset, more, bytes) of `ip_payload` cut into `per`-byte pieces.
pub fn cut(ip_payload: &[u8], per: usize) -> Vec<(usize, bool, Vec<u8>)> {
    let n = ip_payload.len().div_ceil(per);
    (0..n)
        .map(|i| {
            let end = ((i + 1) * per).min(ip_payload.len());
            (i * per, i + 1 < n, ip_payload[i * per..end].to_vec())
        })
        .collect()
}

/// An ICMP error (type, code, the 4 "rest of header" bytes) from `src` to `dst` quoting `quoted`
/// (the offending datagram's IP header and first bytes).
pub fn icmp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let ck = internet_checksum(&m);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    ip_frame(src, dst, 1, 0x7777, 0, false, &m)
}
