//! TCP on the control path against the fake driver: the SYN call-back (`Incoming`, `Accept`,
//! `Reject`), per-port backlogs, TIME_WAIT answers from the driver's sequence state, and the
//! RST for a connection whose app left it open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{Harness, PEER, PEER_MAC};
use nemflow_proto::app::{AcceptFlow, AppErrorKind, AppEvent, Buffers, Incoming, OpenFlow};
use nemflow_proto::ctl::{FlowStats, TcpSeen};
use nemflow_proto::flow::{ip_proto, Filter};
use nemflow_proto::{FlowId, Qos};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, TcpSeqNumber,
};

const US: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const US_MAC: [u8; 6] = [2, 0x4e, 0x46, 0, 0, 1];
const SEC: Duration = Duration::from_secs(2);

/// A TCP segment from the peer's `sport` to our `dport`.
fn segment(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + 20 + 20];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress(US_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    Ipv4Repr {
        src_addr: PEER,
        dst_addr: US,
        next_header: IpProtocol::Tcp,
        payload_len: 20,
        hop_limit: 64,
    }
    .emit(&mut ip, &ChecksumCapabilities::default());
    let mut t = TcpPacket::new_unchecked(ip.payload_mut());
    t.set_src_port(sport);
    t.set_dst_port(dport);
    t.set_seq_number(TcpSeqNumber(seq as i32));
    t.set_ack_number(TcpSeqNumber(ack as i32));
    t.set_header_len(20);
    t.clear_flags();
    t.set_syn(flags & TcpSeen::SYN != 0);
    t.set_fin(flags & TcpSeen::FIN != 0);
    t.set_rst(flags & TcpSeen::RST != 0);
    t.set_ack(flags & TcpSeen::ACK != 0);
    t.set_window_len(1000);
    t.fill_checksum(&IpAddress::Ipv4(PEER), &IpAddress::Ipv4(US));
    buf
}

/// The TCP segments the flow manager sent: (dst port, seq, ack, rst, ack flag).
fn sent_tcp(h: &Harness) -> Vec<(u16, u32, u32, bool, bool)> {
    h.fake
        .take_sent()
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let t = TcpPacket::new_checked(ip.payload()).ok()?;
            Some((
                t.dst_port(),
                t.seq_number().0 as u32,
                t.ack_number().0 as u32,
                t.rst(),
                t.ack(),
            ))
        })
        .collect()
}

fn wait_sent(h: &Harness, pred: impl Fn(&[u8]) -> bool) -> bool {
    h.fake.wait_for(SEC, |s| s.sent.iter().any(|f| pred(f)))
}

fn incoming(c: &mut nemflow_flowmgr::client::Client) -> Incoming {
    match c.wait_event(Some(SEC)).unwrap() {
        Some(AppEvent::Incoming(i)) => i,
        other => panic!("expected Incoming, got {other:?}"),
    }
}

fn accept_req(i: &Incoming) -> AcceptFlow {
    AcceptFlow {
        listen_port: i.listen_port,
        remote: i.remote,
        qos: Qos::BEST_EFFORT,
        buffers: Buffers::default(),
    }
}

fn is_tcp(f: &[u8]) -> bool {
    f.len() > 23 && f[23] == ip_proto::TCP
}

#[test]
fn a_syn_calls_the_listener_back_which_accepts_or_rejects() {
    let h = Harness::start("");
    let mut app = h.client();
    assert_eq!(app.listen(8080).unwrap(), 8080);
    let syn = segment(40001, 8080, 1000, 0, TcpSeen::SYN);
    h.fake.inject(syn.clone());
    let i = incoming(&mut app);
    assert_eq!(i.listen_port, 8080);
    assert_eq!(i.remote, SocketAddrV4::new(PEER, 40001));
    assert_eq!(i.syn, syn, "the SYN frame is handed over whole");
    assert_eq!(i.isn_above, None);
    // A retransmitted SYN while the app decides is not announced twice.
    h.fake.inject(syn.clone());
    assert!(app
        .wait_event(Some(Duration::from_millis(200)))
        .unwrap()
        .is_none());
    assert_eq!(h.counter("syn_duplicates"), 1);
    // Accept: the connection's own flow, a 5-tuple filter on the listening port.
    let flow = app.accept(&accept_req(&i)).unwrap();
    assert_eq!(flow.fib.local, SocketAddrV4::new(US, 8080));
    assert_eq!(flow.fib.remote, Some(i.remote));
    assert_eq!(flow.fib.next_hop_mac, Some(PEER_MAC));
    // Answered while the driver installs it.
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&flow.id())));
    let installed = h.fake.state().flows.get(&flow.id()).cloned().unwrap();
    assert_eq!(
        installed.filter,
        Filter::Connected {
            proto: ip_proto::TCP,
            local: SocketAddrV4::new(US, 8080),
            remote: i.remote,
        }
    );
    // Accepting it again: nothing is waiting any more.
    let e = app.accept(&accept_req(&i)).unwrap_err();
    assert_eq!(e.kind(), Some(AppErrorKind::Invalid));
    // Another peer port: rejected with a reset.
    h.fake.take_sent();
    h.fake.inject(segment(40002, 8080, 5000, 0, TcpSeen::SYN));
    let j = incoming(&mut app);
    app.reject(8080, j.remote, true).unwrap();
    assert!(wait_sent(&h, is_tcp));
    assert_eq!(sent_tcp(&h), vec![(40002, 0, 5001, true, true)]);
    // Rejected silently: nothing sent.
    h.fake.inject(segment(40003, 8080, 6000, 0, TcpSeen::SYN));
    let k = incoming(&mut app);
    app.reject(8080, k.remote, false).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(sent_tcp(&h).is_empty());
    assert_eq!(h.counter("tcp_accepts"), 1);
    assert_eq!(h.counter("tcp_rejects"), 2);
    // Another app cannot accept or reject for this listener.
    let mut other = h.client();
    h.fake.inject(segment(40004, 8080, 7000, 0, TcpSeen::SYN));
    let l = incoming(&mut app);
    assert!(other.accept(&accept_req(&l)).is_err());
    assert!(other.reject(8080, l.remote, true).is_err());
    // After Unlisten a SYN gets an RST from the host.
    app.unlisten(8080).unwrap();
    h.fake.take_sent();
    h.fake.inject(segment(40005, 8080, 8000, 0, TcpSeen::SYN));
    assert!(wait_sent(&h, is_tcp));
    assert_eq!(sent_tcp(&h), vec![(40005, 0, 8001, true, true)]);
}

#[test]
fn a_syn_flood_fills_only_its_own_backlog() {
    let h = Harness::start("");
    let mut flooded = h.client();
    let mut quiet = h.client();
    assert_eq!(flooded.listen_backlog(7000, 4).unwrap(), 7000);
    assert_eq!(quiet.listen(7001).unwrap(), 7001);
    for port in 0..20u16 {
        h.fake
            .inject(segment(30000 + port, 7000, 1, 0, TcpSeen::SYN));
    }
    let mut got = 0;
    while let Some(ev) = flooded
        .wait_event(Some(Duration::from_millis(300)))
        .unwrap()
    {
        assert!(matches!(ev, AppEvent::Incoming(_)));
        got += 1;
    }
    assert_eq!(got, 4, "the backlog bounds the waiting requests");
    assert_eq!(h.counter("syn_backlog_full"), 16);
    // The other service is untouched.
    h.fake.inject(segment(31000, 7001, 1, 0, TcpSeen::SYN));
    let i = incoming(&mut quiet);
    quiet.accept(&accept_req(&i)).unwrap();
    // Unanswered requests expire and free their places.
    std::thread::sleep(nemflow_flowmgr::daemon::PENDING_SYN_TIMEOUT + Duration::from_millis(300));
    assert_eq!(h.counter("syn_expired"), 4);
    h.fake.inject(segment(32000, 7000, 1, 0, TcpSeen::SYN));
    assert!(matches!(
        flooded.wait_event(Some(SEC)).unwrap(),
        Some(AppEvent::Incoming(_))
    ));
}

/// Sets what the fake driver reports as the TCP state of `flow`.
fn set_seen(h: &Harness, flow: FlowId, seen: TcpSeen) {
    // An accept is answered while the driver installs the flow (which resets its stats).
    assert!(h.fake.wait_for(SEC, |s| s.flows.contains_key(&flow)));
    h.fake.state().stats.insert(
        flow,
        FlowStats {
            id: flow,
            tcp: Some(seen),
            ..FlowStats::default()
        },
    );
}

#[test]
fn a_clean_close_holds_time_wait_and_answers_for_it() {
    let h = Harness::start("time_wait_ms: 60000");
    let mut app = h.client();
    app.listen(9000).unwrap();
    h.fake.inject(segment(41000, 9000, 100, 0, TcpSeen::SYN));
    let i = incoming(&mut app);
    let flow = app.accept(&accept_req(&i)).unwrap();
    // The connection ran and closed both ways: we sent up to 5001, received up to 2001.
    let closed = TcpSeen {
        snd_nxt: 5001,
        rcv_nxt: 2001,
        peer_ack: 5001,
        peer_nxt: 2001,
        tx_flags: TcpSeen::SYN | TcpSeen::ACK | TcpSeen::FIN,
        rx_flags: TcpSeen::SYN | TcpSeen::ACK | TcpSeen::FIN,
        ends: None,
    };
    set_seen(&h, flow.id(), closed);
    app.close(flow.id()).unwrap();
    assert!(h.fake.wait_for(SEC, |s| !s.flows.contains_key(&flow.id())));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.counter("tcp_time_waits"), 1);
    assert_eq!(h.counter("tcp_resets_on_close"), 0);
    h.fake.take_sent();
    // The peer's FIN again (it lost our ACK): the final ACK again.
    h.fake.inject(segment(
        41000,
        9000,
        2000,
        5001,
        TcpSeen::FIN | TcpSeen::ACK,
    ));
    assert!(wait_sent(&h, is_tcp));
    assert_eq!(sent_tcp(&h), vec![(41000, 5001, 2001, false, true)]);
    // A new SYN above the old receive point reopens the 4-tuple for the listener, with an
    // ISN bound; our app accepts it although the 5-tuple is in TIME_WAIT.
    h.fake
        .inject(segment(41000, 9000, 900_000, 0, TcpSeen::SYN));
    let j = incoming(&mut app);
    assert_eq!(j.isn_above, Some(5001));
    let again = app.accept(&accept_req(&j)).unwrap();
    assert_eq!(again.fib.remote, Some(i.remote));
    // An app that dies with the connection open: the peer gets an RST at our next sequence
    // number, acknowledging what we received.
    let open = TcpSeen {
        snd_nxt: 70_000,
        rcv_nxt: 900_501,
        peer_ack: 69_000,
        peer_nxt: 900_501,
        tx_flags: TcpSeen::SYN | TcpSeen::ACK,
        rx_flags: TcpSeen::SYN | TcpSeen::ACK,
        ends: None,
    };
    set_seen(&h, again.id(), open);
    h.fake.take_sent();
    drop(app);
    assert!(wait_sent(&h, is_tcp));
    assert_eq!(sent_tcp(&h), vec![(41000, 70_000, 900_501, true, true)]);
    assert_eq!(h.counter("tcp_resets_on_close"), 1);
    // The 4-tuple is held, without sequence state: a stray ACK is reset as at a closed port,
    // and our own apps cannot reuse the 5-tuple meanwhile.
    h.fake
        .inject(segment(41000, 9000, 900_501, 69_500, TcpSeen::ACK));
    assert!(wait_sent(&h, is_tcp));
    assert_eq!(sent_tcp(&h), vec![(41000, 69_500, 0, true, false)]);
    let mut c = h.client();
    let e = c
        .open(&OpenFlow::tcp(9000, SocketAddrV4::new(PEER, 41000)))
        .unwrap_err();
    assert_eq!(e.kind(), Some(AppErrorKind::AddrInUse));
}
