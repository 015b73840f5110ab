//! Reserved channel pairs (`Reserve`, `OpenReserved`, `Unreserve`) with the flow manager binary
//! against the fake driver: traffic on a reserved open, quotas, the pair's return to the driver
//! when its app leaves (or is killed), and requests naming pairs that are not the caller's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::{Harness, PEER};
use nemflow_flowmgr::client::{Client, ClientError};
use nemflow_proto::app::{AppErrorKind, AppReply, AppRequest, Buffers, OpenFlow, OPENED_FDS};
use nemflow_rbuf::IoRec;
use nemflow_testkit::frames::UdpFrame;

const SEC: Duration = Duration::from_secs(1);

/// Pairs the flow manager keeps staged for opens (`STAGED_PAIRS` in the daemon).
const STAGED: usize = 4;

fn kind(e: ClientError) -> AppErrorKind {
    e.kind().unwrap_or_else(|| panic!("not a refusal: {e}"))
}

/// Reserves through the library, waiting for the flow manager to have a pair staged.
fn reserve(c: &mut Client) {
    let end = Instant::now() + 2 * SEC;
    while !c.reserve().unwrap() {
        assert!(Instant::now() < end, "no pair to reserve within 2 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `Reserve` on the wire: the pair's id and the number of fds that came with it.
fn reserve_raw(c: &mut Client) -> (u32, usize) {
    let end = Instant::now() + 2 * SEC;
    loop {
        match c.call(&AppRequest::Reserve) {
            Ok((AppReply::Reserved { id, .. }, fds)) => return (id, fds.len()),
            Ok((other, _)) => panic!("{other:?}"),
            Err(e) if e.kind() == Some(AppErrorKind::NotReady) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn open_reserved(c: &mut Client, open: OpenFlow, reserved: u32) -> Result<usize, ClientError> {
    match c.call(&AppRequest::OpenReserved { open, reserved })? {
        (AppReply::Opened(_), fds) => Ok(fds.len()),
        (other, _) => panic!("{other:?}"),
    }
}

/// Waits until the fake driver holds `n` staged pairs (the flow manager's own and reserved).
fn wait_staged(h: &Harness, n: usize) {
    assert!(
        h.fake.wait_for(2 * SEC, |s| s.staged == n),
        "driver holds {} staged pairs, expected {n}",
        h.fake.state().staged
    );
}

fn drop_staged_requests(h: &Harness) -> u64 {
    h.fake
        .state()
        .requests
        .get("drop_staged")
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_reserved_open_carries_traffic_both_ways_and_its_reply_has_no_fds() {
    let h = Harness::start("");
    // On the wire: the reserve brings the pair's fds, the open none.
    let mut raw = h.client();
    let (id, fds) = reserve_raw(&mut raw);
    assert_eq!(fds, OPENED_FDS);
    let remote = SocketAddrV4::new(PEER, 7000);
    assert_eq!(
        open_reserved(&mut raw, OpenFlow::udp(5000, Some(remote)), id).unwrap(),
        0
    );

    // Through the library: the flow comes with the endpoints attached at the reserve.
    let mut c = h.client();
    reserve(&mut c);
    assert!(c.holds_reserve());
    let flow = c.open(&OpenFlow::udp(6000, Some(remote))).unwrap();
    assert!(flow.reserved());
    assert!(!c.holds_reserve());
    let fid = flow.id();
    let local = flow.fib.local;
    let (mut tx, mut rx) = flow.attach().unwrap();
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&fid)));
    // Out: a pushed frame reaches the driver.
    let ext = tx.alloc(64).unwrap().unwrap();
    tx.buf_mut(ext).unwrap().fill(0xab);
    tx.push(IoRec::single(ext, 0)).unwrap();
    assert!(h.fake.wait_for(SEC, |s| s
        .stats
        .get(&fid)
        .is_some_and(|f| f.tx_packets == 1)));
    // In: a frame the driver delivers lands in the buffers posted at the reserve.
    let frame = UdpFrame::new(remote, local, b"to a reserved flow").build();
    h.fake.deliver(fid, frame.clone());
    let end = Instant::now() + SEC;
    let got = loop {
        if let Some(p) = rx.pop().unwrap() {
            break p;
        }
        assert!(Instant::now() < end, "nothing received");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(rx.payload(&got), &frame[..]);
    assert_eq!(h.counter("opens_reserved"), 2);
    assert_eq!(h.counter("reserves_taken"), 2);
    // Without a reserve held, an open brings fds as before.
    let plain = c.open(&OpenFlow::udp(0, None)).unwrap();
    assert!(!plain.reserved());
}

#[test]
fn a_reserve_counts_against_the_uids_channel_memory() {
    // A default pair is 528 KiB: two fit in 1.1 MB, three do not.
    let h = Harness::start("max_channel_bytes_per_uid: 1100000");
    let mut a = h.client();
    let _flow = a.open(&OpenFlow::udp(0, None)).unwrap();
    let mut b = h.client();
    reserve(&mut b);
    // Listed with its owner and the channel memory it holds.
    let listed: Vec<_> = b
        .flows()
        .unwrap()
        .into_iter()
        .filter(|f| f.kind == nemflow_proto::app::FlowKind::Reserved)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].channel_bytes, 528 << 10);
    assert!(listed[0].owner.is_some());
    let mut c = h.client();
    let e = c.reserve().unwrap_err();
    assert!(
        e.to_string().contains("cannot reserve a channel pair")
            && e.to_string().contains("max_channel_bytes_per_uid"),
        "{e}"
    );
    assert_eq!(kind(e), AppErrorKind::NoBufferSpace);
    assert!(!c.holds_reserve());
    // An open at the quota is refused too: the reserve holds its share.
    assert_eq!(
        kind(c.open(&OpenFlow::udp(0, None)).unwrap_err()),
        AppErrorKind::NoBufferSpace
    );
    // The open on the reserved pair takes no more than the pair held.
    let f = b.open(&OpenFlow::udp(0, None)).unwrap();
    assert!(f.reserved());
    assert_eq!(
        kind(c.open(&OpenFlow::udp(0, None)).unwrap_err()),
        AppErrorKind::NoBufferSpace
    );
    // Given back (the flow closed), the share returns.
    b.close(f.id()).unwrap();
    reserve(&mut c);
    assert!(h.counter("reserves_refused") >= 1);
}

#[test]
fn an_unused_reserve_goes_back_to_the_driver_when_its_app_leaves() {
    // Room for exactly two flows' channels.
    let h = Harness::start("max_channel_bytes_per_uid: 1100000");
    wait_staged(&h, STAGED);
    // A client that disconnects holding its reserve.
    let mut c = h.client();
    reserve(&mut c);
    // The reserved pair stays in the driver; the flow manager stages another for opens.
    wait_staged(&h, STAGED + 1);
    drop(c);
    wait_staged(&h, STAGED);
    assert_eq!(drop_staged_requests(&h), 1);
    // One killed with -9.
    let mut app = common::hold_reserve(&h.socket);
    wait_staged(&h, STAGED + 1);
    app.kill().unwrap();
    app.wait().unwrap();
    wait_staged(&h, STAGED);
    assert_eq!(drop_staged_requests(&h), 2);
    assert_eq!(h.counter("reserves_dropped"), 2);
    // One that gives it back.
    let mut g = h.client();
    reserve(&mut g);
    g.unreserve().unwrap();
    assert!(!g.holds_reserve());
    assert!(h.fake.wait_for(SEC, |s| s
        .requests
        .get("drop_staged")
        .is_some_and(|&n| n == 3)));
    // The quota is whole again: two flows' channels.
    let mut d = h.client();
    d.open(&OpenFlow::udp(0, None)).unwrap();
    d.open(&OpenFlow::udp(0, None)).unwrap();
    assert_eq!(
        kind(d.open(&OpenFlow::udp(0, None)).unwrap_err()),
        AppErrorKind::NoBufferSpace
    );
}

#[test]
fn naming_a_pair_not_yours_or_used_is_refused_and_nothing_leaks() {
    let h = Harness::start("max_flows_per_uid: 3");
    wait_staged(&h, STAGED);
    let mut a = h.client();
    let mut b = h.client();
    let (pa, _) = reserve_raw(&mut a);
    // Another connection's pair: refused, and it stays a's.
    let e = open_reserved(&mut b, OpenFlow::udp(0, None), pa).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::NoSuchFlow);
    let e = b.call(&AppRequest::Unreserve { reserved: pa }).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::NoSuchFlow);
    // A pair never reserved.
    let e = open_reserved(&mut b, OpenFlow::udp(0, None), 999_999).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::NoSuchFlow);
    // Another geometry: refused, the pair stays reserved.
    let big = OpenFlow::udp(0, None).with_buffers(Buffers {
        tx_bytes: 4 << 20,
        ..Buffers::default()
    });
    assert_eq!(
        kind(open_reserved(&mut a, big, pa).unwrap_err()),
        AppErrorKind::Invalid
    );
    // A port in use: refused, the pair stays reserved.
    let _taken = b.open(&OpenFlow::udp(7000, None)).unwrap();
    assert_eq!(
        kind(open_reserved(&mut a, OpenFlow::udp(7000, None), pa).unwrap_err()),
        AppErrorKind::AddrInUse
    );
    assert_eq!(
        open_reserved(&mut a, OpenFlow::udp(7001, None), pa).unwrap(),
        0
    );
    // Used: refused.
    assert_eq!(
        kind(open_reserved(&mut a, OpenFlow::udp(7002, None), pa).unwrap_err()),
        AppErrorKind::NoSuchFlow
    );
    // A second reserve while holding one: refused.
    let (_pb, _) = reserve_raw(&mut a);
    assert_eq!(
        kind(a.call(&AppRequest::Reserve).unwrap_err()),
        AppErrorKind::NoBufferSpace
    );
    // Another's (open and give back), never reserved, another geometry, used: five.
    assert_eq!(h.counter("opens_reserved_refused"), 5);
    assert_eq!(h.counter("reserves_refused"), 1);
    assert_eq!(h.counter("opens_reserved"), 1);
    // Nothing leaked: with every client gone, the driver holds the flow manager's pairs only,
    // and the uid its whole quota of flows.
    drop((a, b, _taken));
    wait_staged(&h, STAGED);
    assert!(h.fake.wait_for(SEC, |s| s.flows.len() == 1));
    let mut d = h.client();
    for _ in 0..3 {
        d.open(&OpenFlow::udp(0, None)).unwrap();
    }
    assert_eq!(
        kind(d.open(&OpenFlow::udp(0, None)).unwrap_err()),
        AppErrorKind::NoBufferSpace
    );
}
