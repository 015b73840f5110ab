//! `nemflow`: look at the flow manager's view of the host.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nemflow_flowmgr::capture::{self, CaptureOptions};
use nemflow_flowmgr::client::{Client, SOCKET_ENV};
use nemflow_flowmgr::service::{self, UpOptions};
use nemflow_flowmgr::show;
use nemflow_flowmgr::top::{self, TopOptions};
use nemflow_proto::app::{OpenFlow, DEFAULT_SOCKET};
use nemflow_proto::ctl::CaptureDirection;
use nemflow_proto::FlowId;
use nemflow_proto::Qos;

/// Shows nemflow's flows, their counters, the ARP cache and the routes, as the flow manager
/// sees them; captures a flow's frames; brings a host up and down; watches it like `top`.
#[derive(Debug, Parser)]
#[command(name = "nemflow", version)]
struct Args {
    /// The flow manager's socket (default: $NEMFLOW_FLOWMGR_SOCKET, else /run/nemflow/flowmgr.sock).
    #[arg(short, long, global = true)]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every flow, like `ss -tuna`, with its owning process (shown for your own uid, or all
    /// when run as root).
    Flows,
    /// Per-flow counters from the driver, like `tc -s qdisc show`, then the port's and the
    /// flow manager's own counters.
    Stats {
        /// JSON instead of text.
        #[arg(short, long)]
        json: bool,
    },
    /// The ARP cache, like `ip neigh`.
    Arp,
    /// The routing table, like `ip route`.
    Routes,
    /// Resolves the link-layer next hop for an address (ARP if needed).
    Resolve {
        /// The destination.
        ip: Ipv4Addr,
    },
    /// Opens a flow and prints its FIB: checks policy, ports, admission, routing and ARP as an
    /// application would see them. With --hold, keeps it open until stdin closes or the
    /// process is killed (the flow then disappears).
    Open {
        /// udp, tcp or raw.
        transport: Proto,
        /// Local port (0: ephemeral).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Remote address:port (connected flow).
        #[arg(long)]
        remote: Option<SocketAddrV4>,
        /// Ethertype of a raw flow (e.g. 0x88b5).
        #[arg(long, value_parser = parse_u16)]
        ethertype: Option<u16>,
        /// Guaranteed slice per period, ns (0: best effort).
        #[arg(long, default_value_t = 0)]
        slice_ns: u64,
        /// Period, ns.
        #[arg(long, default_value_t = 100_000_000)]
        period_ns: u64,
        /// Keep the flow open until stdin reaches EOF.
        #[arg(long)]
        hold: bool,
        /// Reserve a channel pair first and open the flow on it (default geometry): the open's
        /// reply then carries no fds.
        #[arg(long)]
        reserve: bool,
    },
    /// Reserves a channel pair for a later open (as an app does ahead of its opens) and says
    /// whether the flow manager had one to give. With --hold, keeps it, unused, until stdin
    /// closes or the process is killed (the pair then goes back to the driver).
    Reserve {
        /// Keep the pair until stdin reaches EOF.
        #[arg(long)]
        hold: bool,
    },
    /// Writes what a flow sends and receives to a pcap file (readable by tcpdump -r and
    /// Wireshark), until COUNT frames, Ctrl-C, or the flow's end. Root only: it talks to the
    /// driver's control socket. The driver never waits for the capture: frames it finds no
    /// buffer for are counted as dropped and reported at the end.
    Capture {
        /// The flow (an id from `nemflow flows`).
        #[arg(long)]
        flow: u32,
        /// Which frames: received, sent or both.
        #[arg(long, value_enum, default_value_t = Direction::Both)]
        direction: Direction,
        /// The pcap file to write.
        #[arg(short = 'w', value_name = "FILE.pcap")]
        write: PathBuf,
        /// Stop after COUNT frames.
        #[arg(short = 'c', value_name = "COUNT")]
        count: Option<u64>,
        /// Bytes kept of each frame (like tcpdump -s).
        #[arg(long, default_value_t = nemflow_flowmgr::capture::SNAP_BYTES)]
        snaplen: u32,
        /// The driver's control socket (default: driver.control_socket of --config, else
        /// /run/nemflow/driver.sock).
        #[arg(long)]
        driver_socket: Option<PathBuf>,
        /// Configuration file naming the driver's control socket.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Starts the driver, then the flow manager, from one configuration, waits until both
    /// serve (or prints why one did not) and leaves them running in the background (pid files
    /// in --run-dir, logs in --log-dir).
    Up {
        /// Configuration file for both daemons.
        #[arg(long, default_value = nemflow_config::DEFAULT_PATH)]
        config: PathBuf,
        /// Directory of the pid files.
        #[arg(long, default_value = nemflow_flowmgr::service::RUN_DIR)]
        run_dir: PathBuf,
        /// Directory of the daemons' logs (appended to).
        #[arg(long, default_value = nemflow_flowmgr::service::LOG_DIR)]
        log_dir: PathBuf,
        /// Seconds each daemon may take to become ready.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Run both daemons with --log-format json.
        #[arg(long)]
        json_logs: bool,
    },
    /// Stops the flow manager, then the driver (SIGTERM; SIGKILL after --timeout, then removes
    /// what they left behind).
    Down {
        /// Directory of the pid files.
        #[arg(long, default_value = nemflow_flowmgr::service::RUN_DIR)]
        run_dir: PathBuf,
        /// Seconds each daemon may take to stop.
        #[arg(long, default_value_t = 15)]
        timeout: u64,
    },
    /// A live view of the flows — rate, reservation, guaranteed and slack use, drops — refreshed
    /// like top. q quits.
    Top {
        /// Seconds between refreshes.
        #[arg(short = 'd', long, default_value_t = 1.0)]
        delay: f64,
        /// Stop after N refreshes.
        #[arg(short = 'n', long)]
        iterations: Option<u64>,
        /// Plain tables, one per refresh, without screen handling (like top -b).
        #[arg(short = 'b', long)]
        batch: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Direction {
    Rx,
    Tx,
    Both,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
    Raw,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("nemflow: {line}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM set the returned flag (for commands that run until stopped).
fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(stop)
}

fn run(args: Args) -> Result<(), String> {
    let path = args
        .socket
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let cmd = match args.cmd {
        Cmd::Capture {
            flow,
            direction,
            write,
            count,
            snaplen,
            driver_socket,
            config,
        } => {
            let socket = match (driver_socket, config) {
                (Some(s), _) => s,
                (None, Some(config)) => {
                    nemflow_config::Config::load(&config)
                        .map_err(|e| e.to_string())?
                        .driver
                        .control_socket
                }
                (None, None) => nemflow_config::Driver::default().control_socket,
            };
            let opts = CaptureOptions {
                flow: FlowId(flow),
                direction: match direction {
                    Direction::Rx => CaptureDirection::Rx,
                    Direction::Tx => CaptureDirection::Tx,
                    Direction::Both => CaptureDirection::Both,
                },
                count,
                snap_bytes: snaplen,
            };
            let stop = stop_flag()?;
            let s = capture::run(&socket, &write, &opts, &stop, |id| {
                eprintln!(
                    "nemflow: capturing flow {flow} ({direction:?}) into {} (capture {id}); Ctrl-C stops",
                    write.display()
                );
            })?;
            eprintln!(
                "{} frames written ({} sent, {} received); {} dropped by the driver (capture buffer full){}",
                s.written,
                s.tx,
                s.rx,
                s.driver.dropped,
                if s.flow_gone { "; the flow went away" } else { "" }
            );
            return Ok(());
        }
        Cmd::Up {
            config,
            run_dir,
            log_dir,
            timeout,
            json_logs,
        } => {
            let text = service::up(&UpOptions {
                config,
                run_dir,
                log_dir,
                bin_dir: service::own_bin_dir(),
                timeout: Duration::from_secs(timeout),
                json_logs,
            })?;
            print!("{text}");
            return Ok(());
        }
        Cmd::Down { run_dir, timeout } => {
            print!("{}", service::down(&run_dir, Duration::from_secs(timeout))?);
            return Ok(());
        }
        cmd => cmd,
    };
    let mut c = Client::connect_as(&path, "nemflow").map_err(|e| e.to_string())?;
    let e = |e: nemflow_flowmgr::client::ClientError| e.to_string();
    let text = match cmd {
        Cmd::Flows => show::flows(&c.all_flows().map_err(e)?),
        Cmd::Stats { json: true } => show::stats_json(&c.stats().map_err(e)?),
        Cmd::Stats { json: false } => show::stats(&c.stats().map_err(e)?),
        Cmd::Arp => show::arp(&c.arp().map_err(e)?),
        Cmd::Routes => show::routes(&c.routes().map_err(e)?),
        Cmd::Resolve { ip } => {
            let n = c.resolve(ip).map_err(e)?;
            format!(
                "{} via {} lladdr {}\n",
                n.ip,
                n.next_hop,
                nemflow_flowmgr::host::fmt_mac(n.mac)
            )
        }
        Cmd::Open {
            transport,
            port,
            remote,
            ethertype,
            slice_ns,
            period_ns,
            hold,
            reserve,
        } => {
            if reserve && !c.reserve().map_err(e)? {
                return Err("no channel pair to reserve now".into());
            }
            let req = match transport {
                Proto::Udp => OpenFlow::udp(port, remote),
                Proto::Tcp => {
                    OpenFlow::tcp(port, remote.ok_or("a tcp flow needs --remote ADDR:PORT")?)
                }
                Proto::Raw => OpenFlow::raw(ethertype.ok_or("a raw flow needs --ethertype")?),
            };
            let qos = Qos {
                period_ns,
                slice_ns,
                extra: slice_ns == 0,
                latency_hint_ns: None,
            };
            let flow = c.open(&req.with_qos(qos)).map_err(e)?;
            let f = &flow.fib;
            let line = format!(
                "flow {} local {} remote {} src {} next-hop {} mtu {}{}\n",
                f.flow,
                f.local,
                f.remote.map_or("-".into(), |r| r.to_string()),
                nemflow_flowmgr::host::fmt_mac(f.src_mac),
                f.next_hop_mac
                    .map_or("-".into(), nemflow_flowmgr::host::fmt_mac),
                f.mtu,
                if flow.reserved() { " reserved" } else { "" }
            );
            if hold {
                print_and_hold(&line);
                return Ok(());
            }
            line
        }
        Cmd::Reserve { hold } => {
            let line = if c.reserve().map_err(e)? {
                "reserved\n"
            } else {
                "none\n"
            };
            if hold {
                print_and_hold(line);
                return Ok(());
            }
            line.to_owned()
        }
        Cmd::Top {
            delay,
            iterations,
            batch,
        } => {
            if !(0.05..=3600.0).contains(&delay) {
                return Err(format!("-d {delay}: allowed 0.05 ..= 3600 seconds"));
            }
            let stop = stop_flag()?;
            let opts = TopOptions {
                interval: Duration::from_secs_f64(delay),
                iterations,
                batch,
            };
            return top::run(&mut c, &opts, &stop);
        }
        Cmd::Capture { .. } | Cmd::Up { .. } | Cmd::Down { .. } => {
            return Err("internal error: command dispatched twice".into())
        }
    };
    print!("{text}");
    Ok(())
}

/// `--hold`: prints `line` at once, then keeps the connection (and what it holds) until stdin
/// closes.
fn print_and_hold(line: &str) {
    let mut out = std::io::stdout();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Args::command().debug_assert();
    }
}
