//! The flow manager binary against the fake driver: ports, policy, admission, teardown on exit,
//! hostile clients, ARP, events, and the `nemflow` tool.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{Harness, GATEWAY, GATEWAY_MAC, NOBODY, PEER, PEER_MAC};
use nemflow_flowmgr::client::{ClientError, FlowEnds};
use nemflow_proto::app::{AppErrorKind, AppEvent, AppRequest, OpenFlow};
use nemflow_proto::flow::{Filter, TemplateKind};
use nemflow_proto::wire;
use nemflow_proto::{FlowId, Qos};
use nemflow_rbuf::IoRec;
use nemflow_testkit::frames::UdpFrame;

fn kind(e: ClientError) -> AppErrorKind {
    e.kind().unwrap_or_else(|| panic!("not a refusal: {e}"))
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn open_installs_filter_template_and_channels() {
    let h = Harness::start("");
    // The host flow and the gratuitous ARP at start.
    assert!(h
        .fake
        .wait_for(SEC, |s| s.flows.len() == 1 && !s.sent.is_empty()));
    {
        let s = h.fake.state();
        let (id, f) = s.flows.iter().next().unwrap();
        assert_eq!(*id, FlowId(1));
        assert_eq!(f.filter, Filter::Default);
        assert_eq!(f.template.kind, TemplateKind::Any);
        let ann = nemflow_flowmgr::arp::parse(&s.sent[0]).unwrap();
        assert_eq!(
            (ann.spa, ann.tpa),
            (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 1))
        );
    }
    let mut c = h.client();
    let remote = SocketAddrV4::new(PEER, 7000);
    let flow = c.open(&OpenFlow::udp(5000, Some(remote))).unwrap();
    let fib = flow.fib.clone();
    assert_eq!(
        fib.local,
        SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 5000)
    );
    assert_eq!(fib.remote, Some(remote));
    assert_eq!(
        fib.next_hop_mac,
        Some(PEER_MAC),
        "resolved by ARP through the host flow"
    );
    assert_eq!(fib.src_mac, [2, 0x4e, 0x46, 0, 0, 1]);
    assert_eq!(fib.mtu, 1500);
    // The open is answered while the driver installs the flow.
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&fib.flow)));
    {
        let s = h.fake.state();
        let f = &s.flows[&fib.flow];
        assert_eq!(
            f.filter,
            Filter::Connected {
                proto: 17,
                local: fib.local,
                remote
            }
        );
        assert_eq!(
            f.template.kind,
            TemplateKind::Ipv4 {
                src: *fib.local.ip(),
                proto: 17,
                src_port: 5000,
                dst: Some(remote)
            }
        );
    }
    // The app's view of the receive data area is read-only; of the transmit one, writable.
    let acc = |fd| rustix::fs::fcntl_getfl(fd).unwrap() & rustix::fs::OFlags::RWMODE;
    let FlowEnds::Fds { tx, rx } = &flow.ends else {
        panic!("an open without a reserve brings fds");
    };
    assert_eq!(acc(&rx.data), rustix::fs::OFlags::RDONLY);
    assert_eq!(acc(&tx.data), rustix::fs::OFlags::RDWR);
    // The app's channels work end to end: a pushed packet reaches the (fake) driver.
    let (mut tx, _rx) = flow.attach().unwrap();
    let ext = tx.alloc(64).unwrap().unwrap();
    tx.buf_mut(ext).unwrap().fill(0xab);
    tx.push(IoRec::single(ext, 0)).unwrap();
    let id = fib.flow;
    assert!(h
        .fake
        .wait_for(SEC, |s| s.stats.get(&id).is_some_and(|f| f.tx_packets == 1)));
    let mine = c.flows().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, id);
    c.close(id).unwrap();
    // The reply goes out first, the driver removal right after it (before any next request).
    assert!(h.fake.wait_for(Duration::from_millis(100), |s| s
        .removed
        .iter()
        .any(|(f, _)| *f == id)));
    assert_eq!(kind(c.close(id).unwrap_err()), AppErrorKind::NoSuchFlow);
}

#[test]
fn two_apps_cannot_bind_the_same_port() {
    let h = Harness::start("");
    let mut a = h.client();
    let mut b = h.client();
    let fa = a.open(&OpenFlow::udp(5000, None)).unwrap();
    let e = b.open(&OpenFlow::udp(5000, None)).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::AddrInUse);
    let e = b
        .open(&OpenFlow::udp(5000, Some(SocketAddrV4::new(PEER, 1))))
        .unwrap_err();
    assert_eq!(e.errno(), rustix::io::Errno::ADDRINUSE.raw_os_error());
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    // The same app cannot bind it twice either.
    assert_eq!(
        kind(a.open(&OpenFlow::udp(5000, None)).unwrap_err()),
        AppErrorKind::AddrInUse
    );
    // TCP port 5000 is another SAP.
    b.listen(5000).unwrap();
    // Ephemeral ports are distinct.
    let e1 = b.open(&OpenFlow::udp(0, None)).unwrap();
    let e2 = a.open(&OpenFlow::udp(0, None)).unwrap();
    assert_ne!(e1.fib.local.port(), e2.fib.local.port());
    assert!(e1.fib.local.port() >= 49152);
    // After a closes, b gets the port.
    a.close(fa.id()).unwrap();
    b.open(&OpenFlow::udp(5000, None)).unwrap();
    assert_eq!(h.counter("requests_refused"), 3);
}

#[test]
fn a_non_root_app_cannot_take_port_80() {
    let h = Harness::start("");
    let (ok, out, err) = h.run_nemflow(&["open", "udp", "--port", "80"], Some(NOBODY));
    assert!(!ok, "{out}");
    assert!(err.contains("udp port 80 is privileged"), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
    // The same uid may take an unprivileged port, and root may take 80.
    let (ok, out, err) = h.run_nemflow(&["open", "udp", "--port", "8080"], Some(NOBODY));
    assert!(ok, "{out} {err}");
    assert!(out.starts_with("flow "), "{out}");
    let (ok, _, err) = h.run_nemflow(&["open", "udp", "--port", "80"], None);
    assert!(ok, "{err}");
    // Raw flows are privileged too.
    let (ok, _, err) = h.run_nemflow(&["open", "raw", "--ethertype", "0x88b5"], Some(NOBODY));
    assert!(!ok && err.contains("raw flows need root"), "{err}");
    assert_eq!(h.counter("requests_refused"), 2);
}

#[test]
fn a_uid_the_policy_does_not_allow_is_refused() {
    let h = Harness::start("allowed_uids: [4242]");
    let (ok, _, err) = h.run_nemflow(&["flows"], Some(NOBODY));
    assert!(!ok);
    assert!(
        err.contains("uid 65534 may not use the flow manager"),
        "{err}"
    );
    // Root is always allowed.
    let (ok, out, err) = h.run_nemflow(&["flows"], None);
    assert!(ok, "{err}");
    assert!(out.starts_with("Netid"), "{out}");
    assert_eq!(h.counter("clients_denied"), 1);
}

#[test]
fn per_uid_limits_say_no_buffer_space() {
    let h = Harness::start("max_flows_per_uid: 2");
    let mut c = h.client();
    c.open(&OpenFlow::udp(0, None)).unwrap();
    c.open(&OpenFlow::udp(0, None)).unwrap();
    let e = c.open(&OpenFlow::udp(0, None)).unwrap_err();
    assert_eq!(e.errno(), rustix::io::Errno::NOBUFS.raw_os_error());
    assert!(e.to_string().contains("max_flows_per_uid"), "{e}");
    // Too large a buffer.
    let mut c2 = h.client();
    let big = nemflow_proto::app::Buffers {
        tx_bytes: 1 << 30,
        ..Default::default()
    };
    drop(c);
    let e = c2
        .open(&OpenFlow::udp(0, None).with_buffers(big))
        .unwrap_err();
    assert_eq!(kind(e), AppErrorKind::NoBufferSpace);
}

#[test]
fn one_uid_exhausting_its_quotas_leaves_other_uids_served() {
    // Flows: root takes its two, the third is refused; another uid is still served.
    let h = Harness::start("max_flows_per_uid: 2");
    let mut c = h.client();
    let _a = c.open(&OpenFlow::udp(0, None)).unwrap();
    let _b = c.open(&OpenFlow::udp(0, None)).unwrap();
    let e = c.open(&OpenFlow::udp(0, None)).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::NoBufferSpace);
    let (ok, out, err) = h.run_nemflow(&["open", "udp"], Some(NOBODY));
    assert!(ok && out.starts_with("flow "), "{out} {err}");
    drop(h);
    // Channel memory: root opens flows until its bytes run out; another uid is still served.
    let h = Harness::start("max_channel_bytes_per_uid: 4194304");
    let mut c = h.client();
    let mut held = Vec::new();
    let e = loop {
        match c.open(&OpenFlow::udp(0, None)) {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
        assert!(held.len() < 64, "4 MiB of channels never ran out");
    };
    assert!(!held.is_empty());
    assert!(e.to_string().contains("max_channel_bytes_per_uid"), "{e}");
    assert_eq!(kind(e), AppErrorKind::NoBufferSpace);
    let (ok, out, err) = h.run_nemflow(&["open", "udp"], Some(NOBODY));
    assert!(ok && out.starts_with("flow "), "{out} {err}");
    // What root holds is untouched, and closing one lets root open again.
    let first = held.remove(0);
    c.close(first.id()).unwrap();
    c.open(&OpenFlow::udp(0, None)).unwrap();
}

#[test]
fn admission_past_the_limit_is_refused_and_leaves_flows_untouched() {
    let h = Harness::start("");
    let mut c = h.client();
    let ms = 1_000_000u64;
    let g = |slice_ms: u64| Qos {
        period_ns: 100 * ms,
        slice_ns: slice_ms * ms,
        extra: false,
        latency_hint_ns: None,
    };
    let f1 = c.open(&OpenFlow::udp(0, None).with_qos(g(50))).unwrap();
    let f2 = c.open(&OpenFlow::udp(0, None).with_qos(g(40))).unwrap();
    // An open is answered while the driver installs it.
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&f2.id())));
    let before: Vec<_> = h.fake.state().flows.keys().copied().collect();
    // 90% booked, 2% reserved: 10 ms more does not fit, 8 ms would.
    let e = c.open(&OpenFlow::udp(0, None).with_qos(g(10))).unwrap_err();
    let ClientError::Refused(err) = e else {
        panic!("not refused")
    };
    assert_eq!(err.kind, AppErrorKind::Admission);
    assert_eq!(err.max_slice_ns, Some(8 * ms));
    assert!(
        err.message.contains("largest slice that fits"),
        "{}",
        err.message
    );
    // Nothing changed for the admitted flows, and no port or flow leaked.
    let s = h.fake.state();
    assert_eq!(s.flows.keys().copied().collect::<Vec<_>>(), before);
    assert_eq!(s.flows[&f1.id()].qos, g(50));
    assert_eq!(s.flows[&f2.id()].qos, g(40));
    drop(s);
    // What it proposed fits; best effort always does.
    c.open(&OpenFlow::udp(0, None).with_qos(g(8))).unwrap();
    c.open(&OpenFlow::udp(0, None)).unwrap();
    // A QoS change past the limit is refused and leaves the flow's QoS as it was.
    let e = c.set_qos(f2.id(), g(45)).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::Admission);
    assert_eq!(h.fake.state().flows[&f2.id()].qos, g(40));
    c.set_qos(f2.id(), g(30)).unwrap();
    assert_eq!(h.fake.state().flows[&f2.id()].qos, g(30));
    // Invalid QoS is EINVAL.
    let e = c
        .open(&OpenFlow::udp(0, None).with_qos(Qos {
            period_ns: 0,
            ..g(1)
        }))
        .unwrap_err();
    assert_eq!(kind(e), AppErrorKind::Invalid);
}

#[test]
fn kill_9_removes_an_apps_flows_within_100_ms() {
    let h = Harness::start("");
    let (mut app, line, id) = h.hold_flow(&["udp", "--port", "6000"]);
    assert!(line.contains("local 10.77.0.1:6000"), "{line}");
    let (mut app2, _, id2) = h.hold_flow(&["tcp", "--remote", "10.77.0.2:80"]);
    let fid = FlowId(id);
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&fid)));
    let (ok, out, _) = h.run_nemflow(&["flows"], None);
    assert!(ok && out.contains("10.77.0.1:6000"), "{out}");
    let killed = Instant::now();
    app.kill().unwrap(); // SIGKILL
    app.wait().unwrap();
    assert!(
        h.fake
            .wait_for(SEC, |s| s.removed.iter().any(|(f, _)| *f == fid)),
        "flow not removed from the driver"
    );
    let removed_at = h
        .fake
        .state()
        .removed
        .iter()
        .find(|(f, _)| *f == fid)
        .map(|(_, t)| *t)
        .unwrap();
    let took = removed_at.saturating_duration_since(killed);
    eprintln!("kill -9 to RemoveFlow in the driver: {took:?}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    // The port is free again, and the listing no longer shows the flow.
    let mut c = h.client();
    c.open(&OpenFlow::udp(6000, None)).unwrap();
    let (_, out, _) = h.run_nemflow(&["flows"], None);
    assert!(!out.contains(&format!(" {id} ")), "{out}");
    // A TCP connection killed the same way leaves its 5-tuple in TIME_WAIT.
    app2.kill().unwrap();
    app2.wait().unwrap();
    assert!(h
        .fake
        .wait_for(SEC, |s| !s.flows.contains_key(&FlowId(id2))));
    let (_, out, _) = h.run_nemflow(&["flows"], None);
    assert!(
        out.contains("TIME-WAIT") && out.contains("10.77.0.2:80"),
        "{out}"
    );
    assert_eq!(h.counter("flows_closed_on_exit"), 2);
}

#[test]
fn tcp_close_holds_time_wait() {
    let h = Harness::start("time_wait_ms: 300");
    let mut c = h.client();
    let r = SocketAddrV4::new(PEER, 80);
    let f = c.open(&OpenFlow::tcp(40000, r)).unwrap();
    c.close(f.id()).unwrap();
    let e = c.open(&OpenFlow::tcp(40000, r)).unwrap_err();
    assert_eq!(kind(e), AppErrorKind::AddrInUse);
    assert!(e_string(&c.open(&OpenFlow::tcp(40000, r))).contains("TIME_WAIT"));
    // Another remote on the same port is fine; after TIME_WAIT the 5-tuple is free.
    c.open(&OpenFlow::tcp(40000, SocketAddrV4::new(PEER, 81)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(350));
    c.open(&OpenFlow::tcp(40000, r)).unwrap();
    // TCP needs a remote.
    assert_eq!(
        kind(
            c.open(&OpenFlow {
                remote: None,
                ..OpenFlow::tcp(0, r)
            })
            .unwrap_err()
        ),
        AppErrorKind::Invalid
    );
}

fn e_string(r: &Result<nemflow_flowmgr::client::Flow, ClientError>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn routing_and_arp_failures_are_socket_errors() {
    let h = Harness::start("");
    let mut c = h.client();
    // Off-link through the gateway; a static route through 10.77.0.5 (which does not answer).
    let f = c
        .open(&OpenFlow::udp(
            0,
            Some(SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53)),
        ))
        .unwrap();
    assert_eq!(f.fib.next_hop_mac, Some(GATEWAY_MAC));
    let t = Instant::now();
    let e = c
        .open(&OpenFlow::udp(
            0,
            Some(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 53)),
        ))
        .unwrap_err();
    assert_eq!(kind(e), AppErrorKind::HostUnreachable);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "three tries 50 ms apart"
    );
    let e = c
        .open(&OpenFlow::udp(
            0,
            Some(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 53)),
        ))
        .unwrap_err();
    assert_eq!(kind(e), AppErrorKind::Invalid);
    let e = c
        .open(&OpenFlow {
            local_ip: Some(Ipv4Addr::new(10, 77, 0, 9)),
            ..OpenFlow::udp(0, None)
        })
        .unwrap_err();
    assert_eq!(kind(e), AppErrorKind::AddrNotAvailable);
    // Resolve: on-link, via gateway, broadcast.
    let n = c.resolve(PEER).unwrap();
    assert_eq!((n.next_hop, n.mac), (PEER, PEER_MAC));
    let n = c.resolve(Ipv4Addr::new(1, 1, 1, 1)).unwrap();
    assert_eq!((n.next_hop, n.mac), (GATEWAY, GATEWAY_MAC));
    assert_eq!(
        c.resolve(Ipv4Addr::new(10, 77, 0, 255)).unwrap().mac,
        [0xff; 6]
    );
    // The refused open left nothing behind.
    assert_eq!(c.flows().unwrap().len(), 1);
    let (_, arp, _) = h.run_nemflow(&["arp"], None);
    assert!(
        arp.contains("10.77.0.2 lladdr 02:4e:46:ff:00:02 REACHABLE"),
        "{arp}"
    );
    let (_, routes, _) = h.run_nemflow(&["routes"], None);
    assert_eq!(
        routes,
        "10.77.0.0/24 proto kernel scope link src 10.77.0.1\n10.1.0.0/16 via 10.77.0.5 src 10.77.0.1\ndefault via 10.77.0.254 src 10.77.0.1\n"
    );
}

#[test]
fn a_parked_open_does_not_stall_other_clients() {
    let h = Harness::start("arp_retry_ms: 1000");
    let sock = h.socket.clone();
    // This open waits ~3 s for an ARP reply that never comes.
    let waiter = std::thread::spawn(move || {
        let mut c = nemflow_flowmgr::client::Client::connect(&sock).unwrap();
        c.open(&OpenFlow::udp(
            0,
            Some(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 99), 1)),
        ))
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let mut c = h.client();
    c.open(&OpenFlow::udp(0, None)).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        kind(waiter.join().unwrap().unwrap_err()),
        AppErrorKind::HostUnreachable
    );
}

#[test]
fn a_changed_neighbour_mac_reaches_the_app_as_an_event() {
    let h = Harness::start("");
    let mut c = h.client();
    let f = c
        .open(&OpenFlow::udp(0, Some(SocketAddrV4::new(PEER, 9))))
        .unwrap();
    assert_eq!(f.fib.next_hop_mac, Some(PEER_MAC));
    let new_mac = [2, 0, 0, 0, 0, 0x77];
    h.fake
        .inject(nemflow_flowmgr::arp::announcement(new_mac, PEER));
    let end = Instant::now() + SEC;
    let ev = loop {
        if let Some(ev) = c.poll_event().unwrap() {
            break ev;
        }
        assert!(Instant::now() < end, "no event");
        std::thread::sleep(Duration::from_millis(2));
    };
    match ev {
        AppEvent::FibChanged(fib) => {
            assert_eq!(fib.flow, f.id());
            assert_eq!(fib.next_hop_mac, Some(new_mac));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_clients_are_answered_or_dropped_and_fds_return_to_baseline() {
    let h = Harness::start("");
    // Let the start-up probe's connection close first.
    std::thread::sleep(Duration::from_millis(100));
    let baseline = h.daemon_fds();
    let connect = || UnixStream::connect(&h.socket).unwrap();
    let read_reply = |s: &UnixStream| -> Result<nemflow_proto::app::ServerMsg, wire::WireError> {
        let f = wire::Decoder::new(0).recv(s, Some(SEC))?;
        f.decode()
    };
    let is_closed = |s: &UnixStream| {
        let mut d = wire::Decoder::new(0);
        loop {
            match d.recv(s, Some(SEC)) {
                Ok(_) => continue,
                Err(wire::WireError::Closed) => return true,
                Err(_) => return false,
            }
        }
    };
    let mut expect_framing = 0;

    // 1. A well-framed request whose payload is garbage: an error reply, the connection stays.
    let s = connect();
    let mut bytes = wire::encode(&AppRequest::ListFlows).unwrap();
    bytes.extend_from_slice(&[0xee; 3]);
    let len = (bytes.len() - wire::HEADER_BYTES) as u32;
    bytes[4..8].copy_from_slice(&len.to_le_bytes());
    (&s).write_all(&bytes).unwrap();
    let r = read_reply(&s).unwrap();
    assert!(format!("{r:?}").contains("malformed request"), "{r:?}");
    wire::send(&s, &AppRequest::Routes, &[]).unwrap();
    assert!(format!("{:?}", read_reply(&s).unwrap()).contains("Routes"));
    drop(s);

    // 2. Wrong version, bad magic, oversized length: an error reply, then the daemon hangs up.
    for header in [
        *b"NF\x07\x00\x01\x00\x00\x00",
        *b"XX\x01\x00\x01\x00\x00\x00",
        *b"NF\x02\x00\xff\xff\xff\xff",
    ] {
        let s = connect();
        (&s).write_all(&header).unwrap();
        let r = read_reply(&s).unwrap();
        assert!(format!("{r:?}").contains("protocol error"), "{r:?}");
        assert!(is_closed(&s));
        expect_framing += 1;
    }

    // 3. Unexpected fds with a request: refused, connection dropped, fds closed in the daemon.
    let s = connect();
    let (pr, _pw) = rustix::pipe::pipe().unwrap();
    let _ = wire::send(&s, &AppRequest::ListFlows, &[pr.as_fd()]);
    assert!(is_closed(&s));
    expect_framing += 1;

    // 4. Truncated: half a message, then the client closes.
    let s = connect();
    let whole = wire::encode(&AppRequest::Open(OpenFlow::udp(0, None))).unwrap();
    (&s).write_all(&whole[..whole.len() / 2]).unwrap();
    drop(s);

    // 5. Stops mid-message and stays connected: dropped after client_timeout_ms (300 ms).
    let s = connect();
    (&s).write_all(&whole[..5]).unwrap();
    let t = Instant::now();
    assert!(is_closed(&s));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );

    // 6. A trickler: one byte every 20 ms; meanwhile another client is served at once.
    let s = connect();
    let hello = wire::encode(&AppRequest::Hello {
        client: "slow".into(),
    })
    .unwrap();
    let mut c = h.client();
    for (i, b) in hello.iter().enumerate() {
        (&s).write_all(&[*b]).unwrap();
        if i % 4 == 0 {
            let t = Instant::now();
            c.routes().unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(250),
                "{:?}",
                t.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(format!("{:?}", read_reply(&s).unwrap()).contains("Hello"));
    drop(s);

    // 7. A client that never reads: its replies pile up; it is dropped, others are served.
    let s = connect();
    let req = wire::encode(&AppRequest::AllFlows).unwrap();
    let mut sent = 0u64;
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match (&s).write(&req) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => break, // the daemon hung up
        }
        if sent.is_multiple_of(500) && h.counter("clients_slow") > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never dropped after {sent} requests"
        );
    }
    drop(s);
    c.routes().unwrap();
    drop(c);

    assert_eq!(
        h.wait_fds(baseline, SEC),
        baseline,
        "daemon fds back to baseline"
    );
    assert_eq!(h.counter("requests_malformed"), 1);
    assert_eq!(h.counter("clients_bad_framing"), expect_framing);
    assert_eq!(h.counter("clients_stalled"), 1);
    assert_eq!(h.counter("clients_slow"), 1);
    // The daemon still works.
    h.client().open(&OpenFlow::udp(0, None)).unwrap();
}

#[test]
fn the_nemflow_tool_shows_flows_and_stats() {
    let h = Harness::start("");
    let mut c = h.client();
    let f = c
        .open(&OpenFlow::udp(5353, Some(SocketAddrV4::new(PEER, 53))))
        .unwrap();
    c.listen(8080).unwrap();
    let (ok, out, err) = h.run_nemflow(&["flows"], None);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Netid State"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("host ")), "{out}");
    let udp = lines.iter().find(|l| l.starts_with("udp")).unwrap();
    assert!(
        udp.contains("ESTAB") && udp.contains("10.77.0.1:5353") && udp.contains("10.77.0.2:53"),
        "{udp}"
    );
    assert!(udp.contains("pid="), "{udp}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tcp") && l.contains("LISTEN") && l.contains(":8080")),
        "{out}"
    );
    // As another uid, the owner of root's flows is hidden (like ss -p).
    let (_, out, _) = h.run_nemflow(&["flows"], Some(NOBODY));
    assert!(
        out.lines()
            .filter(|l| l.starts_with("udp"))
            .all(|l| !l.contains("pid=")),
        "{out}"
    );
    let (mut tx, _rx) = f.attach().unwrap();
    for _ in 0..3 {
        let e = tx.alloc(100).unwrap().unwrap();
        tx.push(IoRec::single(e, 0)).unwrap();
    }
    assert!(h
        .fake
        .wait_for(SEC, |s| s.stats.values().any(|f| f.tx_packets == 3)));
    let (ok, out, _) = h.run_nemflow(&["stats"], None);
    assert!(ok);
    assert!(out.contains(" Sent 300 bytes 3 pkt (dropped 0, "), "{out}");
    assert!(out.contains("port fake0"), "{out}");
    let (ok, out, _) = h.run_nemflow(&["stats", "-j"], None);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["flows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["tx_packets"] == 3));
    assert!(v["flowmgr"]["flows_opened"].as_u64().unwrap() >= 1);
    let (ok, out, _) = h.run_nemflow(&["resolve", "10.77.0.2"], None);
    assert!(ok && out.contains("lladdr 02:4e:46:ff:00:02"), "{out}");
}

#[test]
fn the_host_flow_answers_ping_and_closed_ports() {
    let h = Harness::start("");
    assert!(h.fake.wait_for(SEC, |s| !s.sent.is_empty()));
    h.fake.take_sent();
    // ARP for us from the peer.
    let req = nemflow_flowmgr::arp::frame(
        [0xff; 6],
        true,
        PEER_MAC,
        PEER,
        [0; 6],
        Ipv4Addr::new(10, 77, 0, 1),
    );
    h.fake.inject(req);
    assert!(h.fake.wait_for(SEC, |s| s
        .sent
        .iter()
        .any(
            |f| nemflow_flowmgr::arp::parse(f).is_ok_and(|a| !a.request && a.tha == PEER_MAC)
        )));
    assert!(h.counter("arp_replies_sent") >= 1);
}

#[test]
fn a_datagram_that_beats_the_drivers_install_is_dropped_not_refused() {
    let h = Harness::start("");
    let mut c = h.client();
    let f = c.open(&OpenFlow::udp(5000, None)).unwrap();
    // The open is answered while the driver installs the filter: a datagram for the port in
    // that window reaches the host flow. The app was told its port is bound, so it is not
    // refused. (The fake driver delivers injected frames to the host flow, as a driver without
    // the filter would.)
    let dgram = UdpFrame::new(
        SocketAddrV4::new(PEER, 7000),
        SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 5000),
        b"early",
    )
    .build();
    let is_icmp = |f: &[u8]| f.len() > 23 && f[12..14] == [8, 0] && f[23] == 1;
    h.fake.take_sent();
    h.fake.inject(dgram.clone());
    let deadline = Instant::now() + SEC;
    while h.counter("for_installing_flow") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(h.counter("for_installing_flow"), 1);
    assert_eq!(h.counter("udp_port_unreachable"), 0);
    assert!(!h.fake.state().sent.iter().any(|f| is_icmp(f)));
    // Once the flow is closed, the port is closed: the same datagram is refused.
    c.close(f.id()).unwrap();
    h.fake.inject(dgram);
    assert!(h.fake.wait_for(SEC, |s| s.sent.iter().any(|f| is_icmp(f))));
    assert_eq!(h.counter("udp_port_unreachable"), 1);
    assert_eq!(h.counter("for_installing_flow"), 1);
}

#[test]
fn the_daemon_explains_what_is_wrong_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_nemflow-flowmgr");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, common::config_text(dir.path(), "")).unwrap();
    let cfgs = cfg.to_str().unwrap();
    let (ok, out, _) = run(&["--config", cfgs, "--check-config"]);
    assert!(ok && out.contains(": ok: host 10.77.0.1/24"), "{out}");
    // Unreachable driver.
    let (ok, _, err) = run(&["--config", cfgs]);
    assert!(!ok);
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("nemflow-flowmgr: cannot reach the driver at")
            && line.contains("is nemflow-driver running?"),
        "{err}"
    );
    assert!(
        !dir.path().join("fm.sock").exists(),
        "no socket left behind"
    );
    // Bad config.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "flowmgr:\n  sockt: /x\n").unwrap();
    let (ok, _, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("unknown field `sockt`"),
        "{err}"
    );
    // Taken socket.
    let h = Harness::start("");
    let (ok, _, err) = run(&["--config", h.config.to_str().unwrap()]);
    assert!(
        !ok && err.contains("is in use by another flow manager"),
        "{err}"
    );
    // --help explains the options.
    let (ok, out, _) = run(&["--help"]);
    assert!(ok && out.contains("--check-config") && out.contains("--config"));
}

#[test]
fn sigterm_revokes_every_flow_and_leaves_nothing_behind() {
    let mut h = Harness::start("");
    let mut c = h.client();
    let f = c.open(&OpenFlow::udp(5000, None)).unwrap();
    common::stop(&mut h.daemon);
    // Every flow (the app's and the host flow) left the driver, and the socket file is gone.
    let s = h.fake.state();
    let removed: Vec<FlowId> = s.removed.iter().map(|(id, _)| *id).collect();
    assert!(
        removed.contains(&f.id()) && removed.contains(&FlowId(1)),
        "{removed:?}"
    );
    assert!(s.flows.is_empty());
    drop(s);
    assert!(!h.socket.exists());
    // The app was told before the connection closed. A FIB change may come first: the gateway's
    // ARP reply can land after the open was answered.
    loop {
        match c.poll_event() {
            Ok(Some(AppEvent::FibChanged(_))) => continue,
            Ok(Some(AppEvent::Revoked { flow, reason })) => {
                assert_eq!(flow, f.id());
                assert!(reason.contains("shutting down"), "{reason}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn idle_time_stages_channel_pairs_that_serve_one_open_each_and_go_with_the_flow_manager() {
    let mut h = Harness::start("");
    assert!(
        h.fake.wait_for(5 * SEC, |s| s.staged == 4),
        "pairs not staged: {}",
        h.fake.state().staged
    );
    let mut c = h.client();
    let a = c
        .open(&OpenFlow::udp(0, Some(SocketAddrV4::new(PEER, 7000))))
        .unwrap();
    let b = c
        .open(&OpenFlow::udp(0, Some(SocketAddrV4::new(PEER, 7001))))
        .unwrap();
    assert_eq!(h.counter("opens_staged"), 2);
    // Each open consumed its own pair: both flows carry their own frames.
    for (i, flow) in [a, b].into_iter().enumerate() {
        let id = flow.id();
        let (mut tx, _rx) = flow.attach().unwrap();
        for _ in 0..=i {
            let ext = tx.alloc(60).unwrap().unwrap();
            tx.buf_mut(ext).unwrap().fill(0x5a);
            tx.push(IoRec::single(ext, 0)).unwrap();
        }
        assert!(h.fake.wait_for(SEC, |s| s
            .stats
            .get(&id)
            .is_some_and(|f| f.tx_packets == i as u64 + 1)));
    }
    // Idle again: the pool refills; a closed flow's pair is never staged again.
    assert!(h.fake.wait_for(5 * SEC, |s| s.staged == 4));
    // Counted once the driver's reply is read (when needed, or within 1 ms).
    let end = Instant::now() + SEC;
    while h.counter("pairs_staged") < 6 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(h.counter("pairs_staged"), 6);
    // The flow manager goes: so do the pairs it staged.
    common::stop(&mut h.daemon);
    assert!(h.fake.wait_for(5 * SEC, |s| s.staged == 0));
}

#[test]
fn a_flow_the_driver_refuses_after_its_open_was_answered_is_revoked_and_released() {
    let h = Harness::start("");
    assert!(h.fake.wait_for(5 * SEC, |s| s.staged == 4));
    let mut c = h.client();
    h.fake.state().refuse_installs = 1;
    // Answered before the driver installs the filter; the driver's refusal follows.
    let f = c
        .open(&OpenFlow::udp(6000, Some(SocketAddrV4::new(PEER, 7000))))
        .unwrap();
    match c.wait_event(Some(5 * SEC)) {
        Ok(Some(AppEvent::Revoked { flow, reason })) => {
            assert_eq!(flow, f.id());
            assert!(reason.contains("refused as the test asked"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.counter("opens_revoked_by_driver"), 1);
    assert!(c.flows().unwrap().is_empty(), "the flow is gone");
    // Its port was released: the same open works now.
    let again = c
        .open(&OpenFlow::udp(6000, Some(SocketAddrV4::new(PEER, 7000))))
        .unwrap();
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&again.id())));
    assert_eq!(
        c.close(f.id()).unwrap_err().kind(),
        Some(AppErrorKind::NoSuchFlow)
    );
}
