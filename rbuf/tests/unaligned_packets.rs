//! A `max_packet_bytes` that is not a multiple of the cache line (1514, an Ethernet frame): the
//! buffers a master hands out must still be iorecs its peer accepts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use nemflow_rbuf::{create, rmm, tmm, ChannelSpec, IoRec};

const SPEC: ChannelSpec = ChannelSpec {
    data_bytes: 1 << 16,
    slots: 16,
    max_packet_bytes: 1514,
    hugetlb: false,
};

#[test]
fn posted_receive_buffers_are_valid_for_the_driver() {
    let fds = create(&SPEC).unwrap();
    let mut app = rmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let mut drv = rmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    assert!(app.post_free().unwrap() > 0);
    let buf = drv.take_empty().unwrap().expect("a valid empty buffer");
    assert_eq!(buf.total_len(), 1514);
    drv.copy_in(&buf, &[7u8; 1514]).unwrap();
    drv.push_full(buf, 1514).unwrap();
    let pkt = app.pop().unwrap().unwrap();
    assert_eq!(app.payload(&pkt), &[7u8; 1514][..]);
    assert_eq!(drv.counters().invalid_too_long, 0);
}

#[test]
fn transmit_buffers_hold_a_whole_packet_and_no_more() {
    let fds = create(&SPEC).unwrap();
    let mut app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    let mut drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    assert_eq!(app.buffer_bytes(), 1514);
    assert!(app.alloc(1515).is_err());
    let ext = app.alloc(1514).unwrap().unwrap();
    app.buf_mut(ext).unwrap().fill(1);
    app.push(IoRec::single(ext, 0)).unwrap();
    assert!(drv.pop().unwrap().is_some());
}

/// `push_extents` with buffers 1536 bytes apart (not a power of two): it finds each extent's
/// buffer by division, accepts a whole packet and an extent inside a buffer, and refuses one that
/// runs past its buffer's 1514 bytes or starts past the last buffer.
#[test]
fn push_extents_finds_buffers_spaced_unevenly() {
    let fds = create(&SPEC).unwrap();
    let mut app = tmm::Producer::attach(&SPEC, fds.try_clone().unwrap()).unwrap();
    let mut drv = tmm::Consumer::attach(&SPEC, fds.with_read_only_data().unwrap()).unwrap();
    let mut exts = [nemflow_rbuf::Extent::default(); 3];
    assert_eq!(app.alloc_batch(1514, &mut exts).unwrap(), 3);
    assert_eq!(exts[1].offset, 1536);
    let inside = nemflow_rbuf::Extent::new(exts[1].offset + 14, 1500);
    let past = nemflow_rbuf::Extent::new(exts[2].offset + 15, 1500);
    let beyond = nemflow_rbuf::Extent::new(1536 * 42, 8);
    assert_eq!(app.push_extents(&[exts[0], inside, past], 0).unwrap(), 2);
    assert!(app.push_extents(&[beyond], 0).is_err());
    assert_eq!(app.push_extents(&[exts[2]], 0).unwrap(), 1);
    let mut out = [IoRec::default(); 4];
    assert_eq!(drv.pop_batch(&mut out).unwrap(), 3);
    assert_eq!(out[1].extents[0], inside);
    drv.release_batch(&out[..3]).unwrap();
    assert_eq!(app.reclaim().unwrap(), 3);
    assert_eq!(app.buffers().0, app.buffers().1);
}
