//! The soak run: 90% of the link reserved across eight flows, each offered twice its
//! reservation, while flows are created and destroyed every 100 ms for the whole run. At the end
//! the daemons' file descriptors, memfds, mbufs in use and resident memory must be back at their
//! baseline, and every guaranteed flow must have had its reservation within 5% in every window.

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Client;
use nemflow_proto::app::OpenFlow;
use nemflow_proto::ctl::{DriverReply, DriverRequest};
use nemflow_testkit::driver::{DriverClient, DriverOptions};
use nemflow_testkit::system::NemflowHost;

use crate::capture::{udp_src_port, Capture};
use crate::progress::Progress;
use crate::report::{judge, Check, Summary};
use crate::run::{realtime_ns, Children, RunOptions, DISCARD_PORT, REMOTE};
use crate::series::Series;

/// How the soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Length of the loaded phase.
    pub duration: Duration,
    /// Judging window (the issue asks for 10 s).
    pub window: Duration,
    /// Link rate.
    pub rate_bps: u64,
}

/// A process's resources, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Resources {
    fds: usize,
    memfds: usize,
    rss_kib: u64,
}

fn resources(pid: u32) -> Resources {
    let dir = format!("/proc/{pid}/fd");
    let mut r = Resources::default();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            r.fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"))
            {
                r.memfds += 1;
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        r.rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    r
}

fn mbufs_in_use(socket: &Path) -> Result<u32, String> {
    match DriverClient::connect(socket)?.call(&DriverRequest::PortInfo, &[])? {
        DriverReply::PortInfo(p) => Ok(p.mbufs_in_use),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Runs the soak and judges it.
pub fn soak(opts: &SoakOptions, run: &RunOptions) -> Result<Summary, String> {
    std::fs::create_dir_all(&run.out).map_err(|e| e.to_string())?;
    let mut host = NemflowHost::start(
        &DriverOptions {
            rate_bps: opts.rate_bps,
            ..DriverOptions::default()
        },
        "",
    )?;
    let driver_pid = host.driver.pid();
    let flowmgr_pid = host.flowmgr_pid();
    // Baseline: the host at rest, with its own flow only.
    std::thread::sleep(Duration::from_millis(300));
    let base = (
        resources(driver_pid),
        resources(flowmgr_pid),
        mbufs_in_use(&host.driver.socket)?,
    );

    // Eight guaranteed flows: 90% of the link in all, each offered twice its share (no slack,
    // so they can use only their slice).
    let period_ms = 100.0;
    let slice_ms = 90.0 / 8.0;
    let ports: Vec<u16> = (7001..7009).collect();
    let names: Vec<String> = ports.iter().map(|p| format!("flow {p}")).collect();
    let classify_ports = ports.clone();
    let capture = Capture::start(
        &host.driver.netns,
        &host.driver.iface,
        Box::new(move |f| {
            udp_src_port(f).and_then(|p| classify_ports.iter().position(|&q| q == p))
        }),
        None,
    )?;
    let mut children = Children::default();
    for &port in &ports {
        let log = std::fs::File::create(run.out.join(format!("{port}.soak.log")))
            .map_err(|e| e.to_string())?;
        let child = host
            .app("udp-blast")
            .args([
                "--remote",
                &SocketAddrV4::new(REMOTE, DISCARD_PORT).to_string(),
                "--local-port",
                &port.to_string(),
                "--period-ms",
                &period_ms.to_string(),
                "--slice-ms",
                &slice_ms.to_string(),
                "--seconds",
                &format!("{:.1}", opts.duration.as_secs_f64() + 2.0),
            ])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start udp-blast: {e}"))?;
        children.push(format!("blast {port}"), child);
    }
    // Churn: open a flow, send on it, close it, every 100 ms, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, churned, socket) =
            (Arc::clone(&stop), Arc::clone(&churned), host.socket.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut client = Client::connect(&socket).map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let flow = client
                    .open(&OpenFlow::udp(
                        0,
                        Some(SocketAddrV4::new(REMOTE, DISCARD_PORT)),
                    ))
                    .map_err(|e| e.to_string())?;
                let id = flow.id();
                let (mut tx, _rx) = flow.attach().map_err(|e| e.to_string())?;
                if let Ok(Some(ext)) = tx.alloc(64) {
                    let _ = tx.buf_mut(ext).map(|b| b.fill(0));
                    let _ = tx.push(nemflow_rbuf::IoRec::single(ext, 0));
                }
                client.close(id).map_err(|e| e.to_string())?;
                churned.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            Ok(())
        })
    };
    let start_ns = realtime_ns();
    let start = Instant::now();
    let mut progress = Progress::new("soak", opts.duration.as_secs_f64(), run.progress);
    while start.elapsed() < opts.duration && !run.stop.load(Ordering::Relaxed) {
        let failed = children.failed();
        if !failed.is_empty() {
            stop.store(true, Ordering::Relaxed);
            return Err(failed.join("; "));
        }
        progress.tick(
            start.elapsed().as_secs_f64(),
            &format!("{} flows churned", churned.load(Ordering::Relaxed)),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    progress.finish();
    stop.store(true, Ordering::Relaxed);
    let churn_result = churn
        .join()
        .map_err(|_| "churn thread panicked".to_string())?;
    children.stop_all();
    let captured = capture.finish()?;
    // Back at rest: let the daemons settle, then measure again.
    std::thread::sleep(Duration::from_millis(500));
    let end = (
        resources(driver_pid),
        resources(flowmgr_pid),
        mbufs_in_use(&host.driver.socket)?,
    );
    host.stop_and_keep_logs(&run.out)?;

    let windows = (opts.duration.as_nanos() / opts.window.as_nanos()) as usize;
    let series = Series::integrate(
        &captured.samples,
        &names,
        start_ns,
        opts.window.as_nanos() as u64,
        windows,
    );
    std::fs::write(run.out.join("soak.csv"), series.to_csv()).map_err(|e| e.to_string())?;
    let reserved = slice_ms / period_ms * opts.rate_bps as f64 / 1e6;
    let flows = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            judge(
                "nemflow",
                n,
                reserved,
                series.stats(i, 0, windows),
                0.05,
                None,
            )
        })
        .collect();
    // RSS may grow by a page cache's worth of allocator slack, not by the churn's count.
    let rss_ok = |b: Resources, e: Resources| e.rss_kib <= b.rss_kib + 4096;
    let checks = vec![
        Check::new(
            "churn ran all along",
            churn_result.is_ok()
                && churned.load(Ordering::Relaxed) as f64 >= opts.duration.as_secs_f64() * 5.0,
            format!(
                "{} flows opened and closed ({:?})",
                churned.load(Ordering::Relaxed),
                churn_result.err()
            ),
        ),
        Check::new(
            "driver fds and memfds at baseline",
            end.0.fds == base.0.fds && end.0.memfds == base.0.memfds,
            format!(
                "fds {} → {}, memfds {} → {}",
                base.0.fds, end.0.fds, base.0.memfds, end.0.memfds
            ),
        ),
        Check::new(
            "flow manager fds and memfds at baseline",
            end.1.fds <= base.1.fds && end.1.memfds <= base.1.memfds,
            format!(
                "fds {} → {}, memfds {} → {}",
                base.1.fds, end.1.fds, base.1.memfds, end.1.memfds
            ),
        ),
        Check::new(
            "mbufs in use at baseline",
            end.2 <= base.2,
            format!("{} → {}", base.2, end.2),
        ),
        Check::new(
            "resident memory at baseline (within 4 MiB)",
            rss_ok(base.0, end.0) && rss_ok(base.1, end.1),
            format!(
                "driver {} → {} KiB, flow manager {} → {} KiB",
                base.0.rss_kib, end.0.rss_kib, base.1.rss_kib, end.1.rss_kib
            ),
        ),
        Check::new(
            "measurement complete",
            captured.dropped == 0,
            format!("the capture lost {} frames", captured.dropped),
        ),
    ];
    let summary = Summary::new(
        "soak",
        opts.rate_bps,
        opts.duration.as_secs_f64(),
        flows,
        checks,
    );
    summary.write_json(&run.out)?;
    std::fs::write(run.out.join("summary.txt"), summary.table()).map_err(|e| e.to_string())?;
    Ok(summary)
}
