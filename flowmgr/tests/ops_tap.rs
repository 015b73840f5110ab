//! Operating nemflow with the tools people already use, end to end on net_tap: the Prometheus
//! endpoint against the driver's own counters, `dpdk-telemetry.py`, `nemflow capture` against
//! what the remote host's tcpdump saw, `nemflow up`/`down` leaving nothing behind, and
//! `nemflow top` in a real terminal (tmux). Needs root, the workspace's binaries, Debian's
//! `dpdk` (dpdk-telemetry.py), `tcpdump` and `tmux`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Client;
use nemflow_proto::ctl::{DriverReply, DriverRequest, FlowStats, PortInfo};
use nemflow_proto::FlowId;
use nemflow_testkit::driver::{workspace_binary, DriverClient, DriverOptions, PEER_IP};
use nemflow_testkit::system::{stop_child, NemflowHost};

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a flow with local port `port` exists, in the flow manager and in the driver
/// (which installs it just after the open is answered); its id.
fn wait_flow(host: &NemflowHost, port: u16) -> FlowId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = Client::connect(&host.socket) {
            if let Ok(flows) = c.all_flows() {
                if let Some(f) = flows.iter().find(|f| f.local.port() == port && f.id.0 > 1) {
                    let installed = host.driver.client().is_ok_and(|d| {
                        matches!(
                            d.call(&DriverRequest::FlowStats { id: Some(f.id) }, &[]),
                            Ok(DriverReply::FlowStats(v)) if !v.is_empty()
                        )
                    });
                    if installed {
                        return f.id;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no flow on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn blast(host: &NemflowHost, args: &[&str]) -> Child {
    host.app("udp-blast")
        .args(["--remote", &format!("{PEER_IP}:9"), "--local-port", "7001"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("udp-blast")
}

fn flow_stats(drv: &DriverClient, id: FlowId) -> FlowStats {
    match drv
        .call(&DriverRequest::FlowStats { id: Some(id) }, &[])
        .unwrap()
    {
        DriverReply::FlowStats(v) => v.into_iter().next().unwrap(),
        r => panic!("{r:?}"),
    }
}

fn port_info(drv: &DriverClient) -> PortInfo {
    match drv.call(&DriverRequest::PortInfo, &[]).unwrap() {
        DriverReply::PortInfo(p) => p,
        r => panic!("{r:?}"),
    }
}

fn value(v: &prometheus_parse::Value) -> f64 {
    match v {
        prometheus_parse::Value::Counter(x)
        | prometheus_parse::Value::Gauge(x)
        | prometheus_parse::Value::Untyped(x) => *x,
        other => panic!("unexpected sample {other:?}"),
    }
}

/// The value of `metric` whose `label` is `want`.
fn sample(s: &prometheus_parse::Scrape, metric: &str, label: &str, want: &str) -> u64 {
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == metric && x.labels.get(label) == Some(want))
        .unwrap_or_else(|| panic!("no {metric}{{{label}=\"{want}\"}}"));
    value(&found.value) as u64
}

/// Parses an exposition strictly enough to catch a malformed one: every sample line parses,
/// every family is `nemflow_`, counters' samples end in `_total`, the text ends with `# EOF`.
fn parse_exposition(text: &str) -> prometheus_parse::Scrape {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every sample line parses"
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut w = line.split_whitespace().skip(2);
        let (name, kind) = (w.next().unwrap(), w.next().unwrap());
        assert!(name.starts_with("nemflow_"), "{line}");
        if kind == "counter" {
            let total = format!("{name}_total");
            assert!(
                scrape.samples.iter().any(|s| s.metric == total),
                "counter {name} has _total samples"
            );
            assert!(
                !scrape.samples.iter().any(|s| s.metric == name),
                "counter {name}: only _total samples"
            );
        }
    }
    scrape
}

#[test]
fn metrics_move_with_traffic_and_match_the_drivers_counters() {
    let port = free_port();
    let host = NemflowHost::start(
        &DriverOptions::default(),
        &format!("  metrics: 127.0.0.1:{port}\n"),
    )
    .unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // 5% of the 1 Gbit/s link, no slack: traffic enough to count, light on a shared machine.
    let mut app = blast(&host, &["--slice-ms", "5", "--seconds", "3"]);
    let fid = wait_flow(&host, 7001);
    std::thread::sleep(Duration::from_millis(300));
    let drv = host.driver.client().unwrap();
    let flow = fid.0.to_string();

    // Each scrape is bracketed by the driver's own counters, read just before and after.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (fb, pb) = (flow_stats(&drv, fid), port_info(&drv));
        let text = nemflow_flowmgr::metrics::scrape(addr).unwrap();
        let (fa, pa) = (flow_stats(&drv, fid), port_info(&drv));
        let s = parse_exposition(&text);
        let tx = sample(&s, "nemflow_flow_tx_packets_total", "flow", &flow);
        let tx_bytes = sample(&s, "nemflow_flow_tx_bytes_total", "flow", &flow);
        let port_tx = sample(&s, "nemflow_port_tx_packets_total", "port", &pb.name);
        assert!(
            (fb.tx_packets..=fa.tx_packets).contains(&tx),
            "{} <= {tx} <= {}",
            fb.tx_packets,
            fa.tx_packets
        );
        assert!((fb.tx_bytes..=fa.tx_bytes).contains(&tx_bytes));
        assert!((pb.tx_packets..=pa.tx_packets).contains(&port_tx));
        let app_label = s
            .samples
            .iter()
            .find(|x| {
                x.metric == "nemflow_flow_tx_packets_total"
                    && x.labels.get("flow") == Some(flow.as_str())
            })
            .and_then(|x| x.labels.get("app").map(str::to_owned));
        assert_eq!(app_label.as_deref(), Some("udp-blast"));
        let reserved = s
            .samples
            .iter()
            .find(|x| {
                x.metric == "nemflow_flow_reserved_ratio"
                    && x.labels.get("flow") == Some(flow.as_str())
            })
            .map(|x| value(&x.value))
            .unwrap();
        assert!((reserved - 0.05).abs() < 1e-9, "5 ms of 100 ms: {reserved}");
        seen.push((tx, tx_bytes, port_tx));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(seen[1].0 > seen[0].0, "flow packets move: {seen:?}");
    assert!(seen[1].1 > seen[0].1, "flow bytes move: {seen:?}");
    assert!(seen[1].2 > seen[0].2, "port packets move: {seen:?}");
    assert!(app.wait().unwrap().success());

    // The flow manager's own counters are there, and the endpoint counts its scrapes.
    let text = nemflow_flowmgr::metrics::scrape(addr).unwrap();
    let s = parse_exposition(&text);
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "nemflow_flowmgr_flows_opened_total" && value(&x.value) >= 1.0));
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "nemflow_metrics_scrapes_total" && value(&x.value) >= 3.0));
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "nemflow_up" && value(&x.value) == 1.0));
}

/// Runs `dpdk-telemetry.py -f PREFIX` with `commands` on stdin; one JSON value per command.
fn telemetry(prefix: &str, commands: &[&str]) -> Vec<serde_json::Value> {
    let mut child = Command::new("dpdk-telemetry.py")
        .args(["-f", prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dpdk-telemetry.py (Debian's dpdk package)");
    let mut input = commands.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values.len(), commands.len(), "{text}");
    values
}

#[test]
fn dpdk_telemetry_lists_and_answers_nemflows_commands() {
    let host = NemflowHost::start(&DriverOptions::default(), "").unwrap();
    let mut app = blast(&host, &["--slice-ms", "5", "--seconds", "2"]);
    let fid = wait_flow(&host, 7001);
    // Snapshots are published every 100 ms: let one with traffic in it appear.
    std::thread::sleep(Duration::from_millis(400));
    let flow_cmd = format!("/nemflow/flow,{}", fid.0);
    let v = telemetry(
        host.driver.prefix(),
        &[
            "/",
            "/nemflow/flows",
            &flow_cmd,
            "/nemflow/sched",
            "/nemflow/port",
            "/ethdev/stats,0",
            "/nemflow/flow,999999",
        ],
    );
    let list: Vec<&str> = v[0]["/"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for cmd in [
        "/nemflow/flows",
        "/nemflow/flow",
        "/nemflow/sched",
        "/nemflow/port",
        "/ethdev/stats",
    ] {
        assert!(list.contains(&cmd), "{cmd} listed: {list:?}");
    }
    let flows: Vec<u64> = v[1]["/nemflow/flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        flows.contains(&1) && flows.contains(&u64::from(fid.0)),
        "{flows:?}"
    );
    let f = &v[2]["/nemflow/flow"];
    assert_eq!(f["flow_id"].as_u64(), Some(u64::from(fid.0)), "{f}");
    assert!(f["tx_packets"].as_u64().unwrap() > 0, "{f}");
    assert!(f["tx_bytes"].as_u64().unwrap() >= 1000 * f["tx_packets"].as_u64().unwrap());
    assert_eq!(f["slice_ns"].as_u64(), Some(5_000_000), "{f}");
    assert_eq!(f["period_ns"].as_u64(), Some(100_000_000), "{f}");
    assert!(f["snapshot_age_ms"].as_u64().unwrap() < 5_000, "{f}");
    let s = &v[3]["/nemflow/sched"];
    assert_eq!(s["rate_bps"].as_u64(), Some(1_000_000_000), "{s}");
    assert!(s["admitted_ppm"].as_u64().unwrap() >= 50_000, "{s}");
    let ids: Vec<u64> = s["flow_id"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(ids.contains(&u64::from(fid.0)), "{s}");
    assert!(
        s["guaranteed_ns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_u64() > Some(0)),
        "{s}"
    );
    let p = &v[4]["/nemflow/port"];
    assert_eq!(p["name"].as_str(), Some("net_tap0"), "{p}");
    let e = &v[5]["/ethdev/stats"];
    let (ours, dpdks) = (
        p["tx_packets"].as_u64().unwrap(),
        e["opackets"].as_u64().unwrap(),
    );
    assert!(
        ours > 0 && ours <= dpdks,
        "a snapshot of the same counter: {ours} <= {dpdks}"
    );
    assert!(v[6]["/nemflow/flow"].is_null(), "unknown flow: {}", v[6]);
    assert!(app.wait().unwrap().success());
}

/// Frames of a pcap file.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        assert_eq!(p.data.len() as u32, p.orig_len, "whole frames");
        v.push(p.data.into_owned());
    }
    v
}

fn tcpdump_read(path: &Path) -> String {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(path)
        .output()
        .expect("tcpdump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// tcpdump on the remote host's side of the tap, writing `path`; returns once it listens.
fn remote_tcpdump(host: &NemflowHost, path: &Path, filter: &str) -> Child {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.driver.netns,
            "tcpdump",
            "-nn",
            "-U",
            "-i",
            &host.driver.iface,
            "-w",
        ])
        .arg(path)
        .args(filter.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("tcpdump listening");
    child
}

fn capture(host: &NemflowHost, flow: FlowId, direction: &str, out: &Path, count: u32) -> Child {
    Command::new(workspace_binary("nemflow"))
        .args([
            "capture",
            "--flow",
            &flow.0.to_string(),
            "--direction",
            direction,
            "-c",
            &count.to_string(),
            "-w",
        ])
        .arg(out)
        .arg("--driver-socket")
        .arg(&host.driver.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nemflow capture")
}

#[test]
fn a_capture_holds_the_frames_the_remote_host_saw() {
    let host = NemflowHost::start(&DriverOptions::default(), "").unwrap();
    let dir = host.dir().to_owned();
    let (ours, theirs) = (dir.join("flow.pcap"), dir.join("remote.pcap"));
    let mut remote = remote_tcpdump(&host, &theirs, "udp and src port 7001");
    // 1% of 1 Gbit/s: a pace the remote tcpdump keeps up with.
    let mut app = blast(&host, &["--slice-ms", "1", "--seconds", "2"]);
    let fid = wait_flow(&host, 7001);
    let cap = capture(&host, fid, "tx", &ours, 200)
        .wait_with_output()
        .unwrap();
    let summary = String::from_utf8_lossy(&cap.stderr).into_owned();
    assert!(cap.status.success(), "{summary}");
    assert!(
        summary.contains("200 frames written (200 sent, 0 received); 0 dropped"),
        "{summary}"
    );
    assert!(app.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    // SIGINT, so that tcpdump flushes its file.
    Command::new("kill")
        .args(["-INT", &remote.id().to_string()])
        .status()
        .unwrap();
    remote.wait().unwrap();

    let text = tcpdump_read(&ours);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("IP 10.77.0.1.7001 > 10.77.0.2.9: ")),
        "{text}"
    );
    let mine = frames(&ours);
    let seen = frames(&theirs);
    let start = seen
        .iter()
        .position(|f| *f == mine[0])
        .expect("the first captured frame reached the remote host");
    assert!(
        seen.len() >= start + mine.len(),
        "remote saw {} frames from {start}",
        seen.len()
    );
    assert!(
        seen[start..start + mine.len()] == mine[..],
        "the same frames, byte for byte, in the same order"
    );

    // Both directions of the flow manager's own flow: echo requests in, replies out.
    let cap = capture(&host, FlowId(1), "both", &ours, 4);
    std::thread::sleep(Duration::from_millis(300));
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.driver.netns,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.77.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let cap = wait_output(cap, Duration::from_secs(10));
    assert!(
        cap.status.success(),
        "{}",
        String::from_utf8_lossy(&cap.stderr)
    );
    let text = tcpdump_read(&ours);
    assert!(
        text.contains("10.77.0.2 > 10.77.0.1: ICMP echo request"),
        "{text}"
    );
    assert!(
        text.contains("10.77.0.1 > 10.77.0.2: ICMP echo reply"),
        "{text}"
    );
}

/// Waits for a child up to `timeout` (then kills it and fails).
fn wait_output(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            stop_child(&mut child);
            panic!("{child:?} did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A host brought up with `nemflow up`: its config, directories and names.
struct UpHost {
    dir: tempfile::TempDir,
    config: PathBuf,
    prefix: nemflow_testkit::DpdkPrefixGuard,
    iface: String,
    netns: String,
}

impl UpHost {
    fn new(extra_port_args: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = nemflow_testkit::DpdkPrefixGuard::new("up");
        let iface = nemflow_testkit::unique_name("nfu");
        let netns = nemflow_testkit::unique_name("nfun");
        let config = dir.path().join("nemflow.yaml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "eal:\n  file_prefix: {p}\n  memory_mb: 512\nport:\n  vdev: net_tap0,iface={iface}{extra_port_args}\n  tap_peer:\n    netns: {netns}\n    ip: {PEER_IP}/24\nhost:\n  ip: 10.77.0.1/24\ndriver:\n  control_socket: {d}/sock/driver.sock\nflowmgr:\n  socket: {d}/sock/flowmgr.sock\n",
                p = prefix.prefix
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            prefix,
            iface,
            netns,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn nemflow(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_binary("nemflow"))
            .args(args)
            .arg("--run-dir")
            .arg(self.path("run"))
            .output()
            .unwrap()
    }

    fn up(&self) -> std::process::Output {
        let mut a = vec!["up", "--config"];
        let cfg = self.config.to_str().unwrap();
        a.push(cfg);
        let log = self.path("log");
        a.extend([
            "--log-dir",
            log.to_str().unwrap(),
            "--timeout",
            "20",
            "--json-logs",
        ]);
        self.nemflow(&a)
    }

    fn pid(&self, file: &str) -> i32 {
        std::fs::read_to_string(self.path("run").join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for UpHost {
    fn drop(&mut self) {
        // Whatever a failed test left running goes down the ordinary way.
        let _ = self.nemflow(&["down"]);
        let _ = nemflow_testkit::ip(&["netns", "del", &self.netns]);
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
fn live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn up_brings_the_host_up_and_down_leaves_nothing_behind() {
    nemflow_testkit::require_root();
    let h = UpHost::new("");
    let out = h.up();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("nemflow up") && text.contains("dpdk-telemetry.py -f"),
        "{text}"
    );
    let (driver, flowmgr) = (h.pid("driver.pid"), h.pid("flowmgr.pid"));
    assert!(live(driver) && live(flowmgr));
    let (dsock, fsock) = (h.path("sock/driver.sock"), h.path("sock/flowmgr.sock"));
    assert!(dsock.exists() && fsock.exists());
    let runtime = nemflow_testkit::dpdk_runtime_dir(&h.prefix.prefix);
    assert!(runtime.join("dpdk_telemetry.v2").exists());
    assert!(netns_exists(&h.netns));
    // Both daemons log JSON lines (--json-logs).
    for (log, message) in [
        ("log/driver.log", "driver ready"),
        ("log/flowmgr.log", "flow manager up"),
    ] {
        let text = std::fs::read_to_string(h.path(log)).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("{log}: {text}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["fields"]["message"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{line}"
        );
        assert_eq!(v["level"].as_str(), Some("INFO"), "{line}");
    }
    // It serves: the flow manager answers, and the remote host reaches it.
    let mut c = Client::connect(&fsock).unwrap();
    assert!(c.all_flows().unwrap().iter().any(|f| f.id == FlowId(1)));
    drop(c);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.netns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "10.77.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // A second `up` refuses, naming the running daemon.
    let again = h.up();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("running already"));

    let out = h.nemflow(&["down"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("flow manager (pid {flowmgr}) stopped")),
        "{text}"
    );
    assert!(
        text.contains(&format!("driver (pid {driver}) stopped")),
        "{text}"
    );
    // Nothing left: processes, sockets, pid files, tap, namespace, DPDK runtime and hugepage files.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (live(driver) || live(flowmgr)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!live(driver), "driver process gone");
    assert!(!live(flowmgr), "flow manager process gone");
    assert!(!dsock.exists(), "driver socket removed");
    assert!(!fsock.exists(), "flow manager socket removed");
    assert!(
        !h.path("run").exists(),
        "pid files and run directory removed"
    );
    assert!(!nemflow_testkit::iface_exists(&h.iface), "no tap left");
    assert!(!netns_exists(&h.netns), "no namespace left");
    assert!(!runtime.exists(), "no /var/run/dpdk/{}", h.prefix.prefix);
    if let Ok(dir) = std::fs::read_dir("/dev/hugepages") {
        for e in dir.flatten() {
            assert!(
                !e.file_name()
                    .to_string_lossy()
                    .starts_with(&h.prefix.prefix),
                "hugepage file {e:?} left"
            );
        }
    }
    let out = h.nemflow(&["down"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("driver was not running"));
}

#[test]
fn up_says_why_a_daemon_did_not_start() {
    nemflow_testkit::require_root();
    let h = UpHost::new("");
    // The tap's name is taken: the driver refuses with its own one line.
    nemflow_testkit::ip(&["tuntap", "add", &h.iface, "mode", "tap"]).unwrap();
    let _taken = nemflow_testkit::IfaceGuard(h.iface.clone());
    let out = h.up();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(err.contains("the driver exited"), "{err}");
    assert!(
        err.contains(&format!(
            "nemflow-driver: network interface `{}` already exists",
            h.iface
        )),
        "{err}"
    );
    assert!(
        !h.path("run/driver.pid").exists(),
        "no pid file for a daemon that is not running"
    );
    assert!(!nemflow_testkit::dpdk_runtime_dir(&h.prefix.prefix).exists());
}

/// A tmux server of the test's own (`-L`), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_in_a_terminal_shows_the_running_flows_and_quits_on_q() {
    let host = NemflowHost::start(&DriverOptions::default(), "").unwrap();
    let mut app = blast(&host, &["--slice-ms", "5", "--seconds", "4"]);
    let fid = wait_flow(&host, 7001);
    let tmux = Tmux(nemflow_testkit::unique_name("nftop"));
    let top = format!(
        "NEMFLOW_FLOWMGR_SOCKET={} {} top -d 0.3",
        host.socket.display(),
        workspace_binary("nemflow").display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "30",
        &top,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait for a screen with the flow and a rate measured over an interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    let screen = loop {
        let out = tmux.cmd(&["capture-pane", "-p", "-t", "top"]);
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = screen
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{} udp-blast", fid.0)));
        if let Some(row) = row {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // FLOW APP PROTO LOCAL REMOTE TX-Mb/s ...: a sending flow shows a rate.
            if cols
                .get(5)
                .and_then(|c| c.parse::<f64>().ok())
                .is_some_and(|r| r > 0.0)
            {
                break screen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no live row for flow {fid}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(screen.contains("nemflow top"), "{screen}");
    assert!(
        screen.contains("RESV%") && screen.contains("SLACK%") && screen.contains("RX DROPS"),
        "{screen}"
    );
    let row = screen.lines().find(|l| l.contains("udp-blast")).unwrap();
    assert!(
        row.contains("10.77.0.1:7001") && row.contains("5.00"),
        "reservation 5%: {row}"
    );
    assert!(screen.contains("(flow manager)"), "{screen}");
    // q quits: the session's only window closes with it.
    assert!(tmux.cmd(&["send-keys", "-t", "top", "q"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux.cmd(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(app.wait().unwrap().success());
}
