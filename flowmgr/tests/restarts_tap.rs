//! Restarts, with real processes on net_tap (a network namespace as the remote host): the flow
//! manager killed with SIGKILL and started again, the driver killed with SIGKILL and both
//! started again (as systemd would), and the driver refusing a second flow manager while one is
//! connected. Apps are the workspace's `udp-blast` and `udp-sink`; what moves on the link is
//! counted at the remote host (its interface's receive counter).
//!
//! Needs root and the workspace's binaries (`cargo build --workspace --bins`; `./run test` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::{Client, ClientError};
use nemflow_proto::app::OpenFlow;
use nemflow_proto::ctl::{DriverReply, DriverRequest, ErrorKind};
use nemflow_proto::FlowId;
use nemflow_testkit::driver::{workspace_binary, DriverClient, DriverOptions, HOST_IP, PEER_IP};
use nemflow_testkit::system::NemflowHost;

/// Where the apps send: the remote host (no socket listens there; frames are counted at its
/// interface).
fn remote() -> String {
    format!("{PEER_IP}:9000")
}

/// A link slow enough that a blasting app costs little CPU on a shared 2-core machine:
/// 10 Mbit/s, about 1 200 frames of 1 042 bytes a second.
fn host() -> NemflowHost {
    let opts = DriverOptions {
        rate_bps: 10_000_000,
        ..DriverOptions::default()
    };
    NemflowHost::start(&opts, "").expect("driver and flow manager start")
}

/// An app process, killed and reaped when dropped; its stderr goes to a file.
struct App {
    child: Child,
    stderr: PathBuf,
    name: String,
}

impl App {
    fn spawn(h: &NemflowHost, bin: &str, args: &[&str]) -> App {
        let tag = args.join("_").replace(['/', ':', '.'], "-");
        let stderr = h.dir().join(format!("{bin}-{tag}.err"));
        let file = std::fs::File::create(&stderr).unwrap();
        let child = h
            .app(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (build the workspace's binaries first)"));
        App {
            child,
            stderr,
            name: bin.into(),
        }
    }

    fn err_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the app to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        nemflow_testkit::system::wait_exit(&mut self.child, timeout)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames the remote host's interface received so far.
fn peer_rx(h: &NemflowHost) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &h.driver.netns, "cat"])
        .arg(format!(
            "/sys/class/net/{}/statistics/rx_packets",
            h.driver.iface
        ))
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Frames the remote host receives in `window`.
fn peer_rx_during(h: &NemflowHost, window: Duration) -> u64 {
    let a = peer_rx(h);
    std::thread::sleep(window);
    peer_rx(h) - a
}

/// Ids of the flows the driver holds.
fn driver_flows(drv: &DriverClient) -> Vec<FlowId> {
    match drv.call(&DriverRequest::FlowStats { id: None }, &[]) {
        Ok(DriverReply::FlowStats(v)) => v.iter().map(|s| s.id).collect(),
        other => panic!("FlowStats: {other:?}"),
    }
}

/// Channel pairs the driver holds staged for future flows.
fn staged_pairs(drv: &DriverClient) -> u32 {
    match drv.call(&DriverRequest::PortInfo, &[]) {
        Ok(DriverReply::PortInfo(p)) => p.staged,
        other => panic!("PortInfo: {other:?}"),
    }
}

/// Waits up to `timeout` for `pred`; whether it held.
fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Opens a flow in a new app that sends for a second (about 1 200 frames at the link's rate);
/// asserts that it exits cleanly and that the remote host received at least 300 frames
/// meanwhile (what the app queued when it exits goes with its flow).
fn a_new_flow_works(h: &NemflowHost) {
    let before = peer_rx(h);
    let mut app = App::spawn(
        h,
        "udp-blast",
        &["--remote", &remote(), "--payload", "1000", "--seconds", "1"],
    );
    let status = app.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "new flow after the restart: {status:?}: {}",
        app.err_text()
    );
    let got = peer_rx(h) - before;
    assert!(got >= 300, "the remote host received {got} frames in 1 s");
}

/// The last line the flow manager wrote (its exit reason when it stopped with an error).
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn flowmgr_kill_9_keeps_flows_moving_refuses_opens_at_once_and_its_restart_removes_stale_flows_timing(
) {
    let mut h = host();
    let drv = h.driver.client().unwrap();
    let mut blast = App::spawn(
        &h,
        "udp-blast",
        &["--remote", &remote(), "--payload", "1000"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || driver_flows(&drv).len() == 2),
        "the app's flow was not installed: {}",
        blast.err_text()
    );
    let stale = driver_flows(&drv);
    let app_flow = *stale.iter().find(|f| **f != FlowId(1)).unwrap();
    let before = peer_rx_during(&h, Duration::from_secs(1));
    assert!(before >= 300, "the app's flow moves {before} frames/s");
    assert!(
        wait_until(Duration::from_secs(5), || staged_pairs(&drv) > 0),
        "the idle flow manager staged no channel pairs"
    );

    h.kill_flowmgr();
    // Pairs staged for future flows serve no app: they go with the flow manager's connection.
    assert!(
        wait_until(Duration::from_secs(2), || staged_pairs(&drv) == 0),
        "{} staged pairs left behind",
        staged_pairs(&drv)
    );

    // New requests: refused at once, with the reason, never a hang.
    let t = Instant::now();
    let refused = Client::connect(&h.socket);
    let took = t.elapsed();
    match refused {
        Err(e @ ClientError::NotRunning { .. }) => {
            assert_eq!(
                e.errno(),
                rustix::io::Errno::CONNREFUSED.raw_os_error(),
                "{e}"
            );
            let text = e.to_string();
            assert!(text.contains("is nemflow-flowmgr running?"), "{text}");
        }
        other => panic!("open while the flow manager is down: {other:?}"),
    }
    assert!(took < Duration::from_millis(100), "refusal took {took:?}");
    // An app started meanwhile fails with that line, at once.
    let t = Instant::now();
    let mut late = App::spawn(&h, "udp-blast", &["--remote", &remote(), "--count", "1"]);
    let status = late.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{}",
        late.err_text()
    );
    assert!(
        late.err_text().contains("no flow manager at"),
        "{}",
        late.err_text()
    );
    assert!(took < Duration::from_secs(3), "the late app took {took:?}");

    // Meanwhile the orphaned flow keeps moving, at the remote host, at its rate.
    let during = peer_rx_during(&h, Duration::from_secs(1));
    eprintln!("frames/s at the remote host: {before} before the kill, {during} while the flow manager is down");
    assert!(
        during * 2 >= before,
        "{during} frames/s while down, {before} before"
    );
    assert!(blast.running(), "the app stopped: {}", blast.err_text());
    assert_eq!(driver_flows(&drv), stale, "the driver kept the flows");

    // A new flow manager removes every stale flow; the app learns its flow is revoked.
    let restarted = Instant::now();
    h.restart_flowmgr().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || !driver_flows(&drv)
            .contains(&app_flow)),
        "stale flow {app_flow} still in the driver"
    );
    let status = blast.wait_exit(Duration::from_secs(3));
    let revoked_after = restarted.elapsed();
    let err = blast.err_text();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {err}");
    assert!(
        err.contains(&format!("flow {app_flow} revoked")) && err.contains("restarted"),
        "{err}"
    );
    eprintln!("flow manager restart to the app's Revoked: {revoked_after:?}");
    let log = h.flowmgr_log_text();
    assert!(
        log.contains("removed 2 stale flows a previous flow manager left in the driver"),
        "{log}"
    );
    // Its traffic stopped: nothing but the new flow manager's own announcements.
    let after = peer_rx_during(&h, Duration::from_millis(500));
    assert!(
        after < 10,
        "{after} frames after the stale flow was removed"
    );
    a_new_flow_works(&h);
}

/// A TCP client on the remote host: connects to `HOST_IP:port` (retrying while the app starts),
/// has "hello" echoed, then waits idle for `idle_s` seconds and says how the connection ended
/// (`reset`, `eof`, `data` or `timeout`). Idle, it sends nothing that could draw an RST from
/// the flow manager's last-resort handler: only a flow manager that resets on its own ends it.
fn idle_tcp_client(h: &NemflowHost, port: u16, idle_s: u32) -> Child {
    let script = format!(
        "import socket, time\n\
         for i in range(100):\n    \
             try:\n        s = socket.create_connection(('{HOST_IP}', {port}), timeout=1); break\n    \
             except OSError: time.sleep(0.1)\n\
         s.sendall(b'hello'); print('echoed', s.recv(100).decode(), flush=True)\n\
         s.settimeout({idle_s})\n\
         try:\n    b = s.recv(100); print('data' if b else 'eof', flush=True)\n\
         except ConnectionResetError: print('reset', flush=True)\n\
         except socket.timeout: print('timeout', flush=True)\n"
    );
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.driver.netns,
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_restarted_flow_manager_resets_the_tcp_connections_a_killed_one_left_open_timing() {
    let mut h = host();
    let drv = h.driver.client().unwrap();
    let _echo = App::spawn(&h, "tcp-echo", &["--port", "7007"]);
    let mut client = idle_tcp_client(&h, 7007, 10);
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "echoed hello", "the connection did not work");
    // The host flow, the listening port's flow and the connection's.
    assert_eq!(driver_flows(&drv).len(), 3);

    h.kill_flowmgr();
    std::thread::sleep(Duration::from_millis(300));
    let restarted = Instant::now();
    h.restart_flowmgr().unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let took = restarted.elapsed();
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(
        line.trim(),
        "reset",
        "the remote's connection after the restart: {}",
        h.flowmgr_log_text()
    );
    eprintln!("flow manager restart to the remote's reset: {took:?}");
    assert!(took < Duration::from_secs(2), "reset took {took:?}");
    let log = h.flowmgr_log_text();
    assert!(log.contains("stale connection reset"), "{log}");
    assert!(
        log.contains("removed 3 stale flows a previous flow manager left in the driver"),
        "{log}"
    );
}

#[test]
fn driver_kill_9_revokes_apps_at_once_stops_the_flowmgr_with_its_reason_and_leaves_nothing_stale_timing(
) {
    let mut h = host();
    let drv = h.driver.client().unwrap();
    let prefix = h.driver.prefix().to_owned();
    let runtime_dir = nemflow_testkit::dpdk_runtime_dir(&prefix);
    let (netns, iface) = (h.driver.netns.clone(), h.driver.iface.clone());
    // Blocked in recv, polling without blocking, and blocked in send on a full channel.
    let mut apps = [
        App::spawn(&h, "udp-sink", &["--port", "7000", "--quiet"]),
        App::spawn(
            &h,
            "udp-sink",
            &["--port", "7001", "--quiet", "--nonblocking"],
        ),
        App::spawn(
            &h,
            "udp-blast",
            &[
                "--remote",
                &remote(),
                "--payload",
                "1000",
                "--tx-slots",
                "16",
            ],
        ),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || driver_flows(&drv).len() == 4),
        "flows not installed: {:?}",
        apps.iter().map(App::err_text).collect::<Vec<_>>()
    );
    assert!(peer_rx_during(&h, Duration::from_millis(300)) > 0);
    drop(drv);
    assert!(runtime_dir.exists());

    let killed = Instant::now();
    h.driver.kill();

    // The flow manager notices, revokes every flow, and exits non-zero with one line.
    let status = h.wait_flowmgr_exit(Duration::from_secs(3));
    let fm_took = killed.elapsed();
    let log = h.flowmgr_log_text();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {log}");
    assert_eq!(
        last_line(&log),
        "nemflow-flowmgr: driver lost: the driver closed its control connection (it exited or was killed)"
    );
    assert!(!h.socket.exists(), "the flow manager's socket was left");
    // Every app wakes (blocked or not) with Revoked, naming the reason.
    for app in &mut apps {
        let status = app.wait_exit(Duration::from_secs(3));
        let err = app.err_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{}: {status:?}: {err}",
            app.name
        );
        assert!(
            err.contains("revoked: flow manager stopped: driver lost"),
            "{}: {err}",
            app.name
        );
    }
    let apps_took = killed.elapsed();
    eprintln!(
        "driver killed: flow manager out after {fm_took:?}, every app revoked after {apps_took:?}"
    );
    assert!(apps_took < Duration::from_secs(2), "{apps_took:?}");

    // Nothing of the dead driver but what only its next start can tidy: the tap went with the
    // process; the namespace and DPDK's runtime directory stay until then.
    let links = Command::new("ip")
        .args(["-n", &netns, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(!links.contains(&iface), "{links}");
    assert!(!nemflow_testkit::iface_exists(&iface));
    let huge: Vec<_> = std::fs::read_dir("/dev/hugepages")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(huge.is_empty(), "hugepage files left: {huge:?}");

    // A restarted driver (same prefix, tap, namespace, socket) starts cleanly over them.
    h.driver
        .restart(&workspace_binary("nemflow-driver"))
        .expect("driver restart");
    let dlog = h.driver.log_text();
    assert!(
        dlog.contains(
            "removed DPDK's runtime directory a driver that did not exit cleanly left behind"
        ),
        "{dlog}"
    );
    assert!(
        dlog.contains(
            "removed the tap peer namespace a driver that did not exit cleanly left behind"
        ),
        "{dlog}"
    );
    h.restart_flowmgr().unwrap();
    assert!(h
        .flowmgr_log_text()
        .contains("no stale flows in the driver"));
    a_new_flow_works(&h);

    // And a clean stop leaves nothing at all.
    let logs = tempfile::tempdir().unwrap();
    h.stop_and_keep_logs(logs.path()).unwrap();
    assert!(!runtime_dir.exists(), "{} left", runtime_dir.display());
    assert!(!Path::new("/run/netns").join(&netns).exists());
}

/// The driver's config with another application socket for a second flow manager.
fn second_config(h: &NemflowHost) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(&h.driver.config).unwrap();
    let socket = h.dir().join("second.sock");
    let mine = format!("socket: {}", h.socket.display());
    assert!(text.contains(&mine), "{text}");
    let text = text.replace(&mine, &format!("socket: {}", socket.display()));
    let config = h.dir().join("second.yaml");
    std::fs::write(&config, text).unwrap();
    (config, socket)
}

fn flowmgr(config: &Path) -> Command {
    let mut c = Command::new(workspace_binary("nemflow-flowmgr"));
    c.arg("--config").arg(config).env("RUST_LOG", "warn");
    c
}

#[test]
fn a_second_flow_manager_is_refused_while_one_is_connected_and_accepted_once_it_is_gone() {
    let mut h = host();
    let drv = h.driver.client().unwrap();
    let first = h.flowmgr_pid();
    let (config, socket) = second_config(&h);

    // A second flow manager stops at start with the driver's reason; the first keeps its flow.
    let out = flowmgr(&config)
        .stdin(Stdio::null())
        .output()
        .expect("nemflow-flowmgr");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert_eq!(
        last_line(&err),
        format!(
            "nemflow-flowmgr: driver refused removing stale flows: another flow manager (pid {first}) is connected to this driver: it serves one at a time (stop that one first)"
        )
    );
    assert!(!socket.exists(), "the refused one left its socket");
    assert_eq!(driver_flows(&drv), vec![FlowId(1)]);
    let mut c = Client::connect(&h.socket).expect("the first still serves");
    let f = c
        .open(&OpenFlow::udp(5000, None))
        .expect("the first still opens flows");
    // Installed right after the open's reply, pipelined.
    assert!(wait_until(Duration::from_secs(2), || driver_flows(&drv)
        .contains(&f.id())));

    // On the control socket itself: reading is open to any root client, changing flows is not.
    let other = h.driver.client().unwrap();
    assert!(matches!(
        other.call(
            &DriverRequest::Hello {
                client: "test".into()
            },
            &[]
        ),
        Ok(DriverReply::Hello(_))
    ));
    assert_eq!(driver_flows(&other).len(), 2);
    match other.call(&DriverRequest::RemoveFlow { id: f.id() }, &[]) {
        Ok(DriverReply::Error {
            kind: ErrorKind::Busy,
            message,
        }) => assert!(message.contains(&format!("pid {first}")), "{message}"),
        r => panic!("a second connection changed flows: {r:?}"),
    }
    assert!(driver_flows(&drv).contains(&f.id()));
    drop(other);

    // Once the first is gone, the next one is the driver's flow manager.
    drop(c);
    h.kill_flowmgr();
    let mut second = flowmgr(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(10), || {
        Client::connect(&socket).is_ok() || !matches!(second.try_wait(), Ok(None))
    });
    let serving = Client::connect(&socket);
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    assert!(
        up && serving.is_ok(),
        "{serving:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_driver_starting_with_a_live_drivers_prefix_leaves_its_runtime_dir_alone() {
    let h = host();
    let prefix = h.driver.prefix().to_owned();
    let runtime_dir = nemflow_testkit::dpdk_runtime_dir(&prefix);
    assert!(runtime_dir.join("config").exists());
    // Same file prefix; its own tap, namespace and control socket.
    let iface = nemflow_testkit::unique_name("nfx");
    let netns = nemflow_testkit::unique_name("nfy");
    let _iface_guard = nemflow_testkit::IfaceGuard(iface.clone());
    let socket = h.dir().join("second-driver.sock");
    let text = std::fs::read_to_string(&h.driver.config)
        .unwrap()
        .replace(
            &format!("iface={}", h.driver.iface),
            &format!("iface={iface}"),
        )
        .replace(
            &format!("netns: {}", h.driver.netns),
            &format!("netns: {netns}"),
        )
        .replace(
            &format!("control_socket: {}", h.driver.socket.display()),
            &format!("control_socket: {}", socket.display()),
        );
    let config = h.dir().join("second-driver.yaml");
    std::fs::write(&config, text).unwrap();
    let mut second = Command::new(workspace_binary("nemflow-driver"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        !matches!(second.try_wait(), Ok(None))
    });
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let _ = nemflow_testkit::ip(&["netns", "del", &netns]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        exited && !out.status.success(),
        "the second driver started: {err}"
    );
    assert!(err.contains("another primary"), "{err}");
    // The live driver's directory is whole, and it still serves.
    assert!(runtime_dir.join("config").exists());
    assert!(runtime_dir.join("dpdk_telemetry.v2").exists());
    let drv = h.driver.client().unwrap();
    assert_eq!(driver_flows(&drv), vec![FlowId(1)]);
}
