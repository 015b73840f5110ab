//! The mmap'd receive ring against a veth pair between two namespaces: every frame arrives whole
//! and in order, and what a full ring could not take is counted as dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::time::{Duration, Instant};

use nemflow_testkit::{require_root, unique_name, Netns, RawSocket, RingConfig, RxRing};

/// An ethertype for local experiments (IEEE 802 "local experimental 1").
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// Two namespaces joined by a veth pair, IPv6 off so that nothing but our frames crosses.
struct Link {
    a: Netns,
    b: Netns,
    a_if: String,
    b_if: String,
}

fn link() -> Link {
    require_root();
    let (a, b) = (Netns::new("rra").unwrap(), Netns::new("rrb").unwrap());
    let (a_if, b_if) = (unique_name("rva"), unique_name("rvb"));
    for ns in [&a, &b] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .unwrap();
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            .unwrap();
    }
    nemflow_testkit::ip(&[
        "link",
        "add",
        &a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ])
    .unwrap();
    a.exec(&["ip", "link", "set", &a_if, "up"]).unwrap();
    b.exec(&["ip", "link", "set", &b_if, "up"]).unwrap();
    Link { a, b, a_if, b_if }
}

fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0b]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (seq as usize + i) as u8;
    }
    f
}

#[test]
fn every_frame_arrives_whole_and_in_order() {
    let l = link();
    let tx = RawSocket::bind_in(l.a.name(), &l.a_if).unwrap();
    let config = RingConfig {
        block_bytes: 1 << 16,
        blocks: 64,
        frame_bytes: 2048,
        retire_ms: 5,
        incoming_only: true,
    };
    let mut ring = RxRing::bind_in(l.b.name(), &l.b_if, config).unwrap();
    let total = 50_000u32;
    let mut sent = 0u32;
    let mut got = 0u32;
    let mut last_seq = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < total && Instant::now() < deadline {
        // Send a burst (lengths from the minimum to a full frame), then read what came.
        while sent < total && sent - got < 1000 {
            tx.send(&frame(sent, 60 + (sent as usize * 7) % 1455))
                .unwrap();
            sent += 1;
        }
        let Some(block) = ring.next_block(Duration::from_millis(100)).unwrap() else {
            continue;
        };
        if let Some(prev) = last_seq {
            assert_eq!(block.seq(), prev + 1, "blocks come in sequence");
        }
        last_seq = Some(block.seq());
        for f in block.frames() {
            let f = f.unwrap();
            assert_eq!(f.pkttype, libc::PACKET_OTHERHOST);
            assert_eq!(f.data.len() as u32, f.wire_len);
            let seq = u32::from_be_bytes(f.data[14..18].try_into().unwrap());
            assert_eq!(seq, got, "in order, none missing");
            assert_eq!(f.data, frame(seq, f.data.len()), "frame {seq} whole");
            assert!(f.timestamp_ns > 0);
            got += 1;
        }
    }
    assert_eq!(got, total);
    let st = ring.stats().unwrap();
    assert_eq!(st.drops, 0, "{st:?}");
    assert_eq!(st.packets, u64::from(total), "{st:?}");
}

#[test]
fn a_full_ring_counts_its_drops() {
    let l = link();
    let tx = RawSocket::bind_in(l.a.name(), &l.a_if).unwrap();
    // Two 4 KiB blocks: a few dozen small frames, then the ring is full until read.
    let config = RingConfig {
        block_bytes: 4096,
        blocks: 2,
        frame_bytes: 2048,
        retire_ms: 1,
        incoming_only: true,
    };
    let mut ring = RxRing::bind_in(l.b.name(), &l.b_if, config).unwrap();
    let sent = 500u32;
    for seq in 0..sent {
        tx.send(&frame(seq, 60)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut got = Vec::new();
    while let Some(block) = ring.next_block(Duration::from_millis(50)).unwrap() {
        for f in block.frames() {
            let f = f.unwrap();
            got.push(u32::from_be_bytes(f.data[14..18].try_into().unwrap()));
        }
    }
    let st = ring.stats().unwrap();
    assert!(st.drops > 0, "{st:?}");
    assert!(got.len() < 100, "only what fitted: {}", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(got.len() as u64 + st.drops, u64::from(sent), "{st:?}");
    assert_eq!(st.packets, u64::from(sent), "{st:?}");
}

#[test]
fn a_vlan_tag_the_kernel_strips_is_put_back() {
    let l = link();
    let tx = RawSocket::bind_in(l.a.name(), &l.a_if).unwrap();
    let mut ring = RxRing::bind_in(l.b.name(), &l.b_if, RingConfig::default()).unwrap();
    let mut sent = Vec::new();
    for (tpid, tci) in [(0x8100u16, 0x2005u16), (0x88a8, 0x0123)] {
        let mut f = frame(sent.len() as u32, 64);
        f.splice(
            12..12,
            tpid.to_be_bytes().into_iter().chain(tci.to_be_bytes()),
        );
        tx.send(&f).unwrap();
        sent.push((f, tpid, tci));
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < sent.len() && Instant::now() < deadline {
        if let Some(block) = ring.next_block(Duration::from_millis(50)).unwrap() {
            for f in block.frames() {
                let f = f.unwrap();
                let tag = f.vlan.expect("the kernel strips the outer tag");
                got.push((f.wire_bytes().into_owned(), tag.tpid, tag.tci));
            }
        }
    }
    assert_eq!(got, sent);
}
