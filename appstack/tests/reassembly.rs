//! Reassembly on the receive path, fed with hand-built fragments: overlapping, duplicate,
//! missing and oversize fragments, the timeout, and the memory bound under a flood.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cut, ip_frame, udp_bytes};
use nemflow_appstack::reasm::{FragKey, Reassembler, FRAGMENT_OVERHEAD};
use nemflow_appstack::testing::{self, DriverEnds, IP_A, IP_B, MAC_A, PORT_A, PORT_B};
use nemflow_appstack::{Error, ReassemblyLimits, UdpFlow};
use proptest::prelude::*;

/// Flow A, unconnected, with a clock the test advances (seconds).
fn flow(limits: ReassemblyLimits) -> (UdpFlow, DriverEnds, Arc<AtomicU64>) {
    let f = testing::fib(SocketAddrV4::new(IP_A, PORT_A), MAC_A, None, None, 1500);
    let (mut flow, drv) = testing::udp_flow(f, 256, testing::config(1, limits)).unwrap();
    flow.set_nonblocking(true);
    let secs = Arc::new(AtomicU64::new(0));
    let s2 = secs.clone();
    let t0 = Instant::now();
    flow.set_clock(move || t0 + Duration::from_secs(s2.load(Ordering::Relaxed)));
    (flow, drv, secs)
}

fn datagram(len: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
    let udp = udp_bytes(IP_B, PORT_B, IP_A, PORT_A, &payload);
    (payload, udp)
}

fn inject(drv: &mut DriverEnds, id: u16, off: usize, more: bool, data: &[u8]) {
    assert!(drv
        .inject(&ip_frame(IP_B, IP_A, 17, id, off, more, data))
        .unwrap());
}

fn recv_all(flow: &mut UdpFlow) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        match flow.recv(&mut buf) {
            Ok((n, src)) => {
                assert_eq!(src, SocketAddrV4::new(IP_B, PORT_B));
                out.push(buf[..n].to_vec());
            }
            Err(Error::WouldBlock) => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn out_of_order_fragments_reassemble() {
    let (mut flow, mut drv, _) = flow(ReassemblyLimits::default());
    let (payload, udp) = datagram(4000, 3);
    let mut frags = cut(&udp, 1480);
    frags.reverse();
    for (off, more, d) in &frags {
        inject(&mut drv, 9, *off, *more, d);
    }
    assert_eq!(recv_all(&mut flow), vec![payload]);
    let c = flow.counters();
    assert_eq!((c.reasm.queued, c.reasm.reassembled), (3, 1));
    assert_eq!(c.unaccounted_frames(), 0);
}

#[test]
fn duplicate_fragment_is_dropped_and_datagram_completes() {
    let (mut flow, mut drv, _) = flow(ReassemblyLimits::default());
    let (payload, udp) = datagram(3000, 5);
    let frags = cut(&udp, 1480);
    inject(&mut drv, 1, frags[0].0, frags[0].1, &frags[0].2);
    inject(&mut drv, 1, frags[0].0, frags[0].1, &frags[0].2);
    inject(&mut drv, 1, frags[1].0, frags[1].1, &frags[1].2);
    inject(&mut drv, 1, frags[2].0, frags[2].1, &frags[2].2);
    assert_eq!(recv_all(&mut flow), vec![payload]);
    let c = flow.counters();
    assert_eq!((c.reasm.duplicate, c.reasm.reassembled), (1, 1));
    assert_eq!(c.unaccounted_frames(), 0);
}

#[test]
fn overlapping_fragment_discards_the_datagram() {
    let (mut flow, mut drv, _) = flow(ReassemblyLimits::default());
    let (payload, udp) = datagram(3000, 7);
    let frags = cut(&udp, 1480);
    inject(&mut drv, 2, 0, true, &frags[0].2);
    // Overlaps the first fragment's tail by 8 bytes, with other bytes: no guessing.
    inject(&mut drv, 2, 1472, true, &[0xEE; 1480]);
    for (off, more, d) in &frags[1..] {
        inject(&mut drv, 2, *off, *more, d);
    }
    assert!(recv_all(&mut flow).is_empty());
    let c = flow.counters();
    assert_eq!(c.reasm.overlap, 1);
    // The late fragments started a new datagram, incomplete without the first one: it comes
    // again (a retransmission by the application above) and completes it.
    inject(&mut drv, 2, 0, true, &frags[0].2);
    assert_eq!(recv_all(&mut flow), vec![payload]);
    assert_eq!(flow.counters().unaccounted_frames(), 0);
}

#[test]
fn missing_fragment_times_out_and_frees_memory() {
    let limits = ReassemblyLimits {
        timeout: Duration::from_secs(30),
        ..ReassemblyLimits::default()
    };
    let (mut flow, mut drv, secs) = flow(limits);
    let (_, udp) = datagram(3000, 1);
    let frags = cut(&udp, 1480);
    inject(&mut drv, 3, frags[0].0, frags[0].1, &frags[0].2);
    inject(&mut drv, 3, frags[2].0, frags[2].1, &frags[2].2);
    assert!(recv_all(&mut flow).is_empty());
    let held = flow.stack().lower().reassembler().bytes_in_use();
    assert_eq!(
        held,
        frags[0].2.len() + frags[2].2.len() + 2 * FRAGMENT_OVERHEAD
    );
    secs.store(29, Ordering::Relaxed);
    assert!(recv_all(&mut flow).is_empty());
    assert_eq!(flow.stack().lower().reassembler().in_progress(), 1);
    secs.store(30, Ordering::Relaxed);
    assert!(recv_all(&mut flow).is_empty());
    let r = flow.stack().lower().reassembler();
    assert_eq!((r.in_progress(), r.bytes_in_use()), (0, 0));
    assert_eq!(flow.counters().reasm.timed_out, 1);
    // The missing fragment arriving late starts a new datagram, which also times out.
    inject(&mut drv, 3, frags[1].0, frags[1].1, &frags[1].2);
    assert!(recv_all(&mut flow).is_empty());
    secs.store(61, Ordering::Relaxed);
    assert!(recv_all(&mut flow).is_empty());
    assert_eq!(flow.counters().reasm.timed_out, 2);
}

#[test]
fn oversize_fragments_are_refused() {
    let (mut flow, mut drv, _) = flow(ReassemblyLimits::default());
    let (_, udp) = datagram(100, 1);
    inject(&mut drv, 4, 0, true, &udp[..64]);
    // Offset 65 512 + 16 bytes = past 65 515 bytes of payload (total length > 65 535).
    inject(&mut drv, 4, 65_512, false, &[0u8; 16]);
    // A last fragment that lands exactly at the limit is fine on its own.
    inject(&mut drv, 5, 65_512, false, &[0u8; 3]);
    assert!(recv_all(&mut flow).is_empty());
    let c = flow.counters();
    assert_eq!(c.reasm.oversize, 1);
    let r = flow.stack().lower().reassembler();
    assert_eq!(
        r.in_progress(),
        1,
        "datagram 4 was discarded, 5 is in progress"
    );
    assert_eq!(c.unaccounted_frames(), 0);
}

#[test]
fn flood_of_incomplete_datagrams_stays_within_bounds() {
    let limits = ReassemblyLimits {
        max_bytes: 64 * 1024,
        max_datagrams: 8,
        timeout: Duration::from_secs(30),
    };
    let (mut flow, mut drv, _) = flow(limits);
    let junk = vec![0xAB; 1480];
    for id in 0..2000u16 {
        // First fragments of datagrams that never complete, two per id.
        inject(&mut drv, id, 0, true, &junk);
        inject(&mut drv, id, 1480, true, &junk);
        assert!(recv_all(&mut flow).is_empty());
        let r = flow.stack().lower().reassembler();
        assert!(
            r.bytes_in_use() <= limits.max_bytes,
            "{} bytes held",
            r.bytes_in_use()
        );
        assert!(r.in_progress() <= limits.max_datagrams);
    }
    let r = flow.stack().lower().reassembler();
    assert!(r.peak_bytes() <= limits.max_bytes);
    assert!(flow.counters().reasm.evicted >= 1990);
    // A real datagram still gets through the flood.
    let (payload, udp) = datagram(4000, 9);
    for (off, more, d) in cut(&udp, 1480) {
        inject(&mut drv, 9999, off, more, &d);
    }
    assert_eq!(recv_all(&mut flow), vec![payload]);
    assert_eq!(flow.counters().unaccounted_frames(), 0);
}

#[test]
fn datagram_larger_than_the_budget_is_discarded() {
    let limits = ReassemblyLimits {
        max_bytes: 10_000,
        max_datagrams: 4,
        timeout: Duration::from_secs(30),
    };
    let (mut flow, mut drv, _) = flow(limits);
    let (_, udp) = datagram(20_000, 1);
    for (off, more, d) in cut(&udp, 1480) {
        inject(&mut drv, 1, off, more, &d);
        let r = flow.stack().lower().reassembler();
        assert!(r.bytes_in_use() <= limits.max_bytes);
    }
    assert!(recv_all(&mut flow).is_empty());
    assert!(flow.counters().reasm.over_budget >= 1);
}

fn key(id: u16) -> FragKey {
    FragKey {
        src: IP_B,
        dst: IP_A,
        proto: 17,
        id,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random fragments of a few real datagrams, shuffled, duplicated, shifted (overlaps),
    /// dropped, with time passing: the bounds always hold, every fragment gets one disposition,
    /// and whatever completes is exactly the datagram sent under that id.
    #[test]
    fn reassembler_bounds_and_correctness(
        ops in prop::collection::vec((0u16..4, 0usize..12, any::<bool>(), 0u8..6, 0u64..20), 1..200),
        max_bytes in 200usize..40_000,
        max_datagrams in 1usize..5,
    ) {
        let limits = ReassemblyLimits { max_bytes, max_datagrams, timeout: Duration::from_secs(30) };
        let mut r = Reassembler::new(limits);
        let datagrams: Vec<Vec<u8>> = (0..4u8).map(|i| (0..(1000 + 1500 * usize::from(i))).map(|b| (b as u8) ^ i.wrapping_mul(77)).collect()).collect();
        let t0 = Instant::now();
        let mut t = 0u64;
        let mut fragments = 0u64;
        // Ids whose datagram in progress holds a fragment that lied (shifted, wrong MF, cut): a
        // "datagram" completed from it is what was sent, just not the original one.
        let mut tainted = [false; 4];
        for (id, piece, more_lie, mangle, dt) in ops {
            t += dt;
            let d = &datagrams[usize::from(id)];
            let frags = cut(d, 800);
            let (mut off, mut more, mut data) = frags[piece % frags.len()].clone();
            let orig = (off, more, data.len());
            match mangle {
                0 => off += 8,                              // shifted: overlaps
                1 => more = more_lie,                       // a lie about MF
                2 => data.truncate(data.len().saturating_sub(3).max(1)), // odd length
                _ => {}
            }
            let lied = orig != (off, more, data.len());
            fragments += 1;
            let queued = r.counters().queued;
            let out = r.insert(key(id), off, more, &data, t0 + Duration::from_secs(t));
            if lied && r.counters().queued > queued {
                tainted[usize::from(id)] = true;
            }
            if let Some(out) = out {
                if !tainted[usize::from(id)] {
                    prop_assert_eq!(&out, d, "completed datagram {} differs", id);
                }
                tainted[usize::from(id)] = false;
            }
            prop_assert!(r.bytes_in_use() <= max_bytes);
            prop_assert!(r.in_progress() <= max_datagrams);
        }
        let c = r.counters();
        prop_assert_eq!(c.queued + c.dropped(), fragments);
    }
}
