//! Experiment 7, receive overload: an exactly paced source at the remote host sends each sink
//! its stream; sink 1 discards at once, sink 2 works per datagram and slows down further every
//! N datagrams. On nemflow only sink 2 may lose, and its loss must be exactly what the driver
//! logged for its flow; the same sinks on Linux sockets are measured for comparison.

use std::net::SocketAddrV4;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Client;
use nemflow_proto::ctl::{DriverReply, DriverRequest, DropReason};
use nemflow_proto::FlowId;
use nemflow_testkit::driver::{DriverClient, HOST_IP, PEER_IP};
use nemflow_testkit::frames::{HOST_MAC, PEER_MAC};

use crate::definition::{Definition, Receiver};
use crate::linux::{VethLink, LINUX_HOST, LINUX_REMOTE};
use crate::pacer::{self, Stream};
use crate::progress::Progress;
use crate::report::{judge, Check, FlowResult, Summary};
use crate::run::{in_netns, samples_from_sink_log, start_host, Children, RunOptions};
use crate::series::{Sample, Series};

/// UDP payload of the source's datagrams: one MTU-sized frame each.
const PAYLOAD: usize = 1472;

/// What one sink saw.
#[derive(Debug, Clone)]
struct SinkResult {
    samples: Vec<Sample>,
    received: u64,
    /// Sequence numbers missing between the first and the last received.
    gaps: u64,
}

fn read_sink(path: &std::path::Path, flow: usize) -> SinkResult {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let samples = samples_from_sink_log(&text, flow);
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    let gaps = match (seqs.iter().min(), seqs.iter().max()) {
        (Some(lo), Some(hi)) => (hi - lo + 1).saturating_sub(seqs.len() as u64),
        _ => 0,
    };
    SinkResult {
        received: samples.len() as u64,
        samples,
        gaps,
    }
}

/// The sink processes' cost arguments for receiver `r`.
fn sink_costs(r: &Receiver) -> Vec<String> {
    let mut args = vec!["--cost-us".to_string(), format!("{}", r.cost_us)];
    if let Some(every) = r.slowdown_every {
        args.extend([
            "--slow-every".into(),
            every.to_string(),
            "--step-us".into(),
            format!("{}", r.slowdown_step_us),
        ]);
    }
    args
}

/// Runs experiment 7 on nemflow and on Linux and judges it.
pub fn fig7(def: &Definition, opts: &RunOptions) -> Result<Summary, String> {
    let (nemflow, checks) = on_nemflow(def, opts)?;
    let LinuxRun {
        sinks: linux,
        sent: linux_sent,
        kernel_drops,
    } = on_linux(def, opts)?;
    let names: Vec<String> = def.receivers.iter().map(|r| r.name.clone()).collect();
    let windows = def.windows();
    let series_of = |sinks: &[SinkResult]| {
        let samples: Vec<Sample> = sinks
            .iter()
            .flat_map(|s| s.samples.iter().copied())
            .collect();
        let t0 = samples.iter().map(|s| s.t_ns).min().unwrap_or(0);
        Series::integrate(&samples, &names, t0, def.window_ms * 1_000_000, windows)
    };
    let n_series = series_of(&nemflow.sinks);
    let l_series = series_of(&linux);
    let link_mbps = def.link_rate_bps as f64 / 1e6;
    std::fs::write(opts.out.join("7-nemflow.csv"), n_series.to_csv()).map_err(|e| e.to_string())?;
    std::fs::write(opts.out.join("7-linux.csv"), l_series.to_csv()).map_err(|e| e.to_string())?;
    crate::plot::draw(
        &n_series,
        &format!("{} (nemflow)", def.title),
        link_mbps * 0.6,
        &opts.out.join("7-nemflow.png"),
    )
    .map_err(|e| e.to_string())?;
    crate::plot::draw(
        &l_series,
        &format!("{} (Linux sockets)", def.title),
        link_mbps * 0.6,
        &opts.out.join("7-linux.png"),
    )
    .map_err(|e| e.to_string())?;
    // The loss series: per window, datagrams sent to sink 2 minus those it received.
    let mut loss = String::from("time_s,system,sink,lost\n");
    for (system, sinks) in [("nemflow", &nemflow.sinks), ("linux", &linux)] {
        for (i, s) in sinks.iter().enumerate() {
            loss.push_str(&format!(
                "0,{system},{},{}\n",
                def.receivers[i].name, s.gaps
            ));
        }
    }
    std::fs::write(opts.out.join("7-loss.csv"), loss).map_err(|e| e.to_string())?;

    let from = def.warmup_windows();
    let last = windows.saturating_sub(1); // the last window is cut short by the source's end
    let mut flows = Vec::new();
    let r1 = &def.receivers[0];
    let s1 = n_series.stats(0, from, last);
    let mut first = judge(
        "nemflow",
        &r1.name,
        r1.rate_bps as f64 / 1e6,
        s1,
        0.01,
        None,
    );
    let lost1 = nemflow.sent[0].saturating_sub(nemflow.sinks[0].received);
    first.pass = first.pass.map(|p| p && lost1 == 0);
    first.note = format!("no loss (lost {lost1}), every window ±1%");
    flows.push(first);
    for (i, r) in def.receivers.iter().enumerate().skip(1) {
        let st = n_series.stats(i, from, last);
        flows.push(FlowResult {
            system: "nemflow".into(),
            flow: r.name.clone(),
            reserved_mbps: Some(r.rate_bps as f64 / 1e6),
            stats: st,
            worst_window_error: None,
            mean_error: None,
            pass: None,
            note: format!(
                "received {} of {} sent",
                nemflow.sinks[i].received, nemflow.sent[i]
            ),
        });
    }
    for (i, r) in def.receivers.iter().enumerate() {
        let st = l_series.stats(i, from, last);
        let lost = linux_sent[i].saturating_sub(linux[i].received);
        flows.push(FlowResult {
            system: "linux".into(),
            flow: r.name.clone(),
            reserved_mbps: Some(r.rate_bps as f64 / 1e6),
            stats: st,
            worst_window_error: Some(st.worst_error(r.rate_bps as f64 / 1e6)),
            mean_error: None,
            pass: None,
            note: format!("lost {lost}"),
        });
    }
    let linux_isolates = linux[0].gaps == 0
        && l_series
            .stats(0, from, last)
            .worst_error(r1.rate_bps as f64 / 1e6)
            <= 0.01;
    let mut checks = checks;
    let linux_lost1 = linux_sent[0].saturating_sub(linux[0].received);
    checks.push(Check::info("Linux: where the kernel dropped", kernel_drops));
    checks.push(Check::info(
        "Linux: sink 1 unaffected by sink 2",
        format!(
            "{}: sink 1 lost {}, worst window {:.2}%",
            if linux_isolates && linux_lost1 == 0 {
                "yes"
            } else {
                "no"
            },
            linux_lost1,
            l_series
                .stats(0, from, last)
                .worst_error(r1.rate_bps as f64 / 1e6)
                * 100.0
        ),
    ));
    Ok(Summary::new(
        "7",
        def.link_rate_bps,
        def.duration_s,
        flows,
        checks,
    ))
}

#[derive(Debug)]
struct NemflowRun {
    sinks: Vec<SinkResult>,
    sent: Vec<u64>,
}

fn streams(
    def: &Definition,
    src: (std::net::Ipv4Addr, [u8; 6]),
    dst: (std::net::Ipv4Addr, [u8; 6]),
) -> Vec<Stream> {
    def.receivers
        .iter()
        .map(|r| Stream {
            src: SocketAddrV4::new(src.0, 5000 + r.port % 1000),
            dst: SocketAddrV4::new(dst.0, r.port),
            macs: (src.1, dst.1),
            rate_bps: r.rate_bps,
            payload_bytes: PAYLOAD,
        })
        .collect()
}

fn on_nemflow(def: &Definition, opts: &RunOptions) -> Result<(NemflowRun, Vec<Check>), String> {
    let logs = log_dir()?;
    let mut host = start_host(def)?;
    let mut children = Children::default();
    for r in &def.receivers {
        let log = std::fs::File::create(logs.path().join(format!("{}.sink.log", r.port)))
            .map_err(|e| e.to_string())?;
        let err = std::fs::File::create(opts.out.join(format!("{}.sink.err", r.port)))
            .map_err(|e| e.to_string())?;
        let mut cmd = host.app("udp-sink");
        if r.cpu_guarantee {
            cmd = realtime(cmd);
        }
        let child = cmd
            .args([
                "--port",
                &r.port.to_string(),
                "--seconds",
                &format!("{:.3}", def.duration_s + 60.0),
            ])
            .args(sink_costs(r))
            .args(["--rx-slots", &r.rx_slots.to_string()])
            .stdout(log)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start udp-sink: {e}"))?;
        children.push(r.name.clone(), child);
    }
    // Wait until both sinks hold their flows, and learn the flows' ids.
    let mut fm = Client::connect(&host.socket).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let ids: Vec<FlowId> = loop {
        let flows = fm.all_flows().map_err(|e| e.to_string())?;
        let ids: Vec<Option<FlowId>> = def
            .receivers
            .iter()
            .map(|r| {
                flows
                    .iter()
                    .find(|f| f.local.port() == r.port && f.id.0 != 0)
                    .map(|f| f.id)
            })
            .collect();
        if ids.iter().all(Option::is_some) {
            break ids.into_iter().flatten().collect();
        }
        let failed = children.failed();
        if !failed.is_empty() || Instant::now() > deadline {
            return Err(format!(
                "sinks did not open their flows: {}",
                failed.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let host_ip: std::net::Ipv4Addr = HOST_IP.parse().map_err(|_| "bad HOST_IP")?;
    let peer_ip: std::net::Ipv4Addr = PEER_IP.parse().map_err(|_| "bad PEER_IP")?;
    let streams = streams(def, (peer_ip, PEER_MAC), (host_ip, HOST_MAC));
    let stop = Arc::clone(&opts.stop);
    let progress = opts.progress;
    let duration = Duration::from_secs_f64(def.duration_s);
    let (netns, iface) = (host.driver.netns.clone(), host.driver.iface.clone());
    let ticker = progress.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut p = Progress::new("7 on nemflow", duration.as_secs_f64(), true);
            while t.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                p.tick(t.elapsed().as_secs_f64(), "");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let sent = pacer::run(&netns, &iface, &streams, duration, &stop)?;
    if let Some(t) = ticker {
        let _ = t.join();
    }
    // Let the slow sink work through what it holds (the sinks live until stopped below), then
    // read the driver's drop log.
    std::thread::sleep(Duration::from_secs(3));
    let driver = DriverClient::connect(&host.driver.socket)?;
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        match driver.call(&DriverRequest::DropLog { after, max: 2048 }, &[])? {
            DriverReply::DropLog(entries) if !entries.is_empty() => {
                after = entries.last().map_or(after, |e| e.seq);
                log.extend(entries);
            }
            _ => break,
        }
    }
    // The driver's own count per sink, while their flows still exist.
    let mut per_sink_counts = String::new();
    if let DriverReply::FlowStats(stats) =
        driver.call(&DriverRequest::FlowStats { id: None }, &[])?
    {
        let per_sink: Vec<String> = ids
            .iter()
            .zip(&def.receivers)
            .filter_map(|(id, r)| {
                let s = stats.iter().find(|s| s.id == *id)?;
                Some(format!(
                    "{}: delivered {}, dropped {} (no buffer)",
                    r.name, s.rx_packets, s.rx_dropped_no_buffer
                ))
            })
            .collect();
        per_sink_counts = per_sink.join("; ");
    }
    children.stop_all();
    let sinks: Vec<SinkResult> = def
        .receivers
        .iter()
        .enumerate()
        .map(|(i, r)| read_sink(&keep(&logs, &format!("{}.sink.log", r.port), opts), i))
        .collect();
    let rx_drops: Vec<_> = log
        .iter()
        .filter(|e| e.reason == DropReason::RxNoBuffer)
        .collect();
    let drops_of = |id: FlowId| rx_drops.iter().filter(|e| e.flow == Some(id)).count() as u64;
    let mut checks = Vec::new();
    let last = ids.len() - 1;
    let (id2, got2, sent2) = (ids[last], sinks[last].received, sent[last]);
    checks.push(Check::new(
        "sink 2: received + driver-logged drops = sent",
        got2 + drops_of(id2) == sent2,
        format!(
            "{got2} + {} = {} (sent {sent2})",
            drops_of(id2),
            got2 + drops_of(id2)
        ),
    ));
    let foreign = rx_drops.iter().filter(|e| e.flow != Some(id2)).count();
    checks.push(Check::new(
        "every receive drop in the driver log is sink 2's",
        foreign == 0 && !rx_drops.is_empty(),
        format!("{} drops logged, {foreign} of other flows", rx_drops.len()),
    ));
    checks.push(Check::info("the driver's count per sink", per_sink_counts));
    if let DriverReply::PortInfo(p) = driver.call(&DriverRequest::PortInfo, &[])? {
        let kernel_drops = tap_tx_dropped(&host.driver.netns, &host.driver.iface);
        let qdisc_drops = qdisc_dropped(&host.driver.netns, &host.driver.iface);
        checks.push(Check::info(
            "frames lost before the driver saw them",
            format!(
                "sent {}, the port received {}; port rx_missed {}, rx_nombuf {}; remote host: tap tx dropped {}, its queue dropped {} (the tap could not take them)",
                sent.iter().sum::<u64>(),
                p.rx_packets,
                p.rx_missed,
                p.rx_nombuf,
                kernel_drops.map_or("?".into(), |d| d.to_string()),
                qdisc_drops.map_or("?".into(), |d| d.to_string())
            ),
        ));
    }
    let json = serde_json::to_string_pretty(
        &log.iter()
            .map(|e| serde_json::json!({"seq": e.seq, "time_ns": e.time_ns, "flow": e.flow.map(|f| f.0), "reason": format!("{:?}", e.reason), "len": e.len}))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(opts.out.join("7-droplog.json"), json).map_err(|e| e.to_string())?;
    host.stop_and_keep_logs(&opts.out)?;
    if let Some((stalls, max_gap_us)) = driver_loop_stalls(&opts.out.join("driver.log")) {
        checks.push(Check::info(
            "the driver's poll loop",
            format!(
                "{stalls} rounds came over 1 ms late, the longest gap {:.1} ms (a late round \
                 delays every flow's frames alike)",
                max_gap_us as f64 / 1000.0
            ),
        ));
    }
    Ok((NemflowRun { sinks, sent }, checks))
}

/// The driver's count of poll-loop rounds that came over 1 ms late and its longest gap between
/// rounds (µs), from the line it logs when it stops.
fn driver_loop_stalls(log: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("driver stopping"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some((field("loop_stalls_over_1ms")?, field("loop_max_gap_us")?))
}

/// The same sinks on Linux sockets, fed the same schedule over a veth pair; returns what they
/// saw and what was sent to each.
/// What the Linux run saw: the sinks, what was sent to each, and where the kernel dropped.
#[derive(Debug)]
struct LinuxRun {
    sinks: Vec<SinkResult>,
    sent: Vec<u64>,
    kernel_drops: String,
}

fn on_linux(def: &Definition, opts: &RunOptions) -> Result<LinuxRun, String> {
    let logs = log_dir()?;
    let link = VethLink::new(def.link_rate_bps * 10)?;
    let sink_bin = nemflow_testkit::driver::workspace_binary("linux-udp-sink");
    let mut children = Children::default();
    for r in &def.receivers {
        let log = std::fs::File::create(logs.path().join(format!("{}.linux-sink.log", r.port)))
            .map_err(|e| e.to_string())?;
        let mut cmd = in_netns(link.host.name(), &sink_bin.to_string_lossy());
        if r.cpu_guarantee {
            cmd = realtime(cmd);
        }
        let child = cmd
            .args([
                "--bind",
                &SocketAddrV4::new(LINUX_HOST, r.port).to_string(),
                "--seconds",
                &format!("{:.3}", def.duration_s + 60.0),
            ])
            .args(sink_costs(r))
            .stdout(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start linux-udp-sink: {e}"))?;
        children.push(r.name.clone(), child);
    }
    // The source starts once every sink holds its socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    for r in &def.receivers {
        loop {
            let out = link
                .host
                .exec(&["ss", "-Hnul", &format!("sport = :{}", r.port)])?;
            if !out.stdout.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("linux-udp-sink on port {} did not start", r.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mac = |ns: &nemflow_testkit::Netns, iface: &str| -> Result<[u8; 6], String> {
        let out = ns.exec(&["cat", &format!("/sys/class/net/{iface}/address")])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        text.parse::<nemflow_config::MacAddr>().map(|m| m.0)
    };
    let streams = streams(
        def,
        (LINUX_REMOTE, mac(&link.remote, &link.remote_if)?),
        (LINUX_HOST, mac(&link.host, &link.host_if)?),
    );
    let stop = Arc::new(AtomicBool::new(false));
    if opts.progress {
        eprintln!("  7 on Linux:   {:.0} s", def.duration_s);
    }
    let sent = pacer::run(
        link.remote.name(),
        &link.remote_if,
        &streams,
        Duration::from_secs_f64(def.duration_s),
        &stop,
    )?;
    std::thread::sleep(Duration::from_secs(3));
    children.stop_all();
    let kernel_drops = linux_drops(&link);
    let sinks = def
        .receivers
        .iter()
        .enumerate()
        .map(|(i, r)| read_sink(&keep(&logs, &format!("{}.linux-sink.log", r.port), opts), i))
        .collect();
    Ok(LinuxRun {
        sinks,
        sent,
        kernel_drops,
    })
}

/// The receiving host's kernel drop counters: the veth's receive drops and UDP's.
fn linux_drops(link: &VethLink) -> String {
    let veth = link
        .host
        .exec(&[
            "cat",
            &format!("/sys/class/net/{}/statistics/rx_dropped", link.host_if),
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let snmp = link
        .host
        .exec(&["cat", "/proc/net/snmp"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let field = |name: &str| -> String {
        match udp.as_slice() {
            [names, values, ..] => names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .unwrap_or("?")
                .to_string(),
            _ => "?".into(),
        }
    };
    format!(
        "veth rx_dropped {veth}, UDP RcvbufErrors {}, InErrors {}",
        field("RcvbufErrors"),
        field("InErrors")
    )
}

/// Frames the remote host's kernel dropped sending into the tap (its queue to the driver full).
fn tap_tx_dropped(netns: &str, iface: &str) -> Option<u64> {
    let out = in_netns(netns, "cat")
        .arg(format!("/sys/class/net/{iface}/statistics/tx_dropped"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The same command run under `chrt -f 5` (SCHED_FIFO, priority 5).
fn realtime(cmd: std::process::Command) -> std::process::Command {
    let mut rt = std::process::Command::new("chrt");
    rt.args(["-f", "5"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            rt.env(k, v);
        }
    }
    rt
}

/// Where receivers write their per-datagram logs while they run: memory (`/dev/shm`), so a log
/// write never waits for the disk and so never delays a receiver.
fn log_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("nemflow-exp-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| e.to_string())
}

/// Copies a log from `logs` into the output directory; returns the copy's path.
fn keep(logs: &tempfile::TempDir, name: &str, opts: &RunOptions) -> std::path::PathBuf {
    let dest = opts.out.join(name);
    if std::fs::copy(logs.path().join(name), &dest).is_err() {
        return logs.path().join(name);
    }
    dest
}

/// Frames the remote host's queue discipline on the tap dropped (`tc -s qdisc`): what it sent
/// faster than the tap, and so the driver, took them.
fn qdisc_dropped(netns: &str, iface: &str) -> Option<u64> {
    let out = in_netns(netns, "tc")
        .args(["-s", "qdisc", "show", "dev", iface])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for line in text.lines().filter(|l| l.contains("dropped")) {
        let n = line
            .split("dropped")
            .nth(1)?
            .trim()
            .split([',', ' '])
            .next()?
            .parse::<u64>()
            .ok()?;
        total += n;
    }
    Some(total)
}
