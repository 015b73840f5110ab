//! The driver process: bring the port up, serve the control socket, run the poll loop until
//! SIGINT/SIGTERM, and leave nothing behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_config::{Config, IdleMode};

use crate::control::ControlServer;
use crate::datapath::{Datapath, DatapathConfig};
use crate::dpdk::{Eal, EthPort, Mempool, PortConf};
use crate::tap_peer::TapPeer;
use crate::telemetry::{self, Telemetry};

/// Loop rounds between control-socket polls while busy.
const CONTROL_EVERY: u32 = 64;

/// How often the loop looks at the link state (a system call for net_tap).
const LINK_CHECK_EVERY_NS: u64 = 50_000_000;

/// A real-time data path that never sleeps is stopped by the kernel for 50 ms of every second
/// (`sched_rt_runtime_us` of 950 000, or the fair server of Linux ≥ 6.12, which then runs the
/// starved normal tasks in one go): at a saturated 1 Gbit/s that was a 50 ms gap on the wire
/// once a second. Instead, after [`RT_MAX_UNBROKEN`] of work without a sleep it gives the core
/// away for [`RT_YIELD`] (9% of it), in pieces the port's lookahead and the flows' periods cover.
const RT_MAX_UNBROKEN: Duration = Duration::from_millis(1);
/// See [`RT_MAX_UNBROKEN`].
const RT_YIELD: Duration = Duration::from_micros(100);

/// Anything that stops the driver.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// DPDK failed.
    #[error(transparent)]
    Dpdk(#[from] crate::dpdk::DpdkError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// The tap peer namespace could not be set up.
    #[error(transparent)]
    TapPeer(#[from] crate::tap_peer::TapPeerError),
    /// The scheduler refused the configuration.
    #[error("scheduler: {0}")]
    Sched(#[from] nemflow_sched::SchedError),
    /// Something else, explained.
    #[error("{0}")]
    Other(String),
}

/// Runs the driver with `config` until a termination signal.
pub fn serve(config: &Config) -> Result<(), RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| RunError::Other(format!("cannot handle signal {sig}: {e}")))?;
    }
    // Short sleeps in the adaptive idle mode must be short: no 50 µs timer slack.
    // SAFETY: prctl with PR_SET_TIMERSLACK and an integer argument has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };

    // Declared first, dropped last: the namespace goes after the tap interface it holds.
    let mut tap_peer: Option<TapPeer> = None;
    // A driver killed with this prefix left its runtime directory: DPDK would start over it,
    // but stale files (its telemetry and multi-process sockets) would outlive us.
    crate::dpdk::remove_stale_runtime_dir(&config.eal.file_prefix);
    let eal = Eal::init(&config.eal_args("nemflow-driver"))?;
    let pool = Mempool::new(&eal, "nemflow_pool", config.port.mbufs, 2048)?;
    let conf = PortConf {
        rx_desc: config.port.rx_desc,
        tx_desc: config.port.tx_desc,
        mtu: config.port.max_frame_bytes.saturating_sub(14),
        mac: config.host.mac.map(|m| m.0),
    };
    let mut port = EthPort::open(&eal, config.port_name(), &conf, &pool)?;
    if let Some(vdev) = config
        .port
        .vdev
        .as_ref()
        .filter(|v| v.driver() == "net_tap")
    {
        if let Some(iface) = vdev.arg("iface") {
            if !std::path::Path::new("/sys/class/net").join(iface).exists() {
                return Err(RunError::Other(format!(
                    "net_tap did not create interface {iface}: check the device arguments in port.vdev"
                )));
            }
            if let Some(peer) = &config.port.tap_peer {
                let p = TapPeer::setup(&peer.netns, iface, peer.ip)?;
                port.set_kernel_link(p.link_watch(iface)?);
                tap_peer = Some(p);
            }
        }
    }
    let mac = port.mac();
    let mut dp = Datapath::new(
        port,
        DatapathConfig {
            rate_bps: config.link.rate_bps,
            reserve_ppm: (config.flowmgr.reserve * 1e6) as u32,
            max_frame_bytes: usize::from(config.port.max_frame_bytes),
            burst: usize::from(config.driver.burst),
            drop_log_entries: config.driver.drop_log_entries as usize,
            subnet_broadcast: config.host.ip.broadcast(),
            port_name: config.port_name().to_owned(),
        },
    )?;
    let max_sleep = Duration::from_micros(u64::from(config.driver.max_sleep_us));
    dp.set_lookahead_ns(u64::from(config.driver.lookahead_us) * 1000);
    let mut control = ControlServer::bind(&config.driver.control_socket)?;
    tracing::info!(
        port = config.port_name(),
        mac = %nemflow_config::MacAddr(mac),
        rate_bps = config.link.rate_bps,
        socket = %control.path().display(),
        peer = tap_peer.as_ref().map(|p| p.netns().to_owned()),
        "driver ready"
    );
    let mut telemetry =
        Telemetry::register(config.link.rate_bps, (config.flowmgr.reserve * 1e6) as u32);
    telemetry::notify_ready();

    // Only the data-path thread (this one, from here on) runs at real-time priority: DPDK's own
    // threads, started above, keep the normal scheduler.
    if let Some(priority) = config.driver.realtime_priority {
        let param = libc::sched_param {
            sched_priority: i32::from(priority),
        };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            return Err(RunError::Other(format!(
                "cannot run the data path at real-time priority {priority}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let realtime = config.driver.realtime_priority.is_some();
    // When the loop last slept (a real-time loop must sleep now and then: `RT_MAX_UNBROKEN`).
    let mut last_sleep = Instant::now();
    let spin = Duration::from_micros(u64::from(config.driver.spin_us));
    let start = Instant::now();
    let mut round: u32 = 0;
    // When the loop last did work (adaptive mode spins `spin` past it, then sleeps).
    let mut last_work = Instant::now();
    // Rounds that came late (the process was not running): the longest gap and how many
    // exceeded 1 ms, logged at exit to tell a starved driver from a starved application.
    let mut last_round = Instant::now();
    let (mut max_gap, mut stalls) = (Duration::ZERO, 0u64);
    let mut next_link_check_ns = 0;
    while !stop.load(Ordering::Relaxed) {
        let gap = last_round.elapsed();
        last_round = Instant::now();
        if gap > max_sleep + Duration::from_millis(1) {
            stalls += 1;
        }
        max_gap = max_gap.max(gap);
        let now_ns = start.elapsed().as_nanos() as u64;
        let t_poll = Instant::now();
        let work = dp.poll(now_ns);
        let poll_took = t_poll.elapsed();
        if poll_took > Duration::from_millis(1) {
            tracing::debug!(us = poll_took.as_micros() as u64, "slow poll");
        }
        if now_ns >= next_link_check_ns {
            next_link_check_ns = now_ns + LINK_CHECK_EVERY_NS;
            dp.check_link();
        }
        telemetry.tick(&dp, now_ns);
        round = round.wrapping_add(1);
        let busy = work.received > 0 || work.sent > 0;
        let mut served = 0;
        if !busy || round.is_multiple_of(CONTROL_EVERY) {
            let t_control = Instant::now();
            served = control.poll(&mut dp, now_ns);
            let took = t_control.elapsed();
            if took > Duration::from_millis(1) {
                // The data path waited for these requests (they run on its thread).
                tracing::debug!(
                    us = took.as_micros() as u64,
                    served,
                    "slow control requests"
                );
            }
        }
        if busy || served > 0 {
            last_work = Instant::now();
            if realtime && last_sleep.elapsed() >= RT_MAX_UNBROKEN {
                std::thread::sleep(RT_YIELD);
                last_sleep = Instant::now();
            }
            continue;
        }
        if config.driver.idle == IdleMode::Adaptive && last_work.elapsed() >= spin {
            let mut nap = max_sleep;
            if let Some(t) = work.wait_until_ns {
                nap = nap.min(Duration::from_nanos(t.saturating_sub(now_ns)));
            }
            if nap >= Duration::from_micros(2) {
                let t = Instant::now();
                std::thread::sleep(nap);
                last_sleep = Instant::now();
                let slept = t.elapsed();
                if slept > nap + Duration::from_millis(1) {
                    tracing::debug!(
                        us = slept.as_micros() as u64,
                        asked = nap.as_micros() as u64,
                        "late wake-up"
                    );
                }
            }
        }
    }
    let info = dp.port_info();
    tracing::info!(
        rx_packets = info.rx_packets,
        tx_packets = info.tx_packets,
        flows = info.flows,
        loop_stalls_over_1ms = stalls,
        loop_max_gap_us = max_gap.as_micros() as u64,
        "driver stopping"
    );
    drop(telemetry);
    drop(control);
    drop(dp);
    drop(eal);
    drop(tap_peer);
    Ok(())
}
