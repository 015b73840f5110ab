//! Round trips through two stacks: A sends into its TX channel, the test plays the driver (pops
//! A's TX consumer, pushes into B's RX producer), B receives. Payloads of every size the stack
//! accepts (0..=65 507) at several MTUs, fragmentation included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not only #[test] fns

use nemflow_appstack::testing::{self, DriverEnds, IP_A, PORT_A};
use nemflow_appstack::{Error, ReassemblyLimits, UdpFlow, MAX_UDP_PAYLOAD};
use proptest::prelude::*;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

fn pair(mtu: u16) -> ((UdpFlow, DriverEnds), (UdpFlow, DriverEnds)) {
    let cfg = testing::config(100, ReassemblyLimits::default());
    let ((mut a, da), (mut b, db)) = testing::connected_pair(mtu, 256, cfg).unwrap();
    a.set_nonblocking(true);
    b.set_nonblocking(true);
    ((a, da), (b, db))
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Sends `data` A → B and returns what B received.
fn round_trip(
    a: &mut UdpFlow,
    da: &mut DriverEnds,
    b: &mut UdpFlow,
    db: &mut DriverEnds,
    data: &[u8],
) -> Vec<u8> {
    a.send(data).unwrap();
    let frames = da.pump_to(db).unwrap();
    assert_eq!(
        frames,
        a.counters().channel.tx_frames as usize - b.counters().channel.rx_frames as usize
    );
    let mut buf = vec![0u8; 70_000];
    let (n, src) = b.recv(&mut buf).unwrap();
    assert_eq!(src, std::net::SocketAddrV4::new(IP_A, PORT_A));
    buf.truncate(n);
    buf
}

#[test]
fn boundary_sizes_at_several_mtus() {
    for mtu in [576u16, 1000, 1280, 1500] {
        let ((mut a, mut da), (mut b, mut db)) = pair(mtu);
        let one_frame = usize::from(mtu) - 28;
        for len in [
            0,
            1,
            7,
            8,
            one_frame - 1,
            one_frame,
            one_frame + 1,
            2 * one_frame + 5,
            65_000,
            MAX_UDP_PAYLOAD,
        ] {
            let data = payload(len, len as u8);
            let got = round_trip(&mut a, &mut da, &mut b, &mut db, &data);
            assert_eq!(got.len(), len, "mtu {mtu} len {len}");
            assert!(got == data, "payload differs: mtu {mtu} len {len}");
        }
        assert!(matches!(
            a.send(&payload(MAX_UDP_PAYLOAD + 1, 0)),
            Err(Error::TooLong {
                max: MAX_UDP_PAYLOAD,
                ..
            })
        ));
        let c = b.counters();
        assert_eq!(c.unaccounted_frames(), 0, "{c:#?}");
        assert_eq!(c.rx_dropped(), 0, "{c:#?}");
        assert_eq!(c.reasm.reassembled, 4, "mtu {mtu}");
        assert_eq!(b.stack().lower().reassembler().bytes_in_use(), 0);
    }
}

#[test]
fn zero_copy_send_and_receive() {
    let ((mut a, mut da), (mut b, mut db)) = pair(576);
    // A fragmented datagram written in place, segment by segment.
    let data = payload(3000, 9);
    {
        let mut buf = a.tx_buf(data.len()).unwrap();
        assert_eq!(buf.segments(), 6); // (3000 + 8) / 552 → 6 frames
        assert!(buf.payload_mut().is_none());
        let mut at = 0;
        for i in 0..buf.segments() {
            let seg = buf.segment_mut(i).unwrap();
            let n = seg.len();
            seg.copy_from_slice(&data[at..at + n]);
            at += n;
        }
        assert_eq!(at, data.len());
        buf.send().unwrap();
    }
    // A single-frame datagram: the payload is one slice.
    {
        let mut buf = a.tx_buf(5).unwrap();
        buf.payload_mut().unwrap().copy_from_slice(b"small");
        buf.send().unwrap();
    }
    // A buffer dropped unsent goes back to the pool.
    let free_before = a.channels().tx_channel_counters();
    drop(a.tx_buf(100).unwrap());
    assert_eq!(a.channels().tx_channel_counters(), free_before);
    da.pump_to(&mut db).unwrap();
    {
        // The 6 fragments were copied into the reassembly buffer and reposted at once.
        let d = b.recv_datagram().unwrap();
        assert!(d.is_reassembled());
        assert_eq!(d.payload(), &data[..]);
    }
    {
        let d = b.recv_datagram().unwrap();
        assert!(!d.is_reassembled());
        assert_eq!(d.payload(), b"small");
        assert_eq!(d.src(), std::net::SocketAddrV4::new(IP_A, PORT_A));
    }
    // Every RX buffer is back with the driver once the guards are dropped.
    assert_eq!(posted_to_driver(&b), 256);
    assert_eq!(b.counters().channel.rx_frames, 7);
    assert!(matches!(b.recv_datagram(), Err(Error::WouldBlock)));
}

/// RX buffers the flow has handed to the driver and not popped back (iorecs out − in).
fn posted_to_driver(b: &UdpFlow) -> u64 {
    let c = b.channels().rx_channel_counters();
    c.iorecs_out - c.iorecs_in
}

#[test]
fn blocking_receive_times_out_and_wakes() {
    let ((mut a, mut da), (mut b, mut db)) = pair(1500);
    b.set_nonblocking(false);
    b.set_read_timeout(Some(std::time::Duration::from_millis(30)));
    let t = std::time::Instant::now();
    assert!(matches!(b.recv(&mut [0u8; 10]), Err(Error::TimedOut)));
    assert!(t.elapsed() >= std::time::Duration::from_millis(30));
    // Readiness through the fd: armed, nothing there yet.
    assert!(!b.prepare_wait().unwrap());
    a.send(b"wake").unwrap();
    da.pump_to(&mut db).unwrap();
    let mut fds = [PollFd::new(&b, PollFlags::IN)];
    let ts = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    assert_eq!(
        poll(&mut fds, Some(&ts)).unwrap(),
        1,
        "the RX eventfd became readable"
    );
    b.finish_wait();
    let mut buf = [0u8; 10];
    assert_eq!(b.recv(&mut buf).unwrap().0, 4);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn payload_intact_any_size_any_mtu(
        mtu in prop::sample::select(vec![576u16, 777, 1280, 1500]),
        len in prop_oneof![0usize..2000, 0usize..=MAX_UDP_PAYLOAD],
        seed in any::<u8>(),
    ) {
        let ((mut a, mut da), (mut b, mut db)) = pair(mtu);
        let data = payload(len, seed);
        let got = round_trip(&mut a, &mut da, &mut b, &mut db, &data);
        prop_assert_eq!(got.len(), len);
        prop_assert!(got == data);
        let c = b.counters();
        prop_assert_eq!(c.unaccounted_frames(), 0);
        prop_assert_eq!(c.rx_dropped(), 0);
        let frames = a.counters().channel.tx_frames as usize;
        let per = (usize::from(mtu) - 20) / 8 * 8;
        let want = if len + 28 <= usize::from(mtu) { 1 } else { (len + 8).div_ceil(per) };
        prop_assert_eq!(frames, want);
    }
}

#[test]
fn datagram_with_more_fragments_than_fifo_slots() {
    // 16 FIFO slots, 256 buffers: a 65 507-byte datagram at MTU 1500 is 45 frames.
    let geometry = nemflow_rbuf::ChannelSpec {
        data_bytes: 256 * 2048,
        slots: 16,
        max_packet_bytes: 2048,
        hugetlb: false,
    };
    let a_addr = std::net::SocketAddrV4::new(IP_A, PORT_A);
    let b_addr = std::net::SocketAddrV4::new(testing::IP_B, testing::PORT_B);
    let (ch, mut da) = testing::channels_with(
        testing::fib(
            a_addr,
            testing::MAC_A,
            Some(b_addr),
            Some(testing::MAC_B),
            1500,
        ),
        geometry,
    )
    .unwrap();
    let mut a = UdpFlow::new(ch, nemflow_appstack::FlowConfig::default()).unwrap();
    a.set_nonblocking(true);
    let ((_, _), (mut b, mut db)) = pair(1500);
    let data = payload(MAX_UDP_PAYLOAD, 1);
    a.send(&data).unwrap();
    // Accepted whole; what did not fit on the FIFO waits in the flow, in order.
    assert_eq!(a.channels().pending_frames(), 45 - 16);
    // While frames wait, a new datagram cannot start (non-blocking: WouldBlock).
    assert!(matches!(a.send(b"next"), Err(Error::WouldBlock)));
    let mut rounds = 0;
    while !a.flush().unwrap() || rounds == 0 {
        da.pump_to(&mut db).unwrap();
        rounds += 1;
        assert!(rounds < 10);
    }
    da.pump_to(&mut db).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, _) = b.recv(&mut buf).unwrap();
    assert!(buf[..n] == data[..]);
    assert_eq!(a.counters().channel.tx_frames, 45);
    assert!(a.counters().channel.tx_fifo_full >= 1);
    a.send(b"next").unwrap();
}
