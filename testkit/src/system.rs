//! A whole nemflow host for end-to-end tests and experiments: the real driver on net_tap (its
//! remote host in a network namespace) and the real flow manager on it, sharing one config.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::driver::{workspace_binary, DriverOptions, DriverProcess};

/// A running driver and flow manager. Dropping it stops the flow manager, then the driver.
#[derive(Debug)]
pub struct NemflowHost {
    flowmgr: Child,
    /// The flow manager's application socket (`NEMFLOW_FLOWMGR_SOCKET` for apps).
    pub socket: PathBuf,
    /// The flow manager's log.
    pub flowmgr_log: PathBuf,
    /// The driver (and its remote-host namespace).
    pub driver: DriverProcess,
    dir: tempfile::TempDir,
}

impl NemflowHost {
    /// Starts both daemons from the workspace's binaries. `flowmgr_yaml` is extra YAML for the
    /// `flowmgr:` section (indented by two spaces), e.g. policy for a test.
    pub fn start(opts: &DriverOptions, flowmgr_yaml: &str) -> Result<Self, String> {
        crate::require_root();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Unprivileged test clients must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let socket = dir.path().join("flowmgr.sock");
        let mut opts = opts.clone();
        opts.extra_yaml = format!(
            "{}flowmgr:\n  socket: {}\n  socket_mode: 0o666\n{flowmgr_yaml}",
            opts.extra_yaml,
            socket.display()
        );
        let driver_bin = workspace_binary("nemflow-driver");
        let flowmgr_bin = workspace_binary("nemflow-flowmgr");
        for bin in [&driver_bin, &flowmgr_bin] {
            if !bin.exists() {
                return Err(format!(
                    "{} is missing: build the workspace's binaries first (cargo build --workspace --bins; ./run test does)",
                    bin.display()
                ));
            }
        }
        let driver = DriverProcess::start(&driver_bin, &opts)?;
        let flowmgr_log = dir.path().join("flowmgr.log");
        std::fs::File::create(&flowmgr_log).map_err(|e| e.to_string())?;
        let flowmgr = spawn_flowmgr(&driver.config, &socket, &flowmgr_log)?;
        Ok(Self {
            flowmgr,
            socket,
            flowmgr_log,
            driver,
            dir,
        })
    }

    /// Kills the flow manager with SIGKILL (it cleans nothing up) and reaps it.
    pub fn kill_flowmgr(&mut self) {
        let _ = self.flowmgr.kill();
        let _ = self.flowmgr.wait();
    }

    /// Starts the flow manager again on the same configuration (as a supervisor would) and
    /// waits until it serves; its log is appended to. The previous one must have ended.
    pub fn restart_flowmgr(&mut self) -> Result<(), String> {
        if let Ok(None) = self.flowmgr.try_wait() {
            return Err("the flow manager is still running".into());
        }
        self.flowmgr = spawn_flowmgr(&self.driver.config, &self.socket, &self.flowmgr_log)?;
        Ok(())
    }

    /// Waits up to `timeout` for the flow manager to exit; its exit status, if it did.
    pub fn wait_flowmgr_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.flowmgr, timeout)
    }

    /// What the flow manager logged so far (all its runs).
    pub fn flowmgr_log_text(&self) -> String {
        std::fs::read_to_string(&self.flowmgr_log).unwrap_or_default()
    }

    /// Stops the flow manager, then the driver, and copies both daemons' logs into `dir`
    /// (`driver.log`, `flowmgr.log`).
    pub fn stop_and_keep_logs(&mut self, dir: &Path) -> Result<(), String> {
        stop_child(&mut self.flowmgr);
        self.driver.stop();
        std::fs::copy(&self.driver.log, dir.join("driver.log")).map_err(|e| e.to_string())?;
        std::fs::copy(&self.flowmgr_log, dir.join("flowmgr.log")).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A directory that lives as long as the host (for app logs and the like).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The flow manager's process id.
    pub fn flowmgr_pid(&self) -> u32 {
        self.flowmgr.id()
    }

    /// A command for a workspace binary (an app), pointed at this host's flow manager.
    pub fn app(&self, name: &str) -> Command {
        let mut cmd = Command::new(workspace_binary(name));
        cmd.env("NEMFLOW_FLOWMGR_SOCKET", &self.socket);
        cmd
    }
}

impl Drop for NemflowHost {
    fn drop(&mut self) {
        stop_child(&mut self.flowmgr);
    }
}

/// Starts `nemflow-flowmgr --config CONFIG` (stderr appended to `log`) and waits until it
/// serves `socket`.
fn spawn_flowmgr(config: &Path, socket: &Path, log: &Path) -> Result<Child, String> {
    let flowmgr_bin = workspace_binary("nemflow-flowmgr");
    let logfile = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let mut flowmgr = Command::new(&flowmgr_bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", flowmgr_bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = flowmgr.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("nemflow-flowmgr exited with {status}: {text}"));
        }
        if Instant::now() > deadline {
            let _ = flowmgr.kill();
            let _ = flowmgr.wait();
            return Err("nemflow-flowmgr did not come up within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(flowmgr)
}

/// Waits up to `timeout` for `child` to exit; its exit status, if it did.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stops a child with SIGTERM (SIGKILL after 5 s) and reaps it.
pub fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}
