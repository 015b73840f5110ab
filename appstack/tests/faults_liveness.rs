//! A flow tied to its connection to the flow manager (`Liveness`): an app asleep in `recv`, or
//! in `send` on a full TX FIFO, wakes with `Error::Revoked` when the connection closes after a
//! `Revoked` event (the flow manager lost its driver, or shut down), instead of waiting forever
//! on a channel nobody serves. A connection that closes silently (the flow manager was killed)
//! orphans the flow: data keeps moving until a flow manager listens again. The test plays the
//! flow manager (one end of a socket pair) and the driver (the channels' other ends).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nemflow_appstack::testing::{self, DriverEnds, IP_A, MAC_A, MAC_B, PORT_A, PORT_B};
use nemflow_appstack::{Error, Liveness, LivenessState, ReassemblyLimits, UdpFlow};
use nemflow_proto::app::{AppEvent, ServerMsg};
use nemflow_proto::wire;
use nemflow_proto::FlowId;

const FLOW: FlowId = FlowId(1);

/// A connected flow with `slots` buffers each way, tied to one end of a socket pair; the other
/// end plays the flow manager.
fn watched_flow(slots: u32) -> (UdpFlow, DriverEnds, UnixStream) {
    let a = std::net::SocketAddrV4::new(IP_A, PORT_A);
    let b = std::net::SocketAddrV4::new(testing::IP_B, PORT_B);
    let fib = testing::fib(a, MAC_A, Some(b), Some(MAC_B), 1500);
    let cfg = testing::config(1, ReassemblyLimits::default());
    let (mut flow, drv) = testing::udp_flow(fib, slots, cfg).unwrap();
    let (app_end, fm_end) = UnixStream::pair().unwrap();
    flow.set_liveness(Liveness::new(app_end.into(), FLOW));
    (flow, drv, fm_end)
}

fn revoke(fm: UnixStream, reason: &str) {
    let ev = ServerMsg::Event(AppEvent::Revoked {
        flow: FLOW,
        reason: reason.into(),
    });
    wire::send(&fm, &ev, &[]).unwrap();
    drop(fm);
}

/// A frame from B to A carrying `payload`, as the driver would deliver it.
fn frame_to_a(payload: &[u8]) -> Vec<u8> {
    let a = std::net::SocketAddrV4::new(testing::IP_B, PORT_B);
    let b = std::net::SocketAddrV4::new(IP_A, PORT_A);
    let fib = testing::fib(a, MAC_B, Some(b), Some(MAC_A), 1500);
    let cfg = testing::config(9, ReassemblyLimits::default());
    let (mut sender, mut d) = testing::udp_flow(fib, 4, cfg).unwrap();
    sender.send(payload).unwrap();
    d.take_frames().unwrap().remove(0)
}

#[test]
fn a_blocked_recv_wakes_with_revoked_when_the_connection_closes_timing() {
    let (mut flow, _drv, fm) = watched_flow(8);
    let t = std::thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let r = flow.recv(&mut buf).map(|(n, _)| n);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let closed = Instant::now();
    revoke(fm, "driver lost");
    let (r, _) = t.join().unwrap();
    let woke = closed.elapsed();
    match r {
        Err(Error::Revoked { flow, reason }) => {
            assert_eq!(flow, FLOW);
            assert_eq!(reason, "driver lost");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Error::Revoked {
            flow: FLOW,
            reason: String::new()
        }
        .kind(),
        std::io::ErrorKind::ConnectionReset
    );
    // Woken by the hang-up itself, not by the next 100 ms step of the wait.
    assert!(woke < Duration::from_millis(50), "{woke:?}");
}

#[test]
fn a_send_blocked_on_a_full_fifo_wakes_with_revoked_timing() {
    let (mut flow, _drv, fm) = watched_flow(4);
    // Nobody serves the TX channel: four datagrams fill it, the fifth waits.
    for i in 0..4u8 {
        flow.send(&[i; 100]).unwrap();
    }
    let t = std::thread::spawn(move || {
        let r = flow.send(&[9; 100]);
        (r, flow)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished(), "the fifth send waits for a buffer");
    let closed = Instant::now();
    revoke(fm, "flow manager shutting down");
    let (r, mut flow) = t.join().unwrap();
    assert!(
        closed.elapsed() < Duration::from_millis(50),
        "{:?}",
        closed.elapsed()
    );
    assert!(matches!(r, Err(Error::Revoked { .. })), "{r:?}");
    // And it stays revoked.
    assert!(matches!(flow.send(&[1]), Err(Error::Revoked { .. })));
}

#[test]
fn a_non_blocking_flow_learns_it_is_revoked_when_it_would_block() {
    let (mut flow, mut drv, fm) = watched_flow(8);
    flow.set_nonblocking(true);
    let mut buf = [0u8; 64];
    assert!(matches!(flow.recv(&mut buf), Err(Error::WouldBlock)));
    // A frame already delivered is still read after the revocation: only waiting fails.
    assert!(drv.inject(&frame_to_a(b"last")).unwrap());
    revoke(fm, "driver lost");
    assert_eq!(flow.recv(&mut buf).unwrap().0, 4);
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        match flow.recv(&mut buf) {
            Err(Error::Revoked { .. }) => break,
            Err(Error::WouldBlock) => assert!(Instant::now() < deadline, "never revoked"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(flow.prepare_wait(), Err(Error::Revoked { .. })));
}

#[test]
fn a_silent_hang_up_orphans_the_flow_until_a_flow_manager_listens_again() {
    let dir = std::env::temp_dir().join(format!("nemflow-faults-liveness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fm.sock");
    let a = std::net::SocketAddrV4::new(IP_A, PORT_A);
    let b = std::net::SocketAddrV4::new(testing::IP_B, PORT_B);
    let fib = testing::fib(a, MAC_A, Some(b), Some(MAC_B), 1500);
    let cfg = testing::config(1, ReassemblyLimits::default());
    let (mut flow, mut drv) = testing::udp_flow(fib, 8, cfg).unwrap();
    let (app_end, fm_end) = UnixStream::pair().unwrap();
    flow.set_liveness(Liveness::new(app_end.into(), FLOW).with_probe(&path));
    flow.set_read_timeout(Some(Duration::from_millis(150)));
    let mut buf = [0u8; 64];

    // The flow manager is killed: no event, the connection just ends.
    drop(fm_end);
    // The driver still carries the flow: data keeps moving both ways.
    for i in 0..20u8 {
        assert!(drv.inject(&frame_to_a(&[i; 10])).unwrap());
        assert_eq!(flow.recv(&mut buf).unwrap().0, 10);
        flow.send(&[i; 10]).unwrap();
        assert_eq!(drv.take_frames().unwrap().len(), 1);
    }
    // A wait with nothing to receive times out as usual: no hang-up spin, no error.
    assert!(matches!(flow.recv(&mut buf), Err(Error::TimedOut)));
    assert_eq!(
        flow.channels().liveness().map(|l| l.state().clone()),
        Some(LivenessState::Orphaned)
    );
    // A flow manager starts again (it removes every flow it finds in the driver): the flow
    // counts as revoked within one probe interval.
    let listener = UnixListener::bind(&path).unwrap();
    let t = Instant::now();
    let r = loop {
        match flow.recv(&mut buf) {
            Err(Error::TimedOut) => assert!(t.elapsed() < Duration::from_secs(1)),
            r => break r,
        }
    };
    match r {
        Err(Error::Revoked { reason, .. }) => assert!(reason.contains("restarted"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() <= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_liveness_nothing_changes() {
    let cfg = testing::config(1, ReassemblyLimits::default());
    let ((mut a, mut da), (mut b, mut db)) = testing::connected_pair(1500, 8, cfg).unwrap();
    assert!(a.liveness_fd().is_none());
    a.send(b"x").unwrap();
    da.pump_to(&mut db).unwrap();
    b.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = [0u8; 8];
    assert_eq!(b.recv(&mut buf).unwrap().0, 1);
    assert!(matches!(b.recv(&mut buf), Err(Error::TimedOut)));
    a.check_liveness().unwrap();
}
