//! `nemflow-driver`: the process that owns the NIC.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_config::Config;
use nemflow_driver::dpdk::{Eal, EthPort, Mempool, PortConf};
use nemflow_driver::tap_peer::TapPeer;
use nemflow_driver::{preflight, smoke};

/// The nemflow driver: owns the NIC through DPDK, demultiplexes received frames to per-flow
/// channels, and checks and schedules what flows transmit.
///
/// It serves the flow manager on its control socket (driver.control_socket, root only) until
/// SIGINT or SIGTERM, then removes its socket, its tap interface and DPDK's runtime files.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file (YAML): EAL, port, host addresses, link rate, sockets.
    #[arg(short, long, default_value = nemflow_config::DEFAULT_PATH)]
    config: PathBuf,

    /// Check the configuration and exit: 0 if it is valid, else one line saying what is wrong.
    #[arg(long)]
    check_config: bool,

    /// Smoke run instead of serving: bring the port up, give the kernel side of a net_tap port the address PEER
    /// inside a fresh network namespace, resolve it with ARP, ping it, print what happened,
    /// and exit, leaving nothing behind.
    #[arg(long)]
    smoke: bool,

    /// Peer address for --smoke, with prefix (default: the host address + 1).
    #[arg(long, value_name = "IP/PREFIX")]
    peer: Option<nemflow_config::Ipv4Cidr>,

    /// Echo requests to send in --smoke.
    #[arg(long, default_value_t = 3)]
    pings: u16,

    /// Override the EAL file prefix from the config (runtime directory /var/run/dpdk/PREFIX).
    #[arg(long)]
    file_prefix: Option<String>,

    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    /// The level comes from RUST_LOG (default `info`; e.g. `RUST_LOG=debug`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("nemflow-driver: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut config = Config::load(&args.config).map_err(|e| e.to_string())?;
    if let Some(prefix) = args.file_prefix {
        config.eal.file_prefix = prefix;
    }
    let advice = config.advice();
    if args.check_config {
        for a in &advice {
            println!("{}: warning: {a}", args.config.display());
        }
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    for a in &advice {
        tracing::warn!("{}: {a}", args.config.display());
    }
    preflight::check(&config).map_err(|e| e.to_string())?;
    if args.smoke {
        smoke_run(&config, args.peer, args.pings)
    } else {
        nemflow_driver::run::serve(&config).map_err(|e| e.to_string())
    }
}

fn smoke_run(
    config: &Config,
    peer: Option<nemflow_config::Ipv4Cidr>,
    pings: u16,
) -> Result<(), String> {
    let local = config.host.ip;
    let peer = peer.unwrap_or_else(|| {
        nemflow_config::Ipv4Cidr::new(
            Ipv4Addr::from(u32::from(local.addr()).wrapping_add(1)),
            local.prefix_len(),
        )
    });
    let iface = config
        .port
        .vdev
        .as_ref()
        .filter(|v| v.driver() == "net_tap")
        .and_then(|v| v.arg("iface"))
        .ok_or("--smoke needs a net_tap port with iface= in port.vdev")?
        .to_owned();

    let eal = Eal::init(&config.eal_args("nemflow-driver")).map_err(|e| e.to_string())?;
    let pool =
        Mempool::new(&eal, "nemflow_rx", config.port.mbufs, 2048).map_err(|e| e.to_string())?;
    let conf = PortConf {
        rx_desc: config.port.rx_desc,
        tx_desc: config.port.tx_desc,
        mtu: config.port.max_frame_bytes.saturating_sub(14),
        mac: config.host.mac.map(|m| m.0),
    };
    let mut port =
        EthPort::open(&eal, config.port_name(), &conf, &pool).map_err(|e| e.to_string())?;
    println!(
        "port {} up: mac {}, link {:?}",
        config.port_name(),
        nemflow_config::MacAddr(port.mac()),
        port.link()
    );
    if !std::path::Path::new("/sys/class/net").join(&iface).exists() {
        return Err(format!(
            "net_tap did not create interface {iface}: check the device arguments in port.vdev"
        ));
    }
    let netns = format!("nemflow-smoke-{}", std::process::id());
    let remote = TapPeer::setup(&netns, &iface, peer).map_err(|e| e.to_string())?;
    println!("kernel side {iface} moved into network namespace {netns} with address {peer}");
    let result = smoke::run(
        &mut port,
        local.addr(),
        peer.addr(),
        pings,
        Duration::from_secs(3),
    );
    let stats = port.stats();
    drop(port);
    drop(eal);
    drop(remote);
    let report = result.map_err(|e| e.to_string())?;
    println!(
        "ARP: {} is at {} ({} µs)",
        peer.addr(),
        nemflow_config::MacAddr(report.peer_mac),
        report.arp_rtt.as_micros()
    );
    for (seq, rtt) in report.ping_rtts.iter().enumerate() {
        println!(
            "echo reply from {}: seq={seq} time={} µs",
            peer.addr(),
            rtt.as_micros()
        );
    }
    println!(
        "smoke run ok: {} frames sent, {} received; port counters: {} tx / {} rx packets",
        report.sent, report.received, stats.tx_packets, stats.rx_packets
    );
    Ok(())
}
