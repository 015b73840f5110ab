//! The Linux side of experiments 6 and 7: two network namespaces joined by a veth pair, the
//! sending side shaped to the link rate by `tc` (tbf), and the same applications on kernel UDP
//! sockets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nemflow_testkit::{ip, unique_name, Netns};

use crate::capture::{udp_src_port, Capture};
use crate::definition::Definition;
use crate::progress::Progress;
use crate::run::{in_netns, realtime_ns, Children, Measured, RunOptions, DISCARD_PORT};
use crate::series::Series;

/// The sending host's address on the veth link.
pub const LINUX_HOST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The remote host's address on the veth link.
pub const LINUX_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

/// Two namespaces joined by a shaped veth pair; removed on drop.
#[derive(Debug)]
pub struct VethLink {
    /// The host under test (senders or sinks run here).
    pub host: Netns,
    /// The remote host (measures, or sources traffic).
    pub remote: Netns,
    /// The host's end of the veth.
    pub host_if: String,
    /// The remote's end.
    pub remote_if: String,
}

impl VethLink {
    /// Creates the pair; the host's end is shaped to `rate_bps` with a token bucket.
    pub fn new(rate_bps: u64) -> Result<Self, String> {
        let host = Netns::new("nfl")?;
        let remote = Netns::new("nfm")?;
        let host_if = unique_name("vh");
        let remote_if = unique_name("vr");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &remote_if,
        ])?;
        host.adopt(&host_if)?;
        remote.adopt(&remote_if)?;
        for (ns, iface, addr) in [
            (&host, &host_if, LINUX_HOST),
            (&remote, &remote_if, LINUX_REMOTE),
        ] {
            let _ = ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{iface}.disable_ipv6=1"),
            ]);
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", iface])?;
            ns.exec(&["ip", "link", "set", iface, "up"])?;
        }
        // No segmentation offloads: the shaper sees the frames the wire would carry.
        let _ = host.exec(&[
            "ethtool", "-K", &host_if, "tso", "off", "gso", "off", "gro", "off",
        ]);
        let _ = remote.exec(&["ethtool", "-K", &remote_if, "gro", "off"]);
        let rate = format!("{rate_bps}bit");
        // A burst of a few frames and 20 ms of queue: what an operator would set for a link of
        // this rate.
        host.exec(&[
            "tc", "qdisc", "add", "dev", &host_if, "root", "tbf", "rate", &rate, "burst", "6000",
            "latency", "20ms",
        ])?;
        Ok(Self {
            host,
            remote,
            host_if,
            remote_if,
        })
    }
}

/// Runs `def`'s senders as Linux UDP senders over a shaped veth link, measured at the far end.
pub fn senders_on_linux(def: &Definition, opts: &RunOptions) -> Result<Measured, String> {
    let link = VethLink::new(def.link_rate_bps)?;
    let ports: Vec<u16> = def.senders.iter().map(|s| s.port).collect();
    let names: Vec<String> = def.senders.iter().map(|s| s.name.clone()).collect();
    let classify_ports = ports.clone();
    let capture = Capture::start(
        link.remote.name(),
        &link.remote_if,
        Box::new(move |f| {
            udp_src_port(f).and_then(|p| classify_ports.iter().position(|&q| q == p))
        }),
        None,
    )?;
    let start_ns = realtime_ns();
    let start = Instant::now();
    let mut children = Children::default();
    let mut started = vec![false; def.senders.len()];
    let total = Duration::from_secs_f64(def.duration_s);
    let blaster = nemflow_testkit::driver::workspace_binary("linux-udp-blast");
    let mut progress = Progress::new(
        format!("{} on Linux", def.experiment),
        def.duration_s,
        opts.progress,
    );
    while start.elapsed() < total && !opts.stop.load(Ordering::Relaxed) {
        let t = start.elapsed().as_secs_f64();
        for (i, s) in def.senders.iter().enumerate() {
            if !started[i] && t >= s.start_s {
                started[i] = true;
                let log =
                    std::fs::File::create(opts.out.join(format!("{}.linux-blast.log", s.port)))
                        .map_err(|e| e.to_string())?;
                let child = in_netns(link.host.name(), &blaster.to_string_lossy())
                    .args([
                        "--bind",
                        &SocketAddrV4::new(LINUX_HOST, s.port).to_string(),
                        "--remote",
                        &SocketAddrV4::new(LINUX_REMOTE, DISCARD_PORT).to_string(),
                        "--seconds",
                        &format!("{:.3}", def.duration_s - s.start_s + 1.0),
                    ])
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log)
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start linux-udp-blast: {e}"))?;
                children.push(s.name.clone(), child);
            }
        }
        progress.tick(t, "");
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.finish();
    children.stop_all();
    let captured = capture.finish()?;
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
