//! The DPDK safe layer on a real net_tap device: frames cross between the port and an
//! AF_PACKET socket on the kernel's tap interface byte for byte, both ways, and nothing is
//! left behind. Two copies of the test run at once (nextest: one process each) to show that
//! unique file prefixes and interface names keep them apart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::time::Duration;

use nemflow_driver::dpdk::{Eal, EthPort, Mempool, PortConf};
use nemflow_driver::port::{Frame, Port};
use nemflow_testkit::{
    dpdk_runtime_dir, iface_exists, require_root, unique_name, DpdkPrefixGuard, IfaceGuard,
    RawSocket,
};

/// IEEE 802 "local experimental" ethertype: the kernel never sends it by itself.
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn frame(dst: [u8; 6], src: [u8; 6], tag: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7) ^ tag));
    f
}

fn round_trip() {
    require_root();
    let prefix = DpdkPrefixGuard::new("tap");
    let iface = unique_name("nft");
    let _iface_guard = IfaceGuard(iface.clone());
    let vdev = format!("net_tap0,iface={iface}");
    {
        let eal = Eal::init(&[
            "dpdk_tap",
            "--no-huge",
            "-m",
            "256",
            "-l",
            "0",
            "--no-pci",
            "--file-prefix",
            &prefix.prefix,
            "--vdev",
            &vdev,
        ])
        .expect("EAL init");
        let pool = Mempool::new(&eal, "test_pool", 2047, 2048).expect("mempool");
        let mut port = EthPort::open(&eal, "net_tap0", &PortConf::default(), &pool).expect("port");
        assert!(iface_exists(&iface), "net_tap created {iface}");
        // Quiet the kernel side (no IPv6 autoconfiguration chatter) and bring it up.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"), "1");
        nemflow_testkit::ip(&["link", "set", &iface, "up"]).expect("link up");
        let sock = RawSocket::bind(&iface).expect("AF_PACKET socket");
        let port_mac = port.mac();

        // Port -> kernel: several sizes, each checked byte for byte.
        for (tag, len) in [(1u8, 60usize), (2, 514), (3, 1514)] {
            let want = frame([0xff; 6], port_mac, tag, len);
            let mut m = port.alloc(want.len()).expect("mbuf");
            m.bytes_mut().copy_from_slice(&want);
            let mut burst = vec![m];
            assert_eq!(port.send(&mut burst), 1);
            assert!(burst.is_empty(), "the PMD took ownership");
            let got = sock
                .recv_matching(Duration::from_secs(5), |f| {
                    f.len() > 14 && f[12..14] == TEST_ETHERTYPE && f[14] == want[14]
                })
                .expect("frame from the port reaches the kernel interface");
            assert_eq!(got, want, "frame of {len} bytes arrives byte for byte");
        }

        // Kernel -> port.
        for (tag, len) in [(9u8, 60usize), (10, 1000), (11, 1514)] {
            let want = frame(port_mac, [0x02, 0, 0, 0, 0, 0x99], tag, len);
            sock.send(&want).expect("send on AF_PACKET");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut got = None;
            while got.is_none() && std::time::Instant::now() < deadline {
                let mut rx = Vec::new();
                port.recv(&mut rx, 32);
                got = rx
                    .into_iter()
                    .find(|m| m.data() == want.as_slice())
                    .map(|m| m.data().to_vec());
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                got.as_deref(),
                Some(want.as_slice()),
                "frame of {len} bytes received byte for byte"
            );
        }
        let stats = port.stats();
        assert!(stats.tx_packets >= 3 && stats.rx_packets >= 3, "{stats:?}");
        assert!(port.link().up);
        assert!(!port.xstats().is_empty(), "xstats are readable");
        drop(port);
        drop(eal);
    }
    assert!(
        !iface_exists(&iface),
        "tap interface {iface} removed with the EAL"
    );
    drop(prefix);
}

#[test]
fn tap_round_trip_first() {
    round_trip();
}

#[test]
fn tap_round_trip_second() {
    round_trip();
}

#[test]
fn runtime_dir_is_removed_with_the_eal() {
    // DPDK itself leaves /var/run/dpdk/<prefix> behind; `Eal`'s drop removes it. (The guard
    // covers a test that dies before the drop.)
    require_root();
    let prefix = DpdkPrefixGuard::new("rt");
    let dir = dpdk_runtime_dir(&prefix.prefix);
    let eal = Eal::init(&[
        "rt",
        "--no-huge",
        "-m",
        "128",
        "-l",
        "0",
        "--no-pci",
        "--file-prefix",
        &prefix.prefix,
    ])
    .expect("EAL init");
    assert!(dir.exists(), "DPDK made {}", dir.display());
    assert_eq!(eal.runtime_dir().as_deref(), Some(dir.as_path()));
    drop(eal);
    assert!(!dir.exists(), "{} removed", dir.display());
}
