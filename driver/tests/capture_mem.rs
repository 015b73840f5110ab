//! Flow capture over the in-memory port with real Rbuf channels: what a capture holds, that it
//! is bounded (a tool that does not read costs drops, counted, never the flow's frames), that
//! other flows are untouched, and that it ends with its flow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use nemflow_driver::datapath::{Datapath, DatapathConfig, FlowError};
use nemflow_driver::port::{MemPeer, MemPort};
use nemflow_proto::ctl::{CaptureDirection, CaptureHeader};
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::{rmm, ChannelSpec, IoRec};
use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
use nemflow_testkit::frames::{UdpFrame, HOST_MAC, PEER_MAC};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn datapath() -> (Datapath<MemPort>, MemPeer) {
    let (port, peer) = MemPort::new(HOST_MAC);
    let dp = Datapath::new(
        port,
        DatapathConfig {
            rate_bps: 1_000_000_000,
            reserve_ppm: 20_000,
            max_frame_bytes: 1514,
            burst: 32,
            drop_log_entries: 1000,
            subnet_broadcast: Ipv4Addr::new(10, 77, 0, 255),
            port_name: "mem0".into(),
        },
    )
    .unwrap();
    (dp, peer)
}

fn flow(dp: &mut Datapath<MemPort>, id: u32, port: u16) -> AppEnds {
    let (app, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    dp.install(
        FlowId(id),
        Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST, port),
            broadcast: false,
        },
        Template {
            src_mac: HOST_MAC,
            kind: TemplateKind::Ipv4 {
                src: HOST,
                proto: ip_proto::UDP,
                src_port: port,
                dst: None,
            },
        },
        Qos::BEST_EFFORT,
        &spec(64),
        &spec(64),
        fds,
        0,
    )
    .unwrap();
    app
}

/// The tool's end of a capture channel with `slots` buffers posted, and the driver's fds.
fn capture_channel(slots: u32, snap: u32) -> (ChannelSpec, rmm::Consumer, Vec<OwnedFd>) {
    let spec = ChannelSpec {
        data_bytes: u64::from(slots) * 2048,
        slots,
        max_packet_bytes: CaptureHeader::BYTES as u32 + snap,
        hugetlb: false,
    };
    let fds = nemflow_rbuf::create(&spec).unwrap();
    let mut rx = rmm::Consumer::attach(&spec, fds.with_read_only_data().unwrap()).unwrap();
    rx.post_free().unwrap();
    (spec, rx, fds.into_vec())
}

fn captured(rx: &mut rmm::Consumer) -> Vec<(CaptureHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(p) = rx.pop().unwrap() {
        let b = rx.payload(&p);
        let h = CaptureHeader::decode(b).unwrap();
        out.push((h, b[CaptureHeader::BYTES..].to_vec()));
        rx.repost(p).unwrap();
    }
    out
}

fn inbound(port: u16, payload: &[u8]) -> Vec<u8> {
    UdpFrame::new(
        SocketAddrV4::new(PEER, 9),
        SocketAddrV4::new(HOST, port),
        payload,
    )
    .build()
}

fn send(app: &mut AppEnds, frame: &[u8]) {
    app.tx.reclaim().unwrap();
    let ext = app.tx.alloc(frame.len()).unwrap().expect("tx buffer");
    app.tx.buf_mut(ext).unwrap().copy_from_slice(frame);
    app.tx.push(IoRec::single(ext, 0)).unwrap();
}

#[test]
fn a_capture_holds_both_directions_of_its_flow_only() {
    let (mut dp, peer) = datapath();
    let mut a = flow(&mut dp, 2, 7001);
    let mut b = flow(&mut dp, 3, 7002);
    let (spec, mut rx, fds) = capture_channel(64, 2048);
    let id = dp
        .capture_start(FlowId(2), CaptureDirection::Both, &spec, fds)
        .unwrap();
    let in_a = inbound(7001, b"to a");
    let in_b = inbound(7002, b"to b");
    peer.inject(in_a.clone());
    peer.inject(in_b.clone());
    let out_a = UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, 7001),
            SocketAddrV4::new(PEER, 9),
            b"from a",
        )
    }
    .build();
    send(&mut a, &out_a);
    dp.poll(1_000_000);
    dp.poll(2_000_000);
    let got = captured(&mut rx);
    assert_eq!(got.len(), 2, "flow 2's two frames, none of flow 3's");
    let (rx_h, rx_f) = got.iter().find(|(h, _)| !h.tx).unwrap();
    assert_eq!(rx_f, &in_a);
    assert_eq!(rx_h.orig_len as usize, in_a.len());
    let (_, tx_f) = got.iter().find(|(h, _)| h.tx).unwrap();
    assert_eq!(tx_f, &out_a);
    assert!(got
        .iter()
        .all(|(h, _)| h.time_ns > 1_600_000_000_000_000_000));
    // The flows themselves got their frames as always.
    assert!(a.rx.pop().unwrap().is_some());
    assert!(b.rx.pop().unwrap().is_some());
    assert_eq!(peer.take_sent(), vec![out_a]);
    let c = dp.capture_stats(id).unwrap();
    assert_eq!((c.captured, c.dropped, c.active), (2, 0, true));
    let c = dp.capture_stop(id).unwrap();
    assert_eq!((c.captured, c.active), (2, false));
    assert!(dp.capture_stats(id).is_none());
    peer.inject(in_a);
    dp.poll(3_000_000);
    assert!(captured(&mut rx).is_empty(), "nothing after the stop");
}

#[test]
fn a_tool_that_does_not_read_costs_counted_drops_never_the_flows_frames() {
    let (mut dp, peer) = datapath();
    let mut a = flow(&mut dp, 2, 7001);
    let (spec, mut rx, fds) = capture_channel(4, 64);
    let id = dp
        .capture_start(FlowId(2), CaptureDirection::Rx, &spec, fds)
        .unwrap();
    let frame = inbound(7001, &[7u8; 200]);
    for round in 0..10u64 {
        peer.inject(frame.clone());
        dp.poll(round * 1_000_000);
        // The app reads its own channel; the capture tool reads nothing.
        let p = a.rx.pop().unwrap().expect("the flow gets every frame");
        a.rx.repost(p).unwrap();
    }
    let c = dp.capture_stats(id).unwrap();
    assert_eq!((c.captured, c.dropped), (4, 6), "{c:?}");
    let stats = &dp.flow_stats(Some(FlowId(2))).unwrap()[0];
    assert_eq!((stats.rx_packets, stats.rx_dropped_no_buffer), (10, 0));
    // Snapshots are cut to the buffer; the header keeps the length on the wire.
    let got = captured(&mut rx);
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].1, frame[..64]);
    assert_eq!(got[0].0.orig_len as usize, frame.len());
}

#[test]
fn a_capture_ends_with_its_flow_and_refuses_unknown_flows() {
    let (mut dp, peer) = datapath();
    let _a = flow(&mut dp, 2, 7001);
    let (spec, mut rx, fds) = capture_channel(8, 2048);
    assert!(matches!(
        dp.capture_start(FlowId(99), CaptureDirection::Both, &spec, fds),
        Err(FlowError::NotFound(_))
    ));
    let (spec, _rx2, fds) = capture_channel(8, 2048);
    let id = dp
        .capture_start(FlowId(2), CaptureDirection::Both, &spec, fds)
        .unwrap();
    dp.remove(FlowId(2)).unwrap();
    assert!(
        !dp.capture_stats(id).unwrap().active,
        "the tool learns the flow is gone"
    );
    peer.inject(inbound(7001, b"late"));
    dp.poll(0);
    assert!(captured(&mut rx).is_empty());
    // Too small to hold a header and a useful snapshot.
    let (spec, _rx3, fds) = capture_channel(8, 8);
    let _b = flow(&mut dp, 3, 7002);
    assert!(matches!(
        dp.capture_start(FlowId(3), CaptureDirection::Both, &spec, fds),
        Err(FlowError::Capture(_))
    ));
}
