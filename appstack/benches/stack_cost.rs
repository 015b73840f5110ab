//! Per-packet cost of the application stack, side by side with its anchors, in one run:
//! - the stack: `UdpFlow` send (copying and zero-copy) and receive (zero-copy and copying);
//! - the raw Rbuf channel alone (alloc + copy a prebuilt frame + push; pop + read + repost):
//!   stack cost ≈ stack − channel;
//! - Linux UDP sockets on loopback (`send`/`recv` on connected sockets: syscall + kernel stack).
//!
//! Only the measured side is timed: sends are timed in batches of 32 while the "driver" drains
//! untimed; receives are timed while the "driver" refills untimed. Median of 7 runs.
//!
//! `cargo bench -p nemflow-appstack --bench stack_cost` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::hint::black_box;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use nemflow_appstack::testing::{self, DriverEnds};
use nemflow_appstack::{FlowConfig, UdpFlow};
use nemflow_rbuf::IoRec;

const BATCH: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `round` (returns the timed part of one batch) until `packets` packets, `runs` times;
/// returns the median ns per packet.
fn measure(runs: usize, packets: usize, mut round: impl FnMut() -> Duration) -> f64 {
    let mut res = Vec::new();
    for _ in 0..runs {
        let mut t = Duration::ZERO;
        let mut n = 0;
        while n < packets {
            t += round();
            n += BATCH;
        }
        res.push(t.as_nanos() as f64 / n as f64);
    }
    median(res)
}

fn drain(drv: &mut DriverEnds) {
    let mut recs = [IoRec::default(); BATCH];
    loop {
        let k = drv.tx.pop_batch(&mut recs).unwrap();
        if k == 0 {
            break;
        }
        drv.tx.release_batch(&recs[..k]).unwrap();
    }
}

fn flows() -> ((UdpFlow, DriverEnds), (UdpFlow, DriverEnds)) {
    let ((mut a, da), (mut b, db)) =
        testing::connected_pair(1500, 256, FlowConfig::default()).unwrap();
    a.set_nonblocking(true);
    b.set_nonblocking(true);
    ((a, da), (b, db))
}

/// A frame as B would receive it from A (built by A's stack once).
fn frame_from_a(len: usize) -> Vec<u8> {
    let ((mut a, mut da), _) = flows();
    a.send(&vec![0x5a; len]).unwrap();
    da.take_frames().unwrap().remove(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, packets) = if quick { (3, 20_000) } else { (7, 200_000) };
    println!("per-packet cost, ns (median of {runs} runs of {packets} packets)");
    println!("{:<44} {:>10} {:>10}", "operation", "64 B", "1472 B");
    let mut rows: Vec<(&str, [f64; 2])> = Vec::new();

    // ---- send ----
    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let ((mut a, mut da), _) = flows();
        let data = vec![0xa5u8; len];
        r[i] = measure(runs, packets, || {
            let t = Instant::now();
            for _ in 0..BATCH {
                a.send(black_box(&data)).unwrap();
            }
            let e = t.elapsed();
            drain(&mut da);
            e
        });
    }
    rows.push(("stack send (UdpFlow::send, copies payload)", r));

    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let ((mut a, mut da), _) = flows();
        r[i] = measure(runs, packets, || {
            let t = Instant::now();
            for k in 0..BATCH {
                let mut b = a.tx_buf(len).unwrap();
                // The app writes its payload in place: here a stamp of 8 bytes.
                b.write_at(0, &(k as u64).to_be_bytes()).unwrap();
                b.send().unwrap();
            }
            let e = t.elapsed();
            drain(&mut da);
            e
        });
    }
    rows.push(("stack send zero-copy (tx_buf, 8-byte write)", r));

    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let frame = frame_from_a(len);
        let (mut tx, _, mut drv) = testing::bare_endpoints(256).unwrap();
        r[i] = measure(runs, packets, || {
            let t = Instant::now();
            for _ in 0..BATCH {
                let e = tx.alloc(frame.len()).unwrap().unwrap();
                tx.buf_mut(e).unwrap().copy_from_slice(black_box(&frame));
                tx.push(IoRec::single(e, 0)).unwrap();
            }
            let e = t.elapsed();
            drain(&mut drv);
            e
        });
    }
    rows.push(("anchor: rbuf channel only (alloc+copy+push)", r));

    // ---- receive ----
    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let frame = frame_from_a(len);
        let (_, (mut b, mut db)) = flows();
        r[i] = measure(runs, packets, || {
            for _ in 0..BATCH {
                assert!(db.inject(&frame).unwrap());
            }
            let t = Instant::now();
            for _ in 0..BATCH {
                let d = b.recv_datagram().unwrap();
                black_box(d.payload()[0]);
            }
            t.elapsed()
        });
    }
    rows.push(("stack recv zero-copy (recv_datagram+drop)", r));

    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let frame = frame_from_a(len);
        let (_, (mut b, mut db)) = flows();
        let mut buf = vec![0u8; 2048];
        r[i] = measure(runs, packets, || {
            for _ in 0..BATCH {
                assert!(db.inject(&frame).unwrap());
            }
            let t = Instant::now();
            for _ in 0..BATCH {
                black_box(b.recv(&mut buf).unwrap());
            }
            t.elapsed()
        });
    }
    rows.push(("stack recv (UdpFlow::recv, copies payload)", r));

    let mut r = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let frame = frame_from_a(len);
        let (_, mut rx, mut drv) = testing::bare_endpoints(256).unwrap();
        r[i] = measure(runs, packets, || {
            for _ in 0..BATCH {
                assert!(drv.inject(&frame).unwrap());
            }
            let t = Instant::now();
            for _ in 0..BATCH {
                let p = rx.pop().unwrap().unwrap();
                black_box(rx.payload(&p)[0]);
                rx.repost(p).unwrap();
            }
            t.elapsed()
        });
    }
    rows.push(("anchor: rbuf channel only (pop+read+repost)", r));

    // ---- Linux UDP sockets, loopback ----
    let mut rs = [0.0; 2];
    let mut rr = [0.0; 2];
    for (i, len) in [64usize, 1472].into_iter().enumerate() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(d.local_addr().unwrap()).unwrap();
        let data = vec![0xa5u8; len];
        let mut buf = vec![0u8; 2048];
        let mut recv_t = Vec::new();
        rs[i] = measure(runs, packets, || {
            let t = Instant::now();
            for _ in 0..BATCH {
                s.send(black_box(&data)).unwrap();
            }
            let e = t.elapsed();
            let t = Instant::now();
            for _ in 0..BATCH {
                black_box(d.recv(&mut buf).unwrap());
            }
            recv_t.push(t.elapsed());
            e
        });
        let total: Duration = recv_t.iter().sum();
        rr[i] = total.as_nanos() as f64 / (recv_t.len() * BATCH) as f64;
    }
    rows.push(("anchor: Linux UDP send(), loopback", rs));
    rows.push(("anchor: Linux UDP recv(), loopback (mean)", rr));

    for (name, v) in rows {
        println!("{name:<44} {:>10.0} {:>10.0}", v[0], v[1]);
    }
}
