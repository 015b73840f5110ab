//! ICMP errors arriving on the flow's RX channel: matched to the flow by the quoted IP and UDP
//! headers, surfaced as error events, and as `recv`/`send` errors on connected flows (Linux).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

mod common;

use std::net::SocketAddrV4;

use common::icmp_frame;
use nemflow_appstack::testing::{self, DriverEnds, IP_A, IP_B, MAC_A, MAC_B, PORT_A, PORT_B};
use nemflow_appstack::{Error, FlowConfig, IcmpErrorKind, ReassemblyLimits, UdpFlow};

fn connected(cfg: FlowConfig) -> (UdpFlow, DriverEnds) {
    let a = SocketAddrV4::new(IP_A, PORT_A);
    let b = SocketAddrV4::new(IP_B, PORT_B);
    let (mut f, d) =
        testing::udp_flow(testing::fib(a, MAC_A, Some(b), Some(MAC_B), 1500), 64, cfg).unwrap();
    f.set_nonblocking(true);
    (f, d)
}

/// Sends one datagram and returns what an ICMP error would quote: its IP header + 8 bytes.
fn sent_quote(flow: &mut UdpFlow, drv: &mut DriverEnds) -> Vec<u8> {
    flow.send(b"are you there?").unwrap();
    let frames = drv.take_frames().unwrap();
    frames[0][14..14 + 28].to_vec()
}

#[test]
fn port_unreachable_refuses_a_connected_flow_once() {
    let (mut flow, mut drv) = connected(FlowConfig::default());
    let q = sent_quote(&mut flow, &mut drv);
    assert!(drv
        .inject(&icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &q))
        .unwrap());
    let mut buf = [0u8; 64];
    match flow.recv(&mut buf) {
        Err(e @ Error::ConnectionRefused { .. }) => {
            assert_eq!(
                std::io::Error::from(e).kind(),
                std::io::ErrorKind::ConnectionRefused
            )
        }
        other => panic!("expected ConnectionRefused, got {other:?}"),
    }
    // Reported once; the event stays readable.
    assert!(matches!(flow.recv(&mut buf), Err(Error::WouldBlock)));
    let ev = flow.take_error().unwrap();
    assert_eq!(ev.kind, IcmpErrorKind::PortUnreachable);
    assert_eq!(ev.from, IP_B);
    assert_eq!(ev.dst, SocketAddrV4::new(IP_B, PORT_B));
    assert!(flow.take_error().is_none());
    let c = flow.counters();
    assert_eq!((c.icmp.passed_up, c.udp.icmp_delivered), (1, 1));
    assert_eq!(c.unaccounted_frames(), 0);
}

#[test]
fn host_unreachable_is_reported_once_then_sending_works() {
    let (mut flow, mut drv) = connected(FlowConfig::default());
    let q = sent_quote(&mut flow, &mut drv);
    assert!(drv
        .inject(&icmp_frame(IP_B, IP_A, 3, 1, [0; 4], &q))
        .unwrap());
    // The ICMP frame is an RX frame: readiness shows it, the receive path reports it.
    assert!(flow.prepare_wait().unwrap());
    flow.finish_wait();
    match flow.recv(&mut [0u8; 8]) {
        Err(Error::Unreachable {
            kind: IcmpErrorKind::HostUnreachable,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    flow.send(b"again").unwrap();
}

#[test]
fn errors_not_about_this_flow_are_counted_and_dropped() {
    let (mut flow, mut drv) = connected(FlowConfig::default());
    let q = sent_quote(&mut flow, &mut drv);
    // Another source port in the quoted UDP header.
    let mut other_port = q.clone();
    other_port[20..22].copy_from_slice(&(PORT_A + 1).to_be_bytes());
    drv.inject(&icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &other_port))
        .unwrap();
    // Another quoted source address (fix the quoted header's checksum? not checked: quoted
    // headers are often modified by NATs).
    let mut other_src = q.clone();
    other_src[12] = 192;
    drv.inject(&icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &other_src))
        .unwrap();
    // A corrupted ICMP checksum.
    let mut bad = icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &q);
    bad[36] ^= 0xff;
    drv.inject(&bad).unwrap();
    // Too short to quote a UDP header.
    drv.inject(&icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &q[..24]))
        .unwrap();
    // An echo request: not an error, not ours to answer (the flow manager does).
    drv.inject(&icmp_frame(IP_B, IP_A, 8, 0, [0, 1, 0, 1], b"ping"))
        .unwrap();
    assert!(matches!(flow.recv(&mut [0u8; 8]), Err(Error::WouldBlock)));
    assert!(flow.take_error().is_none());
    let c = flow.counters();
    assert_eq!(c.udp.icmp_not_for_flow, 1);
    assert_eq!(c.icmp.not_for_flow, 1);
    assert_eq!(c.icmp.bad_checksum, 1);
    assert_eq!(c.icmp.malformed, 1);
    assert_eq!(c.icmp.ignored, 1);
    assert_eq!(c.unaccounted_frames(), 0);
}

#[test]
fn fragmentation_needed_lowers_the_path_mtu() {
    let mut cfg = testing::config(1, ReassemblyLimits::default());
    cfg.ip.dont_fragment = true;
    let (mut flow, mut drv) = connected(cfg);
    assert_eq!(flow.max_payload(), 1472);
    let q = sent_quote(&mut flow, &mut drv);
    assert_eq!(q[6] & 0x40, 0x40, "DF set");
    // A router on the way says: next hop MTU 1000.
    drv.inject(&icmp_frame(IP_B, IP_A, 3, 4, [0, 0, 0x03, 0xe8], &q))
        .unwrap();
    match flow.recv(&mut [0u8; 8]) {
        Err(Error::MessageTooLong { dst, mtu: 1000 }) if dst == IP_B => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(flow.path_mtu(IP_B), 1000);
    assert_eq!(flow.max_payload(), 972);
    assert!(matches!(
        flow.send(&[0u8; 1472]),
        Err(Error::TooLong { max: 972, .. })
    ));
    flow.send(&[0u8; 972]).unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(frames[0].len(), 14 + 1000);
    // A forged tiny MTU is clamped (Linux's min_pmtu).
    drv.inject(&icmp_frame(IP_B, IP_A, 3, 4, [0, 0, 0, 68], &q))
        .unwrap();
    let _ = flow.recv(&mut [0u8; 8]);
    assert_eq!(flow.path_mtu(IP_B), 552);
}

#[test]
fn unconnected_flow_gets_events_not_errors() {
    let a = SocketAddrV4::new(IP_A, PORT_A);
    let (mut flow, mut drv) = testing::udp_flow(
        testing::fib(a, MAC_A, None, None, 1500),
        64,
        FlowConfig::default(),
    )
    .unwrap();
    flow.set_nonblocking(true);
    flow.add_neighbour(IP_B, MAC_B);
    flow.send_to(b"x", SocketAddrV4::new(IP_B, PORT_B)).unwrap();
    let q = drv.take_frames().unwrap()[0][14..42].to_vec();
    for _ in 0..20 {
        drv.inject(&icmp_frame(IP_B, IP_A, 3, 3, [0; 4], &q))
            .unwrap();
    }
    assert!(matches!(flow.recv(&mut [0u8; 8]), Err(Error::WouldBlock)));
    // The queue is bounded (16 by default); older events were dropped and counted.
    assert_eq!(flow.pending_errors(), 16);
    assert_eq!(flow.counters().flow.events_overflowed, 4);
    assert_eq!(
        flow.take_error().unwrap().kind,
        IcmpErrorKind::PortUnreachable
    );
}
