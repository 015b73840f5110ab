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
