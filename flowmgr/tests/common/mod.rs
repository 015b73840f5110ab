//! A flow manager process (the real binary) against the fake driver, in a temporary directory.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // test helper: failing loudly is the point

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nemflow_flowmgr::client::Client;
use nemflow_flowmgr::testing::FakeDriver;

/// The neighbour the fake driver answers ARP for.
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Its MAC.
pub const PEER_MAC: [u8; 6] = [2, 0x4e, 0x46, 0xff, 0, 2];
/// The gateway (answered too).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// Its MAC.
pub const GATEWAY_MAC: [u8; 6] = [2, 0x4e, 0x46, 0xff, 0, 0xfe];
/// A uid with no privileges.
pub const NOBODY: u32 = 65534;

/// A running flow manager with its fake driver.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub fake: FakeDriver,
    pub daemon: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
}

/// Starts `nemflow-flowmgr --config CONFIG` and waits until it serves `socket`.
pub fn spawn_flowmgr(config: &std::path::Path, socket: &std::path::Path) -> Child {
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_nemflow-flowmgr"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nemflow-flowmgr");
    let end = Instant::now() + Duration::from_secs(10);
    while Client::connect(socket).is_err() {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("nemflow-flowmgr exited with {status}");
        }
        assert!(Instant::now() < end, "flow manager did not come up");
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon
}

/// Stops a daemon with SIGTERM (SIGKILL after 5 s) and reaps it.
pub fn stop(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// Runs `nemflow ARGS` against `socket`; returns (success, stdout, stderr).
pub fn nemflow(
    socket: &std::path::Path,
    args: &[&str],
    uid: Option<u32>,
) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nemflow"));
    c.arg("--socket").arg(socket).args(args);
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(uid);
    }
    let out = c.output().expect("run nemflow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `nemflow --socket SOCKET open ARGS --hold`; returns the child, its FIB line and the
/// flow id. The flow lives until the child dies.
pub fn hold_flow(socket: &std::path::Path, args: &[&str]) -> (Child, String, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nemflow"))
        .arg("--socket")
        .arg(socket)
        .arg("open")
        .args(args)
        .arg("--hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn nemflow open --hold");
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read FIB line");
    let id = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no flow id in {line:?}"));
    (child, line, id)
}

/// `nemflow reserve --hold` on `socket`: a process holding a reserved channel pair it never
/// uses, once it has said so.
pub fn hold_reserve(socket: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nemflow"))
        .arg("--socket")
        .arg(socket)
        .args(["reserve", "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn nemflow reserve --hold");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the reserve's line");
    assert_eq!(line.trim(), "reserved");
    child
}

/// The config file for a flow manager in `dir`; `flowmgr_extra` lines are indented two spaces.
pub fn config_text(dir: &std::path::Path, flowmgr_extra: &str) -> String {
    let extra: String = flowmgr_extra.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "port:\n  vdev: net_null0\nhost:\n  ip: 10.77.0.1/24\n  mac: \"02:4e:46:00:00:01\"\n  gateway: 10.77.0.254\n  routes:\n    - dest: 10.1.0.0/16\n      via: 10.77.0.5\nlink:\n  rate_bps: 100000000\ndriver:\n  control_socket: {}/driver.sock\nflowmgr:\n  socket: {}/fm.sock\n  socket_mode: 0o666\n  arp_retry_ms: 50\n  arp_retries: 3\n  client_timeout_ms: 300\n{extra}",
        dir.display(),
        dir.display()
    );
    // Keys given in `flowmgr_extra` replace the defaults above.
    let keys: Vec<&str> = flowmgr_extra
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    let mut out = String::new();
    let mut in_flowmgr = false;
    for line in text.lines() {
        if line == "flowmgr:" {
            in_flowmgr = true;
        }
        let key = line.trim().split(':').next().unwrap_or_default();
        let default_line = in_flowmgr && line.starts_with("  ") && !extra.contains(line);
        if default_line && keys.contains(&key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Harness {
    /// Starts the fake driver and the daemon; waits until the daemon serves its socket.
    pub fn start(flowmgr_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other uids (the policy tests) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let fake = FakeDriver::start(&dir.path().join("driver.sock")).expect("fake driver");
        fake.add_neighbour(PEER, PEER_MAC);
        fake.add_neighbour(GATEWAY, GATEWAY_MAC);
        let config = dir.path().join("flowmgr.yaml");
        std::fs::write(&config, config_text(dir.path(), flowmgr_extra)).expect("config");
        let socket = dir.path().join("fm.sock");
        let daemon = spawn_flowmgr(&config, &socket);
        Harness {
            dir,
            fake,
            daemon,
            socket,
            config,
        }
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    /// Open fds of the daemon process.
    pub fn daemon_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.daemon.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until the daemon has `n` fds open; returns the last count seen.
    pub fn wait_fds(&self, n: usize, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            let k = self.daemon_fds();
            if k == n || Instant::now() >= end {
                return k;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `nemflow ARGS`; returns (success, stdout, stderr).
    pub fn run_nemflow(&self, args: &[&str], uid: Option<u32>) -> (bool, String, String) {
        nemflow(&self.socket, args, uid)
    }

    /// Starts `nemflow open ARGS --hold`; see [`hold_flow`].
    pub fn hold_flow(&self, args: &[&str]) -> (Child, String, u32) {
        hold_flow(&self.socket, args)
    }

    /// A counter from the daemon's stats.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.client().stats().expect("stats");
        stats
            .flowmgr
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        stop(&mut self.daemon);
    }
}
