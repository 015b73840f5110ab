//! Golden bytes for every header the stack emits: a UDP datagram, the fragments of a fragmented
//! one, a raw frame, and the templates. The expected bytes were computed by hand (a separate
//! script, values written out here) and are cross-checked with two independent checksum
//! routines (testkit's and smoltcp's) on the emitted bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

use std::net::SocketAddrV4;

use nemflow_appstack::testing::{self, IP_A, IP_B, MAC_A, MAC_B, PORT_A, PORT_B};
use nemflow_appstack::ReassemblyLimits;
use nemflow_testkit::frames::internet_checksum;
use smoltcp::wire::{IpAddress, Ipv4Packet, UdpPacket};

const ETH_A_TO_B: [u8; 14] = [
    0x02, 0x4e, 0x46, 0x00, 0x00, 0x0b, // dst: B
    0x02, 0x4e, 0x46, 0x00, 0x00, 0x0a, // src: A
    0x08, 0x00, // IPv4
];

/// "hello" from 10.9.0.1:5001 to 10.9.0.2:6002, IP id 0x1234.
const HELLO: [u8; 47] = [
    0x02, 0x4e, 0x46, 0x00, 0x00, 0x0b, 0x02, 0x4e, 0x46, 0x00, 0x00, 0x0a, 0x08, 0x00, //
    0x45, 0x00, 0x00, 0x21, 0x12, 0x34, 0x00, 0x00, 0x40, 0x11, 0x54,
    0x84, // IPv4, csum 0x5484
    0x0a, 0x09, 0x00, 0x01, 0x0a, 0x09, 0x00, 0x02, //
    0x13, 0x89, 0x17, 0x72, 0x00, 0x0d, 0x7c, 0xf2, // UDP, len 13, csum 0x7cf2
    b'h', b'e', b'l', b'l', b'o',
];

/// IPv4 headers of a 100-byte payload at IP MTU 68 (48 data bytes per fragment): 48 + 48 + 12.
const FRAG_IP: [[u8; 20]; 3] = [
    [
        0x45, 0x00, 0x00, 0x44, 0x12, 0x34, 0x20, 0x00, 0x40, 0x11, 0x34, 0x61, 0x0a, 0x09, 0x00,
        0x01, 0x0a, 0x09, 0x00, 0x02,
    ],
    [
        0x45, 0x00, 0x00, 0x44, 0x12, 0x34, 0x20, 0x06, 0x40, 0x11, 0x34, 0x5b, 0x0a, 0x09, 0x00,
        0x01, 0x0a, 0x09, 0x00, 0x02,
    ],
    [
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x00, 0x0c, 0x40, 0x11, 0x54, 0x79, 0x0a, 0x09, 0x00,
        0x01, 0x0a, 0x09, 0x00, 0x02,
    ],
];
/// The UDP header of that datagram (length 108, checksum over all 100 payload bytes).
const FRAG_UDP: [u8; 8] = [0x13, 0x89, 0x17, 0x72, 0x00, 0x6c, 0x24, 0x39];

fn a() -> SocketAddrV4 {
    SocketAddrV4::new(IP_A, PORT_A)
}
fn b() -> SocketAddrV4 {
    SocketAddrV4::new(IP_B, PORT_B)
}

/// Checks a frame's IPv4 checksum with testkit's routine and smoltcp's.
fn assert_ip_checksum(frame: &[u8]) {
    assert_eq!(
        internet_checksum(&frame[14..34]),
        0,
        "testkit: IPv4 header sums to 0xffff"
    );
    assert!(Ipv4Packet::new_checked(&frame[14..])
        .unwrap()
        .verify_checksum());
}

#[test]
fn udp_datagram_golden_bytes() {
    let cfg = testing::config(0x1234, ReassemblyLimits::default());
    let f = testing::fib(a(), MAC_A, Some(b()), Some(MAC_B), 1500);
    let (mut flow, mut drv) = testing::udp_flow(f, 16, cfg).unwrap();
    flow.send(b"hello").unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0], HELLO);
    assert_ip_checksum(&frames[0]);
    // UDP: pseudo-header + datagram sums to 0xffff (testkit), and smoltcp agrees.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&IP_A.octets());
    pseudo.extend_from_slice(&IP_B.octets());
    pseudo.extend_from_slice(&[0, 17, 0, 13]);
    pseudo.extend_from_slice(&frames[0][34..]);
    assert_eq!(internet_checksum(&pseudo), 0);
    let udp = UdpPacket::new_checked(&frames[0][34..]).unwrap();
    assert!(udp.verify_checksum(&IpAddress::Ipv4(IP_A), &IpAddress::Ipv4(IP_B)));
    // The next datagram takes the next identification.
    flow.send(b"hello").unwrap();
    let f2 = drv.take_frames().unwrap();
    assert_eq!(&f2[0][18..20], &[0x12, 0x35]);
    assert_ip_checksum(&f2[0]);
}

#[test]
fn fragmented_datagram_golden_bytes() {
    let cfg = testing::config(0x1234, ReassemblyLimits::default());
    let f = testing::fib(a(), MAC_A, Some(b()), Some(MAC_B), 68);
    let (mut flow, mut drv) = testing::udp_flow(f, 16, cfg).unwrap();
    let payload: Vec<u8> = (0..100u8).collect();
    flow.send(&payload).unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(frames.len(), 3);
    let mut reassembled = Vec::new();
    for (i, fr) in frames.iter().enumerate() {
        assert_eq!(&fr[..14], &ETH_A_TO_B);
        assert_eq!(&fr[14..34], &FRAG_IP[i], "fragment {i} IPv4 header");
        assert_ip_checksum(fr);
        reassembled.extend_from_slice(&fr[34..]);
    }
    assert_eq!(&reassembled[..8], &FRAG_UDP);
    assert_eq!(&reassembled[8..], &payload[..]);
    // The UDP checksum covers the whole datagram across fragments: smoltcp verifies it on the
    // reassembled bytes.
    let udp = UdpPacket::new_checked(&reassembled[..]).unwrap();
    assert!(udp.verify_checksum(&IpAddress::Ipv4(IP_A), &IpAddress::Ipv4(IP_B)));
}

#[test]
fn unconnected_send_to_patches_destination() {
    let cfg = testing::config(0x1234, ReassemblyLimits::default());
    let f = testing::fib(a(), MAC_A, None, None, 1500);
    let (mut flow, mut drv) = testing::udp_flow(f, 16, cfg).unwrap();
    // No MAC known for B yet: a clear error, nothing sent.
    assert!(matches!(
        flow.send_to(b"hello", b()),
        Err(nemflow_appstack::Error::NoNeighbour(ip)) if ip == IP_B
    ));
    assert!(matches!(
        flow.send(b"x"),
        Err(nemflow_appstack::Error::NotConnected)
    ));
    flow.add_neighbour(IP_B, MAC_B);
    flow.send_to(b"hello", b()).unwrap();
    let frames = drv.take_frames().unwrap();
    // Same bytes as the connected flow's: the per-packet destination is patched in, and the
    // checksums (template sum + destination words) come out the same.
    assert_eq!(frames[0], HELLO);
}

#[test]
fn templates_are_one_emit_per_layer() {
    let cfg = testing::config(0, ReassemblyLimits::default());
    let f = testing::fib(a(), MAC_A, Some(b()), Some(MAC_B), 1500);
    let (flow, _drv) = testing::udp_flow(f, 4, cfg).unwrap();
    let t = flow.header_template();
    let mut want = Vec::new();
    want.extend_from_slice(&ETH_A_TO_B);
    want.extend_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 9, 0, 1, 10, 9, 0, 2,
    ]);
    want.extend_from_slice(&[0x13, 0x89, 0x17, 0x72, 0, 0, 0, 0]);
    assert_eq!(t, want);
}

#[test]
fn raw_frame_golden_bytes() {
    let f = testing::fib(a(), MAC_A, None, Some(MAC_B), 1500);
    let (mut flow, mut drv) = testing::raw_flow(f, 0x88b5, 8).unwrap();
    flow.send(b"raw!").unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(
        frames[0],
        [
            0x02, 0x4e, 0x46, 0x00, 0x00, 0x0b, 0x02, 0x4e, 0x46, 0x00, 0x00, 0x0a, 0x88, 0xb5,
            b'r', b'a', b'w', b'!'
        ]
    );
    flow.send_to(b"x", [0xff; 6]).unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(&frames[0][..6], &[0xff; 6]);
}
