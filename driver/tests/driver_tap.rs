//! The driver process on a real net_tap device, with the kernel side of the tap in a network
//! namespace as the remote host, and the test playing the flow manager on the control socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest, DropReason, FlowStats, PortInfo};
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::{ChannelSpec, IoRec};
use nemflow_testkit::driver::{DriverClient, DriverOptions, DriverProcess};
use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
use nemflow_testkit::frames::{fix_ip_checksum, UdpFrame, HOST_MAC, PEER_MAC};
use nemflow_testkit::{require_root, RawSocket};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn start(rate_bps: u64) -> DriverProcess {
    require_root();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_nemflow-driver"));
    DriverProcess::start(
        binary,
        &DriverOptions {
            rate_bps,
            ..DriverOptions::default()
        },
    )
    .unwrap()
}

fn install(
    client: &DriverClient,
    id: u32,
    filter: Filter,
    template: Template,
    qos: Qos,
    slots: u32,
) -> AppEnds {
    let s: ChannelSpec = spec(slots);
    let (app, fds) = flow_channels(&s, &s).unwrap();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let reply = client
        .call(
            &DriverRequest::InstallFlow {
                id: FlowId(id),
                filter,
                template,
                qos,
                tx: s,
                rx: s,
            },
            &borrowed,
        )
        .unwrap();
    assert_eq!(reply, DriverReply::Ok);
    app
}

fn udp_flow(client: &DriverClient, id: u32, port: u16, qos: Qos, slots: u32) -> AppEnds {
    install(
        client,
        id,
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
        qos,
        slots,
    )
}

fn default_flow(client: &DriverClient) -> AppEnds {
    install(
        client,
        1000,
        Filter::Default,
        Template {
            src_mac: HOST_MAC,
            kind: TemplateKind::Any,
        },
        Qos::BEST_EFFORT,
        256,
    )
}

fn stats(client: &DriverClient, id: u32) -> FlowStats {
    match client
        .call(
            &DriverRequest::FlowStats {
                id: Some(FlowId(id)),
            },
            &[],
        )
        .unwrap()
    {
        DriverReply::FlowStats(mut s) => s.remove(0),
        other => panic!("{other:?}"),
    }
}

fn port_info(client: &DriverClient) -> PortInfo {
    match client.call(&DriverRequest::PortInfo, &[]).unwrap() {
        DriverReply::PortInfo(p) => p,
        other => panic!("{other:?}"),
    }
}

fn to_host(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    UdpFrame::new(
        SocketAddrV4::new(PEER, sport),
        SocketAddrV4::new(HOST, dport),
        payload,
    )
    .build()
}

fn from_host(sport: u16, payload: &[u8]) -> UdpFrame {
    UdpFrame {
        src_mac: HOST_MAC,
        dst_mac: PEER_MAC,
        ..UdpFrame::new(
            SocketAddrV4::new(HOST, sport),
            SocketAddrV4::new(PEER, 5000),
            payload,
        )
    }
}

/// Everything that arrives on the flow within `wait`, reposting buffers as it goes.
fn collect(app: &mut AppEnds, want: usize, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match app.rx.pop().unwrap() {
            Some(pkt) => {
                out.push(app.rx.payload(&pkt).to_vec());
                app.rx.repost(pkt).unwrap();
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    out
}

fn push(app: &mut AppEnds, frame: &[u8]) -> bool {
    app.tx.reclaim().unwrap();
    let Some(ext) = app.tx.alloc(frame.len()).unwrap() else {
        return false;
    };
    app.tx.buf_mut(ext).unwrap().copy_from_slice(frame);
    app.tx.push(IoRec::single(ext, 0)).is_ok()
}

#[test]
fn frames_from_the_remote_host_reach_exactly_their_flows() {
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    assert!(matches!(
        client
            .call(
                &DriverRequest::Hello {
                    client: "test".into()
                },
                &[]
            )
            .unwrap(),
        DriverReply::Hello(_)
    ));
    let mut fm = default_flow(&client);
    let mut a = udp_flow(&client, 1, 7001, Qos::BEST_EFFORT, 64);
    let mut b = udp_flow(&client, 2, 7002, Qos::BEST_EFFORT, 64);
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    let (fa, fb, fx) = (
        to_host(5000, 7001, b"to A"),
        to_host(5000, 7002, b"to B"),
        to_host(5000, 7999, b"to nobody"),
    );
    for f in [&fa, &fb, &fx, &fb] {
        remote.send(f).unwrap();
    }
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)), vec![fa]);
    assert_eq!(
        collect(&mut b, 2, Duration::from_secs(5)),
        vec![fb.clone(), fb]
    );
    let to_fm = collect(&mut fm, 1, Duration::from_secs(5));
    assert!(
        to_fm.contains(&fx),
        "unmatched frame goes to the flow manager's channel"
    );
    assert!(
        collect(&mut a, 1, Duration::from_millis(200)).is_empty(),
        "nothing else for A"
    );
    assert_eq!(stats(&client, 1).rx_packets, 1);
    assert_eq!(stats(&client, 2).rx_packets, 2);
}

#[test]
fn a_stalled_app_loses_only_its_own_frames() {
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    let _fm = default_flow(&client);
    let mut a = udp_flow(&client, 1, 7001, Qos::BEST_EFFORT, 32);
    let mut b = udp_flow(&client, 2, 7002, Qos::BEST_EFFORT, 256);
    // A takes its first frames and then never gives a buffer back; B drains as it goes.
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    let sent_each = 3000u64;
    let mut b_got = 0u64;
    let mut drain_b = |b: &mut AppEnds| {
        while let Some(pkt) = b.rx.pop().unwrap() {
            b_got += 1;
            b.rx.repost(pkt).unwrap();
        }
    };
    for i in 0..sent_each {
        let payload = i.to_be_bytes();
        remote.send(&to_host(5000, 7001, &payload)).unwrap();
        remote.send(&to_host(5000, 7002, &payload)).unwrap();
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_millis(1));
            drain_b(&mut b);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        drain_b(&mut b);
        std::thread::sleep(Duration::from_millis(5));
        let sa = stats(&client, 1);
        if sa.rx_packets + sa.rx_dropped_no_buffer == sent_each
            && stats(&client, 2).rx_packets == sent_each
        {
            drain_b(&mut b);
            break;
        }
    }
    let mut a_got = 0u64;
    while let Some(_held) = a.rx.pop().unwrap() {
        a_got += 1;
    }
    assert_eq!(b_got, sent_each, "B received every frame");
    let sa = stats(&client, 1);
    assert_eq!(sa.rx_packets, a_got, "what A was given is what it holds");
    assert_eq!(
        sa.rx_packets + sa.rx_dropped_no_buffer,
        sent_each,
        "A: delivered + dropped = sent"
    );
    assert_eq!(stats(&client, 2).rx_dropped_no_buffer, 0);
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        let DriverReply::DropLog(entries) = client
            .call(&DriverRequest::DropLog { after, max: 2048 }, &[])
            .unwrap()
        else {
            panic!()
        };
        let Some(last) = entries.last() else { break };
        after = last.seq;
        log.extend(entries);
    }
    // (The log may also hold frames the kernel sent before the flows existed: unmatched ones.)
    let of_a = log.iter().filter(|e| e.flow == Some(FlowId(1))).count() as u64;
    assert_eq!(
        of_a, sa.rx_dropped_no_buffer,
        "every drop of A is in the log"
    );
    assert!(log
        .iter()
        .filter(|e| e.flow == Some(FlowId(1)))
        .all(|e| e.reason == DropReason::RxNoBuffer));
    assert!(
        !log.iter().any(|e| e.flow == Some(FlowId(2))),
        "nothing of B was dropped"
    );
}

#[test]
fn spoofed_frames_never_reach_the_remote_host() {
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    let mut a = udp_flow(&client, 1, 7001, Qos::BEST_EFFORT, 64);
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    let ok = from_host(7001, b"legitimate").build();
    let spoofs = [
        UdpFrame {
            src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 99), 7001),
            ..from_host(7001, b"spoof")
        }
        .build(),
        from_host(7002, b"spoof").build(),
        UdpFrame {
            src_mac: [2, 0, 0, 0, 0, 0x99],
            ..from_host(7001, b"spoof")
        }
        .build(),
        {
            let mut f = from_host(7001, b"spoof").build();
            f[23] = ip_proto::TCP;
            fix_ip_checksum(&mut f);
            f
        },
        {
            let mut f = from_host(7001, b"spoof").build();
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            f
        },
    ];
    for f in &spoofs {
        assert!(push(&mut a, f));
    }
    assert!(push(&mut a, &ok));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(f) = remote.recv_matching(Duration::from_millis(100), |f| {
            f.len() > 14 && f[6..12] != PEER_MAC
        }) {
            seen.push(f);
        }
        if seen.contains(&ok) {
            std::thread::sleep(Duration::from_millis(300));
            while let Some(f) = remote.recv_matching(Duration::from_millis(50), |f| {
                f.len() > 14 && f[6..12] != PEER_MAC
            }) {
                seen.push(f);
            }
            break;
        }
    }
    assert_eq!(
        seen,
        vec![ok],
        "only the legitimate frame was seen on the wire"
    );
    let s = stats(&client, 1);
    assert_eq!(s.tx_template_violations, spoofs.len() as u64);
    assert_eq!(s.tx_packets, 1);
}

#[test]
fn rewriting_headers_while_sending_never_gets_a_bad_frame_out() {
    let driver = start(100_000_000);
    let client = driver.client().unwrap();
    let s = spec(64);
    let tx_fds = nemflow_rbuf::create(&s).unwrap();
    let rx_fds = nemflow_rbuf::create(&s).unwrap();
    // A second, writable mapping of the transmit data area: the "other thread" of the app.
    let len = s.data_bytes as usize;
    // SAFETY: mapping a memfd of exactly `len` bytes, shared, read-write; unmapped below.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&tx_fds.data),
            0,
        )
    };
    assert_ne!(area, libc::MAP_FAILED);
    let area_addr = area as usize;
    let mut tx = nemflow_rbuf::tmm::Producer::attach(&s, tx_fds.try_clone().unwrap()).unwrap();
    let mut fds = tx_fds.with_read_only_data().unwrap().into_vec();
    fds.extend(rx_fds.into_vec());
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let reply = client
        .call(
            &DriverRequest::InstallFlow {
                id: FlowId(1),
                filter: Filter::Bound {
                    proto: ip_proto::UDP,
                    local: SocketAddrV4::new(HOST, 7001),
                    broadcast: false,
                },
                template: Template {
                    src_mac: HOST_MAC,
                    kind: TemplateKind::Ipv4 {
                        src: HOST,
                        proto: ip_proto::UDP,
                        src_port: 7001,
                        dst: None,
                    },
                },
                qos: Qos::BEST_EFFORT,
                tx: s,
                rx: s,
            },
            &borrowed,
        )
        .unwrap();
    assert_eq!(reply, DriverReply::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let vandal = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut x: u32 = 1;
            while !stop.load(Ordering::Relaxed) {
                // Flip source-IP and source-port bytes of every buffer, all the time.
                for buf in 0..(len / 2048) {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let at = buf * 2048 + [26usize, 27, 28, 29, 34, 35][(x >> 24) as usize % 6];
                    // SAFETY: inside our own mapping of `len` bytes; volatile because the driver
                    // and the producer read this memory concurrently (that race is the test).
                    unsafe {
                        std::ptr::write_volatile((area_addr + at) as *mut u8, (x >> 8) as u8)
                    };
                }
            }
        })
    };
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    remote.set_recv_buffer(64 << 20).unwrap();
    let frame = from_host(7001, &[0x5a; 64]).build();
    let total = 20_000u32;
    let counter = std::thread::spawn(move || {
        let (mut good, mut bad) = (0u32, 0u32);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut idle = 0;
        while Instant::now() < deadline && idle < 20 {
            match remote.recv_matching(Duration::from_millis(100), |f| {
                f.len() >= 42 && f[6..12] == HOST_MAC
            }) {
                Some(f) => {
                    idle = 0;
                    let ok = f[12..14] == [0x08, 0x00]
                        && f[26..30] == HOST.octets()
                        && f[34..36] == 7001u16.to_be_bytes()
                        && f[23] == ip_proto::UDP;
                    if ok {
                        good += 1
                    } else {
                        bad += 1
                    }
                }
                None => idle += 1,
            }
        }
        (good, bad)
    });
    let mut pushed = 0;
    while pushed < total {
        tx.reclaim().unwrap();
        match tx.alloc(frame.len()).unwrap() {
            Some(ext) => {
                tx.buf_mut(ext).unwrap().copy_from_slice(&frame);
                tx.push(IoRec::single(ext, 0)).unwrap();
                pushed += 1;
            }
            None => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    vandal.join().unwrap();
    let (good, bad) = counter.join().unwrap();
    // SAFETY: unmapping the mapping made above, no longer used.
    unsafe { libc::munmap(area, len) };
    let st = stats(&client, 1);
    assert_eq!(bad, 0, "no frame off the template reached the wire");
    assert_eq!(u64::from(good), st.tx_packets, "every frame sent was seen");
    assert_eq!(
        st.tx_packets + st.tx_template_violations + st.invalid_iorecs,
        u64::from(total),
        "{st:?}"
    );
    assert!(
        st.tx_template_violations > 0,
        "the vandal did spoil frames: {st:?}"
    );
}

#[test]
fn malformed_frames_are_dropped_with_their_reasons() {
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    let _fm = default_flow(&client);
    let mut a = udp_flow(&client, 1, 7001, Qos::BEST_EFFORT, 64);
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    let good = to_host(5000, 7001, b"good");
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    fix_ip_checksum(&mut bad_ihl);
    let mut bad_total = good.clone();
    bad_total[16..18].copy_from_slice(&1400u16.to_be_bytes());
    fix_ip_checksum(&mut bad_total);
    let mut bad_checksum = good.clone();
    bad_checksum[24] ^= 0x55;
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut lsrr = UdpFrame::new(
        SocketAddrV4::new(PEER, 5000),
        SocketAddrV4::new(HOST, 7001),
        b"route me",
    );
    lsrr.ip_options = vec![131, 7, 4, 10, 77, 0, 9, 0];
    // AF_PACKET will not send less than an Ethernet header, so no runt from here (the in-memory
    // tests cover runts); a bare Ethernet header of type IPv4 is truncated IP.
    let bare = good[..14].to_vec();
    for f in [
        &bad_version,
        &bad_ihl,
        &bad_total,
        &bad_checksum,
        &vlan,
        &lsrr.build(),
        &bare,
    ] {
        remote.send(f).unwrap();
    }
    remote.send(&good).unwrap();
    assert_eq!(collect(&mut a, 1, Duration::from_secs(5)), vec![good]);
    std::thread::sleep(Duration::from_millis(100));
    let info = port_info(&client);
    let count = |name: &str| {
        info.drops
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .unwrap()
    };
    assert_eq!(count("ip_version"), 1);
    assert_eq!(count("ip_header_length"), 1);
    assert_eq!(count("ip_total_length"), 1);
    assert_eq!(count("ip_checksum"), 1);
    assert_eq!(count("vlan_tagged"), 1);
    assert_eq!(count("ip_source_route"), 1);
    assert_eq!(count("ip_truncated"), 1);
    assert_eq!(stats(&client, 1).rx_packets, 1);
}

#[test]
fn pacing_gives_two_guarantees_their_rates() {
    let driver = start(100_000_000);
    let client = driver.client().unwrap();
    let period = 10_000_000;
    let qos = |share_pct: u64| Qos {
        period_ns: period,
        slice_ns: period * share_pct / 100,
        extra: false,
        latency_hint_ns: None,
    };
    let mut a = udp_flow(&client, 1, 7001, qos(30), 256);
    let mut b = udp_flow(&client, 2, 7002, qos(50), 256);
    let remote = RawSocket::bind_in(&driver.netns, &driver.iface).unwrap();
    remote.enable_timestamps().unwrap();
    // Capture 4 s at the remote host (kernel timestamps); judge seconds 1..3 in 1 s windows.
    let capture = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        let mut samples: Vec<(u64, u16, usize)> = Vec::new();
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            if let Some((n, t)) = remote.recv_timestamped(Duration::from_millis(50), &mut buf) {
                if n >= 42 && buf[6..12] == HOST_MAC {
                    samples.push((t, u16::from_be_bytes([buf[34], buf[35]]), n));
                }
            }
        }
        samples
    });
    let (fa, fb) = (
        from_host(7001, &[0u8; 1472]).build(),
        from_host(7002, &[0u8; 1472]).build(),
    );
    while !capture.is_finished() {
        // Keep both flows backlogged.
        let mut pushed = false;
        for (app, f) in [(&mut a, &fa), (&mut b, &fb)] {
            pushed |= push(app, f);
        }
        if !pushed {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let samples = capture.join().unwrap();
    let t0 = samples.first().map(|s| s.0).unwrap();
    for (port, want_bps) in [(7001u16, 30e6), (7002u16, 50e6)] {
        for w in 1..3u64 {
            let (lo, hi) = (t0 + w * 1_000_000_000, t0 + (w + 1) * 1_000_000_000);
            let bits: usize = samples
                .iter()
                .filter(|s| s.1 == port && s.0 >= lo && s.0 < hi)
                .map(|s| (s.2 + 24) * 8)
                .sum();
            let rate = bits as f64;
            eprintln!("port {port} window {w}: {rate} bit/s");
            assert!(
                (rate / want_bps - 1.0).abs() < 0.02,
                "port {port} window {w}: {rate} bit/s, want {want_bps}; {:?} {:?}",
                stats(&client, 1),
                stats(&client, 2)
            );
        }
    }
}
