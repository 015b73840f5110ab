//! Records of one and two slots: iorecs of two or three extents take two 16-byte slots, across
//! the ring's end too; a record the producer published only half of is an error and a counter;
//! a consumer with room for one more slot stops before a two-slot record instead of breaking it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use nemflow_rbuf::testing::{IndexWord, RawControl};
use nemflow_rbuf::{
    create, tmm, ChannelSpec, Error, Extent, FifoId, IoRec, IoRecError, RECORD_BYTES, SLOT_BYTES,
};

const SPEC: ChannelSpec = ChannelSpec {
    data_bytes: 1 << 16,
    slots: 8,
    max_packet_bytes: 256,
    hugetlb: false,
};

#[test]
fn slots_are_sixteen_bytes_and_records_at_most_two() {
    assert_eq!((SLOT_BYTES, RECORD_BYTES), (16, 32));
    // Header, two FIFOs of 8 slots of 16 bytes, in whole pages.
    assert_eq!(SPEC.control_bytes(), 4096);
}

/// Iorecs of 1, 2 and 3 extents, in every phase of an 8-slot ring, arrive whole and in order,
/// and every buffer comes back.
#[test]
fn mixed_records_cross_the_ring_end() {
    let fds = create(&SPEC).unwrap();
    let mut app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    let mut drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let mut sent = 0u32;
    let mut got = 0u32;
    let mut out = [IoRec::default(); 3];
    let mut frame = [0u8; 256];
    for round in 0..500u32 {
        // Up to three iorecs of 1..=3 extents; each extent's bytes say which iorec it is.
        let mut recs = Vec::new();
        for j in 0..(round % 3 + 1) {
            let n = ((round + j) % 3 + 1) as usize;
            let mut exts = [Extent::default(); 3];
            assert_eq!(app.alloc_batch(10, &mut exts[..n]).unwrap(), n);
            for e in &exts[..n] {
                app.buf_mut(*e)
                    .unwrap()
                    .fill((sent + recs.len() as u32) as u8);
            }
            recs.push(IoRec::from_extents(&exts[..n], n as u16).unwrap());
        }
        let mut pushed = 0;
        while pushed < recs.len() {
            let k = app.push_batch(&recs[pushed..]).unwrap();
            pushed += k;
            sent += k as u32;
            // Drain with a batch size that varies, so the consumer stops at every offset.
            let k = drv.pop_batch(&mut out[..(round as usize % 3) + 1]).unwrap();
            for r in &out[..k] {
                let len = drv.copy_out(r, &mut frame).unwrap();
                assert_eq!(len, 10 * usize::from(r.count));
                assert!(frame[..len].iter().all(|&b| b == got as u8), "iorec {got}");
                assert_eq!(r.flags, u16::from(r.count));
                got += 1;
            }
            drv.release_batch(&out[..k]).unwrap();
        }
    }
    while got < sent {
        let k = drv.pop_batch(&mut out).unwrap();
        got += k as u32;
        drv.release_batch(&out[..k]).unwrap();
    }
    app.reclaim().unwrap();
    assert_eq!(app.buffers().0, app.buffers().1, "every buffer came back");
    let (a, d) = (app.counters(), drv.counters());
    assert_eq!((a.invalid_iorecs(), d.invalid_iorecs()), (0, 0));
    assert_eq!(
        (a.iorecs_out, d.iorecs_in),
        (u64::from(sent), u64::from(sent))
    );
}

/// A two-slot header with only its first slot published: counted, skipped, and the channel
/// carries on (the driver's side, and the app reclaiming from a hostile driver).
#[test]
fn half_published_records_are_invalid() {
    let fds = create(&SPEC).unwrap();
    let raw = RawControl::map(&fds.control, &SPEC).unwrap();
    let mut drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let two = IoRec::from_extents(&[Extent::new(0, 8), Extent::new(512, 8)], 0).unwrap();
    assert_eq!(raw.write_slot(FifoId::Full, 0, two.encode()), 2);
    raw.set_index(IndexWord::FullHead, 1);
    assert!(matches!(
        drv.pop(),
        Err(Error::InvalidIoRec(IoRecError::Truncated { count: 2 }))
    ));
    assert_eq!(drv.counters().invalid_count, 1);
    // The one slot was consumed; the next record, whole, is fine.
    assert_eq!(
        raw.write_slot(
            FifoId::Full,
            1,
            IoRec::single(Extent::new(0, 8), 0).encode()
        ),
        1
    );
    raw.set_index(IndexWord::FullHead, 2);
    assert!(drv.pop().unwrap().is_some());
    assert!(drv.broken().is_none());

    // The app's producer reading its empty FIFO from a driver that does the same.
    let fds = create(&SPEC).unwrap();
    let raw = RawControl::map(&fds.control, &SPEC).unwrap();
    let mut app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    raw.write_slot(FifoId::Empty, 0, two.encode());
    raw.set_index(IndexWord::EmptyHead, 1);
    assert_eq!(app.reclaim().unwrap(), 0);
    assert_eq!(app.counters().invalid_count, 1);
}

/// With room on the empty FIFO for one more slot only, the consumer leaves a two-slot record
/// where it is (it could not hand it back) and takes it once it has released.
#[test]
fn a_two_slot_record_waits_for_room_to_return_it() {
    let fds = create(&SPEC).unwrap();
    let mut app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    let mut drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let mut recs = Vec::new();
    for _ in 0..7 {
        recs.push(IoRec::single(app.alloc(8).unwrap().unwrap(), 0));
    }
    assert_eq!(app.push_batch(&recs).unwrap(), 7);
    let mut held = [IoRec::default(); 7];
    assert_eq!(drv.pop_batch(&mut held).unwrap(), 7);
    let mut exts = [Extent::default(); 2];
    assert_eq!(app.alloc_batch(8, &mut exts).unwrap(), 2);
    app.push(IoRec::from_extents(&exts, 0).unwrap()).unwrap();
    // 7 of the empty FIFO's 8 slots are spoken for: no room to return two more.
    assert_eq!(drv.pop().unwrap(), None);
    assert!(
        !drv.ready().unwrap(),
        "not ready: the head record does not fit"
    );
    // Released out of order: one record (slot) per iorec, not a run.
    held.reverse();
    drv.release_batch(&held).unwrap();
    // The seven returned slots stay on the empty FIFO until the app reclaims them: still one
    // slot of room, still no pop (and not ready, so a blocking driver sleeps instead of spinning).
    assert_eq!(drv.pop().unwrap(), None);
    assert!(!drv.ready().unwrap());
    assert_eq!(app.reclaim().unwrap(), 7);
    assert!(drv.ready().unwrap());
    let r = drv.pop().unwrap().expect("the two-slot iorec");
    assert_eq!((r.count, r.slots()), (2, 2));
    drv.release(r).unwrap();
    app.reclaim().unwrap();
    assert_eq!(app.buffers().0, app.buffers().1);
    assert_eq!(drv.counters().invalid_iorecs(), 0);
}
