//! TCP between two flows in memory (a thread plays the wire between their channels): the
//! handshake both ways, the SYN handed over, bulk data both ways, close, reset, refusal,
//! loss, non-blocking use with the readiness fd, and headers the driver's template accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_proto::app::Incoming;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, TcpPacket};

use super::isn::seq_after;
use super::{TcpConfig, TcpStream};
use crate::testing::{self, DriverEnds, IP_A, IP_B, MAC_A, MAC_B};
use crate::Error;

const A: SocketAddrV4 = SocketAddrV4::new(IP_A, 40000);
const B: SocketAddrV4 = SocketAddrV4::new(IP_B, 80);

fn cfg() -> TcpConfig {
    TcpConfig {
        linger: Duration::from_secs(5),
        ..TcpConfig::default()
    }
}

/// Stream A (client side) and stream B (server side) over fresh channels, with the driver
/// ends of each.
fn pair(slots: u32) -> ((TcpStream, DriverEnds), (TcpStream, DriverEnds)) {
    let fa = testing::fib(A, MAC_A, Some(B), Some(MAC_B), 1500);
    let fb = testing::fib(B, MAC_B, Some(A), Some(MAC_A), 1500);
    let (ca, da) = testing::channels(fa, slots).unwrap();
    let (cb, db) = testing::channels(fb, slots).unwrap();
    (
        (TcpStream::from_channels(ca, None, &cfg()).unwrap(), da),
        (TcpStream::from_channels(cb, None, &cfg()).unwrap(), db),
    )
}

/// Checks a frame as the driver's template for the flow `from` → `to` would, and more: source
/// MAC and ethertype, a 20-byte IPv4 header with a right checksum and total length, the
/// addresses and ports, and the TCP checksum.
fn assert_policed(frame: &[u8], from: (SocketAddrV4, [u8; 6]), to: (SocketAddrV4, [u8; 6])) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.src_addr().0, from.1);
    assert_eq!(eth.dst_addr().0, to.1);
    assert_eq!(u16::from(eth.ethertype()), 0x0800);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(frame[14], 0x45, "no IP options");
    assert_eq!(usize::from(ip.total_len()), frame.len() - 14);
    assert!(ip.verify_checksum());
    assert_eq!(ip.frag_offset(), 0);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (*from.0.ip(), *to.0.ip()));
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((t.src_port(), t.dst_port()), (from.0.port(), to.0.port()));
    assert!(t.verify_checksum(&IpAddress::Ipv4(*from.0.ip()), &IpAddress::Ipv4(*to.0.ip())));
    let _ = ChecksumCapabilities::default();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn handshake_bulk_both_ways_and_close_with_policed_headers() {
    let ((mut a, mut da), (mut b, mut db)) = pair(256);
    b.listen_on_flow().unwrap();
    a.connect_on_flow().unwrap();
    // The SYN: one frame, as the template wants it.
    let syn = da.take_frames().unwrap();
    assert_eq!(syn.len(), 1);
    assert_policed(&syn[0], (A, MAC_A), (B, MAC_B));
    db.inject(&syn[0]).unwrap();
    b.poll().unwrap();
    let synack = db.take_frames().unwrap();
    assert_eq!(synack.len(), 1);
    assert_policed(&synack[0], (B, MAC_B), (A, MAC_A));
    da.inject(&synack[0]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    let up = pattern(3 << 20, 1);
    let down = pattern(2 << 20, 7);
    let (up2, down2) = (up.clone(), down.clone());
    let server = std::thread::spawn(move || {
        let got = read_to_end(&mut b);
        b.write_all(&down2).unwrap();
        let c = b.counters();
        b.close().unwrap();
        (got, c)
    });
    let t0 = Instant::now();
    a.write_all(&up2).unwrap();
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let back = read_to_end(&mut a);
    let took = t0.elapsed();
    a.close().unwrap();
    let (got, bc) = server.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (da, db) = wire.join().unwrap().unwrap();
    assert!(got == up, "upstream bytes differ");
    assert!(back == down, "downstream bytes differ");
    eprintln!(
        "5 MiB in memory in {took:?}: {:.0} Mbit/s; server device {bc:?}",
        (5 << 20) as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    assert_eq!(
        da.rx_dropped + db.rx_dropped,
        0,
        "the lossless wire dropped nothing"
    );
}

/// Hands every frame one side's driver end holds to the other side; returns how many.
fn carry(from: &mut DriverEnds, to: &mut DriverEnds) -> usize {
    let frames = from.take_frames().unwrap();
    for f in &frames {
        to.inject(f).unwrap();
    }
    frames.len()
}

/// The TCP flags of a frame (Ethernet + 20-byte IPv4 header).
fn flags(frame: &[u8]) -> (bool, bool) {
    let t = TcpPacket::new_checked(&frame[34..]).unwrap();
    (t.ack(), t.fin())
}

#[test]
fn close_after_the_peers_fin_sends_its_delayed_ack_before_returning() {
    let ((mut a, mut da), (mut b, mut db)) = pair(64);
    b.listen_on_flow().unwrap();
    a.connect_on_flow().unwrap();
    carry(&mut da, &mut db);
    b.poll().unwrap();
    carry(&mut db, &mut da);
    a.poll().unwrap();
    carry(&mut da, &mut db);
    b.poll().unwrap();
    // A's FIN, acknowledged: A waits in FIN-WAIT-2.
    a.shutdown(std::net::Shutdown::Write).unwrap();
    carry(&mut da, &mut db);
    b.poll().unwrap();
    carry(&mut db, &mut da);
    a.poll().unwrap();
    assert!(da.take_frames().unwrap().is_empty());
    // B's last bytes, then its FIN, arrive together: the bytes start A's delayed-ACK timer, and
    // the FIN takes A to TIME-WAIT with that ACK still to send.
    b.write_all(b"last words").unwrap();
    b.shutdown(std::net::Shutdown::Write).unwrap();
    let fin = db.take_frames().unwrap();
    assert!(fin.iter().any(|f| flags(f).1), "B sent its FIN");
    for f in &fin {
        da.inject(f).unwrap();
    }
    a.poll().unwrap();
    assert!(
        da.take_frames().unwrap().is_empty(),
        "the ACK of B's FIN waits for the ACK delay"
    );
    // Closing A must not leave that ACK unsent: B would wait in LAST-ACK for it.
    a.close().unwrap();
    let late = da.take_frames().unwrap();
    assert!(
        late.iter().any(|f| flags(f) == (true, false)),
        "A's close returned without sending the ACK of B's FIN"
    );
    for f in &late {
        db.inject(f).unwrap();
    }
    b.close().unwrap();
}

#[test]
fn the_syn_handed_over_is_answered_with_an_isn_above_the_floor() {
    for floor in [0u32, 1 << 31, u32::MAX - 3, 77_777] {
        let ((mut a, mut da), (b, db)) = pair(64);
        drop(b);
        a.connect_on_flow().unwrap();
        let syn = da.take_frames().unwrap().remove(0);
        let fb = testing::fib(B, MAC_B, Some(A), Some(MAC_A), 1500);
        let (cb, mut db2) = testing::channels(fb, 64).unwrap();
        drop(db);
        let inc = Incoming {
            listen_port: B.port(),
            remote: A,
            syn,
            isn_above: Some(floor),
        };
        let b = TcpStream::accepted_on(cb, &inc, None, &cfg()).unwrap();
        let synack = db2.take_frames().unwrap();
        assert_eq!(
            synack.len(),
            1,
            "the accepted stream answers the SYN at once"
        );
        assert_policed(&synack[0], (B, MAC_B), (A, MAC_A));
        let t = TcpPacket::new_checked(&synack[0][34..]).unwrap();
        assert!(t.syn() && t.ack());
        let isn = t.seq_number().0 as u32;
        assert!(seq_after(isn, floor), "ISN {isn} not above {floor}");
        assert_eq!(b.state(), smoltcp::socket::tcp::State::SynReceived);
        // The handshake completes over the wire.
        da.inject(&synack[0]).unwrap();
        a.poll().unwrap();
        for f in da.take_frames().unwrap() {
            db2.inject(&f).unwrap();
        }
        let mut b = b;
        assert!(b.handshake().unwrap());
        assert_eq!(a.state(), smoltcp::socket::tcp::State::Established);
    }
}

#[test]
fn a_reset_and_a_refusal_are_reported() {
    // No listener: the SYN is refused with RST.
    let ((mut a, da), (mut b, db)) = pair(64);
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    a.connect_on_flow().unwrap();
    // B has no listening socket: its interface resets the SYN.
    let t0 = Instant::now();
    let e = loop {
        b.poll().unwrap();
        let mut buf = [0u8; 4];
        a.set_read_timeout(Some(Duration::from_millis(20)));
        match a.read(&mut buf) {
            Err(Error::TimedOut) if t0.elapsed() < Duration::from_secs(5) => continue,
            Err(e) => break e,
            Ok(n) => panic!("read {n} bytes"),
        }
    };
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    stop.store(true, Ordering::Relaxed);
    wire.join().unwrap().unwrap();

    // Established, then the peer aborts: reads fail with a reset.
    let ((mut a, da), (mut b, db)) = pair(64);
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    b.listen_on_flow().unwrap();
    a.connect_on_flow().unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 5];
        let n = b.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        b.abort().unwrap();
    });
    a.write_all(b"hello").unwrap();
    server.join().unwrap();
    a.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    let e = a.read(&mut buf).unwrap_err();
    assert!(matches!(e, Error::Reset { .. }), "{e}");
    assert_eq!(
        std::io::Error::from(e).kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert!(matches!(a.write(b"x"), Err(Error::Reset { .. })));
    stop.store(true, Ordering::Relaxed);
    wire.join().unwrap().unwrap();
}

#[test]
fn loss_on_the_wire_is_repaired() {
    let ((mut a, mut da), (mut b, mut db)) = pair(128);
    b.listen_on_flow().unwrap();
    a.connect_on_flow().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    // A wire that drops a few frames each way, some of them back to back (smoltcp repairs
    // single losses by fast retransmit, bursts by its retransmission timer, >= 1 s).
    let wire = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut dropped = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let mut moved = 0;
            for dir in 0..2 {
                let (from, to) = if dir == 0 {
                    (&mut da, &mut db)
                } else {
                    (&mut db, &mut da)
                };
                for f in from.take_frames().unwrap() {
                    n += 1;
                    moved += 1;
                    if [40, 41, 200, 201, 202, 700, 701].contains(&n) {
                        dropped += 1;
                        continue;
                    }
                    let _ = to.inject(&f);
                }
            }
            if moved == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        dropped
    });
    let data = pattern(1 << 20, 3);
    let d2 = data.clone();
    let t0 = Instant::now();
    let server = std::thread::spawn(move || {
        let got = read_to_end(&mut b);
        b.close().unwrap();
        got
    });
    a.write_all(&d2).unwrap();
    // Repairs wait for retransmission timeouts (>= 1 s each): let them run before closing.
    a.wait_acked(Duration::from_secs(60)).unwrap();
    a.close().unwrap();
    let got = server.join().unwrap();
    eprintln!("1 MiB with 7 frames lost: {:?}", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let dropped = wire.join().unwrap();
    assert_eq!(dropped, 7, "the wire dropped {dropped}");
    assert!(got == data, "bytes differ after loss");
}

#[test]
fn non_blocking_streams_wait_on_their_fd() {
    use std::os::fd::AsFd;
    let ((mut a, da), (mut b, db)) = pair(64);
    let stop = Arc::new(AtomicBool::new(false));
    let wire = testing::spawn_wire(da, db, stop.clone());
    b.listen_on_flow().unwrap();
    a.connect_on_flow().unwrap();
    a.set_nonblocking(true);
    b.set_nonblocking(true);
    let mut buf = [0u8; 64];
    assert!(matches!(b.read(&mut buf), Err(Error::WouldBlock)));
    // One thread, both ends, driven by their readiness fds alone.
    let mut sent = false;
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 11 {
        assert!(t0.elapsed() < Duration::from_secs(5), "stuck");
        if !sent {
            match a.write(b"hello world") {
                Ok(n) => {
                    assert_eq!(n, 11);
                    sent = true;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => panic!("{e}"),
            }
        }
        match b.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(Error::WouldBlock) => {}
            Err(e) => panic!("{e}"),
        }
        let ra = a.prepare_wait(!sent).unwrap();
        let rb = b.prepare_wait(false).unwrap();
        if !ra && !rb {
            let mut fds = [
                rustix::event::PollFd::from_borrowed_fd(a.as_fd(), rustix::event::PollFlags::IN),
                rustix::event::PollFd::from_borrowed_fd(b.as_fd(), rustix::event::PollFlags::IN),
            ];
            let ts = rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&ts)).unwrap();
        }
        a.finish_wait();
        b.finish_wait();
    }
    assert_eq!(&got, b"hello world");
    stop.store(true, Ordering::Relaxed);
    a.set_nonblocking(false);
    b.set_nonblocking(false);
    drop(a);
    drop(b);
    wire.join().unwrap().unwrap();
}
