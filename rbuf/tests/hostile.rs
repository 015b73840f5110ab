//! Hostile peers: a separate process holding the channel's fds attacks the driver's side. The
//! driver's endpoint must return typed errors and count them, never panic, never fault.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::{Duration, Instant};

use common::{spec, Peer, PeerArgs};
use nemflow_rbuf::{create, rmm, tmm, Error, IndexError, IoRec, IoRecError};

fn args<'a>(role: &'a str, extra: &'a str, n: u64) -> PeerArgs<'a> {
    PeerArgs {
        role,
        n,
        batch: 1,
        blocking: false,
        extra,
    }
}

/// The hostile app writes random bytes over the whole control area for 300 ms while the driver
/// keeps serving both of its channel kinds.
#[test]
fn random_control_area() {
    let spec = spec(64);
    for role in ["hostile-tmm", "hostile-rmm"] {
        let fds = create(&spec).unwrap();
        let mut tx = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
        let mut rx = rmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
        let mut peer = Peer::spawn(&spec, fds, args(role, "random", 300));
        let mut frame = [0u8; 256];
        let (mut ok, mut errors) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !peer.exited() && Instant::now() < deadline {
            match tx.pop() {
                Ok(Some(r)) => {
                    ok += 1;
                    tx.copy_out(&r, &mut frame).unwrap();
                    let _ = tx.release(r);
                }
                Ok(None) => {}
                Err(_) => errors += 1,
            }
            match rx.take_empty() {
                Ok(Some(r)) => {
                    ok += 1;
                    // Validated: copy_in of a frame up to its length stays inside the data area.
                    let len = (r.total_len() as usize).min(frame.len());
                    rx.copy_in(&r, &frame[..len]).unwrap();
                    let _ = rx.push_full(r, len);
                }
                Ok(None) => {}
                Err(_) => errors += 1,
            }
            let _ = tx.wait_ready(Duration::from_micros(100));
        }
        let out = peer.finish();
        let (c, d) = (tx.counters(), rx.counters());
        println!("{role}: {out}; ok {ok} errors {errors}\ntx {c:?}\nrx {d:?}");
        assert!(out.starts_with("random rounds"));
        // Random indices are almost never valid: both endpoints must have caught and counted it.
        assert!(
            tx.broken().is_some() && rx.broken().is_some(),
            "tx {c:?} rx {d:?}"
        );
        assert!(c.index_violations() >= 1 && d.index_violations() >= 1);
        assert!(errors >= 2);
    }
}

#[test]
fn index_moved_backwards() {
    let spec = spec(64);
    let fds = create(&spec).unwrap();
    let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let mut peer = Peer::spawn(&spec, fds, args("hostile-tmm", "backward", 0));
    assert_eq!(peer.read_sock(1), "p");
    let mut recs = [IoRec::default(); 8];
    assert_eq!(drv.pop_batch(&mut recs).unwrap(), 4);
    drv.release_batch(&recs[..4]).unwrap();
    peer.go();
    let out = peer.finish();
    assert_eq!(out, "moved head 4 -> 1");
    assert!(matches!(
        drv.pop(),
        Err(Error::Index(IndexError::Backward {
            last: 4,
            seen: 1,
            ..
        }))
    ));
    assert!(matches!(drv.pop(), Err(Error::Broken(_))));
    assert_eq!(drv.counters().index_backward, 1);
}

#[test]
fn index_jumped_past_the_ring() {
    let spec = spec(64);
    for role in ["hostile-tmm", "hostile-rmm"] {
        let fds = create(&spec).unwrap();
        let mut tx = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
        let mut rx = rmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
        let out = Peer::spawn(&spec, fds, args(role, "far", 0)).finish();
        assert_eq!(out, "moved head 0 -> 65");
        let (e, c) = if role == "hostile-tmm" {
            (tx.pop().map(|_| ()), tx.counters())
        } else {
            (rx.take_empty().map(|_| ()), rx.counters())
        };
        assert!(
            matches!(e, Err(Error::Index(IndexError::TooFar { seen: 65, .. }))),
            "{e:?}"
        );
        assert_eq!(c.index_too_far, 1);
    }
}

#[test]
fn extents_outside_the_data_area() {
    let spec = spec(64);
    for role in ["hostile-tmm", "hostile-rmm"] {
        let fds = create(&spec).unwrap();
        let mut tx = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
        let mut rx = rmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
        let out = Peer::spawn(&spec, fds, args(role, "extents", 0)).finish();
        assert_eq!(out, "wrote 7 iorecs");
        let mut results = Vec::new();
        for _ in 0..8 {
            results.push(if role == "hostile-tmm" {
                tx.pop()
            } else {
                rx.take_empty()
            });
        }
        let c = if role == "hostile-tmm" {
            tx.counters()
        } else {
            rx.counters()
        };
        let e = |i: usize| match &results[i] {
            Err(Error::InvalidIoRec(e)) => Some(*e),
            _ => None,
        };
        assert_eq!(
            e(0),
            Some(IoRecError::Overflow {
                index: 0,
                offset: 0xFFFF_FFFE,
                len: 4
            })
        );
        assert!(matches!(e(1), Some(IoRecError::OutOfBounds { .. })));
        assert!(matches!(e(2), Some(IoRecError::OutOfBounds { .. })));
        assert_eq!(e(3), Some(IoRecError::BadCount { count: 7 }));
        assert_eq!(e(4), Some(IoRecError::BadCount { count: 0 }));
        assert!(matches!(e(5), Some(IoRecError::TooLong { .. })));
        assert!(
            matches!(results[6], Ok(Some(_))),
            "the valid iorec after them still works"
        );
        assert!(matches!(results[7], Ok(None)));
        assert_eq!(
            (
                c.invalid_overflow,
                c.invalid_out_of_bounds,
                c.invalid_count,
                c.invalid_too_long,
                c.iorecs_in
            ),
            (1, 2, 2, 1, 1)
        );
        assert!(tx.broken().is_none() && rx.broken().is_none());
    }
}

/// The seals make truncation (or any further sealing) fail with EPERM; the driver's mapping
/// stays whole.
#[test]
fn truncation_is_refused() {
    let spec = spec(64);
    let fds = create(&spec).unwrap();
    let drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let out = Peer::spawn(
        &spec,
        fds.try_clone().unwrap(),
        args("hostile-tmm", "truncate", 0),
    )
    .finish();
    assert_eq!(
        out, "shrink-data 1 grow-data 1 shrink-control 1 add-seal 1",
        "1 = EPERM"
    );
    assert_eq!(
        rustix::fs::fstat(&fds.data).unwrap().st_size as u64,
        spec.data_bytes
    );
    // Every byte of the driver's mapping is still readable.
    let mut buf = vec![0u8; 128];
    let mut off = 0u32;
    while u64::from(off) + 128 <= spec.data_bytes {
        drv.copy_extent_out(nemflow_rbuf::Extent::new(off, 128), &mut buf)
            .unwrap();
        off += 4096;
    }
}
