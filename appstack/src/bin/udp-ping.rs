//! Checks a remote UDP echo server: sends datagrams one at a time and verifies every echo.

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nemflow_appstack::apps::{self, FlowRequest, PingOptions};
use nemflow_proto::Qos;

/// Check a UDP echo server over a nemflow flow: send datagrams one at a time (payload derived
/// from the sequence number), wait for each echo and check it byte for byte. Prints a summary;
/// exits 0 only if every echo came back intact.
#[derive(Debug, Parser)]
#[command(name = "udp-ping", version)]
struct Args {
    /// The echo server's address and port (the flow is connected to it).
    #[arg(long)]
    remote: SocketAddrV4,
    /// Local UDP port (0: let the flow manager choose).
    #[arg(long, default_value_t = 0)]
    local_port: u16,
    /// Datagrams to send.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Payload sizes in bytes, used in turn (e.g. `64,1472,60000`; above MTU − 28 the datagram
    /// is fragmented).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    size: Vec<usize>,
    /// How long to wait for each echo, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Also print the report and the flow's stack counters as `name=value` lines (stderr).
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(&big) = a
        .size
        .iter()
        .find(|&&s| s > nemflow_appstack::MAX_UDP_PAYLOAD)
    {
        eprintln!(
            "udp-ping: a UDP payload is at most {} bytes, not {big}",
            nemflow_appstack::MAX_UDP_PAYLOAD
        );
        return ExitCode::from(2);
    }
    let req = FlowRequest {
        local_port: a.local_port,
        remote: Some(a.remote),
        qos: Qos::BEST_EFFORT,
        buffers: apps::buffers_for(None, None),
    };
    let mut app = match apps::open_flow(&req) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("udp-ping: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = PingOptions {
        count: a.count,
        sizes: a.size,
        timeout: Duration::from_millis(a.timeout_ms),
        dst: None,
    };
    let r = match apps::ping(&mut app.flow, &opts, &apps::stop_on_signals()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("udp-ping: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} sent, {} intact, {} corrupt, {} lost, {} stale, {} ICMP errors; {} bytes echoed; rtt min/mean/max {:.3}/{:.3}/{:.3} ms",
        r.sent,
        r.intact,
        r.corrupt,
        r.lost,
        r.stale,
        r.icmp_errors,
        r.bytes,
        r.rtt_min.as_secs_f64() * 1e3,
        r.rtt_mean().as_secs_f64() * 1e3,
        r.rtt_max.as_secs_f64() * 1e3,
    );
    if a.stats {
        eprint!(
            "ping.sent={}\nping.intact={}\nping.corrupt={}\nping.lost={}\nping.stale={}\nping.icmp_errors={}\n{}",
            r.sent,
            r.intact,
            r.corrupt,
            r.lost,
            r.stale,
            r.icmp_errors,
            apps::stats_text(&app.flow)
        );
    }
    if r.all_intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
