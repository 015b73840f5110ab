//! The driver process on a real net_tap device, with the kernel side of the tap in a network
//! namespace as the remote host, and the test playing the flow manager on the control socket.

#![allow(clippy::unwrap_used, clippy::expect_used)] // in tests, a failed expectation is the failure

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest, DropReason, FlowStats, PortInfo};
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::{ChannelSpec, IoRec};
use nemflow_testkit::driver::{DriverClient, DriverOptions, DriverProcess};
use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
use nemflow_testkit::frames::{fix_ip_checksum, UdpFrame, HOST_MAC, PEER_MAC};
use nemflow_testkit::{require_root, RawSocket, RingConfig, RingStats, RxRing};

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

/// The hostile and the polite app's payloads: the smallest Ethernet frame (18 bytes of UDP
/// payload), marked so that the capture tells the apps apart. The vandal never writes payloads.
const HOSTILE_MARK: &[u8; 18] = b"nemflow toctou A!!";
const POLITE_MARK: &[u8; 18] = b"nemflow polite B!!";
/// Ethernet, IPv4 and UDP headers.
const HDR: usize = 42;
/// Header bytes of the fields the template fixes or that must agree with them (source MAC,
/// ethertype, version and header length, total length, protocol, checksum, addresses, ports,
/// UDP length). The vandal writes only these: the others (destination MAC, TOS, id, fragment
/// field, TTL, UDP checksum) the driver does not police, so an app may set them as it likes.
const POLICED: [usize; 28] = [
    6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36,
    37, 38, 39,
];
/// Frames of the hostile flow the remote host must capture.
const WANT: u64 = 1_000_000;
/// The whole test must be done within this (a hang or a machine too slow fails clearly).
const TIME_LIMIT: Duration = Duration::from_secs(180);

/// `good`'s header with the IP total length set to `total` and the UDP length and IP checksum
/// made to agree: the one way the template lets a frame's headers vary (a datagram shorter than
/// its frame, the rest padding).
fn header_with_total(good: &[u8], total: u16) -> Vec<u8> {
    let mut h = good[..HDR].to_vec();
    h[16..18].copy_from_slice(&total.to_be_bytes());
    h[38..40].copy_from_slice(&total.wrapping_sub(20).to_be_bytes());
    fix_ip_checksum(&mut h);
    h
}

/// Why `frame` is not the app's `good` frame as the flow's template lets it vary, or `None`:
/// every header byte as the app wrote it except a shorter datagram whose UDP length and IP
/// checksum agree; frame length and payload as written.
fn off_template(frame: &[u8], good: &[u8]) -> Option<String> {
    if frame.len() != good.len() {
        return Some(format!(
            "{} bytes, the app sent {}",
            frame.len(),
            good.len()
        ));
    }
    let total = u16::from_be_bytes([frame[16], frame[17]]);
    if usize::from(total) < 28 || usize::from(total) > frame.len() - 14 {
        return Some(format!(
            "IP total length {total} in a {}-byte frame",
            frame.len()
        ));
    }
    let want = header_with_total(good, total);
    let differ: Vec<usize> = (0..HDR).filter(|&i| frame[i] != want[i]).collect();
    if !differ.is_empty() {
        return Some(format!("header bytes {differ:?} differ from the template"));
    }
    (frame[HDR..] != good[HDR..]).then(|| "payload differs".to_string())
}

/// One spoiling of a header: (offset, bad byte, good byte) for each byte it changes.
type Spoil = Vec<(usize, u8, u8)>;
/// A change to a frame, and whether the IP checksum is to be made right after it.
type Edit = (fn(&mut [u8]), bool);

/// What the vandal writes over a buffer's header: each changes one field the template fixes,
/// with the IP checksum made right again where that matters, so that the field itself is what
/// the driver must catch.
fn spoils(good: &[u8]) -> Vec<Spoil> {
    let edits: [Edit; 14] = [
        (|f| f[26..30].copy_from_slice(&[10, 77, 0, 99]), true),
        (|f| f[26..30].copy_from_slice(&PEER.octets()), true),
        (|f| f[30..34].copy_from_slice(&[10, 77, 0, 3]), true),
        (|f| f[34..36].copy_from_slice(&7002u16.to_be_bytes()), false),
        (|f| f[36..38].copy_from_slice(&5001u16.to_be_bytes()), false),
        (|f| f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]), false),
        (|f| f[12..14].copy_from_slice(&[0x86, 0xdd]), false),
        (|f| f[12..14].copy_from_slice(&[0x81, 0x00]), false),
        (
            |f| {
                let t = (f.len() - 14 + 100) as u16;
                f[16..18].copy_from_slice(&t.to_be_bytes());
            },
            true,
        ),
        (
            |f| {
                let t = (f.len() - 14 - 4) as u16;
                f[16..18].copy_from_slice(&t.to_be_bytes());
            },
            true,
        ),
        (
            |f| {
                let u = u16::from_be_bytes([f[38], f[39]]) + 8;
                f[38..40].copy_from_slice(&u.to_be_bytes());
            },
            false,
        ),
        (|f| f[23] = ip_proto::TCP, true),
        (|f| f[14] = 0x46, true),
        (|f| f[14] = 0x65, true),
    ];
    edits
        .iter()
        .map(|(edit, fix)| {
            let mut f = good.to_vec();
            edit(&mut f);
            if *fix {
                fix_ip_checksum(&mut f);
            }
            assert!(off_template(&f, good).is_some(), "a spoil the check misses");
            (0..HDR)
                .filter(|&i| f[i] != good[i])
                .map(|i| (i, f[i], good[i]))
                .collect()
        })
        .collect()
}

/// What the hostile app pushed, for the vandal: the offsets of the buffers it pushed last (by
/// push count modulo their number) and the count of the oldest still out.
#[derive(Debug)]
struct Pushed {
    offsets: Vec<AtomicU32>,
    oldest: AtomicU64,
}

/// A second, writable mapping of a flow's transmit data area: the app's "other thread".
#[derive(Debug)]
struct SharedArea {
    addr: usize,
    len: usize,
}

impl SharedArea {
    fn map(fd: &std::os::fd::OwnedFd, len: usize) -> Self {
        // SAFETY: mapping a memfd of exactly `len` bytes, shared, read-write; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Self {
            addr: ptr as usize,
            len,
        }
    }

    /// Writes one byte at `at`, bounds-checked.
    fn write(&self, at: usize, byte: u8) {
        assert!(at < self.len);
        // SAFETY: inside the mapping (checked), which lives as long as `self`. Volatile: the
        // driver and the app's producer read and write this shared memory concurrently — that
        // race is what the test is about.
        unsafe { std::ptr::write_volatile((self.addr + at) as *mut u8, byte) };
    }
}

impl Drop for SharedArea {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of its length; `self` is its only handle.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A thread that runs until told to stop; also stopped and joined when dropped (a failing test).
struct Stopper<T> {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<T>>,
}

impl<T: Send + 'static> Stopper<T> {
    fn spawn(f: impl FnOnce(&AtomicBool) -> T + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = Some(std::thread::spawn(move || f(&s)));
        Self { stop, handle }
    }

    fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    fn finish(mut self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl<T> Drop for Stopper<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the remote host saw.
#[derive(Debug, Default)]
struct Seen {
    hostile: u64,
    polite: u64,
    /// Frames of neither app (nothing else sends on this link).
    unknown: u64,
    /// Frames of either app that differ from its template.
    off_template: u64,
    /// The first few frames off the template or unknown, with why.
    examples: Vec<(String, Vec<u8>)>,
    /// Polite frames seen during each successive 100 000 hostile ones.
    polite_per_window: Vec<u64>,
    ring: RingStats,
}

/// Reads the remote host's ring until told to stop and then quiet for 200 ms; checks every
/// frame against its app's template.
fn capture(
    mut ring: RxRing,
    stop: &AtomicBool,
    hostile_seen: &AtomicU64,
    good_a: &[u8],
    good_b: &[u8],
) -> Result<Seen, String> {
    let mut seen = Seen {
        polite_per_window: vec![0; (WANT / 100_000) as usize],
        ..Seen::default()
    };
    let mut quiet_since: Option<Instant> = None;
    loop {
        let Some(block) = ring.next_block(Duration::from_millis(20))? else {
            if stop.load(Ordering::Relaxed) {
                let q = *quiet_since.get_or_insert_with(Instant::now);
                if q.elapsed() > Duration::from_millis(200) {
                    break;
                }
            }
            continue;
        };
        quiet_since = None;
        for f in block.frames() {
            // As on the wire: a VLAN tag the kernel stripped is put back.
            let wire = f?.wire_bytes();
            let f = &*wire;
            let mark = f.get(HDR..HDR + 18);
            let verdict = if mark == Some(HOSTILE_MARK) {
                seen.hostile += 1;
                off_template(f, good_a)
            } else if mark == Some(POLITE_MARK) {
                seen.polite += 1;
                let w = (seen.hostile / 100_000) as usize;
                if let Some(n) = seen.polite_per_window.get_mut(w) {
                    *n += 1;
                }
                off_template(f, good_b)
            } else {
                seen.unknown += 1;
                Some("a frame of neither app".to_string())
            };
            if let Some(why) = verdict {
                seen.off_template += u64::from(mark.is_some());
                if seen.examples.len() < 8 {
                    seen.examples.push((why, f.to_vec()));
                }
            }
        }
        hostile_seen.store(seen.hostile, Ordering::Relaxed);
    }
    seen.ring = ring.stats()?;
    Ok(seen)
}

/// Over and over: spoils the headers of four of the last buffers the app pushed (with one of
/// the `spoils`, or a few random bytes of policed fields), waits a moment, and puts them right
/// again, so that a header can change between any two reads of it. Returns how many spoils it
/// made.
fn vandal(area: &SharedArea, pushed: &Pushed, good: &[u8], stop: &AtomicBool) -> u64 {
    let recent = &pushed.offsets;
    let spoils = spoils(good);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut made = 0u64;
    let mut random: Spoil = Vec::with_capacity(4);
    let mut targets = Vec::with_capacity(4);
    while !stop.load(Ordering::Relaxed) {
        let (r, which) = (rand(), rand());
        targets.clear();
        // Half the time among the oldest buffers still out (the ones the driver is reading
        // now), half the time among all the app pushed last.
        let (from, span) = if which & 1 == 0 {
            (pushed.oldest.load(Ordering::Relaxed) as usize, 8)
        } else {
            (0, recent.len())
        };
        for k in 0..4 {
            let i = from + (which >> (1 + 16 * k)) as usize % span;
            let at = recent[i % recent.len()].load(Ordering::Relaxed);
            if (at as usize).saturating_add(HDR) <= area.len && !targets.contains(&at) {
                targets.push(at);
            }
        }
        let pick = (r >> 8) as usize % (spoils.len() + 1);
        let spoil = if pick < spoils.len() {
            &spoils[pick]
        } else {
            random.clear();
            for k in 0..1 + (r >> 16) % 4 {
                let i = POLICED[(r >> (20 + 5 * k)) as usize % POLICED.len()];
                let bad = (r >> (40 + 4 * k)) as u8;
                if bad != good[i] {
                    random.push((i, bad, good[i]));
                }
            }
            &random
        };
        for &at in &targets {
            for &(i, bad, _) in spoil {
                area.write(at as usize + i, bad);
            }
        }
        for _ in 0..(r >> 56) {
            std::hint::spin_loop();
        }
        // Put them right again, in either order, so that torn mixes of both are seen too.
        for &at in &targets {
            let put = |&(i, _, ok): &(usize, u8, u8)| area.write(at as usize + i, ok);
            if r & 1 == 0 {
                spoil.iter().for_each(put);
            } else {
                spoil.iter().rev().for_each(put);
            }
        }
        made += targets.len() as u64;
    }
    made
}

/// Time of check, time of use: a hostile app sends as fast as the driver takes frames while a
/// second thread keeps spoiling and restoring the headers of the buffers it has pushed. The
/// driver must police its own copy of each frame and send exactly that copy: of 1 000 000 of
/// the app's frames captured at the remote host, none may differ from the flow's template, and
/// the spoiled ones must show up as counted template violations. (A driver that checks the
/// shared buffer and then copies it again lets 40 to 400 bad frames a run through here.)
#[test]
fn rewriting_headers_while_sending_never_gets_a_bad_frame_out() {
    let started = Instant::now();
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    // The hostile app: a connected UDP flow (its template fixes both ends) whose channels the
    // test makes itself, to keep a writable mapping of the transmit data area for the vandal.
    let s = spec(64);
    let tx_fds = nemflow_rbuf::create(&s).unwrap();
    let rx_fds = nemflow_rbuf::create(&s).unwrap();
    let area = Arc::new(SharedArea::map(&tx_fds.data, s.data_bytes as usize));
    let mut hostile = nemflow_rbuf::tmm::Producer::attach(&s, tx_fds.try_clone().unwrap()).unwrap();
    let mut fds = tx_fds.with_read_only_data().unwrap().into_vec();
    fds.extend(rx_fds.into_vec());
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let peer = SocketAddrV4::new(PEER, 5000);
    let reply = client
        .call(
            &DriverRequest::InstallFlow {
                id: FlowId(1),
                filter: Filter::Connected {
                    proto: ip_proto::UDP,
                    local: SocketAddrV4::new(HOST, 7001),
                    remote: peer,
                },
                template: Template {
                    src_mac: HOST_MAC,
                    kind: TemplateKind::Ipv4 {
                        src: HOST,
                        proto: ip_proto::UDP,
                        src_port: 7001,
                        dst: Some(peer),
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
    // The polite app on the same link.
    let mut polite = udp_flow(&client, 2, 7002, Qos::BEST_EFFORT, 64);
    let good_a = from_host(7001, HOSTILE_MARK).build();
    let good_b = from_host(7002, POLITE_MARK).build();
    assert_eq!((good_a.len(), good_b.len()), (60, 60));

    // The remote host's capture: a TPACKET_V3 ring in the namespace, arriving frames only.
    let config = RingConfig {
        incoming_only: true,
        ..RingConfig::default()
    };
    let ring = RxRing::bind_in(&driver.netns, &driver.iface, config).unwrap();
    let hostile_seen = Arc::new(AtomicU64::new(0));
    let capture = {
        let seen = Arc::clone(&hostile_seen);
        let (a, b) = (good_a.clone(), good_b.clone());
        Stopper::spawn(move |stop| capture(ring, stop, &seen, &a, &b))
    };
    // Where the hostile app's last buffers are, for the vandal.
    let recent = Arc::new(Pushed {
        offsets: (0..s.slots).map(|_| AtomicU32::new(u32::MAX)).collect(),
        oldest: AtomicU64::new(0),
    });
    let vandal = {
        let (area, recent, good) = (Arc::clone(&area), Arc::clone(&recent), good_a.clone());
        Stopper::spawn(move |stop| vandal(&area, &recent, &good, stop))
    };

    // Send as fast as the link takes them until the remote host has captured WANT hostile
    // frames; the polite app offers one frame every 100 µs meanwhile.
    let (mut pushed_a, mut pushed_b) = (0u64, 0u64);
    let polite_every = Duration::from_micros(100);
    let mut next_b = Instant::now();
    let sending = Instant::now();
    while hostile_seen.load(Ordering::Relaxed) < WANT {
        if capture.is_finished() {
            panic!("the capture ended early: {:?}", capture.finish());
        }
        assert!(
            started.elapsed() < TIME_LIMIT,
            "only {} of {WANT} hostile frames captured after {:?}: pushed {pushed_a}, {:?}",
            hostile_seen.load(Ordering::Relaxed),
            started.elapsed(),
            stats(&client, 1)
        );
        let mut progressed = false;
        for _ in 0..32 {
            let Some(ext) = hostile.alloc(good_a.len()).unwrap() else {
                break;
            };
            assert!(ext.offset as usize + HDR <= area.len);
            hostile.buf_mut(ext).unwrap().copy_from_slice(&good_a);
            hostile.push(IoRec::single(ext, 0)).unwrap();
            let slot = (pushed_a % recent.offsets.len() as u64) as usize;
            recent.offsets[slot].store(ext.offset, Ordering::Relaxed);
            pushed_a += 1;
            progressed = true;
        }
        let (buffers, free) = hostile.buffers();
        let out = (buffers - free) as u64;
        recent
            .oldest
            .store(pushed_a.saturating_sub(out), Ordering::Relaxed);
        let now = Instant::now();
        if now >= next_b {
            if push(&mut polite, &good_b) {
                pushed_b += 1;
            }
            next_b = (next_b + polite_every).max(now);
        }
        if !progressed {
            // Sleep until the driver hands buffers back (a yield would give the core to the
            // vandal for a whole time slice).
            match hostile.wait_ready(Duration::from_micros(200)) {
                Ok(()) | Err(nemflow_rbuf::Error::Timeout) => {}
                Err(e) => panic!("hostile channel: {e}"),
            }
        }
    }
    let sent_for = sending.elapsed();
    // Let the driver finish what was pushed, then the capture see the last of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sa, sb) = loop {
        let (sa, sb) = (stats(&client, 1), stats(&client, 2));
        let a_done = sa.tx_packets + sa.tx_template_violations + sa.invalid_iorecs + sa.tx_dropped;
        let b_done = sb.tx_packets + sb.tx_template_violations + sb.invalid_iorecs + sb.tx_dropped;
        if (a_done == pushed_a && b_done == pushed_b) || Instant::now() > deadline {
            break (sa, sb);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let spoils_made = vandal.finish();
    let seen = capture.finish().unwrap();
    eprintln!(
        "{sent_for:?} sending, {:?} in all; hostile: pushed {pushed_a}, sent {}, refused {} \
         ({spoils_made} spoils), captured {}; polite: pushed {pushed_b}, sent {}, captured {} \
         (per 100k hostile: {:?}); off template {}, unknown {}; ring {:?}",
        started.elapsed(),
        sa.tx_packets,
        sa.tx_template_violations,
        seen.hostile,
        sb.tx_packets,
        seen.polite,
        seen.polite_per_window,
        seen.off_template,
        seen.unknown,
        seen.ring,
    );
    for (why, f) in &seen.examples {
        eprintln!("{why}: {f:02x?}");
    }
    assert_eq!(
        (seen.off_template, seen.unknown),
        (0, 0),
        "frames off the template reached the remote host: {:?}",
        seen.examples
    );
    assert!(seen.hostile >= WANT);
    // The driver accounted for every frame: sent, or refused as off its template (the vandal's
    // work), never anything else.
    assert_eq!(
        sa.tx_packets + sa.tx_template_violations,
        pushed_a,
        "hostile flow: {sa:?}"
    );
    assert_eq!(
        (sa.invalid_iorecs, sa.tx_dropped, sa.broken),
        (0, 0, false),
        "{sa:?}"
    );
    assert!(
        sa.tx_template_violations > 0,
        "the vandal spoiled no frame the driver saw: {sa:?}"
    );
    // The drop log names the hostile flow's refusals, never the polite flow.
    let mut after = 0;
    let mut logged = 0u64;
    loop {
        let DriverReply::DropLog(entries) = client
            .call(&DriverRequest::DropLog { after, max: 2048 }, &[])
            .unwrap()
        else {
            panic!("no drop log")
        };
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for e in &entries {
            assert_ne!(
                e.flow,
                Some(FlowId(2)),
                "the polite flow lost a frame: {e:?}"
            );
            if e.flow == Some(FlowId(1)) {
                assert_eq!(e.reason, DropReason::TxTemplate, "{e:?}");
                logged += 1;
            }
        }
    }
    assert!(logged > 0, "no template violation in the drop log");
    // Every frame the driver sent was checked at the remote host or counted as dropped by the
    // capture ring (net_tap hands the kernel each frame synchronously: nothing lost between).
    assert_eq!(
        seen.hostile + seen.polite + seen.unknown + seen.ring.drops,
        sa.tx_packets + sb.tx_packets,
        "frames sent (hostile {sa:?}, polite {sb:?}) vs captured: {seen:?}"
    );
    // The polite flow kept flowing throughout: every frame it offered was sent, and the remote
    // host saw some in every stretch of 100 000 hostile frames.
    assert_eq!(sb.tx_packets, pushed_b, "polite flow: {sb:?}");
    assert_eq!(sb.tx_template_violations + sb.tx_dropped, 0, "{sb:?}");
    assert!(seen.polite <= sb.tx_packets);
    assert!(
        seen.polite_per_window.iter().all(|&n| n > 0),
        "polite frames per 100 000 hostile ones: {:?}",
        seen.polite_per_window
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

#[test]
fn dropping_a_staged_pair_unknown_or_known_is_a_reply_never_a_crash() {
    let driver = start(1_000_000_000);
    let client = driver.client().unwrap();
    // Unknown: an error reply, and the connection and driver carry on.
    match client
        .call(&DriverRequest::DropStaged { id: 77 }, &[])
        .unwrap()
    {
        DriverReply::Error { kind, message } => {
            assert_eq!(kind, nemflow_proto::ctl::ErrorKind::NotFound);
            assert!(message.contains("77"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(port_info(&client).staged, 0);
    // Known: dropped (unmapped), and then unknown.
    let s = spec(64);
    let (_app, fds) = flow_channels(&s, &s).unwrap();
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let reply = client
        .call(
            &DriverRequest::StageChannels {
                id: 5,
                tx: s,
                rx: s,
            },
            &borrowed,
        )
        .unwrap();
    assert_eq!(reply, DriverReply::Ok);
    assert_eq!(port_info(&client).staged, 1);
    let reply = client
        .call(&DriverRequest::DropStaged { id: 5 }, &[])
        .unwrap();
    assert_eq!(reply, DriverReply::Ok);
    assert_eq!(port_info(&client).staged, 0);
    assert!(matches!(
        client
            .call(&DriverRequest::DropStaged { id: 5 }, &[])
            .unwrap(),
        DriverReply::Error { .. }
    ));
}
