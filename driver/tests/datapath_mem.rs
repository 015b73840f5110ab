//! The data path over an in-memory port, with real Rbuf channels: demultiplexing, isolation,
//! policing, hostile iorecs and pacing, in virtual time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::net::{Ipv4Addr, SocketAddrV4};

use nemflow_driver::classify::Malformed;
use nemflow_driver::datapath::{Datapath, DatapathConfig, FlowError};
use nemflow_driver::port::{MemPeer, MemPort};
use nemflow_proto::ctl::{DropReason, MAX_STAGED};
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::testing::{IndexWord, RawControl};
use nemflow_rbuf::{FifoId, IoRec};
use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
use nemflow_testkit::frames::{fix_ip_checksum, UdpFrame, HOST_MAC, PEER_MAC};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const RATE: u64 = 100_000_000;

fn datapath() -> (Datapath<MemPort>, MemPeer) {
    let (port, peer) = MemPort::new(HOST_MAC);
    let dp = Datapath::new(
        port,
        DatapathConfig {
            rate_bps: RATE,
            reserve_ppm: 20_000,
            max_frame_bytes: 1514,
            burst: 32,
            drop_log_entries: 100_000,
            subnet_broadcast: Ipv4Addr::new(10, 77, 0, 255),
            port_name: "mem0".into(),
        },
    )
    .unwrap();
    (dp, peer)
}

fn udp_template(port: u16, dst: Option<SocketAddrV4>) -> Template {
    Template {
        src_mac: HOST_MAC,
        kind: TemplateKind::Ipv4 {
            src: HOST,
            proto: ip_proto::UDP,
            src_port: port,
            dst,
        },
    }
}

/// Installs a bound UDP flow on `port` with `slots` buffers each way.
fn bound_flow(dp: &mut Datapath<MemPort>, id: u32, port: u16, qos: Qos, slots: u32) -> AppEnds {
    let (app, fds) = flow_channels(&spec(slots), &spec(slots)).unwrap();
    dp.install(
        FlowId(id),
        Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST, port),
            broadcast: false,
        },
        udp_template(port, None),
        qos,
        &spec(slots),
        &spec(slots),
        fds,
        0,
    )
    .unwrap();
    app
}

fn default_flow(dp: &mut Datapath<MemPort>) -> AppEnds {
    let (app, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    dp.install(
        FlowId(1000),
        Filter::Default,
        Template {
            src_mac: HOST_MAC,
            kind: TemplateKind::Any,
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

fn to_host(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    UdpFrame::new(
        SocketAddrV4::new(PEER, sport),
        SocketAddrV4::new(HOST, dport),
        payload,
    )
    .build()
}

fn drain(app: &mut AppEnds) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(pkt) = app.rx.pop().unwrap() {
        out.push(app.rx.payload(&pkt).to_vec());
        app.rx.repost(pkt).unwrap();
    }
    out
}

fn send(app: &mut AppEnds, frame: &[u8]) {
    app.tx.reclaim().unwrap();
    let ext = app.tx.alloc(frame.len()).unwrap().expect("tx buffer");
    app.tx.buf_mut(ext).unwrap().copy_from_slice(frame);
    app.tx.push(IoRec::single(ext, 0)).unwrap();
}

#[test]
fn frames_reach_exactly_their_flows() {
    let (mut dp, peer) = datapath();
    let mut fm = default_flow(&mut dp);
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    let mut b = bound_flow(&mut dp, 2, 7002, Qos::BEST_EFFORT, 64);
    let fa = to_host(5000, 7001, b"for A");
    let fb = to_host(5000, 7002, b"for B");
    let fx = to_host(5000, 7003, b"for nobody");
    for f in [&fa, &fb, &fx, &fa] {
        peer.inject(f.clone());
    }
    dp.poll(0);
    assert_eq!(drain(&mut a), vec![fa.clone(), fa]);
    assert_eq!(drain(&mut b), vec![fb]);
    assert_eq!(
        drain(&mut fm),
        vec![fx],
        "unmatched goes to the flow manager's flow"
    );
    let stats = dp.flow_stats(Some(FlowId(1))).unwrap();
    assert_eq!(stats[0].rx_packets, 2);
}

#[test]
fn a_stalled_flow_loses_only_its_own_frames() {
    let (mut dp, peer) = datapath();
    let _fm = default_flow(&mut dp);
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 16);
    let mut b = bound_flow(&mut dp, 2, 7002, Qos::BEST_EFFORT, 16);
    let (mut a_received, mut b_received) = (0u64, 0u64);
    let rounds = 200;
    for round in 0..rounds {
        // Ten frames to each flow per round; A never gives buffers back after round 0.
        for i in 0..10u8 {
            peer.inject(to_host(5000, 7001, &[round as u8, i]));
            peer.inject(to_host(5000, 7002, &[round as u8, i]));
        }
        dp.poll(round);
        if round == 0 {
            a_received += drain(&mut a).len() as u64;
        } else {
            while let Some(_pkt) = a.rx.pop().unwrap() {
                a_received += 1; // held: never reposted
            }
        }
        b_received += drain(&mut b).len() as u64;
    }
    let sent_each = rounds * 10;
    assert_eq!(b_received, sent_each, "B loses nothing");
    let sa = &dp.flow_stats(Some(FlowId(1))).unwrap()[0];
    assert!(sa.rx_dropped_no_buffer > 0);
    assert_eq!(sa.rx_packets, a_received);
    assert_eq!(
        sa.rx_packets + sa.rx_dropped_no_buffer,
        sent_each,
        "A: delivered + dropped = sent"
    );
    let log = dp.drop_log(0, 1_000_000);
    assert_eq!(
        log.len() as u64,
        sa.rx_dropped_no_buffer,
        "every drop logged"
    );
    assert!(log
        .iter()
        .all(|e| e.flow == Some(FlowId(1)) && e.reason == DropReason::RxNoBuffer));
    assert_eq!(
        dp.flow_stats(Some(FlowId(2))).unwrap()[0].rx_dropped_no_buffer,
        0
    );
}

#[test]
fn malformed_frames_are_counted_by_reason() {
    let (mut dp, peer) = datapath();
    let mut fm = default_flow(&mut dp);
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    let good = to_host(5000, 7001, b"good");
    peer.inject(good[..10].to_vec());
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    peer.inject(bad_version);
    let mut bad_len = good.clone();
    bad_len[16..18].copy_from_slice(&9000u16.to_be_bytes());
    fix_ip_checksum(&mut bad_len);
    peer.inject(bad_len);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    fix_ip_checksum(&mut bad_ihl);
    peer.inject(bad_ihl);
    let mut lsrr = UdpFrame::new(
        SocketAddrV4::new(PEER, 5000),
        SocketAddrV4::new(HOST, 7001),
        b"x",
    );
    lsrr.ip_options = vec![131, 7, 4, 10, 77, 0, 9, 0];
    peer.inject(lsrr.build());
    peer.inject(good.clone());
    dp.poll(0);
    assert_eq!(
        drain(&mut a),
        vec![good],
        "only the good frame reaches the flow"
    );
    assert!(drain(&mut fm).is_empty());
    for (reason, n) in [
        (Malformed::Runt, 1),
        (Malformed::IpVersion, 1),
        (Malformed::IpTotalLength, 1),
        (Malformed::IpHeaderLength, 1),
        (Malformed::IpSourceRoute, 1),
        (Malformed::IpChecksum, 0),
    ] {
        assert_eq!(dp.malformed(reason), n, "{reason:?}");
    }
}

#[test]
fn spoofed_frames_never_leave() {
    let (mut dp, peer) = datapath();
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    let ok = UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, 7001),
            SocketAddrV4::new(PEER, 5000),
            b"fine",
        )
    };
    let spoof_ip = UdpFrame {
        src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), 7001),
        ..ok.clone()
    };
    let spoof_port = UdpFrame {
        src: SocketAddrV4::new(HOST, 7002),
        ..ok.clone()
    };
    let spoof_mac = UdpFrame {
        src_mac: [2, 0, 0, 0, 0, 9],
        ..ok.clone()
    };
    let mut spoof_proto = ok.build();
    spoof_proto[23] = ip_proto::TCP;
    fix_ip_checksum(&mut spoof_proto);
    let mut spoof_ethertype = ok.build();
    spoof_ethertype[12..14].copy_from_slice(&[0x86, 0xdd]);
    for f in [
        spoof_ip.build(),
        spoof_port.build(),
        spoof_mac.build(),
        spoof_proto,
        spoof_ethertype,
        ok.build(),
    ] {
        send(&mut a, &f);
    }
    for t in 0..10 {
        dp.poll(t * 1_000_000);
    }
    let sent = peer.take_sent();
    assert_eq!(
        sent,
        vec![ok.build()],
        "only the frame matching the template went out"
    );
    let s = &dp.flow_stats(Some(FlowId(1))).unwrap()[0];
    assert_eq!(s.tx_template_violations, 5);
    assert_eq!(s.tx_packets, 1);
    assert_eq!(
        a.tx.reclaim().unwrap(),
        6,
        "every buffer came back, sent or refused"
    );
}

#[test]
fn hostile_iorecs_are_counted_and_others_keep_flowing() {
    let (mut dp, peer) = datapath();
    let (mut evil, evil_fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    // Keep a raw view of the evil app's transmit control area (the app can write it at will).
    let raw = RawControl::map(&evil_fds[1], &spec(64)).unwrap();
    dp.install(
        FlowId(66),
        Filter::Bound {
            proto: ip_proto::UDP,
            local: SocketAddrV4::new(HOST, 6666),
            broadcast: false,
        },
        udp_template(6666, None),
        Qos::BEST_EFFORT,
        &spec(64),
        &spec(64),
        evil_fds,
        0,
    )
    .unwrap();
    let _ = evil.rx.post_free();
    let mut good = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    // Out-of-range, overflowing and absurd-count iorecs on the full FIFO.
    // Slot words: [flags | count << 16, offset | len << 32, …].
    let records: [[u64; 4]; 3] = [
        [1 << 16, (4 << 32) | 0xFFFF_FFFE, 0, 0],
        [1 << 16, (64 << 32) | (1 << 30), 0, 0],
        [200 << 16, 0, 0, 0],
    ];
    for (i, words) in records.iter().enumerate() {
        raw.write_slot(FifoId::Full, i as u32, *words);
    }
    raw.set_index(IndexWord::FullHead, records.len() as u32);
    let ok = UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, 7001),
            SocketAddrV4::new(PEER, 5000),
            b"fine",
        )
    }
    .build();
    for t in 0..5u64 {
        send(&mut good, &ok);
        dp.poll(t * 1_000_000);
    }
    // Then the index jumps far forward: the channel is broken, the driver carries on.
    raw.set_index(IndexWord::FullHead, 1 << 30);
    for t in 5..10u64 {
        send(&mut good, &ok);
        dp.poll(t * 1_000_000);
    }
    assert_eq!(peer.take_sent().len(), 10, "the good flow sent everything");
    let evil_stats = &dp.flow_stats(Some(FlowId(66))).unwrap()[0];
    assert!(evil_stats.invalid_iorecs >= 3, "{evil_stats:?}");
    assert!(evil_stats.broken);
    assert_eq!(evil_stats.tx_packets, 0);
}

#[test]
fn pacing_holds_two_guarantees_in_virtual_time() {
    let (mut dp, peer) = datapath();
    let period = 10_000_000; // 10 ms
    let mut a = bound_flow(
        &mut dp,
        1,
        7001,
        Qos {
            period_ns: period,
            slice_ns: 3_000_000,
            extra: false,
            latency_hint_ns: None,
        },
        256,
    );
    let mut b = bound_flow(
        &mut dp,
        2,
        7002,
        Qos {
            period_ns: period,
            slice_ns: 5_000_000,
            extra: false,
            latency_hint_ns: None,
        },
        256,
    );
    let frame = |port: u16| {
        UdpFrame {
            src_mac: HOST_MAC,
            dst_mac: PEER_MAC,
            ..UdpFrame::new(
                SocketAddrV4::new(HOST, port),
                SocketAddrV4::new(PEER, 5000),
                &[0u8; 1472],
            )
        }
        .build()
    };
    let (fa, fb) = (frame(7001), frame(7002));
    let mut bytes = [0u64; 2];
    let end_ns = 2_000_000_000u64;
    let mut now = 0u64;
    while now < end_ns {
        // Keep both backlogged.
        for (app, f) in [(&mut a, &fa), (&mut b, &fb)] {
            app.tx.reclaim().unwrap();
            while app.tx.ready().unwrap() {
                let Some(ext) = app.tx.alloc(f.len()).unwrap() else {
                    break;
                };
                app.tx.buf_mut(ext).unwrap().copy_from_slice(f);
                app.tx.push(IoRec::single(ext, 0)).unwrap();
            }
        }
        let work = dp.poll(now);
        for f in peer.take_sent() {
            let idx = if f[34..36] == 7001u16.to_be_bytes() {
                0
            } else {
                1
            };
            if now >= 1_000_000_000 {
                bytes[idx] += (f.len() + 24) as u64;
            }
        }
        now = work.wait_until_ns.map_or(now + 10_000, |t| t.max(now + 1));
    }
    let rate = |b: u64| b as f64 * 8.0 / 1.0;
    let (ra, rb) = (rate(bytes[0]), rate(bytes[1]));
    assert!((ra / 30e6 - 1.0).abs() < 0.02, "A at {ra} bit/s");
    assert!((rb / 50e6 - 1.0).abs() < 0.02, "B at {rb} bit/s");
}

/// The three fragments of one datagram to `port`: offsets 0 (with the UDP header), 24 and 40.
fn fragments(port: u16, ident: u16) -> [Vec<u8>; 3] {
    let base = UdpFrame {
        ident,
        ..UdpFrame::new(
            SocketAddrV4::new(PEER, 5000),
            SocketAddrV4::new(HOST, port),
            &[1u8; 16],
        )
    };
    let first = UdpFrame {
        fragment: (0, true),
        ..base.clone()
    }
    .build();
    let second = UdpFrame {
        fragment: (24, true),
        payload: vec![2u8; 16],
        ..base.clone()
    }
    .build();
    let third = UdpFrame {
        fragment: (40, false),
        payload: vec![3u8; 8],
        ..base
    }
    .build();
    [first, second, third]
}

#[test]
fn fragments_in_any_order_reach_their_flow() {
    let (mut dp, peer) = datapath();
    let mut fm = default_flow(&mut dp);
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    for (ident, order) in [
        (1u16, [0usize, 1, 2]),
        (2, [0, 2, 1]),
        (3, [2, 1, 0]),
        (4, [1, 0, 2]),
        (5, [2, 0, 1]),
    ] {
        let frags = fragments(7001, ident);
        for &i in &order {
            peer.inject(frags[i].clone());
            dp.poll(u64::from(ident) * 1000);
        }
        let mut got = drain(&mut a);
        got.sort();
        let mut want = frags.to_vec();
        want.sort();
        assert_eq!(got, want, "order {order:?}: all three fragments delivered");
    }
    assert_eq!(dp.fragments_held(), 0);
    assert!(
        drain(&mut fm).is_empty(),
        "none strayed to the flow manager"
    );
    assert_eq!(dp.malformed(Malformed::FragmentOrphan), 0);
}

#[test]
fn fragments_without_a_first_expire_and_are_bounded() {
    let (mut dp, peer) = datapath();
    let _fm = default_flow(&mut dp);
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    // 300 later fragments whose first never comes: at most 256 are held, the rest age out.
    for ident in 0..300u16 {
        peer.inject(fragments(7001, ident)[1].clone());
    }
    for t in 0..20 {
        dp.poll(t);
    }
    assert_eq!(dp.fragments_held(), 256);
    assert_eq!(dp.malformed(Malformed::FragmentOrphan), 44);
    dp.poll(2_000_000_000);
    assert_eq!(dp.fragments_held(), 0, "expired after a second");
    assert_eq!(dp.malformed(Malformed::FragmentOrphan), 300);
    assert!(drain(&mut a).is_empty());
}

#[test]
fn refused_frames_wait_while_the_link_is_up_and_are_dropped_and_counted_while_it_is_down() {
    let (mut dp, peer) = datapath();
    let mut a = bound_flow(&mut dp, 1, 7001, Qos::BEST_EFFORT, 64);
    let frame = UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, 7001),
            SocketAddrV4::new(PEER, 5000),
            b"x",
        )
    }
    .build();
    let mut t = 0;
    let mut poll = |dp: &mut Datapath<MemPort>| {
        for _ in 0..10 {
            t += 1_000_000;
            dp.poll(t);
        }
    };
    // Link up, queue full: the frames wait for the port and then go, nothing dropped.
    peer.set_tx_credit(Some(0));
    for _ in 0..3 {
        send(&mut a, &frame);
    }
    poll(&mut dp);
    assert!(peer.take_sent().is_empty());
    peer.set_tx_credit(None);
    poll(&mut dp);
    assert_eq!(peer.take_sent().len(), 3);
    assert_eq!(dp.port_info().tx_errors, 0);

    // Link down: refused frames are dropped at once, each counted on the port and its flow.
    peer.set_tx_credit(Some(0));
    peer.set_link(false);
    assert!(!dp.check_link());
    for _ in 0..4 {
        send(&mut a, &frame);
    }
    poll(&mut dp);
    let p = dp.port_info();
    assert_eq!((p.tx_errors, p.link_changes, p.link_up), (4, 1, false));
    let s = &dp.flow_stats(Some(FlowId(1))).unwrap()[0];
    assert_eq!((s.tx_packets, s.tx_dropped), (3, 4));
    let logged = dp
        .drop_log(0, 100)
        .iter()
        .filter(|e| e.flow == Some(FlowId(1)) && e.reason == DropReason::TxNoMbuf)
        .count();
    assert_eq!(logged, 4);

    // Up again: nothing held from the outage goes out late; new frames go.
    peer.set_tx_credit(None);
    peer.set_link(true);
    assert!(dp.check_link());
    poll(&mut dp);
    assert!(peer.take_sent().is_empty());
    send(&mut a, &frame);
    poll(&mut dp);
    assert_eq!(peer.take_sent().len(), 1);
    let p = dp.port_info();
    assert_eq!((p.tx_errors, p.link_changes), (4, 2));
}

#[test]
fn staged_pairs_serve_one_flow_each_and_bad_ones_are_refused() {
    let (mut dp, peer) = datapath();
    let _fm = default_flow(&mut dp);
    let (mut app, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    dp.stage(5, &spec(64), &spec(64), fds).unwrap();
    assert_eq!(dp.port_info().staged, 1);
    // Same id again, wrong fd count, wrong geometry: refused, nothing staged.
    let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    assert!(matches!(
        dp.stage(5, &spec(64), &spec(64), fds),
        Err(FlowError::StagedExists(5))
    ));
    let (_, mut fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    fds.pop();
    assert!(matches!(
        dp.stage(6, &spec(64), &spec(64), fds),
        Err(FlowError::FdCount { .. })
    ));
    let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    assert!(matches!(
        dp.stage(7, &spec(128), &spec(64), fds),
        Err(FlowError::Channel(_))
    ));
    assert_eq!(dp.port_info().staged, 1);

    // The staged pair carries the flow installed on it, both ways.
    let filter = Filter::Bound {
        proto: ip_proto::UDP,
        local: SocketAddrV4::new(HOST, 7001),
        broadcast: false,
    };
    dp.install_staged(
        FlowId(1),
        5,
        filter.clone(),
        udp_template(7001, None),
        Qos::BEST_EFFORT,
        0,
    )
    .unwrap();
    assert_eq!(dp.port_info().staged, 0);
    let f = to_host(5000, 7001, b"staged");
    peer.inject(f.clone());
    dp.poll(0);
    assert_eq!(drain(&mut app), vec![f]);
    let out = UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, 7001),
            SocketAddrV4::new(PEER, 5000),
            b"out",
        )
    }
    .build();
    send(&mut app, &out);
    for t in 1..10 {
        dp.poll(t * 1_000_000);
    }
    assert_eq!(peer.take_sent(), vec![out]);

    // A pair serves one flow: used (or unknown) is NotStaged, even for another flow.
    assert!(matches!(
        dp.install_staged(
            FlowId(2),
            5,
            filter.clone(),
            udp_template(7001, None),
            Qos::BEST_EFFORT,
            0
        ),
        Err(FlowError::NotStaged(5))
    ));
    // A failed install still consumes its pair.
    let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    dp.stage(8, &spec(64), &spec(64), fds).unwrap();
    assert!(dp
        .install_staged(
            FlowId(1),
            8,
            filter,
            udp_template(7001, None),
            Qos::BEST_EFFORT,
            0
        )
        .is_err());
    assert_eq!(dp.port_info().staged, 0);

    // One pair dropped on its own (an app reserved it and left): unmapped, then unknown.
    let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    dp.stage(9, &spec(64), &spec(64), fds).unwrap();
    assert_eq!(dp.port_info().staged, 1);
    dp.drop_staged_pair(9).unwrap();
    assert_eq!(dp.port_info().staged, 0);
    assert!(matches!(
        dp.drop_staged_pair(9),
        Err(FlowError::NotStaged(9))
    ));

    // At most MAX_STAGED wait; dropping them (their flow manager left) empties the set.
    for i in 0..MAX_STAGED as u32 {
        let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
        dp.stage(100 + i, &spec(64), &spec(64), fds).unwrap();
    }
    let (_, fds) = flow_channels(&spec(64), &spec(64)).unwrap();
    assert!(matches!(
        dp.stage(99, &spec(64), &spec(64), fds),
        Err(FlowError::TooManyStaged(_))
    ));
    assert_eq!(dp.drop_staged(), MAX_STAGED);
    assert_eq!(dp.port_info().staged, 0);
}
