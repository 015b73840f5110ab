//! `nemflow-flowmgr`: the flow manager daemon.

#![forbid(unsafe_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_config::Config;
use nemflow_flowmgr::daemon::{bind_app_socket, Daemon};
use nemflow_flowmgr::driver::SocketDriver;
use nemflow_flowmgr::logging::{self, LogFormat};
use nemflow_flowmgr::metrics::MetricsServer;

/// The nemflow flow manager: sets flows up for applications and tears them down, owns the
/// host's ports, routes and ARP cache, and answers ARP, ICMP echo, unmatched UDP (ICMP port
/// unreachable) and unmatched TCP (RST) through its own flow in the driver.
///
/// It needs the driver running (it connects to `driver.control_socket`, root only) and serves
/// applications on `flowmgr.socket`. Logs go to stderr; set RUST_LOG (e.g. `debug`) for more.
/// SIGTERM or SIGINT removes every flow from the driver and the socket file, then exits.
#[derive(Debug, Parser)]
#[command(name = "nemflow-flowmgr", version)]
struct Args {
    /// Configuration file (YAML): the `host` section gives the address, MAC, gateway and
    /// routes; `flowmgr` the socket, policy, limits, ARP and rate settings; `driver` the
    /// driver's control socket; `link.rate_bps` the link admission control divides.
    #[arg(short, long, default_value = nemflow_config::DEFAULT_PATH)]
    config: PathBuf,

    /// Only read and check the configuration, print what the flow manager would use, and exit
    /// (0 when valid, 1 with one line saying what is wrong).
    #[arg(long)]
    check_config: bool,

    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    /// The level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("nemflow-flowmgr: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let fm = &config.flowmgr;
    if args.check_config {
        println!(
            "{}: ok: host {} gateway {} routes {}; app socket {} (mode {:o}); driver {}; ephemeral ports {}-{}; reserve {}; metrics {}",
            args.config.display(),
            config.host.ip,
            config.host.gateway.map_or("none".into(), |g| g.to_string()),
            config.host.routes.len(),
            fm.socket.display(),
            fm.socket_mode,
            config.driver.control_socket.display(),
            fm.ephemeral_ports[0],
            fm.ephemeral_ports[1],
            fm.reserve,
            fm.metrics.map_or("off".into(), |a| format!("http://{a}/metrics")),
        );
        return Ok(());
    }
    let listener = bind_app_socket(&fm.socket, fm.socket_mode).map_err(|e| e.to_string())?;
    let cleanup = || {
        let _ = std::fs::remove_file(&fm.socket);
    };
    // Bound before the daemon starts (a taken port is one clear line, with nothing installed
    // yet); it asks the daemon over the daemon's own socket, once the loop runs.
    let _metrics = match fm.metrics {
        Some(addr) => match MetricsServer::spawn(addr, fm.socket.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                cleanup();
                return Err(format!("metrics endpoint {addr}: {e}"));
            }
        },
        None => None,
    };
    let driver = match SocketDriver::connect(
        &config.driver.control_socket,
        Duration::from_millis(fm.driver_timeout_ms),
    ) {
        Ok(d) => d,
        Err(e) => {
            cleanup();
            return Err(e.to_string());
        }
    };
    let mut daemon = match Daemon::start(&config, driver, listener) {
        Ok(d) => d,
        Err(e) => {
            cleanup();
            return Err(e.to_string());
        }
    };
    daemon.remove_socket_on_exit(fm.socket.clone());
    let (stop_rx, stop_tx) = UnixStream::pair().map_err(|e| format!("signal pipe: {e}"))?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let w = stop_tx
            .try_clone()
            .map_err(|e| format!("signal pipe: {e}"))?;
        signal_hook::low_level::pipe::register(sig, w)
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    daemon.set_stop_fd(stop_rx.into());
    nemflow_flowmgr::service::notify_ready();
    daemon.run().map_err(|e| e.to_string())
}
