//! Run records (control layout 3): a TMM consumer hands back iorecs released in pop order as one
//! record per stretch of consecutive push numbers, other orders one record per iorec; the
//! producer frees a run's buffers from its own record of what it pushed, and a hostile run (none,
//! too many, too old, already returned, misplaced) is a typed error and a counter.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use nemflow_rbuf::iorec::run_words;
use nemflow_rbuf::testing::{IndexWord, RawControl};
use nemflow_rbuf::{
    create, rmm, tmm, ChannelFds, ChannelSpec, Error, Extent, FifoId, IoRec, IoRecError,
};

const SPEC: ChannelSpec = ChannelSpec {
    data_bytes: 1 << 16,
    slots: 8,
    max_packet_bytes: 256,
    hugetlb: false,
};

fn channel() -> (ChannelFds, RawControl, tmm::Producer, tmm::Consumer) {
    let fds = create(&SPEC).unwrap();
    let raw = RawControl::map(&fds.control, &SPEC).unwrap();
    let app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    let drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    (fds, raw, app, drv)
}

/// Allocates and pushes `n` one-extent iorecs with `push_extents`.
fn push(app: &mut tmm::Producer, n: usize) {
    let mut exts = vec![Extent::default(); n];
    assert_eq!(app.alloc_batch(8, &mut exts).unwrap(), n);
    assert_eq!(app.push_extents(&exts, 0x77).unwrap(), n);
}

/// The one slot of a one-extent iorec's record.
fn one_slot(rec: IoRec) -> [u64; 2] {
    let w = rec.encode();
    [w[0], w[1]]
}

fn all_free(app: &tmm::Producer) -> bool {
    app.buffers().0 == app.buffers().1
}

#[test]
fn an_in_order_release_is_one_slot() {
    let (_fds, raw, mut app, mut drv) = channel();
    push(&mut app, 7);
    let mut held = [IoRec::default(); 7];
    assert_eq!(drv.pop_batch(&mut held).unwrap(), 7);
    assert!(held.iter().all(|r| r.flags == 0x77 && r.count == 1));
    drv.release_batch(&held[..3]).unwrap();
    drv.release_batch(&held[3..]).unwrap();
    assert_eq!(raw.index(IndexWord::EmptyHead), 2, "two releases, two runs");
    assert_eq!(app.reclaim().unwrap(), 7);
    assert!(all_free(&app));
    let (a, d) = (app.counters(), drv.counters());
    assert_eq!((a.invalid_iorecs(), d.invalid_iorecs()), (0, 0));
    assert_eq!((a.iorecs_in, d.iorecs_out), (7, 7));
}

#[test]
fn out_of_order_releases_go_back_one_by_one_and_runs_resume() {
    let (_fds, raw, mut app, mut drv) = channel();
    push(&mut app, 6);
    let mut held = [IoRec::default(); 6];
    assert_eq!(drv.pop_batch(&mut held).unwrap(), 6);
    // The second and fifth first (two records), then the rest in order: 1st alone (a run), then
    // 3rd and 4th (a run: the 2nd went back already), then the 6th (a run after the gap).
    drv.release_batch(&[held[1], held[4]]).unwrap();
    assert_eq!(raw.index(IndexWord::EmptyHead), 2);
    drv.release(held[0]).unwrap();
    drv.release_batch(&[held[2], held[3], held[5]]).unwrap();
    assert_eq!(raw.index(IndexWord::EmptyHead), 5, "runs [0], [2, 3], [5]");
    assert_eq!(app.reclaim().unwrap(), 6);
    assert!(all_free(&app));
    assert_eq!(app.counters().invalid_iorecs(), 0);
}

/// An iorec the consumer rejects (too long) takes a push number but is never returned: the runs
/// around it leave it out, and its buffers stay out, as before runs.
#[test]
fn a_rejected_iorec_splits_the_run() {
    let (_fds, raw, mut app, mut drv) = channel();
    push(&mut app, 1);
    let mut exts = [Extent::default(); 2];
    assert_eq!(app.alloc_batch(200, &mut exts).unwrap(), 2);
    app.push(IoRec::from_extents(&exts, 0).unwrap()).unwrap();
    push(&mut app, 1);
    let mut held = [IoRec::default(); 3];
    assert_eq!(drv.pop_batch(&mut held).unwrap(), 2);
    assert_eq!(drv.counters().invalid_too_long, 1);
    drv.release_batch(&held[..2]).unwrap();
    assert_eq!(raw.index(IndexWord::EmptyHead), 2, "runs [0] and [2]");
    assert_eq!(app.reclaim().unwrap(), 2);
    assert_eq!(
        app.buffers().1,
        app.buffers().0 - 2,
        "the rejected iorec's two buffers"
    );
    assert_eq!(app.counters().invalid_iorecs(), 0);
}

/// Releasing an iorec the consumer did not pop: the per-iorec path, refused by the producer;
/// the popped ones keep going back as runs. (The release counts against what is held.)
#[test]
fn releasing_what_was_not_popped_is_not_a_run() {
    let (_fds, raw, mut app, mut drv) = channel();
    push(&mut app, 3);
    let mut held = [IoRec::default(); 3];
    assert_eq!(drv.pop_batch(&mut held).unwrap(), 3);
    let foreign = IoRec::single(Extent::new(4096, 8), 0);
    drv.release_batch(&[foreign, held[0]]).unwrap();
    drv.release(held[1]).unwrap();
    assert_eq!(
        raw.index(IndexWord::EmptyHead),
        3,
        "two records, then a run"
    );
    assert!(drv.release(held[2]).is_err(), "three released already");
    assert_eq!(app.reclaim().unwrap(), 2);
    assert_eq!(app.counters().invalid_not_owned, 1);
    assert_eq!(app.buffers().1, app.buffers().0 - 1);
}

/// A hostile driver's runs against the app's producer: each refused whole with `BadRun`, or per
/// iorec with `NotOwned` where the iorec is not out; the good ones still work.
#[test]
fn hostile_runs_are_counted_and_refused() {
    let (_fds, raw, mut app, _drv) = channel();
    push(&mut app, 4);
    let (held_out, total) = (app.buffers().0 - app.buffers().1, app.buffers().0);
    assert_eq!(held_out, 4);
    let runs = [
        run_words(0, 0),                                     // empty
        run_words(0, 5),                                     // more than were pushed
        run_words(3, 2),                                     // past the last push
        run_words(u32::MAX, 1),                              // before the first push
        run_words(0, u32::MAX),                              // huge
        run_words(4, 1),                                     // not pushed yet
        run_words(1, 2),                                     // fine: iorecs 1 and 2
        run_words(2, 1),                                     // iorec 2 again: not out any more
        one_slot(IoRec::single(Extent::new(3 * 256, 8), 0)), // iorec 3 by extent
        run_words(3, 1),                                     // iorec 3 again, by run
    ];
    // Two rounds: the FIFO has 8 slots.
    let (first, second) = runs.split_at(6);
    for (i, w) in first.iter().enumerate() {
        raw.write_raw_slot(FifoId::Empty, i as u32, *w);
    }
    raw.set_index(IndexWord::EmptyHead, 6);
    assert_eq!(app.reclaim().unwrap(), 0);
    assert_eq!(app.counters().invalid_run, 6);
    for (i, w) in second.iter().enumerate() {
        raw.write_raw_slot(FifoId::Empty, 6 + i as u32, *w);
    }
    raw.set_index(IndexWord::EmptyHead, runs.len() as u32);
    assert_eq!(app.reclaim().unwrap(), 2 + 1);
    let c = app.counters();
    assert_eq!((c.invalid_run, c.invalid_not_owned), (6, 2), "{c:?}");
    assert!(app.broken().is_none());
    assert_eq!(app.buffers(), (total, total - 1), "iorec 0 is still out");
    // The legitimate return of iorec 0 still works.
    raw.write_raw_slot(FifoId::Empty, runs.len() as u32, run_words(0, 1));
    raw.set_index(IndexWord::EmptyHead, runs.len() as u32 + 1);
    assert_eq!(app.reclaim().unwrap(), 1);
    assert!(all_free(&app));
}

/// A run over iorecs of which some are not out (one returned by extent already, one of three
/// buffers) frees the others, each once, and counts the one not out; the run goes on after it.
#[test]
fn a_run_over_a_returned_iorec_frees_the_rest() {
    let (_fds, raw, mut app, _drv) = channel();
    push(&mut app, 2);
    let mut exts = [Extent::default(); 3];
    assert_eq!(app.alloc_batch(8, &mut exts).unwrap(), 3);
    app.push(IoRec::from_extents(&exts, 0).unwrap()).unwrap();
    push(&mut app, 2);
    let out = app.buffers().0 - app.buffers().1;
    assert_eq!(out, 7);
    // Iorec 1 (push numbers 0..5) goes back by extent, then a run names all five.
    let second = 8; // buffers are 256 bytes apart, lowest first: iorec 1 is the second
    raw.write_raw_slot(
        FifoId::Empty,
        0,
        one_slot(IoRec::single(Extent::new(256, second), 0)),
    );
    raw.write_raw_slot(FifoId::Empty, 1, run_words(0, 5));
    raw.set_index(IndexWord::EmptyHead, 2);
    assert_eq!(app.reclaim().unwrap(), 1 + 4);
    let c = app.counters();
    assert_eq!((c.invalid_run, c.invalid_not_owned), (0, 1), "{c:?}");
    assert!(all_free(&app));
    // Each buffer is on the free stack once: allocating them all gives distinct buffers.
    let mut all = vec![Extent::default(); app.buffers().0];
    assert_eq!(app.alloc_batch(8, &mut all).unwrap(), all.len());
    let mut offsets: Vec<u32> = all.iter().map(|e| e.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), all.len());
}

/// A run older than the producer remembers (four times the FIFO's slots) is refused, not misread.
#[test]
fn runs_older_than_the_shadow_are_refused() {
    let (_fds, raw, mut app, mut drv) = channel();
    let mut held = [IoRec::default(); 8];
    for _ in 0..5 {
        push(&mut app, 8);
        assert_eq!(drv.pop_batch(&mut held).unwrap(), 8);
        drv.release_batch(&held).unwrap();
        assert_eq!(app.reclaim().unwrap(), 8);
    }
    // 40 pushed; push numbers 0..8 are beyond the last 32.
    let at = raw.index(IndexWord::EmptyHead);
    raw.write_raw_slot(FifoId::Empty, at, run_words(0, 1));
    raw.write_raw_slot(FifoId::Empty, at + 1, run_words(7, 1));
    raw.set_index(IndexWord::EmptyHead, at + 2);
    assert_eq!(app.reclaim().unwrap(), 0);
    assert_eq!(app.counters().invalid_run, 2);
    assert!(all_free(&app));
}

/// Run records anywhere but a TMM empty FIFO are invalid records for whoever reads them.
#[test]
fn misplaced_runs_are_invalid() {
    let (_fds, raw, _app, mut drv) = channel();
    raw.write_raw_slot(FifoId::Full, 0, run_words(0, 1));
    raw.set_index(IndexWord::FullHead, 1);
    assert!(matches!(
        drv.pop(),
        Err(Error::InvalidIoRec(IoRecError::BadRun { first: 0, n: 1 }))
    ));
    assert_eq!(drv.counters().invalid_run, 1);

    // Receive mode: the driver taking empties, the app popping filled ones.
    let fds = create(&SPEC).unwrap();
    let raw = RawControl::map(&fds.control, &SPEC).unwrap();
    let mut app = rmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let mut drv = rmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    raw.write_raw_slot(FifoId::Empty, 0, run_words(0, 1));
    raw.set_index(IndexWord::EmptyHead, 1);
    assert!(matches!(
        drv.take_empty(),
        Err(Error::InvalidIoRec(IoRecError::BadRun { .. }))
    ));
    raw.write_raw_slot(FifoId::Full, 0, run_words(0, 1));
    raw.set_index(IndexWord::FullHead, 1);
    assert!(matches!(
        app.pop(),
        Err(Error::InvalidIoRec(IoRecError::BadRun { .. }))
    ));
    assert_eq!(
        (drv.counters().invalid_run, app.counters().invalid_run),
        (1, 1)
    );
}

/// `push_extents` checks ownership like `push_batch`: an extent not held stops the batch.
#[test]
fn push_extents_refuses_buffers_not_held() {
    let (_fds, _raw, mut app, mut drv) = channel();
    let mut exts = [Extent::default(); 2];
    assert_eq!(app.alloc_batch(8, &mut exts).unwrap(), 2);
    let foreign = Extent::new(8192, 8);
    assert!(matches!(
        app.push_extents(&[foreign, exts[0]], 0),
        Err(Error::NotHeld { offset: 8192, .. })
    ));
    assert_eq!(
        app.push_extents(&[exts[0], foreign, exts[1]], 5).unwrap(),
        1
    );
    assert_eq!(app.push_extents(&[exts[0]], 5).ok(), None, "pushed already");
    let r = drv.pop().unwrap().unwrap();
    assert_eq!((r.extents[0], r.flags), (exts[0], 5));
    drv.release(r).unwrap();
    app.reclaim().unwrap();
    app.free(exts[1]).unwrap();
    assert!(all_free(&app));
}

/// An allocation marks nothing (a buffer off the free stack is held): a buffer never allocated,
/// one freed again and one pushed already are still refused by `buf_mut` and the pushes, also
/// after a free reuses the stack position of a buffer still held.
#[test]
fn held_buffers_are_exactly_those_allocated_and_not_pushed_or_freed() {
    let (_fds, _raw, mut app, mut drv) = channel();
    let never = Extent::new(200 * 256, 8);
    assert!(matches!(app.buf_mut(never), Err(Error::NotHeld { .. })));
    assert!(matches!(
        app.push_extents(&[never], 0),
        Err(Error::NotHeld { .. })
    ));
    let mut ab = [Extent::default(); 2];
    assert_eq!(app.alloc_batch(8, &mut ab).unwrap(), 2);
    let [a, b] = ab;
    // `a` goes back on the stack where `b` was taken from; `b` stays held.
    app.free(a).unwrap();
    assert!(matches!(app.buf_mut(a), Err(Error::NotHeld { .. })));
    assert!(app.free(a).is_err(), "freed twice");
    assert!(matches!(
        app.push_extents(&[a], 0),
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(
        app.push(IoRec::single(a, 0)),
        Err(Error::NotHeld { .. })
    ));
    app.buf_mut(b).unwrap().copy_from_slice(b"12345678");
    assert_eq!(app.push_extents(&[b], 0).unwrap(), 1);
    assert!(matches!(app.buf_mut(b), Err(Error::NotHeld { .. })));
    assert!(matches!(
        app.push_extents(&[b], 0),
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(
        app.push(IoRec::single(b, 0)),
        Err(Error::NotHeld { .. })
    ));
    // `a` again, off the stack: held once more.
    let a2 = app.alloc(8).unwrap().unwrap();
    assert_eq!(a2, a);
    app.buf_mut(a2).unwrap();
    assert_eq!(app.push_extents(&[a2], 0).unwrap(), 1);
    let mut got = [IoRec::default(); 2];
    assert_eq!(drv.pop_batch(&mut got).unwrap(), 2);
    drv.release_batch(&got).unwrap();
    assert_eq!(app.reclaim().unwrap(), 2);
    assert!(all_free(&app));
    assert_eq!(app.counters().invalid_iorecs(), 0);
}

/// A hostile run or record naming a buffer that came back and was allocated again (held, with
/// nothing marked by the allocation) is refused and counted; the buffer stays held.
#[test]
fn a_late_return_of_a_reallocated_buffer_is_refused() {
    let (_fds, raw, mut app, mut drv) = channel();
    push(&mut app, 1);
    let r = drv.pop().unwrap().unwrap();
    drv.release(r).unwrap();
    assert_eq!(app.reclaim().unwrap(), 1);
    let e = app.alloc(8).unwrap().unwrap();
    assert_eq!(
        e.offset, r.extents[0].offset,
        "the same buffer, off the stack"
    );
    // Push number 0 again by run, and the buffer by extent.
    raw.write_raw_slot(FifoId::Empty, 1, run_words(0, 1));
    raw.write_raw_slot(FifoId::Empty, 2, one_slot(IoRec::single(e, 0)));
    raw.set_index(IndexWord::EmptyHead, 3);
    assert_eq!(app.reclaim().unwrap(), 0);
    assert_eq!(app.counters().invalid_not_owned, 2);
    app.buf_mut(e).unwrap();
    assert_eq!(app.buffers().1, app.buffers().0 - 1, "still held");
    app.free(e).unwrap();
    assert!(all_free(&app));
}

proptest::proptest! {
    /// Any interleaving of pushes (one to three extents), pops and releases in any order (whole
    /// prefixes in order, or shuffled subsets): every buffer comes back, nothing is invalid.
    #[test]
    fn any_release_order_returns_every_buffer(
        ops in proptest::collection::vec((0u8..4, 1usize..6, proptest::prelude::any::<u64>()), 1..120),
    ) {
        let (_fds, _raw, mut app, mut drv) = channel();
        let mut held: Vec<IoRec> = Vec::new();
        let mut out = [IoRec::default(); 8];
        for (op, k, seed) in ops {
            match op {
                0 => {
                    for j in 0..k {
                        let n = 1 + (seed as usize >> j) % 3;
                        let mut exts = [Extent::default(); 3];
                        if app.alloc_batch(8, &mut exts[..n]).unwrap() < n {
                            break;
                        }
                        if app.push(IoRec::from_extents(&exts[..n], 0).unwrap()).is_err() {
                            for e in &exts[..n] {
                                app.free(*e).unwrap();
                            }
                        }
                    }
                }
                1 => {
                    let m = drv.pop_batch(&mut out[..k]).unwrap();
                    held.extend_from_slice(&out[..m]);
                }
                2 => {
                    // The oldest `k` in order: runs.
                    let m = k.min(held.len());
                    drv.release_batch(&held[..m]).unwrap();
                    held.drain(..m);
                }
                _ => {
                    // `k` picked by the seed, in a scrambled order.
                    let mut pick = Vec::new();
                    for j in 0..k.min(held.len()) {
                        let i = (seed.rotate_left(j as u32 * 7) as usize) % held.len();
                        pick.push(held.remove(i));
                    }
                    drv.release_batch(&pick).unwrap();
                }
            }
            app.reclaim().unwrap();
        }
        drv.release_batch(&held).unwrap();
        loop {
            let m = drv.pop_batch(&mut out).unwrap();
            drv.release_batch(&out[..m]).unwrap();
            app.reclaim().unwrap();
            if m == 0 {
                break;
            }
        }
        proptest::prop_assert!(all_free(&app), "{:?}", app.buffers());
        let (a, d) = (app.counters(), drv.counters());
        proptest::prop_assert_eq!((a.invalid_iorecs(), d.invalid_iorecs()), (0, 0));
    }
}

/// A consumer that keeps one iorec while many later ones come and go returns it one record
/// alone once it is older than the producer remembers: it comes back, no run is refused.
#[test]
fn an_iorec_held_for_long_still_comes_back() {
    let (_fds, _raw, mut app, mut drv) = channel();
    push(&mut app, 1);
    let old = drv.pop().unwrap().unwrap();
    let mut out = [IoRec::default(); 4];
    for _ in 0..20 {
        push(&mut app, 4);
        assert_eq!(drv.pop_batch(&mut out).unwrap(), 4);
        drv.release_batch(&out).unwrap();
        app.reclaim().unwrap();
    }
    drv.release(old).unwrap();
    assert_eq!(app.reclaim().unwrap(), 1);
    assert!(all_free(&app));
    assert_eq!(app.counters().invalid_iorecs(), 0);
}
