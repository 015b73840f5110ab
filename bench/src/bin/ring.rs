//! Rbuf channel against DPDK's `rte_ring`, side by side in one run, across two processes pinned
//! to two cores.
//!
//! Both are driven by the same harness through the same "channel" protocol: the producer takes
//! a buffer, hands an entry over on a *full* ring, the consumer takes it and hands it back on an
//! *empty* ring. For nemflow that is a TMM channel (`tmm::Producer` alloc_batch/push/reclaim,
//! `tmm::Consumer` pop/validate/release: one-extent iorecs, one 16-byte slot each). For
//! `rte_ring` it is two SP/SC rings of 16-byte elements (`rte_ring_{enqueue,dequeue}_burst_elem`),
//! initialised with `rte_ring_init` in a shared memfd that the child maps too. The child process
//! (this binary re-executed with `--child`) is the producer on CPU 1; the parent is the consumer
//! on CPU 0 and keeps the time.
//!
//! `ring [--iters N] [--runs R] [--lat-samples S] [--only rbuf32|latency]`: prints Markdown
//! tables of medians (`--help` says more).

use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use nemflow_rbuf::{create, fdpass, tmm, ChannelFds, ChannelSpec, Extent, IoRec};
use rustix::mm::{MapFlags, ProtFlags};

/// `RING_F_SP_ENQ | RING_F_SC_DEQ` from `rte_ring.h` (macros, so not in the bindings).
const RING_SP_SC: u32 = 0x0001 | 0x0002;
/// Slots per ring (both implementations).
const SLOTS: u32 = 1024;
/// Largest `rte_ring` element the shared rings are sized for (the anchor uses 16; 32 is shown too,
/// the size of a two-slot rbuf record, i.e. of every rbuf iorec before slots became 16 bytes).
const MAX_ELEM_BYTES: u32 = 32;

fn spec() -> ChannelSpec {
    ChannelSpec {
        data_bytes: 4 << 20,
        slots: SLOTS,
        max_packet_bytes: 64,
        hugetlb: false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Imp {
    Rbuf,
    RteRing,
    /// `rte_ring` with 32-byte elements: the bytes of a two-slot rbuf record.
    RteRing32,
}

#[derive(Clone, Copy, Debug)]
enum Work {
    /// Move `n` entries in batches of `batch`, busy-polling.
    Throughput { n: u64, batch: usize },
    /// Send `n` time-stamped entries one at a time, `gap_ns` apart; blocking = consumer sleeps.
    Latency { n: u64, gap_ns: u64, blocking: bool },
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("warning: cannot pin to CPU {cpu}: {e}");
    }
}

/// Two SP/SC `rte_ring`s (full, empty) in one shared memfd.
struct RtePair {
    map: NonNull<u8>,
    len: usize,
    ring_bytes: usize,
}

impl RtePair {
    fn memsize() -> usize {
        // SAFETY: a pure size computation on plain integers.
        let n = unsafe { dpdk_sys::rte_ring_get_memsize_elem(MAX_ELEM_BYTES, SLOTS) };
        usize::try_from(n).unwrap_or(0).div_ceil(4096) * 4096
    }

    fn create() -> Result<(Self, OwnedFd), String> {
        let ring_bytes = Self::memsize();
        if ring_bytes == 0 {
            return Err("rte_ring_get_memsize_elem failed".into());
        }
        let fd = rustix::fs::memfd_create("bench-rte-ring", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| e.to_string())?;
        rustix::fs::ftruncate(&fd, 2 * ring_bytes as u64).map_err(|e| e.to_string())?;
        let pair = Self::map(&fd, ring_bytes)?;
        for (i, name) in [c"bench-full", c"bench-empty"].iter().enumerate() {
            // SAFETY: `ring(i)` points to `ring_bytes` = rte_ring_get_memsize_elem(16, SLOTS)
            // bytes of zeroed, writable, cache-line aligned shared memory; `name` is a C string.
            let rc =
                unsafe { dpdk_sys::rte_ring_init(pair.ring(i), name.as_ptr(), SLOTS, RING_SP_SC) };
            if rc != 0 {
                return Err(format!("rte_ring_init: {rc}"));
            }
        }
        Ok((pair, fd))
    }

    fn map(fd: impl AsFd, ring_bytes: usize) -> Result<Self, String> {
        let len = 2 * ring_bytes;
        // SAFETY: a fresh shared mapping at a kernel-chosen address aliases nothing; the memfd is
        // `len` bytes long and only this harness holds it.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| e.to_string())?;
        let map = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(RtePair {
            map,
            len,
            ring_bytes,
        })
    }

    fn ring(&self, i: usize) -> *mut dpdk_sys::rte_ring {
        // SAFETY: `i` is 0 or 1 and the mapping holds two rings of `ring_bytes` each.
        unsafe { self.map.as_ptr().add(i * self.ring_bytes).cast() }
    }

    /// Enqueues up to `n` 16-byte elements from `elems`; returns how many.
    fn enqueue<const N: usize>(&self, i: usize, elems: &[[u64; N]]) -> usize {
        // SAFETY: the ring was initialised by `rte_ring_init` in memory sized for elements of up to
        // MAX_ELEM_BYTES (N * 8 ≤ 32; each run uses one size throughout) and this process is its
        // single producer; `elems` is valid for `elems.len()` elements of N * 8 bytes.
        unsafe {
            dpdk_sys::rte_ring_enqueue_burst_elem(
                self.ring(i),
                elems.as_ptr().cast(),
                (N * 8) as u32,
                elems.len() as u32,
                std::ptr::null_mut(),
            ) as usize
        }
    }

    /// Dequeues up to `out.len()` elements; returns how many.
    fn dequeue<const N: usize>(&self, i: usize, out: &mut [[u64; N]]) -> usize {
        // SAFETY: as in `enqueue`, this process is the single consumer; `out` is valid for writes
        // of `out.len()` 16-byte elements.
        unsafe {
            dpdk_sys::rte_ring_dequeue_burst_elem(
                self.ring(i),
                out.as_mut_ptr().cast(),
                (N * 8) as u32,
                out.len() as u32,
                std::ptr::null_mut(),
            ) as usize
        }
    }
}

impl Drop for RtePair {
    fn drop(&mut self) {
        // SAFETY: the mapping came from mmap with this length and is unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.len) };
    }
}

const FULL: usize = 0;
const EMPTY: usize = 1;

// ---------------------------------------------------------------------------------------------
// Child: the producer.

fn child(args: &[String]) -> Result<(), String> {
    let sock_name = args.first().ok_or("missing socket")?;
    let imp = match args.get(1).map(String::as_str) {
        Some("rbuf") => Imp::Rbuf,
        Some("rte32") => Imp::RteRing32,
        _ => Imp::RteRing,
    };
    let num = |i: usize| {
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(format!("bad arg {i}"))
    };
    let work = match args.get(2).map(String::as_str) {
        Some("tput") => Work::Throughput {
            n: num(3)?,
            batch: num(4)? as usize,
        },
        _ => Work::Latency {
            n: num(3)?,
            gap_ns: num(4)?,
            blocking: num(5)? != 0,
        },
    };
    pin(1);
    let addr = SocketAddr::from_abstract_name(sock_name.as_bytes()).map_err(|e| e.to_string())?;
    let sock = UnixStream::connect_addr(&addr).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 8];
    let (_, mut fds) = fdpass::recv_exact_fds(&sock, &mut buf, 5).map_err(|e| e.to_string())?;
    let rte_fd = fds.pop().ok_or("no rte fd")?;
    let channel = ChannelFds::from_vec(fds).map_err(|e| e.to_string())?;
    let rte = RtePair::map(&rte_fd, RtePair::memsize())?;
    let mut p = tmm::Producer::attach(&spec(), channel).map_err(|e| e.to_string())?;
    // Ready; wait for the go.
    fdpass::send_fds(&sock, b"r", &[]).map_err(|e| e.to_string())?;
    fdpass::recv_fds(&sock, &mut buf, 0).map_err(|e| e.to_string())?;
    match (imp, work) {
        (Imp::Rbuf, Work::Throughput { n, batch }) => rbuf_tput(&mut p, n, batch),
        (Imp::RteRing, Work::Throughput { n, batch }) => {
            rte_tput::<2>(&rte, n, batch);
            Ok(())
        }
        (Imp::RteRing32, Work::Throughput { n, batch }) => {
            rte_tput::<4>(&rte, n, batch);
            Ok(())
        }
        (Imp::Rbuf, Work::Latency { n, gap_ns, .. }) => rbuf_lat(&mut p, n, gap_ns),
        (Imp::RteRing | Imp::RteRing32, Work::Latency { n, gap_ns, .. }) => {
            rte_lat(&rte, n, gap_ns);
            Ok(())
        }
    }
}

fn rbuf_tput(p: &mut tmm::Producer, n: u64, batch: usize) -> Result<(), String> {
    let mut exts = vec![Extent::default(); batch];
    let mut ready = 0usize;
    let mut sent = 0u64;
    while sent < n {
        let want = batch.min((n - sent) as usize);
        if ready < want {
            ready += p
                .alloc_batch(64, &mut exts[ready..want])
                .map_err(|e| e.to_string())?;
        }
        let k = p
            .push_extents(&exts[..ready], 0)
            .map_err(|e| e.to_string())?;
        exts.copy_within(k..ready, 0);
        ready -= k;
        sent += k as u64;
        if k == 0 {
            std::hint::spin_loop();
        }
    }
    drain(p)
}

/// Reclaims until every buffer is back: the consumer only pops while it has room to return.
fn drain(p: &mut tmm::Producer) -> Result<(), String> {
    let t0 = Instant::now();
    while p.buffers().1 < p.buffers().0 {
        p.reclaim().map_err(|e| e.to_string())?;
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("buffers did not come back".into());
        }
        std::hint::spin_loop();
    }
    Ok(())
}

fn rte_tput<const N: usize>(rte: &RtePair, n: u64, batch: usize) {
    let mut elems = vec![[0u64; N]; batch];
    let mut ready = 0usize;
    let mut sent = 0u64;
    while sent < n {
        let want = batch.min((n - sent) as usize);
        if ready < want {
            ready += rte.dequeue(EMPTY, &mut elems[ready..want]);
        }
        let k = rte.enqueue(FULL, &elems[..ready]);
        elems.copy_within(k..ready, 0);
        ready -= k;
        sent += k as u64;
        if k == 0 {
            std::hint::spin_loop();
        }
    }
}

fn spin_until(t_ns: u64) {
    while now_ns() < t_ns {
        std::hint::spin_loop();
    }
}

fn rbuf_lat(p: &mut tmm::Producer, n: u64, gap_ns: u64) -> Result<(), String> {
    for _ in 0..n {
        let e = loop {
            if let Some(e) = p.alloc(8).map_err(|e| e.to_string())? {
                break e;
            }
        };
        let next = now_ns() + gap_ns;
        let t = now_ns();
        p.buf_mut(e)
            .map_err(|e| e.to_string())?
            .copy_from_slice(&t.to_ne_bytes());
        loop {
            match p.push(IoRec::single(e, 0)) {
                Ok(()) => break,
                Err(nemflow_rbuf::Error::Full) => std::hint::spin_loop(),
                Err(e) => return Err(e.to_string()),
            }
        }
        spin_until(next);
    }
    drain(p)
}

fn rte_lat(rte: &RtePair, n: u64, gap_ns: u64) {
    let mut tok = [[0u64; 2]; 1];
    for _ in 0..n {
        while rte.dequeue(EMPTY, &mut tok) == 0 {
            std::hint::spin_loop();
        }
        let next = now_ns() + gap_ns;
        tok[0][0] = now_ns();
        while rte.enqueue(FULL, &tok) == 0 {
            std::hint::spin_loop();
        }
        spin_until(next);
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: the consumer and the clock.

struct Case {
    child: Child,
    sock: UnixStream,
    rte: RtePair,
    drv: tmm::Consumer,
}

impl Drop for Case {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn start(imp: Imp, work: Work) -> Result<Case, String> {
    let s = |e: nemflow_rbuf::Error| e.to_string();
    let spec = spec();
    let fds = create(&spec).map_err(s)?;
    let drv = tmm::Consumer::attach(&spec, fds.with_read_only_data().map_err(s)?).map_err(s)?;
    let (rte, rte_fd) = RtePair::create()?;
    // Pre-fill the rte_ring "empty" ring with buffer tokens, as many as it holds.
    if imp == Imp::RteRing32 {
        let tokens: Vec<[u64; 4]> = (0..u64::from(SLOTS) - 1).map(|i| [i, 64, 0, 0]).collect();
        rte.enqueue(EMPTY, &tokens);
    } else {
        let tokens: Vec<[u64; 2]> = (0..u64::from(SLOTS) - 1).map(|i| [i, 64]).collect();
        rte.enqueue(EMPTY, &tokens);
    }
    let name = format!("nemflow-bench-ring-{}-{}", std::process::id(), now_ns());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--child").arg(&name).arg(match imp {
        Imp::Rbuf => "rbuf",
        Imp::RteRing => "rte",
        Imp::RteRing32 => "rte32",
    });
    match work {
        Work::Throughput { n, batch } => {
            cmd.args(["tput".to_string(), n.to_string(), batch.to_string()])
        }
        Work::Latency {
            n,
            gap_ns,
            blocking,
        } => cmd.args([
            "lat".to_string(),
            n.to_string(),
            gap_ns.to_string(),
            u8::from(blocking).to_string(),
        ]),
    };
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
    let mut all: Vec<_> = fds.as_fds().to_vec();
    all.push(rte_fd.as_fd());
    fdpass::send_fds(&sock, b"c", &all).map_err(s)?;
    let mut b = [0u8; 1];
    fdpass::recv_fds(&sock, &mut b, 0).map_err(s)?;
    Ok(Case {
        child,
        sock,
        rte,
        drv,
    })
}

fn go(c: &Case) -> Result<(), String> {
    fdpass::send_fds(&c.sock, b"g", &[])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Iorecs (entries) per second through the channel.
fn throughput(imp: Imp, n: u64, batch: usize) -> Result<f64, String> {
    let mut c = start(imp, Work::Throughput { n, batch })?;
    let mut recs = vec![IoRec::default(); batch];
    let mut elems = vec![[0u64; 2]; batch];
    let mut elems32 = vec![[0u64; 4]; batch];
    let mut got = 0u64;
    let mut polls = 0u32;
    let t0 = Instant::now();
    go(&c)?;
    while got < n {
        polls = polls.wrapping_add(1);
        let k = match imp {
            Imp::Rbuf => {
                let k = c.drv.pop_batch(&mut recs).map_err(|e| e.to_string())?;
                if k > 0 {
                    c.drv.release_batch(&recs[..k]).map_err(|e| e.to_string())?;
                }
                k
            }
            Imp::RteRing => {
                let k = c.rte.dequeue(FULL, &mut elems);
                let mut done = 0;
                while done < k {
                    done += c.rte.enqueue(EMPTY, &elems[done..k]);
                }
                k
            }
            Imp::RteRing32 => {
                let k = c.rte.dequeue(FULL, &mut elems32);
                let mut done = 0;
                while done < k {
                    done += c.rte.enqueue(EMPTY, &elems32[done..k]);
                }
                k
            }
        };
        got += k as u64;
        if k == 0 {
            std::hint::spin_loop();
        }
        if polls & ((1 << 20) - 1) == 0 && t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("{imp:?} batch {batch}: stalled at {got}/{n}"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(n as f64 / secs)
}

/// One-way latency histogram (ns).
fn latency(imp: Imp, n: u64, blocking: bool) -> Result<Histogram<u64>, String> {
    let gap_ns = if blocking { 50_000 } else { 4_000 };
    let mut c = start(
        imp,
        Work::Latency {
            n,
            gap_ns,
            blocking,
        },
    )?;
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut stamp = [0u8; 8];
    let mut tok = [[0u64; 2]; 1];
    go(&c)?;
    let t0 = Instant::now();
    for _ in 0..n {
        let sent = loop {
            match imp {
                Imp::Rbuf => {
                    if let Some(r) = c.drv.pop().map_err(|e| e.to_string())? {
                        let now = now_ns();
                        c.drv
                            .copy_extent_out(r.extents[0], &mut stamp)
                            .map_err(|e| e.to_string())?;
                        c.drv.release(r).map_err(|e| e.to_string())?;
                        break (u64::from_ne_bytes(stamp), now);
                    }
                    if blocking {
                        c.drv
                            .wait_ready(Duration::from_secs(5))
                            .map_err(|e| e.to_string())?;
                    }
                }
                Imp::RteRing | Imp::RteRing32 => {
                    if c.rte.dequeue(FULL, &mut tok) == 1 {
                        let now = now_ns();
                        let t = tok[0][0];
                        while c.rte.enqueue(EMPTY, &tok) == 0 {}
                        break (t, now);
                    }
                }
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err("latency run stalled".into());
            }
        };
        h.record(sent.1.saturating_sub(sent.0).max(1))
            .map_err(|e| e.to_string())?;
    }
    Ok(h)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn parent(args: &Args) -> Result<(), String> {
    pin(0);
    nemflow_bench::remove_stale_dpdk_dirs("bench-ring-");
    let prefix = format!("bench-ring-{}", std::process::id());
    let eal_args = [
        "nemflow-bench",
        "--no-huge",
        "-m",
        "256",
        "--file-prefix",
        &prefix,
        "--no-pci",
        "--no-telemetry",
    ];
    let cargs: Vec<std::ffi::CString> = eal_args
        .iter()
        .map(|a| std::ffi::CString::new(*a))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut argv: Vec<*mut std::ffi::c_char> =
        cargs.iter().map(|a| a.as_ptr().cast_mut()).collect();
    // SAFETY: argv holds `argc` valid NUL-terminated strings that outlive the call (EAL may
    // permute the pointer array, which we own and do not reuse).
    let rc = unsafe { dpdk_sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if rc < 0 {
        return Err(format!("rte_eal_init failed ({rc})"));
    }
    let result = measure(args);
    // SAFETY: EAL was initialised above and nothing DPDK-owned is alive any more.
    unsafe { dpdk_sys::rte_eal_cleanup() };
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    result
}

fn measure(args: &Args) -> Result<(), String> {
    let (iters, runs, lat_samples) = (args.iters, args.runs, args.lat_samples);
    if args.only == Some(Only::Rbuf32) {
        println!(
            "rbuf batch 32: {:.1} M iorecs/s",
            throughput(Imp::Rbuf, iters, 32)? / 1e6
        );
        return Ok(());
    }
    if args.only != Some(Only::Latency) {
        throughput_table(iters, runs)?;
    }
    latency_table(runs, lat_samples)
}

/// Throughput at batches 1, 8 and 32, all three rings in each run.
fn throughput_table(iters: u64, runs: usize) -> Result<(), String> {
    println!(
        "Cross-process, producer on CPU 1, consumer on CPU 0; {runs} runs, medians; rbuf wakes with membarrier: {}.\n",
        nemflow_rbuf::uses_membarrier()
    );
    println!("| batch | rte_ring 16 B (M entries/s) | rbuf (M iorecs/s) | rbuf / rte_ring (median of paired ratios) | rte_ring 32 B (M entries/s) | rbuf / rte_ring 32 B |");
    println!("|---|---|---|---|---|---|");
    for batch in [1usize, 8, 32] {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ra, mut rc) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let x = throughput(Imp::RteRing, iters, batch)? / 1e6;
            let y = throughput(Imp::Rbuf, iters, batch)? / 1e6;
            let z = throughput(Imp::RteRing32, iters, batch)? / 1e6;
            // Ratios are paired within a run: the machine's speed drifts between runs (shared
            // 2-vCPU host), the three measurements of one run are back to back.
            ra.push(y / x);
            rc.push(y / z);
            a.push(x);
            b.push(y);
            c.push(z);
        }
        eprintln!("batch {batch}: rte16 {a:.1?} rbuf {b:.1?} rte32 {c:.1?}");
        let (ma, mb, mc) = (median(&mut a), median(&mut b), median(&mut c));
        let (mra, mrc) = (median(&mut ra), median(&mut rc));
        println!("| {batch} | {ma:.1} | {mb:.1} | {mra:.2} | {mc:.1} | {mrc:.2} |");
    }
    Ok(())
}

/// One-way latency, busy-polling (both) and blocking (rbuf).
fn latency_table(runs: usize, lat_samples: u64) -> Result<(), String> {
    println!("\n| one-way latency (ns) | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|");
    let cases = [
        ("rte_ring, busy-poll", Imp::RteRing, false),
        ("rbuf, busy-poll", Imp::Rbuf, false),
        ("rbuf, blocking (eventfd wake-up)", Imp::Rbuf, true),
    ];
    for (label, imp, blocking) in cases {
        let n = if blocking {
            lat_samples / 10
        } else {
            lat_samples
        };
        let (mut p50, mut p99, mut p999) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let h = latency(imp, n, blocking)?;
            p50.push(h.value_at_quantile(0.5) as f64);
            p99.push(h.value_at_quantile(0.99) as f64);
            p999.push(h.value_at_quantile(0.999) as f64);
        }
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} |",
            median(&mut p50),
            median(&mut p99),
            median(&mut p999)
        );
    }
    Ok(())
}

/// Rbuf TMM channel against DPDK's rte_ring (16- and 32-byte elements), across two processes
/// pinned to CPUs 1 (producer) and 0 (consumer): throughput at batches 1, 8 and 32, and one-way
/// latency busy-polling and blocking. Needs the EAL (`--no-huge`, a file prefix of its own).
#[derive(Parser, Debug)]
#[command(name = "ring")]
struct Args {
    /// Entries moved per throughput measurement.
    #[arg(long, default_value_t = 5_000_000)]
    iters: u64,
    /// Runs of each measurement (medians are printed; ratios are paired within a run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Samples per busy-poll latency run (blocking runs take a tenth).
    #[arg(long, default_value_t = 100_000)]
    lat_samples: u64,
    /// Run one part only.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

/// The parts `--only` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Only {
    /// rbuf alone at batch 32, one run (for profiling and for comparing two builds).
    Rbuf32,
    /// the latency table alone.
    Latency,
}

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    // The producer: this binary re-executed by the parent (not a user-facing option).
    if raw.get(1).map(String::as_str) == Some("--child") {
        if let Err(e) = child(&raw[2..]) {
            eprintln!("ring child: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = Args::parse();
    if let Err(e) = parent(&args) {
        eprintln!("ring: {e}");
        std::process::exit(1);
    }
}
