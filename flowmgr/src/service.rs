//! The life cycle of a nemflow host: `nemflow up` starts the driver, then the flow manager, each
//! once the one before it serves its socket, and leaves them running detached (own process
//! group, stdin closed, logs in files, pid files in the run directory); `nemflow down` stops the
//! flow manager first (it removes every flow from the driver), then the driver (which removes its
//! tap interface, the remote-host namespace, its socket and DPDK's runtime directory).
//!
//! On a real host systemd does the same from `dist/systemd/` (`Type=notify`: both daemons call
//! [`notify_ready`] when they serve).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nemflow_config::Config;
use nemflow_proto::ctl::{DriverReply, DriverRequest};
use rustix::process::{kill_process, Pid, Signal};

use crate::client::Client;
use crate::driver::{DriverLink, SocketDriver};

/// Where pid files go by default.
pub const RUN_DIR: &str = "/run/nemflow";
/// Where the daemons' logs go by default.
pub const LOG_DIR: &str = "/var/log/nemflow";

/// One of the two daemons.
#[derive(Debug, Clone, Copy)]
struct Daemon {
    /// For messages.
    what: &'static str,
    /// Binary name, which is also its `/proc/PID/comm` (15 characters at most).
    bin: &'static str,
    pid_file: &'static str,
    log_file: &'static str,
}

const DRIVER: Daemon = Daemon {
    what: "driver",
    bin: "nemflow-driver",
    pid_file: "driver.pid",
    log_file: "driver.log",
};
const FLOWMGR: Daemon = Daemon {
    what: "flow manager",
    bin: "nemflow-flowmgr",
    pid_file: "flowmgr.pid",
    log_file: "flowmgr.log",
};
/// The config `up` used, for `down`'s clean-up after a daemon had to be killed.
const CONFIG_FILE: &str = "config.path";

/// How to bring a host up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The configuration both daemons run with.
    pub config: PathBuf,
    /// Pid files.
    pub run_dir: PathBuf,
    /// Logs (appended to).
    pub log_dir: PathBuf,
    /// Where `nemflow-driver` and `nemflow-flowmgr` are.
    pub bin_dir: PathBuf,
    /// How long each daemon may take to become ready.
    pub timeout: Duration,
    /// `--log-format json` for both daemons.
    pub json_logs: bool,
}

/// Tells systemd the daemon is ready, when it runs under `Type=notify` (`$NOTIFY_SOCKET`).
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let sent = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(b"READY=1", &a))
        }
        None => sock.send_to(b"READY=1", &path),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// The directory of the running executable (where the daemons are installed beside `nemflow`).
pub fn own_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

/// The pid in `file` if that process is alive and is `d` (not a recycled pid).
fn running(run_dir: &Path, d: Daemon) -> Option<i32> {
    let pid: i32 = fs::read_to_string(run_dir.join(d.pid_file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive_as(pid, d.bin).then_some(pid)
}

/// Whether `pid` is a live (not zombie) process whose command name is `comm`.
fn alive_as(pid: i32, comm: &str) -> bool {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    name.trim_end() == comm && !zombie(pid)
}

fn zombie(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|s| s == "Z" || s == "X")
}

/// What a daemon wrote to its log since `from`: the line saying why it stopped (its own
/// `nemflow-…:` line if there is one, else the last line).
fn why(log: &Path, from: u64, d: Daemon) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let prefix = format!("{}:", d.bin);
    text.lines()
        .rev()
        .find(|l| l.starts_with(&prefix))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .map_or_else(
            || format!("no output (see {})", log.display()),
            str::to_owned,
        )
}

fn spawn(opts: &UpOptions, d: Daemon) -> Result<(Child, PathBuf, u64), String> {
    let bin = opts.bin_dir.join(d.bin);
    if !bin.exists() {
        return Err(format!(
            "{} not found: install it beside nemflow (or build the workspace's binaries)",
            bin.display()
        ));
    }
    let log = opts.log_dir.join(d.log_file);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let from = file.metadata().map(|m| m.len()).unwrap_or(0);
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&opts.config);
    if opts.json_logs {
        cmd.args(["--log-format", "json"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for the shell does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    fs::write(opts.run_dir.join(d.pid_file), format!("{}\n", child.id()))
        .map_err(|e| format!("{}: {e}", opts.run_dir.display()))?;
    Ok((child, log, from))
}

/// Waits until `ready` says yes, the child exits (its log says why) or the time is up.
fn wait_ready(
    child: &mut Child,
    d: Daemon,
    log: &Path,
    from: u64,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the {} exited ({status}): {}",
                d.what,
                why(log, from, d)
            ));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {} is not ready after {} s (see {})",
                d.what,
                timeout.as_secs(),
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the driver, then the flow manager; returns what to tell the user.
pub fn up(opts: &UpOptions) -> Result<String, String> {
    let config = Config::load(&opts.config).map_err(|e| e.to_string())?;
    let opts = UpOptions {
        config: fs::canonicalize(&opts.config)
            .map_err(|e| format!("{}: {e}", opts.config.display()))?,
        ..opts.clone()
    };
    for dir in [&opts.run_dir, &opts.log_dir] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    for d in [DRIVER, FLOWMGR] {
        if let Some(pid) = running(&opts.run_dir, d) {
            return Err(format!(
                "the {} is running already (pid {pid}): `nemflow down` first",
                d.what
            ));
        }
    }
    fs::write(
        opts.run_dir.join(CONFIG_FILE),
        opts.config.as_os_str().as_encoded_bytes(),
    )
    .map_err(|e| format!("{}: {e}", opts.run_dir.display()))?;

    let (mut driver, driver_log, from) = spawn(&opts, DRIVER)?;
    let control = config.driver.control_socket.clone();
    let ready = wait_ready(&mut driver, DRIVER, &driver_log, from, opts.timeout, || {
        SocketDriver::connect(&control, Duration::from_secs(2))
            .and_then(|mut s| {
                s.call(
                    &DriverRequest::Hello {
                        client: "nemflow up".into(),
                    },
                    &[],
                )
            })
            .is_ok_and(|r| matches!(r, DriverReply::Hello(_)))
    });
    if let Err(e) = ready {
        stop_child(&mut driver);
        let _ = fs::remove_file(opts.run_dir.join(DRIVER.pid_file));
        let _ = fs::remove_file(opts.run_dir.join(CONFIG_FILE));
        return Err(e);
    }

    let (mut flowmgr, flowmgr_log, from) = spawn(&opts, FLOWMGR)?;
    let socket = config.flowmgr.socket.clone();
    let ready = wait_ready(
        &mut flowmgr,
        FLOWMGR,
        &flowmgr_log,
        from,
        opts.timeout,
        || Client::connect_as(&socket, "nemflow up").is_ok(),
    );
    if let Err(e) = ready {
        stop_child(&mut flowmgr);
        stop_child(&mut driver);
        for f in [FLOWMGR.pid_file, DRIVER.pid_file, CONFIG_FILE] {
            let _ = fs::remove_file(opts.run_dir.join(f));
        }
        return Err(e);
    }
    let metrics = config
        .flowmgr
        .metrics
        .map_or(String::new(), |a| format!("\nmetrics: http://{a}/metrics"));
    Ok(format!(
        "nemflow up ({config}):\n  driver        pid {dpid:<8} control {control}  log {dlog}\n  flow manager  pid {fpid:<8} socket  {socket}  log {flog}\nDPDK telemetry: dpdk-telemetry.py -f {prefix}{metrics}\n",
        config = opts.config.display(),
        dpid = driver.id(),
        control = control.display(),
        dlog = driver_log.display(),
        fpid = flowmgr.id(),
        socket = socket.display(),
        flog = flowmgr_log.display(),
        prefix = config.eal.file_prefix,
    ))
}

/// SIGTERM, then SIGKILL after 10 s, for a child `up` started and must take back.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// How one daemon went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (no pid file, or a stale one).
    NotRunning,
    /// It exited on SIGTERM.
    Clean(i32),
    /// It had to be killed.
    Killed(i32),
}

/// Stops one daemon by its pid file: SIGTERM, wait up to `timeout`, then SIGKILL.
fn stop(run_dir: &Path, d: Daemon, timeout: Duration) -> Stopped {
    let pid_file = run_dir.join(d.pid_file);
    let result = match running(run_dir, d) {
        None => Stopped::NotRunning,
        Some(raw) => match Pid::from_raw(raw) {
            None => Stopped::NotRunning,
            Some(pid) => {
                let _ = kill_process(pid, Signal::TERM);
                let deadline = Instant::now() + timeout;
                while alive_as(raw, d.bin) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if alive_as(raw, d.bin) {
                    let _ = kill_process(pid, Signal::KILL);
                    while alive_as(raw, d.bin) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Stopped::Killed(raw)
                } else {
                    Stopped::Clean(raw)
                }
            }
        },
    };
    let _ = fs::remove_file(pid_file);
    result
}

/// Removes what a killed driver could not: its socket, tap interface, remote-host namespace and
/// DPDK runtime directory (with any hugepage files of its prefix).
fn clean_after_kill(config: &Config) {
    let _ = fs::remove_file(&config.driver.control_socket);
    let _ = fs::remove_file(&config.flowmgr.socket);
    let prefix = &config.eal.file_prefix;
    let _ = fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
    if let Ok(dir) = fs::read_dir("/dev/hugepages") {
        for e in dir.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}map_"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if let Some(peer) = &config.port.tap_peer {
        let _ = Command::new("ip")
            .args(["netns", "del", &peer.netns])
            .stderr(Stdio::null())
            .status();
    }
    if let Some(iface) = config.port.vdev.as_ref().and_then(|v| v.arg("iface")) {
        let _ = Command::new("ip")
            .args(["link", "del", iface])
            .stderr(Stdio::null())
            .status();
    }
}

/// Stops the flow manager, then the driver; returns what to tell the user.
pub fn down(run_dir: &Path, timeout: Duration) -> Result<String, String> {
    let fm = stop(run_dir, FLOWMGR, timeout);
    let drv = stop(run_dir, DRIVER, timeout);
    let config = fs::read(run_dir.join(CONFIG_FILE))
        .ok()
        .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
    let mut text = String::new();
    for (d, s) in [(FLOWMGR, &fm), (DRIVER, &drv)] {
        text.push_str(&match s {
            Stopped::NotRunning => format!("{} was not running\n", d.what),
            Stopped::Clean(pid) => format!("{} (pid {pid}) stopped\n", d.what),
            Stopped::Killed(pid) => {
                format!(
                    "{} (pid {pid}) did not stop within {} s: killed\n",
                    d.what,
                    timeout.as_secs()
                )
            }
        });
    }
    if matches!(drv, Stopped::Killed(_)) || matches!(fm, Stopped::Killed(_)) {
        match config.as_deref().map(Config::load) {
            Some(Ok(c)) => {
                clean_after_kill(&c);
                text.push_str("removed what the killed daemons left behind\n");
            }
            _ => text.push_str(
                "cannot read the config `up` used: check for a leftover tap, namespace and /var/run/dpdk directory\n",
            ),
        }
    }
    let _ = fs::remove_file(run_dir.join(CONFIG_FILE));
    // Only if empty: the sockets in it are the daemons' to remove.
    let _ = fs::remove_dir(run_dir);
    Ok(text)
}
