//! End to end on net_tap: the real driver, the flow manager binary, and a network namespace as
//! the remote host using Debian's own tools (ping, ip neigh, Linux sockets through python3).
//! Needs root and the workspace's `nemflow-driver` binary (`./run test` builds it).

// Test fixtures: a failure to set up must fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest, ErrorKind};
use nemflow_proto::FlowId;
use nemflow_testkit::driver::{workspace_binary, DriverOptions, DriverProcess, HOST_IP};

/// A real driver on net_tap with its remote-host namespace, and a flow manager on it.
struct Host {
    flowmgr: Child,
    socket: PathBuf,
    driver: DriverProcess,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        nemflow_testkit::require_root();
        let bin = workspace_binary("nemflow-driver");
        assert!(
            bin.exists(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins; ./run test does)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        // The unprivileged client at the end must reach the socket inside.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let socket = dir.path().join("fm.sock");
        let opts = DriverOptions {
            extra_yaml: format!(
                "flowmgr:\n  socket: {}\n  socket_mode: 0o666\n",
                socket.display()
            ),
            ..DriverOptions::default()
        };
        let driver = DriverProcess::start(&bin, &opts).unwrap();
        // One configuration for both daemons, as on a real host.
        let flowmgr = common::spawn_flowmgr(&driver.config, &socket);
        Host {
            flowmgr,
            socket,
            driver,
            _dir: dir,
        }
    }

    /// Runs `python3 -c SCRIPT` in the remote host's namespace; returns its stdout.
    fn remote_python(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.driver.netns, "python3", "-c", script])
            .output()
            .expect("python3 in the remote namespace");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// What a connected Linux UDP socket on the remote host sees after sending to `port`.
    fn udp_probe(&self, port: u16) -> String {
        self.remote_python(&format!(
            "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('{HOST_IP}', {port}))\ns.settimeout(0.5)\ns.send(b'probe')\ntry:\n    s.recv(64); print('data')\nexcept ConnectionRefusedError: print('ECONNREFUSED')\nexcept TimeoutError: print('timeout')\n"
        ))
    }

    fn counter(&self, name: &str) -> u64 {
        let mut c = nemflow_flowmgr::client::Client::connect(&self.socket).unwrap();
        let s = c.stats().unwrap();
        s.flowmgr
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        common::stop(&mut self.flowmgr);
    }
}

#[test]
fn the_remote_host_pings_resolves_and_is_refused_with_its_own_tools() {
    let h = Host::start();
    let ns = h.driver.netns.clone();
    // ping gets echo replies.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", HOST_IP,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 received"), "{text}");
    // The kernel's neighbour table learned our MAC through our ARP replies.
    let neigh = Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "neigh", "show", HOST_IP])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(neigh.contains("lladdr 02:4e:46:00:00:01"), "{neigh}");
    // UDP to a closed port: port unreachable, which a connected socket reports as ECONNREFUSED.
    assert_eq!(h.udp_probe(9), "ECONNREFUSED");
    // TCP to a closed port: RST, which connect() reports as ECONNREFUSED.
    let tcp = h.remote_python(&format!(
        "import socket\ntry:\n    socket.create_connection(('{HOST_IP}', 80), timeout=2); print('connected')\nexcept ConnectionRefusedError: print('ECONNREFUSED')\n"
    ));
    assert_eq!(tcp, "ECONNREFUSED");
    assert!(h.counter("echo_replies") >= 3);
    assert!(h.counter("arp_replies_sent") >= 1);
    assert_eq!(h.counter("udp_port_unreachable"), 1);
    assert_eq!(h.counter("tcp_resets"), 1);
    // We resolve the remote host with ARP too.
    let (ok, out, err) = common::nemflow(&h.socket, &["resolve", "10.77.0.2"], None);
    assert!(ok, "{err}");
    assert!(out.contains("lladdr"), "{out}");
}

#[test]
fn kill_9_removes_the_flow_from_the_driver_and_the_port_is_refused_again() {
    let h = Host::start();
    let (mut app, line, id) = common::hold_flow(&h.socket, &["udp", "--port", "7000"]);
    assert!(line.contains(":7000"), "{line}");
    let fid = FlowId(id);
    let drv = h.driver.client().unwrap();
    let in_driver = |drv: &nemflow_testkit::driver::DriverClient| match drv
        .call(&DriverRequest::FlowStats { id: Some(fid) }, &[])
    {
        Ok(DriverReply::FlowStats(v)) => !v.is_empty(),
        Ok(DriverReply::Error {
            kind: ErrorKind::NotFound,
            ..
        }) => false,
        other => panic!("{other:?}"),
    };
    // The driver installs the flow right after the open is answered (pipelined).
    let t = Instant::now();
    while !in_driver(&drv) {
        assert!(t.elapsed() < Duration::from_secs(2), "flow not installed");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The flow takes the datagram: no refusal while it exists.
    assert_eq!(h.udp_probe(7000), "timeout");
    let t = Instant::now();
    app.kill().unwrap();
    app.wait().unwrap();
    let gone = loop {
        if !in_driver(&drv) {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "flow still in the driver"
        );
        std::thread::sleep(Duration::from_micros(500));
    };
    eprintln!("kill -9 to flow gone from the real driver: {gone:?}");
    assert!(gone < Duration::from_millis(100), "{gone:?}");
    let (_, flows, _) = common::nemflow(&h.socket, &["flows"], None);
    assert!(!flows.contains(":7000"), "{flows}");
    // A later datagram to that port gets port unreachable.
    assert_eq!(h.udp_probe(7000), "ECONNREFUSED");
    // And the port can be had again (by an unprivileged user, even).
    let mut c = Command::new(env!("CARGO_BIN_EXE_nemflow"));
    c.arg("--socket")
        .arg(&h.socket)
        .args(["open", "udp", "--port", "7000"]);
    c.uid(common::NOBODY).gid(common::NOBODY);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn staged_in_driver(drv: &nemflow_testkit::driver::DriverClient) -> u32 {
    match drv.call(&DriverRequest::PortInfo, &[]).unwrap() {
        DriverReply::PortInfo(p) => p.staged,
        other => panic!("{other:?}"),
    }
}

/// Waits until the driver holds `n` staged pairs.
fn wait_staged(drv: &nemflow_testkit::driver::DriverClient, n: u32) {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let now = staged_in_driver(drv);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "driver holds {now} staged pairs, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_reserved_open_reaches_the_remote_host_and_a_killed_reserve_goes_back_to_the_driver() {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddrV4;
    use std::process::Stdio;

    use nemflow_flowmgr::client::Client;
    use nemflow_proto::app::OpenFlow;
    use nemflow_testkit::frames::UdpFrame;

    let h = Host::start();
    let drv = h.driver.client().unwrap();
    // The flow manager's own staged pairs (STAGED_PAIRS), once it has been idle.
    wait_staged(&drv, 4);

    // The remote host listens on UDP 7100 with a Linux socket.
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &h.driver.netns, "python3", "-u", "-c"])
        .arg("import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 7100))\ns.settimeout(5)\nprint('ready')\nd,a=s.recvfrom(64)\nprint(d.decode(), a[1])\n")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(listener.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    let mut c = Client::connect(&h.socket).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while !c.reserve().unwrap() {
        assert!(Instant::now() < end, "no pair to reserve");
        std::thread::sleep(Duration::from_millis(5));
    }
    let remote: SocketAddrV4 = "10.77.0.2:7100".parse().unwrap();
    let flow = c.open(&OpenFlow::udp(7101, Some(remote))).unwrap();
    assert!(flow.reserved());
    let fib = flow.fib.clone();
    let (mut tx, _rx) = flow.attach().unwrap();
    let frame = UdpFrame {
        src_mac: fib.src_mac,
        dst_mac: fib.next_hop_mac.expect("the remote host resolved"),
        ..UdpFrame::new(fib.local, remote, b"reserved")
    }
    .build();
    // The driver installs the filter after the open's reply: it serves the transmit channel
    // once it has.
    let ext = tx.alloc(frame.len()).unwrap().unwrap();
    tx.buf_mut(ext).unwrap().copy_from_slice(&frame);
    tx.push(nemflow_rbuf::IoRec::single(ext, 0)).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "reserved 7101");
    let _ = listener.wait();
    assert_eq!(h.counter("opens_reserved"), 1);
    drop((tx, c));
    wait_staged(&drv, 4);

    // A process killed holding a reserve it never used: its pair goes back to the driver.
    let mut app = common::hold_reserve(&h.socket);
    wait_staged(&drv, 5);
    app.kill().unwrap();
    app.wait().unwrap();
    wait_staged(&drv, 4);
    assert_eq!(h.counter("reserves_dropped"), 1);
}
