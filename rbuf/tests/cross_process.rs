//! Real cross-process channels: the test process is the driver's side, `rbuf-peer` (a separate
//! process that got the fds over a Unix socket with SCM_RIGHTS) is the application's side.
//! Every payload carries a sequence number and a checksum; both FIFOs are used throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::{backoff, iters, spec, Peer, PeerArgs};
use nemflow_rbuf::testing::{check_payload, fill_payload};
use nemflow_rbuf::{create, rmm, tmm, IoRec};

const WAIT: Duration = Duration::from_secs(20);

/// Driver side of TMM: pops, copies out, checks sequence and checksum, releases.
fn tmm_run(n: u64, batch: usize, blocking: bool) {
    let spec = spec(256);
    let fds = create(&spec).unwrap();
    let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let mut peer = Peer::spawn(
        &spec,
        fds.try_clone().unwrap(),
        PeerArgs {
            role: "tmm-producer",
            n,
            batch,
            blocking,
            extra: "",
        },
    );
    let mut recs = vec![IoRec::default(); batch];
    let mut frame = [0u8; 128];
    let mut expect = 0u64;
    let mut spins = 0;
    let mut last = (expect, std::time::Instant::now());
    while expect < n {
        if last.0 != expect {
            last = (expect, std::time::Instant::now());
        } else if last.1.elapsed() > WAIT {
            panic!(
                "driver stalled at {expect}/{n}: {:?} held {}; peer: {}",
                drv.counters(),
                drv.held(),
                peer.status()
            );
        }
        let k = drv.pop_batch(&mut recs).unwrap();
        for r in &recs[..k] {
            let len = drv.copy_out(r, &mut frame).unwrap();
            assert_eq!(check_payload(&frame[..len]), Ok(expect));
            expect += 1;
        }
        if k > 0 {
            drv.release_batch(&recs[..k]).unwrap();
        } else if blocking {
            if let Err(e) = drv.wait_ready(WAIT) {
                panic!("driver: {e} at {expect}/{n}; peer: {}", peer.status());
            }
        } else {
            backoff(&mut spins);
        }
    }
    let out = peer.finish();
    assert!(out.starts_with(&format!("sent {n} invalid 0")), "{out}");
    let c = drv.counters();
    assert_eq!(
        (
            c.iorecs_in,
            c.iorecs_out,
            c.invalid_iorecs(),
            c.index_violations()
        ),
        (n, n, 0, 0)
    );
    println!("driver: {c:?}\napp: {out}");
}

/// Driver side of RMM: takes empty buffers, copies frames in, pushes them full.
fn rmm_run(n: u64, batch: usize, blocking: bool) {
    let spec = spec(256);
    let fds = create(&spec).unwrap();
    let mut drv = rmm::Producer::attach(&spec, fds.try_clone().unwrap()).unwrap();
    let mut peer = Peer::spawn(
        &spec,
        fds.with_read_only_data().unwrap(),
        PeerArgs {
            role: "rmm-consumer",
            n,
            batch,
            blocking,
            extra: "",
        },
    );
    let mut empties = vec![IoRec::default(); batch];
    let mut full = Vec::with_capacity(batch);
    let mut frame = [0u8; 128];
    let mut seq = 0u64;
    let mut spins = 0;
    let mut last = (seq, std::time::Instant::now());
    while seq < n {
        if last.0 != seq {
            last = (seq, std::time::Instant::now());
        } else if last.1.elapsed() > WAIT {
            panic!(
                "driver stalled at {seq}/{n}: {:?}; peer: {}",
                drv.counters(),
                peer.status()
            );
        }
        let want = batch.min((n - seq) as usize);
        let k = drv.take_empty_batch(&mut empties[..want]).unwrap();
        full.clear();
        for r in &empties[..k] {
            let len = fill_payload(seq, &mut frame);
            drv.copy_in(r, &frame[..len]).unwrap();
            full.push((*r, len));
            seq += 1;
        }
        if k > 0 {
            drv.push_full_batch(&full).unwrap();
        } else if blocking {
            drv.wait_ready(WAIT).unwrap();
        } else {
            backoff(&mut spins);
        }
    }
    let out = peer.finish();
    assert!(out.starts_with(&format!("received {n} invalid 0")), "{out}");
    let c = drv.counters();
    assert_eq!(
        (c.iorecs_out, c.invalid_iorecs(), c.index_violations()),
        (n, 0, 0)
    );
    println!("driver: {c:?}\napp: {out}");
}

#[test]
fn tmm_ten_million_nonblocking() {
    tmm_run(iters(), 32, false);
}

#[test]
fn rmm_ten_million_nonblocking() {
    rmm_run(iters(), 32, false);
}

#[test]
fn tmm_blocking() {
    tmm_run(iters() / 10, 8, true);
}

#[test]
fn rmm_blocking() {
    rmm_run(iters() / 10, 8, true);
}

#[test]
fn tmm_single_iorecs() {
    tmm_run(20_000, 1, true);
}

/// A consumer that stops consuming: the producer sees "full" (after exactly `slots` pushes),
/// and once the consumer resumes every iorec arrives, in order, intact.
#[test]
fn back_pressure_without_loss() {
    let spec = spec(64);
    let fds = create(&spec).unwrap();
    let mut drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    let n = 5_000;
    let mut peer = Peer::spawn(
        &spec,
        fds.try_clone().unwrap(),
        PeerArgs {
            role: "tmm-producer",
            n,
            batch: 16,
            blocking: true,
            extra: "bp",
        },
    );
    // We consume nothing until the producer reports it was refused.
    let msg = peer.read_sock("full after 64 ".len());
    assert_eq!(msg, "full after 64 ");
    assert_eq!(drv.counters().iorecs_in, 0);
    peer.go();
    let mut frame = [0u8; 128];
    for expect in 0..n {
        let rec = loop {
            match drv.pop().unwrap() {
                Some(r) => break r,
                None => drv.wait_ready(WAIT).unwrap(),
            }
        };
        let len = drv.copy_out(&rec, &mut frame).unwrap();
        assert_eq!(check_payload(&frame[..len]), Ok(expect));
        drv.release(rec).unwrap();
    }
    let out = peer.finish();
    assert!(
        out.starts_with(&format!("full after 64 sent {n} invalid 0")),
        "{out}"
    );
    assert_eq!(drv.counters().invalid_iorecs(), 0);
}
