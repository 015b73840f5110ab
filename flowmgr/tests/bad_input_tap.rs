//! Bad input on the wire, sent from the remote host to a real nemflow host (driver + flow
//! manager on net_tap): each kind is dropped or answered as it must be, and counted — the
//! counters are asserted, not just "no crash".

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Client;
use nemflow_testkit::driver::DriverOptions;
use nemflow_testkit::frames::{fix_ip_checksum, UdpFrame, HOST_MAC, PEER_MAC};
use nemflow_testkit::system::NemflowHost;
use nemflow_testkit::{require_root, RawSocket};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Named counters, as `nemflow stats` lists them.
type Counters = Vec<(String, u64)>;

fn host() -> NemflowHost {
    require_root();
    NemflowHost::start(&DriverOptions::default(), "").unwrap()
}

/// The flow manager's counter `name` and the port's drop counter `drop`, as `nemflow stats`.
fn counters(host: &NemflowHost) -> (Counters, Counters) {
    let mut c = Client::connect(&host.socket).unwrap();
    let s = c.stats().unwrap();
    (s.flowmgr, s.port.drops)
}

fn get(list: &[(String, u64)], name: &str) -> u64 {
    list.iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no counter {name} in {list:?}"), |(_, v)| *v)
}

/// Waits until `cond` holds on fresh counters, or 5 s.
fn until(
    host: &NemflowHost,
    cond: impl Fn(&[(String, u64)], &[(String, u64)]) -> bool,
) -> (Counters, Counters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (f, d) = counters(host);
        if cond(&f, &d) || Instant::now() > deadline {
            return (f, d);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn frame(ethertype: [u8; 2], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&HOST_MAC);
    f[6..12].copy_from_slice(&PEER_MAC);
    f[12..14].copy_from_slice(&ethertype);
    f
}

#[test]
fn malformed_and_odd_frames_each_have_their_counter() {
    let host = host();
    let remote = RawSocket::bind_in(&host.driver.netns, &host.driver.iface).unwrap();
    // Frames larger than the port's 1514 bytes need a larger MTU on the sending side.
    nemflow_testkit::ip(&[
        "-n",
        &host.driver.netns,
        "link",
        "set",
        &host.driver.iface,
        "mtu",
        "3000",
    ])
    .unwrap();
    let (f0, d0) = counters(&host);
    let to = |port| {
        UdpFrame::new(
            SocketAddrV4::new(PEER, 5000),
            SocketAddrV4::new(HOST, port),
            b"bad input",
        )
    };
    // An unknown ethertype: not ours to drop, the flow manager's to count.
    remote.send(&frame([0x88, 0xb6], 60)).unwrap();
    // VLAN-tagged.
    remote.send(&frame([0x81, 0x00], 64)).unwrap();
    // Oversize.
    let mut big = to(9).build();
    big.resize(2000, 0);
    remote.send(&big).unwrap();
    // IHL below 5.
    let mut ihl = to(9).build();
    ihl[14] = 0x44;
    fix_ip_checksum(&mut ihl);
    remote.send(&ihl).unwrap();
    // Bad version, bad total length, bad checksum.
    let mut v6 = to(9).build();
    v6[14] = 0x65;
    remote.send(&v6).unwrap();
    let mut len = to(9).build();
    len[16..18].copy_from_slice(&4000u16.to_be_bytes());
    fix_ip_checksum(&mut len);
    remote.send(&len).unwrap();
    let mut ck = to(9).build();
    ck[24] ^= 0xff;
    remote.send(&ck).unwrap();
    // Source-routed.
    let mut ssrr = to(9);
    ssrr.ip_options = vec![137, 7, 4, 10, 77, 0, 9, 0];
    remote.send(&ssrr.build()).unwrap();
    // A UDP first fragment too short for its header, and a lone middle fragment that never
    // completes (held, then expired as an orphan after a second).
    let mut short = to(9).build();
    short.truncate(14 + 20 + 4);
    short[16..18].copy_from_slice(&24u16.to_be_bytes());
    short[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ip_checksum(&mut short);
    remote.send(&short).unwrap();
    let lone = UdpFrame {
        fragment: (800, true),
        ..to(9)
    }
    .build();
    remote.send(&lone).unwrap();
    let delta = |list: &[(String, u64)], base: &[(String, u64)], name: &str| {
        get(list, name) - get(base, name)
    };
    let (f1, d1) = until(&host, |f, d| {
        delta(f, &f0, "other_ethertype") >= 1 && delta(d, &d0, "fragment_orphan") >= 1
    });
    for (name, n) in [
        ("vlan_tagged", 1),
        ("oversize", 1),
        ("ip_header_length", 1),
        ("ip_version", 1),
        ("ip_total_length", 1),
        ("ip_checksum", 1),
        ("ip_source_route", 1),
        ("l4_truncated", 1),
        ("fragment_orphan", 1),
    ] {
        assert_eq!(delta(&d1, &d0, name), n, "driver counter {name}: {d1:?}");
    }
    assert_eq!(delta(&f1, &f0, "other_ethertype"), 1, "{f1:?}");
    // None of it earned a reply: no ICMP error for a malformed datagram.
    assert_eq!(delta(&f1, &f0, "udp_port_unreachable"), 0);
}

#[test]
fn a_flood_to_closed_ports_meets_the_rate_limit() {
    let host = host();
    let remote = RawSocket::bind_in(&host.driver.netns, &host.driver.iface).unwrap();
    remote.set_recv_buffer(16 << 20).unwrap();
    // The remote host's side of the tap queues 1000 frames by default and drops the rest
    // (counted by its kernel, not by nemflow) when the driver is slow to read on a loaded
    // machine: let it hold the whole flood, so every datagram reaches the driver.
    let status = std::process::Command::new("ip")
        .args(["-n", &host.driver.netns, "link", "set", "dev"])
        .args([host.driver.iface.as_str(), "txqueuelen", "4096"])
        .status()
        .unwrap();
    assert!(status.success());
    let (f0, d0) = counters(&host);
    let start = Instant::now();
    for i in 0..2000u16 {
        remote
            .send(
                &UdpFrame::new(
                    SocketAddrV4::new(PEER, 5000 + i),
                    SocketAddrV4::new(HOST, 30000 + i),
                    b"x",
                )
                .build(),
            )
            .unwrap();
    }
    // Wait until the flow manager has dealt with every datagram: answered, counted as limited,
    // or dropped by the driver for its full channel (it is isolated like any other flow).
    let settled =
        |f: &[(String, u64)], d: &[(String, u64)], f0: &[(String, u64)], d0: &[(String, u64)]| {
            let answered = get(f, "udp_port_unreachable") - get(f0, "udp_port_unreachable");
            let limited = get(f, "errors_rate_limited") - get(f0, "errors_rate_limited");
            let unread = get(d, "unmatched") - get(d0, "unmatched");
            (answered, limited, unread)
        };
    let (f1, d1) = until(&host, |f, d| {
        let (a, l, u) = settled(f, d, &f0, &d0);
        a + l + u >= 2000
    });
    // The limiter can only have refilled for as long as the datagrams took to be dealt with.
    let busy_for = start.elapsed();
    let (answered, limited, unread) = settled(&f1, &d1, &f0, &d0);
    assert_eq!(
        answered + limited + unread,
        2000,
        "every datagram answered, counted as limited, or dropped for the flow manager's full channel"
    );
    // The config's defaults: a burst of 50 and 100 a second.
    let bound = 50.0 + busy_for.as_secs_f64() * 100.0;
    assert!(
        answered as f64 <= bound,
        "{answered} port unreachables in {busy_for:?}: limit {bound}"
    );
    assert!(limited > 0, "the rest were counted as rate-limited: {f1:?}");
    // Every error counted as sent reaches the remote host.
    let mut icmp = 0;
    while icmp < answered {
        let got = remote.recv_matching(Duration::from_secs(2), |f| {
            f.len() > 34 && f[6..12] == HOST_MAC && f[23] == 1 && f[34] == 3
        });
        if got.is_none() {
            break;
        }
        icmp += 1;
    }
    assert_eq!(
        icmp, answered,
        "what was counted as sent reached the remote host"
    );
}

#[test]
fn a_claim_on_our_address_is_a_conflict_not_a_takeover() {
    let host = host();
    let remote = RawSocket::bind_in(&host.driver.netns, &host.driver.iface).unwrap();
    let (f0, _) = counters(&host);
    // Gratuitous ARP from the remote host: "10.77.0.1 is at 02:66:66:66:66:66".
    let mut arp = frame([0x08, 0x06], 60);
    arp[..6].copy_from_slice(&[0xff; 6]);
    arp[6..12].copy_from_slice(&[2, 0x66, 0x66, 0x66, 0x66, 0x66]);
    arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    arp[22..28].copy_from_slice(&[2, 0x66, 0x66, 0x66, 0x66, 0x66]);
    arp[28..32].copy_from_slice(&HOST.octets());
    arp[32..38].copy_from_slice(&[0xff; 6]);
    arp[38..42].copy_from_slice(&HOST.octets());
    remote.send(&arp).unwrap();
    let (f1, _) = until(&host, |f, _| {
        get(f, "arp_conflicts") > get(&f0, "arp_conflicts")
    });
    assert_eq!(get(&f1, "arp_conflicts") - get(&f0, "arp_conflicts"), 1);
    // The host still answers for its address with its own MAC.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.driver.netns,
            "arping",
            "-c",
            "1",
            "-w",
            "2",
            "-I",
            &host.driver.iface,
            "10.77.0.1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("02:4e:46:00:00:01"), "{text}");
    let mut c = Client::connect(&host.socket).unwrap();
    assert!(
        !c.arp().unwrap().iter().any(|e| e.ip == HOST),
        "our own address never enters the neighbour cache"
    );
}
