//! The driver's data path against DPDK's own tools, side by side in one run (BENCHMARKS.md,
//! "driver: transmit and receive rates against dpdk-testpmd").
//!
//! - **Transmit** (app channels → wire): the real `Datapath` over a DPDK port in this process,
//!   its poll loop on CPU 0 (the EAL main lcore), N best-effort UDP flows, link rate at the
//!   scheduler's maximum; one app thread on CPU 1 keeps every flow's transmit channel full
//!   (alloc + push; each buffer got its frame written once, before the run). Anchor:
//!   `dpdk-testpmd --forward-mode=txonly` in a child process on the same kind of vdev, its
//!   forwarding lcore on CPU 0, alternating with nemflow. On `net_null` (`no-rx=1`) and on
//!   `net_tap` (each tap's kernel side up in its own namespace, so the kernel takes the frames).
//! - **Receive** (wire → app channels): frames crafted once and re-injected through a
//!   `net_ring` vdev by a generator thread on CPU 1, which also drains the apps' receive channels
//!   (pop + repost). The `Datapath` polls on CPU 0. Anchor: testpmd's `rxonly` loop
//!   (`rte_eth_rx_burst` + `rte_pktmbuf_free_bulk`) on the same port, fed by the same generator.
//! - **Receive latency**: one frame at a time, from its enqueue on the wire ring to the app's
//!   pop (busy-polling app and driver); anchor: a poll loop handing the mbuf to the app over an
//!   `rte_ring`.
//! - **Stages**: what each stage of the data path costs per frame, measured alone on one
//!   thread with the functions the data path calls (scheduler pick + charge, channel pop /
//!   release, copy, template check, classify, mbuf alloc + PMD burst).
//!
//! Needs root (net_tap, namespaces). `driver --help` for the options.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use dpdk_sys::{rte_mbuf, rte_ring};
use hdrhistogram::Histogram;
use nemflow_driver::classify;
use nemflow_driver::datapath::{Datapath, DatapathConfig};
use nemflow_driver::dpdk::{Eal, EthPort, Mbuf, Mempool, PortConf};
use nemflow_driver::flowtable::{Dest, FlowTable};
use nemflow_driver::port::{Frame, Port};
use nemflow_driver::tap_peer::TapPeer;
use nemflow_driver::template;
use nemflow_proto::flow::{ip_proto, Filter, FlowId, Qos, Template, TemplateKind};
use nemflow_rbuf::{rmm, tmm, ChannelFds, IoRec, CHANNEL_FDS};
use nemflow_sched::{Pick, Scheduler, MAX_LINK_RATE_BPS};
use nemflow_testkit::flows::{flow_channels, spec, AppEnds};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket,
};

/// The driver's data path against dpdk-testpmd: transmit and receive rates, receive latency and
/// the cost of each stage. Needs root.
#[derive(Debug, Clone, Parser)]
#[command(name = "driver")]
struct Args {
    /// Seconds each rate is measured (after a short warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs of each measurement (medians are printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Flow counts for transmit.
    #[arg(long, value_delimiter = ',', default_value = "1,16,1000")]
    tx_flows: Vec<usize>,
    /// Flow counts for receive and latency.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    rx_flows: Vec<usize>,
    /// Transmit frame sizes without FCS (64 and 1518 bytes on the wire with it).
    #[arg(long, value_delimiter = ',', default_value = "60,1514")]
    sizes: Vec<usize>,
    /// Receive latency samples per case.
    #[arg(long, default_value_t = 100_000)]
    lat_samples: u64,
    /// Parts to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "null,tap,rx,latency,stages"
    )]
    parts: Vec<Part>,
    /// The testpmd binary.
    #[arg(long, default_value = "dpdk-testpmd")]
    testpmd: String,
    /// Frames per stage-cost sample batch count (each batch is 32 frames).
    #[arg(long, default_value_t = 20_000)]
    stage_batches: usize,
    /// Transmit channel depth per flow (iorecs), instead of the default: 512 iorecs in flight
    /// in all, at least 16 per flow (512 for one flow, 32 for 16, 16 for 1 000).
    #[arg(long)]
    tx_slots: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Transmit on net_null against testpmd txonly.
    Null,
    /// Transmit on net_tap against testpmd txonly.
    Tap,
    /// Receive from net_ring against an rxonly loop.
    Rx,
    /// Receive latency.
    Latency,
    /// Per-stage costs.
    Stages,
}

type Res<T> = Result<T, String>;

/// Adds what was being done to an error.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// The nemflow host's MAC (its ports are given it).
const HOST_MAC: [u8; 6] = [0x02, 0x4e, 0x46, 0, 0, 1];
/// The far end's MAC: testpmd txonly's default peer for port 0, so both send the same frames.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0];
/// testpmd txonly's addresses and port (`198.18.0.1:9 → 198.18.0.2:9`).
const HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PEER_PORT: u16 = 9;
/// Flow i is the host's UDP port `FIRST_PORT + i`.
const FIRST_PORT: u16 = 1024;
/// The driver's default burst.
const BURST: usize = 32;
const MAX_FRAME: usize = 1514;
const WARMUP: Duration = Duration::from_millis(300);
/// The driver's default look-ahead (`driver.lookahead_us`).
const LOOKAHEAD_NS: u64 = 2_000_000;
/// Receive frames: 64 bytes on the wire.
const RX_LEN: usize = 60;
/// Flags of an SP/SC `rte_ring` (`RING_F_SP_ENQ | RING_F_SC_DEQ`; macros, not in the bindings).
const RING_SP_SC: u32 = 0x0001 | 0x0002;
/// A poll longer than this (TSC cycles, ~100 µs) was preempted: not counted as busy time.
const BUSY_POLL_MAX_CYCLES: u64 = 260_000;

/// Set by SIGINT/SIGTERM: every loop checks it and unwinds through the normal clean-up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> Res<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("warning: cannot pin to CPU {cpu}: {e}");
    }
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The data path's clock: ns since the start of the program.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ns_at(self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0).as_nanos() as u64
    }

    fn ns(self) -> u64 {
        self.ns_at(Instant::now())
    }
}

// ---------------------------------------------------------------------------------------------
// Frames and flows

/// An Ethernet/IPv4/UDP frame of `len` bytes (without FCS), zero payload.
fn udp_frame(src: ([u8; 6], SocketAddrV4), dst: ([u8; 6], SocketAddrV4), len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len.max(42)];
    let payload = buf.len() - 42;
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(src.0),
        dst_addr: EthernetAddress(dst.0),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    Ipv4Repr {
        src_addr: *src.1.ip(),
        dst_addr: *dst.1.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload,
        hop_limit: 64,
    }
    .emit(&mut ip, &ChecksumCapabilities::default());
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    udp.set_src_port(src.1.port());
    udp.set_dst_port(dst.1.port());
    udp.set_len((8 + payload) as u16);
    // No UDP checksum, as testpmd's txonly frames.
    udp.set_checksum(0);
    buf
}

fn host(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(HOST_IP, FIRST_PORT + i as u16)
}

fn peer() -> SocketAddrV4 {
    SocketAddrV4::new(PEER_IP, PEER_PORT)
}

fn tx_frame(i: usize, len: usize) -> Vec<u8> {
    udp_frame((HOST_MAC, host(i)), (PEER_MAC, peer()), len)
}

fn rx_frame(i: usize, len: usize) -> Vec<u8> {
    udp_frame((PEER_MAC, peer()), (HOST_MAC, host(i)), len)
}

fn filter(i: usize) -> Filter {
    Filter::Connected {
        proto: ip_proto::UDP,
        local: host(i),
        remote: peer(),
    }
}

fn flow_template(i: usize) -> Template {
    Template {
        src_mac: HOST_MAC,
        kind: TemplateKind::Ipv4 {
            src: HOST_IP,
            proto: ip_proto::UDP,
            src_port: host(i).port(),
            dst: Some(peer()),
        },
    }
}

/// Transmit channel depth per flow: 512 iorecs in flight in all (1 MiB of 2 KiB buffers, the
/// L2 of one of this machine's cores), at least 16 per flow. A saturated port gains nothing from
/// deeper channels, and payload that has left the L2 costs the copy (BENCHMARKS.md, driver).
fn tx_slots_for(flows: usize) -> u32 {
    (512 / flows.max(1)).clamp(16, 512).next_power_of_two() as u32
}

/// Receive channel depth per flow: deep for few flows, 64 buffers each for many.
fn slots_for(flows: usize) -> u32 {
    let s = (4096 / flows.max(1)).clamp(64, 512);
    s.next_power_of_two().min(512) as u32
}

fn datapath<'e>(port: EthPort<'e>, name: &str) -> Res<Datapath<EthPort<'e>>> {
    let mut dp = Datapath::new(
        port,
        DatapathConfig {
            rate_bps: MAX_LINK_RATE_BPS,
            reserve_ppm: 20_000,
            max_frame_bytes: MAX_FRAME,
            burst: BURST,
            drop_log_entries: 1024,
            subnet_broadcast: Ipv4Addr::new(198, 18, 255, 255),
            port_name: name.into(),
        },
    )
    .ctx("data path")?;
    dp.set_lookahead_ns(LOOKAHEAD_NS);
    Ok(dp)
}

/// Installs flows 0..n (ids 1..=n) and returns the apps' ends.
fn install<P: Port>(
    dp: &mut Datapath<P>,
    n: usize,
    tx_slots: u32,
    rx_slots: u32,
    clock: Clock,
) -> Res<Vec<AppEnds>> {
    let (tx_spec, rx_spec) = (spec(tx_slots), spec(rx_slots));
    let mut apps = Vec::with_capacity(n);
    for i in 0..n {
        let (app, fds) = flow_channels(&tx_spec, &rx_spec).ctx("channels")?;
        dp.install(
            FlowId(i as u32 + 1),
            filter(i),
            flow_template(i),
            Qos::BEST_EFFORT,
            &tx_spec,
            &rx_spec,
            fds,
            clock.ns(),
        )
        .ctx("install")?;
        apps.push(app);
    }
    Ok(apps)
}

fn remove_all<P: Port>(dp: &mut Datapath<P>, n: usize) {
    for i in 0..n {
        let _ = dp.remove(FlowId(i as u32 + 1));
    }
}

/// Polls until the data path has had nothing to do for a while (queued frames sent, the wire
/// ring empty).
fn drain<P: Port>(dp: &mut Datapath<P>, clock: Clock) {
    let end = Instant::now() + Duration::from_secs(2);
    let mut quiet = 0;
    while quiet < 2000 && Instant::now() < end {
        let w = dp.poll(clock.ns());
        if w.received == 0 && w.sent == 0 {
            quiet += 1;
        } else {
            quiet = 0;
        }
    }
}

/// Start/stop flags shared with a worker thread.
#[derive(Debug, Default)]
struct Ctl {
    ready: AtomicBool,
    stop: AtomicBool,
}

/// Stops the worker on every way out of a measurement.
struct StopOnDrop(Arc<Ctl>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for the worker to be ready; its error if it ended instead.
fn wait_ready<T>(ctl: &Ctl, handle: &mut Option<JoinHandle<Res<T>>>) -> Res<()> {
    let end = Instant::now() + Duration::from_secs(60);
    while !ctl.ready.load(Ordering::Acquire) {
        interrupted()?;
        if handle.as_ref().is_some_and(JoinHandle::is_finished) {
            return match handle.take().map(JoinHandle::join) {
                Some(Ok(Err(e))) => Err(e),
                _ => Err("worker ended before it was ready".into()),
            };
        }
        if Instant::now() > end {
            return Err("worker not ready after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn join<T>(handle: Option<JoinHandle<Res<T>>>) -> Res<T> {
    handle
        .ok_or("worker gone")?
        .join()
        .map_err(|_| "worker panicked".to_string())?
}

/// What a measurement window saw.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Frames moved (sent to the port, or delivered to the apps).
    packets: u64,
    wall: Duration,
    /// CPU time of the measured thread (the data path's, or testpmd's forwarding lcore).
    cpu: Duration,
    /// Receive: frames the port handed over; dropped for want of a buffer.
    port_rx: u64,
    dropped: u64,
    /// Polls of the measured loop, and those that found nothing to do (the data path was
    /// waiting for its app or generator, not saturated).
    polls: u64,
    idle_polls: u64,
    /// TSC cycles spent in polls that moved frames (polls longer than
    /// [`BUSY_POLL_MAX_CYCLES`], i.e. preempted, left out).
    busy_cycles: u64,
}

impl Window {
    fn mpps(&self) -> f64 {
        self.packets as f64 / self.wall.as_secs_f64() / 1e6
    }

    /// Mpps per second of the measured thread's CPU time.
    fn mpps_per_core(&self) -> f64 {
        self.packets as f64 / self.cpu.as_secs_f64().max(1e-9) / 1e6
    }

    fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// TSC cycles per frame in the polls that moved frames.
    fn busy_cycles_per_frame(&self) -> f64 {
        self.busy_cycles as f64 / self.packets.max(1) as f64
    }

    fn idle_share(&self) -> f64 {
        self.idle_polls as f64 / self.polls.max(1) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Transmit

/// The transmitting app: writes each buffer's frame once, then keeps every flow's channel full
/// (alloc + push) until told to stop. Returns the ends and the iorecs it pushed.
fn tx_app(mut apps: Vec<AppEnds>, len: usize, ctl: Arc<Ctl>) -> Res<(Vec<AppEnds>, u64)> {
    pin(1);
    for (i, app) in apps.iter_mut().enumerate() {
        let frame = tx_frame(i, len);
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            app.tx.reclaim().ctx("reclaim")?;
            let (all, free) = app.tx.buffers();
            if all == free {
                break;
            }
            if Instant::now() > end {
                return Err(format!("flow {i}: {} buffers not returned", all - free));
            }
        }
        let mut held = Vec::new();
        while let Some(e) = app.tx.alloc(len).ctx("alloc")? {
            app.tx.buf_mut(e).ctx("buffer")?.copy_from_slice(&frame);
            held.push(e);
        }
        for e in held {
            app.tx.free(e).ctx("free")?;
        }
    }
    ctl.ready.store(true, Ordering::Release);
    let mut recs = Vec::with_capacity(BURST);
    let mut pushed = 0u64;
    while !ctl.stop.load(Ordering::Relaxed) {
        for app in apps.iter_mut() {
            recs.clear();
            while recs.len() < BURST {
                match app.tx.alloc(len).ctx("alloc")? {
                    Some(e) => recs.push(IoRec::single(e, 0)),
                    None => break,
                }
            }
            if recs.is_empty() {
                continue;
            }
            let n = app.tx.push_batch(&recs).ctx("push")?;
            for r in &recs[n..] {
                app.tx.free(r.extents()[0]).ctx("free")?;
            }
            pushed += n as u64;
        }
    }
    Ok((apps, pushed))
}

/// Polls the data path for `seconds` after a warm-up, as the driver's loop does (without its
/// control socket and telemetry); counts polls that found nothing to do.
fn poll_window<P: Port>(
    dp: &mut Datapath<P>,
    clock: Clock,
    seconds: f64,
) -> Res<(Duration, Duration, u64, u64, u64)> {
    let warm = Instant::now() + WARMUP;
    while Instant::now() < warm {
        dp.poll(clock.ns());
    }
    interrupted()?;
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let (mut polls, mut idle, mut busy) = (0u64, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end || INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let b = rdtsc();
        let w = dp.poll(clock.ns_at(now));
        let dt = rdtsc().wrapping_sub(b);
        polls += 1;
        if w.received == 0 && w.sent == 0 {
            idle += 1;
        } else if dt < BUSY_POLL_MAX_CYCLES {
            busy += dt;
        }
    }
    interrupted()?;
    Ok((t0.elapsed(), thread_cpu() - c0, polls, idle, busy))
}

/// Transmit: what the port sent.
fn tx_window<P: Port>(dp: &mut Datapath<P>, clock: Clock, seconds: f64) -> Res<Window> {
    let s0 = dp.port().stats();
    let (wall, cpu, polls, idle, busy) = poll_window(dp, clock, seconds)?;
    let s1 = dp.port().stats();
    Ok(Window {
        packets: s1.tx_packets - s0.tx_packets,
        wall,
        cpu,
        polls,
        idle_polls: idle,
        busy_cycles: busy,
        ..Window::default()
    })
}

/// One nemflow transmit measurement with `apps` (returned for the next one).
fn nemflow_tx<P: Port>(
    dp: &mut Datapath<P>,
    apps: Vec<AppEnds>,
    len: usize,
    clock: Clock,
    seconds: f64,
) -> Res<(Window, Vec<AppEnds>)> {
    let ctl = Arc::new(Ctl::default());
    let stop = StopOnDrop(Arc::clone(&ctl));
    let worker = Arc::clone(&ctl);
    let mut handle = Some(
        std::thread::Builder::new()
            .name("tx-app".into())
            .spawn(move || tx_app(apps, len, worker))
            .ctx("spawn")?,
    );
    wait_ready(&ctl, &mut handle)?;
    let w = tx_window(dp, clock, seconds);
    drop(stop);
    let (apps, pushed) = join(handle)?;
    drain(dp, clock);
    if std::env::var_os("DRIVER_BENCH_DEBUG").is_some() {
        let st = dp.flow_stats(None).unwrap_or_default();
        let sum = |f: fn(&nemflow_proto::ctl::FlowStats) -> u64| st.iter().map(f).sum::<u64>();
        eprintln!(
            "    debug: pushed {pushed}, tx {} violations {} invalid {} dropped {} broken {}; port {:?}",
            sum(|s| s.tx_packets),
            sum(|s| s.tx_template_violations),
            sum(|s| s.invalid_iorecs),
            sum(|s| s.tx_dropped),
            st.iter().filter(|s| s.broken).count(),
            dp.port_info()
        );
    }
    Ok((w?, apps))
}

/// Transmit results of one (port, flows, size), per run.
#[derive(Debug, Clone, Default)]
struct TxRow {
    port: &'static str,
    flows: usize,
    len: usize,
    nemflow: Vec<Window>,
    testpmd: Vec<Window>,
}

fn tx_part<P: Port>(
    port: &'static str,
    dp: &mut Datapath<P>,
    tp: &mut Testpmd,
    args: &Args,
    clock: Clock,
) -> Res<Vec<TxRow>> {
    let mut rows = Vec::new();
    for &flows in &args.tx_flows {
        let slots = args.tx_slots.unwrap_or_else(|| tx_slots_for(flows));
        let mut apps = install(dp, flows, slots, 16, clock)?;
        let mut mine: Vec<TxRow> = args
            .sizes
            .iter()
            .map(|&len| TxRow {
                port,
                flows,
                len,
                ..TxRow::default()
            })
            .collect();
        let result = (|| -> Res<()> {
            for run in 0..args.runs {
                for row in mine.iter_mut() {
                    let (w, back) =
                        nemflow_tx(dp, apps.split_off(0), row.len, clock, args.seconds)?;
                    apps = back;
                    let t = tp.tx_rate(row.len, args.seconds)?;
                    eprintln!(
                        "  {port} tx {flows:>4} flows {:>4} B run {run}: nemflow {:.3} Mpps (cpu {:.0} %, idle polls {:.0} %, {:.0} cycles/frame busy), testpmd {:.3} Mpps (cpu {:.0} %)  [load {}]",
                        row.len,
                        w.mpps(),
                        100.0 * w.cpu_share(),
                        100.0 * w.idle_share(),
                        w.busy_cycles_per_frame(),
                        t.mpps(),
                        100.0 * t.cpu_share(),
                        load_average()
                    );
                    row.nemflow.push(w);
                    row.testpmd.push(t);
                }
            }
            Ok(())
        })();
        remove_all(dp, flows);
        drop(apps);
        result?;
        rows.extend(mine);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// testpmd

/// A `dpdk-testpmd` child in interactive mode, driven through its standard input.
struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    prefix: String,
    worker_tid: Option<u32>,
    /// The kernel side of its tap, if any (deleted after testpmd has gone).
    peer: Option<TapPeer>,
}

impl Testpmd {
    /// Starts testpmd on `vdev` in txonly mode, 60-byte frames, forwarding lcore on CPU 0.
    fn spawn(bin: &str, vdev: &str, tag: &str) -> Res<Self> {
        let prefix = format!("nfb-tpmd-{tag}-{}", std::process::id());
        // Line-buffered, so that each answer arrives when testpmd prints it.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", bin])
            .args([
                "-l",
                "0-1",
                "--main-lcore",
                "1",
                "--no-huge",
                "-m",
                "512",
                "--no-pci",
                "--no-telemetry",
                "--file-prefix",
                &prefix,
                "--vdev",
                vdev,
                "--",
                "-i",
                "--forward-mode=txonly",
                "--txpkts=60",
                "--total-num-mbufs=8192",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C reaches only us, and we stop it in order.
            .process_group(0)
            .spawn()
            .ctx(&format!("cannot start {bin}"))?;
        let (tx, lines) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut tp = Self {
            stdin: child.stdin.take(),
            child,
            lines,
            prefix,
            worker_tid: None,
            peer: None,
        };
        // Commands are read once start-up is over: the answer to this one says it is.
        tp.cmd("show port summary all")?;
        tp.wait_for(
            |l| l.trim_start_matches("testpmd> ").starts_with("0 ") && l.contains("net_"),
            Duration::from_secs(60),
        )
        .ctx("testpmd start-up")?;
        tp.worker_tid = tp.find_worker();
        Ok(tp)
    }

    fn cmd(&mut self, c: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("testpmd stdin closed")?;
        writeln!(stdin, "{c}").ctx("testpmd stdin")?;
        stdin.flush().ctx("testpmd stdin")
    }

    /// Reads lines until one matches; returns them all.
    fn wait_for(&mut self, done: impl Fn(&str) -> bool, timeout: Duration) -> Res<Vec<String>> {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            interrupted()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let tail = seen[seen.len().saturating_sub(5)..].join(" / ");
                return Err(format!("testpmd: timed out; last lines: {tail}"));
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    let hit = done(&line);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let tail = seen[seen.len().saturating_sub(5)..].join(" / ");
                    return Err(format!("testpmd exited; last lines: {tail}"));
                }
            }
        }
    }

    /// The forwarding lcore's thread (`rte-worker-0`).
    fn find_worker(&self) -> Option<u32> {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim().starts_with("rte-worker") || comm.trim().starts_with("lcore-worker") {
                e.file_name().to_str()?.parse().ok()
            } else {
                None
            }
        })
    }

    /// CPU time of the forwarding lcore (clock ticks of /proc, 10 ms).
    fn worker_cpu(&self) -> Duration {
        let Some(tid) = self.worker_tid else {
            return Duration::ZERO;
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", self.child.id()))
            .unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime, stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(f.iter().sum::<u64>() * 1000 / hz)
    }

    /// txonly with `len`-byte frames for `seconds` (after a warm-up): testpmd's own Tx-pps
    /// between two `show port stats`, and its forwarding lcore's CPU time.
    fn tx_rate(&mut self, len: usize, seconds: f64) -> Res<Window> {
        self.cmd(&format!("set txpkts {len}"))?;
        self.cmd("start")?;
        std::thread::sleep(WARMUP);
        self.cmd("show port stats all")?;
        self.wait_for(|l| l.contains("Tx-pps:"), Duration::from_secs(10))?;
        let c0 = self.worker_cpu();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        self.cmd("show port stats all")?;
        let lines = self.wait_for(|l| l.contains("Tx-pps:"), Duration::from_secs(10))?;
        let wall = t0.elapsed();
        let cpu = self.worker_cpu().saturating_sub(c0);
        self.cmd("stop")?;
        self.wait_for(|l| l.trim() == "Done.", Duration::from_secs(10))?;
        let pps: u64 = lines
            .iter()
            .rev()
            .find_map(|l| {
                let at = l.find("Tx-pps:")?;
                l[at + 7..].split_whitespace().next()?.parse().ok()
            })
            .ok_or("testpmd: no Tx-pps in its statistics")?;
        Ok(Window {
            packets: (pps as f64 * wall.as_secs_f64()) as u64,
            wall,
            cpu,
            ..Window::default()
        })
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.cmd("stop");
        let _ = self.cmd("quit");
        self.stdin = None;
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
        // The namespace after the tap: testpmd closed it on its way out.
        self.peer = None;
    }
}

// ---------------------------------------------------------------------------------------------
// Receive

/// Mbufs crafted once and re-injected onto a ring that a `net_ring` port receives from.
///
/// Each mbuf carries a large reference count paid in advance, so injecting one costs no atomic
/// operation on a line the receiver writes: each receiver's free takes one reference, and the
/// generator tops the count up now and then. Its own reference keeps the mbuf out of the pool.
struct Wire {
    ring: NonNull<rte_ring>,
    mbufs: Vec<NonNull<rte_mbuf>>,
    /// References paid for and not yet handed out, per mbuf.
    credit: Vec<u32>,
    next: usize,
    injected: u64,
}

// SAFETY: the ring and the mbufs live until EAL clean-up; the ring is single-producer and only
// the thread holding the `Wire` enqueues; mbufs are shared with the receiver only through their
// atomic reference counts and read-only data.
unsafe impl Send for Wire {}

const CREDIT_TOP: u32 = 30_000;
const CREDIT_LOW: u32 = 2_000;

impl Wire {
    fn new(pool: &Mempool<'_>, ring: NonNull<rte_ring>, frames: &[Vec<u8>]) -> Res<Self> {
        let mut mbufs = Vec::with_capacity(frames.len());
        for f in frames {
            let mut m: Mbuf<'_> = pool.alloc().ok_or("mbuf pool empty")?;
            m.append(f.len())
                .ok_or("mbuf too small")?
                .copy_from_slice(f);
            let raw = m.into_raw();
            // SAFETY: we own the mbuf (fresh, refcount 1); nobody else sees it yet.
            unsafe { dpdk_sys::rte_mbuf_refcnt_set(raw.as_ptr(), (1 + CREDIT_TOP) as u16) };
            mbufs.push(raw);
        }
        Ok(Self {
            ring,
            credit: vec![CREDIT_TOP; mbufs.len()],
            mbufs,
            next: 0,
            injected: 0,
        })
    }

    fn take(&mut self, i: usize) -> *mut rte_mbuf {
        let m = self.mbufs[i];
        if self.credit[i] < CREDIT_LOW {
            let add = CREDIT_TOP - self.credit[i];
            // SAFETY: a live mbuf that we hold a reference to; the update is atomic.
            unsafe { dpdk_sys::rte_mbuf_refcnt_update(m.as_ptr(), add as i16) };
            self.credit[i] += add;
        }
        self.credit[i] -= 1;
        m.as_ptr()
    }

    /// Enqueues up to `max` frames, round robin over the mbufs; returns how many.
    fn inject(&mut self, max: usize) -> usize {
        // SAFETY: a live ring.
        let room = unsafe { dpdk_sys::rte_ring_free_count(self.ring.as_ptr()) } as usize;
        let mut total = 0;
        let want = max.min(room);
        while total < want {
            let n = (want - total).min(BURST);
            let mut ptrs = [std::ptr::null_mut::<std::ffi::c_void>(); BURST];
            for p in ptrs.iter_mut().take(n) {
                let i = self.next;
                self.next = (self.next + 1) % self.mbufs.len();
                *p = self.take(i).cast();
            }
            // SAFETY: `ptrs` holds n valid mbuf pointers; the ring is single-producer and only
            // this thread enqueues; it had room for them (only the consumer frees room).
            let done = unsafe {
                dpdk_sys::rte_ring_enqueue_burst(
                    self.ring.as_ptr(),
                    ptrs.as_ptr(),
                    n as u32,
                    std::ptr::null_mut(),
                )
            } as usize;
            total += done;
            if done < n {
                // Never expected: give back the references not handed out.
                for p in &ptrs[done..n] {
                    if let Some(i) = self.mbufs.iter().position(|m| m.as_ptr().cast() == *p) {
                        self.credit[i] += 1;
                    }
                }
                break;
            }
        }
        self.injected += total as u64;
        total
    }

    /// Enqueues one frame of mbuf `i`.
    fn inject_one(&mut self, i: usize) -> bool {
        let m = self.take(i);
        // SAFETY: as in `inject`, one pointer.
        let ok = unsafe { dpdk_sys::rte_ring_enqueue(self.ring.as_ptr(), m.cast()) } == 0;
        if !ok {
            self.credit[i] += 1;
        }
        ok
    }

    /// Gives the mbufs back to their pool; call only once nothing injected is still in flight.
    fn release(self) {
        for (m, c) in self.mbufs.iter().zip(&self.credit) {
            // SAFETY: every reference handed out was freed by the receiver (the caller drained
            // the ring and the port), so the count is ours: 1 + credit. Drop the credit, then
            // free our own reference, which returns the mbuf to its pool.
            unsafe {
                dpdk_sys::rte_mbuf_refcnt_update(m.as_ptr(), -(*c as i16));
                dpdk_sys::rte_pktmbuf_free(m.as_ptr());
            }
        }
    }
}

/// The ring a `net_ring` vdev named `name` receives from (queue 0).
fn vdev_ring(name: &str) -> Res<NonNull<rte_ring>> {
    let ring_name = CString::new(format!("ETH_RXTX0_{name}")).ctx("ring name")?;
    // SAFETY: a valid C string; returns NULL if there is no such ring.
    let r = unsafe { dpdk_sys::rte_ring_lookup(ring_name.as_ptr()) };
    NonNull::new(r).ok_or_else(|| format!("no ring {ring_name:?} behind {name}"))
}

/// What the generator/app thread of a receive run counted.
#[derive(Debug, Clone, Copy, Default)]
struct AppCounts {
    popped: u64,
}

/// The far end and the apps, on CPU 1: keeps the wire ring full and drains every flow's
/// receive channel (pop + repost). Returns the wire and the ends.
fn wire_and_apps(
    mut wire: Wire,
    mut apps: Vec<AppEnds>,
    ctl: Arc<Ctl>,
) -> Res<(Wire, Vec<AppEnds>, AppCounts)> {
    pin(1);
    let mut pkts = Vec::with_capacity(BURST);
    let mut counts = AppCounts::default();
    let mut sum = 0u64;
    ctl.ready.store(true, Ordering::Release);
    while !ctl.stop.load(Ordering::Relaxed) {
        wire.inject(1024);
        for app in apps.iter_mut() {
            pkts.clear();
            if app.rx.pop_batch(&mut pkts, BURST).ctx("pop")? == 0 {
                continue;
            }
            for p in pkts.drain(..) {
                // The app looks at what it got (its UDP destination port).
                let b = app.rx.payload(&p);
                sum = sum.wrapping_add(u64::from(b.get(36).copied().unwrap_or(0)));
                app.rx.release(p).ctx("release")?;
                counts.popped += 1;
            }
            app.rx.post_free().ctx("post")?;
        }
    }
    std::hint::black_box(sum);
    Ok((wire, apps, counts))
}

fn delivered<P: Port>(dp: &Datapath<P>) -> (u64, u64) {
    dp.flow_stats(None)
        .map(|v| {
            v.iter().fold((0, 0), |(d, x), s| {
                (d + s.rx_packets, x + s.rx_dropped_no_buffer)
            })
        })
        .unwrap_or((0, 0))
}

/// Receive: what the apps' channels got, what the port handed over, what was dropped.
fn rx_window<P: Port>(dp: &mut Datapath<P>, clock: Clock, seconds: f64) -> Res<Window> {
    let (d0, x0) = delivered(dp);
    let p0 = dp.port().stats().rx_packets;
    let (wall, cpu, polls, idle, busy) = poll_window(dp, clock, seconds)?;
    let (d1, x1) = delivered(dp);
    Ok(Window {
        packets: d1 - d0,
        wall,
        cpu,
        port_rx: dp.port().stats().rx_packets - p0,
        dropped: x1 - x0,
        polls,
        idle_polls: idle,
        busy_cycles: busy,
    })
}

/// testpmd's rxonly forwarding loop: receive a burst, free it.
fn rxonly_window(port_id: u16, seconds: f64) -> Res<Window> {
    let mut bufs = [std::ptr::null_mut::<rte_mbuf>(); BURST];
    let mut burst = || {
        // SAFETY: a started port with queue 0; `bufs` has room for BURST pointers.
        let n = unsafe { dpdk_sys::rte_eth_rx_burst(port_id, 0, bufs.as_mut_ptr(), BURST as u16) };
        if n > 0 {
            // SAFETY: the PMD handed us `n` mbufs, which we own and free once.
            unsafe { dpdk_sys::rte_pktmbuf_free_bulk(bufs.as_mut_ptr(), u32::from(n)) };
        }
        u64::from(n)
    };
    let warm = Instant::now() + WARMUP;
    while Instant::now() < warm {
        burst();
    }
    interrupted()?;
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let (mut packets, mut polls, mut idle, mut busy) = (0, 0, 0, 0);
    while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        let b = rdtsc();
        let n = burst();
        let dt = rdtsc().wrapping_sub(b);
        packets += n;
        polls += 1;
        if n == 0 {
            idle += 1;
        } else if dt < BUSY_POLL_MAX_CYCLES {
            busy += dt;
        }
    }
    interrupted()?;
    let wall = t0.elapsed();
    let cpu = thread_cpu() - c0;
    // Leave the ring empty for whoever comes next.
    let quiet = Instant::now() + Duration::from_millis(50);
    while Instant::now() < quiet {
        burst();
    }
    Ok(Window {
        packets,
        wall,
        cpu,
        port_rx: packets,
        dropped: 0,
        polls,
        idle_polls: idle,
        busy_cycles: busy,
    })
}

#[derive(Debug, Clone, Default)]
struct RxRow {
    flows: usize,
    nemflow: Vec<Window>,
    anchor: Vec<Window>,
}

/// Runs `measure` on this thread while the generator/app thread runs; returns both results.
fn with_wire<T>(
    wire: Wire,
    apps: Vec<AppEnds>,
    measure: impl FnOnce() -> Res<T>,
) -> Res<(T, Wire, Vec<AppEnds>)> {
    let ctl = Arc::new(Ctl::default());
    let stop = StopOnDrop(Arc::clone(&ctl));
    let worker = Arc::clone(&ctl);
    let mut handle = Some(
        std::thread::Builder::new()
            .name("wire-apps".into())
            .spawn(move || wire_and_apps(wire, apps, worker))
            .ctx("spawn")?,
    );
    wait_ready(&ctl, &mut handle)?;
    let r = measure();
    drop(stop);
    let (wire, apps, _counts) = join(handle)?;
    Ok((r?, wire, apps))
}

fn rx_part<'e>(
    dp: &mut Datapath<EthPort<'e>>,
    ring: NonNull<rte_ring>,
    pool: &Mempool<'e>,
    args: &Args,
    clock: Clock,
) -> Res<Vec<RxRow>> {
    let port_id = dp.port().id();
    let mut rows = Vec::new();
    for &flows in &args.rx_flows {
        let mut apps = install(dp, flows, 16, slots_for(flows), clock)?;
        let frames: Vec<Vec<u8>> = (0..flows).map(|i| rx_frame(i, RX_LEN)).collect();
        let mut wire = Some(Wire::new(pool, ring, &frames)?);
        let mut row = RxRow {
            flows,
            ..RxRow::default()
        };
        let result = (|| -> Res<()> {
            for run in 0..args.runs {
                let (w, wi, ap) =
                    with_wire(wire.take().ok_or("wire lost")?, apps.split_off(0), || {
                        rx_window(dp, clock, args.seconds)
                    })?;
                wire = Some(wi);
                apps = ap;
                drain(dp, clock);
                let (a, wi, ap) =
                    with_wire(wire.take().ok_or("wire lost")?, apps.split_off(0), || {
                        rxonly_window(port_id, args.seconds)
                    })?;
                wire = Some(wi);
                apps = ap;
                drain(dp, clock);
                eprintln!(
                    "  rx {flows:>4} flows run {run}: nemflow {:.3} Mpps delivered ({:.3} per core, idle polls {:.0} %, {:.0} cycles/frame busy, port {:.3} Mpps, {} dropped), rxonly {:.3} Mpps ({:.3} per core, idle polls {:.0} %, {:.0} cycles/frame busy)  [load {}]",
                    w.mpps(),
                    w.mpps_per_core(),
                    100.0 * w.idle_share(),
                    w.busy_cycles_per_frame(),
                    w.port_rx as f64 / w.wall.as_secs_f64() / 1e6,
                    w.dropped,
                    a.mpps(),
                    a.mpps_per_core(),
                    100.0 * a.idle_share(),
                    a.busy_cycles_per_frame(),
                    load_average()
                );
                row.nemflow.push(w);
                row.anchor.push(a);
            }
            Ok(())
        })();
        drain(dp, clock);
        remove_all(dp, flows);
        if let Some(w) = wire.take() {
            w.release();
        }
        result?;
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Receive latency

/// Where the latency app takes its frames from.
enum LatApp {
    /// The flows' receive channels.
    Nemflow(Vec<AppEnds>),
    /// An rte_ring the forwarding loop fills with mbufs.
    Ring(NonNull<rte_ring>),
}

// SAFETY: the ring is SP/SC with this thread the only consumer, and lives until EAL clean-up.
unsafe impl Send for LatApp {}

/// Sends one frame at a time to flow `s % flows` and busy-polls for it; the histogram of
/// enqueue → pop, ns.
fn latency_app(
    mut wire: Wire,
    mut app: LatApp,
    samples: u64,
    tsc_hz: u64,
    ctl: Arc<Ctl>,
) -> Res<(Wire, LatApp, Histogram<u64>)> {
    pin(1);
    let flows = wire.mbufs.len();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ctx("histogram")?;
    ctl.ready.store(true, Ordering::Release);
    for s in 0..samples {
        if ctl.stop.load(Ordering::Relaxed) {
            break;
        }
        let f = (s % flows as u64) as usize;
        // SAFETY: reads the TSC.
        let t0 = unsafe { dpdk_sys::rte_rdtsc() };
        if !wire.inject_one(f) {
            return Err("wire ring full".into());
        }
        let t1 = loop {
            match &mut app {
                LatApp::Nemflow(apps) => {
                    if let Some(p) = apps[f].rx.pop().ctx("pop")? {
                        // SAFETY: reads the TSC.
                        let t = unsafe { dpdk_sys::rte_rdtsc() };
                        let len = apps[f].rx.payload(&p).len();
                        apps[f].rx.release(p).ctx("release")?;
                        apps[f].rx.post_free().ctx("post")?;
                        if len != RX_LEN {
                            return Err(format!("flow {f} got a {len}-byte frame"));
                        }
                        break t;
                    }
                }
                LatApp::Ring(r) => {
                    let mut m = std::ptr::null_mut::<std::ffi::c_void>();
                    // SAFETY: a live SP/SC ring of which this thread is the only consumer.
                    if unsafe { dpdk_sys::rte_ring_dequeue(r.as_ptr(), &mut m) } == 0 {
                        // SAFETY: reads the TSC.
                        let t = unsafe { dpdk_sys::rte_rdtsc() };
                        let m = m.cast::<rte_mbuf>();
                        // SAFETY: the forwarding loop handed us this mbuf; we read its length
                        // and free it once.
                        let len = unsafe {
                            let len = usize::from((*m).data_len);
                            dpdk_sys::rte_pktmbuf_free(m);
                            len
                        };
                        if len != RX_LEN {
                            return Err(format!("got a {len}-byte frame"));
                        }
                        break t;
                    }
                }
            }
            if ctl.stop.load(Ordering::Relaxed) {
                return Err("stopped while waiting for a frame".into());
            }
            std::hint::spin_loop();
        };
        let ns = (t1.wrapping_sub(t0) as u128 * 1_000_000_000 / u128::from(tsc_hz.max(1))) as u64;
        h.record(ns.max(1)).ctx("record")?;
        // A short gap, so each frame meets an idle data path.
        // SAFETY: reads the TSC.
        let gap_end = unsafe { dpdk_sys::rte_rdtsc() } + tsc_hz / 500_000;
        // SAFETY: reads the TSC.
        while unsafe { dpdk_sys::rte_rdtsc() } < gap_end {
            std::hint::spin_loop();
        }
    }
    ctl.ready.store(false, Ordering::Release);
    Ok((wire, app, h))
}

/// Runs `poll` on this thread until the latency app is done.
fn with_latency_app(
    wire: Wire,
    app: LatApp,
    samples: u64,
    tsc_hz: u64,
    mut poll: impl FnMut(),
) -> Res<(Wire, LatApp, Histogram<u64>)> {
    let ctl = Arc::new(Ctl::default());
    let stop = StopOnDrop(Arc::clone(&ctl));
    let worker = Arc::clone(&ctl);
    let mut handle = Some(
        std::thread::Builder::new()
            .name("lat-app".into())
            .spawn(move || latency_app(wire, app, samples, tsc_hz, worker))
            .ctx("spawn")?,
    );
    wait_ready(&ctl, &mut handle)?;
    let mut i = 0u32;
    while !handle.as_ref().is_some_and(JoinHandle::is_finished) {
        poll();
        i = i.wrapping_add(1);
        if i.is_multiple_of(1024) && INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
    }
    drop(stop);
    join(handle)
}

#[derive(Debug, Clone, Default)]
struct LatRow {
    flows: usize,
    /// p50, p99, p99.9 per run, ns.
    nemflow: Vec<[u64; 3]>,
    anchor: Vec<[u64; 3]>,
}

fn quantiles(h: &Histogram<u64>) -> [u64; 3] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ]
}

fn latency_part<'e>(
    dp: &mut Datapath<EthPort<'e>>,
    ring: NonNull<rte_ring>,
    pool: &Mempool<'e>,
    args: &Args,
    clock: Clock,
    tsc_hz: u64,
) -> Res<Vec<LatRow>> {
    let port_id = dp.port().id();
    // SAFETY: a valid C name; SP/SC ring of 1024 pointers on any socket; NULL on failure.
    let app_ring =
        unsafe { dpdk_sys::rte_ring_create(c"nfb-lat-app".as_ptr(), 1024, -1, RING_SP_SC) };
    let app_ring = NonNull::new(app_ring).ok_or("rte_ring_create failed")?;
    let mut rows = Vec::new();
    let result = (|| -> Res<()> {
        for &flows in &args.rx_flows {
            let apps = install(dp, flows, 16, 64, clock)?;
            let frames: Vec<Vec<u8>> = (0..flows).map(|i| rx_frame(i, RX_LEN)).collect();
            let mut wire = Some(Wire::new(pool, ring, &frames)?);
            let mut app = Some(LatApp::Nemflow(apps));
            let mut row = LatRow {
                flows,
                ..LatRow::default()
            };
            let r = (|| -> Res<()> {
                for run in 0..args.runs {
                    let (w, a, h) = with_latency_app(
                        wire.take().ok_or("wire lost")?,
                        app.take().ok_or("apps lost")?,
                        args.lat_samples,
                        tsc_hz,
                        || {
                            dp.poll(clock.ns());
                        },
                    )?;
                    wire = Some(w);
                    app = Some(a);
                    let mine = quantiles(&h);
                    let mut bufs = [std::ptr::null_mut::<rte_mbuf>(); BURST];
                    let (w, ra, h) = with_latency_app(
                        wire.take().ok_or("wire lost")?,
                        LatApp::Ring(app_ring),
                        args.lat_samples,
                        tsc_hz,
                        || {
                            // SAFETY: started port, queue 0, room for BURST pointers.
                            let n = unsafe {
                                dpdk_sys::rte_eth_rx_burst(
                                    port_id,
                                    0,
                                    bufs.as_mut_ptr(),
                                    BURST as u16,
                                )
                            };
                            if n > 0 {
                                // SAFETY: n mbufs we own; the app ring is SP/SC with this
                                // thread its only producer; it has room (one frame in flight).
                                let done = unsafe {
                                    dpdk_sys::rte_ring_enqueue_burst(
                                        app_ring.as_ptr(),
                                        bufs.as_ptr().cast(),
                                        u32::from(n),
                                        std::ptr::null_mut(),
                                    )
                                };
                                if done < u32::from(n) {
                                    // SAFETY: the mbufs not enqueued are still ours.
                                    unsafe {
                                        dpdk_sys::rte_pktmbuf_free_bulk(
                                            bufs.as_mut_ptr().add(done as usize),
                                            u32::from(n) - done,
                                        )
                                    };
                                }
                            }
                        },
                    )?;
                    wire = Some(w);
                    drop(ra);
                    let anchor = quantiles(&h);
                    eprintln!(
                        "  latency {flows:>4} flows run {run}: nemflow p50 {} p99 {} p99.9 {} ns; rte_ring hand-off p50 {} p99 {} p99.9 {} ns  [load {}]",
                        mine[0], mine[1], mine[2], anchor[0], anchor[1], anchor[2], load_average()
                    );
                    row.nemflow.push(mine);
                    row.anchor.push(anchor);
                }
                Ok(())
            })();
            drain(dp, clock);
            remove_all(dp, flows);
            if let Some(w) = wire.take() {
                w.release();
            }
            r?;
            rows.push(row);
        }
        Ok(())
    })();
    // SAFETY: created above; both users are done with it.
    unsafe { dpdk_sys::rte_ring_free(app_ring.as_ptr()) };
    result.map(|()| rows)
}

// ---------------------------------------------------------------------------------------------
// Stages

/// Cycles per frame of each stage.
#[derive(Debug, Clone, Copy, Default)]
struct Stages {
    classify: f64,
    check: f64,
    copy: f64,
    schedule: f64,
    ring: f64,
    /// mbuf alloc + tx burst (transmit), rx burst + free (receive).
    port: f64,
}

impl Stages {
    fn sum(&self) -> f64 {
        self.classify + self.check + self.copy + self.schedule + self.ring + self.port
    }
}

fn rdtsc() -> u64 {
    // SAFETY: reads the TSC; no memory effects.
    unsafe { dpdk_sys::rte_rdtsc() }
}

/// Transmit stages with `flows` flows of `len`-byte frames, on `port` (net_null): each batch
/// does what `transmit_one` does for 32 frames, stage by stage, each stage timed.
fn tx_stages<'e>(port: &mut EthPort<'e>, flows: usize, len: usize, batches: usize) -> Res<Stages> {
    let slots = tx_slots_for(flows);
    let tx_spec = spec(slots);
    let mut apps = Vec::with_capacity(flows);
    let mut cons = Vec::with_capacity(flows);
    for i in 0..flows {
        let (mut app, mut fds) = flow_channels(&tx_spec, &spec(16)).ctx("channels")?;
        fds.truncate(CHANNEL_FDS);
        cons.push(
            tmm::Consumer::attach(&tx_spec, ChannelFds::from_vec(fds).ctx("fds")?).ctx("attach")?,
        );
        let frame = tx_frame(i, len);
        let mut held = Vec::new();
        while let Some(e) = app.tx.alloc(len).ctx("alloc")? {
            app.tx.buf_mut(e).ctx("buffer")?.copy_from_slice(&frame);
            held.push(IoRec::single(e, 0));
        }
        app.tx.push_batch(&held).ctx("push")?;
        apps.push(app);
    }
    let templates: Vec<Template> = (0..flows).map(flow_template).collect();
    let mut sched = Scheduler::new(MAX_LINK_RATE_BPS, 20_000).ctx("scheduler")?;
    sched.set_lookahead_ns(LOOKAHEAD_NS);
    for i in 0..flows {
        sched
            .add_flow(i as u32, to_sched(Qos::BEST_EFFORT), 0)
            .ctx("add flow")?;
        sched.set_backlogged(i as u32, true, 0).ctx("backlog")?;
    }
    let clock = Instant::now();
    let mut cyc = [0u64; 7];
    let mut frames = 0u64;
    let mut ids = [0u32; BURST];
    let mut recs = [IoRec::default(); BURST];
    let mut mbufs: Vec<Mbuf<'e>> = Vec::with_capacity(BURST);
    for _ in 0..batches {
        let now = clock.elapsed().as_nanos() as u64;
        let t0 = rdtsc();
        for id in ids.iter_mut() {
            match sched.pick(now) {
                Pick::Send(i) => {
                    *id = i;
                    let _ = sched.charge(i, len.max(60) as u32, now);
                }
                other => return Err(format!("scheduler: {other:?}")),
            }
        }
        let t1 = rdtsc();
        for (rec, &id) in recs.iter_mut().zip(&ids) {
            *rec = cons[id as usize].pop().ctx("pop")?.ok_or("channel empty")?;
        }
        let t2 = rdtsc();
        for _ in 0..BURST {
            mbufs.push(port.alloc(len).ok_or("no mbuf")?);
        }
        let t3 = rdtsc();
        for ((m, rec), &id) in mbufs.iter_mut().zip(&recs).zip(&ids) {
            let n = cons[id as usize].copy_out(rec, m.bytes_mut()).ctx("copy")?;
            std::hint::black_box(n);
        }
        let t4 = rdtsc();
        for (m, &id) in mbufs.iter().zip(&ids) {
            template::check(&templates[id as usize], m.bytes(), MAX_FRAME)
                .map_err(|v| format!("template: {v:?}"))?;
        }
        let t5 = rdtsc();
        for (rec, &id) in recs.iter().zip(&ids) {
            cons[id as usize].release(*rec).ctx("release")?;
        }
        let t6 = rdtsc();
        let sent = port.send(&mut mbufs);
        let t7 = rdtsc();
        if sent != BURST {
            return Err(format!("net_null took {sent} of {BURST}"));
        }
        for (k, (a, b)) in [
            (t0, t1),
            (t1, t2),
            (t2, t3),
            (t3, t4),
            (t4, t5),
            (t5, t6),
            (t6, t7),
        ]
        .into_iter()
        .enumerate()
        {
            cyc[k] += b.wrapping_sub(a);
        }
        frames += BURST as u64;
        // The apps put the buffers back (untimed).
        let mut seen = ids;
        seen.sort_unstable();
        let mut last = u32::MAX;
        for &id in &seen {
            if id == last {
                continue;
            }
            last = id;
            let app = &mut apps[id as usize];
            app.tx.reclaim().ctx("reclaim")?;
            let mut back = Vec::new();
            while let Some(e) = app.tx.alloc(len).ctx("alloc")? {
                back.push(IoRec::single(e, 0));
            }
            app.tx.push_batch(&back).ctx("push")?;
        }
    }
    let per = |c: u64| c as f64 / frames as f64;
    Ok(Stages {
        classify: 0.0,
        schedule: per(cyc[0]),
        ring: per(cyc[1] + cyc[5]),
        port: per(cyc[2] + cyc[6]),
        copy: per(cyc[3]),
        check: per(cyc[4]),
    })
}

/// Receive stages with `flows` flows: rx burst from a net_ring port fed (untimed) from the
/// same thread, classify (parse + table lookup), take an empty buffer, copy in, push, free.
fn rx_stages<'e>(
    port: &mut EthPort<'e>,
    ring: NonNull<rte_ring>,
    pool: &Mempool<'e>,
    flows: usize,
    batches: usize,
) -> Res<Stages> {
    let slots = slots_for(flows);
    let rx_spec = spec(slots);
    let mut apps = Vec::with_capacity(flows);
    let mut prods = Vec::with_capacity(flows);
    let mut table = FlowTable::new(Ipv4Addr::new(198, 18, 255, 255));
    for i in 0..flows {
        let (app, mut fds) = flow_channels(&spec(16), &rx_spec).ctx("channels")?;
        let rx_fds = fds.split_off(CHANNEL_FDS);
        prods.push(
            rmm::Producer::attach(&rx_spec, ChannelFds::from_vec(rx_fds).ctx("fds")?)
                .ctx("attach")?,
        );
        table.insert(&filter(i), i as u32).ctx("filter")?;
        apps.push(app);
    }
    let frames: Vec<Vec<u8>> = (0..flows).map(|i| rx_frame(i, RX_LEN)).collect();
    let mut wire = Wire::new(pool, ring, &frames)?;
    let clock = Instant::now();
    let mut cyc = [0u64; 6];
    let mut count = 0u64;
    let mut rx: Vec<Mbuf<'e>> = Vec::with_capacity(BURST);
    let mut slots_of = [0u32; BURST];
    let mut recs = [IoRec::default(); BURST];
    let mut pkts = Vec::with_capacity(BURST);
    let result = (|| -> Res<()> {
        for _ in 0..batches {
            if wire.inject(BURST) != BURST {
                return Err("wire ring full".into());
            }
            let now = clock.elapsed().as_nanos() as u64;
            let t0 = rdtsc();
            let n = port.recv(&mut rx, BURST);
            let t1 = rdtsc();
            if n != BURST {
                return Err(format!("net_ring gave {n} of {BURST}"));
            }
            for (s, m) in slots_of.iter_mut().zip(&rx) {
                let parsed = classify::parse(m.bytes(), MAX_FRAME)
                    .map_err(|e| format!("classify: {e:?}"))?;
                *s = match table.lookup(&parsed, now) {
                    Dest::One(s) => s,
                    other => return Err(format!("lookup: {other:?}")),
                };
            }
            let t2 = rdtsc();
            for (rec, &s) in recs.iter_mut().zip(&slots_of) {
                *rec = prods[s as usize]
                    .take_empty()
                    .ctx("take")?
                    .ok_or("no empty buffer")?;
            }
            let t3 = rdtsc();
            for ((rec, &s), m) in recs.iter().zip(&slots_of).zip(&rx) {
                prods[s as usize].copy_in(rec, m.bytes()).ctx("copy")?;
            }
            let t4 = rdtsc();
            for (rec, &s) in recs.iter().zip(&slots_of) {
                prods[s as usize].push_full(*rec, RX_LEN).ctx("push")?;
            }
            let t5 = rdtsc();
            rx.clear();
            let t6 = rdtsc();
            for (k, (a, b)) in [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6)]
                .into_iter()
                .enumerate()
            {
                cyc[k] += b.wrapping_sub(a);
            }
            count += BURST as u64;
            // The apps take their frames and post the buffers again (untimed).
            let mut seen = slots_of;
            seen.sort_unstable();
            let mut last = u32::MAX;
            for &s in &seen {
                if s == last {
                    continue;
                }
                last = s;
                let app = &mut apps[s as usize];
                pkts.clear();
                app.rx.pop_batch(&mut pkts, usize::MAX).ctx("pop")?;
                for p in pkts.drain(..) {
                    app.rx.release(p).ctx("release")?;
                }
                app.rx.post_free().ctx("post")?;
            }
        }
        Ok(())
    })();
    rx.clear();
    wire.release();
    result?;
    let per = |c: u64| c as f64 / count as f64;
    Ok(Stages {
        classify: per(cyc[1]),
        check: 0.0,
        copy: per(cyc[3]),
        schedule: 0.0,
        ring: per(cyc[2] + cyc[4]),
        port: per(cyc[0] + cyc[5]),
    })
}

fn to_sched(q: Qos) -> nemflow_sched::Qos {
    nemflow_sched::Qos {
        period_ns: q.period_ns,
        slice_ns: q.slice_ns,
        extra: q.extra,
        latency_hint_ns: q.latency_hint_ns,
    }
}

#[derive(Debug, Clone)]
struct StageRow {
    dir: &'static str,
    flows: usize,
    len: usize,
    /// Medians per stage, cycles.
    stages: Stages,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_stages(all: &[Stages]) -> Stages {
    let m = |f: fn(&Stages) -> f64| median(&mut all.iter().map(f).collect::<Vec<_>>());
    Stages {
        classify: m(|s| s.classify),
        check: m(|s| s.check),
        copy: m(|s| s.copy),
        schedule: m(|s| s.schedule),
        ring: m(|s| s.ring),
        port: m(|s| s.port),
    }
}

fn stages_part<'e>(
    null_port: &mut EthPort<'e>,
    ring_port: &mut EthPort<'e>,
    ring: NonNull<rte_ring>,
    pool: &Mempool<'e>,
    args: &Args,
) -> Res<Vec<StageRow>> {
    let mut rows = Vec::new();
    for &flows in &args.tx_flows {
        for &len in &args.sizes {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                interrupted()?;
                runs.push(tx_stages(null_port, flows, len, args.stage_batches)?);
            }
            rows.push(StageRow {
                dir: "tx",
                flows,
                len,
                stages: median_stages(&runs),
            });
        }
    }
    for &flows in &args.rx_flows {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            interrupted()?;
            runs.push(rx_stages(ring_port, ring, pool, flows, args.stage_batches)?);
        }
        rows.push(StageRow {
            dir: "rx",
            flows,
            len: RX_LEN,
            stages: median_stages(&runs),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Report

fn med(ws: &[Window], f: impl Fn(&Window) -> f64) -> f64 {
    median(&mut ws.iter().map(f).collect::<Vec<_>>())
}

fn paired_ratio(a: &[Window], b: &[Window], f: impl Fn(&Window) -> f64) -> f64 {
    median(
        &mut a
            .iter()
            .zip(b)
            .map(|(x, y)| f(x) / f(y).max(1e-12))
            .collect::<Vec<_>>(),
    )
}

fn report(
    tx: &[TxRow],
    rx: &[RxRow],
    lat: &[LatRow],
    stages: &[StageRow],
    tsc_hz: u64,
    load: (&str, &str),
) {
    println!(
        "\nload average at start {} / end {}; medians of the runs; ratios are medians of the per-run ratios.",
        load.0, load.1
    );
    if !tx.is_empty() {
        println!("\n### Transmit: app channels → wire (Mpps)\n");
        println!("| vdev | flows | frame (B, no FCS) | nemflow | testpmd txonly | nemflow ÷ testpmd | nemflow per core | testpmd per core | per core ÷ | nemflow ns/frame (CPU) | nemflow CPU share |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in tx {
            println!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} | {:.0} | {:.0} % |",
                r.port,
                r.flows,
                r.len,
                med(&r.nemflow, Window::mpps),
                med(&r.testpmd, Window::mpps),
                paired_ratio(&r.nemflow, &r.testpmd, Window::mpps),
                med(&r.nemflow, Window::mpps_per_core),
                med(&r.testpmd, Window::mpps_per_core),
                paired_ratio(&r.nemflow, &r.testpmd, Window::mpps_per_core),
                med(&r.nemflow, |w| 1e3 / w.mpps_per_core()),
                100.0 * med(&r.nemflow, Window::cpu_share),
            );
        }
    }
    if !rx.is_empty() {
        println!("\n### Receive: wire (net_ring) → app channels, 60-byte frames (Mpps)\n");
        println!("| flows | nemflow delivered | dropped (no buffer) | nemflow per core | rxonly loop | rxonly per core | nemflow ÷ rxonly | per core ÷ | nemflow ns/frame (CPU) |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in rx {
            println!(
                "| {} | {:.3} | {:.2} % | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} |",
                r.flows,
                med(&r.nemflow, Window::mpps),
                100.0 * med(&r.nemflow, |w| w.dropped as f64 / w.port_rx.max(1) as f64),
                med(&r.nemflow, Window::mpps_per_core),
                med(&r.anchor, Window::mpps),
                med(&r.anchor, Window::mpps_per_core),
                paired_ratio(&r.nemflow, &r.anchor, Window::mpps),
                paired_ratio(&r.nemflow, &r.anchor, Window::mpps_per_core),
                med(&r.nemflow, |w| 1e3 / w.mpps_per_core()),
            );
        }
    }
    if !lat.is_empty() {
        println!(
            "\n### Receive latency: enqueue on the wire ring → app's pop, busy-polling (ns)\n"
        );
        println!("| flows | nemflow p50 | p99 | p99.9 | rte_ring hand-off p50 | p99 | p99.9 |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for r in lat {
            let q = |v: &[[u64; 3]], i: usize| {
                median(&mut v.iter().map(|x| x[i] as f64).collect::<Vec<_>>())
            };
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                r.flows,
                q(&r.nemflow, 0),
                q(&r.nemflow, 1),
                q(&r.nemflow, 2),
                q(&r.anchor, 0),
                q(&r.anchor, 1),
                q(&r.anchor, 2),
            );
        }
    }
    if !stages.is_empty() {
        let ns = |c: f64| c * 1e9 / tsc_hz as f64;
        println!(
            "\n### Stages, measured alone (cycles per frame at {:.2} GHz TSC; ns in brackets)\n",
            tsc_hz as f64 / 1e9
        );
        println!("| dir | flows | frame | classify | check | copy | schedule | ring | port (mbuf + PMD) | sum |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in stages {
            let s = &r.stages;
            let cell = |c: f64| {
                if c == 0.0 {
                    "–".to_string()
                } else {
                    format!("{c:.0} ({:.1})", ns(c))
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.dir,
                r.flows,
                r.len,
                cell(s.classify),
                cell(s.check),
                cell(s.copy),
                cell(s.schedule),
                cell(s.ring),
                cell(s.port),
                cell(s.sum()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn run(args: &Args) -> Res<()> {
    let pid = std::process::id();
    // What killed runs left (their testpmd children's too).
    nemflow_bench::remove_stale_dpdk_dirs("nfb-");
    let prefix = format!("nfb-drv-{pid}");
    let tap_iface = format!("nfbd{pid}");
    let want = |p: Part| args.parts.contains(&p);
    let load_start = load_average();
    eprintln!("load average {load_start}");

    // Declared before the EAL, dropped after it: the namespaces go after the taps they hold.
    let mut tap_peer: Option<TapPeer> = None;
    let mut testpmds: Vec<Testpmd> = Vec::new();
    let eal_args: Vec<String> = [
        "nemflow-bench-driver",
        "-l",
        "0",
        "--no-huge",
        "-m",
        "1024",
        "--no-pci",
        "--no-telemetry",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_null0,no-rx=1",
        "--vdev",
        "net_null1,no-rx=1",
        "--vdev",
        &format!("net_tap0,iface={tap_iface}"),
        "--vdev",
        "net_ring0",
        "--vdev",
        "net_ring1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&eal_args).ctx("EAL")?;
    let result = (|| -> Res<()> {
        let tsc_hz = eal.tsc_hz();
        let pool = Mempool::new(&eal, "nfb_pool", 32767, 2048).ctx("mempool")?;
        let conf = PortConf::default();
        let clock = Clock(Instant::now());
        let mut tx_rows = Vec::new();
        let mut rx_rows = Vec::new();
        let mut lat_rows = Vec::new();
        let mut stage_rows = Vec::new();

        if want(Part::Stages) {
            eprintln!("stages …");
            let mut null1 = EthPort::open(&eal, "net_null1", &conf, &pool).ctx("net_null1")?;
            let mut ring1 = EthPort::open(&eal, "net_ring1", &conf, &pool).ctx("net_ring1")?;
            let ring = vdev_ring("net_ring1")?;
            stage_rows = stages_part(&mut null1, &mut ring1, ring, &pool, args)?;
        }
        if want(Part::Null) {
            eprintln!("transmit on net_null …");
            let mut tp = Testpmd::spawn(&args.testpmd, "net_null0,no-rx=1", "null")?;
            let port = EthPort::open(&eal, "net_null0", &conf, &pool).ctx("net_null0")?;
            let mut dp = datapath(port, "net_null0")?;
            let r = tx_part("net_null", &mut dp, &mut tp, args, clock);
            testpmds.push(tp);
            tx_rows.extend(r?);
        }
        if want(Part::Tap) {
            eprintln!("transmit on net_tap …");
            let tp_iface = format!("nfbt{pid}");
            let mut tp =
                Testpmd::spawn(&args.testpmd, &format!("net_tap0,iface={tp_iface}"), "tap")?;
            let peer_ip = "10.77.91.2/24".parse().ctx("address")?;
            tp.peer = Some(
                TapPeer::setup(&format!("nfbt-{pid}"), &tp_iface, peer_ip)
                    .ctx("testpmd's tap peer")?,
            );
            let port = EthPort::open(&eal, "net_tap0", &conf, &pool).ctx("net_tap0")?;
            let peer_ip = "10.77.90.2/24".parse().ctx("address")?;
            tap_peer =
                Some(TapPeer::setup(&format!("nfbd-{pid}"), &tap_iface, peer_ip).ctx("tap peer")?);
            let mut dp = datapath(port, "net_tap0")?;
            let r = tx_part("net_tap", &mut dp, &mut tp, args, clock);
            testpmds.push(tp);
            tx_rows.extend(r?);
        }
        if want(Part::Rx) || want(Part::Latency) {
            let port = EthPort::open(&eal, "net_ring0", &conf, &pool).ctx("net_ring0")?;
            let ring = vdev_ring("net_ring0")?;
            let mut dp = datapath(port, "net_ring0")?;
            if want(Part::Rx) {
                eprintln!("receive on net_ring …");
                rx_rows = rx_part(&mut dp, ring, &pool, args, clock)?;
            }
            if want(Part::Latency) {
                eprintln!("receive latency on net_ring …");
                lat_rows = latency_part(&mut dp, ring, &pool, args, clock, tsc_hz)?;
            }
        }
        report(
            &tx_rows,
            &rx_rows,
            &lat_rows,
            &stage_rows,
            tsc_hz,
            (&load_start, &load_average()),
        );
        Ok(())
    })();
    // testpmd first (its taps close), then our EAL (our tap closes, runtime directory removed),
    // then the namespaces.
    drop(testpmds);
    drop(eal);
    drop(tap_peer);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    result
}

fn main() {
    let args = Args::parse();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    raise_fd_limit();
    if let Err(e) = run(&args) {
        eprintln!("driver bench: {e}");
        std::process::exit(1);
    }
}
