//! `nemflow`: look at the flow manager's view of the host.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nemflow_flowmgr::client::{Client, SOCKET_ENV};
use nemflow_flowmgr::show;
use nemflow_proto::app::{OpenFlow, DEFAULT_SOCKET};
use nemflow_proto::Qos;

/// Shows nemflow's flows, their counters, the ARP cache and the routes, as the flow manager
/// sees them.
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
    },
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

fn run(args: Args) -> Result<(), String> {
    let path = args
        .socket
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let mut c = Client::connect_as(&path, "nemflow").map_err(|e| e.to_string())?;
    let e = |e: nemflow_flowmgr::client::ClientError| e.to_string();
    let text = match args.cmd {
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
        } => {
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
                "flow {} local {} remote {} src {} next-hop {} mtu {}\n",
                f.flow,
                f.local,
                f.remote.map_or("-".into(), |r| r.to_string()),
                nemflow_flowmgr::host::fmt_mac(f.src_mac),
                f.next_hop_mac
                    .map_or("-".into(), nemflow_flowmgr::host::fmt_mac),
                f.mtu
            );
            if hold {
                let mut out = std::io::stdout();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                return Ok(());
            }
            line
        }
    };
    print!("{text}");
    Ok(())
}
