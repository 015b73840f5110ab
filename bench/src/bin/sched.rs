//! Cost of one transmit-scheduling decision: nemflow's Atropos scheduler (`pick` + `charge`)
//! against DPDK's `rte_sched` (`rte_sched_port_enqueue` + `rte_sched_port_dequeue` per packet)
//! for the same flow set, in the same run. See BENCHMARKS.md, section "sched".
//!
//! The flow set: N flows (1, 16, 1000, 10000), all backlogged, each guaranteed 90%/N of a
//! 10 Gbit/s link, 1514-byte frames (1230.4 ns on the wire). nemflow: slice 1230 ns (one frame)
//! per period of N × 1230 ns / 0.9, no slack, driven in virtual time (a decision every time the
//! wire goes free). One frame per slice is the worst case for the scheduler's data structures:
//! every decision takes the flow it serves out of the EDF heap and, as periods end, puts
//! another one back. Measured twice: with the flows' periods in phase (all added at t = 0:
//! flows share deadlines) and spread (flow i added at i/N of a period: every deadline distinct,
//! the realistic case and the more expensive one). Also the slack round robin: the same N
//! flows as best effort. rte_sched: one subport, N pipes with the same rates (token bucket and
//! best-effort traffic class at 90%/N of the port), one queue per pipe, every pipe kept
//! backlogged by re-enqueueing what is dequeued.
//!
//! rte_sched reads the TSC for its shaping, so it is measured twice: at line rate (port at
//! 10 Gbit/s: the shaper paces dequeues in real time, and only the time spent in calls that
//! moved packets is counted), and CPU-bound (port and pipe rates ×100: a 1 Tbit/s port, where a
//! frame is 12.3 ns of port time, far less than rte_sched's cost per packet, so credits never
//! stop a packet and every burst of 32 is full: its cheapest per-packet cost; ×1000 is beyond
//! what rte_sched accepts, its cycles-per-byte would be 0).
//!
//! All costs are CPU time of the benchmark thread (CLOCK_THREAD_CPUTIME_ID), or TSC cycles
//! inside the calls for rte_sched at line rate, so other load on the machine inflates them
//! less than wall time would.

use std::ffi::{c_char, CString};
use std::hint::black_box;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use clap::Parser;
use dpdk_sys as sys;
use nemflow_sched::{Pick, Qos, Scheduler};

const LINK_BPS: u64 = 10_000_000_000;
const FRAME_BYTES: u32 = 1514;
/// nemflow slice: one frame (1230.4 ns at 10 Gbit/s), rounded down to whole ns.
const SLICE_NS: u64 = 1230;
/// Guaranteed share of the link, per mille, split evenly among the flows.
const LOAD_PERMILLE: u64 = 900;

/// Benchmark nemflow's transmit scheduler against DPDK rte_sched.
#[derive(Debug, Parser)]
#[command(name = "sched")]
struct Args {
    /// Flow counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 1000, 10000])]
    flows: Vec<usize>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Scheduling decisions per nemflow repetition.
    #[arg(long, default_value_t = 2_000_000)]
    decisions: u64,
    /// Packets per rte_sched CPU-bound repetition.
    #[arg(long, default_value_t = 2_000_000)]
    packets: u64,
    /// Real time per rte_sched line-rate repetition, ms.
    #[arg(long, default_value_t = 300)]
    line_rate_ms: u64,
    /// Skip rte_sched (no EAL).
    #[arg(long)]
    no_dpdk: bool,
}

/// CPU time of the calling thread, ns: unlike wall time, it does not count the time other
/// processes on this shared machine hold the core.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The TSC, as rte_sched reads it.
#[inline]
fn tsc() -> u64 {
    // SAFETY: rte_rdtsc only executes rdtsc; no arguments, no memory touched.
    unsafe { sys::rte_rdtsc() }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flows {
    /// Guaranteed, all periods in phase (added at t = 0).
    InPhase,
    /// Guaranteed, flow i added at i/N of a period: all deadlines distinct.
    Spread,
    /// Best effort: the slack round robin.
    BestEffort,
}

/// ns (thread CPU time) per decision of nemflow's scheduler, N backlogged flows, virtual time.
fn nemflow_ns_per_decision(n: usize, decisions: u64, flows: Flows) -> Result<f64, String> {
    let mut s = Scheduler::new(LINK_BPS, 0).map_err(|e| e.to_string())?;
    let period_ns = SLICE_NS * n as u64 * 1000 / LOAD_PERMILLE;
    for id in 0..n as u32 {
        let (qos, start) = match flows {
            Flows::InPhase => (Qos::guaranteed(period_ns, SLICE_NS), 0),
            Flows::Spread => (
                Qos::guaranteed(period_ns, SLICE_NS),
                period_ns * u64::from(id) / n as u64,
            ),
            Flows::BestEffort => (Qos::best_effort(period_ns), 0),
        };
        s.add_flow(id, qos, start).map_err(|e| e.to_string())?;
        s.set_backlogged(id, true, start)
            .map_err(|e| e.to_string())?;
    }
    let mut t = 0u64;
    let mut run = |s: &mut Scheduler, count: u64| -> Result<(), String> {
        let mut sent = 0;
        while sent < count {
            match s.pick(t) {
                Pick::Send(id) => {
                    s.charge(id, FRAME_BYTES, t).map_err(|e| e.to_string())?;
                    // The next decision is due when the wire goes free.
                    t = s.wire_free_at_ns();
                    sent += 1;
                }
                Pick::WaitUntil(w) => t = w,
                Pick::Idle => return Err("scheduler idle with backlogged flows".into()),
            }
        }
        Ok(())
    };
    // Warm up: every flow has been through replenishment a few times.
    run(&mut s, decisions / 4)?;
    let start = thread_cpu_ns();
    run(&mut s, decisions)?;
    let elapsed = thread_cpu_ns() - start;
    black_box(&s);
    // A frame-schedulable set (one frame per slice, 10% of the link free): no flow may miss.
    let misses: u64 = (0..n as u32)
        .map(|id| s.stats(id).map_or(0, |st| st.deadline_misses))
        .sum();
    if misses > 0 {
        return Err(format!(
            "{misses} deadline misses with {n} flows ({flows:?})"
        ));
    }
    Ok(elapsed as f64 / decisions as f64)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("sched bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let eal = if args.no_dpdk {
        None
    } else {
        Some(Eal::init()?)
    };
    println!(
        "scheduling decision cost, N backlogged flows of 90%/N of {} Gbit/s, {FRAME_BYTES}-byte frames; median of {} runs",
        LINK_BPS / 1_000_000_000,
        args.reps
    );
    println!(
        "{:>6} | {:>11} {:>11} {:>11} | {:>13} {:>14} | {:>9} {:>10}",
        "flows",
        "EDF spread",
        "EDF phase",
        "slack RR",
        "rte_sched cpu",
        "rte_sched line",
        "ratio cpu",
        "ratio line"
    );
    println!(
        "{:>6} | {:>11} {:>11} {:>11} | {:>13} {:>14} | {:>9} {:>10}",
        "", "ns/decision", "ns/decision", "ns/decision", "ns/packet", "ns/packet", "", ""
    );
    for &n in &args.flows {
        let (mut spread, mut phase, mut slack, mut cpu, mut line) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..args.reps {
            spread.push(nemflow_ns_per_decision(n, args.decisions, Flows::Spread)?);
            phase.push(nemflow_ns_per_decision(n, args.decisions, Flows::InPhase)?);
            slack.push(nemflow_ns_per_decision(
                n,
                args.decisions,
                Flows::BestEffort,
            )?);
            if let Some(eal) = &eal {
                cpu.push(rte_sched_ns_per_packet(
                    eal,
                    n,
                    Mode::CpuBound,
                    args.packets,
                    args.line_rate_ms,
                )?);
                line.push(rte_sched_ns_per_packet(
                    eal,
                    n,
                    Mode::LineRate,
                    args.packets,
                    args.line_rate_ms,
                )?);
            }
        }
        let (spread, phase, slack, cpu, line) = (
            median(spread),
            median(phase),
            median(slack),
            median(cpu),
            median(line),
        );
        println!(
            "{n:>6} | {spread:>11.1} {phase:>11.1} {slack:>11.1} | {cpu:>13.1} {line:>14.1} | {:>9.2} {:>10.2}",
            cpu / spread,
            line / spread
        );
    }
    println!(
        "ratio = rte_sched ns/packet ÷ nemflow EDF (spread) ns/decision; > 1: nemflow is cheaper"
    );
    drop(eal);
    Ok(())
}

/// The DPDK EAL of this process (no hugepages, no PCI, one lcore). Dropping it calls
/// `rte_eal_cleanup` and removes the runtime directory of its file prefix.
#[derive(Debug)]
struct Eal {
    prefix: String,
    /// The argument strings, kept alive for the EAL's lifetime.
    _args: Vec<CString>,
}

fn rte_error(what: &str) -> String {
    // SAFETY: reads the calling lcore's rte_errno; no arguments, no memory touched.
    let errno = unsafe { sys::nemflow_rte_errno() };
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let msg = unsafe { std::ffi::CStr::from_ptr(sys::rte_strerror(errno)) };
    format!("{what}: {} (rte_errno {errno})", msg.to_string_lossy())
}

impl Eal {
    fn init() -> Result<Self, String> {
        let prefix = format!("bench-sched-{}", std::process::id());
        let words = [
            "nemflow-bench",
            "--no-huge",
            "-m",
            "512",
            "--file-prefix",
            &prefix,
            "--no-pci",
            "--no-telemetry",
            "-l",
            "0",
            "--log-level=lib.*:warning",
        ];
        let args: Vec<CString> = words
            .iter()
            .map(|w| CString::new(*w).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        let argc = i32::try_from(argv.len()).map_err(|e| e.to_string())?;
        // SAFETY: argv holds `argc` pointers to NUL-terminated strings owned by `args`, which
        // outlive the EAL (kept in `Eal`); rte_eal_init may reorder the pointer array (ours to
        // lose) but does not write through the strings or free them.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(rte_error("rte_eal_init"));
        }
        Ok(Self {
            prefix,
            _args: args,
        })
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: called once, after every DPDK object this process made has been freed.
        unsafe { sys::rte_eal_cleanup() };
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Port and pipe rates ×100: credits never hold a packet back.
    CpuBound,
    /// Port at the link rate: the shaper paces dequeues in real time.
    LineRate,
}

/// Best-effort traffic class (RTE_SCHED_TRAFFIC_CLASS_BE): the only one enabled.
const TC_BE: usize = 12;
/// Queue size of the best-effort class (power of two).
const QSIZE: u16 = 64;
/// Packets kept queued per pipe: at least 2, and enough that 64 are queued in all, so that a
/// burst of 32 can always be full (capped by the queue size).
fn per_pipe(n: usize) -> usize {
    64usize.div_ceil(n).clamp(2, usize::from(QSIZE) / 2)
}
const BURST: usize = 32;

/// An rte_sched port with `n` pipes, its mempool and the packets in it; freed on drop.
struct SchedPort {
    port: NonNull<sys::rte_sched_port>,
    pool: NonNull<sys::rte_mempool>,
}

impl Drop for SchedPort {
    fn drop(&mut self) {
        // SAFETY: the port was made by rte_sched_port_config and is not used after this; it
        // frees the packets still queued in it.
        unsafe { sys::rte_sched_port_free(self.port.as_ptr()) };
        // SAFETY: every mbuf of the pool is back in it (queued ones were freed above, burst
        // buffers are always re-enqueued); nothing uses the pool after this.
        unsafe { sys::rte_mempool_free(self.pool.as_ptr()) };
    }
}

impl SchedPort {
    fn new(n: usize, mode: Mode) -> Result<Self, String> {
        let scale = match mode {
            Mode::CpuBound => 100,
            Mode::LineRate => 1,
        };
        let port_rate = LINK_BPS / 8 * scale; // bytes/s
        let pipe_rate = port_rate * LOAD_PERMILLE / 1000 / n as u64;
        let n_pipes = u32::try_from(n.next_power_of_two()).map_err(|e| e.to_string())?;
        let mut subport_profile = sys::rte_sched_subport_profile_params {
            tb_rate: port_rate,
            tb_size: 1_000_000,
            tc_rate: [port_rate; 13],
            tc_period: 10,
        };
        let name = CString::new(format!("sched-{n}-{mode:?}")).map_err(|e| e.to_string())?;
        let mut port_params = sys::rte_sched_port_params {
            name: name.as_ptr(),
            socket: 0,
            rate: port_rate,
            mtu: 1522,
            frame_overhead: 24,
            n_subports_per_port: 1,
            subport_profiles: &mut subport_profile,
            n_subport_profiles: 1,
            n_max_subport_profiles: 1,
            n_pipes_per_subport: n_pipes,
        };
        // SAFETY: port_params and what it points to (name, subport profile) are valid for the
        // call; rte_sched copies what it keeps.
        let port = NonNull::new(unsafe { sys::rte_sched_port_config(&mut port_params) })
            .ok_or_else(|| rte_error("rte_sched_port_config"))?;
        let mut tc_rate = [0u64; 13];
        tc_rate[TC_BE] = pipe_rate;
        let mut pipe_profile = sys::rte_sched_pipe_params {
            tb_rate: pipe_rate,
            tb_size: 4 * 1538,
            tc_rate,
            tc_period: 100,
            tc_ov_weight: 1,
            wrr_weights: [1; 4],
        };
        let mut qsize = [0u16; 13];
        qsize[TC_BE] = QSIZE;
        let mut subport_params = sys::rte_sched_subport_params {
            n_pipes_per_subport_enabled: n_pipes,
            qsize,
            pipe_profiles: &mut pipe_profile,
            n_pipe_profiles: 1,
            n_max_pipe_profiles: 1,
            cman_params: ptr::null_mut(),
        };
        let pool_name =
            CString::new(format!("sched-pool-{n}-{mode:?}")).map_err(|e| e.to_string())?;
        let count = u32::try_from(n * per_pipe(n) + 4 * BURST + 1024).map_err(|e| e.to_string())?;
        // SAFETY: the name is a NUL-terminated string valid for the call.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(pool_name.as_ptr(), count, 256, 0, 2048 + 128, 0)
        };
        let Some(pool) = NonNull::new(pool) else {
            let err = rte_error("rte_pktmbuf_pool_create");
            // SAFETY: the port was just made and nothing else refers to it.
            unsafe { sys::rte_sched_port_free(port.as_ptr()) };
            return Err(err);
        };
        let sp = Self { port, pool };
        // SAFETY: the port is valid; subport_params and the pipe profile it points to are
        // valid for the call (rte_sched copies the profiles).
        let ret =
            unsafe { sys::rte_sched_subport_config(sp.port.as_ptr(), 0, &mut subport_params, 0) };
        if ret != 0 {
            return Err(format!("rte_sched_subport_config: {ret}"));
        }
        for pipe in 0..n_pipes {
            // SAFETY: valid port, subport 0 configured above, pipe < n_pipes_per_subport.
            let ret = unsafe { sys::rte_sched_pipe_config(sp.port.as_ptr(), 0, pipe, 0) };
            if ret != 0 {
                return Err(format!("rte_sched_pipe_config({pipe}): {ret}"));
            }
        }
        for pipe in 0..n as u32 {
            for _ in 0..per_pipe(n) {
                // SAFETY: the pool is valid; a null return is handled.
                let m = unsafe { sys::rte_pktmbuf_alloc(sp.pool.as_ptr()) };
                if m.is_null() {
                    return Err(rte_error("rte_pktmbuf_alloc"));
                }
                // SAFETY: m is a fresh mbuf from our pool with 2048 bytes of data room.
                let data = unsafe { sys::rte_pktmbuf_append(m, FRAME_BYTES as u16) };
                if data.is_null() {
                    return Err("rte_pktmbuf_append: no room".into());
                }
                // SAFETY: valid port and mbuf; the path (subport 0, pipe, best-effort class,
                // queue 0) exists in the port configured above.
                unsafe {
                    sys::rte_sched_port_pkt_write(sp.port.as_ptr(), m, 0, pipe, TC_BE as u32, 0, 0)
                };
                let mut one = [m];
                // SAFETY: one valid mbuf pointer; the port takes ownership of what it accepts.
                let ok =
                    unsafe { sys::rte_sched_port_enqueue(sp.port.as_ptr(), one.as_mut_ptr(), 1) };
                if ok != 1 {
                    return Err(format!(
                        "rte_sched_port_enqueue dropped a packet of pipe {pipe}"
                    ));
                }
            }
        }
        Ok(sp)
    }

    /// Dequeues up to a burst and enqueues it again (each packet back into its own pipe);
    /// returns the number of packets moved.
    #[inline]
    fn cycle(&mut self, buf: &mut [*mut sys::rte_mbuf; BURST]) -> u32 {
        // SAFETY: buf has room for BURST pointers; the port hands over ownership of the
        // packets it writes there.
        let k = unsafe {
            sys::rte_sched_port_dequeue(self.port.as_ptr(), buf.as_mut_ptr(), BURST as u32)
        };
        let k = u32::try_from(k).unwrap_or(0);
        if k > 0 {
            // SAFETY: the first k entries are the packets just dequeued, still carrying their
            // scheduler path; enqueue takes them back (the queue they left has room).
            let e = unsafe { sys::rte_sched_port_enqueue(self.port.as_ptr(), buf.as_mut_ptr(), k) };
            debug_assert_eq!(e, k as i32);
        }
        k
    }
}

fn rte_sched_ns_per_packet(
    _eal: &Eal,
    n: usize,
    mode: Mode,
    packets: u64,
    line_rate_ms: u64,
) -> Result<f64, String> {
    let mut sp = SchedPort::new(n, mode)?;
    let mut buf = [ptr::null_mut(); BURST];
    match mode {
        Mode::CpuBound => {
            let mut moved = 0u64;
            while moved < packets / 4 {
                moved += u64::from(sp.cycle(&mut buf));
            }
            let start = thread_cpu_ns();
            let mut moved = 0u64;
            while moved < packets {
                moved += u64::from(sp.cycle(&mut buf));
            }
            Ok((thread_cpu_ns() - start) as f64 / moved as f64)
        }
        Mode::LineRate => {
            // Only calls that moved packets count: the rest is the shaper idling the port.
            // SAFETY: reads the TSC frequency the EAL measured; no arguments.
            let hz = unsafe { sys::rte_get_tsc_hz() } as f64;
            // The cost of reading the TSC twice, subtracted from each timed call.
            let overhead = (0..1000)
                .map(|_| tsc().wrapping_neg().wrapping_add(tsc()))
                .min()
                .unwrap_or(0);
            let warm = Instant::now() + Duration::from_millis(line_rate_ms / 4);
            while Instant::now() < warm {
                sp.cycle(&mut buf);
            }
            let end = Instant::now() + Duration::from_millis(line_rate_ms);
            let (mut busy, mut moved) = (0u64, 0u64);
            while Instant::now() < end {
                let t0 = tsc();
                let k = sp.cycle(&mut buf);
                let t1 = tsc();
                if k > 0 {
                    busy += t1.wrapping_sub(t0).saturating_sub(overhead);
                    moved += u64::from(k);
                }
            }
            if moved == 0 {
                return Err(format!(
                    "rte_sched moved no packet at line rate with {n} pipes"
                ));
            }
            Ok(busy as f64 * 1e9 / hz / moved as f64)
        }
    }
}
