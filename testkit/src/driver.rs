//! A real `nemflow-driver` process on a net_tap device whose kernel side lives in a network
//! namespace (the remote host), and a client that plays the flow manager on its control socket.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nemflow_proto::ctl::{DriverReply, DriverRequest};
use nemflow_proto::wire;

use crate::{unique_name, DpdkPrefixGuard};

/// The host's address in test topologies.
pub const HOST_IP: &str = "10.77.0.1";
/// The remote host's address.
pub const PEER_IP: &str = "10.77.0.2";

/// How to start a test driver.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Link rate the driver paces to.
    pub rate_bps: u64,
    /// Further YAML appended to the generated config (e.g. a `flowmgr:` section).
    pub extra_yaml: String,
    /// Further keys of the `port:` section, each line indented by two spaces (e.g.
    /// `"  mbufs: 127\n"`).
    pub port_yaml: String,
    /// Further keys of the `driver:` section, each line indented by two spaces (e.g.
    /// `"  burst: 256\n"`).
    pub driver_yaml: String,
    /// The driver's idle mode: `adaptive` (default) or `busy`.
    pub idle: &'static str,
    /// Entries the driver's drop log keeps.
    pub drop_log_entries: u32,
    /// SCHED_FIFO priority of the data path (adaptive idle only).
    pub realtime_priority: Option<u8>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            rate_bps: 1_000_000_000,
            extra_yaml: String::new(),
            port_yaml: String::new(),
            driver_yaml: String::new(),
            idle: "adaptive",
            drop_log_entries: 4096,
            // As on a real host: the data path wakes on time however busy the machine is.
            realtime_priority: Some(10),
        }
    }
}

/// A running driver; stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct DriverProcess {
    child: Child,
    /// The control socket.
    pub socket: PathBuf,
    /// The remote host's network namespace.
    pub netns: String,
    /// The tap interface (inside `netns`).
    pub iface: String,
    /// The config file the driver runs with.
    pub config: PathBuf,
    /// The driver's stderr, collected in a file.
    pub log: PathBuf,
    prefix: DpdkPrefixGuard,
    _dir: tempfile::TempDir,
}

/// The path of a workspace binary built with the running executable: next to it (a binary in
/// `target/<profile>/`) or one level up (a test in `target/<profile>/deps/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(name);
    if beside.exists() || dir.file_name().is_none_or(|d| d != "deps") {
        return beside;
    }
    dir.parent().map(|p| p.join(name)).unwrap_or(beside)
}

impl DriverProcess {
    /// Starts `binary` (the `nemflow-driver` executable) and waits until its control socket
    /// answers.
    pub fn start(binary: &Path, opts: &DriverOptions) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let prefix = DpdkPrefixGuard::new("drv");
        let iface = unique_name("nfd");
        let netns = unique_name("nfr");
        let socket = dir.path().join("driver.sock");
        let config = dir.path().join("driver.yaml");
        let log = dir.path().join("driver.log");
        let yaml = format!(
            "eal:\n  file_prefix: {prefix}\n  memory_mb: 512\nport:\n  vdev: net_tap0,iface={iface}\n  tap_peer:\n    netns: {netns}\n    ip: {PEER_IP}/24\n{port_extra}host:\n  ip: {HOST_IP}/24\n  mac: \"02:4e:46:00:00:01\"\nlink:\n  rate_bps: {rate}\ndriver:\n  control_socket: {sock}\n  idle: {idle}\n  drop_log_entries: {drops}\n{rt}{driver_extra}{extra}",
            prefix = prefix.prefix,
            rate = opts.rate_bps,
            sock = socket.display(),
            extra = opts.extra_yaml,
            port_extra = opts.port_yaml,
            driver_extra = opts.driver_yaml,
            idle = opts.idle,
            drops = opts.drop_log_entries,
            rt = opts
                .realtime_priority
                .map_or(String::new(), |p| format!("  realtime_priority: {p}\n")),
        );
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = spawn_driver(binary, &config, &log)?;
        let mut driver = Self {
            child,
            socket,
            netns,
            iface,
            config,
            log,
            prefix,
            _dir: dir,
        };
        driver.wait_ready()?;
        Ok(driver)
    }

    /// Waits until the control socket answers (or the driver exits, or 20 s pass).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("driver exited with {status}: {}", self.log_text()));
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("driver not ready after 20 s: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the driver with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `binary` again with the same configuration (file prefix, tap, namespace, socket),
    /// as a supervisor would after a crash; the log is appended to. The previous process must
    /// have ended ([`kill`](Self::kill) or [`stop`](Self::stop)).
    pub fn restart(&mut self, binary: &Path) -> Result<(), String> {
        if let Ok(None) = self.child.try_wait() {
            return Err("the driver is still running".into());
        }
        self.child = spawn_driver(binary, &self.config, &self.log)?;
        self.wait_ready()
    }

    /// What the driver logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A fresh control connection.
    pub fn client(&self) -> Result<DriverClient, String> {
        DriverClient::connect(&self.socket)
    }

    /// The DPDK file prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix.prefix
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the driver with SIGTERM and waits for it; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

/// Starts the driver with `config`, its stderr appended to `log`.
fn spawn_driver(binary: &Path, config: &Path, log: &Path) -> Result<Child, String> {
    let logfile = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    // The driver owns the NIC and must run when its deadlines come: on a small shared
    // machine it gets a higher priority than the tests' own threads and neighbours.
    Command::new("nice")
        .args(["-n", "-10"])
        .arg(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        // Whatever the driver did not clean (it was killed), we do.
        let _ = crate::ip(&["netns", "del", &self.netns]);
        if crate::iface_exists(&self.iface) {
            let _ = crate::ip(&["link", "del", &self.iface]);
        }
    }
}

/// A control-socket client: the test's flow manager.
#[derive(Debug)]
pub struct DriverClient {
    stream: UnixStream,
}

impl DriverClient {
    /// Connects to a driver's control socket.
    pub fn connect(path: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { stream })
    }

    /// Sends a request (with fds) and waits up to 5 s for the reply.
    pub fn call(
        &self,
        request: &DriverRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<DriverReply, String> {
        wire::call(&self.stream, request, fds, 0, Some(Duration::from_secs(5)))
            .map(|(reply, _)| reply)
            .map_err(|e| e.to_string())
    }

    /// The raw stream (for sending malformed bytes).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}
