//! Running an experiment on nemflow: a host (driver + flow manager on net_tap, the remote host
//! in a namespace), the applications as their own processes, the measurement at the remote host.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nemflow_testkit::driver::DriverOptions;
use nemflow_testkit::system::{stop_child, NemflowHost};

use crate::capture::{udp_src_port, Capture};
use crate::definition::Definition;
use crate::progress::Progress;
use crate::series::{Sample, Series};

/// The remote host's address in every topology.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The UDP port senders send to at the remote host (nothing listens: the kernel drops them).
pub const DISCARD_PORT: u16 = 9;

/// How a run is carried out.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where results go.
    pub out: PathBuf,
    /// Keep the raw capture here.
    pub capture: Option<PathBuf>,
    /// Print progress.
    pub progress: bool,
    /// Set by Ctrl-C: stop early, clean up.
    pub stop: Arc<AtomicBool>,
}

/// A transmit experiment's measurement.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Per-flow rates per window.
    pub series: Series,
    /// Frames the capture lost (it fell behind): a non-zero count voids the measurement.
    pub capture_drops: u64,
}

impl Measured {
    /// The check every measured run must pass: the capture saw every frame.
    pub fn check(&self, system: &str) -> crate::report::Check {
        crate::report::Check::new(
            format!("{system} measurement complete"),
            self.capture_drops == 0,
            format!("the capture lost {} frames", self.capture_drops),
        )
    }
}

/// Child processes killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug, Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    /// Adds a child under a name.
    pub fn push(&mut self, name: impl Into<String>, child: Child) {
        self.0.push((name.into(), child));
    }

    /// Names of children that already exited with a failure, with their status.
    pub fn failed(&mut self) -> Vec<String> {
        self.0
            .iter_mut()
            .filter_map(|(name, c)| match c.try_wait() {
                Ok(Some(s)) if !s.success() => Some(format!("{name} exited with {s}")),
                _ => None,
            })
            .collect()
    }

    /// Stops every child and waits for it.
    pub fn stop_all(&mut self) {
        for (_, c) in &mut self.0 {
            stop_child(c);
        }
    }

    /// The children, by name.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut (String, Child)> {
        self.0.iter_mut()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Nanoseconds since the Unix epoch (the capture's clock).
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Starts the nemflow host for `def` (driver paced to its link rate).
pub fn start_host(def: &Definition) -> Result<NemflowHost, String> {
    NemflowHost::start(
        &DriverOptions {
            rate_bps: def.link_rate_bps,
            // Punctual on a busy machine, polite when idle.
            realtime_priority: Some(10),
            // Experiment 7 accounts for every drop: keep them all.
            drop_log_entries: 1 << 22,
            ..DriverOptions::default()
        },
        "",
    )
}

/// Runs `def`'s senders as `udp-blast` processes on nemflow, each starting at its time, and
/// measures them at the remote host. Returns the per-window series.
pub fn senders_on_nemflow(def: &Definition, opts: &RunOptions) -> Result<Measured, String> {
    let mut host = start_host(def)?;
    let ports: Vec<u16> = def.senders.iter().map(|s| s.port).collect();
    let names: Vec<String> = def.senders.iter().map(|s| s.name.clone()).collect();
    let classify_ports = ports.clone();
    let capture = Capture::start(
        &host.driver.netns,
        &host.driver.iface,
        Box::new(move |f| {
            udp_src_port(f).and_then(|p| classify_ports.iter().position(|&q| q == p))
        }),
        opts.capture.as_deref(),
    )?;
    let start_ns = realtime_ns();
    let start = Instant::now();
    let mut children = Children::default();
    let mut started = vec![false; def.senders.len()];
    let total = Duration::from_secs_f64(def.duration_s);
    let mut progress = Progress::new(
        format!("{} on nemflow", def.experiment),
        def.duration_s,
        opts.progress,
    );
    while start.elapsed() < total && !opts.stop.load(Ordering::Relaxed) {
        let t = start.elapsed().as_secs_f64();
        for (i, s) in def.senders.iter().enumerate() {
            if !started[i] && t >= s.start_s {
                started[i] = true;
                let child = blast(&host, s, def.duration_s - s.start_s + 1.0, &opts.out)?;
                children.push(s.name.clone(), child);
            }
        }
        let failed = children.failed();
        if !failed.is_empty() {
            return Err(format!(
                "{}; logs in {}",
                failed.join("; "),
                opts.out.display()
            ));
        }
        progress.tick(t, "");
        std::thread::sleep(Duration::from_millis(20));
    }
    progress.finish();
    children.stop_all();
    let captured = capture.finish()?;
    host.stop_and_keep_logs(&opts.out)?;
    Ok(Measured {
        series: Series::integrate(
            &captured.samples,
            &names,
            start_ns,
            def.window_ms * 1_000_000,
            def.windows(),
        ),
        capture_drops: captured.dropped,
    })
}

/// Starts one `udp-blast` for `s`, logging to `out/<port>.blast.log`.
fn blast(
    host: &NemflowHost,
    s: &crate::definition::Sender,
    seconds: f64,
    out: &Path,
) -> Result<Child, String> {
    let log = std::fs::File::create(out.join(format!("{}.blast.log", s.port)))
        .map_err(|e| e.to_string())?;
    let mut cmd = host.app("udp-blast");
    cmd.args([
        "--remote",
        &SocketAddrV4::new(REMOTE, DISCARD_PORT).to_string(),
        "--local-port",
        &s.port.to_string(),
        "--period-ms",
        &s.period_ms.to_string(),
        "--slice-ms",
        &s.slice_ms.to_string(),
        "--seconds",
        &format!("{seconds:.3}"),
    ]);
    if s.extra {
        cmd.arg("--extra");
    }
    cmd.stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start udp-blast: {e}"))
}

/// Samples from a process's per-datagram log (`arrival_ns size …` lines, as `udp-sink`
/// writes), attributed to `flow`, with the frame length rebuilt from the payload size.
pub fn samples_from_sink_log(text: &str, flow: usize) -> Vec<Sample> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let t_ns = it.next()?.parse().ok()?;
            let size: u32 = it.next()?.parse().ok()?;
            Some(Sample {
                t_ns,
                flow,
                len: size + 42,
            })
        })
        .collect()
}

/// A command run inside a network namespace.
pub fn in_netns(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]);
    cmd
}
