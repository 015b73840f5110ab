//! Where unconnected sends go (neighbour cache, resolver, gateway, broadcast, multicast), and a
//! raw-ethertype flow's receive path.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use nemflow_appstack::testing::{self, IP_A, IP_B, MAC_A, MAC_B, PORT_A, PORT_B};
use nemflow_appstack::{Error, FlowConfig, Resolver};
use nemflow_testkit::frames::PEER_MAC;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn unconnected(
    gateway: Option<Ipv4Addr>,
    gw_mac: Option<[u8; 6]>,
) -> (nemflow_appstack::UdpFlow, testing::DriverEnds) {
    let mut f = testing::fib(SocketAddrV4::new(IP_A, PORT_A), MAC_A, None, gw_mac, 1500);
    f.gateway = gateway;
    testing::udp_flow(f, 16, FlowConfig::default()).unwrap()
}

/// Asks nobody: answers from a table and records what it was asked.
struct TableResolver {
    table: Vec<(Ipv4Addr, [u8; 6])>,
    asked: Arc<Mutex<Vec<Ipv4Addr>>>,
}

impl Resolver for TableResolver {
    fn resolve(&mut self, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, String> {
        self.asked.lock().unwrap().push(ip);
        if ip == Ipv4Addr::new(10, 9, 0, 66) {
            return Err("flow manager gone".into());
        }
        Ok(self.table.iter().find(|(a, _)| *a == ip).map(|(_, m)| *m))
    }
}

#[test]
fn resolver_is_asked_once_then_cached() {
    let (mut flow, mut drv) = unconnected(None, None);
    let asked = Arc::new(Mutex::new(Vec::new()));
    flow.set_resolver(Box::new(TableResolver {
        table: vec![(IP_B, MAC_B)],
        asked: asked.clone(),
    }));
    let b = SocketAddrV4::new(IP_B, PORT_B);
    flow.send_to(b"1", b).unwrap();
    flow.send_to(b"2", b).unwrap();
    assert_eq!(*asked.lock().unwrap(), vec![IP_B]);
    let frames = drv.take_frames().unwrap();
    assert!(frames.iter().all(|f| f[..6] == MAC_B));
    assert!(matches!(
        flow.send_to(b"x", SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 7), 1)),
        Err(Error::NoNeighbour(_))
    ));
    assert!(matches!(
        flow.send_to(b"x", SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 66), 1)),
        Err(Error::Resolver { .. })
    ));
    assert!(
        drv.take_frames().unwrap().is_empty(),
        "failed sends send nothing"
    );
}

#[test]
fn off_link_goes_to_the_gateway_or_fails() {
    let far = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 53);
    let (mut flow, mut drv) = unconnected(Some(Ipv4Addr::new(10, 9, 0, 254)), Some(GW_MAC));
    flow.send_to(b"q", far).unwrap();
    let f = &drv.take_frames().unwrap()[0];
    assert_eq!(&f[..6], &GW_MAC);
    assert_eq!(
        &f[30..34],
        &[192, 0, 2, 10],
        "IP destination is the far host"
    );
    let (mut flow, _) = unconnected(None, None);
    assert!(matches!(flow.send_to(b"q", far), Err(Error::NoRoute(_))));
    assert!(matches!(
        flow.send_to(b"q", SocketAddrV4::new(IP_B, 0)),
        Err(Error::InvalidDestination(_))
    ));
}

#[test]
fn broadcast_and_multicast_macs() {
    let (mut flow, mut drv) = unconnected(None, None);
    flow.send_to(b"b", SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
        .unwrap();
    flow.send_to(b"s", SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 255), 67))
        .unwrap();
    flow.send_to(b"m", SocketAddrV4::new(Ipv4Addr::new(239, 1, 2, 3), 5000))
        .unwrap();
    let frames = drv.take_frames().unwrap();
    assert_eq!(&frames[0][..6], &[0xff; 6]);
    assert_eq!(&frames[1][..6], &[0xff; 6]);
    assert_eq!(&frames[2][..6], &[0x01, 0x00, 0x5e, 0x01, 0x02, 0x03]);
}

#[test]
fn connected_flow_refuses_other_destinations() {
    let a = SocketAddrV4::new(IP_A, PORT_A);
    let b = SocketAddrV4::new(IP_B, PORT_B);
    let (mut flow, _) = testing::udp_flow(
        testing::fib(a, MAC_A, Some(b), Some(MAC_B), 1500),
        8,
        FlowConfig::default(),
    )
    .unwrap();
    flow.send_to(b"ok", b).unwrap();
    assert!(matches!(
        flow.send_to(b"no", SocketAddrV4::new(IP_B, 1)),
        Err(Error::IsConnected { .. })
    ));
}

#[test]
fn raw_flow_receives_its_ethertype_only() {
    let f = testing::fib(SocketAddrV4::new(IP_A, 0), MAC_A, None, Some(MAC_B), 1500);
    let (mut flow, mut drv) = testing::raw_flow(f, 0x88b5, 8).unwrap();
    flow.set_nonblocking(true);
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAC_A);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(b"payload");
    drv.inject(&frame).unwrap();
    let mut other = frame.clone();
    other[12..14].copy_from_slice(&[0x08, 0x00]);
    drv.inject(&other).unwrap();
    drv.inject(&frame[..10]).unwrap();
    let mut buf = [0u8; 64];
    let (n, src) = flow.recv(&mut buf).unwrap();
    assert_eq!((&buf[..n], src), (&b"payload"[..], PEER_MAC));
    assert!(matches!(flow.recv(&mut buf), Err(Error::WouldBlock)));
    let c = flow.counters();
    assert_eq!(
        (c.eth.rx_up, c.eth.wrong_ethertype, c.eth.truncated),
        (1, 1, 1)
    );
    assert!(matches!(
        flow.send(&[0u8; 1501]),
        Err(Error::TooLong { max: 1500, .. })
    ));
}
